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
    parser.add_argument("bench_kind", choices=["train", "score", "finetune"],
                        help="what to time (finetune: one fine-tune worker round on logged clicks)")
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
    parser.add_argument("--rounds", type=positive_int, default=5,
                        help="score: interleaved measurement rounds; speedup = median per-round ratio (default 5)")
    parser.add_argument("--checkpoint", default=None,
                        help="score: time a trained checkpoint instead of fresh weights; finetune: the serving model "
                             "(its vocabulary must hold the log's raw item ids, e.g. var/demo-cache/adrec-*/model.pt)")
    parser.add_argument("--data", default=DEFAULT_EVENTS, help=f"finetune: interaction log (default {DEFAULT_EVENTS})")
    parser.add_argument("--window-events", type=positive_int, default=10000,
                        help="finetune: fresh clicks of the round, right after the first 80%% of the log "
                             "(default 10000)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="finetune: override a configs/stream.yaml key, e.g. finetune.max_steps=50 (repeatable)")
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
                          device=device, rounds=args.rounds)
        summary = (f"scoring on {res['dataset']}: fast {res['per_user_ms']:.3f} ms/user, reference-equivalent "
                   f"{res['reference_per_user_ms']:.1f} ms/user, speedup {res['speedup']:.0f}x "
                   f"(max |score diff| fast vs reference, deterministic: {res['max_abs_score_diff']:.2e})")
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


def _fmt(value: float | None, spec: str) -> str:
    """``value`` formatted with ``spec``, or "n/a" for None (e.g. held-out metrics of a diverged round)."""
    return "n/a" if value is None else format(value, spec)
