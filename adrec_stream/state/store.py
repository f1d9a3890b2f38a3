"""Per-user click windows in RocksDB (rocksdict), applied exactly once per Kafka offset.

:class:`SequenceStore` keeps, for every user, the last ``window`` raw item ids (oldest first) and their
event times. :meth:`SequenceStore.apply` writes a batch of consumed records in ONE RocksDB WriteBatch
that holds both the sequence appends and the last applied offset of every (topic, partition) touched
(:meth:`SequenceStore.plan` computes that write without making it, :meth:`SequenceStore.apply_plan` makes it
later unless the store was written in between).
Records at or below the stored offset are skipped, so replaying records after a crash (at-least-once
delivery: the consumer restarts from its last *committed* Kafka offset, which may be older) changes
nothing: the state is exactly-once in effect, also after ``kill -9`` (the write-ahead log survives a
process crash; pass ``sync=True`` to also survive power loss, at a cost per batch).

Order: a user's items are appended in the order records are given, i.e. Kafka partition order; the
producer keys clicks by user id so that one user's clicks share a partition.

On-disk layout (raw bytes keys, format version 1):

- ``s:<user_id>`` -> orjson ``[[item, ...], [ts, ...], [topic, partition, offset]]`` (raw item ids as strings,
  epoch seconds, the source record of the user's last applied click; entries of earlier builds have no third
  element, and :meth:`SequenceStore.forget_offsets` sets it to null)
- ``o:<topic>\\x00<partition>`` -> last applied offset as ASCII decimal
- ``c:<changelog topic>\\x00<partition>`` -> next changelog offset to read: the store reflects every changelog
  record below it (:mod:`adrec_stream.state.changelog`)
- ``m:format`` -> ``1``

Duplicates: a click is skipped when its offset is at or below the offset of its user's last applied click (same
topic and partition), or - for a user without an entry, or one whose entry has no source - at or below the
partition's applied offset. The per-user rule makes a store restored from a changelog whose last batch was only
partly delivered exact: users whose record arrived skip the clicks it holds, the others re-apply theirs.

A RocksDB directory can be open in one process only. Opening writes ``<path>.pid`` beside the DB; a
second opener gets :class:`~adrec_stream.errors.StoreLockedError` naming the path and that PID. A
stale pid file left by a killed process does not block reopening (the OS releases RocksDB's LOCK file
when the process dies; only the lock decides).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import orjson
from rocksdict import Options, Rdict, WriteBatch, WriteOptions

from adrec_stream.data.events import Interaction
from adrec_stream.errors import StalePlanError, StoreError, StoreLockedError
from adrec_stream.procs import pid_alive

FORMAT_VERSION = b"1"
_SEQ = b"s:"
_OFF = b"o:"
_CLOG = b"c:"
_FORMAT_KEY = b"m:format"
_LOCK_MSG = re.compile(r"/LOCK\b|lock hold by current process", re.IGNORECASE)
#: Keys read per iterator pass in :meth:`SequenceStore.users` (the iterator is dropped between passes so
#: that an abandoned generator never keeps the DB locked after :meth:`SequenceStore.close`).
_SCAN_CHUNK = 4096


#: write generations of every store in this process (a plan is valid for one store and one generation only)
_GENERATIONS = itertools.count()


class SourceRecord(NamedTuple):
    """A consumed Kafka record: its position and the decoded click (None = dead-lettered / skipped)."""

    topic: str
    partition: int
    offset: int
    event: Interaction | None


#: Source of a user's last applied click: (topic, partition, offset); None = unknown (entry of an earlier build, or
#: offsets forgotten after a broker reset); :data:`NO_ENTRY` = the user has no stored window.
Source = tuple[str, int, int] | None
NO_ENTRY: tuple[str, int, int] = ("", -1, -1)
#: (items, event times, source) of one user, as held in memory.
Entry = tuple[list[str], list[float], Source]


class StorePlan(NamedTuple):
    """What :meth:`SequenceStore.apply` would write for a batch (see :meth:`SequenceStore.plan`).

    Attributes:
        updates: one :class:`SequenceUpdate` per click that would be applied, in input order.
        windows: user -> (items, event times (s), source (topic, partition, offset)) after the batch, for every user
            with an applied click.
        offsets: (topic, partition) -> the partition's applied offset after the batch (partitions that advance).
        fresh: number of records that would be applied (clicks and dead letters).
        generation: the store's write generation when the plan was made (unique across the stores of a process);
            :meth:`SequenceStore.apply_plan` refuses the plan once anything was written to that store since, or when
            it is another store's plan.
    """

    updates: list
    windows: dict[str, Entry]
    offsets: dict[tuple[str, int], int]
    fresh: int
    generation: int


class SequenceUpdate(NamedTuple):
    """A user's window right after one click was applied: raw item ids oldest first, ``len <= window``."""

    user_id: str
    items: list[str]
    event: Interaction
    partition: int
    offset: int


