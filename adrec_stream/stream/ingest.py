"""The ingest handler: a batch of click records -> dead letters, sequence updates and one store write per partition.

At-least-once with exact state. For each batch taken from the clicks topic:

1. Records of partitions not owned any more (revoked while buffered) are left alone: not applied, not
   acknowledged (the new owner gets them).
2. Each record is decoded with :func:`~adrec_stream.stream.events.decode_click`; malformed ones are sent to the
   dead-letter topic with the reason and their source partition/offset; tombstones and records with an empty key
   and no ``user_id`` are skipped (counted; their offsets commit).
3. Per partition, the partition's :class:`~adrec_stream.state.store.SequenceStore` plans the update of every
   click not yet applied (records at or below the stored applied offset are re-deliveries and are skipped), and
   those sequence updates are published (whole record batches per partition, ``Publisher.send_many``).
4. Once every delivery (dead letters and updates) is acknowledged, and ``state.changelog`` is on, each partition's
   changed windows go to its changelog partition (explicit partition = the clicks partition), then - once those are
   acknowledged - the partition's offset marker (:mod:`adrec_stream.state.changelog`).
5. Then each partition's plan of step 3 goes to :meth:`SequenceStore.apply_plan`: one RocksDB WriteBatch holding the
   appends, the partition's last applied offset and the changelog position after the marker. Nothing else writes
   a partition's store while its batch is in flight (a log cut back found by the lag check waits for the batch,
   :meth:`IngestHandler.log_cut_back`); the store would refuse the plan otherwise
   (:class:`~adrec_stream.errors.StalePlanError`, an internal error: the agent crashes and the worker restarts).
   A failed write (nothing applied) is retried ``batch.store_write_attempts`` times, then the batch fails.
6. :meth:`IngestHandler.handle` returns the partitions whose effects are stored; only their records may be
   acknowledged, so the committed offset never passes a click whose effect is not stored.

Publishing before storing makes the sequence updates at-least-once (a crash between the delivery and the write
re-publishes them with the same ``event_id``) instead of losing them.

Before the first batch of a newly assigned partition is applied (or right after the assignment), the partition's
store is opened and restored from the changelog (:meth:`IngestHandler.prepare`; ``changelog_restored`` is logged).
A record of a partition at or above the clicks partition count the state was built with stops the worker
(:class:`~adrec_stream.errors.PartitionCountChangedError`) before anything of it is applied.

Broker reset: when a partition delivers records at or below the stored applied offset although the partition's
log end (the fetch high watermark) is not above that offset, the broker lost its log (embedded memory broker
restarted empty, or the topic was recreated); the handler logs ``broker_reset_detected`` with the numbers, forgets
the stored offset of that partition and applies the new log's records instead of skipping them as duplicates.
See docs/reliability.md.

Sequence update value (JSON): ``user_id``, ``items`` (raw ids, oldest first, <= window), ``event_id``,
``event_ts`` (click time, s), ``produced_ts`` (Kafka timestamp of the click record, s), ``ingest_ts`` (s),
``source`` {partition, offset}.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import orjson

from adrec_stream.errors import StoreError
from adrec_stream.logging import get_logger
from adrec_stream.state.changelog import (
    MARKER_KEY,
    RestoreResult,
    marker_value,
    partition_count_error,
    restore_partition,
    window_value,
)
from adrec_stream.state.partitioned import PartitionStores
from adrec_stream.state.store import SequenceStore, SequenceUpdate, SourceRecord, StorePlan
from adrec_stream.stream.config import StreamConfig
from adrec_stream.stream.events import DecodeError, dead_letter_record, decode_click
from adrec_stream.stream.handler_support import ConsumedRecord, Publisher, WorkerHooks, WorkerStats, delivered

#: Seconds to wait before retry n of a failed sequence-store write (times n).
STORE_RETRY_BACKOFF_S = 0.2

#: Decode reasons that are skipped (counted, offset committed) rather than dead-lettered.
SKIP_REASONS = frozenset({"tombstone", "empty_key"})


#: the ``hint`` of a ``broker_reset_detected`` event
RESET_HINT = ("the broker lost its log (embedded memory broker restarted empty, or the topic was recreated); records "
              "produced while it was down or lost with it are not recovered")


def update_value(u: SequenceUpdate, produced_ts: float | None, ingest_ts: float) -> bytes:
    """The JSON value of one sequence update (fields in the module docstring)."""
    return orjson.dumps({
        "user_id": u.user_id, "items": u.items, "event_id": u.event.event_id, "event_ts": u.event.ts,
        "produced_ts": produced_ts, "ingest_ts": ingest_ts, "source": {"partition": u.partition, "offset": u.offset},
    })


class IngestHandler:
    """Applies batches of click records to the per-partition sequence stores (protocol in the module docstring).

    Args:
        cfg: stream config (topic names, window, decode rules, write attempts).
        stores: the per-partition stores (opened on a partition's first record, closed on revocation).
        publisher: where dead letters and sequence updates go.
        stats: counters to update.
        highwater: ``(topic, partition) -> log end offset`` from the consumer's fetch responses (None if unknown);
            used only for broker-reset detection.
        hooks: test-only fault injection (off by default).
        metrics: the worker's :class:`~adrec_stream.ops.metrics.WorkerMetrics` (role "ingest"); ``stats`` is
            mirrored into it after every batch (None: no metrics).
        restore_consumer: returns an unstarted aiokafka consumer for changelog restores
            (:func:`~adrec_stream.state.changelog.make_consumer`); None: stores are not restored (unit tests).
        expected_partitions: the clicks partition count the state was built with (None: not checked).

    Call :meth:`assign` / :meth:`revoke` from the consumer's rebalance callbacks, :meth:`handle` per batch;
    :meth:`open_owned_stores` may open the stores right after an assignment (readiness: :meth:`stores_check`).
    """

    def __init__(self, cfg: StreamConfig, stores: PartitionStores, publisher: Publisher, stats: WorkerStats, *,
                 highwater: Callable[[str, int], int | None] = lambda topic, partition: None,
                 hooks: WorkerHooks | None = None, metrics: Any = None,
                 restore_consumer: Callable[[], Any] | None = None, expected_partitions: int | None = None) -> None:
        self.cfg, self.stores, self.publisher, self.stats = cfg, stores, publisher, stats
        self.restore_consumer = restore_consumer
        self.expected_partitions = expected_partitions
        self.changelog = cfg.topics.changelog_topic.name if cfg.state.changelog else None
        self.restores: list[RestoreResult] = []
        self._prepared: dict[int, asyncio.Future] = {}
        # clicks partition -> its applied offset before this assignment's changelog restore (-1: none), then the last
        # offset of each batch this worker stored: a click skipped above it was brought by the restore
        # (``restored_skipped``)
        self._own_offset: dict[int, int] = {}
        self.highwater = highwater
        self.hooks = hooks or WorkerHooks()
        self.metrics = metrics
        self.owned: set[int] = set()
        self.open_errors: dict[int, str] = {}
        self._batch_lock = asyncio.Lock()  # one batch at a time; a log cut back's forget waits for it
        self.clicks_topic = cfg.topics.clicks.name
        self.log = get_logger("adrec_stream.worker.ingest", group=cfg.groups.ingest)

    # --------------------------------------------------------------------------------- partition ownership
    def assign(self, partitions: Iterable[int]) -> None:
        """The clicks partitions assigned to this worker now (replaces the previous set)."""
        self.owned = set(partitions)

    def revoke(self, partitions: Iterable[int]) -> list[tuple[str, int]]:
        """Forget ``partitions`` and close their stores (call after the batch in flight finished).

        Returns:
            The (topic, partition) pairs whose stores were closed.
        """
        parts = set(partitions)
        self.owned.difference_update(parts)
        for p in parts:
            self.open_errors.pop(p, None)
            task = self._prepared.pop(p, None)
            if task is not None and not task.done():
                task.cancel()  # a restore of a partition that moved on: the next owner restores it
        return self.stores.close((self.clicks_topic, p) for p in parts)

    async def prepare(self, partition: int) -> SequenceStore:
        """The open store of an owned clicks partition, restored from the changelog first (once per assignment;
        concurrent callers share the one restore).

        Raises:
            StoreLockedError: the store stayed locked by another process (``store_lock_wait_s``).
            RestoreTimeoutError: the restore did not finish within ``state.restore_timeout_s``.
            StoreError: the store cannot be opened, or a changelog record is not of this format.
        """
        task = self._prepared.get(partition)
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
            task = self._prepared[partition] = asyncio.ensure_future(self._prepare(partition))
        store = await asyncio.shield(task)
        if store.closed:  # revoked and assigned again since: open and restore anew
            self._prepared.pop(partition, None)
            return await self.prepare(partition)
        return store

    async def _prepare(self, partition: int) -> SequenceStore:
        store = await self.stores.open_async(self.clicks_topic, partition)
        stored = store.applied_offset(self.clicks_topic, partition)
        self._own_offset[partition] = max(self._own_offset.get(partition, -1), -1 if stored is None else stored)
        if self.changelog is None or self.restore_consumer is None:
            return store
        consumer = self.restore_consumer()
        await consumer.start()
        try:
            result = await restore_partition(
                store, consumer, changelog=self.changelog, clicks_topic=self.clicks_topic, partition=partition,
                timeout_s=self.cfg.state.restore_timeout_s, chunk_records=self.cfg.state.restore_chunk_records,
                progress=lambda p: self.log.info("changelog_restore_progress", changelog=self.changelog, **p))
        finally:
            await consumer.stop()
        self.restores.append(result)
        self.log.info("changelog_restored", topic=self.clicks_topic, changelog=self.changelog, **result.as_log())
        if self.metrics is not None:
            self.metrics.observe_restore(result.records, result.seconds)
        return store

    async def open_owned_stores(self) -> list[int]:
        """Open the store of every owned partition now instead of at its first record (so ``/readyz`` can say the
        worker holds its state). Safe next to the batches' own opens (same event loop; an open store is reused).
        A partition revoked while its store was waiting for the lock is closed again at once. An open that fails
        (lock still held after ``store_lock_wait_s``, store unreadable) is logged and kept in ``open_errors`` for
        the readiness reason; the partition's first batch then tries again (and fails the agent as before).

        Returns:
            The partitions whose store is open and owned when done.
        """
        topic, opened = self.clicks_topic, []
        for p in sorted(self.owned):
            try:
                await self.prepare(p)
            except StoreError as err:
                self.open_errors[p] = str(err)
                self.log.warning("store_open_failed", topic=topic, partition=p, error=str(err)[:300])
                continue
            if p in self.owned:
                self.open_errors.pop(p, None)
                opened.append(p)
            else:  # revoked while waiting for the lock: the next owner needs it
                self.stores.close([(topic, p)])
        return opened

    def stores_check(self) -> tuple[bool, str]:
        """Readiness (safe from another thread): the store of every owned partition is open."""
        owned = sorted(self.owned)  # one C-level copy: safe against the loop changing the set
        missing = [p for p in owned if self.stores.get(self.clicks_topic, p) is None]
        if not missing:
            return True, ""
        failed = dict(self.open_errors)
        errors = "; ".join(f"{p}: {failed[p]}" for p in missing if p in failed)
        return False, (f"sequence stores of {self.clicks_topic} partitions {missing} not open yet"
                       + (f" ({errors})" if errors else " (opening)"))

    # -------------------------------------------------------------------------------------------- batches
    async def handle(self, records: Sequence[ConsumedRecord]) -> set[int]:
        """Process one batch (records of any partitions, offset order within each partition).

        Returns:
            The partitions whose records may be acknowledged (their effects are stored).

        Raises:
            StoreLockedError: a partition's store stayed locked by another process (``store_lock_wait_s``).
            StoreError: a store write kept failing for ``batch.store_write_attempts`` attempts.
            Exception: a failed delivery to the broker (nothing of the batch is stored or acknowledged).
        """
        async with self._batch_lock:  # a log cut back's forgotten offsets wait for the batch (log_cut_back)
            return await self._handle(records)

    async def _handle(self, records: Sequence[ConsumedRecord]) -> set[int]:
        t0 = time.perf_counter()
        stats, cfg = self.stats, self.cfg
        stats.received += len(records)
        groups: dict[int, list[SourceRecord]] = {}
        produced: dict[tuple[int, int], float | None] = {}
        dl_futures: list = []
        dropped = 0
        owned = self.owned
        limit = self.expected_partitions
        for msg in records:
            part = msg.partition
            if limit is not None and part >= limit:
                raise partition_count_error(self.clicks_topic, limit, part + 1, "a record of partition "
                                            f"{part} arrived")
            if part not in owned:
                dropped += 1
                continue
            try:
                click = decode_click(msg.value, msg.key, item_id_type=cfg.item_id_type, max_bytes=cfg.max_event_bytes,
                                     default_event_id=f"{msg.topic}:{part}:{msg.offset}")
            except DecodeError as err:
                click = None
                if err.reason in SKIP_REASONS:
                    stats.skip(err.reason)
                else:
                    stats.dead_letter(err.reason)
                    dl_futures.append(await self.publisher.send(
                        cfg.topics.dead_letter.name, msg.key,
                        dead_letter_record(err, msg.topic, part, msg.offset, msg.key, msg.value)))
            groups.setdefault(part, []).append(SourceRecord(msg.topic, part, msg.offset, click))
            if click is not None:
                produced[(part, msg.offset)] = float(msg.timestamp) if msg.timestamp else None
        if dropped:
            self.log.warning("records_of_revoked_partition_dropped", count=dropped)
        work = []
        for part, recs in groups.items():
            store = await self.prepare(part)
            self._reconcile_broker_reset(store, recs[0].topic, part, recs)
            work.append((part, store, recs, store.plan(recs)))
        now = time.time()
        updates = [(u.user_id.encode(), update_value(u, produced.get((u.partition, u.offset)), now))
                   for _, _, _, plan in work for u in plan.updates]
        futures = await self.publisher.send_many(cfg.topics.sequence_updates.name, updates)
        await delivered(dl_futures)  # dead letters are out before their offsets count as applied
        await delivered(futures)
        stats.published += len(updates)
        positions = await self._publish_changelog(work) if self.changelog is not None else {}
        done: set[int] = set()
        for part, store, recs, plan in work:
            applied = await self._apply_with_retry(store, recs, plan, positions.get(part))
            if applied is None:
                self.log.warning("partition_revoked_before_write", partition=part, records=len(recs))
                continue  # not acked: the new owner applies (and re-publishes, same event_id) these
            done.add(part)
            stats.applied += len(applied)
            applied_at = {u.offset for u in applied}
            skipped = [r.offset for r in recs if r.event is not None and r.offset not in applied_at]
            stats.duplicates_skipped += len(skipped)
            own = self._own_offset.get(part, -1)
            stats.restored_skipped += sum(o > own for o in skipped)
            self._own_offset[part] = max(recs[-1].offset, own)  # handled: counted once
        stats.end_batch(len(records), time.perf_counter() - t0, self.metrics)
        self.hooks.after_batch(stats)
        return done

    async def _publish_changelog(self, work: list) -> dict[int, tuple[str, int, int]]:
        """Write the batch's state changes to the changelog (windows, then the offset markers; each step
        acknowledged before the next, see :mod:`adrec_stream.state.changelog`).

        Returns:
            clicks partition -> (changelog topic, partition, next changelog offset) for the store write.
        """
        changelog, send, clicks = self.changelog, self.publisher.send, self.clicks_topic
        windows = []
        for part, _, _, plan in work:
            records = [(user.encode("utf-8"), window_value(entry)) for user, entry in plan.windows.items()]
            windows += await self.publisher.send_many(changelog, records, part)
        await delivered(windows)
        markers = []
        for part, _, _, plan in work:
            off = plan.offsets.get((clicks, part))
            if off is not None:  # something of this partition is applied by this batch
                markers.append((part, await send(changelog, MARKER_KEY, marker_value(clicks, part, off), part)))
        meta = await delivered([f for _, f in markers])
        self.stats.changelog_records += sum(len(plan.windows) for _, _, _, plan in work) + len(markers)
        out = {}
        for (part, _), m in zip(markers, meta):
            if m is not None and getattr(m, "offset", None) is not None:
                out[part] = (changelog, part, int(m.offset) + 1)
        return out

    async def log_cut_back(self, part: int, next_offset: int, log_end: int) -> None:
        """The clicks log of ``part`` was cut back under the consumer (no record arrives to reveal it, see
        :meth:`~adrec_stream.ops.lag.ConsumerLag.past_log_end`); the consumer is rewound to the log start right
        after this. Forget the partition's stored offsets now, so the new log's records are applied even if it
        has grown past the stored offset by the time they arrive. Counted as a broker reset.

        Waits for the batch in flight, if any: its plan, changelog records and store write stay one unit (forgetting
        the offsets between its changelog records and its store write would make the write stale and leave its
        changelog marker, with the old log's offset, for the next restore). The partition's store is opened (and
        restored) before that, so batches of other partitions never wait for it; a revocation meanwhile ends the
        call quietly."""
        if part not in self.owned:
            return
        try:
            store = await self.prepare(part)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if part in self.owned or (current is not None and current.cancelling()):
                raise
            return  # revoked while its store opened: the restore was cancelled, the next owner handles the log
        async with self._batch_lock:
            if part not in self.owned or store.closed:
                return
            self.stats.broker_resets += 1
            self.log.error("broker_reset_detected", topic=self.clicks_topic, partition=part,
                           stored_applied_offset=store.applied_offset(self.clicks_topic, part), log_end_offset=log_end,
                           consumer_next_offset=next_offset, action="forgot the stored offset of this partition; "
                           "rewinding to the start of the new log", hint=RESET_HINT)
            self._forget_offsets(store, part)

    def _reconcile_broker_reset(self, store: SequenceStore, topic: str, part: int, records: list) -> None:
        """Forget the stored offset of a partition whose log restarted below it (see the module docstring)."""
        lowest = records[0].offset
        stored = store.applied_offset(topic, part)
        if stored is None or lowest > stored:
            return  # the usual case: nothing at or below the stored offset
        hw = self.highwater(topic, part)
        if hw is None or hw > stored:
            return  # an ordinary re-delivery: the log still holds the stored offset
        self.stats.broker_resets += 1
        self.log.error("broker_reset_detected", topic=topic, partition=part, stored_applied_offset=stored,
                       log_end_offset=hw, first_offset_received=lowest,
                       action="forgot the stored offset of this partition; records of the new log are applied",
                       hint=RESET_HINT)
        self._forget_offsets(store, part)

    def _forget_offsets(self, store: SequenceStore, part: int) -> None:
        """After a broker reset: the stored applied offset of ``part`` and this worker's own offset of it belong to
        the old log; both are forgotten, so the new log's offsets are judged (applied, ``restored_skipped``)
        against the new log only."""
        store.forget_offsets(self.clicks_topic, [part])
        self._own_offset[part] = -1

    async def _apply_with_retry(self, store: SequenceStore, records: list, plan: StorePlan,
                                changelog_position: tuple[str, int, int] | None = None) -> list | None:
        """``store.apply_plan(plan, changelog_position)`` (``plan``: the store's plan of ``records``) with in-place
        retries; None if the store was closed by a revocation.

        Raises:
            StalePlanError: the store was written since the plan was made (a bug: see step 5 of the module docstring).
            StoreError: the write kept failing.
        """
        attempts = self.cfg.batch.store_write_attempts
        for attempt in range(1, attempts + 1):
            self.hooks.before_write(records)
            if store.closed:
                return None
            try:
                return store.apply_plan(plan, changelog_position)
            except StoreError as err:
                if store.closed:
                    return None
                if attempt >= attempts:
                    raise
                self.stats.write_retries += 1
                self.log.warning("store_write_retry", attempt=attempt, attempts=attempts,
                                 partition=records[0].partition, error=str(err)[:300])
                await asyncio.sleep(STORE_RETRY_BACKOFF_S * attempt)
        raise AssertionError("unreachable")


def make_stores(cfg: StreamConfig, hooks: WorkerHooks | None = None) -> PartitionStores:
    """The per-partition sequence stores of an ingest worker (``state_dir/sequences/<topic>-<partition>``).

    Raises:
        StoreError: ``state_dir/sequences`` holds the single-store layout of an earlier build.
    """
    return PartitionStores(cfg.state_dir, window=cfg.window, lock_wait_s=cfg.store_lock_wait_s,
                           on_open=hooks.on_store_open if hooks is not None else None)

