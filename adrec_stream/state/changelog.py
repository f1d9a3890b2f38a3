"""State that follows its partition: the ingest state's compacted changelog topic, restore, standby replicas, and
the guard against a change of the clicks topic's partition count.

Changelog (``topics.changelog``, compacted, co-partitioned with the clicks topic): for every batch the ingest
handler stores, it first produces, to changelog partition p = the clicks partition p (explicit partition),

- one **window record** per user with an applied click: key = user id (UTF-8), value = JSON
  ``{"kind": "window", "items": [...], "ts": [...], "source": {"topic", "partition", "offset"}}`` - the user's whole
  window after the batch and the source offset of the user's last applied click; then, once those are
  acknowledged,
- one **offset marker**: key = :data:`MARKER_KEY`, value ``{"kind": "applied", "source": {...}}`` holding the
  partition's applied offset after the batch (which may lie past the last window record when the batch ended with
  dead letters).

Order per batch: sequence updates and dead letters acknowledged -> window records acknowledged -> marker
acknowledged -> ONE RocksDB WriteBatch (windows, applied offset, changelog position) -> offset commit. Hence a
marker is only ever in the log when every window record of its batch (and everything before) is; the store never
holds a change the changelog lacks; and the committed offset never passes the marker. A restore sets each user's
window and last applied offset from the user's latest window record and the partition's applied offset from the
latest marker, so every click at or below the committed offset is skipped as a duplicate on re-delivery and every
click whose window record did not make it into the log (a crash mid-batch) is applied again - exactly once in
effect. Window records hold whole windows, so applying one twice (a restart during a restore) is harmless.

Restore (:func:`restore_partition`): read changelog partition p from the store's changelog position (or the
beginning) to the high watermark seen at the start (the fetch response's, right on Tansu), in chunks of
``state.restore_chunk_records`` records, one WriteBatch each, within ``state.restore_timeout_s``.

Standby replicas (:class:`StandbyReplicas`, ``state.standby_replicas``): one consumer tails the changelog
partitions this worker does not own into their local stores, so the next owner - this worker after a failover -
restores only the tail.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from adrec_stream.errors import PartitionCountChangedError, RestoreTimeoutError, StoreError, StoreLockedError
from adrec_stream.logging import get_logger
from adrec_stream.state.store import Entry, SequenceStore

#: Key of the per-partition offset marker records (compaction keeps the latest one). User ids come from click
#: keys, which are never empty; this key starts with NUL so that it stands out in a dump. Records are told apart by
#: their ``kind``.
MARKER_KEY = b"\x00applied-offset"
#: Seconds between two ``changelog_restore_progress`` lines of a long restore.
RESTORE_PROGRESS_S = 5.0
#: Longest single wait for records of a restore or the standby consumer (ms): aiokafka waits this long when the
#: partition is at its end, so it bounds the cost of a restore that finds nothing new.
FETCH_POLL_MS = 50
#: File in ``state_dir`` that records the clicks topic's partition count the state was built with.
PARTITIONS_FILE = "clicks-partitions.json"

log = get_logger("adrec_stream.state.changelog")


# ------------------------------------------------------------------------------------------------ record format
def window_value(entry: Entry) -> bytes:
    """Changelog value of one user's window after a batch (``entry`` = items, event times (s), (topic, partition,
    offset) of the user's last applied click)."""
    items, ts, (topic, partition, offset) = entry
    return orjson.dumps({"kind": "window", "items": items, "ts": ts,
                         "source": {"topic": topic, "partition": partition, "offset": offset}})


def marker_value(topic: str, partition: int, offset: int) -> bytes:
    """Changelog value of an offset marker: clicks (topic, partition) is applied up to ``offset``."""
    return orjson.dumps({"kind": "applied", "source": {"topic": topic, "partition": partition, "offset": offset}})


def decode_record(key: bytes | None, value: bytes | None) -> tuple[str, Any] | None:
    """A changelog record -> ``("window", (user, entry))`` or ``("applied", ((topic, partition), offset))``; None for
    anything else (tombstones, records of another kind written by a later build).

    Raises:
        StoreError: a value that is not a changelog record of this format (the topic is not this pipeline's
            changelog): the message names what was found.
    """
    if value is None or key is None:
        return None
    try:
        v = orjson.loads(value)
        kind, src = v.get("kind"), v.get("source")
        if kind == "window":
            return "window", (key.decode("utf-8"), (list(v["items"]), list(v["ts"]),
                                                    (src["topic"], int(src["partition"]), int(src["offset"]))))
        if kind == "applied":
            return "applied", ((src["topic"], int(src["partition"])), int(src["offset"]))
        return None
    except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError, UnicodeDecodeError) as err:
        raise StoreError(f"changelog record {value[:80]!r} (key {key[:40]!r}) is not a changelog record of this "
                         f"format ({err}); topics.changelog must be used by the ingest workers only") from None


