"""Outputs of ``adrec-stream evaluate-replay``: ``metrics.json``, ``report.md`` and PNG plots.

- Overall and per-window metrics are means over CLICKS (every judged click weighs the same, as in the
  prequential evaluation of the demo); per-click values come from
  :func:`~adrec_stream.evaluation.metrics.tie_metrics`.
- Relative gains over ``adrec-static`` (:func:`paired_bootstrap`): users are the resampling unit (a user's
  clicks are not independent). Each user's metric is the mean over their replayed clicks; the gain of policy
  p is ``(mean_p - mean_static) / mean_static`` over users (user-averaged, so it can differ from the ratio of
  the click-averaged table figures); the 95% interval is the 2.5/97.5 percentile of the gain over 1,000
  resamples of the users with replacement, the SAME resampled users for both policies (paired), seeded.
  (Efron & Tibshirani, *An Introduction to the Bootstrap*, 1993, percentile interval.)
- Plots use matplotlib's Agg backend (no display needed); matplotlib is a dependency of the package.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from adrec_stream.errors import AdrecStreamError
from adrec_stream.evaluation.metrics import expected_rank, tie_metrics
from adrec_stream.evaluation.replay.engine import EXCLUDED, METRICS, UNKNOWN, ReplayResult

#: the reference policy of the gains
BASELINE = "adrec-static"
#: metrics whose gains are reported with confidence intervals
GAIN_METRICS = ("NDCG@10", "HR@10")
#: the PNG files written
PLOTS = ("ndcg10_over_time.png", "hr10_over_time.png", "model_versions.png")


def require_matplotlib() -> Any:
    """Import matplotlib with the Agg backend, or raise a clear error.

    Raises:
        AdrecStreamError: matplotlib is not installed (an install that skipped the package's dependencies).
    """
    try:
        import matplotlib  # noqa: PLC0415
    except ImportError:
        raise AdrecStreamError("the replay report's plots need matplotlib, which is not installed: run "
                               "pip install -e . (it is a dependency of adrec-stream) or pip install matplotlib") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def per_click(result: ReplayResult) -> dict[str, dict[str, np.ndarray]]:
    """Policy -> metric -> (n,) per-click values (:func:`tie_metrics`)."""
    return {name: tie_metrics(r.higher, r.ties) for name, r in result.results.items()}


def _counts(result: ReplayResult, name: str, sel: slice | np.ndarray = slice(None)) -> dict[str, int]:
    r = result.results[name]
    n = int(np.asarray(result.cold[sel]).size)
    return {"total": n, "judged": n, "cold": int(np.count_nonzero(result.cold[sel])),
            "fallback": int(np.count_nonzero(r.fallback[sel])),
            "unknown_target": int(np.count_nonzero(r.higher[sel] == UNKNOWN)),
            "target_excluded": int(np.count_nonzero(r.higher[sel] == EXCLUDED)), "no_recommendation": 0}


def _means(values: dict[str, np.ndarray], sel: slice | np.ndarray = slice(None)) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for m in METRICS:
        v = values[m][sel]
        out[m] = float(np.mean(v)) if v.size else None
    return out


def window_bounds(n: int, windows: int) -> list[tuple[int, int]]:
    """``windows`` equal-count [start, end) slices of ``n`` replayed clicks (fewer if n < windows)."""
    w = max(1, min(windows, n))
    edges = np.linspace(0, n, w + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def user_means(users: Sequence[str], values: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Per-user mean of a per-click metric. Returns ((U,) means, user ids in first-click order)."""
    codes: dict[str, int] = {}
    idx = np.fromiter((codes.setdefault(u, len(codes)) for u in users), dtype=np.int64, count=len(users))
    sums = np.bincount(idx, weights=values, minlength=len(codes))
    cnt = np.bincount(idx, minlength=len(codes))
    return sums / np.maximum(cnt, 1), list(codes)


def paired_bootstrap(per_user: dict[str, np.ndarray], baseline: str, *, resamples: int = 1000, seed: int = 2025,
                     level: float = 0.95) -> dict[str, dict[str, float | None]]:
    """Relative gain of each policy's user-averaged metric over ``baseline``, with a paired bootstrap CI.

    Args:
        per_user: policy -> (U,) per-user means (same users, same order, for every policy).
        baseline: the reference policy (a key of ``per_user``).
        resamples: bootstrap resamples (users drawn with replacement, the same draw for all policies).
        seed: numpy seed of the draws.
        level: two-sided interval level (percentile method).

    Returns:
        policy -> {"gain": (mean_p - mean_b) / mean_b on the sample, "lo", "hi": the interval bounds,
        "mean": mean_p, "baseline_mean": mean_b}; gains are None when the baseline mean is 0; resamples where
        it is 0 are left out of the interval (``"resamples_used"``).
    """
    names = list(per_user)
    mat = np.stack([per_user[p] for p in names], axis=1)  # (U, P)
    u = mat.shape[0]
    b = names.index(baseline)
    rng = np.random.default_rng(seed)
    boot = np.empty((resamples, len(names)))
    done = 0
    while done < resamples:
        k = min(100, resamples - done)
        draws = rng.multinomial(u, np.full(u, 1.0 / u), size=k)  # how often each user is drawn
        boot[done:done + k] = draws @ mat / u
        done += k
    full = mat.mean(axis=0)
    alpha = (1.0 - level) / 2.0
    out: dict[str, dict[str, float | None]] = {}
    base_boot = boot[:, b]
    ok = base_boot > 0
    for j, p in enumerate(names):
        rec: dict[str, float | None] = {"mean": float(full[j]), "baseline_mean": float(full[b]),
                                        "resamples_used": int(ok.sum())}
        if full[b] > 0 and ok.any():
            gains = (boot[ok, j] - base_boot[ok]) / base_boot[ok]
            rec.update(gain=float((full[j] - full[b]) / full[b]), lo=float(np.quantile(gains, alpha)),
                       hi=float(np.quantile(gains, 1.0 - alpha)))
        else:
            rec.update(gain=None, lo=None, hi=None)
        out[p] = rec
    return out


def build_metrics(result: ReplayResult, *, windows: int = 10, bootstrap: int = 1000, seed: int = 2025
                  ) -> dict[str, Any]:
    """The ``policies`` and ``gains`` parts of metrics.json.

    Returns:
        {"policies": {name: {"overall": {HR@5..NDCG@20 (click means), total, judged, cold, fallback,
        unknown_target, target_excluded, no_recommendation, mean_expected_rank (ranked targets)}, "windows":
        [{window, start_pos, end_pos, start_ts, end_ts, counts and metrics}], "wall_s": {...},
        facts (training, versions, rounds)}},
        "gains": {"baseline", "resamples", "seed", "level", "users", "metrics": {metric: {policy: gain}}} or
        None when ``adrec-static`` was not replayed}.
    """
    values = per_click(result)
    n = len(result.users)
    bounds = window_bounds(n, windows)
    policies: dict[str, Any] = {}
    for name, r in result.results.items():
        known = r.higher >= 0
        ranks = expected_rank(r.higher[known], r.ties[known])
        overall = {**_means(values[name]), **_counts(result, name),
                   "mean_expected_rank": float(np.mean(ranks)) if np.size(ranks) else None}
        wins = []
        for w, (a, b) in enumerate(bounds):
            sel = slice(a, b)
            wins.append({"window": w, "start_pos": a, "end_pos": b, "start_ts": float(result.ts[a]),
                         "end_ts": float(result.ts[b - 1]), **_counts(result, name, sel), **_means(values[name], sel)})
        entry = {"overall": overall, "windows": wins,
                 "wall_s": {k: round(v, 3) for k, v in result.policy_s.get(name, {}).items()}}
        entry.update(result.facts.get(name, {}))
        policies[name] = entry
    gains = None
    if BASELINE in result.results:
        per_metric = {}
        users_n = 0
        for m in GAIN_METRICS:
            pu = {}
            for name in result.results:
                pu[name], ids = user_means(result.users, values[name][m])
                users_n = len(ids)
            per_metric[m] = paired_bootstrap(pu, BASELINE, resamples=bootstrap, seed=seed)
        gains = {"baseline": BASELINE, "resamples": bootstrap, "seed": seed, "level": 0.95, "users": users_n,
                 "unit": "user (per-user mean of the click metric)", "metrics": per_metric}
    return {"policies": policies, "gains": gains}


# ----------------------------------------------------------------------------------------------- report
def _pct(x: float | None, signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{100 * x:+.1f}%" if signed else f"{x:.4f}"


def _utc(ts: float | None) -> str:
    if ts is None:
        return "-"
    try:
        return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%d %H:%M")
    except (OverflowError, OSError, ValueError):
        return f"{ts:.0f}"


def render_report(metrics: dict[str, Any]) -> str:
    """report.md from a metrics.json dict (policies side by side, gains with CIs, coverage, versions, plots)."""
    d, cfg = metrics["data"], metrics["config"]
    pol = metrics["policies"]
    lines = [f"# Replay evaluation: {Path(d['path']).name}", "",
             f"- data: `{d['path']}` (sha256 `{d['sha256'][:16]}…`), {d['events']:,} events, {d['users']:,} users, "
             f"{d['items']:,} items; read as {d['read_as']}",
             f"- warm-up: the first {d['warmup_events']:,} events ({cfg['warmup_fraction']:.0%} by count, until "
             f"{_utc(d.get('cut_ts'))} UTC) train the models and fill the counters; the next {d['replay_events']:,} "
             "clicks are replayed test-then-train (each click ranked by what the policy would have served BEFORE "
             "it, full ranking over the items the policy knows at that time; then the click is revealed)",
             "- exclusion of already-clicked items (`--exclude-seen`): "
             f"**{'on' if metrics['exclude_seen'] else 'off'}** "
             "(same for every policy; with it on, a click on an item the user clicked before is a miss for every "
             "policy, counted as *target excluded*: the list a policy would have served cannot contain it)",
             "- ties: HR@k / NDCG@k are exact expectations under a uniformly random tie-break (no ties: the plain "
             "metrics); a target the policy does not know is a miss",
             f"- seed {metrics['seed']}; incremental policies: model swap delay **{cfg['swap_delay_events']} clicks** "
             "after a round's candidate is accepted; fine-tune rounds on EVENT time "
             f"(interval_s={cfg['finetune']['interval_s']}, min_new_events={cfg['finetune']['min_new_events']}, "
             f"max_steps={cfg['finetune']['max_steps']}, max_seconds={cfg['finetune']['max_seconds']} of wall clock "
             f"(a loaded machine can end a round earlier), lr={cfg['finetune']['lr']}, "
             f"replay_ratio={cfg['finetune']['replay_ratio']})" if any(k.endswith("incremental") for k in pol) else
             f"- seed {metrics['seed']}",
             "", "## Policies (means over clicks)", "",
             "| policy | HR@10 | NDCG@10 | HR@20 | NDCG@20 | HR@5 | NDCG@5 | judged | cold | fallback "
             "| unknown target |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, p in pol.items():
        o = p["overall"]
        lines.append(f"| {name} | {_pct(o['HR@10'])} | {_pct(o['NDCG@10'])} | {_pct(o['HR@20'])} | "
                     f"{_pct(o['NDCG@20'])} | {_pct(o['HR@5'])} | {_pct(o['NDCG@5'])} | {o['judged']:,} | "
                     f"{o['cold']:,} | {o['fallback']:,} | {o['unknown_target']:,} |")
    g = metrics.get("gains")
    lines += ["", f"## Relative gain over {BASELINE}", ""]
    if g is None:
        lines.append(f"{BASELINE} was not replayed: no gains.")
    else:
        lines += [f"User-averaged metric (each user's mean over their clicks, then the mean over {g['users']:,} "
                  f"users); 95% percentile interval from {g['resamples']:,} paired bootstrap resamples of the users "
                  f"(seed {g['seed']}).", "",
                  "| policy | NDCG@10 (user avg) | gain NDCG@10 [95% CI] | HR@10 (user avg) | gain HR@10 [95% CI] |",
                  "|---|---|---|---|---|"]
        for name in pol:
            n10, h10 = g["metrics"]["NDCG@10"][name], g["metrics"]["HR@10"][name]
            cells = []
            for rec in (n10, h10):
                if name == BASELINE:
                    cells += [_pct(rec["mean"]), "(reference)"]
                else:
                    cells += [_pct(rec["mean"]), f"{_pct(rec['gain'], True)} [{_pct(rec['lo'], True)}, "
                                                 f"{_pct(rec['hi'], True)}]"]
            lines.append(f"| {name} | {' | '.join(cells)} |")
    lines += ["", "## Coverage", "",
              "Every replayed click is judged by every policy (no click is dropped; in-process there is always a "
              "recommendation). *cold*: the user had no earlier click; *fallback*: ranked by the policy's fallback "
              "(model policies: popularity of the serving version when no history item is known to it; markov: "
              "popularity back-off when the last item has no transition); *unknown target*: the clicked item is "
              "not known to the policy (a miss); *target excluded*: with `--exclude-seen`, the user clicked the item "
              "before (a miss).", "",
              "| policy | total | judged | cold | fallback | unknown target | target excluded | no recommendation "
              "| mean expected rank |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name, p in pol.items():
        o = p["overall"]
        mr = "-" if o["mean_expected_rank"] is None else f"{o['mean_expected_rank']:.1f}"
        lines.append(f"| {name} | {o['total']:,} | {o['judged']:,} | {o['cold']:,} | {o['fallback']:,} | "
                     f"{o['unknown_target']:,} | {o.get('target_excluded', 0):,} | {o['no_recommendation']} | {mr} |")
    inc = [n for n in pol if "rounds" in pol[n]]
    if inc:
        lines += ["", "## Model versions (incremental policies)", ""]
        for name in inc:
            p = pol[name]
            st = p.get("rounds_by_status", {})
            by_status = ", ".join(f"{k} {v}" for k, v in sorted(st.items())) or "none"
            lines += [f"**{name}**: {len(p['rounds'])} rounds ({by_status}), "
                      f"serving at the last click: v{p['serving_version_at_end']} (a version published after "
                      f"it served no click); swap delay "
                      f"{p['swap_delay_events']} clicks.", "",
                      "| round | after click (log index) | event time (UTC) | status | fresh | window | held-out | "
                      "held-out NDCG@10 old → new | steps | round s | version | swapped in at click |",
                      "|---|---|---|---|---|---|---|---|---|---|---|---|"]
            swaps = {v["version"]: v.get("swap_index") for v in p["versions"]}
            for r in p["rounds"]:
                if r["status"] == "skipped" and r.get("reason") == "too_few_fresh_events":
                    continue
                old, new = r.get("heldout_NDCG@10_serving"), r.get("heldout_NDCG@10_candidate")
                ver = r.get("version")
                lines.append(
                    f"| {r['round']} | {r['after_index']:,} | {_utc(r['event_ts'])} | {r['status']}"
                    f"{'' if r['status'] == 'published' else ' (' + str(r.get('reason')) + ')'} | "
                    f"{r['fresh_events']:,} | "
                    f"{_count(r.get('window_events'))} | {_count(r.get('holdout_events'))} | "
                    f"{'-' if old is None else f'{old:.4f}'} → {'-' if new is None else f'{new:.4f}'} | "
                    f"{r.get('steps', '-')} | {r.get('round_s', '-')} | {'-' if ver is None else f'v{ver}'} | "
                    f"{'-' if ver is None or swaps.get(ver) is None else f'{swaps[ver]:,}'} |")
            skipped = sum(1 for r in p["rounds"] if r.get("reason") == "too_few_fresh_events")
            if skipped:
                lines.append(f"\n({skipped} due rounds skipped: fewer than min_round_events fresh clicks.)")
            lines.append("")
    lines += render_kafka(metrics.get("through_kafka"))
    lines += ["", "## Over replay time", "", "![NDCG@10 over time](ndcg10_over_time.png)", "",
              "![HR@10 over time](hr10_over_time.png)", "", "![model versions](model_versions.png)", "",
              "## Run", "",
              f"- wall time {metrics['wall_s']:.1f} s (replay {metrics['replay_wall_s']:.1f} s), peak memory "
              f"(max RSS) {metrics['peak_rss_mb']:.0f} MB"
              + (f" (largest pipeline process {metrics['peak_rss_child_mb']:.0f} MB)" if metrics.get("through_kafka")
                 else "") + ", load average at the end "
              f"{metrics['load_avg']}; torch threads: static training {cfg.get('train_threads')}, replay scoring "
              f"{cfg.get('score_threads')}, fine-tune rounds {cfg['finetune']['threads']}; device {cfg.get('device')}",
              "- per policy (s): " + ", ".join(
                  f"{n} start {p['wall_s'].get('start_s', 0):.1f} / replay {p['wall_s'].get('replay_s', 0):.1f}"
                  for n, p in pol.items()),
              ""]
    return "\n".join(lines)


def _count(x: Any) -> str:
    return f"{x:,}" if isinstance(x, int) else "-"


def _rel_pct(x: float | None, signed: bool = True) -> str:
    if x is None:
        return "n/a"
    return f"{100 * x:+.2f}%" if signed else f"{100 * x:.2f}%"


def render_kafka(tk: dict[str, Any] | None) -> list[str]:
    """The "Through Kafka" section of report.md (empty without ``--through-kafka``)."""
    if not tk:
        return []
    lines = ["", "## Through Kafka (the same replay through the pipeline)", "",
             "Each model policy was replayed again through the real pipeline: embedded broker, ingest and score "
             "workers (and the fine-tune worker for the incremental policies) as separate processes, the stores "
             "bootstrapped with the warm-up, the same static checkpoint published as registry v1; clicks produced "
             "in lock-step with the in-process round schedule. A click is judged against the list the score worker "
             f"emitted after the user's previous click (top {tk['list_length']} after the history exclusion; a "
             "user's first replayed click has none: a miss, counted). Agreement is measured on the clicks judged "
             f"in both modes; tolerance: relative difference of NDCG@10 and HR@10 at most {tk['tolerance']:.1%}, "
             f"same HR@10 outcome on at least {tk['min_same_hit']:.0%} of them.", "",
             "| policy | HR@10 (all clicks) | NDCG@10 (all clicks) | no recommendation | list cut below 20 by the "
             "exclusion | common clicks | NDCG@10 "
             "in-process → kafka | HR@10 in-process → kafka | same HR@10 outcome | same version: clicks, NDCG@10 "
             "diff | agreement |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, p in tk["policies"].items():
        o, a = p["overall"], p["agreement"]
        sv = a["same_version"]
        lines.append(
            f"| {name} | {_pct(o['HR@10'])} | {_pct(o['NDCG@10'])} | {o['no_recommendation']:,} | "
            f"{a['excluded']['truncated_list']:,} | "
            f"{a['common_clicks']:,} | {_pct(a['in_process']['NDCG@10'])} → {_pct(a['kafka']['NDCG@10'])} "
            f"({_rel_pct(a['rel_diff']['NDCG@10'])}) | {_pct(a['in_process']['HR@10'])} → "
            f"{_pct(a['kafka']['HR@10'])} ({_rel_pct(a['rel_diff']['HR@10'])}) | "
            f"{_rel_pct(a['same_hit10'], signed=False)} | {sv['clicks']:,}, {_rel_pct(sv['rel_diff_NDCG@10'])} | "
            f"{'**agree**' if a['passed'] else '**DISAGREE**'} |")
    lines.append("")
    for name, p in tk["policies"].items():
        rounds = [r for r in p.get("rounds", []) if r.get("status") in ("published", "rejected")]
        pub = [r.get("version") for r in rounds if r.get("status") == "published"]
        lines.append(f"- {name}: pipeline run {p['wall_s']:.1f} s (producing {p['produce_s']:.1f} s), versions "
                     f"served {', '.join(f'v{v}' for v in p['versions_served']) or 'none'}"
                     + (f"; fine-tune worker: {len(rounds)} rounds trained, published "
                        f"{', '.join(f'v{v}' for v in pub) or 'none'}" if rounds else "")
                     + f"; dead-lettered {p['dead_lettered']}, duplicate recommendations {p['duplicates']}, worker "
                     f"restarts {p['worker_restarts']}; logs in `{p['work_dir']}/logs`")
    return lines


def write_plots(out_dir: Path, metrics: dict[str, Any]) -> list[Path]:
    """The three PNGs (:data:`PLOTS`): NDCG@10 and HR@10 per window over event time for every policy, and
    the serving model version over event time for the incremental policies (accepted and rejected rounds
    marked).

    Raises:
        AdrecStreamError: matplotlib missing (:func:`require_matplotlib`).
    """
    plt = require_matplotlib()
    from matplotlib.ticker import MaxNLocator  # noqa: PLC0415

    out = []
    pol = metrics["policies"]

    def when(ts: float) -> datetime:
        return datetime.fromtimestamp(ts, tz=UTC)

    for metric, fname in (("NDCG@10", PLOTS[0]), ("HR@10", PLOTS[1])):
        fig, ax = plt.subplots(figsize=(9, 4.8))
        for name, p in pol.items():
            xs = [when(w["end_ts"]) for w in p["windows"]]
            ys = [w[metric] for w in p["windows"]]
            ax.plot(xs, ys, marker="o", ms=3, label=name)
        ax.set_title(f"{metric} per replay window ({len(next(iter(pol.values()))['windows'])} equal-count windows)")
        ax.set_xlabel("event time (UTC, end of window)")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.autofmt_xdate()
        fig.tight_layout()
        path = out_dir / fname
        fig.savefig(path, dpi=110)
        plt.close(fig)
        out.append(path)

    inc = [n for n in pol if "rounds" in pol[n]]
    fig, axes = plt.subplots(max(1, len(inc)), 1, figsize=(9, 1.2 + 2.6 * max(1, len(inc))), sharex=True,
                             squeeze=False)
    t0, t1 = metrics["data"].get("cut_ts"), metrics["data"].get("last_ts")
    for ax, name in zip(axes[:, 0], inc):
        p = pol[name]
        steps_x, steps_y = [when(t0)], [p["versions"][0]["version"]]
        for v in p["versions"][1:]:
            if v.get("swap_ts") is not None:
                steps_x.append(when(v["swap_ts"]))
                steps_y.append(v["version"])
        steps_x.append(when(t1))
        steps_y.append(steps_y[-1])
        ax.step(steps_x, steps_y, where="post", color="C0", label="serving version")
        acc = [r for r in p["rounds"] if r["status"] == "published"]
        rej = [r for r in p["rounds"] if r["status"] == "rejected"]
        if acc:
            ax.scatter([when(r["event_ts"]) for r in acc], [r["version"] for r in acc], marker="o", color="C2", s=16,
                       label="round accepted (new version)", zorder=3)
        if rej:
            ax.scatter([when(r["event_ts"]) for r in rej], [r["parent_version"] for r in rej], marker="x",
                       color="C3", s=28, label="round rejected", zorder=3)
        ax.set_title(f"{name}: model versions (swap delay {p['swap_delay_events']} clicks)", fontsize=10)
        ax.set_ylabel("version (1 = static)")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    if not inc:
        axes[0, 0].text(0.5, 0.5, "no incremental policy in this replay", ha="center", va="center",
                        transform=axes[0, 0].transAxes)
        axes[0, 0].set_title("model versions over replay time")
    axes[-1, 0].set_xlabel("event time (UTC)")
    fig.autofmt_xdate()
    fig.tight_layout()
    path = out_dir / PLOTS[2]
    fig.savefig(path, dpi=110)
    plt.close(fig)
    out.append(path)
    return out


def write_outputs(out_dir: Path, metrics: dict[str, Any]) -> dict[str, Path]:
    """Write metrics.json, the PNGs and report.md into ``out_dir`` (created). Returns name -> path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"metrics": out_dir / "metrics.json", "report": out_dir / "report.md"}
    paths["metrics"].write_text(json.dumps(metrics, indent=1, default=_json_default, allow_nan=False) + "\n")
    for p in write_plots(out_dir, metrics):
        paths[p.name] = p
    paths["report"].write_text(render_report(metrics))
    return paths


def _json_default(x: Any) -> Any:
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.floating):
        return float(x)
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON-serialisable: {type(x).__name__}")
