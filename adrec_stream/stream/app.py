"""Faust apps of the two streaming workers: ingest (clicks -> state + sequence updates) and score.

Ingest worker (consumer group ``groups.ingest``), at-least-once with exact state: records are taken in batches with
``stream.noack_take(n, within)`` (values kept as raw bytes),
decoded with :func:`~adrec_stream.stream.events.decode_click`; malformed ones are sent to the dead-letter topic
(reason + source partition/offset); one sequence update per click not yet applied is computed
(:meth:`SequenceStore.preview`) and published; once all these deliveries are confirmed, the whole batch goes to
:meth:`SequenceStore.apply` - one RocksDB WriteBatch holding the sequence appends and the last applied offset
per partition, skipping records at or below the stored offset (so a re-delivered record is never applied
twice); only then are the batch's events acknowledged, so the committed offset never passes an event whose
effect is not stored. Publishing before storing makes the sequence updates at-least-once (a crash between
the delivery and the write re-publishes them with the same ``event_id``) instead of losing them.
Tombstones and records with an empty key and no ``user_id`` are skipped (counted), their offsets commit.
State is per partition (:mod:`adrec_stream.state.partitioned`): one SequenceStore per clicks partition at
``state_dir/sequences/<topic>-<partition>``, opened at the partition's first record (waiting up to
``store_lock_wait_s`` for the previous owner to release its RocksDB lock, then failing with a clear
:class:`~adrec_stream.errors.StoreLockedError`) and closed when the partition is revoked (faust calls the
revocation handler after the events in flight were processed). Ingest workers on one host sharing
``state_dir`` therefore hand partitions over WITH their state; a batch is previewed, written and retried per
partition, and its events are acknowledged per partition once that partition's write succeeded. Records of
a partition revoked while buffered are neither applied nor acknowledged (the new owner gets them).
A failed RocksDB write (nothing applied, see :meth:`SequenceStore.apply`) is retried
``batch.store_write_attempts`` times in place; if it keeps failing the agent fails (below) without acking.
Broker reset: when a partition delivers records at or below the stored applied offset although the
partition's log end (fetch high watermark, correct also on Tansu) is not above that offset, the broker lost
its log (embedded memory broker restarted empty, or the topic was recreated); the worker logs an error event
``broker_reset_detected`` with the numbers, forgets the stored offset of that partition (in that
partition's store) and applies the new log's records instead of skipping them as duplicates.
See docs/reliability.md.
The agent runs under :class:`mode.CrashingSupervisor`: a handler failure stops the worker (exit code
:data:`EXIT_AGENT_CRASHED`) instead of restarting the agent past the failed batch; the next start resumes at
the last committed offset.

Score worker (group ``groups.scoring``): stateless. It takes batches of sequence updates (each carries the
user's window of raw item ids), runs :class:`~adrec_stream.serving.recommender.ReloadingRecommender` in a
thread (so heartbeats continue) and publishes one recommendation per update, then acknowledges. A
re-delivered update yields a duplicate recommendation with the same ``event_id``.

Sequence update value (JSON): ``user_id``, ``items`` (raw ids, oldest first, <= window), ``event_id``,
``event_ts`` (click time, s), ``produced_ts`` (Kafka timestamp of the click record, s), ``ingest_ts`` (s),
``source`` {partition, offset}. Recommendation value (JSON): ``user_id``, ``items``, ``scores``,
``model_version``, ``event_id``, ``event_ts``, ``produced_ts``, ``emitted_ts``, ``fallback``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson

from adrec_stream.broker.process import effective_bootstrap
from adrec_stream.logging import get_logger
from adrec_stream.stream.compat import consumer_timing, install_faust_compat
from adrec_stream.stream.config import StreamConfig
from adrec_stream.stream.events import DecodeError, dead_letter_record, decode_click

#: Exit code of a worker whose agent crashed (the supervisor - demo, systemd - restarts it).
EXIT_AGENT_CRASHED = 3

#: Seconds to wait before retry n of a failed sequence-store write (times n).
STORE_RETRY_BACKOFF_S = 0.2

#: Decode reasons that are skipped (counted, offset committed) rather than dead-lettered.
SKIP_REASONS = frozenset({"tombstone", "empty_key"})

Role = Literal["ingest", "score"]


@dataclass
class WorkerStats:
    """Counters of one worker process (logged every ``interval_s`` and at shutdown)."""

    received: int = 0
    applied: int = 0
    duplicates_skipped: int = 0
    dead_lettered: int = 0
    skipped: int = 0
    published: int = 0
    fallback: int = 0
    batches: int = 0
    write_retries: int = 0
    broker_resets: int = 0
    started: float = field(default_factory=time.time)
    failed: BaseException | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-able counters plus the mean rate (records/s) since start."""
        d = {k: v for k, v in self.__dict__.items() if k not in ("started", "failed")}
        d["rate_per_s"] = round(self.received / max(time.time() - self.started, 1e-9), 1)
        return d