class _Chunk:
    """Decoded changelog records collected for one WriteBatch."""

    def __init__(self) -> None:
        self.windows: dict[str, Entry] = {}
        self.offsets: dict[tuple[str, int], int] = {}
        self.records = 0

    def add(self, key: bytes | None, value: bytes | None) -> None:
        self.records += 1
        rec = decode_record(key, value)
        if rec is None:
            return
        kind, data = rec
        if kind == "window":
            self.windows[data[0]] = data[1]  # a later record of the same user replaces the earlier one
        else:
            self.offsets[data[0]] = data[1]

    def write(self, store: SequenceStore, changelog: str, partition: int, next_offset: int) -> None:
        store.apply_changelog(self.windows, self.offsets, (changelog, partition, next_offset))

    @classmethod
    def write_records(cls, store: SequenceStore, changelog: str, partition: int, batch: list) -> _Chunk:
        """Decode a fetched batch of changelog partition ``partition`` and write it to ``store`` in one WriteBatch
        that also moves the store's changelog position past the batch."""
        chunk = cls()
        for r in batch:
            chunk.add(r.key, r.value)
        chunk.write(store, changelog, partition, batch[-1].offset + 1)
        return chunk


# ------------------------------------------------------------------------------------------------------ restore
@dataclass
class RestoreResult:
    """How far one partition's store was restored.

    Attributes:
        partition: the clicks / changelog partition.
        records: changelog records read.
        users: user windows written (distinct per chunk; equals the distinct users on a compacted log).
        from_offset: changelog offset the restore started at.
        restored_offset: the changelog position afterwards (next offset to read; the high watermark at the start).
        applied_offset: the clicks partition's applied offset afterwards (None: nothing applied yet).
        seconds: wall time of the restore (s), consumer start included.
    """

    partition: int
    records: int
    users: int
    from_offset: int
    restored_offset: int
    applied_offset: int | None
    seconds: float

    def as_log(self) -> dict[str, Any]:
        """The fields of the ``changelog_restored`` log line."""
        return {"partition": self.partition, "records": self.records, "users": self.users,
                "from_offset": self.from_offset, "restored_offset": self.restored_offset,
                "applied_offset": self.applied_offset, "seconds": round(self.seconds, 3),
                "users_per_s": round(self.users / max(self.seconds, 1e-9), 1)}


def make_consumer(bootstrap: str, *, client_id: str, fetch_max_wait_s: float, request_timeout_s: float,
                  security: Mapping[str, Any] | None = None) -> Any:
    """An aiokafka consumer without a group (manual assignment, no commits) for reading changelog partitions;
    ``security``: the cluster's TLS / SASL arguments (:meth:`~adrec_stream.broker.security.KafkaSecurity.aiokafka`)."""
    from aiokafka import AIOKafkaConsumer  # noqa: PLC0415

    return AIOKafkaConsumer(bootstrap_servers=bootstrap.split(","), client_id=client_id, group_id=None,
                            enable_auto_commit=False, auto_offset_reset="earliest",
                            fetch_max_wait_ms=max(1, int(fetch_max_wait_s * 1000)),
                            request_timeout_ms=int(request_timeout_s * 1000), **(security or {}))


