"""``adrec-stream bench {train,score}``: speed of the fast paths against reference-equivalent paths.

See :mod:`adrec_stream.bench.train_bench` and :mod:`adrec_stream.bench.score_bench` for what each side does;
the recorded figures and commands are in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json

DEFAULT_DATASET = "../shared/data/adrec/baby/dataset.pkl"


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``bench`` options (imports nothing heavy)."""
    parser.add_argument("bench_kind", choices=["train", "score"], help="what to time")
    parser.add_argument(
        "--dataset", default=DEFAULT_DATASET, help=f"dataset.pkl or its folder (default {DEFAULT_DATASET})"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a summary")
    parser.add_argument(
        "--steps", type=_positive_int, default=None,
        help="train: batches measured per side (default: the whole fast epoch and 3 reference batches)",
    )
    parser.add_argument("--users", type=_positive_int, default=2000, help="score: users for the fast path (default 2000)")
    parser.add_argument(
        "--reference-users", type=_positive_int, default=30, help="score: users for the per-user reference path (default 30)"
    )
    parser.add_argument(
        "--batch-size", type=_positive_int, default=None, help="train: windows per batch (512); score: users per batch (1024)"
    )
    parser.add_argument("--rounds", type=_positive_int, default=5,
                        help="score: interleaved measurement rounds; speedup = median per-round ratio (default 5)")
    parser.add_argument("--checkpoint", default=None, help="score: time a trained checkpoint instead of fresh weights")
    parser.add_argument(
        "--denoiser", choices=["att", "mlp"], default="att", help="denoiser of the fresh model (default att)"
    )
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    parser.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=2025)


def run(args: argparse.Namespace) -> int:
    """Run the chosen benchmark and print the result."""
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