def _now() -> float:
    return time.time()


def _ts_s(msg: Any) -> float | None:
    ts = getattr(msg, "timestamp", None)
    return float(ts) if ts else None


class WriteFaultInjector:
    """Test hook: the sequence store's WriteBatch fails ``times`` times for a batch holding ``offset``.

    Wraps :meth:`SequenceStore._write_batch`; ``current`` is set to the records of the batch about to be
    applied. The failure is an ``OSError`` raised before RocksDB sees the batch, which
    :meth:`SequenceStore.apply` turns into a :class:`~adrec_stream.errors.StoreError` (nothing applied),
    like a real failed write. Never active in production (``adrec-stream worker`` hides the option).
    """

    def __init__(self, offset: int, times: int) -> None:
        self.offset = offset
        self.remaining = times
        self.current: list = []

    @classmethod
    def parse(cls, spec: str) -> WriteFaultInjector:
        """``"OFFSET:TIMES"`` (or ``"OFFSET"`` = once) -> injector.

        Raises:
            ValueError: not of that form.
        """
        off, _, times = spec.partition(":")
        return cls(int(off), int(times or 1))

    def install(self, store: Any) -> None:
        """Wrap ``store._write_batch``."""
        write = store._write_batch

        def faulty(wb: Any) -> None:
            if self.remaining > 0 and any(r.offset == self.offset for r in self.current):
                self.remaining -= 1
                raise OSError(f"injected RocksDB write failure for the batch holding offset {self.offset} "
                              "(test hook)")
            write(wb)

        store._write_batch = faulty


def _drop_tracebacks_from_now_on() -> None:
    """Strip the traceback from every later log record of every root handler (the message lines stay).

    Called once an operations error was logged as one line: the worker then only shuts down, and the
    framework's shutdown adds nothing an operator can use. That covers faust's own crash log of the error
    and the races of its shutdown (measured: about 1 run in 9, mode logs "Error while stopping child ...
    Event loop is closed" with a traceback while stopping the consumer thread)."""

    def _filter(record: logging.LogRecord) -> bool:
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True

    for handler in [*logging.getLogger().handlers, logging.lastResort]:
        if handler is not None:
            handler.addFilter(_filter)


def recommend_batch(recommender: Any, histories: list[list[str]], k: int, exclude_history: bool) -> list:
    """Top-``k`` per history; with ``exclude_history`` no item of the WHOLE window is returned.

    The recommender only knows the last ``max_len`` items it feeds the model, so ``k + len(window)``
    candidates are asked for and the window's items filtered out here (window <= a few hundred items:
    a slightly larger top-k, no extra forward pass).
    """
    if not exclude_history:
        return recommender.recommend(histories, k)
    extra = max((len(set(h)) for h in histories), default=0)
    out = []
    for hist, rec in zip(histories, recommender.recommend(histories, k + extra, exclude_history=True)):
        seen = set(hist)
        keep = [(i, s) for i, s in zip(rec.items, rec.scores) if i not in seen][:k]
        out.append(rec._replace(items=[i for i, _ in keep], scores=[s for _, s in keep]))
    return out