async def restore_partition(store: SequenceStore, consumer: Any, *, changelog: str, clicks_topic: str, partition: int,
                            timeout_s: float, chunk_records: int,
                            progress: Callable[[dict[str, Any]], None] | None = None,
                            clock: Callable[[], float] = time.monotonic) -> RestoreResult:
    """Bring ``store`` up to the end of changelog partition ``partition`` (as of the start of the restore).

    Reads from the store's changelog position (a store that is merely behind restores incrementally; a missing
    store from the beginning) to the high watermark of the first fetch response, ``chunk_records`` records per
    RocksDB WriteBatch (memory bounded by one chunk), each chunk advancing the store's changelog position.

    Args:
        store: the partition's open store (not written by anyone else meanwhile).
        consumer: a started aiokafka consumer (:func:`make_consumer`); it is assigned this one partition.
        changelog: changelog topic name; clicks_topic: clicks topic name (for the applied offset).
        partition: the partition (same number in both topics).
        timeout_s: give up after this many seconds (s).
        chunk_records: records per WriteBatch.
        progress: called with a progress dict at most every :data:`RESTORE_PROGRESS_S` s.
        clock: monotonic time source (s).

    Returns:
        A :class:`RestoreResult`.

    Raises:
        RestoreTimeoutError: the end was not reached within ``timeout_s`` (the store keeps what was restored; the
            next attempt continues from there).
        StoreError: a record is not a changelog record of this format, or a store write failed.
    """
    from aiokafka import TopicPartition  # noqa: PLC0415

    t0 = clock()
    tp = TopicPartition(changelog, partition)
    start = store.changelog_position(changelog, partition)
    consumer.assign([tp])
    if start is None:
        await consumer.seek_to_beginning(tp)
        start = 0
    else:
        consumer.seek(tp, start)
    records = users = 0
    target: int | None = None
    position = start
    next_progress = t0 + RESTORE_PROGRESS_S
    while True:
        now = clock()
        if target is not None and position >= target:
            break
        if now - t0 > timeout_s:
            raise RestoreTimeoutError(
                f"restore of changelog {changelog} partition {partition} did not finish within {timeout_s:g} s "
                f"(state.restore_timeout_s): at offset {position} of {target if target is not None else '?'} after "
                f"{records} records; check that the broker is reachable, or raise state.restore_timeout_s (the next "
                "start continues from the offset reached)")
        wait_ms = int(max(1, min(FETCH_POLL_MS, (timeout_s - (now - t0)) * 1000)))
        got = await consumer.getmany(tp, timeout_ms=wait_ms, max_records=chunk_records)
        batch = got.get(tp, [])
        if target is None:
            hw = consumer.highwater(tp)
            if hw is None:
                continue  # no fetch response yet
            target = int(hw)
            if target < start:
                # the changelog lost records the store reflects (a broker that restarted empty): keep the store,
                # follow the new log from its end
                log.warning("changelog_behind_store", changelog=changelog, partition=partition, store_position=start,
                            high_watermark=target, action="kept the store; its changelog position is reset to the "
                            "log end", hint="the broker lost the changelog; other hosts cannot restore this state")
                position = target
                break
        if batch:
            chunk = _Chunk.write_records(store, changelog, partition, batch)
            position = batch[-1].offset + 1
            records += chunk.records
            users += len(chunk.windows)
        else:
            # nothing returned: the fetch position is the truth (e.g. compacted tail, or already at the end)
            position = max(position, int(await consumer.position(tp)))
        if progress is not None and clock() >= next_progress:
            next_progress = clock() + RESTORE_PROGRESS_S
            progress({"partition": partition, "records": records, "offset": position, "target": target,
                      "seconds": round(clock() - t0, 1)})
    if store.changelog_position(changelog, partition) != position:
        store.apply_changelog({}, {}, (changelog, partition, position))  # record the position even when nothing new
    return RestoreResult(partition, records, users, start, position, store.applied_offset(clicks_topic, partition),
                         clock() - t0)


