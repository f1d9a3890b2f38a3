"""``adrec-stream worker ingest|score|finetune``: run one streaming worker in the foreground.

The worker joins its consumer group on the configured cluster (the embedded broker's ``broker.host:port``
or ``bootstrap_servers``), logs structlog JSON to stderr, and stops on SIGINT/SIGTERM. Exit codes: 0 after
a clean stop, :data:`~adrec_stream.stream.app.EXIT_AGENT_CRASHED` (3) when the agent failed (the crashing
supervisor stopped the worker; restart it and it resumes from the last committed offset), 2 on config errors,
an unreachable cluster, or a record batch the Kafka client cannot decode (one line naming the topic, partition,
offset and cause: :mod:`adrec_stream.stream.undecodable`; restarting would only fail again at the same offset),
or an ``ops`` port already in use. With ``ops.enabled`` every worker serves ``/metrics``, ``/healthz`` and
``/readyz`` on ``ops.bind:ops.ports.<role>`` (:mod:`adrec_stream.ops`) and logs one ``ops_http_listening`` line.
The fine-tune worker (:mod:`adrec_stream.incremental.worker`) is a plain consumer process, not a Faust app; it
stops after the round in progress reaches its next step.
"""

from __future__ import annotations

import argparse
import gc

from adrec_stream.config import parse_overrides
from adrec_stream.errors import ConfigError
from adrec_stream.stream.config import DEFAULT_STREAM_CONFIG, StreamConfig, load_stream_config
from adrec_stream.stream.handler_support import WorkerHooks


def add_common_config_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config`` and repeatable ``--set KEY=VALUE`` (shared by worker and replay)."""
    parser.add_argument("--config", default=str(DEFAULT_STREAM_CONFIG), help="stream config YAML (default: configs/stream.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set broker.port=19092 (repeatable)")


def load_from_args(args: argparse.Namespace) -> StreamConfig:
    """Load the stream config named by ``--config`` with the ``--set`` overrides applied."""
    return load_stream_config(args.config, parse_overrides(args.set))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``role`` and the config options."""
    parser.add_argument("role", choices=["ingest", "score", "finetune"],
                        help="ingest: clicks -> state; score: -> recommendations; finetune: keeps the model fresh")
    add_common_config_arguments(parser)
    parser.add_argument("--device", default=None,
                        help="finetune only: auto (CUDA if present, else CPU), cpu, cuda[:N] (default: finetune.device)")
    parser.epilog = ("What the score worker serves (seen items, sampling steps, threads) is the scoring: section of "
                     "the stream config (e.g. --set scoring.seen_items=keep). The fine-tune worker's schedule, window, "
                     "guards and device are the finetune: keys of the stream config (configs/stream.yaml; e.g. "
                     "--set finetune.interval_s=60); see docs/incremental.md. "
                     "Score and fine-tune workers need a model in the registry first: adrec-stream model publish. "
                     "Every worker serves /metrics (Prometheus), /healthz and /readyz on ops.bind:ops.ports.<role> "
                     "(127.0.0.1:9464 ingest, 9465 score, 9466 finetune); a second worker of a role on this host "
                     "needs its own port, e.g. --set ops.ports.score=9475 (docs/operations.md).")
    parser.add_argument("--test-hold-publish-s", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--crash-after-batches", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--inject-write-failure", default=None, metavar="OFFSET:TIMES", help=argparse.SUPPRESS)


def tune_gc(young_threshold: int) -> None:
    """Garbage collection of a long-running worker (``batch.gc_young_threshold``): everything built at start
    (libraries, the Faust app, the handler) moves to the permanent generation (``gc.freeze``), so full collections
    skip it, and a young collection runs every ``young_threshold`` allocations instead of every 700 (reference
    counting frees the batches' objects either way; the collector is only needed for cycles). 0: CPython's
    defaults are kept."""
    if young_threshold == 0:
        return
    gc.collect()
    gc.freeze()
    gc.set_threshold(young_threshold, *gc.get_threshold()[1:])


