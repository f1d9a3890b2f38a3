"""``adrec-stream evaluate-replay``: replay a logged click stream test-then-train through several policies.

In-process mode (this module): the log is read and ordered by (time, file order), the first
``--warmup-fraction`` trains the models, and every later click is judged by every policy before it is revealed
(:mod:`.engine`); the incremental policies run the fine-tune worker's own round functions on the sequence
updates the ingest worker would publish (:mod:`.policies`). Outputs in ``--out``: ``metrics.json``,
``report.md`` and three PNGs (:mod:`.report`). ``--through-kafka`` (:mod:`.kafka`) also replays each model policy
through the real pipeline (embedded broker, ingest, score and fine-tune workers as processes) and checks that it
agrees with the in-process figures within ``--agreement-tolerance`` (exit code 1 when not).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

from adrec_stream.errors import ConfigError
from adrec_stream.runtime import peak_rss_mb

DEFAULT_EPOCHS = {"pretrain": 8, "align": 2, "finetune": 6}  # configs/demo.yaml's CPU budget
EXPERIMENT_CONFIGS = {"adrec": "configs/adrec-cpu.yaml", "sasrec": "configs/sasrec-cpu.yaml"}
COLUMN_KEYS = ("user", "item", "ts", "order")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``evaluate-replay`` options."""
    from adrec_stream.evaluation.replay.policies import ALL_POLICIES  # noqa: PLC0415

    parser.description = (
        "Replay a logged click file test-then-train: the first --warmup-fraction of the events (by time, ties "
        "in file order) trains the models; every later click is ranked by each policy as it would have served "
        "it BEFORE seeing it (full ranking over the items the policy knows; HR@k / NDCG@k, k = 5, 10, 20), then "
        "revealed to it. Writes metrics.json, report.md (policies side by side, gains over adrec-static with "
        "paired bootstrap 95% CIs over users) and PNG plots to --out. With --through-kafka the model policies "
        "are also replayed through the real pipeline (broker, ingest, score and fine-tune workers) and compared "
        "with the in-process figures.")
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", required=True, metavar="PATH",
                      help="interaction file: MovieLens u.data / ratings.csv / ratings.dat, Gowalla, user,item,ts CSV "
                           "(auto-detected), or any delimited file with --columns")
    data.add_argument("--format", default="auto", choices=["auto", "ml100k", "mlcsv", "ml1m", "gowalla", "csv"],
                      help="format of --dataset without --columns (default auto)")
    data.add_argument("--columns", metavar="SPEC",
                      help="read a delimited file through a column mapping: user=COL,item=COL,ts=COL[,order=COL] with "
                           "header names or 0-based indices; a session id can be the user; order: numeric "
                           "tie-break of equal ts (e.g. diginetica: user=session_id,item=item_id,ts=eventdate,"
                           "order=timeframe --sep ';' --ts-unit iso)")
    data.add_argument("--sep", default=",", help="field separator with --columns (default ','; '\\t' or 'tab' = tab)")
    data.add_argument("--header", action=argparse.BooleanOptionalAction, default=True,
                      help="with --columns: the first line names the columns (default) / --no-header")
    data.add_argument("--ts-unit", default="s", choices=["s", "ms", "iso"],
                      help="with --columns: timestamps in epoch seconds (default), milliseconds, or ISO-8601")
    proto = parser.add_argument_group("protocol")
    proto.add_argument("--policy", default="all", metavar="P1,P2",
                       help=f"comma-separated policies (default all): {', '.join(ALL_POLICIES)}")
    proto.add_argument("--warmup-fraction", type=float, default=0.8,
                       help="fraction of the events (by count, in time order) that trains the models (default 0.8)")
    proto.add_argument("--exclude-seen", action="store_true",
                       help="remove each user's earlier items from every policy's ranking (never the clicked item)")
    proto.add_argument("--recent-window", type=int, default=1000, metavar="N",
                       help="recent-popularity: clicks in the sliding window (default 1000)")
    proto.add_argument("--windows", type=int, default=10, help="equal-count time windows in metrics/plots (default 10)")
    proto.add_argument("--swap-delay-events", type=int, default=0, metavar="N",
                       help="incremental policies: clicks still served by the old model after a round's candidate "
                            "is accepted (default 0; the real delay depends on the stream rate and the round's "
                            "wall time, unknown offline)")
    proto.add_argument("--seed", type=int, default=2025, help="scoring noise and bootstrap seed (default 2025)")
    proto.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples of users (default 1000)")
    kafka = parser.add_argument_group("through kafka")
    kafka.add_argument("--through-kafka", action="store_true",
                       help="also replay each model policy through the real pipeline (embedded broker, ingest, score "
                            "and, for -incremental, fine-tune worker processes) in lock-step with the in-process "
                            "round schedule, and report its agreement with the in-process figures (exit 1 when "
                            "outside the tolerance); counter policies stay in-process; forces "
                            "finetune.interval_s=1e12 (click-count trigger) in both modes")
    kafka.add_argument("--agreement-tolerance", type=float, default=0.02, metavar="REL",
                       help="largest relative difference of NDCG@10 and HR@10 between the modes on the clicks both "
                            "judged, plus a slack of 3 clicks (default 0.02; docs/replay.md explains it)")
    kafka.add_argument("--kafka-work-dir", default="var/replay-kafka", metavar="DIR",
                       help="broker files, stores, registry and worker logs of the pipeline runs, one folder per "
                            "policy (wiped at each start; default var/replay-kafka)")
    models = parser.add_argument_group("models")
    models.add_argument("--adrec-config", default=EXPERIMENT_CONFIGS["adrec"], help="ADRec experiment YAML")
    models.add_argument("--sasrec-config", default=EXPERIMENT_CONFIGS["sasrec"], help="SASRec+ experiment YAML")
    models.add_argument("--experiment-set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key of both experiment YAMLs (repeatable), e.g. model.hidden_size=16")
    models.add_argument("--epochs", default=",".join(f"{k}={v}" for k, v in DEFAULT_EPOCHS.items()),
                        metavar="pretrain=N,align=N,finetune=N",
                        help="static training budget per stage (default: configs/demo.yaml's 8,2,6; SASRec+ uses "
                             "finetune)")
    models.add_argument("--train-threads", type=int, default=2, help="torch CPU threads for the static training (default 2)")
    models.add_argument("--score-threads", type=int, default=1,
                        help="torch CPU threads while replaying (model scoring; rounds use finetune.threads); default "
                             "1: on a loaded machine 2 threads spin in OpenMP and score several times slower")
    models.add_argument("--cache-dir", default="var/replay-cache",
                        help="trained static checkpoints, keyed by warm-up data + config + epochs")
    models.add_argument("--stream-config", default=None, metavar="PATH",
                        help="stream config for window, partitions and the finetune: section "
                             "(default configs/stream.yaml)")
    models.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a stream-config key (repeatable), e.g. finetune.min_new_events=2000; "
                             "finetune.interval_s counts EVENT seconds here and defaults to 1e12 (the click-count "
                             "trigger only: the stream config's 300 s of event time would start a round every few "
                             "clicks on a dense log)")
    models.add_argument("--device", default="cpu", help="cpu (default), cuda or auto: training, rounds and scoring")
    models.add_argument("--score-batch", type=int, default=256, help="clicks per model scoring call (default 256)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def parse_columns(spec: str) -> dict[str, str | int]:
    """``user=COL,item=COL,ts=COL[,order=COL]`` -> {key: header name or 0-based index}.

    Raises:
        ConfigError: a part without ``=``, an unknown or repeated key, an empty column, or user/item/ts missing.
    """
    out: dict[str, str | int] = {}
    for part in spec.split(","):
        if not part.strip():
            continue
        key, sep, col = part.partition("=")
        key, col = key.strip(), col.strip()
        if not sep or not col:
            raise ConfigError(f"--columns {spec!r}: {part!r} is not KEY=COLUMN (e.g. user=session_id,item=item_id,"
                              "ts=eventdate or user=0,item=4,ts=1)")
        if key not in COLUMN_KEYS:
            raise ConfigError(f"--columns {spec!r}: unknown key {key!r}; use {', '.join(COLUMN_KEYS)}")
        if key in out:
            raise ConfigError(f"--columns {spec!r}: {key} is given twice")
        out[key] = int(col) if col.isdigit() else col
    missing = [k for k in ("user", "item", "ts") if k not in out]
    if missing:
        raise ConfigError(f"--columns {spec!r}: missing {', '.join(missing)} (user, item and ts are required)")
    return out


def parse_sep(sep: str) -> str:
    """``--sep`` with ``\\t`` / ``tab`` meaning a tab character."""
    return "\t" if sep in ("\\t", "tab", "TAB") else sep


def parse_epochs(spec: str) -> dict[str, int]:
    """``pretrain=8,align=2,finetune=6`` (any subset; others keep the defaults) -> {stage: epochs}.

    Raises:
        ConfigError: unknown stage, non-integer or negative value.
    """
    out = dict(DEFAULT_EPOCHS)
    for part in spec.split(","):
        if not part.strip():
            continue
        key, sep, val = part.partition("=")
        key = key.strip()
        if not sep or key not in DEFAULT_EPOCHS or not val.strip().isdigit():
            raise ConfigError(f"--epochs {spec!r}: expected STAGE=N with STAGE in {', '.join(DEFAULT_EPOCHS)} and "
                              f"N >= 0, got {part!r}")
        out[key] = int(val)
    return out


def load_events(args: argparse.Namespace) -> tuple[list, str]:
    """The log through --columns or the format readers; returns (events, how it was read)."""
    from adrec_stream.data.events import read_delimited, read_interactions  # noqa: PLC0415

    if args.columns:
        cols = parse_columns(args.columns)
        sep = parse_sep(args.sep)
        events = read_delimited(args.dataset, user=cols["user"], item=cols["item"], ts=cols["ts"],
                                order=cols.get("order"), sep=sep, header=args.header, ts_unit=args.ts_unit)
        how = (f"--columns {args.columns} --sep {sep!r} {'--header' if args.header else '--no-header'} "
               f"--ts-unit {args.ts_unit}")
    else:
        events = read_interactions(args.dataset, args.format)
        how = f"--format {args.format}"
    return events, how


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _load_avg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def run(args: argparse.Namespace) -> int:
    """Run the replay, write the outputs, print the policies' HR@10 / NDCG@10 and the output paths."""
    t0 = time.perf_counter()
    from adrec_stream.config import parse_overrides  # noqa: PLC0415
    from adrec_stream.evaluation.replay import policies as P  # noqa: PLC0415
    from adrec_stream.evaluation.replay.engine import run_replay  # noqa: PLC0415
    from adrec_stream.evaluation.replay.report import build_metrics, require_matplotlib, write_outputs  # noqa: PLC0415
    from adrec_stream.stream.config import load_stream_config  # noqa: PLC0415

    require_matplotlib()  # fail before a long replay, not after it
    names = P.parse_policies(args.policy)
    for flag, value, low in (("--windows", args.windows, 1), ("--bootstrap", args.bootstrap, 1),
                             ("--train-threads", args.train_threads, 1), ("--score-threads", args.score_threads, 1),
                             ("--recent-window", args.recent_window, 1),
                             ("--score-batch", args.score_batch, 1),
                             ("--swap-delay-events", args.swap_delay_events, 0)):
        if value < low:
            raise ConfigError(f"{flag} must be >= {low}, got {value}")
    if not 0.0 < args.warmup_fraction < 1.0:
        raise ConfigError(f"--warmup-fraction must be in (0, 1), got {args.warmup_fraction}")
    if args.columns:
        parse_columns(args.columns)  # a bad spec is reported before the file is looked at
    epochs = parse_epochs(args.epochs)
    overrides = parse_overrides(args.overrides)
    if args.through_kafka:
        if not 0.0 < args.agreement_tolerance < 1.0:
            raise ConfigError(f"--agreement-tolerance must be in (0, 1), got {args.agreement_tolerance}")
        if not any(n in P.MODEL_KIND for n in names):
            raise ConfigError(f"--through-kafka replays the model policies ({', '.join(P.MODEL_KIND)}) through the "
                              f"pipeline; --policy {args.policy} has none")
        # the worker's interval is wall-clock time, which a replay does not share: the click-count trigger only
        overrides["finetune.interval_s"] = 1e12
    # the stream config's interval is wall-clock seconds of a live stream; on event time (a replay of a dense log)
    # it would start a round every few clicks (ML-100K: 1,541 rounds): the click-count trigger unless set
    overrides.setdefault("finetune.interval_s", 1e12)
    scfg = load_stream_config(args.stream_config, overrides)
    fcfg = scfg.finetune
    exp_over = parse_overrides(args.experiment_set)
    path = Path(args.dataset)
    if path.is_dir() and not args.columns:
        from adrec_stream.data.events import _file_in_folder  # noqa: PLC0415

        path = args.dataset = _file_in_folder(path)  # the one known interaction file there (else an error)
    events, how = load_events(args)
    out_dir = Path(args.out)

    import torch  # noqa: PLC0415

    from adrec_stream.runtime import resolve_device  # noqa: PLC0415
    from adrec_stream.training.config import load_experiment  # noqa: PLC0415

    device = resolve_device(args.device)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(args.score_threads)
    kinds = sorted({P.MODEL_KIND[n] for n in names if n in P.MODEL_KIND})
    exps, specs = {}, {}
    for kind in kinds:
        cfg_path = args.adrec_config if kind == "adrec" else args.sasrec_config
        exp = load_experiment(cfg_path, exp_over)
        if exp.model.kind != kind:
            raise ConfigError(f"{cfg_path}: model.kind is {exp.model.kind!r}, expected {kind!r} for the {kind} "
                              "policies")
        scfg.check_model_len(exp.model.max_len)
        stage_epochs = {s: epochs[s] for s in exp.stages()}
        exps[kind] = exp
        specs[kind] = P.TrainSpec(exp=exp, epochs=stage_epochs, cache_dir=Path(args.cache_dir), data_name=path.name,
                                  threads=args.train_threads, device=device)

    policies = P.make_policies(names, specs=specs, fcfg=fcfg, recent_window=args.recent_window,
                               swap_delay=args.swap_delay_events, device=device, batch_size=args.score_batch,
                               seed=args.seed)
    rounds_due = None
    if any(n.endswith("-incremental") for n in names):
        from adrec_stream.data.events import chronological_split  # noqa: PLC0415

        warm, rest = chronological_split(events, args.warmup_fraction)
        if warm and rest:
            rounds_due = len(P.due_rounds([x.ts for x in rest], fcfg, warm[-1].ts))
            span_d = (rest[-1].ts - warm[-1].ts) / 86400
            print(f"incremental policies: {rounds_due} fine-tune rounds due over {len(rest):,} clicks and "
                  f"{span_d:.1f} days of event time (finetune.min_new_events={fcfg.min_new_events}, "
                  f"finetune.interval_s={fcfg.interval_s:g} event seconds; each round trains up to "
                  f"max_steps={fcfg.max_steps} / max_seconds={fcfg.max_seconds:g})", flush=True)
            if rounds_due > 50:
                P.log.warning("many_finetune_rounds", rounds_due=rounds_due,
                              hint="rounds run on EVENT time: raise --set finetune.interval_s (e.g. 1e12 for the "
                                   "count trigger only) or finetune.min_new_events to space them")
    try:
        result = run_replay(events, policies, warmup_fraction=args.warmup_fraction, exclude_seen=args.exclude_seen,
                            window=scfg.window, n_partitions=scfg.topics.sequence_updates.partitions,
                            progress=not args.no_progress)
    finally:
        torch.set_num_threads(threads_before)
    metrics: dict[str, Any] = {
        "command": "evaluate-replay", "mode": "in-process",
        "data": {"path": str(path), "sha256": _sha256(path), "read_as": how, "events": len(events),
                 "users": len({x.user_id for x in events}), "items": len({x.item_id for x in events}),
                 "warmup_events": result.warmup_events, "replay_events": len(result.users),
                 "first_ts": float(events[0].ts), "cut_ts": float(events[result.warmup_events - 1].ts),
                 "last_ts": float(events[-1].ts)},
        "seed": args.seed, "exclude_seen": bool(args.exclude_seen),
        "config": {"args": {k: (v if isinstance(v, (bool, int, float, list, type(None))) else str(v))
                            for k, v in sorted(vars(args).items()) if not k.startswith("_")},
                   "policies": names, "warmup_fraction": args.warmup_fraction, "exclude_seen": bool(args.exclude_seen),
                   "recent_window": args.recent_window, "windows": args.windows,
                   "swap_delay_events": args.swap_delay_events, "seed": args.seed, "bootstrap": args.bootstrap,
                   "epochs": epochs, "train_threads": args.train_threads, "score_threads": args.score_threads,
                   "device": str(device),
                   "score_batch": args.score_batch, "cache_dir": args.cache_dir,
                   "stream_config": args.stream_config or "configs/stream.yaml", "overrides": list(args.overrides),
                   "experiment_overrides": list(args.experiment_set),
                   "experiments": {k: {"path": args.adrec_config if k == "adrec" else args.sasrec_config,
                                       **e.model_dump(mode="json")} for k, e in exps.items()},
                   "stream": {"window": scfg.window,
                              "sequence_update_partitions": scfg.topics.sequence_updates.partitions},
                   "finetune": fcfg.model_dump(mode="json"),
                   "finetune_clock": "event time (interval_s in event seconds)",
                   "finetune_rounds_due": rounds_due,
                   "dataset_args": {"dataset": args.dataset, "format": args.format, "columns": args.columns,
                                    "sep": parse_sep(args.sep), "header": args.header, "ts_unit": args.ts_unit}},
    }
    metrics.update(build_metrics(result, windows=args.windows, bootstrap=args.bootstrap, seed=args.seed))
    agreed = True
    if args.through_kafka:
        metrics["mode"] = "in-process + through-kafka"
        metrics["through_kafka"] = through_kafka(args, events, result, overrides, device)
        agreed = all(p["agreement"]["passed"] for p in metrics["through_kafka"]["policies"].values())
    metrics.update(replay_wall_s=round(result.wall_s, 3), wall_s=round(time.perf_counter() - t0, 3),
                   peak_rss_mb=peak_rss_mb(), peak_rss_child_mb=peak_rss_mb(resource.RUSAGE_CHILDREN),
                   load_avg=_load_avg())
    paths = write_outputs(out_dir, metrics)
    print(f"replayed {len(result.users):,} clicks after {result.warmup_events:,} warm-up events "
          f"(exclude-seen {'on' if args.exclude_seen else 'off'}):")
    for name, p in metrics["policies"].items():
        o = p["overall"]
        print(f"  {name:20s} HR@10 {o['HR@10']:.4f}  NDCG@10 {o['NDCG@10']:.4f}  HR@20 {o['HR@20']:.4f}  "
              f"NDCG@20 {o['NDCG@20']:.4f}  (cold {o['cold']}, fallback {o['fallback']}, "
              f"unknown target {o['unknown_target']})")
    for name, p in (metrics.get("through_kafka") or {}).get("policies", {}).items():
        o, a = p["overall"], p["agreement"]
        print(f"  {name + ' via kafka':20s} HR@10 {o['HR@10']:.4f}  NDCG@10 {o['NDCG@10']:.4f}  (no recommendation "
              f"{o['no_recommendation']}); on {a['common_clicks']:,} common clicks NDCG@10 in-process "
              f"{a['in_process']['NDCG@10']:.4f} vs kafka {a['kafka']['NDCG@10']:.4f} "
              f"({_signed_pct(a['rel_diff']['NDCG@10'])}), same HR@10 outcome {a['same_hit10']:.2%}: "
              f"{'AGREE' if a['passed'] else 'DISAGREE'} (tolerance {a['tolerance']:.1%})")
    print(f"wall {metrics['wall_s']:.1f} s, peak RSS {metrics['peak_rss_mb']:.0f} MB; "
          f"{paths['metrics']}, {paths['report']}")
    if not agreed:
        print("through-kafka: the pipeline does not agree with the in-process replay within the tolerance "
              "(see report.md, 'Through Kafka'); worker logs under " + args.kafka_work_dir, file=sys.stderr)
        return 1
    return 0


def _signed_pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.2%}"


