"""Faust apps of the two streaming workers: thin wiring of the ingest and score handlers to Faust agents.

- Ingest worker (consumer group ``groups.ingest``): the agent takes batches of click records from
  ``stream.noack()`` (:func:`~adrec_stream.stream.batches.event_batches`: up to ``batch.ingest_max_records``,
  handed over when no further record waits; values kept as raw bytes), hands them to
  :class:`~adrec_stream.stream.ingest.IngestHandler` (decode, dead letters, sequence updates, one RocksDB
  WriteBatch per partition; the at-least-once protocol is described there) and acknowledges
  only the records of the partitions whose effects were stored. State is per partition
  (:mod:`adrec_stream.state.partitioned`): one SequenceStore per clicks partition at
  ``state_dir/sequences/<topic>-<partition>``, opened in the background right after the assignment (for
  ``/readyz``; a failed open is logged as ``store_open_failed``) or at the partition's first record, whichever
  comes first (waiting up to ``store_lock_wait_s`` for the previous owner to release its RocksDB lock; the
  batch's open then fails with a clear :class:`~adrec_stream.errors.StoreLockedError`) and closed when the
  partition is revoked (faust calls the
  revocation handler after the events in flight were processed). Ingest workers on one host sharing
  ``state_dir`` therefore hand partitions over WITH their state; across hosts an assigned partition's store is
  first restored from the changelog topic (:mod:`adrec_stream.state.changelog`), and with
  ``state.standby_replicas`` the worker tails the changelog of the partitions it does not own. A change of the
  clicks topic's partition count (seen at an assignment, a record, or the check every
  ``state.partition_check_interval_s``) stops the worker with one error line (exit 2).
- Score worker (group ``groups.scoring``): stateless; batches of sequence updates go to
  :class:`~adrec_stream.stream.score.ScoreHandler`, which runs the model in a thread (heartbeats continue) and
  publishes one recommendation per update; then the batch is acknowledged. Score workers on many hosts share the
  group (each gets some partitions); every one of them also reads the model-versions topic outside the group
  (:class:`~adrec_stream.serving.announce.VersionFollower`) and switches to an announced version at once.

Operations (:class:`~adrec_stream.stream.worker_ops.FaustOps`): each worker's metrics, consumer lag and readiness
(ingest: partitions assigned, their stores open - opened right after the assignment - and lag not growing; score:
partitions assigned, a model version loaded, lag not growing; the score worker also checks the registry while
idle). ``adrec-stream worker`` serves them on the ``ops:`` port.

Both agents run under :class:`mode.CrashingSupervisor`: a handler failure stops the worker (exit code
:data:`EXIT_AGENT_CRASHED`) instead of restarting the agent past the failed batch; the next start resumes at the
last committed offset. Records are sent with the app's producer directly
(:class:`~adrec_stream.stream.handler_support.ProducerPublisher`). See docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from adrec_stream.broker.process import effective_bootstrap
from adrec_stream.broker.security import security_of
from adrec_stream.errors import PartitionCountChangedError, RestoreTimeoutError, StoreLockedError
from adrec_stream.evaluation.prequential import OnlinePrequential
from adrec_stream.logging import drop_tracebacks_from_now_on, get_logger
from adrec_stream.state.changelog import StandbyReplicas, hold_state_dir, make_consumer, partition_count_error
from adrec_stream.state.partitioned import PartitionStores
from adrec_stream.stream.batches import event_batches
from adrec_stream.stream.compat import consumer_timing, install_faust_compat, register_timing
from adrec_stream.stream.config import StreamConfig
from adrec_stream.stream.delivery import install_direct_delivery, register_direct_delivery
from adrec_stream.stream.handler_support import ProducerPublisher, WorkerHooks, WorkerStats
from adrec_stream.stream.ingest import IngestHandler, make_stores
from adrec_stream.stream.score import ScoreHandler
from adrec_stream.stream.undecodable import install_undecodable_batch_errors
from adrec_stream.stream.worker_ops import FaustOps, faust_highwater

#: Exit code of a worker whose agent crashed (the supervisor - demo, systemd - restarts it).
EXIT_AGENT_CRASHED = 3
#: Errors that stop a worker as one clear line (operations problems, not bugs): no traceback, exit 2.
ONE_LINE_ERRORS = (StoreLockedError, PartitionCountChangedError, RestoreTimeoutError)

Role = Literal["ingest", "score"]


@dataclass
class WorkerApp:
    """A built worker: the Faust app and what the caller reads after it stopped.

    Attributes:
        app: the ``faust.App`` with the role's agent.
        role: "ingest" or "score".
        stats: the worker's counters (``stats.failed``: the error that stopped the agent, if any).
        ops: its metrics, lag and readiness (serve ``ops.metrics.registry`` and ``ops.readiness``).
        stores: ingest: the per-partition sequence stores (closed by the agent on exit; closing again is a
            no-op); None for the score worker.
    """

    app: Any
    role: Role
    stats: WorkerStats
    ops: FaustOps
    stores: PartitionStores | None = None


def _faust_app(cfg: StreamConfig, role: Role) -> Any:
    """The ``faust.App`` of one role: raw bytes in and out, no web server, topics never declared by faust."""
    import faust  # noqa: PLC0415 - heavy import, only in workers

    install_faust_compat()
    install_undecodable_batch_errors()
    timing = consumer_timing(cfg)
    datadir = Path(cfg.state_dir) / f"faust-{role}"
    datadir.parent.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        cfg.groups.ingest if role == "ingest" else cfg.groups.scoring,
        broker=[f"kafka://{server}" for server in effective_bootstrap(cfg).split(",")],
        broker_credentials=security_of(cfg).faust_credentials(),
        broker_client_id=f"{cfg.client_id}-{role}",
        store="memory://",
        key_serializer="raw",
        value_serializer="raw",
        datadir=str(datadir),
        web_enabled=False,
        topic_allow_declare=False,
        topic_disable_leader=True,
        broker_session_timeout=timing.session_timeout_s,
        broker_heartbeat_interval=timing.heartbeat_interval_s,
        broker_rebalance_timeout=timing.rebalance_timeout_s,
        broker_request_timeout=cfg.consumer.request_timeout_s,
        broker_commit_interval=0.5,
        consumer_auto_offset_reset=cfg.consumer.auto_offset_reset,
        producer_linger=cfg.batch.produce_linger_s,
        producer_max_batch_size=cfg.batch.produce_max_batch_bytes,
        stream_buffer_maxsize=max(4096, 2 * cfg.batch.ingest_max_records, 2 * cfg.batch.score_max_users),
    )
    register_timing(app, timing)
    if cfg.consumer.direct_delivery:
        install_direct_delivery()
        register_direct_delivery(app)
    return app


def _raw_topic(app: Any, name: str, partitions: int) -> Any:
    return app.topic(name, partitions=partitions, key_type=bytes, value_type=bytes,
                     key_serializer="raw", value_serializer="raw")


async def _handle_in_batches(stream: Any, max_records: int, within_s: float,
                             handle: Callable[[list], Awaitable[list]], ops: FaustOps) -> None:
    """An agent's loop: batches of its ``stream`` (:func:`~adrec_stream.stream.batches.event_batches`) go to
    ``handle``, which returns the events whose effects are stored; those are acknowledged and counted in ``ops``.

    Acknowledgements are off for good (``stream.noack()``): faust's ``noack_take`` alone restores acking in its
    ``finally``, so on a handler failure the events still passing through the stream would be acked (and
    committed) although never applied - measured: 2 of 400 clicks lost in the crash test without this.
    """
    manual = stream.noack()
    batches = event_batches(manual, max_records, within_s)
    async with contextlib.aclosing(batches):  # its feeder task ends with the agent
        async for events in batches:
            stored = await handle(events)
            for ev in stored:
                await manual.ack(ev)
            ops.handled(ev.message for ev in stored)


def build_app(cfg: StreamConfig, role: Role, *, hooks: WorkerHooks | None = None,
              expected_partitions: int | None = None) -> WorkerApp:
    """Build the Faust app of one worker role, its handler wired to one agent.

    Args:
        cfg: stream config; the bootstrap address is :func:`~adrec_stream.broker.process.effective_bootstrap`.
        role: "ingest" or "score".
        hooks: test-only fault injection (:class:`~adrec_stream.stream.handler_support.WorkerHooks`); None in
            production.
        expected_partitions: ingest: the clicks partition count the state was built with
            (:func:`~adrec_stream.state.changelog.check_partition_count`); None: not checked.

    Returns:
        A :class:`WorkerApp`. A partition store still locked by another process after ``store_lock_wait_s``
        fails the agent with :class:`StoreLockedError` (in ``stats.failed``; ``adrec-stream worker`` prints it
        as one line and exits 2).

    Raises:
        StoreError: ingest role, ``state_dir/sequences`` holds the single-store layout of an earlier build.
        ConfigError: ingest with ``state.standby_replicas``, another ingest worker uses the same ``state_dir``.
    """
    import mode  # noqa: PLC0415

    hooks = hooks or WorkerHooks()
    app = _faust_app(cfg, role)
    stats = WorkerStats()
    log = get_logger(f"adrec_stream.worker.{role}", group=app.conf.id)
    t = cfg.topics
    publisher = ProducerPublisher(app.producer)
    ops = FaustOps(app, cfg, role)
    ops.install()

    @app.timer(interval=5.0)
    async def _log_stats() -> None:
        log.info("worker_stats", role=role, **stats.as_dict())

    @app.on_partitions_assigned.connect
    async def _assigned(sender: Any, assigned: Any, **_: Any) -> None:
        log.info("partitions_assigned", role=role, partitions=sorted(f"{tp.topic}:{tp.partition}" for tp in assigned))

    def _failed(err: BaseException) -> None:
        if isinstance(err, ONE_LINE_ERRORS):
            # an operations problem, not a bug: no traceback in the log (faust logs agent crashes with one);
            # `adrec-stream worker` prints the error as one line and exits 2
            stats.failed = err
            log.error(f"{role}_failed", error=str(err))
            drop_tracebacks_from_now_on()
        elif not isinstance(err, asyncio.CancelledError):
            stats.failed = err
            log.error(f"{role}_failed", error=repr(err))

    if role == "ingest":
        stores = make_stores(cfg, hooks)
        bootstrap = effective_bootstrap(cfg)
        timing = consumer_timing(cfg)

        security = security_of(cfg)  # credentials resolved once (env / files), not at every consumer or check
        changelog_security = security.aiokafka()

        def changelog_consumer(purpose: str) -> Any:
            return make_consumer(bootstrap, client_id=f"{cfg.client_id}-{purpose}",
                                 fetch_max_wait_s=timing.fetch_max_wait_s, request_timeout_s=cfg.consumer.request_timeout_s,
                                 security=changelog_security)

        handler = IngestHandler(cfg, stores, publisher, stats, highwater=lambda tn, p: faust_highwater(app, tn, p),
                                hooks=hooks, metrics=ops.metrics, restore_consumer=lambda: changelog_consumer("restore"),
                                expected_partitions=expected_partitions)
        ops.readiness.add("stores", handler.stores_check)
        ops.on_log_cut_back(handler.log_cut_back)
        ops.metrics.watch_stores(lambda: [(tn, p, stores.path(tn, p)) for tn, p in stores.open_partitions()])
        standby = None
        standby_started = False
        if cfg.state.standby_replicas and cfg.state.changelog:
            hold_state_dir(cfg.state_dir)
            standby = StandbyReplicas(stores, lambda: changelog_consumer("standby"), changelog=t.changelog_topic.name,
                                      clicks_topic=t.clicks.name, partitions=t.clicks.partitions,
                                      chunk_records=cfg.state.restore_chunk_records)

        def _fatal(err: BaseException) -> None:
            # stop the whole worker (not only the agent): a graceful SIGTERM to ourselves, so that stores close and
            # the group is left cleanly; run_worker then raises the error as one line (exit 2)
            if stats.failed is None:
                stats.failed = err
                log.error("partition_count_changed", error=str(err))
                drop_tracebacks_from_now_on()
                os.kill(os.getpid(), signal.SIGTERM)

        @app.on_partitions_assigned.connect
        async def _own(sender: Any, assigned: Any, **_: Any) -> None:
            nonlocal standby_started
            owned = sorted(tp.partition for tp in assigned if tp.topic == t.clicks.name)
            if expected_partitions is not None and owned and owned[-1] >= expected_partitions:
                _fatal(partition_count_error(t.clicks.name, expected_partitions, owned[-1] + 1,
                                             f"partition {owned[-1]} was assigned"))
                return
            if standby is not None:
                standby.set_owned(owned)  # before the restores start: the standby never writes an owned store again
                if not standby_started:
                    standby_started = True
                    ops.spawn(standby.run())
            handler.assign(owned)
            ops.spawn(handler.open_owned_stores())

        if expected_partitions is not None:
            @app.timer(interval=cfg.state.partition_check_interval_s)
            async def _check_partitions() -> None:
                from adrec_stream.broker.admin import list_topics  # noqa: PLC0415

                try:
                    counts = await asyncio.get_running_loop().run_in_executor(
                        None, functools.partial(list_topics, bootstrap, security=security))
                    now = counts.get(t.clicks.name)
                except Exception as err:  # noqa: BLE001 - broker briefly unreachable: the next check decides
                    log.warning("partition_check_failed", error=str(err)[:300])
                    return
                if now is not None and now != expected_partitions:
                    _fatal(partition_count_error(t.clicks.name, expected_partitions, now, "periodic metadata check"))

        @app.on_partitions_revoked.connect
        async def _revoked(sender: Any, revoked: Any, **_: Any) -> None:
            # faust calls this after the agent finished the events in flight (consumer wait_empty)
            parts = sorted(tp.partition for tp in revoked if tp.topic == t.clicks.name)
            closed = handler.revoke(parts)
            log.info("partitions_revoked", role=role, partitions=parts,
                     stores_closed=[f"{name}-{p}" for name, p in closed])

        @app.agent(_raw_topic(app, t.clicks.name, t.clicks.partitions), supervisor_strategy=mode.CrashingSupervisor,
                   name="ingest")
        async def ingest(stream: Any) -> None:
            log.info("ingest_started", stores=str(stores.path(t.clicks.name, 0).parent), window=cfg.window)
            try:
                async def apply(events: list) -> list:
                    done = await handler.handle([ev.message for ev in events])
                    return [ev for ev in events if ev.message.partition in done]

                await _handle_in_batches(stream, cfg.batch.ingest_max_records, cfg.batch.ingest_within_s, apply, ops)
            except BaseException as err:
                _failed(err)
                raise
            finally:
                ops.cancel_background()  # an eager store open must not outlive the stores
                stores.close_all()

        return WorkerApp(app, role, stats, ops, stores)

    prequential = OnlinePrequential(k=10, last_n=cfg.ops.prequential_last_n, max_users=cfg.ops.prequential_max_users)
    ops.metrics.watch_prequential(prequential.window)
    scoring: dict[str, ScoreHandler] = {}  # the handler, once the agent made it (it loads the model)
    ops.readiness.add("model", lambda: scoring["handler"].model_check() if "handler" in scoring
                      else (False, "score agent starting: no model loaded yet"))

    async def _idle_reload() -> None:
        handler = scoring.get("handler")
        if handler is not None and hasattr(handler.recommender, "maybe_reload"):
            # a version published while no update arrives is loaded (and shown) all the same
            await asyncio.get_running_loop().run_in_executor(None, handler.recommender.maybe_reload)
            handler.export_metrics()

    ops.on_refresh(_idle_reload)

    @app.agent(_raw_topic(app, t.sequence_updates.name, t.sequence_updates.partitions),
               supervisor_strategy=mode.CrashingSupervisor, name="score")
    async def score(stream: Any) -> None:
        handler = ScoreHandler(cfg, make_recommender(cfg), publisher, stats, hooks=hooks, metrics=ops.metrics,
                               prequential=prequential)
        scoring["handler"] = handler
        handler.export_metrics()
        follower = None
        if cfg.model_versions.follow:
            from adrec_stream.serving.announce import VersionFollower  # noqa: PLC0415

            # every score worker reads every announcement (no consumer group), whatever its partitions
            follower = VersionFollower(cfg, handler.recommender).start()
        log.info("score_started", registry=cfg.registry_dir, top_k=cfg.top_k, follow_announcements=follower is not None,
                 registry_poll=cfg.model_versions.registry_poll, **cfg.scoring.model_dump())
        try:
            async def answer(events: list) -> list:
                await handler.handle([ev.message for ev in events])
                return events

            await _handle_in_batches(stream, cfg.batch.score_max_users, cfg.batch.score_within_s, answer, ops)
        except BaseException as err:
            _failed(err)
            raise
        finally:
            if follower is not None:
                follower.stop()

    return WorkerApp(app, role, stats, ops)


def make_recommender(cfg: StreamConfig) -> Any:
    """The score worker's :class:`~adrec_stream.serving.recommender.ReloadingRecommender` with the serving
    settings of ``cfg`` (registry folder or URL and its download cache, polling, device, batch size, sampling steps,
    threads)."""
    import torch  # noqa: PLC0415

    from adrec_stream.serving.recommender import ReloadingRecommender  # noqa: PLC0415
    from adrec_stream.serving.registry import open_registry  # noqa: PLC0415

    torch.set_num_threads(cfg.scoring.threads)
    return ReloadingRecommender(open_registry(cfg.registry_dir, cache_dir=cfg.registry_cache), poll_s=cfg.registry_poll_s,
                                poll=cfg.model_versions.registry_poll, device=cfg.device,
                                batch_size=cfg.batch.score_max_users, steps=cfg.scoring.sampling_steps,
                                deterministic=cfg.scoring.deterministic)
