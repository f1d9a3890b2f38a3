"""Prequential (test-then-train, per event) evaluation of a recommendation stream.

Definition used throughout the project: let user u's valid clicks in the evaluated stream be
c_1, ..., c_n in stream order (the producer's order; per user this is time order). The recommendation
emitted after click c_i (the one whose ``event_id`` is c_i's) is judged against c_{i+1}'s item, for
i = 1 .. n-1; the last click of each user has no next click and is not judged. With the next item at 1-based
rank r in the top-k list (r = inf if absent):

    HR@k = 1[r <= k],   NDCG@k = 1 / log2(r + 1) if r <= k else 0      (one relevant item)

and the reported values are means over all judged clicks (each event weighs the same, so active users
weigh more than in leave-one-out, which averages per user). A judged click whose recommendation never
arrived counts as a miss (HR = NDCG = 0) and is reported in ``missing``; duplicates of a recommendation
(at-least-once re-delivery, same ``event_id``) are counted once (the first one received).

Ties: none to resolve here. The judged object is the list the score worker actually served, whose order is
definite (the serving top-k already broke any tie among scores, and that order is what the user saw), so r is
the target's position in it. Rankings computed from scores (offline evaluation, validation during training, the
in-process replay) count tied items by the rule of :mod:`adrec_stream.evaluation.metrics` (the expected metric
under a uniformly random tie-break); a constant-score model is no better there than a random order.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PrequentialResult:
    """Prequential HR@k / NDCG@k over judged clicks.

    Attributes:
        k: list length judged.
        judged: number of (click, next click) pairs judged.
        hits: judged pairs whose next item was in the top-k.
        missing: judged pairs without a recommendation.
        hr, ndcg: means over ``judged`` (0.0 when nothing was judged).
        ranks: (judged,) float array of 1-based ranks of the next item in the list (inf = not in it).
    """

    k: int
    judged: int
    hits: int
    missing: int
    hr: float
    ndcg: float
    ranks: np.ndarray

    def as_dict(self) -> dict[str, float | int]:
        """``{"HR@k", "NDCG@k", "judged", "hits", "missing"}``."""
        return {f"HR@{self.k}": self.hr, f"NDCG@{self.k}": self.ndcg, "judged": self.judged,
                "hits": self.hits, "missing": self.missing}


def next_click_pairs(clicks: Iterable[tuple[str, str, str]]) -> list[tuple[str, str]]:
    """``(event_id of c_i, item of c_{i+1})`` for every user's consecutive clicks.

    Args:
        clicks: ``(user_id, item_id, event_id)`` in stream order.
    """
    last_event: dict[str, str] = {}
    pairs: list[tuple[str, str]] = []
    for user, item, event_id in clicks:
        prev = last_event.get(user)
        if prev is not None:
            pairs.append((prev, item))
        last_event[user] = event_id
    return pairs


def prequential_metrics(clicks: Iterable[tuple[str, str, str]], recommendations: Mapping[str, Sequence[str]],
                        k: int = 10, *, not_judged: Collection[str] = frozenset()) -> PrequentialResult:
    """Judge the recommendation emitted after each click against the same user's next click.

    Args:
        clicks: ``(user_id, item_id, event_id)`` of the valid clicks, in stream order.
        recommendations: ``event_id -> ranked raw item ids`` (best first); lists longer than k are cut to k.
        k: cut-off.
        not_judged: event ids c_i whose pair is left out altogether (neither judged nor ``missing``), e.g. clicks
            whose recommendation was superseded: scored together with the user's next click, so no list was
            served between the two.

    Returns:
        :class:`PrequentialResult`.

    Raises:
        ValueError: ``k < 1``.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    pairs = [p for p in next_click_pairs(clicks) if p[0] not in not_judged]
    ranks = np.full(len(pairs), math.inf)
    missing = 0
    for j, (event_id, target) in enumerate(pairs):
        rec = recommendations.get(event_id)
        if rec is None:
            missing += 1
            continue
        top = list(rec[:k])
        if target in top:
            ranks[j] = top.index(target) + 1
    hit = ranks <= k
    gains = np.where(hit, 1.0 / np.log2(np.where(hit, ranks, 1.0) + 1.0), 0.0)
    n = len(pairs)
    return PrequentialResult(k=k, judged=n, hits=int(hit.sum()), missing=missing,
                             hr=float(hit.mean()) if n else 0.0, ndcg=float(gains.mean()) if n else 0.0,
                             ranks=ranks)


