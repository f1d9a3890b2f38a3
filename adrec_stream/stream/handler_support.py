"""What the ingest and score handlers are given: counters, a publisher, the consumed-record shape, test hooks.

The handlers (:mod:`adrec_stream.stream.ingest`, :mod:`adrec_stream.stream.score`) never touch Faust: they take
batches of records (anything with the attributes of :class:`ConsumedRecord`, such as a Faust ``Message``),
publish through a :class:`Publisher` and count in a :class:`WorkerStats`. The Faust app
(:mod:`adrec_stream.stream.app`) wires them to its agents; tests and ``adrec-stream bench`` drive them directly
with :class:`MemoryPublisher`.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol


class ConsumedRecord(NamedTuple):
    """One consumed Kafka record as the handlers read it (a Faust ``Message`` has the same attributes).

    ``timestamp``: the record's Kafka timestamp in epoch seconds (None/0 when the broker gave none).
    """

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: float | None = None


class Publisher(Protocol):
    """Sends records to a topic; the returned awaitables complete when the broker acknowledged them (the result of
    :meth:`send`'s has the record's ``partition`` and ``offset``, like aiokafka's RecordMetadata)."""

    async def send(self, topic: str, key: bytes | None, value: bytes, partition: int | None = None) -> Awaitable[Any]:
        """Queue ``value`` for ``topic`` (partitioned by ``key``, or to ``partition``); await the result for the
        delivery."""
        ...

    async def send_many(self, topic: str, records: Sequence[tuple[bytes, bytes]],
                        partition: int | None = None) -> list[Awaitable[Any]]:
        """Queue ``records`` ((key, value) pairs, in order) for ``topic`` as :meth:`send` would (same partitions,
        same order within a partition); every returned awaitable must complete for all of them to be delivered."""
        ...


class Delivered(NamedTuple):
    """Where a :class:`MemoryPublisher` record went (the attributes of aiokafka's RecordMetadata that are used)."""

    topic: str
    partition: int
    offset: int


class ProducerPublisher:
    """A :class:`Publisher` over a Faust app's producer (``app.producer``: aiokafka underneath).

    It skips Faust's per-message ``Topic.send`` machinery (message wrappers, codecs, sensors): the handlers
    already hold the serialised bytes.
    """

    def __init__(self, producer: Any) -> None:
        self.producer = producer

    async def send(self, topic: str, key: bytes | None, value: bytes, partition: int | None = None) -> Awaitable[Any]:
        """``producer.send(topic, key, value, partition)`` (None: the default partitioner), no timestamp, no headers."""
        return await self.producer.send(topic, key, value, partition, None, None)

    async def send_many(self, topic: str, records: Sequence[tuple[bytes, bytes]],
                        partition: int | None = None) -> list[Awaitable[Any]]:
        """:func:`send_batches` on the aiokafka producer under Faust's (``Producer._ensure_producer()``, pinned to
        faust-streaming 0.15.3 like :mod:`adrec_stream.stream.compat`)."""
        return await send_batches(self.producer._ensure_producer(), topic, records, partition)


async def send_batches(producer: Any, topic: str, records: Sequence[tuple[bytes, bytes]],
                       partition: int | None = None) -> list[Awaitable[Any]]:
    """Send ``records`` ((key, value) pairs) to ``topic`` through an aiokafka producer as whole record batches.

    Same partitions as ``producer.send`` per record (``partition``, else the producer's partitioner - aiokafka's
    default: murmur2 of the key over the topic's partitions) and the same order within a partition, but one closed
    record batch per partition (more when one exceeds the producer's ``max_batch_size``, i.e.
    ``batch.produce_max_batch_bytes``) instead of a message, a future and an accumulator step per record. Closed
    batches do not wait for the linger. A batch is queued behind any batch still waiting for its partition (aiokafka
    sends one batch per partition per request, one request per broker at a time), so records keep their order with
    the producer's other sends; a partition split into several batches takes as many requests, and this call
    returns once its last batch is queued.

    Returns:
        One future per record batch; all of them done = every record acknowledged.

    Raises:
        ValueError: a key is None without ``partition`` (the default partitioner would pick a random partition).
        aiokafka errors: as ``producer.send_batch`` (unknown topic, closed producer, timeout); a record too large
            for the broker fails its batch's future.
    """
    if not records:
        return []
    if partition is None:
        parts = sorted(await producer.partitions_for(topic))
        partitioner = producer._partitioner  # the one producer.send uses (aiokafka's murmur2 default)
        by_part: dict[int, list[tuple[bytes, bytes]]] = {}
        part_of: dict[bytes, int] = {}  # murmur2 in Python once per distinct key
        for key, value in records:
            part = part_of.get(key)
            if part is None:
                if key is None:
                    raise ValueError(f"send_batches to {topic}: a record without a key needs an explicit partition")
                part = part_of[key] = partitioner(key, parts, parts)
            by_part.setdefault(part, []).append((key, value))
    else:
        by_part = {partition: list(records)}
    futures = []
    for part, recs in by_part.items():
        batch = producer.create_batch()
        for key, value in recs:
            if batch.append(key=key, value=value, timestamp=None) is None:  # full (a first record always fits)
                batch.close()
                futures.append(await producer.send_batch(batch, topic, partition=part))
                batch = producer.create_batch()
                batch.append(key=key, value=value, timestamp=None)
        batch.close()
        futures.append(await producer.send_batch(batch, topic, partition=part))
    return futures


class MemoryPublisher:
    """A :class:`Publisher` that keeps what was sent (``sent``: list of (topic, key, value)); for tests and
    benchmarks of the handlers without a broker. ``fail_with``: raise this from every later delivery."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes]] = []
        self.partitions: list[int | None] = []
        self.fail_with: BaseException | None = None
        self._next: dict[tuple[str, int], int] = {}

    async def send(self, topic: str, key: bytes | None, value: bytes, partition: int | None = None) -> Awaitable[Any]:
        """Record the message; the returned future is already resolved with a :class:`Delivered` (partition
        ``partition`` or 0, offsets counted per topic and partition), or failed with ``fail_with``."""
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        if self.fail_with is not None:
            fut.set_exception(self.fail_with)
        else:
            self.sent.append((topic, key, value))
            self.partitions.append(partition)
            tp = (topic, partition or 0)
            offset = self._next.get(tp, 0)
            self._next[tp] = offset + 1
            fut.set_result(Delivered(topic, partition or 0, offset))
        return fut

    async def send_many(self, topic: str, records: Sequence[tuple[bytes, bytes]],
                        partition: int | None = None) -> list[Awaitable[Any]]:
        """:meth:`send` of each record in order."""
        return [await self.send(topic, key, value, partition) for key, value in records]

    def values(self, topic: str) -> list[bytes]:
        """The values sent to ``topic``, in send order."""
        return [v for t, _, v in self.sent if t == topic]


async def delivered(futures: Sequence[Awaitable[Any]]) -> list[Any]:
    """Wait until every delivery in ``futures`` is acknowledged; returns their results (record metadata) in order.

    Raises:
        Exception: the first failed delivery's error (the batch must then not be acknowledged).
    """
    if futures:
        return list(await asyncio.gather(*futures))
    return []


#: role -> ({WorkerStats field: WorkerMetrics counter}, {WorkerStats reason dict: counter labelled by reason}),
#: besides ``received`` -> ``consumed`` and ``skip_reasons`` -> ``skipped`` of every role (:meth:`WorkerStats.export`)
_EXPORTED: dict[str, tuple[dict[str, str], dict[str, str]]] = {
    "ingest": ({"applied": "applied", "duplicates_skipped": "duplicates", "published": "updates_published"},
               {"dead_letter_reasons": "dead_lettered"}),
    "score": ({"published": "recommendations", "fallback": "fallbacks", "scored": "users_scored"}, {}),
}


@dataclass
class WorkerStats:
    """Counters of one worker process (logged every 5 s and at shutdown), the one place the handlers count in;
    :meth:`export` mirrors them into the worker's Prometheus counters.

    ``received``: records taken from the topic; ``applied``: clicks stored (ingest); ``duplicates_skipped``:
    re-delivered clicks skipped because their effect was already stored; ``restored_skipped``: those of them above
    the partition's applied offset at assignment and not in a batch this worker stored - brought by the restore,
    i.e. applied by an earlier owner (which counted them as ``applied`` unless it died between its changelog write
    and its store write), so over the owners of a partition that share one state directory, ``applied`` plus
    ``restored_skipped`` counts every click once; ``scored``: distinct users
    run through the model (score; lower than ``published`` when a batch held several updates of one user);
    ``published``: records sent (sequence updates or recommendations); ``dead_lettered`` / ``skipped`` with their
    split by reason in ``dead_letter_reasons`` / ``skip_reasons`` (count with :meth:`dead_letter` / :meth:`skip`);
    ``batch_s_total``: seconds spent in the handler, so ``received / batch_s_total`` is the handler's own rate in
    records/s; ``gc_collections`` / ``gc_s_total``: the worker process's garbage collections and their seconds
    (counted once :meth:`count_gc` is installed: ``adrec-stream worker`` does).
    """

    received: int = 0
    applied: int = 0
    duplicates_skipped: int = 0
    restored_skipped: int = 0
    dead_lettered: int = 0
    skipped: int = 0
    published: int = 0
    scored: int = 0
    fallback: int = 0
    batches: int = 0
    write_retries: int = 0
    broker_resets: int = 0
    changelog_records: int = 0
    batch_s_total: float = 0.0
    gc_collections: int = 0
    gc_s_total: float = 0.0
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)
    skip_reasons: dict[str, int] = field(default_factory=dict)
    started: float = field(default_factory=time.time)
    failed: BaseException | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-able counters plus the mean rate (records/s) since start."""
        d = {k: v for k, v in self.__dict__.items() if k not in ("started", "failed")}
        d["batch_s_total"] = round(self.batch_s_total, 3)
        d["gc_s_total"] = round(self.gc_s_total, 3)
        d["dead_letter_reasons"], d["skip_reasons"] = dict(self.dead_letter_reasons), dict(self.skip_reasons)
        d["rate_per_s"] = round(self.received / max(time.time() - self.started, 1e-9), 1)
        return d

    def count_gc(self) -> Callable[[str, dict], None]:
        """Count this process's garbage collections and their seconds in ``gc_collections`` / ``gc_s_total``: the
        returned callback is added to ``gc.callbacks`` (remove it when done)."""
        started = [0.0]

        def on_gc(phase: str, info: dict) -> None:
            if phase == "start":
                started[0] = time.perf_counter()
            else:
                self.gc_collections += 1
                self.gc_s_total += time.perf_counter() - started[0]

        gc.callbacks.append(on_gc)
        return on_gc

    def dead_letter(self, reason: str) -> None:
        """Count one record sent to the dead-letter topic with ``reason`` (a DecodeError reason)."""
        self.dead_lettered += 1
        self.dead_letter_reasons[reason] = self.dead_letter_reasons.get(reason, 0) + 1

    def skip(self, reason: str) -> None:
        """Count one record consumed but not processed (``tombstone``, ``empty_key``, ``bad_update``)."""
        self.skipped += 1
        self.skip_reasons[reason] = self.skip_reasons.get(reason, 0) + 1

    def end_batch(self, n_records: int, seconds: float, metrics: Any = None) -> None:
        """Count one finished handler batch of ``n_records`` records that took ``seconds``; with ``metrics`` (a
        :class:`~adrec_stream.ops.metrics.WorkerMetrics`) also observe it there and :meth:`export`."""
        self.batches += 1
        self.batch_s_total += seconds
        if metrics is not None:
            metrics.observe_batch(n_records, seconds)
            self.export(metrics)

    def export(self, metrics: Any) -> None:
        """Mirror the counters into ``metrics`` (:meth:`~adrec_stream.ops.metrics.WorkerMetrics.sync`): consumed,
        skipped by reason; ingest: applied, dead-lettered by reason, duplicates, sequence updates published; score:
        recommendations (``published``), fallbacks, users scored."""
        counters, by_reason = _EXPORTED.get(metrics.role, ({}, {}))
        for field_name, counter in {"received": "consumed", **counters}.items():
            metrics.sync(getattr(metrics, counter), getattr(self, field_name))
        for field_name, counter in {"skip_reasons": "skipped", **by_reason}.items():
            for reason, n in list(getattr(self, field_name).items()):
                metrics.sync(getattr(metrics, counter), n, reason)


class WriteFaultInjector:
    """Test hook: the sequence store's WriteBatch fails ``times`` times for a batch holding ``offset``, or
    (``kill``) the process SIGKILLs itself there - after the batch's updates and changelog records are
    acknowledged, before its store write (the gap a restore has to close).

    Wraps :meth:`SequenceStore._write_batch`; ``current`` is set to the records of the batch about to be
    applied. The failure is an ``OSError`` raised before RocksDB sees the batch, which
    :meth:`SequenceStore.apply_plan` turns into a :class:`~adrec_stream.errors.StoreError` (nothing applied),
    like a real failed write.
    """

    def __init__(self, offset: int, times: int, kill: bool = False) -> None:
        self.offset = offset
        self.remaining = times
        self.kill = kill
        self.current: list = []

    @classmethod
    def parse(cls, spec: str) -> WriteFaultInjector:
        """``"OFFSET:TIMES"`` (or ``"OFFSET"`` = once; ``"OFFSET:kill"`` = SIGKILL there) -> injector.

        Raises:
            ValueError: not of that form.
        """
        off, _, times = spec.partition(":")
        if times == "kill":
            return cls(int(off), 1, kill=True)
        return cls(int(off), int(times or 1))

    def install(self, store: Any) -> None:
        """Wrap ``store._write_batch``."""
        write = store._write_batch

        def faulty(wb: Any) -> None:
            if self.remaining > 0 and any(r.offset == self.offset for r in self.current):
                self.remaining -= 1
                if self.kill:
                    os.kill(os.getpid(), signal.SIGKILL)
                raise OSError(f"injected RocksDB write failure for the batch holding offset {self.offset} "
                              "(test hook)")
            write(wb)

        store._write_batch = faulty


@dataclass
class WorkerHooks:
    """Test-only fault injection of the ingest and score workers; everything off by default (production).

    ``adrec-stream worker`` sets these from hidden options used by the reliability tests.

    Attributes:
        crash_after_batches: raise inside the handler after this many batches (before acknowledging), to
            exercise the crashing supervisor.
        write_failure: ingest: make the store write of a batch fail (:class:`WriteFaultInjector`).
    """

    crash_after_batches: int | None = None
    write_failure: WriteFaultInjector | None = None

    @classmethod
    def from_options(cls, crash_after_batches: int | None = None,
                     inject_write_failure: str | None = None) -> WorkerHooks:
        """Hooks from the CLI's hidden options (``inject_write_failure``: ``"OFFSET:TIMES"``)."""
        return cls(crash_after_batches,
                   WriteFaultInjector.parse(inject_write_failure) if inject_write_failure else None)

    def on_store_open(self, store: Any) -> None:
        """Called with every sequence store the ingest handler opens."""
        if self.write_failure is not None:
            self.write_failure.install(store)

    def before_write(self, records: list) -> None:
        """Called with the records of each store write attempt."""
        if self.write_failure is not None:
            self.write_failure.current = records

    def after_batch(self, stats: WorkerStats) -> None:
        """Called at the end of each batch, before it is acknowledged.

        Raises:
            RuntimeError: ``crash_after_batches`` reached.
        """
        if self.crash_after_batches is not None and stats.batches >= self.crash_after_batches:
            raise RuntimeError(f"injected failure after {stats.batches} batches (test hook)")
