"""``adrec-stream bench {train,score,finetune}``: speed of the fast paths against reference-equivalent paths,
and the seconds of one fine-tune worker round.

See :mod:`adrec_stream.bench.train_bench`, :mod:`adrec_stream.bench.score_bench` and
:mod:`adrec_stream.bench.finetune_bench` for what each measures; the recorded figures and commands are in
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json

from adrec_stream.argtypes import positive_int

DEFAULT_DATASET = "../shared/data/adrec/baby/dataset.pkl"
DEFAULT_EVENTS = "../shared/data/events/ml-100k/u.data"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``bench`` options (imports nothing heavy)."""
    parser.add_argument("bench_kind", choices=["train", "score", "finetune", "ingest", "latency", "memory"],
                        help="what to time (finetune: one fine-tune worker round on logged clicks; ingest: clicks/s "
                             "through the embedded broker into RocksDB; latency: click -> recommendation at fixed "
                             "rates; memory: peak RSS of the workers with 100,000 users and a 100,000-item model)")
    parser.add_argument(
        "--dataset", default=DEFAULT_DATASET, help=f"dataset.pkl or its folder (default {DEFAULT_DATASET})"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a summary")
    parser.add_argument(
        "--steps", type=positive_int, default=None,
        help="train: batches measured per side (default: the whole fast epoch and 3 reference batches)",
    )
    parser.add_argument("--users", type=positive_int, default=2000, help="score: users for the fast path (default 2000)")
    parser.add_argument(
        "--reference-users", type=positive_int, default=30, help="score: users for the per-user reference path (default 30)"
    )
    parser.add_argument(
        "--batch-size", type=positive_int, default=None, help="train: windows per batch (512); score: users per batch (1024)"
    )
    parser.add_argument("--sampling-steps", type=positive_int, default=None,
                        help="score: reverse steps of the batch-size sweep (default: the model's T)")
    parser.add_argument("--no-sweep", action="store_true", help="score: skip the batch-size sweep (recs_per_s)")
    parser.add_argument("--rounds", type=positive_int, default=5,
                        help="score: interleaved measurement rounds; speedup = median per-round ratio (default 5)")
    parser.add_argument("--checkpoint", default=None,
                        help="score: time a trained checkpoint instead of fresh weights; finetune: the serving model "
                             "(its vocabulary must hold the log's raw item ids, e.g. var/demo-cache/adrec-*/model.pt)")
    parser.add_argument("--data", default=DEFAULT_EVENTS,
                        help=f"finetune, ingest, latency: interaction log (default {DEFAULT_EVENTS})")
    parser.add_argument("--events", type=positive_int, default=100_000,
                        help="ingest: clicks produced before the workers start (default 100000)")
    parser.add_argument("--ingest-workers", default="1,2", metavar="N,N",
                        help="ingest: worker process counts to run, one run each (default 1,2)")
    parser.add_argument("--rates", default="100,500,1000", metavar="R,R",
                        help="latency: fixed click rates per second (default 100,500,1000)")
    parser.add_argument("--search-rates", default="1500,2000,3000,4000", metavar="R,R",
                        help="latency: higher rates tried (30 s each) until p99 > 250 ms (default 1500,2000,3000,4000)")
    parser.add_argument("--duration-s", type=float, default=60.0, help="latency: seconds per fixed rate (default 60)")
    parser.add_argument("--score-workers", type=positive_int, default=1,
                        help="latency: score worker processes in the scoring group (default 1)")
    parser.add_argument("--fresh-broker-per-rate", action="store_true",
                        help="latency: run every rate on its own pipeline (new embedded broker, state and workers); "
                             "by default all rates run one after the other on one pipeline, where the embedded "
                             "broker's cost per record grows with the data the earlier rates left")
    parser.add_argument("--run-dir", default="var/bench",
                        help="ingest, latency, memory: work folder (wiped; default var/bench)")
    parser.add_argument("--window-events", type=positive_int, default=10000,
                        help="finetune: fresh clicks of the round, right after the first 80%% of the log "
                             "(default 10000)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="finetune, ingest, latency: override a configs/stream.yaml key, e.g. "
                             "finetune.max_steps=50 or consumer.fetch_max_wait_s=0.02 (repeatable)")
    parser.add_argument(
        "--denoiser", choices=["att", "mlp"], default="att", help="denoiser of the fresh model (default att)"
    )
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch CPU threads (default: torch's choice; finetune: finetune.threads of "
                             "configs/stream.yaml)")
    parser.add_argument("--seed", type=int, default=2025)


def run(args: argparse.Namespace) -> int:
    """Run the chosen benchmark and print the result."""
    if args.bench_kind == "finetune":
        return _run_finetune(args)
    if args.bench_kind in ("ingest", "latency", "memory"):
        return _run_stream(args)
    import torch

    from adrec_stream.model import ModelConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = ModelConfig(denoiser=args.denoiser)
    if args.bench_kind == "train":
        from adrec_stream.bench.train_bench import bench_train

        res = bench_train(args.dataset, steps=args.steps, batch_size=args.batch_size or 512, cfg=cfg, seed=args.seed,
                          device=device)
        summary = (f"train epoch on {res['dataset']}: fast {res['epoch_s']:.1f} s, reference-equivalent "
                   f"{res['reference_epoch_s']:.1f} s, speedup {res['speedup']:.1f}x "
                   f"(steps measured: {res['steps_measured']})")
    else:
        from adrec_stream.bench.score_bench import bench_score

        res = bench_score(args.dataset, users=args.users, reference_users=args.reference_users,
                          batch_size=args.batch_size or 1024, cfg=cfg, checkpoint=args.checkpoint, seed=args.seed,
                          device=device, rounds=args.rounds, sweep=not args.no_sweep, steps=args.sampling_steps)
        sw = res["sweep"]
        swept = ("; recs/s by batch size " + ", ".join(
            f"{b}: {sw['adrec'][b]:,.0f} (100k items {sw['adrec_100k_items'][b]:,.0f}, SASRec+ {sw['sasrec'][b]:,.0f})"
            for b in sw["batch_sizes"]) if sw else "")
        summary = (f"scoring on {res['dataset']}: fast {res['per_user_ms']:.3f} ms/user, reference-equivalent "
                   f"{res['reference_per_user_ms']:.1f} ms/user, speedup {res['speedup']:.0f}x "
                   f"(max |score diff| fast vs reference, deterministic: {res['max_abs_score_diff']:.2e}){swept}")
    print(json.dumps(res) if args.json else summary)
    return 0


def _run_finetune(args: argparse.Namespace) -> int:
    """``bench finetune``: one round, printed as JSON or as a one-line summary."""
    from adrec_stream.bench.finetune_bench import bench_finetune
    from adrec_stream.config import parse_overrides

    res = bench_finetune(args.data, window_events=args.window_events, checkpoint=args.checkpoint,
                         threads=args.threads, seed=args.seed, device=args.device,
                         overrides=parse_overrides(args.overrides))
    if args.json:
        print(json.dumps(res))
        return 0
    old, new = (_fmt(res[k], ".4f") for k in ("heldout_ndcg10_serving", "heldout_ndcg10_candidate"))
    stale = "n/a (not published)" if res["staleness_s"] is None else f"{res['staleness_s']:.1f} s"
    publish = "" if res["publish_s"] is None else f", publish {res['publish_s']:.2f} s"
    goal = res["goal"]
    print(f"fine-tune round on {res['window_events']:,} events ({res['train_events']:,} trained + "
          f"{res['holdout_events']:,} held out) of {res['data']}: round {res['round_s']:.1f} s "
          f"(train {res['train_s']:.1f} s, {res['steps']} steps; run_once {res['round_s_total']:.1f} s{publish}), "
          f"{res['status']}, held-out NDCG@10 {old} -> {new}, staleness {stale}, "
          f"torch threads {res['threads'] or '-'} on {res['device']}; goal (round <= {goal['round_s_max']:.0f} s on "
          f">= {goal['window_events_min']:,} events) {'met' if goal['met'] else 'NOT met'}")
    return 0


def _numbers(text: str, what: str) -> tuple[float, ...]:
    """``"1,2.5"`` -> (1.0, 2.5); raises ConfigError naming ``what`` otherwise."""
    from adrec_stream.errors import ConfigError

    try:
        out = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"{what}: expected comma-separated numbers, got {text!r}") from None
    if not out or min(out) <= 0:
        raise ConfigError(f"{what}: expected positive numbers, got {text!r}")
    return out


