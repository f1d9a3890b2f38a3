"""``adrec-stream finetune-round``: one rank of a distributed fine-tune round, or a follower host's loop.

Rank program (what ``torchrun`` starts on every rank; the fine-tune worker builds the command,
:func:`~adrec_stream.incremental.distributed.torchrun_command`)::

    python -m torch.distributed.run --standalone --nnodes 1 --nproc-per-node 2 \\
        -m workers.finetune_round --backend auto --device-kind cpu --timeout-s 345 --spec var/state/finetune/round/spec.json

Follower host of a multi-host round (``finetune.distributed.nnodes > 1``; node 0 is the fine-tune worker's
host), with the same stream config as the worker::

    adrec-stream finetune-round --follow --node-rank 1 --config configs/stream.yaml

Exit codes: 0 after a round (rank) or a stop (follower); 2 on a config error (not under torchrun, no spec on
rank 0, nccl without CUDA, ...). See docs/incremental.md, "Several devices or hosts".
"""

from __future__ import annotations

import argparse
import signal
import threading


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the rank options (``--spec``, ``--backend``, ``--device-kind``, ``--timeout-s``) and the follower
    options (``--follow``, ``--node-rank``, ``--config``, ``--set``, ``--device``)."""
    from adrec_stream.stream.worker_cli import add_common_config_arguments  # noqa: PLC0415

    parser.add_argument("--spec", default=None, help="rank mode: the round spec the fine-tune worker wrote (rank 0)")
    parser.add_argument("--backend", default="auto", choices=["auto", "gloo", "nccl"],
                        help="rank mode: process-group backend (auto: nccl on CUDA, gloo on the CPU)")
    parser.add_argument("--device-kind", default="cpu", choices=["cpu", "cuda"],
                        help="rank mode: cuda puts rank i on cuda:<local rank i>")
    parser.add_argument("--timeout-s", type=float, default=1800.0, help="rank mode: collective timeout (seconds)")
    parser.add_argument("--follow", action="store_true",
                        help="run this host's part of every multi-host round (node rank >= 1) until stopped")
    parser.add_argument("--node-rank", type=int, default=1, help="follow mode: this host's node rank (1..nnodes-1)")
    parser.add_argument("--device", default=None, help="follow mode: auto, cpu or cuda (default: finetune.device)")
    add_common_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """CLI entry: one rank (default) or the follower loop (``--follow``)."""
    from adrec_stream.incremental import distributed  # noqa: PLC0415

    if not args.follow:
        return distributed.run_rank(args.spec, backend=args.backend, device_kind=args.device_kind,
                                    timeout_s=args.timeout_s)
    from adrec_stream.runtime import resolve_device  # noqa: PLC0415
    from adrec_stream.stream.worker_cli import load_from_args  # noqa: PLC0415

    cfg = load_from_args(args).finetune
    device = resolve_device(args.device or cfg.device)
    distributed.check_distributed(cfg, device)
    stop = threading.Event()
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, lambda *_: stop.set())
    return distributed.follow(cfg.distributed, device.type, args.node_rank,
                              timeout_s=cfg.max_seconds + cfg.distributed.launch_timeout_s, should_stop=stop.is_set)
