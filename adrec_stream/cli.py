"""The ``adrec-stream`` command line: one subcommand per job.

Each subcommand lives in the module of its concern and exposes
``add_arguments(parser)`` and ``run(args) -> int``. Errors derived from
:class:`~adrec_stream.errors.AdrecStreamError` are printed as one line and exit with 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from adrec_stream import __version__
from adrec_stream.errors import AdrecStreamError

#: subcommand -> (module path, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("adrec_stream.training.cli", "train ADRec or SASRec+ (three stages) on a dataset"),
    "evaluate": ("adrec_stream.evaluation.cli", "evaluate a checkpoint (HR@k, NDCG@k, full ranking, leave-one-out)"),
    "evaluate-replay": ("adrec_stream.evaluation.replay.cli", "replay logged clicks test-then-train: ADRec vs baselines"),
    "split-stats": ("adrec_stream.evaluation.split_stats",
                    "model-free val vs test statistics of a leave-one-out split (is the test step harder?)"),
    "bench": ("adrec_stream.bench.cli", "speed benchmarks against reference-equivalent paths"),
    "broker": ("adrec_stream.broker.cli", "start/stop/status of the embedded Kafka-compatible broker (Tansu)"),
    "worker": ("adrec_stream.stream.worker_cli", "run a streaming worker (ingest, score, finetune)"),
    "replay": ("adrec_stream.stream.replay", "replay a logged click file into the clicks topic"),
    "demo": ("adrec_stream.demo", "main job: broker + train + workers + replay + prequential summary"),
    "status": ("adrec_stream.ops.status", "one snapshot of a running deployment: lag, throughput, model, quality"),
    "dashboard": ("adrec_stream.ops.dashboard", "live status page (throughput, latency, prequential NDCG@10)"),
    "model": ("adrec_stream.serving.model_cli", "publish a checkpoint to the model registry, list versions, roll back"),
    "finetune-round": ("adrec_stream.incremental.round_cli",
                       "one rank of a distributed fine-tune round (started by torchrun), or --follow on other hosts"),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """Build the top-level parser, importing each subcommand module lazily.

    Args:
        only: import just this subcommand's module (the others get their one-line help and no options): the
            command being run, so that e.g. ``adrec-stream status`` does not pay for importing torch. None: all.
    """
    parser = argparse.ArgumentParser(
        prog="adrec-stream",
        description="Streaming sequential recommendation with ADRec (KDD 2025) on Kafka + RocksDB.",
    )
    parser.add_argument("--version", action="version", version=f"adrec-stream {__version__}")
    parser.add_argument("--log-level", default="INFO", type=str.upper, choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="minimum level of the JSON log lines on stderr (default INFO)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        if only is not None and name != only:
            continue
        try:
            importlib.import_module(module).add_arguments(p)
        except ModuleNotFoundError as err:  # subcommand not built yet in this checkout
            if err.name != module:
                raise
            p.set_defaults(_missing=True)
    return parser


def _command_in(argv: list[str]) -> str | None:
    """The subcommand named in ``argv`` (the first word that is one; ``--log-level``'s value skipped), or None."""
    skip = False
    for word in argv:
        if skip:
            skip = False
        elif word == "--log-level":
            skip = True
        elif word in COMMANDS:
            return word
        elif not word.startswith("-"):
            return None
    return None


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``adrec-stream`` console script."""
    argv = sys.argv[1:] if argv is None else argv
    command = _command_in(argv)
    parser = build_parser(only=command) if command is not None else build_parser(only="")
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 1
    from adrec_stream.logging import configure_logging

    configure_logging(args.log_level)
    if getattr(args, "_missing", False):
        print(f"adrec-stream: the '{args.command}' command is not available in this build", file=sys.stderr)
        return 2
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except AdrecStreamError as err:
        print(f"adrec-stream {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"adrec-stream {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # stdout closed by the reader (`adrec-stream status | head -3`): no traceback
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the interpreter's final flush must not fail again
        return 141


if __name__ == "__main__":
    sys.exit(main())