def pid_file_for(path: str | Path) -> Path:
    """The pid file written beside a store directory: ``<path>.pid``."""
    p = Path(path)
    return p.with_name(p.name + ".pid")


def _read_owner(path: Path) -> dict | None:
    try:
        data = json.loads(pid_file_for(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("pid"), int) else None


def _offset_key(topic: str, partition: int, prefix: bytes = _OFF) -> bytes:
    return prefix + topic.encode("utf-8") + b"\x00" + str(partition).encode("ascii")


def _encode_entry(entry: Entry) -> bytes:
    items, ts, src = entry
    return orjson.dumps([items, ts, None if src is None or src == NO_ENTRY else list(src)])


class SequenceStore:
    """Bounded per-user item windows plus applied offsets, in one RocksDB database.

    Args:
        path: RocksDB directory (created with its parents if missing).
        window: items kept per user (>= 1); older ones are dropped on write. Lowering it on reopen trims
            sequences on their next write and on every read.
        sync: fsync the write-ahead log on every :meth:`apply` (survives power loss; slower).
        cache_users: windows of up to this many recently written/read users are kept in memory (LRU) so
            that hot users skip the RocksDB read and JSON decode; 0 disables. The cache is updated only
            after a successful write, so it never holds state that is not on disk.

    Raises:
        StoreLockedError: the path is open in another process (or another store of this process); the
            message names the path and the PID from the pid file.
        StoreError: the database cannot be opened or has an unknown format version.
        ValueError: ``window < 1``.

    Thread-safe: calls are serialised by an internal lock (the order of ``apply`` calls made from several
    threads is the callers' business). One process per path (see the module docstring).
    """

    def __init__(self, path: str | Path, *, window: int, sync: bool = False, cache_users: int = 100_000) -> None:
        if not isinstance(window, int) or isinstance(window, bool) or window < 1:
            raise ValueError(f"window must be an integer >= 1, got {window!r}")
        if cache_users < 0:
            raise ValueError(f"cache_users must be >= 0, got {cache_users}")
        self.path = Path(path)
        self.window = window
        self._cache: OrderedDict[str, Entry] = OrderedDict()
        self._cache_size = cache_users
        self._lock = threading.RLock()
        self._db: Rdict | None = None
        self._generation = next(_GENERATIONS)  # renewed by every successful write (a plan made before is stale)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        opts = Options(raw_mode=True)
        opts.create_if_missing(True)
        try:
            self._db = Rdict(str(self.path), options=opts)
        except Exception as err:  # rocksdict raises plain Exception
            msg = str(err)
            if _LOCK_MSG.search(msg):
                raise self._locked_error(msg) from None
            raise StoreError(
                f"cannot open the sequence store at {self.path}: {msg}; check the path and permissions, or "
                "move the directory away to rebuild the state by replaying the clicks topic"
            ) from None
        self._write_opts = WriteOptions()
        self._write_opts.sync = sync
        try:
            fmt = self._db.get(_FORMAT_KEY)
            if fmt is None:
                self._db.put(_FORMAT_KEY, FORMAT_VERSION, self._write_opts)
            elif fmt != FORMAT_VERSION:
                raise StoreError(
                    f"sequence store at {self.path} has format {fmt!r}, this code reads {FORMAT_VERSION!r}; "
                    "use a new state_dir or rebuild the state by replaying the clicks topic"
                )
            self._offsets = self._load_offsets()
            self._changelog_pos = self._load_offsets(_CLOG)
            self._write_pid_file()
        except BaseException:
            self._db.close()
            self._db = None
            raise

    # ----------------------------------------------------------------- open / close
    def _locked_error(self, msg: str) -> StoreLockedError:
        owner = _read_owner(self.path)
        if owner is None:
            who = f"no readable pid file at {pid_file_for(self.path)}"
        elif owner["pid"] == os.getpid():
            who = f"PID {owner['pid']} (this process: close the other SequenceStore on this path first)"
        else:
            state = "running" if pid_alive(owner["pid"]) else "not running here (other host or container?)"
            who = f"PID {owner['pid']} on {owner.get('host', '?')}, {state}"
        return StoreLockedError(
            f"sequence store {self.path} is locked by another process: {who}. Stop that worker, or give this "
            f"one its own state_dir (RocksDB: {msg})"
        )

    def _write_pid_file(self) -> None:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "opened_at": time.time()}
        pf = pid_file_for(self.path)
        tmp = pf.with_name(pf.name + f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(info))
        os.replace(tmp, pf)

    def close(self) -> None:
        """Close the database (idempotent) and remove the pid file if it is ours."""
        with self._lock:
            if self._db is None:
                return
            self._db.close()
            self._db = None
            self._cache.clear()
            owner = _read_owner(self.path)
            if owner is not None and owner["pid"] == os.getpid():
                try:
                    pid_file_for(self.path).unlink()
                except FileNotFoundError:
                    pass

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._db is None

    def __enter__(self) -> SequenceStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _open_db(self) -> Rdict:
        if self._db is None:
            raise StoreError(f"sequence store {self.path} is closed; open a new SequenceStore")
        return self._db

    # ----------------------------------------------------------------- encoding
    def _decode_entry(self, raw: bytes | None) -> Entry:
        if raw is None:
            return [], [], NO_ENTRY
        items, ts, *rest = orjson.loads(raw)
        src = tuple(rest[0]) if rest and rest[0] is not None else None
        if len(items) > self.window:
            items, ts = items[-self.window :], ts[-self.window :]
        return items, ts, src

    def _load_offsets(self, prefix: bytes = _OFF) -> dict[tuple[str, int], int]:
        out: dict[tuple[str, int], int] = {}
        db = self._open_db()
        it = db.iter()
        try:
            it.seek(prefix)
            while it.valid():
                k = it.key()
                if not k.startswith(prefix):
                    break
                topic, _, part = k[len(prefix) :].rpartition(b"\x00")
                out[(topic.decode("utf-8"), int(part))] = int(it.value())
                it.next()
        finally:
            del it
        return out

    def _remember(self, user: str, entry: Entry) -> None:
        if not self._cache_size:
            return
        self._cache[user] = entry
        self._cache.move_to_end(user)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    def _load_many(self, users: Sequence[str], *, copy: bool) -> dict[str, Entry]:
        """Entries of ``users`` from the LRU cache or one RocksDB multi-get (copies if ``copy``)."""
        out: dict[str, Entry] = {}
        missing: list[str] = []
        for u in users:
            hit = self._cache.get(u)
            if hit is None:
                missing.append(u)
            else:
                self._cache.move_to_end(u)
                out[u] = (list(hit[0]), list(hit[1]), hit[2]) if copy else hit
        if missing:
            raws = self._open_db().get([_SEQ + u.encode("utf-8") for u in missing])
            for u, raw in zip(missing, raws):
                entry = self._decode_entry(raw)
                if raw is not None:
                    self._remember(u, (list(entry[0]), list(entry[1]), entry[2]) if copy else entry)
                out[u] = entry
        return out

    # ----------------------------------------------------------------- writes
    def _write_batch(self, wb: WriteBatch) -> None:
        """Ingest one WriteBatch atomically (separate method so that tests can inject a failure)."""
        self._open_db().write(wb, self._write_opts)

    def _write(self, wb: WriteBatch) -> None:
        """Every write of this store: :meth:`_write_batch`, then a new generation (plans made before it are stale;
        a failed write keeps them valid)."""
        self._write_batch(wb)
        self._generation = next(_GENERATIONS)

    @staticmethod
    def _state_batch(windows: dict[str, Entry], offsets: dict[tuple[str, int], int],
                     changelog_position: tuple[str, int, int] | None) -> WriteBatch:
        """ONE WriteBatch holding user windows, applied offsets and (optionally) the changelog position (changelog
        topic, partition, next offset)."""
        wb = WriteBatch(raw_mode=True)
        for u, entry in windows.items():
            wb.put(_SEQ + u.encode("utf-8"), _encode_entry(entry))
        for (topic, part), off in offsets.items():
            wb.put(_offset_key(topic, part), str(off).encode("ascii"))
        if changelog_position is not None:
            ctopic, cpart, cnext = changelog_position
            wb.put(_offset_key(ctopic, cpart, _CLOG), str(cnext).encode("ascii"))
        return wb

    def _plan(self, records: Sequence[SourceRecord]) -> StorePlan:
        """What :meth:`apply` would do, computed on copies (the store and its cache are not changed).

        Raises:
            ValueError: a record has a negative offset or partition.
        """
        for r in records:
            if r.offset < 0 or r.partition < 0:
                raise ValueError(f"record {r.topic}:{r.partition}:{r.offset} has a negative partition/offset")
        users = list(dict.fromkeys(r.event.user_id for r in records if r.event is not None))
        seqs = self._load_many(users, copy=True)
        pending_off: dict[tuple[str, int], int] = {}
        windows: dict[str, Entry] = {}
        updates: list[SequenceUpdate] = []
        fresh = 0
        w = self.window
        for r in records:
            tp = (r.topic, r.partition)
            last = pending_off.get(tp, self._offsets.get(tp))
            ev = r.event
            src = seqs[ev.user_id][2] if ev is not None else None
            if src is not None and src != NO_ENTRY and (src[0], src[1]) == tp:
                dup = r.offset <= src[2]  # the user's own last applied click (exact after a partial restore)
            else:
                dup = last is not None and r.offset <= last
            if dup:
                continue
            fresh += 1
            if last is None or r.offset > last:
                pending_off[tp] = r.offset
            if ev is None:
                continue
            items, ts, _ = seqs[ev.user_id]
            items.append(ev.item_id)
            ts.append(ev.ts)
            if len(items) > w:
                del items[: len(items) - w]
                del ts[: len(ts) - w]
            seqs[ev.user_id] = windows[ev.user_id] = (items, ts, (r.topic, r.partition, r.offset))
            updates.append(SequenceUpdate(ev.user_id, list(items), ev, r.partition, r.offset))
        return StorePlan(updates, windows, pending_off, fresh, self._generation)

    def plan(self, records: Sequence[SourceRecord]) -> StorePlan:
        """What :meth:`apply` would write for ``records`` now (updates, windows after the batch, offsets), without
        writing anything: the ingest handler publishes the updates and the changelog records from it first.

        Raises:
            StoreError: the store is closed. ValueError: a negative offset or partition.
        """
        with self._lock:
            self._open_db()
            return self._plan(records)

    def preview(self, records: Sequence[SourceRecord]) -> list[SequenceUpdate]:
        """The updates :meth:`apply` would return for ``records`` now, without writing anything.

        Lets a caller publish a batch's sequence updates before storing it (so a crash between the two never
        loses updates). Same skipping and trimming rules as :meth:`apply` (one shared computation).

        Raises:
            StoreError: the store is closed. ValueError: a negative offset or partition.
        """
        return self.plan(records).updates

    def apply(self, records: Sequence[SourceRecord],
              changelog_position: tuple[str, int, int] | None = None) -> list[SequenceUpdate]:
        """Apply consumed records in order, atomically, skipping already applied offsets.

        For each record whose offset is above the stored last applied offset of its (topic, partition):
        append ``event.item_id`` (and ``event.ts``) to the user's window, trim it to ``window`` items,
        and advance the partition's offset; an ``event`` of None only advances the offset (dead letters).
        All changes go into one RocksDB WriteBatch; if writing it fails nothing is changed, neither the
        sequences nor the offsets. ``changelog_position`` (changelog topic, partition, next offset): also store
        that the changelog records of this batch, up to that offset, are reflected (same WriteBatch).

        Returns:
            One :class:`SequenceUpdate` per applied click, in input order (skipped records give none).

        Raises:
            StoreError: the write failed (state unchanged; retry or restart from the committed offset),
                or the store is closed.
            ValueError: a record has a negative offset or partition.
        """
        with self._lock:
            self._open_db()
            return self.apply_plan(self._plan(records), changelog_position)

    def apply_plan(self, plan: StorePlan, changelog_position: tuple[str, int, int] | None = None) -> list[SequenceUpdate]:
        """Write a plan made by :meth:`plan` (what :meth:`apply` of its records writes), without computing it again:
        the ingest handler plans a batch, publishes its updates and changelog records, then stores the same plan.

        Returns:
            ``plan.updates`` (nothing is written when the plan applies no record).

        Raises:
            StalePlanError: something was written to this store after the plan was made (by this process: other
                processes cannot open the store, RocksDB lock), or the plan is another store's; nothing is written.
                The ingest handler never writes a partition's store while its batch is in flight, so this is a bug.
            StoreError: the write failed (state unchanged) or the store is closed.
        """
        with self._lock:
            self._open_db()
            # checked first, also for a plan that writes nothing: after another write, records the plan skipped as
            # duplicates may not be duplicates any more (e.g. after forgotten offsets)
            if plan.generation != self._generation:
                raise StalePlanError(
                    f"the sequence store {self.path} was written after this batch's plan was made (or the plan is "
                    f"another store's), so its {plan.fresh} records may no longer apply as planned; nothing was "
                    "written (a bug: nothing else may write the store while a batch is in flight)")
            if not plan.fresh:
                return []
            try:
                self._write(self._state_batch(plan.windows, plan.offsets, changelog_position))
            except Exception as err:
                raise StoreError(
                    f"write of {plan.fresh} records to the sequence store {self.path} failed: {err}; nothing "
                    "was applied (offsets not advanced); retry, or restart the worker to resume from the "
                    "stored offsets"
                ) from err
            self._offsets.update(plan.offsets)
            if changelog_position is not None:
                self._changelog_pos[changelog_position[:2]] = changelog_position[2]
            for u, entry in plan.windows.items():
                self._remember(u, entry)
            return plan.updates

    def apply_changelog(self, windows: dict[str, Entry], offsets: dict[tuple[str, int], int],
                        changelog_position: tuple[str, int, int]) -> None:
        """Write restored state in ONE WriteBatch: user windows (replacing the stored ones), applied offsets and the
        changelog position (changelog topic, partition, next offset to read).

        Used by the changelog restore and the standby replicas (:mod:`adrec_stream.state.changelog`): the
        changelog holds whole windows, so applying a record again is harmless.

        Raises:
            StoreError: the write failed (nothing changed) or the store is closed.
        """
        with self._lock:
            self._open_db()
            ctopic, cpart, cnext = changelog_position
            try:
                self._write(self._state_batch(windows, offsets, changelog_position))
            except Exception as err:
                raise StoreError(f"write of {len(windows)} restored windows to the sequence store {self.path} "
                                 f"failed: {err}; nothing was written; restart the worker to restore again") from err
            self._offsets.update(offsets)
            self._changelog_pos[(ctopic, cpart)] = cnext
            for u, entry in windows.items():
                self._cache.pop(u, None)
                self._remember(u, (list(entry[0])[-self.window :], list(entry[1])[-self.window :], entry[2]))

    def changelog_position(self, topic: str, partition: int) -> int | None:
        """Next offset of changelog (topic, partition) to read: every record below it is reflected here (None:
        nothing read or written yet, restore from the beginning)."""
        with self._lock:
            self._open_db()
            return self._changelog_pos.get((topic, partition))

    def forget_offsets(self, topic: str, partitions: Iterable[int] | None = None) -> None:
        """Drop stored offsets of ``topic`` (all partitions, or the given ones); sequences are kept.

        Use when the broker's log was reset (e.g. the embedded memory broker restarted empty, so offsets
        start again from 0 and would otherwise all be skipped as already applied).
        """
        with self._lock:
            self._open_db()
            keys = [tp for tp in self._offsets if tp[0] == topic and (partitions is None or tp[1] in set(partitions))]
            if not keys:
                return
            wb = WriteBatch(raw_mode=True)
            for t, p in keys:
                wb.delete(_offset_key(t, p))
            self._write(wb)
            for tp in keys:
                del self._offsets[tp]
            # the users' own last offsets refer to the old log too: drop them (rare: a full scan, in chunks)
            gone = set(keys)
            chunk: list[str] = []
            for u in [*self.users(), None]:
                if u is not None:
                    chunk.append(u)
                if chunk and (u is None or len(chunk) >= _SCAN_CHUNK):
                    wb = WriteBatch(raw_mode=True)
                    stale = {}
                    for v, (items, ts, src) in self._load_many(chunk, copy=True).items():
                        if src is not None and src != NO_ENTRY and (src[0], src[1]) in gone:
                            stale[v] = (items, ts, None)
                            wb.put(_SEQ + v.encode("utf-8"), _encode_entry(stale[v]))
                    if stale:
                        self._write(wb)
                        for v, entry in stale.items():
                            self._cache.pop(v, None)
                            self._remember(v, entry)
                    chunk = []

    # ----------------------------------------------------------------- reads
    def applied_offset(self, topic: str, partition: int) -> int | None:
        """Last applied offset of (topic, partition), or None if nothing was applied. Resume at this + 1."""
        with self._lock:
            self._open_db()
            return self._offsets.get((topic, partition))

    def applied_offsets(self, topic: str | None = None) -> dict[tuple[str, int], int]:
        """All stored (topic, partition) -> last applied offset (optionally of one topic)."""
        with self._lock:
            self._open_db()
            return {tp: o for tp, o in self._offsets.items() if topic is None or tp[0] == topic}

    def sequence(self, user_id: str) -> list[str]:
        """The user's raw item ids, oldest first (at most ``window``); [] for an unknown user."""
        return self.history(user_id)[0]

    def history(self, user_id: str) -> tuple[list[str], list[float]]:
        """The user's raw item ids and their event times (epoch seconds), oldest first (fresh lists)."""
        with self._lock:
            self._open_db()
            return self._load_many([user_id], copy=True)[user_id][:2]

    def sequences(self, user_ids: Sequence[str]) -> list[list[str]]:
        """Windows of many users (cache, then one RocksDB multi-get), in the order given ([] for unknown)."""
        with self._lock:
            self._open_db()
            if not user_ids:
                return []
            got = self._load_many(list(dict.fromkeys(user_ids)), copy=False)
            return [list(got[u][0]) for u in user_ids]

    def users(self) -> Iterator[str]:
        """All user ids with a stored window, in byte order of their UTF-8 encoding."""
        start = _SEQ
        inclusive = True
        while True:
            batch: list[str] = []
            with self._lock:
                it = self._open_db().iter()
                try:
                    it.seek(start)
                    while it.valid() and len(batch) < _SCAN_CHUNK:
                        k = it.key()
                        if not k.startswith(_SEQ):
                            break
                        if inclusive or k != start:
                            batch.append(k[len(_SEQ) :].decode("utf-8"))
                        it.next()
                finally:
                    del it
            yield from batch
            if len(batch) < _SCAN_CHUNK:
                return
            start, inclusive = _SEQ + batch[-1].encode("utf-8"), False