def _run_stream(args: argparse.Namespace) -> int:
    """``bench ingest`` / ``bench latency``: one JSON object (or a summary line)."""
    from pathlib import Path

    from adrec_stream.bench.stream_bench import bench_ingest, bench_latency, bench_memory
    from adrec_stream.config import parse_overrides

    over = parse_overrides(args.overrides)
    if args.bench_kind == "ingest":
        workers = tuple(int(n) for n in _numbers(args.ingest_workers, "--ingest-workers"))
        res = bench_ingest(args.data, events=args.events, workers=workers, run_root=Path(args.run_dir), overrides=over)
        summary = (f"ingest: {res['events_per_s']:,.0f} events/s (best of {len(res['runs'])} runs: "
                   + ", ".join(f"{r['workers']} worker(s) {r['events_per_s'] or 0:,.0f}/s" for r in res["runs"])
                   + f"); plain batched consumer {res['raw_consume_events_per_s'] or 0:,.0f}/s; ratio "
                   f"{res['ratio_to_raw']}")
    elif args.bench_kind == "memory":
        res = bench_memory(run_root=Path(args.run_dir), overrides=over)
        summary = (f"memory: ingest worker peak RSS {res['ingest_peak_rss_mb']} MiB with {res['users']:,} users "
                   f"({res['ingest_applied']:,} clicks applied); score worker {res['score_peak_rss_mb']} MiB with a "
                   f"{res['items']:,}-item model ({res['recommendations']:,} recommendations)")
    else:
        res = bench_latency(args.data, rates=_numbers(args.rates, "--rates"), duration_s=args.duration_s,
                            search_rates=_numbers(args.search_rates, "--search-rates"),
                            score_workers=args.score_workers, fresh_broker_per_rate=args.fresh_broker_per_rate,
                            run_root=Path(args.run_dir),
                            overrides=over)
        summary = "latency: " + "; ".join(f"{r['rate']:g}/s p50 {r['p50_ms']} ms p99 {r['p99_ms']} ms "
                                          f"({r['answered']}/{r['sent']})" for r in res["rates"]) + \
            f"; highest rate with p99 <= 250 ms: {res['max_rate_p99_250ms']}"
    print(json.dumps(res) if args.json else summary)
    return 0


def _fmt(value: float | None, spec: str) -> str:
    """``value`` formatted with ``spec``, or "n/a" for None (e.g. held-out metrics of a diverged round)."""
    return "n/a" if value is None else format(value, spec)
