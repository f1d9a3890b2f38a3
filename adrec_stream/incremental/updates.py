"""What the fine-tune worker knows about the stream: the sequence updates it consumed, split into what the
serving model was trained on and what is fresh.

The ingest worker publishes one sequence update per applied click to the sequence-updates topic: the user's
window of raw item ids right AFTER the click (oldest first), the click's event id and times, and the clicks
partition/offset it came from. The fine-tune worker reads that topic (never the ingest workers' RocksDB
stores), so it runs on any host that reaches the broker. Records of one user share a partition (key = user
id), so per partition the topic order is each user's click order.

:class:`UpdateTracker` keeps, in memory:

- the latest update of every user (their newest window): the pool that replay samples are drawn from;
- the newest ``max_recent`` updates in arrival order: the candidates for a round's window.

Order of the fresh updates (:meth:`UpdateTracker.fresh`): the partitions' offset orders merged by event time
(ties: lower partition first). Arrival order across partitions depends on how the consumer's polls happened to
interleave them (a poll often returns one partition's batch after another's); the merged order does not, so
a round's held-out part is the newest clicks by event time and the same updates give the same window however
they were consumed (the in-process replay of ``evaluate-replay`` and the worker agree).

A model version records, per sequence-updates partition, the last offset its training window covered
(``window.offsets`` of its manifest). Updates above those offsets are *fresh* for that version.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from adrec_stream.stream.events import DecodeError, canonical_item_id


@dataclass(frozen=True)
class SequenceUpdateRecord:
    """One consumed sequence update.

    Attributes:
        user_id: the user (str).
        items: raw item ids of the user's window after the click, oldest first; ``items[-1]`` is the click.
        partition, offset: position in the sequence-updates topic.
        event_ts: click time (epoch s, from the click).
        ingest_ts: wall-clock time (epoch s) the ingest worker applied the click.
        event_id: the click's event id.
    """

    user_id: str
    items: tuple[str, ...]
    partition: int
    offset: int
    event_ts: float | None
    ingest_ts: float | None
    event_id: str | None

    @property
    def clicked(self) -> str:
        """Raw id of the item clicked (the last of the window)."""
        return self.items[-1]


class BadUpdateError(ValueError):
    """A sequence-updates record that is not a valid update (the message says why)."""


def _opt_float(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def parse_update(value: bytes | None, partition: int, offset: int, *,
                 item_id_type: str = "int") -> SequenceUpdateRecord:
    """Decode one sequence-updates record value (JSON written by the ingest worker).

    Item ids follow the click rules (:func:`~adrec_stream.stream.events.canonical_item_id` with the stream's
    ``item_id_type``), so a record that no ingest worker could have written never reaches a vocabulary.

    Raises:
        BadUpdateError: a tombstone, not JSON, not an object, no ``user_id``, ``items`` not a non-empty list,
            or an item id the click rules refuse (the message names it).
    """
    if value is None:
        raise BadUpdateError("tombstone (record without a value)")
    try:
        obj = orjson.loads(value)
    except (orjson.JSONDecodeError, TypeError) as err:
        raise BadUpdateError(f"not JSON ({err})") from None
    if not isinstance(obj, dict):
        raise BadUpdateError("not a JSON object")
    user, items = obj.get("user_id"), obj.get("items")
    if user is None or user == "":
        raise BadUpdateError("no user_id")
    if not isinstance(items, list) or not items:
        raise BadUpdateError("items is not a non-empty list")
    try:
        raw = tuple(canonical_item_id(i, item_id_type) for i in items)
    except DecodeError as err:
        raise BadUpdateError(f"items: {err}") from None
    return SequenceUpdateRecord(str(user), raw, int(partition), int(offset),
                                _opt_float(obj.get("event_ts")), _opt_float(obj.get("ingest_ts")),
                                None if obj.get("event_id") is None else str(obj.get("event_id")))


def is_after(update: SequenceUpdateRecord, cut: dict[int, int]) -> bool:
    """True if ``update`` lies above ``cut`` (partition -> last covered offset; absent = nothing covered)."""
    last = cut.get(update.partition)
    return last is None or update.offset > last


class UpdateTracker:
    """Latest window per user plus the newest ``max_recent`` updates (see the module docstring).

    Args:
        max_recent: updates kept in arrival order for round windows (older ones drop out of the window).
    """

    def __init__(self, max_recent: int) -> None:
        if max_recent < 1:
            raise ValueError(f"max_recent must be >= 1, got {max_recent}")
        self.latest: dict[str, SequenceUpdateRecord] = {}
        self.recent: deque[SequenceUpdateRecord] = deque(maxlen=max_recent)
        self.consumed = 0
        self.high: dict[int, int] = {}  # partition -> highest offset seen

    def add(self, updates: Iterable[SequenceUpdateRecord]) -> int:
        """Take updates in topic order (per partition); returns how many were added."""
        n = 0
        for u in updates:
            prev = self.latest.get(u.user_id)
            if prev is None or prev.partition != u.partition or u.offset > prev.offset:
                self.latest[u.user_id] = u
            self.recent.append(u)
            self.high[u.partition] = max(self.high.get(u.partition, -1), u.offset)
            n += 1
        self.consumed += n
        return n

    def fresh(self, cut: dict[int, int]) -> list[SequenceUpdateRecord]:
        """Kept updates above ``cut``: each partition in offset order, partitions merged by event time (ties:
        lower partition first; see the module docstring), so the result does not depend on how the partitions
        were interleaved on arrival."""
        by_part: dict[int, list[SequenceUpdateRecord]] = {}
        for u in self.recent:
            if is_after(u, cut):
                by_part.setdefault(u.partition, []).append(u)
        return list(heapq.merge(*(by_part[p] for p in sorted(by_part)), key=_merge_key))

    def pool(self, cut: dict[int, int]) -> list[SequenceUpdateRecord]:
        """Latest updates of users whose newest click is covered by ``cut`` (no fresh click), by user id."""
        return [self.latest[u] for u in sorted(self.latest) if not is_after(self.latest[u], cut)]


def _merge_key(u: SequenceUpdateRecord) -> tuple[float, int]:
    return (u.event_ts if u.event_ts is not None else 0.0, u.partition)


def updates_from_clicks(clicks: Iterable[tuple[str, str, float]], *, window: int, n_partitions: int,
                        history: dict[str, list[str]] | None = None,
                        ingest_ts: float | None = None) -> list[SequenceUpdateRecord]:
    """The sequence updates the ingest worker would publish for ``clicks``, without a broker.

    For replay-based evaluation and benchmarks that run the fine-tune round in process: each click
    ``(user, item, ts)`` appends ``item`` to the user's window (trimmed to ``window`` items) and yields one
    update in the partition the user's key maps to (:func:`~adrec_stream.state.partitioned.partition_for_key`),
    with consecutive offsets per partition, as the ingest worker's output would hold them.

    Args:
        clicks: (user id, raw item id, event time in epoch s), in stream order.
        window: items kept per user (the stream config's ``window``).
        n_partitions: partitions of the sequence-updates topic.
        history: windows the users start with (e.g. the bootstrapped training part); not modified.
        ingest_ts: wall-clock ingest time written into every update (None = unknown).

    Returns:
        One :class:`SequenceUpdateRecord` per click, in input order.
    """
    from adrec_stream.state.partitioned import partition_for_key  # noqa: PLC0415

    windows = {u: list(items[-window:]) for u, items in (history or {}).items()}
    next_offset = [0] * n_partitions
    out = []
    for i, (user, item, ts) in enumerate(clicks):
        items = windows.setdefault(user, [])
        items.append(item)
        if len(items) > window:
            del items[: len(items) - window]
        part = partition_for_key(user.encode("utf-8"), n_partitions)
        out.append(SequenceUpdateRecord(user, tuple(items), part, next_offset[part], float(ts), ingest_ts, str(i)))
        next_offset[part] += 1
    return out