def latency_percentiles(latencies_s: Sequence[float], qs: Sequence[float] = (50, 99)) -> dict[str, float]:
    """``{"p50_ms": ..., "p99_ms": ...}`` of latencies given in seconds (NaN when empty)."""
    arr = np.asarray([x for x in latencies_s if x is not None and math.isfinite(x)], dtype=float)
    return {f"p{int(q) if float(q).is_integer() else q}_ms":
            (float(np.percentile(arr, q) * 1000.0) if arr.size else float("nan")) for q in qs}


def popularity_recommendations(train_items: Iterable[str], clicks: Sequence[tuple[str, str, str]], k: int = 10, *,
                               history: Mapping[str, Sequence[str]] | None = None,
                               exclude_seen: bool = True) -> dict[str, list[str]]:
    """Baseline for the same protocol: after each click, the k most frequent training items (ties: first seen).

    Args:
        train_items: item ids of the training interactions (their counts give the ranking).
        clicks: ``(user_id, item_id, event_id)`` in stream order.
        k: list length.
        history: per user, items known before the stream (e.g. the training part), also excluded.
        exclude_seen: leave out items the user already has (history + earlier stream clicks), as the score
            worker does with ``scoring.seen_items: exclude``.

    Returns:
        ``event_id -> list`` for :func:`prequential_metrics`.
    """
    counts: dict[str, int] = {}
    for it in train_items:
        counts[it] = counts.get(it, 0) + 1
    order = sorted(counts, key=lambda i: -counts[i])  # stable: ties keep first-seen order
    seen: dict[str, set[str]] = {}
    out: dict[str, list[str]] = {}
    for user, item, event_id in clicks:
        s = seen.get(user)
        if s is None:
            s = seen[user] = set(history.get(user, ())) if history else set()
        s.add(item)
        if not exclude_seen:
            out[event_id] = order[:k]
            continue
        top: list[str] = []
        for cand in order:
            if cand not in s:
                top.append(cand)
                if len(top) == k:
                    break
        out[event_id] = top
    return out