def build_app(cfg: StreamConfig, role: Role, *, exclude_history: bool = False,
              crash_after_batches: int | None = None, inject_write_failure: str | None = None) -> Any:
    """Build the faust app of one worker role.

    Args:
        cfg: stream config; the bootstrap address is :func:`~adrec_stream.broker.process.effective_bootstrap`.
        role: "ingest" or "score".
        exclude_history: score worker: leave items already in the user's window out of the top-k.
        crash_after_batches: test hook: raise inside the handler after this many batches (before acking),
            to exercise the crashing supervisor. None in production.
        inject_write_failure: test hook ``"OFFSET:TIMES"``: the store write of the batch holding that
            clicks offset fails TIMES times (:class:`WriteFaultInjector`). None in production.

    Returns:
        A ``faust.App`` with the role's agent; ``app.adrec_stats`` holds its :class:`WorkerStats`, and for
        the ingest role ``app.adrec_stores`` its :class:`~adrec_stream.state.partitioned.PartitionStores`
        (closed by the agent on exit; closing again is a no-op). A partition store still locked by another
        process after ``store_lock_wait_s`` fails the agent with :class:`StoreLockedError` (in
        ``app.adrec_stats.failed``; ``adrec-stream worker`` prints it as one line and exits 2).

    Raises:
        StoreError: ingest role, ``state_dir/sequences`` holds the single-store layout of an earlier build.
    """
    import faust  # noqa: PLC0415 - heavy import, only in workers
    import mode  # noqa: PLC0415

    install_faust_compat()
    timing = consumer_timing(cfg)
    group = cfg.groups.ingest if role == "ingest" else cfg.groups.scoring
    datadir = Path(cfg.state_dir) / f"faust-{role}"
    datadir.parent.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        group,
        broker=f"kafka://{effective_bootstrap(cfg)}",
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
        stream_buffer_maxsize=max(4096, 2 * cfg.batch.ingest_max_records),
    )
    app.adrec_timing = timing
    app.adrec_stats = WorkerStats()
    log = get_logger(f"adrec_stream.worker.{role}", group=group)

    def topic(name: str, partitions: int) -> Any:
        return app.topic(name, partitions=partitions, key_type=bytes, value_type=bytes,
                         key_serializer="raw", value_serializer="raw")

    t = cfg.topics
    clicks = topic(t.clicks.name, t.clicks.partitions)
    updates = topic(t.sequence_updates.name, t.sequence_updates.partitions)
    recs = topic(t.recommendations.name, t.recommendations.partitions)
    dead = topic(t.dead_letter.name, t.dead_letter.partitions)
    stats: WorkerStats = app.adrec_stats

    @app.timer(interval=5.0)
    async def _log_stats() -> None:
        log.info("worker_stats", role=role, **stats.as_dict())

    @app.on_partitions_assigned.connect
    async def _assigned(sender: Any, assigned: Any, **_: Any) -> None:
        log.info("partitions_assigned", role=role, partitions=sorted(f"{tp.topic}:{tp.partition}" for tp in assigned))

    async def _deliver(futures: list) -> None:
        if futures:
            await asyncio.gather(*futures)

    if role == "ingest":
        from faust.types import TP  # noqa: PLC0415

        from adrec_stream.errors import StoreError, StoreLockedError  # noqa: PLC0415
        from adrec_stream.state.partitioned import PartitionStores  # noqa: PLC0415
        from adrec_stream.state.store import SourceRecord  # noqa: PLC0415

        faults = WriteFaultInjector.parse(inject_write_failure) if inject_write_failure else None
        # one store per clicks partition, opened at the partition's first record, closed when it is revoked;
        # the layout is checked here so that a wrong state_dir is a clear start-up error
        stores = PartitionStores(cfg.state_dir, window=cfg.window, lock_wait_s=cfg.store_lock_wait_s,
                                 on_open=faults.install if faults is not None else None)
        app.adrec_stores = stores
        owned: set[int] = set()  # clicks partitions assigned to this worker now

        @app.on_partitions_assigned.connect
        async def _own(sender: Any, assigned: Any, **_: Any) -> None:
            owned.clear()
            owned.update(tp.partition for tp in assigned if tp.topic == t.clicks.name)

        @app.on_partitions_revoked.connect
        async def _revoked(sender: Any, revoked: Any, **_: Any) -> None:
            # faust calls this after the agent finished the events in flight (consumer wait_empty)
            parts = {tp.partition for tp in revoked if tp.topic == t.clicks.name}
            owned.difference_update(parts)
            closed = stores.close((t.clicks.name, p) for p in parts)
            log.info("partitions_revoked", role=role, partitions=sorted(parts),
                     stores_closed=[f"{name}-{p}" for name, p in closed])

        @app.agent(clicks, supervisor_strategy=mode.CrashingSupervisor, name="ingest")
        async def ingest(stream: Any) -> None:
            log.info("ingest_started", stores=str(stores.path(t.clicks.name, 0).parent), window=cfg.window)
            try:
                # noack(): acks are off for good. noack_take alone restores acking in its `finally`, so on a
                # handler failure the events still passing through the stream would be acked (and committed)
                # although never applied - measured: 2 of 400 clicks lost in the crash test without this.
                manual = stream.noack()
                async for events in manual.noack_take(cfg.batch.ingest_max_records, within=cfg.batch.ingest_within_s):
                    done = await _ingest_batch(events)
                    for ev in events:
                        if ev.message.partition in done:
                            await manual.ack(ev)
            except StoreLockedError as err:
                # an operations problem, not a bug: no traceback in the log (faust logs agent crashes with
                # one); `adrec-stream worker` prints the error as one line and exits 2
                stats.failed = err
                log.error("ingest_failed", error=str(err))
                _drop_tracebacks_from_now_on()
                raise
            except BaseException as err:
                if not isinstance(err, asyncio.CancelledError):
                    stats.failed = err
                    log.error("ingest_failed", error=repr(err))
                raise
            finally:
                stores.close_all()

        def _highwater(topic_name: str, partition: int) -> int | None:
            """Log end offset of a partition as carried by the consumer's fetch responses (None if unknown)."""
            try:
                hw = app.consumer.highwater(TP(topic_name, partition))
            except Exception:  # noqa: BLE001 - consumer not ready / partition not assigned
                return None
            return int(hw) if hw is not None and hw >= 0 else None

        def _reconcile_broker_reset(store: Any, topic_name: str, part: int, records: list) -> None:
            """Forget the stored offset of a partition whose log restarted below it (see module docstring)."""
            lowest = records[0].offset
            stored = store.applied_offset(topic_name, part)
            if stored is None or lowest > stored:
                return  # the usual case: nothing at or below the stored offset
            hw = _highwater(topic_name, part)
            if hw is None or hw > stored:
                return  # an ordinary re-delivery: the log still holds the stored offset
            stats.broker_resets += 1
            log.error("broker_reset_detected", topic=topic_name, partition=part, stored_applied_offset=stored,
                      log_end_offset=hw, first_offset_received=lowest,
                      action="forgot the stored offset of this partition; records of the new log are applied",
                      hint="the broker lost its log (embedded memory broker restarted empty, or the topic was "
                           "recreated); records produced while it was down or lost with it are not recovered")
            store.forget_offsets(topic_name, [part])

        async def _apply_with_retry(store: Any, records: list) -> list | None:
            """``store.apply(records)`` with in-place retries; None if the store was closed by a revocation."""
            attempts = cfg.batch.store_write_attempts
            for attempt in range(1, attempts + 1):
                if faults is not None:
                    faults.current = records
                if store.closed:
                    return None
                try:
                    return store.apply(records)
                except StoreError as err:
                    if store.closed:
                        return None
                    if attempt >= attempts:
                        raise
                    stats.write_retries += 1
                    log.warning("store_write_retry", attempt=attempt, attempts=attempts, partition=records[0].partition,
                                error=str(err)[:300])
                    await asyncio.sleep(STORE_RETRY_BACKOFF_S * attempt)
            raise AssertionError("unreachable")

        async def _ingest_batch(events: list) -> set[int]:
            """Process one batch; returns the partitions whose events may be acknowledged (effects stored)."""
            stats.received += len(events)
            groups: dict[int, list] = {}
            dl_futures, produced, dropped = [], {}, 0
            for ev in events:
                msg = ev.message
                if msg.partition not in owned:
                    dropped += 1  # revoked while buffered: the new owner gets it again (not acked here)
                    continue
                try:
                    click = decode_click(msg.value, msg.key, item_id_type=cfg.item_id_type,
                                         max_bytes=cfg.max_event_bytes,
                                         default_event_id=f"{msg.topic}:{msg.partition}:{msg.offset}")
                except DecodeError as err:
                    click = None
                    if err.reason in SKIP_REASONS:
                        stats.skipped += 1
                    else:
                        stats.dead_lettered += 1
                        dl_futures.append(await dead.send(
                            key=msg.key, value=dead_letter_record(err, msg.topic, msg.partition, msg.offset,
                                                                  msg.key, msg.value)))
                groups.setdefault(msg.partition, []).append(SourceRecord(msg.topic, msg.partition, msg.offset, click))
                if click is not None:
                    produced[(msg.partition, msg.offset)] = _ts_s(msg)
            if dropped:
                log.warning("records_of_revoked_partition_dropped", count=dropped)
            # Publish the updates the batch WILL produce, then store it: a crash in between re-delivers
            # the batch (not yet stored), which then publishes again (duplicates, same event_id) and stores
            # once; storing first would lose the updates of a crash between the write and the delivery.
            # Each partition has its own store: preview, write and retry are per partition.
            work = []
            for part, records in groups.items():
                store = await stores.open_async(records[0].topic, part)
                _reconcile_broker_reset(store, records[0].topic, part, records)
                work.append((part, store, records, store.preview(records)))
            now = _now()
            futures = []
            for _, _, _, preview in work:
                for u in preview:
                    value = orjson.dumps({
                        "user_id": u.user_id, "items": list(u.items), "event_id": u.event.event_id,
                        "event_ts": u.event.ts, "produced_ts": produced.get((u.partition, u.offset)),
                        "ingest_ts": now, "source": {"partition": u.partition, "offset": u.offset},
                    })
                    futures.append(await updates.send(key=u.user_id.encode(), value=value))
            await _deliver(dl_futures)  # dead letters are out before their offsets count as applied
            await _deliver(futures)
            stats.published += len(futures)
            done: set[int] = set()
            for part, store, records, preview in work:
                applied = await _apply_with_retry(store, records)
                if applied is None:
                    log.warning("partition_revoked_before_write", partition=part, records=len(records))
                    continue  # not acked: the new owner applies (and re-publishes, same event_id) these
                if [(u.partition, u.offset, u.items) for u in applied] != \
                        [(u.partition, u.offset, u.items) for u in preview]:
                    raise RuntimeError(f"sequence store of partition {part} changed between preview and apply "
                                       "(a second writer?)")
                done.add(part)
                stats.applied += len(applied)
                stats.duplicates_skipped += sum(r.event is not None for r in records) - len(applied)
            stats.batches += 1
            if crash_after_batches is not None and stats.batches >= crash_after_batches:
                raise RuntimeError(f"injected failure after {stats.batches} batches (test hook)")
            return done

    else:
        @app.agent(updates, supervisor_strategy=mode.CrashingSupervisor, name="score")
        async def score(stream: Any) -> None:
            import torch  # noqa: PLC0415

            from adrec_stream.serving.recommender import ReloadingRecommender  # noqa: PLC0415
            from adrec_stream.serving.registry import ModelRegistry  # noqa: PLC0415

            torch.set_num_threads(1)
            recommender = ReloadingRecommender(ModelRegistry(cfg.registry_dir), poll_s=cfg.registry_poll_s,
                                               device=cfg.device, batch_size=cfg.batch.score_max_users)
            log.info("score_started", registry=cfg.registry_dir, top_k=cfg.top_k)
            loop = asyncio.get_running_loop()
            try:
                manual = stream.noack()  # see the ingest agent
                async for events in manual.noack_take(cfg.batch.score_max_users, within=cfg.batch.ingest_within_s):
                    await _score_batch(events, recommender, loop)
                    for ev in events:
                        await manual.ack(ev)
            except BaseException as err:
                if not isinstance(err, asyncio.CancelledError):
                    stats.failed = err
                    log.error("score_failed", error=repr(err))
                raise

        async def _score_batch(events: list, recommender: Any, loop: Any) -> None:
            stats.received += len(events)
            parsed = []
            for ev in events:
                try:
                    upd = orjson.loads(ev.message.value)
                    if not isinstance(upd, dict) or not isinstance(upd.get("items"), list):
                        raise ValueError("not a sequence update object")
                    parsed.append(upd)
                except (ValueError, TypeError) as err:
                    stats.skipped += 1
                    log.warning("bad_sequence_update", error=str(err)[:120],
                                partition=ev.message.partition, offset=ev.message.offset)
            if parsed:
                histories = [[str(i) for i in u["items"]] for u in parsed]
                results = await loop.run_in_executor(
                    None, recommend_batch, recommender, histories, cfg.top_k, exclude_history)
                now = _now()
                futures = []
                for upd, rec in zip(parsed, results):
                    stats.fallback += bool(rec.fallback)
                    value = orjson.dumps({
                        "user_id": upd.get("user_id"), "items": list(rec.items),
                        "scores": [float(s) for s in rec.scores], "model_version": rec.model_version,
                        "event_id": upd.get("event_id"), "event_ts": upd.get("event_ts"),
                        "produced_ts": upd.get("produced_ts"), "emitted_ts": now, "fallback": bool(rec.fallback),
                    })
                    futures.append(await recs.send(key=str(upd.get("user_id")).encode(), value=value))
                await _deliver(futures)
                stats.published += len(futures)
            stats.batches += 1
            if crash_after_batches is not None and stats.batches >= crash_after_batches:
                raise RuntimeError(f"injected failure after {stats.batches} batches (test hook)")

    return app