def through_kafka(args: argparse.Namespace, events: list, result: Any, overrides: dict[str, Any],
                  device: Any) -> dict[str, Any]:
    """Replay every model policy of ``result`` through a local pipeline (:mod:`.kafka`) and compare.

    Returns:
        the ``through_kafka`` part of metrics.json: {"tolerance", "min_same_hit", "margin", "policies": {name:
        {"overall", "versions_served", "rounds", "wall_s", ..., "agreement"}}, "wall_s"}.
    """
    from adrec_stream.data.events import chronological_split  # noqa: PLC0415
    from adrec_stream.evaluation.replay import kafka as K  # noqa: PLC0415
    from adrec_stream.evaluation.replay.policies import MODEL_KIND, due_rounds  # noqa: PLC0415
    from adrec_stream.evaluation.replay.report import per_click  # noqa: PLC0415

    t0 = time.perf_counter()
    warm, replay = chronological_split(events, args.warmup_fraction)
    values = per_click(result)
    out: dict[str, Any] = {"tolerance": args.agreement_tolerance, "min_same_hit": K.DEFAULT_MIN_SAME_HIT,
                           "list_length": K.K_MAX, "margin": 30, "policies": {}}
    source = Path(args.dataset).name
    for name in result.results:
        if name not in MODEL_KIND:
            continue
        facts = result.facts[name]
        run_dir = Path(args.kafka_work_dir) / name
        scfg = K.pipeline_config(args.stream_config, overrides, run_dir, top_k=K.K_MAX + out["margin"],
                                 device=str(device))
        round_after = due_rounds([x.ts for x in replay], scfg.finetune, warm[-1].ts) if "rounds" in facts else []
        run = K.run_policy(name, warm=warm, replay=replay, source=source,
                           checkpoint=Path(facts["training"]["checkpoint"]), scfg=scfg, round_after=round_after,
                           exclude_seen=args.exclude_seen, run_dir=run_dir,
                           progress=not args.no_progress)
        entry = K.summary(run)
        entry["agreement"] = K.agreement(run, values[name], K.inprocess_versions(facts, len(replay)),
                                         tolerance=args.agreement_tolerance)
        out["policies"][name] = entry
    out["wall_s"] = round(time.perf_counter() - t0, 3)
    return out