def run_worker(cfg: StreamConfig, role: str, *, log_level: str = "INFO", hooks: WorkerHooks | None = None) -> int:
    """Run the worker of ``role`` until stopped; returns the process exit code (see module docstring).

    ``hooks``: test-only fault injection (the reliability tests set it through hidden options).

    Raises:
        StoreLockedError: ingest, a partition's sequence store stayed held by another process for
            ``store_lock_wait_s`` (the CLI prints it as one line naming the path and PID, exit 2).
        PartitionCountChangedError: ingest, the clicks topic's partition count differs from the one the state was
            built with, at start or while running (one line, exit 2).
        RestoreTimeoutError: ingest, an assigned partition was not restored from the changelog within
            ``state.restore_timeout_s`` (one line, exit 2).
        BrokerError: the cluster is unreachable.
        ConfigError: the operations endpoint's port cannot be bound (in use).
        UndecodableBatchError: a record batch of a topic the worker reads could not be decoded (the CLI prints it
            as one line naming the topic, partition, offset and cause, exit 2).
    """
    import faust  # noqa: PLC0415

    from adrec_stream.logging import get_logger  # noqa: PLC0415
    from adrec_stream.ops.http import serve_ops  # noqa: PLC0415
    from adrec_stream.stream.app import EXIT_AGENT_CRASHED, ONE_LINE_ERRORS, build_app  # noqa: PLC0415
    from adrec_stream.stream.undecodable import first_undecodable  # noqa: PLC0415

    try:
        import uvloop  # noqa: PLC0415

        uvloop.install()
    except ImportError:
        pass
    from adrec_stream.broker.admin import ensure_topics  # noqa: PLC0415
    from adrec_stream.broker.process import effective_bootstrap  # noqa: PLC0415

    log = get_logger("adrec_stream.worker", role=role)
    # fail fast with a clear message when the cluster is unreachable; create missing topics (faust itself
    # is told not to declare topics, so partitions always come from the config)
    from adrec_stream.broker.security import security_of  # noqa: PLC0415

    security = security_of(cfg)  # credentials missing / unreadable: ConfigError (exit 2) before anything starts
    log.info("kafka_security", **security.describe())
    ensure_topics(effective_bootstrap(cfg), cfg.topics.all(), security=security)
    expected = check_clicks_partitions(cfg) if role == "ingest" else None
    built = build_app(cfg, role, hooks=hooks, expected_partitions=expected)  # type: ignore[arg-type]
    worker = faust.Worker(built.app, loglevel=log_level if log_level != "INFO" else "WARNING", quiet=True,
                          override_logging=False, redirect_stdouts=False)
    worker.spinner = None  # no terminal escape codes in the JSON log stream
    tune_gc(cfg.batch.gc_young_threshold)
    count_gc = built.stats.count_gc()
    code: int = 0
    server = serve_ops(cfg.ops, role, built.ops.metrics.registry, built.ops.readiness)  # port in use: ConfigError
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        gc.callbacks.remove(count_gc)
        if built.stores is not None:
            built.stores.close_all()  # no-op when the agent closed them
        if server is not None:
            server.stop()
    stats = built.stats
    log.info("worker_stopped", **stats.as_dict(), failed=repr(stats.failed) if stats.failed else None)
    if isinstance(stats.failed, ONE_LINE_ERRORS):
        raise stats.failed  # store locked, restore timed out, partition count changed: one clear line, exit 2
    undecodable = first_undecodable()
    if undecodable is not None:
        raise undecodable  # the consumer could not decode a batch: one clear line, exit 2
    if stats.failed is not None:
        return EXIT_AGENT_CRASHED
    return code


def check_clicks_partitions(cfg: StreamConfig) -> int:
    """The clicks topic's partition count on the cluster, checked against the count recorded in ``state_dir`` (and
    recorded there at the first start) and against the changelog topic's count.

    Raises:
        PartitionCountChangedError: the count differs from the recorded one, or the changelog topic is not
            co-partitioned with the clicks topic.
        BrokerError: the cluster is unreachable.
    """
    from adrec_stream.broker.admin import list_topics  # noqa: PLC0415
    from adrec_stream.broker.process import effective_bootstrap  # noqa: PLC0415
    from adrec_stream.broker.security import security_of  # noqa: PLC0415
    from adrec_stream.errors import PartitionCountChangedError  # noqa: PLC0415
    from adrec_stream.state.changelog import check_partition_count  # noqa: PLC0415

    t = cfg.topics
    counts = list_topics(effective_bootstrap(cfg), security=security_of(cfg))
    n = counts[t.clicks.name]
    if cfg.state.changelog and counts.get(t.changelog_topic.name, n) != n:
        raise PartitionCountChangedError(
            f"changelog topic {t.changelog_topic.name!r} has {counts[t.changelog_topic.name]} partitions, clicks topic "
            f"{t.clicks.name!r} {n}: changelog partition p must hold the state of clicks partition p; recreate the "
            "changelog topic with the clicks topic's partition count (its state is lost) or restore the clicks topic")
    return check_partition_count(cfg.state_dir, t.clicks.name, n)


def run(args: argparse.Namespace) -> int:
    """CLI entry: load config and run the worker."""
    if args.device is not None and args.role != "finetune":
        raise ConfigError(f"--device applies to the finetune worker only (the {args.role} worker's device is the "
                          "stream config's device key)")
    cfg = load_from_args(args)
    if args.role == "finetune":
        import os  # noqa: PLC0415

        # before torch starts its OpenMP threads: waiting threads sleep instead of spinning; on a host shared
        # with the ingest and score workers, 2 spinning threads made a round 3-4x slower (docs/benchmarks.md)
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        from adrec_stream.incremental.worker import FinetuneHooks, run_finetune_worker  # noqa: PLC0415

        return run_finetune_worker(cfg, device=args.device,
                                   hooks=FinetuneHooks(hold_publish_s=args.test_hold_publish_s))
    return run_worker(cfg, args.role, log_level=args.log_level,
                      hooks=WorkerHooks.from_options(args.crash_after_batches, args.inject_write_failure))
