"""One :class:`~adrec_stream.state.store.SequenceStore` per clicks-topic partition, so ingest workers scale out.

State is kept per Kafka partition at ``state_dir/sequences/<topic>-<partition>`` (a RocksDB directory each).
An ingest worker opens the stores of the partitions assigned to it (lazily, at the first record of the
partition) and closes a store when its partition is revoked, so that the next owner - another worker process
on the SAME host, sharing ``state_dir`` - opens it with the whole state (windows of that partition's users
and the partition's last applied offset). RocksDB allows one process per directory: a new owner whose open
hits the lock (the previous owner is still closing) retries for ``lock_wait_s`` and then fails with a
:class:`~adrec_stream.errors.StoreLockedError` naming the path and the holding PID.

Routing: the producer keys clicks by user id, so a user's clicks (and window) live in the partition
:func:`partition_for_key` gives for the key bytes - kafka-python's / aiokafka's / the Java client's default
partitioner (murmur2 of the key, sign bit cleared, modulo the partition count). Anything that writes or reads
state outside the worker (the demo's bootstrap, tests) routes with that function.

Across hosts, per-partition stores are not enough by themselves: a new owner on another host restores a moved
partition's store from the compacted changelog topic (:mod:`adrec_stream.state.changelog`) before applying clicks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path

from adrec_stream.errors import StoreError, StoreLockedError
from adrec_stream.state.store import SequenceStore

#: Sub-folder of ``state_dir`` holding the per-partition stores.
SEQUENCES_DIR = "sequences"
#: Seconds between two open attempts while waiting for another process's lock.
LOCK_RETRY_INTERVAL_S = 0.25


def partition_for_key(key: bytes, n_partitions: int) -> int:
    """Partition of a keyed record under the default Kafka partitioner (murmur2, as kafka-python/aiokafka).

    Args:
        key: the record key bytes (for clicks: the UTF-8 user id).
        n_partitions: partition count of the topic (>= 1).

    Returns:
        ``(murmur2(key) & 0x7fffffff) % n_partitions``, in ``[0, n_partitions)``.

    Raises:
        ValueError: ``n_partitions < 1`` or ``key`` is None (unkeyed records are spread at random).
    """
    from kafka.partitioner.default import murmur2  # noqa: PLC0415

    if n_partitions < 1:
        raise ValueError(f"n_partitions must be >= 1, got {n_partitions}")
    if key is None:
        raise ValueError("unkeyed records have no fixed partition; key clicks by user id")
    return (murmur2(key) & 0x7FFFFFFF) % n_partitions


def sequences_root(state_dir: str | Path) -> Path:
    """``state_dir/sequences``: the folder of the per-partition stores."""
    return Path(state_dir) / SEQUENCES_DIR


def partition_store_path(state_dir: str | Path, topic: str, partition: int) -> Path:
    """Directory of the store of one clicks partition: ``state_dir/sequences/<topic>-<partition>``."""
    if partition < 0:
        raise ValueError(f"partition must be >= 0, got {partition}")
    return sequences_root(state_dir) / f"{topic}-{partition}"


def check_layout(state_dir: str | Path) -> None:
    """Refuse a ``state_dir/sequences`` that is itself a RocksDB store (single-store layout of earlier builds).

    Raises:
        StoreError: the old layout was found (message says what to do).
    """
    root = sequences_root(state_dir)
    if (root / "CURRENT").exists():
        raise StoreError(
            f"{root} is a single sequence store from an earlier build; this build keeps one store per partition "
            f"under {root}/<topic>-<partition>. Move {root} away and replay the clicks topic (or re-run the "
            "bootstrap) to rebuild the state"
        )


def open_store_waiting(path: str | Path, *, window: int, lock_wait_s: float,
                       sleep: Callable[[float], None] = time.sleep) -> SequenceStore:
    """Open a store, retrying while another process holds its lock (e.g. the previous partition owner closing).

    Args:
        path: store directory.
        window: items kept per user.
        lock_wait_s: how long to keep retrying (s); 0 tries once.
        sleep: called between attempts (tests pass a fake).

    Raises:
        StoreLockedError: still locked after ``lock_wait_s``; the message names the path and the holder's PID.
        StoreError: the store cannot be opened for another reason.
    """
    deadline = time.monotonic() + lock_wait_s
    while True:
        try:
            return SequenceStore(path, window=window)
        except StoreLockedError as err:
            if time.monotonic() >= deadline:
                raise StoreLockedError(f"{err} [waited {lock_wait_s:g} s for the lock "
                                       "(stream config: store_lock_wait_s)]") from None
            sleep(LOCK_RETRY_INTERVAL_S)


class PartitionStores:
    """The open per-partition stores of one ingest worker, keyed by (topic, partition).

    Args:
        state_dir: the worker's ``state_dir`` (shared by the workers of one host).
        window: items kept per user.
        lock_wait_s: bounded wait for a lock held by another process (see :func:`open_store_waiting`).
        on_open: called with every newly opened store (test hooks install fault injection here).

    Not thread-safe; used from the worker's event loop only (:meth:`get` and :meth:`open_partitions` excepted: they
    only read).
    """

    def __init__(self, state_dir: str | Path, *, window: int, lock_wait_s: float,
                 on_open: Callable[[SequenceStore], None] | None = None) -> None:
        check_layout(state_dir)
        self.state_dir = Path(state_dir)
        self.window = window
        self.lock_wait_s = lock_wait_s
        self._on_open = on_open
        self._stores: dict[tuple[str, int], SequenceStore] = {}

    def path(self, topic: str, partition: int) -> Path:
        """Directory of the store of (topic, partition)."""
        return partition_store_path(self.state_dir, topic, partition)

    def get(self, topic: str, partition: int) -> SequenceStore | None:
        """The open store of (topic, partition), or None if it is not open here."""
        store = self._stores.get((topic, partition))
        return None if store is None or store.closed else store

    def open(self, topic: str, partition: int, sleep: Callable[[float], None] = time.sleep) -> SequenceStore:
        """Open (or return the already open) store of (topic, partition), waiting for a held lock.

        Raises:
            StoreLockedError: still locked after ``lock_wait_s``.
            StoreError: cannot be opened.
        """
        store = self.get(topic, partition)
        if store is None:
            store = open_store_waiting(self.path(topic, partition), window=self.window,
                                       lock_wait_s=self.lock_wait_s, sleep=sleep)
            if self._on_open is not None:
                self._on_open(store)
            self._stores[(topic, partition)] = store
        return store

    async def open_async(self, topic: str, partition: int) -> SequenceStore:
        """:meth:`open` for an event loop: waits for a held lock with ``asyncio.sleep`` (heartbeats go on).

        Raises:
            StoreLockedError: still locked after ``lock_wait_s``.
            StoreError: cannot be opened.
        """
        import asyncio  # noqa: PLC0415

        deadline = time.monotonic() + self.lock_wait_s
        while True:
            try:
                return self._open_once(topic, partition)
            except StoreLockedError as err:
                if time.monotonic() >= deadline:
                    raise StoreLockedError(f"{err} [waited {self.lock_wait_s:g} s for the lock "
                                           "(stream config: store_lock_wait_s)]") from None
                await asyncio.sleep(LOCK_RETRY_INTERVAL_S)

    def open_nowait(self, topic: str, partition: int) -> SequenceStore:
        """Open (or return the already open) store of (topic, partition) without waiting for a held lock.

        Raises:
            StoreLockedError: another process holds it. StoreError: cannot be opened.
        """
        return self._open_once(topic, partition)

    def _open_once(self, topic: str, partition: int) -> SequenceStore:
        store = self.get(topic, partition)
        if store is None:
            store = SequenceStore(self.path(topic, partition), window=self.window)
            if self._on_open is not None:
                self._on_open(store)
            self._stores[(topic, partition)] = store
        return store

    def close(self, tps: Iterable[tuple[str, int]]) -> list[tuple[str, int]]:
        """Close the stores of these (topic, partition) pairs (revoked partitions); returns those closed."""
        closed = []
        for tp in tps:
            store = self._stores.pop(tuple(tp), None)
            if store is not None and not store.closed:
                store.close()
                closed.append(tuple(tp))
        return closed

    def close_all(self) -> None:
        """Close every open store (idempotent)."""
        self.close(list(self._stores))

    def open_partitions(self) -> list[tuple[str, int]]:
        """(topic, partition) pairs whose store is open here, sorted (a snapshot: may be called from another thread,
        e.g. the metrics endpoint's)."""
        return sorted(tp for tp, s in list(self._stores.items()) if not s.closed)


def read_all(state_dir: str | Path, *, window: int) -> tuple[dict[str, list[str]], dict[tuple[str, int], int]]:
    """(user -> window, (topic, partition) -> last applied offset) across all per-partition stores.

    Opens each store in turn (the workers must be stopped, or must not own the partitions).

    Raises:
        StoreError: a user has a window in two partition stores (clicks of one user were not keyed by user
            id), or a store cannot be opened (StoreLockedError while a worker holds it).
    """
    seqs: dict[str, list[str]] = {}
    offsets: dict[tuple[str, int], int] = {}
    root = sequences_root(state_dir)
    if not root.is_dir():
        return seqs, offsets
    check_layout(state_dir)
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        with SequenceStore(d, window=window) as store:
            for u in store.users():
                if u in seqs:
                    raise StoreError(f"user {u!r} has a window in two partition stores (second: {d}); "
                                     "clicks must be keyed by user id")
                seqs[u] = store.sequence(u)
            offsets.update(store.applied_offsets())
    return seqs, offsets


def user_sequence(state_dir: str | Path, topic: str, n_partitions: int, user_id: str, *, window: int) -> list[str]:
    """A user's window read from the store of the partition its key maps to ([] if none).

    Raises:
        StoreLockedError: a worker holds that partition's store.
    """
    path = partition_store_path(state_dir, topic, partition_for_key(user_id.encode("utf-8"), n_partitions))
    if not path.is_dir():
        return []
    with SequenceStore(path, window=window) as store:
        return store.sequence(user_id)
