"""``adrec-stream evaluate-replay`` (in-process): leakage tests, causality assertion, ties, exclusion, coverage,
the ``--columns`` reader on real files, and the outputs (metrics.json, report.md, PNGs).

Models are tiny (d = 32, L = 10, one block, T = 8) and train for a few epochs on one torch thread, so the
whole file runs in about a minute on a loaded 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pytest

from adrec_stream.data.events import read_delimited, read_interactions
from adrec_stream.errors import AdrecStreamError, ConfigError, DataFileError
from adrec_stream.evaluation.metrics import expected_rank, rank_counts, tie_metrics
from adrec_stream.evaluation.replay import cli as replay_cli
from adrec_stream.evaluation.replay.engine import EXCLUDED, UNKNOWN, Click, run_replay
from adrec_stream.evaluation.replay.policies import (
    ALL_POLICIES,
    IncrementalModelPolicy,
    RecentPopularityPolicy,
    TrainSpec,
    due_rounds,
    make_policies,
    parse_policies,
)
from adrec_stream.evaluation.replay.report import PLOTS, build_metrics

REPO = Path(__file__).resolve().parent.parent
EVENTS = REPO.parent / "shared" / "data" / "events"
TINY = {"model.hidden_size": 32, "model.max_len": 10, "model.num_blocks": 1, "model.num_heads": 2,
        "model.diffusion_steps": 8, "train.batch_size": 32}
TINY_FLAGS = [x for k, v in TINY.items() for x in ("--experiment-set", f"{k}={v}")]


# ------------------------------------------------------------------------------------------ synthetic logs
def write_uniform(path: Path, *, users: int, per_user: int, n_items: int, seed: int) -> Path:
    """Every click's item uniformly random over ``n_items`` (nothing to learn); users' clicks interleaved in time."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(users):
        for t in np.sort(rng.uniform(0, 1e6, per_user)):
            rows.append((float(t), f"u{u}", str(int(rng.integers(n_items)))))
    rows.sort()
    path.write_text("user,item,ts\n" + "".join(f"{u},{i},{t:.3f}\n" for t, u, i in rows))
    return path