def prequential_by_group(clicks: Iterable[tuple[str, str, str]], recommendations: Mapping[str, Sequence[str]],
                         group_of: Mapping[str, Hashable], k: int = 10) -> dict[Hashable, PrequentialResult]:
    """:func:`prequential_metrics` split by a label of each recommendation (e.g. the model version that made it).

    The pairs are those of :func:`prequential_metrics` (recommendation after c_i vs the item of c_{i+1}); a pair
    belongs to the group ``group_of[event_id of c_i]``. Each group's result is computed over its own pairs only:
    a pair of another group is neither judged nor ``missing`` there. Pairs without a recommendation (or without
    a label in ``group_of``) belong to no group; so the groups' ``judged`` add up to the overall ``judged``
    minus the overall ``missing``, and their ``hits`` to the overall ``hits``.

    Args:
        clicks: ``(user_id, item_id, event_id)`` of the valid clicks, in stream order.
        recommendations: ``event_id -> ranked raw item ids`` (best first); lists longer than k are cut to k.
        group_of: ``event_id -> label`` of the recommendation (any hashable, e.g. ``model_version``).
        k: cut-off.

    Returns:
        ``label -> PrequentialResult`` (``missing`` is 0 in each), for the labels that have at least one pair,
        in order of first appearance.

    Raises:
        ValueError: ``k < 1``.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    ranks_by: dict[Hashable, list[float]] = {}
    for event_id, target in next_click_pairs(clicks):
        rec = recommendations.get(event_id)
        if rec is None or event_id not in group_of:
            continue
        top = list(rec[:k])
        ranks_by.setdefault(group_of[event_id], []).append(top.index(target) + 1.0 if target in top else math.inf)
    out: dict[Hashable, PrequentialResult] = {}
    for label, rs in ranks_by.items():
        ranks = np.asarray(rs, dtype=float)
        hit = ranks <= k
        gains = np.where(hit, 1.0 / np.log2(np.where(hit, ranks, 1.0) + 1.0), 0.0)
        out[label] = PrequentialResult(k=k, judged=len(rs), hits=int(hit.sum()), missing=0, hr=float(hit.mean()),
                                       ndcg=float(gains.mean()), ranks=ranks)
    return out


#: Items at the end of a window that :class:`OnlinePrequential` compares to recognise consecutive updates.
CONTINUITY_ITEMS = 8


class OnlinePrequential:
    """Prequential HR@k / NDCG@k computed inside the score worker, as it serves (the module's definition).

    For each sequence update it scores, the worker calls :meth:`observe` with the user's window (ending with the
    click just applied) and the list it served for it. When the user's previous update is the click right before
    this one and its list was served (not superseded), the click's item is judged against that list. "Right
    before" is recognised from the windows: the previous window is this one without its last item (or that window
    shifted by one once the window is full); only the length and the last :data:`CONTINUITY_ITEMS` items are
    compared, which costs a few microseconds instead of hashing whole 200-item windows (measured with
    ``scripts/bench_ops_overhead.py``) and differs only when a worker missed clicks of a user (after a rebalance)
    whose last items repeat exactly. Re-delivered updates
    are ignored: the same ``event_id`` as the user's last update, or (given ``seq``, the click's offset in its
    clicks partition) an update at or below the user's last one, so a re-delivered run of updates (at-least-once,
    after a crash) is not judged twice and the first list served after a click is the one judged, as
    :func:`prequential_metrics` does with duplicates. A user forgotten by the LRU bound, or seen first by this
    worker after a rebalance, is judged from its next pair on. After a broker reset (the clicks topic's offsets
    start again at 0) a user remembered from before is not judged until its offsets pass the old ones or the LRU
    bound drops it. The figures cover the last ``last_n`` judged clicks, plus running totals (``judged``,
    ``hits``). Thread-safe.

    Args:
        k: list cut-off (10 in the metrics).
        last_n: size of the recent window of judged clicks.
        max_users: users remembered (least recently updated forgotten first); about 0.4 KB each.
    """

    def __init__(self, k: int = 10, last_n: int = 1000, max_users: int = 100_000) -> None:
        from collections import OrderedDict, deque  # noqa: PLC0415
        from threading import Lock  # noqa: PLC0415

        self.k, self.max_users = k, max_users
        # user -> (event_id, served top-k or None, last CONTINUITY_ITEMS items of the window, len(window), seq)
        self._last: OrderedDict[str, tuple[str, tuple[str, ...] | None, tuple[str, ...], int, int | None]] = \
            OrderedDict()
        self._recent: deque[tuple[int, float]] = deque(maxlen=last_n)
        self._lock = Lock()
        self.judged = 0
        self.hits = 0

    def observe(self, user: str, event_id: str, window: Sequence[str], served: Sequence[str] | None,
                seq: int | None = None) -> float | None:
        """One scored update: ``window`` (raw ids, oldest first, ending with this click's item) and the list
        ``served`` after it (None when it was superseded: no list of its own was served).

        Args:
            seq: the click's position in the user's stream, if known (``source.offset`` of the sequence update:
                a user's clicks share a partition, so their offsets increase); used to recognise re-deliveries.

        Returns:
            The NDCG@k of this click against the user's previous list when judged, else None.
        """
        if not window:
            return None
        n = len(window)
        with self._lock:
            prev = self._last.get(user)
            gain = None
            if prev is not None:
                p_event, top, p_tail, n_prev, p_seq = prev
                if p_event == event_id or (seq is not None and p_seq is not None and seq <= p_seq):
                    return None  # a re-delivery (of this update or an older one): the user's state stays as it is
                # previous window == window[:-1] (grown by one) or window[:-1] == previous[1:] (full, shifted)
                m = min(CONTINUITY_ITEMS, n - 1)
                continues = (n == n_prev + 1 or n == n_prev) and tuple(window[n - 1 - m:n - 1]) == p_tail[len(p_tail) - m:]
                if continues and top is not None:
                    target = window[-1]
                    rank = top.index(target) + 1 if target in top else None
                    gain = 1.0 / math.log2(rank + 1) if rank is not None else 0.0
                    self._recent.append((int(rank is not None), gain))
                    self.judged += 1
                    self.hits += rank is not None
            self._last[user] = (event_id, tuple(served[:self.k]) if served is not None else None,
                                tuple(window[-CONTINUITY_ITEMS:]), n, seq)
            self._last.move_to_end(user)
            while len(self._last) > self.max_users:
                self._last.popitem(last=False)
            return gain

    def window(self) -> tuple[float, float, int] | None:
        """(HR@k, NDCG@k, judged) over the last ``last_n`` judged clicks; None before the first."""
        with self._lock:
            n = len(self._recent)
            if n == 0:
                return None
            return sum(h for h, _ in self._recent) / n, sum(g for _, g in self._recent) / n, n