# ------------------------------------------------------------------------------------------- standby replicas
class StandbyReplicas:
    """Warm copies of the partitions this worker does not own: their changelog partitions tailed into the local
    stores (the same ``state_dir/sequences/<topic>-<partition>`` the worker uses once it owns them).

    Args:
        stores: the worker's :class:`~adrec_stream.state.partitioned.PartitionStores`.
        consumer_factory: returns an unstarted aiokafka consumer (:func:`make_consumer`).
        changelog: changelog topic; clicks_topic: clicks topic; partitions: partition count of both.
        chunk_records: records per WriteBatch.

    Use from the worker's event loop: :meth:`set_owned` at every assignment (before the owned partitions are
    restored: from then on this object never writes them), :meth:`run` as a background task.
    """

    def __init__(self, stores: Any, consumer_factory: Callable[[], Any], *, changelog: str, clicks_topic: str,
                 partitions: int, chunk_records: int) -> None:
        self.stores, self.consumer_factory = stores, consumer_factory
        self.changelog, self.clicks_topic, self.partitions = changelog, clicks_topic, partitions
        self.chunk_records = chunk_records
        self.standby: set[int] = set()
        self.records = 0
        self._changed = asyncio.Event()
        self._assigned: set[int] = set()

    def set_owned(self, owned: Iterable[int]) -> None:
        """The partitions owned now; every other one becomes (or stays) a standby replica."""
        self.standby = set(range(self.partitions)) - set(owned)
        self._changed.set()

    def _store(self, partition: int) -> SequenceStore | None:
        store = self.stores.get(self.clicks_topic, partition)
        if store is not None:
            return store
        try:
            return self.stores.open_nowait(self.clicks_topic, partition)
        except StoreLockedError:
            return None  # the previous owner (same host) is still closing it: next round

    async def run(self) -> None:
        """Tail the standby partitions until cancelled (the consumer is stopped then)."""
        from aiokafka import TopicPartition  # noqa: PLC0415

        consumer = self.consumer_factory()
        await consumer.start()
        retry_at = 0.0
        try:
            while True:
                if self._changed.is_set() or (self._assigned != self.standby and time.monotonic() >= retry_at):
                    self._changed.clear()
                    positions: dict[Any, int | None] = {}
                    for p in sorted(self.standby):
                        store = self._store(p)
                        if store is not None:  # else locked by the previous owner on this host: retried in 1 s
                            positions[TopicPartition(self.changelog, p)] = store.changelog_position(self.changelog, p)
                    consumer.assign(list(positions))
                    for tp, pos in positions.items():  # the store says where its copy ends
                        if pos is None:
                            await consumer.seek_to_beginning(tp)
                        else:
                            consumer.seek(tp, pos)
                    self._assigned = {tp.partition for tp in positions}
                    retry_at = time.monotonic() + 1.0
                if not self._assigned:
                    try:
                        await asyncio.wait_for(self._changed.wait(), 1.0)
                    except TimeoutError:
                        pass
                    continue
                got = await consumer.getmany(timeout_ms=FETCH_POLL_MS, max_records=self.chunk_records)
                for tp, batch in got.items():
                    # owned meanwhile (no await between this check and the write): the owner's restore takes over
                    if not batch or tp.partition not in self.standby:
                        continue
                    store = self._store(tp.partition)
                    if store is None:
                        continue
                    self.records += _Chunk.write_records(store, self.changelog, tp.partition, batch).records
        finally:
            await consumer.stop()


# --------------------------------------------------------------------------------------- partition-count guard
def check_partition_count(state_dir: str | Path, topic: str, partitions: int) -> int:
    """Compare the clicks topic's partition count with the one recorded in ``state_dir`` (recorded if absent).

    Args:
        state_dir: the worker's state folder (``clicks-partitions.json`` is kept there).
        topic: clicks topic name. partitions: its partition count on the cluster now.

    Returns:
        The recorded (= current) count.

    Raises:
        PartitionCountChangedError: the state was built with another count (users would map to other partitions
            and their histories would split).
    """
    path = Path(state_dir) / PARTITIONS_FILE
    recorded: dict[str, int] = {}
    if path.exists():
        try:
            recorded = {str(k): int(v) for k, v in json.loads(path.read_text()).items()}
        except (ValueError, AttributeError) as err:
            raise StoreError(f"{path} is unreadable ({err}); it records the clicks topic's partition count of the "
                             "state in this folder: restore it, or delete it if the count did not change") from None
    if topic in recorded and recorded[topic] != partitions:
        raise partition_count_error(topic, recorded[topic], partitions, path)
    if topic not in recorded:
        recorded[topic] = partitions
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(recorded))
        tmp.replace(path)
    return partitions


def partition_count_error(topic: str, expected: int, found: int, where: str | Path) -> PartitionCountChangedError:
    """The one-line error of a changed clicks partition count."""
    return PartitionCountChangedError(
        f"clicks topic {topic!r} now has {found} partitions, but the ingest state was built with {expected} "
        f"({where}): users would be re-keyed to other partitions and their histories split, so the worker stops. "
        f"Restore {expected} partitions, or rebuild the state: stop every ingest worker, move each state_dir away, "
        "delete the changelog topic and replay the clicks")


#: Lock files held by this process (kept open: the lock lasts as long as the process).
_HELD: list[Any] = []


def hold_state_dir(state_dir: str | Path) -> None:
    """Take an exclusive lock on ``state_dir`` for this process (``state_dir/standby.lock``).

    Standby replicas keep the stores of the partitions a worker does not own open; a second worker on the same
    ``state_dir`` would then wait for those stores' locks. So with standby replicas each ingest worker needs its own
    ``state_dir`` (one worker per host, as across hosts).

    Raises:
        ConfigError: another process holds the lock (message says what to do).
    """
    import fcntl  # noqa: PLC0415

    from adrec_stream.errors import ConfigError  # noqa: PLC0415

    path = Path(state_dir) / "standby.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a+")  # noqa: SIM115 - held open for the life of the process
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise ConfigError(f"state.standby_replicas is on and another ingest worker uses state_dir {state_dir} "
                          f"(lock {path}); give each ingest worker its own state_dir, or turn standby replicas off") from None
    _HELD.append(f)