def write_successor(path: Path, *, users: int = 300, per_user: int = 25, n_items: int = 50, late_users: int = 20,
                    seed: int = 0) -> Path:
    """Each user's next item is (last + 1) mod ``n_items``; ``late_users`` users click only after t = 0.9e6
    (after the 80% warm-up cut), so their first click is cold."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(users + late_users):
        lo = 0.95e6 if u >= users else 0.0
        item = int(rng.integers(n_items))
        for t in np.sort(rng.uniform(lo, 1e6, per_user if u < users else 5)):
            rows.append((float(t), f"u{u}", str(item)))
            item = (item + 1) % n_items
    rows.sort()
    path.write_text("user,item,ts\n" + "".join(f"{u},{i},{t:.3f}\n" for t, u, i in rows))
    return path


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    replay_cli.add_arguments(parser)
    return replay_cli.run(parser.parse_args(argv))


def tiny_specs(tmp: Path, epochs: dict[str, int], kinds=("adrec", "sasrec")) -> dict[str, TrainSpec]:
    import torch

    from adrec_stream.training.config import load_experiment

    out = {}
    for kind in kinds:
        exp = load_experiment(REPO / "configs" / f"{kind}-cpu.yaml", dict(TINY))
        out[kind] = TrainSpec(exp=exp, epochs={s: epochs[s] for s in exp.stages()}, cache_dir=tmp / "cache",
                              data_name="synthetic.csv", threads=1, device=torch.device("cpu"))
    return out


def finetune_cfg(**over):
    from adrec_stream.stream.config import load_stream_config

    return load_stream_config(None, {f"finetune.{k}": v for k, v in over.items()}).finetune


# ------------------------------------------------------------------------------------------ 1. leakage: random
@pytest.fixture(scope="module")
def uniform_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """Every policy on 25,000 clicks uniformly random over 1,000 items; the last 5,000 are judged."""
    tmp = tmp_path_factory.mktemp("uniform")
    data = write_uniform(tmp / "uniform.csv", users=100, per_user=250, n_items=1000, seed=1)
    out = tmp / "out"
    rc = run_cli(["--dataset", str(data), "--out", str(out), "--cache-dir", str(tmp / "cache"), "--no-progress",
                  "--train-threads", "1", *TINY_FLAGS, "--epochs", "pretrain=1,align=1,finetune=1",
                  "--set", "finetune.min_new_events=2000", "--set", "finetune.interval_s=1e12",
                  "--set", "finetune.max_steps=5", "--set", "finetune.threads=1", "--bootstrap", "200"])
    assert rc == 0
    return out, json.loads((out / "metrics.json").read_text())


def test_uniformly_random_stream_gives_chance_hr10_for_every_policy(uniform_run) -> None:
    """Next item uniform over N = 1,000 items, independent of everything before: any policy that ranks with
    information from before the click has P(hit@10) = 10/1000 = 0.01 exactly (with exact tie expectations).
    Bound: with n judged clicks, HR@10 is a mean of n Bernoulli(0.01) (expected values under ties: variance
    no larger), so |HR@10 - 0.01| <= 4 sigma = 4 sqrt(0.01 * 0.99 / n) (0.0056 for n = 5,000) fails with
    probability < 1e-4 per policy. A policy that saw the click first (e.g. counting it before ranking) would
    sit far above: the clicked item's count is then one higher than its peers'."""
    _, m = uniform_run
    assert list(m["policies"]) == list(ALL_POLICIES)
    for name, p in m["policies"].items():
        o = p["overall"]
        n = o["judged"]
        assert n == o["total"] == 5000, name
        bound = 4 * math.sqrt(0.01 * 0.99 / n)
        assert abs(o["HR@10"] - 0.01) <= bound, (name, o["HR@10"], bound)
        assert o["unknown_target"] == 0 and o["cold"] == 0, name
    # the incremental policies did run rounds and swapped models during the replay
    for name in ("adrec-incremental", "sasrec-incremental"):
        p = m["policies"][name]
        assert len(p["rounds"]) == m["config"]["finetune_rounds_due"] == 2  # 5,000 clicks, min_new_events 2,000
        assert p["rounds_by_status"].get("published", 0) >= 1, p["rounds"]
        swapped = [v for v in p["versions"][1:] if v["swap_index"] is not None]
        assert swapped and all(v["swap_index"] > v["trained_until_index"] for v in swapped)


class _LeakyRecentPopularity(RecentPopularityPolicy):
    """Negative control: counts the click BEFORE ranking it (the bug the leakage test must catch)."""

    name = "leaky-recent-popularity"

    def judge(self, click: Click) -> None:
        self._add(click.item)
        super().judge(click)

    def reveal(self, click: Click) -> None:
        pass


def test_the_uniform_leakage_test_catches_a_policy_that_sees_the_click(tmp_path: Path) -> None:
    data = write_uniform(tmp_path / "u.csv", users=100, per_user=250, n_items=1000, seed=1)
    res = run_replay(read_interactions(data), [_LeakyRecentPopularity(1000), RecentPopularityPolicy(1000)],
                     progress=False)
    hr = {n: float(tie_metrics(r.higher, r.ties)["HR@10"].mean()) for n, r in res.results.items()}
    bound = 4 * math.sqrt(0.01 * 0.99 / 5000)
    assert hr["leaky-recent-popularity"] > 0.01 + bound > hr["recent-popularity"], hr


# ------------------------------------------------------------------------------------- 2. leakage: learnable
@pytest.fixture(scope="module")
def successor_run(tmp_path_factory: pytest.TempPathFactory):
    """markov, adrec-static and adrec-incremental (swap delay 7 clicks) on the successor stream."""
    import torch

    tmp = tmp_path_factory.mktemp("successor")
    events = read_interactions(write_successor(tmp / "succ.csv"))
    specs = tiny_specs(tmp, {"pretrain": 10, "align": 3, "finetune": 20}, kinds=("adrec",))
    fcfg = finetune_cfg(min_new_events=500, interval_s=1e12, max_steps=10, threads=1)
    policies = make_policies(["markov", "adrec-static", "adrec-incremental"], specs=specs, fcfg=fcfg, swap_delay=7,
                             seed=3)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = run_replay(events, policies, warmup_fraction=0.8, progress=False)
    finally:
        torch.set_num_threads(before)
    return result, {p.name: p for p in policies}


def test_successor_stream_gives_hr1_near_one_for_markov_and_adrec(successor_run) -> None:
    """next = (last + 1) mod 50 for every user: after the warm-up, markov and ADRec (static and incremental)
    put the right item first (expected HR@1 >= 0.9; the 20 cold first clicks of late users are misses)."""
    result, _ = successor_run
    for name in ("markov", "adrec-static", "adrec-incremental"):
        r = result.results[name]
        hr1 = float(tie_metrics(r.higher, r.ties, ks=(1,))["HR@1"].mean())
        assert hr1 >= 0.9, (name, hr1)


def test_cold_clicks_are_counted_and_judged(successor_run) -> None:
    """The 20 late users' first clicks are cold: counted, judged (no drop), and ranked by the models' fallback."""
    result, policies = successor_run
    n = len(result.users)
    assert int(result.cold.sum()) == 20
    for name, r in result.results.items():
        assert r.higher.shape == (n,) and (r.higher >= UNKNOWN).all(), name  # every click judged
    for name in ("adrec-static", "adrec-incremental"):
        fb = result.results[name].fallback
        assert fb[result.cold].all() and int(fb.sum()) == 20, name
    assert result.results["markov"].fallback[result.cold].all()


def test_swap_delay_and_versions_of_the_incremental_policy(successor_run) -> None:
    """An accepted candidate serves from the 8th click after its round (swap delay 7) and was trained only on
    clicks before the first click it serves."""
    _, policies = successor_run
    facts = policies["adrec-incremental"].facts()
    assert facts["swap_delay_events"] == 7
    assert facts["rounds"], "no fine-tune round ran"
    assert any(v["swap_index"] is not None for v in facts["versions"][1:]), "no model swap"
    warm = facts["versions"][0]["trained_until_index"] + 1  # replay position p is log index warm + p
    for v in facts["versions"][1:]:
        assert v["swap_pos"] == v["accepted_index"] - warm + 1 + 7
        if v["swap_index"] is not None:
            assert v["swap_index"] == v["accepted_index"] + 8 and v["swap_index"] > v["trained_until_index"]


# --------------------------------------------------------------------------------------- 3. the assertion
def _click(index: int, pos: int = 0) -> Click:
    from adrec_stream.incremental.updates import SequenceUpdateRecord

    upd = SequenceUpdateRecord("u0", ("1", "2"), 0, 0, 0.0, None, "x")
    return Click(pos=pos, index=index, user="u0", item="2", ts=0.0, history=("1",), seen=None, cold=False, update=upd)


def test_a_model_never_scores_an_event_inside_its_training_window(successor_run) -> None:
    """Tampering: asking a model policy to rank an event at or before the last one its serving version was
    trained on raises AssertionError (static: the last warm-up event; incremental: the round's last click)."""
    result, policies = successor_run
    static = policies["adrec-static"]
    assert static.serving.trained_until == result.warmup_events - 1
    for index in (result.warmup_events - 1, 0):
        with pytest.raises(AssertionError, match="not after its training window"):
            static.judge(_click(index))
    inc = policies["adrec-incremental"]
    assert inc.serving.version > 1  # swapped during the replay: the bound moved to the round's last click
    assert inc.serving.trained_until > result.warmup_events - 1
    with pytest.raises(AssertionError, match="not after its training window"):
        inc.judge(_click(inc.serving.trained_until))
    with pytest.raises(AssertionError):
        inc.check_causal(inc.serving.trained_until, inc.serving)
    inc.check_causal(inc.serving.trained_until + 1, inc.serving)  # the next event is fine


def test_the_round_schedule_follows_the_worker_on_event_time() -> None:
    """Due after min_new_events revealed clicks, or after interval_s event seconds with something new."""
    from adrec_stream.incremental.updates import UpdateTracker, updates_from_clicks

    fcfg = finetune_cfg(min_new_events=5, interval_s=100)
    pol = IncrementalModelPolicy("adrec-incremental", lambda w: None, fcfg=fcfg)
    pol.tracker = UpdateTracker(50)
    pol.consumed_at_round, pol.last_round_ts = 0, 1000.0
    assert not pol.due(5000.0)  # nothing new
    ups = updates_from_clicks([("u", str(i), 1000.0 + i) for i in range(5)], window=10, n_partitions=2)
    pol.tracker.add(ups[:1])
    assert not pol.due(1099.0) and pol.due(1100.0)  # interval (event time)
    pol.tracker.add(ups[1:])
    assert pol.due(1001.0)  # count
    # the schedule from click times alone: 5 clicks, or 100 s since the last due round
    assert due_rounds([1001, 1002, 1003, 1004, 1005, 1006, 1200, 1201], fcfg, 1000.0) == [4, 6]


# ------------------------------------------------------------------------------------- 4. ranks and ties
def test_expected_rank_with_ties() -> None:
    n = 7
    h, e = rank_counts(np.zeros(n), 3)
    assert (h, e) == (0, n - 1) and expected_rank(h, e) == (n + 1) / 2
    assert rank_counts(np.array([3.0, 1.0, 2.0, 2.0]), 2) == (1, 1)
    assert expected_rank(1, 1) == 2.5
    assert rank_counts(np.array([5.0, 1.0, 2.0, 2.0]), 2, candidates=np.array([False, True, False, True])) == (0, 1)
    assert rank_counts(np.array([1.0, np.nan, 2.0]), 1) == (2, 0)  # a NaN target ranks last
    assert expected_rank(UNKNOWN, 0) == math.inf
    # all 100 items tied: HR@10 = P(rank <= 10) = 0.1; NDCG@10 = mean of 1/log2(r + 1) over r <= 10, / 100
    m = tie_metrics(np.array([0, 3, UNKNOWN]), np.array([99, 0, 0]), ks=(10,))
    assert m["HR@10"][0] == pytest.approx(0.1)
    assert m["NDCG@10"][0] == pytest.approx(sum(1 / math.log2(r + 1) for r in range(1, 11)) / 100)
    assert m["HR@10"][1] == 1.0 and m["NDCG@10"][1] == pytest.approx(1 / math.log2(5))
    assert m["HR@10"][2] == 0.0 and m["NDCG@10"][2] == 0.0


def test_exclude_seen_is_applied_to_every_policy(tmp_path: Path, one_torch_thread) -> None:
    """The same replay with and without --exclude-seen (same seeds, so the same model scores): for every
    policy a click on an item the user clicked before is a miss (the served list cannot hold it; it used to be
    kept ranked, which inflated Gowalla's figures 15-fold), no other click ranks worse with the exclusion, and
    some rank strictly better."""
    data = write_uniform(tmp_path / "u.csv", users=30, per_user=60, n_items=120, seed=4)
    events = read_interactions(data)
    specs = tiny_specs(tmp_path, {"pretrain": 1, "align": 1, "finetune": 1})
    fcfg = finetune_cfg(min_new_events=150, interval_s=1e12, max_steps=2, threads=1)
    runs = {}
    for flag in (False, True):
        pols = make_policies(ALL_POLICIES, specs=specs, fcfg=fcfg, seed=5)
        runs[flag] = run_replay(events, pols, exclude_seen=flag, progress=False)
    off, on = runs[False], runs[True]
    warm_n = on.warmup_events
    seen: dict[str, set[str]] = {}
    for x in events[:warm_n]:
        seen.setdefault(x.user_id, set()).add(x.item_id)
    repeat = np.zeros(len(on.users), dtype=bool)
    for pos, (u, i) in enumerate(zip(on.users, on.items)):
        repeat[pos] = i in seen.get(u, set())
        seen.setdefault(u, set()).add(i)
    assert 0.1 < repeat.mean() < 0.9
    metrics = build_metrics(on, windows=2, bootstrap=10)["policies"]
    for name in ALL_POLICIES:
        a, b = off.results[name], on.results[name]
        assert (b.higher[repeat] == EXCLUDED).all() and (b.higher[~repeat] != EXCLUDED).all(), name
        assert metrics[name]["overall"]["target_excluded"] == int(repeat.sum())
        assert (tie_metrics(b.higher, b.ties)["HR@20"][repeat] == 0).all()
        known = (a.higher != UNKNOWN) & ~repeat
        assert (b.higher[known] <= a.higher[known]).all(), name
        assert ((b.higher + b.ties)[known] <= (a.higher + a.ties)[known]).all(), name
        assert ((b.higher + b.ties)[known] < (a.higher + a.ties)[known]).any(), name


# ------------------------------------------------------------------------------------- outputs
def test_metrics_json_report_and_plots(uniform_run) -> None:
    out, m = uniform_run
    for key in ("policies", "config", "seed", "data", "exclude_seen", "wall_s", "peak_rss_mb", "load_avg", "gains"):
        assert key in m, key
    assert set(m["data"]) >= {"path", "sha256", "events", "users", "items", "warmup_events"}
    assert m["data"]["events"] == 25000 and m["data"]["warmup_events"] == 20000 and len(m["data"]["sha256"]) == 64
    assert m["config"]["finetune"]["min_new_events"] == 2000 and m["config"]["swap_delay_events"] == 0
    assert m["exclude_seen"] is False and m["peak_rss_mb"] > 0
    for name, p in m["policies"].items():
        o = p["overall"]
        for k in ("HR@5", "NDCG@5", "HR@10", "NDCG@10", "HR@20", "NDCG@20", "judged", "cold", "unknown_target",
                  "total", "fallback"):
            assert k in o, (name, k)
        assert len(p["windows"]) == 10
        assert sum(w["total"] for w in p["windows"]) == 5000
        assert p["windows"][0]["start_ts"] <= p["windows"][-1]["end_ts"]
    for name in ("adrec-incremental", "sasrec-incremental"):
        p = m["policies"][name]
        assert p["versions"][0]["version"] == 1 and p["rounds"]
        r = next(r for r in p["rounds"] if r["status"] != "skipped")
        assert "heldout_NDCG@10_serving" in r and "heldout_NDCG@10_candidate" in r
    g = m["gains"]["metrics"]["NDCG@10"]["markov"]
    assert g["lo"] <= g["gain"] <= g["hi"]
    report = (out / "report.md").read_text()
    assert "| policy | HR@10 | NDCG@10 | HR@20 | NDCG@20 |" in report
    assert "95% CI" in report and "paired bootstrap" in report and "(reference)" in report
    assert "**off**" in report and "swap delay **0 clicks**" in report
    for png in PLOTS:
        assert (out / png).stat().st_size > 1000, png
        assert f"({png})" in report


# ------------------------------------------------------------------------------------- data and errors
@pytest.mark.skipif(not (EVENTS / "diginetica-sample").is_dir(), reason="diginetica sample not in ../shared/data")
def test_columns_reader_on_diginetica_with_session_as_user() -> None:
    path = EVENTS / "diginetica-sample" / "sample_train-item-views.csv"
    rows = read_delimited(path, user="session_id", item="item_id", ts="eventdate", order="timeframe", sep=";",
                          ts_unit="iso")
    assert len(rows) == 12391  # every line but the header
    assert len({r.user_id for r in rows}) == 2986
    assert all(a.ts <= b.ts for a, b in zip(rows, rows[1:]))
    # within a day, a session's views follow their timeframe (ms since the session started)
    lines = [ln.split(";") for ln in path.read_text().splitlines()[1:]]
    s1 = sorted((int(f[3]), f[2]) for f in lines if f[0] == "1")
    assert [r.item_id for r in rows if r.user_id == "1"] == [item for _, item in s1]
    # the same file by column indices
    by_idx = read_delimited(path, user=0, item=2, ts=4, order=3, sep=";", ts_unit="iso")
    assert by_idx == rows


@pytest.mark.skipif(not (EVENTS / "gowalla-head50k").is_dir(), reason="gowalla sample not in ../shared/data")
def test_columns_reader_on_gowalla() -> None:
    path = EVENTS / "gowalla-head50k" / "Gowalla_totalCheckins50000.txt"
    rows = read_delimited(path, user=0, item=4, ts=1, sep="\t", header=False, ts_unit="iso")
    assert len(rows) == 50000 and len({r.user_id for r in rows}) == 171
    assert rows == read_interactions(path)  # the same as the built-in Gowalla format


@pytest.mark.skipif(not (EVENTS / "diginetica-sample").is_dir(), reason="diginetica sample not in ../shared/data")
def test_cli_replays_a_real_file_through_columns(tmp_path: Path) -> None:
    path = EVENTS / "diginetica-sample" / "sample_train-item-views.csv"
    rc = run_cli(["--dataset", str(path), "--columns", "user=session_id,item=item_id,ts=eventdate,order=timeframe",
                  "--sep", ";", "--ts-unit", "iso", "--policy", "popularity,markov", "--exclude-seen",
                  "--out", str(tmp_path / "o"), "--no-progress", "--bootstrap", "50"])
    assert rc == 0
    m = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert m["data"]["events"] == 12391 and m["exclude_seen"] is True and "--columns" in m["data"]["read_as"]
    assert m["gains"] is None
    o = m["policies"]["markov"]["overall"]
    assert o["total"] == m["data"]["replay_events"] and o["cold"] > 0  # new sessions start cold
    assert "**on**" in (tmp_path / "o" / "report.md").read_text()


def test_delimited_reader_errors(tmp_path: Path) -> None:
    f = tmp_path / "log.tsv"
    f.write_text("sid\titem\twhen\n1\ta\t2020-01-01T00:00:00\n1\tb\tnot-a-date\n")
    with pytest.raises(DataFileError, match=r"header has no column 'session'.*'sid', 'item', 'when'.*user=session"):
        read_delimited(f, user="session", item="item", ts="when", sep="\t", ts_unit="iso")
    with pytest.raises(DataFileError, match=r"log.tsv:3: bad_ts: 'not-a-date' is neither epoch seconds nor ISO-8601"):
        read_delimited(f, user="sid", item="item", ts="when", sep="\t", ts_unit="iso")
    with pytest.raises(DataFileError, match="no header line"):
        read_delimited(f, user="sid", item=1, ts=2, sep="\t", header=False)
    with pytest.raises(DataFileError, match=r"log.tsv:2: expected at least 6 fields"):
        read_delimited(f, user=0, item=1, ts=5, sep="\t")
    with pytest.raises(DataFileError, match=r"interaction file not found: .*missing.csv \(expected a ';'-separated"):
        read_delimited(tmp_path / "missing.csv", user="a", item="b", ts="c", sep=";")
    g = tmp_path / "ms.csv"
    g.write_text("\ufeffu,i,t\n1,x,1500\n1,y,500\n")  # a BOM is ignored; ms -> s; sorted by time
    assert [(r.item_id, r.ts) for r in read_delimited(g, user="u", item="i", ts="t", ts_unit="ms")] == [("y", 0.5),
                                                                                                    ("x", 1.5)]


def test_cli_errors_are_one_line_errors(tmp_path: Path) -> None:
    for spec in ("user=a,item=b", "user=a,item=b,ts=c,color=d", "user,item=b,ts=c", "user=a,user=b,item=c,ts=d"):
        with pytest.raises(ConfigError, match="--columns"):
            replay_cli.parse_columns(spec)
    with pytest.raises(ConfigError, match="unknown policy 'adrec'.*adrec-incremental"):
        parse_policies("adrec,markov")
    with pytest.raises(ConfigError, match="--epochs"):
        replay_cli.parse_epochs("pretrain=x")
    assert replay_cli.parse_columns("user=0,item=item_id,ts=2") == {"user": 0, "item": "item_id", "ts": 2}
    assert replay_cli.parse_sep("\\t") == "\t"
    out = str(tmp_path / "o")
    with pytest.raises(DataFileError, match=r"interaction file not found: .*nope.data \(expected"):
        run_cli(["--dataset", str(tmp_path / "nope.data"), "--policy", "popularity", "--out", out])
    with pytest.raises(ConfigError, match="unknown policy"):
        run_cli(["--dataset", str(tmp_path / "nope.data"), "--policy", "lstm", "--out", out])
    with pytest.raises(AdrecStreamError, match="--columns"):
        run_cli(["--dataset", str(tmp_path / "nope.data"), "--columns", "user=1", "--out", out])


def test_demo_and_replay_share_the_cache_key(tmp_path: Path) -> None:
    """The demo finds its trained model under the shared helper's key (one cache rule for both commands)."""
    from adrec_stream.data.events import Interaction
    from adrec_stream.demo import DemoConfig, prepare_model
    from adrec_stream.training.cache import cached_checkpoint_path, training_cache_key
    from adrec_stream.training.config import load_experiment

    dcfg = DemoConfig(cache_dir=str(tmp_path / "cache"))
    train = [Interaction("1", "10", 5.0, rating=3.0), Interaction("2", "11", 6.0)]
    exp = load_experiment(REPO / dcfg.experiment)
    key = training_cache_key(train, exp, dcfg.epochs.model_dump(), "u.data")
    path = cached_checkpoint_path(tmp_path / "cache", exp.model.kind, key)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"stands for a trained checkpoint")
    ckpt, facts = prepare_model(dcfg, train, Path("/x/u.data"))
    assert ckpt == path and facts["cached"] is True and facts["wall_s"] == 0.0


def test_cli_error_exit_code_and_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from adrec_stream.cli import main

    rc = main(["evaluate-replay", "--dataset", str(tmp_path / "x.csv"), "--policy", "popularity,lstm",
               "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "unknown policy 'lstm'" in err[0], err
