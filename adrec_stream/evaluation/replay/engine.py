"""The test-then-train replay loop and its tie-aware rank metrics (in-process mode of ``evaluate-replay``).

Protocol (prequential / test-then-train evaluation as in Gama et al., *On evaluating stream learning
algorithms*, Machine Learning 2013, applied to next-item recommendation with full ranking as in the ADRec paper,
Sec. 4.1):

1. The log is ordered by (timestamp, file order) (:func:`~adrec_stream.data.events.read_interactions` /
   :func:`~adrec_stream.data.events.read_delimited`). The first ``warmup_fraction`` of the events (by count,
   :func:`~adrec_stream.data.events.chronological_split`) is the warm-up: it trains the initial models and fills
   the counters. Warm-up events have indices ``0 .. W-1`` in the ordered log, replayed clicks ``W .. n-1``.
2. After the warm-up, for every click in order: **test**, then **train**. Every policy is first asked to rank
   the items it knows for the click's user as it would have BEFORE seeing the click (:meth:`Policy.judge`);
   the rank of the clicked item is recorded. Only then is the click revealed to every policy
   (:meth:`Policy.reveal`: counters move, the fine-tune worker logic of the incremental policies sees the
   sequence update and may run a round). A policy therefore never ranks with information from the click it
   is judged on or from any later click; model policies also check it (a model trained up to event index
   ``j`` refuses to score an event ``<= j``, ``AssertionError``).
3. Each click's input history is the user's window before it, exactly as the streaming pipeline keeps it:
   :func:`~adrec_stream.incremental.updates.updates_from_clicks` with the stream config's ``window`` and
   sequence-updates partitions, seeded with the warm-up windows; ``update.items[:-1]`` is the history and
   ``update.items[-1]`` the clicked item. The same update is what the incremental policies' fine-tune logic
   consumes.
4. Every replayed click is judged by every policy; none is dropped. A click whose user has no earlier click
   (warm-up or replay) is *cold* (model policies then serve their popularity fallback; still judged); a click
   whose item the policy does not know is a miss (rank = infinity) and counted as *unknown target*.
5. ``exclude_seen`` (one flag for all policies): the items of the user's whole history before the click are
   removed from the ranking. A click on an item the user clicked before is then a miss for every policy (the
   list it would have served cannot contain that item; ``higher`` = :data:`EXCLUDED`, counted as *target
   excluded*). Keeping such a target ranked while removing the rest of the history would score the policies
   on lists no deployment serves, and inflates them on logs with repeat consumption: on the Gowalla check-ins
   (32 % of replayed clicks revisit a place) in-process NDCG@10 was 0.063 with the target kept and 0.004 on
   the other clicks; ``--through-kafka``, which judges the pipeline's real lists, showed it. On such logs,
   replay with the exclusion off.

Ranks and ties follow the project's one tie rule, defined in :mod:`adrec_stream.evaluation.metrics`
(``rank_counts``, ``expected_rank``, ``tie_metrics``; the offline evaluation and the validation during training
use the same rule): with ``h`` candidate items
scored strictly higher than the target and ``e`` OTHER candidates scored equal to it, a uniformly random
tie-break puts the target at each rank ``h+1 .. h+e+1`` with probability ``1/(e+1)``. The expected rank is
``1 + h + e/2``. HR@k and NDCG@k are the exact expectations of the metric under that random tie-break,
``HR@k = P(rank <= k)`` and ``NDCG@k = E[1/log2(rank+1) · 1[rank <= k]]``; without ties (the usual case for
model scores) they equal the plain metrics of the one rank. Not the metric OF the expected rank: a policy with
large tie groups would otherwise be biased: on the uniformly random stream over 1,000 items of
tests/test_replay_eval.py (expected HR@10 = 0.010 for every policy), recent popularity (window counts mostly
0, 1, 2: about 300 items tie with the target) scores HR@10 = 0.0078 with ``1[expected rank <= 10]`` and
0.0111 with the exact expectation.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from adrec_stream.data.events import Interaction, chronological_split
from adrec_stream.errors import ConfigError
from adrec_stream.evaluation.metrics import DEFAULT_KS
from adrec_stream.incremental.updates import SequenceUpdateRecord, updates_from_clicks

#: cut-offs of HR@k / NDCG@k
KS: tuple[int, ...] = DEFAULT_KS
#: metric names in report order
METRICS: tuple[str, ...] = tuple(f"{m}@{k}" for k in KS for m in ("HR", "NDCG"))
#: ``higher`` value of a click whose target the policy does not know (a miss, rank = infinity)
UNKNOWN = -1
#: ``higher`` value of a click not judged yet (an engine bug if it survives the replay)
NOT_JUDGED = -2
#: ``higher`` value of a click whose target the user clicked before, with ``exclude_seen`` on (a miss)
EXCLUDED = -3


@dataclass(frozen=True)
class Click:
    """One replayed click, as every policy sees it when asked to judge it.

    Attributes:
        pos: 0-based position in the replay.
        index: position in the whole time-ordered log (warm-up events are ``0 .. W-1``).
        user, item: raw ids; ``item`` is the clicked item (the target).
        ts: event time, epoch s.
        history: the user's window BEFORE the click (raw ids, oldest first, at most the stream ``window``).
        seen: items to remove from the ranking (the user's whole history before the click) when
            ``exclude_seen`` is on, else None. Never contains the target: such a click is not judged, it is a
            miss (:data:`EXCLUDED`) for every policy.
        cold: the user has no earlier click (warm-up or replay).
        update: the sequence update the ingest worker would publish for this click (for the fine-tune logic).
    """

    pos: int
    index: int
    user: str
    item: str
    ts: float
    history: tuple[str, ...]
    seen: frozenset[str] | None
    cold: bool
    update: SequenceUpdateRecord


class PolicyResult:
    """Per-click outcome of one policy: ``higher`` / ``ties`` (see ``metrics.rank_counts``; ``higher`` =
    :data:`UNKNOWN` for an unknown target) and ``fallback`` (the click was ranked by the policy's fallback:
    popularity for model policies without a usable history, the popularity back-off for ``markov`` without a
    transition from the user's last item)."""

    def __init__(self, n: int) -> None:
        self.higher = np.full(n, NOT_JUDGED, dtype=np.int64)
        self.ties = np.zeros(n, dtype=np.int64)
        self.fallback = np.zeros(n, dtype=bool)

    def record(self, pos: int, higher: int, ties: int, *, fallback: bool = False) -> None:
        """Store the rank counts of click ``pos``."""
        self.higher[pos], self.ties[pos], self.fallback[pos] = higher, ties, fallback

    def record_unknown(self, pos: int, *, fallback: bool = False) -> None:
        """Click ``pos``'s target is unknown to the policy: a miss."""
        self.record(pos, UNKNOWN, 0, fallback=fallback)


class Policy:
    """Base class of the replayed policies (see :mod:`adrec_stream.evaluation.replay.policies`).

    Life cycle: :meth:`start` once with the warm-up events, then for every click :meth:`judge` (all policies)
    followed by :meth:`reveal` (all policies), then :meth:`finish`. A policy may defer the ranking of judged
    clicks (batched model scoring) as long as it ranks them with the model it served at judge time; results
    must be complete after :meth:`finish`.
    """

    name: str = "policy"

    def start(self, warmup: Sequence[Interaction], n_replay: int) -> None:
        """Train / count on the warm-up events; allocate :attr:`result` for ``n_replay`` clicks."""
        self.result = PolicyResult(n_replay)

    def judge(self, click: Click) -> None:
        """Rank the items for ``click`` as served before it and record the target's rank counts."""
        raise NotImplementedError

    def reveal(self, click: Click) -> None:
        """Learn from ``click`` (called after every policy judged it)."""

    def finish(self) -> None:
        """Complete deferred rankings."""

    def trained_until(self) -> int | None:
        """Log index of the last event the model serving now was trained or selected on (None: no model)."""
        return None

    def facts(self) -> dict[str, Any]:
        """Extra facts for metrics.json (training, model versions, rounds)."""
        return {}


@dataclass
class ReplayResult:
    """Outcome of :func:`run_replay`.

    Attributes:
        warmup_events: W (events trained / counted on before the replay).
        users, items, ts, index: per replayed click (raw ids, epoch s, log index).
        cold: (n,) bool, the user had no earlier click.
        results: policy name -> :class:`PolicyResult`.
        facts: policy name -> :meth:`Policy.facts`.
        policy_s: policy name -> {"start_s": warm-up training/counting, "replay_s": judge + reveal + finish}.
        wall_s: seconds of the whole replay (start included).
    """

    warmup_events: int
    users: list[str]
    items: list[str]
    ts: np.ndarray
    index: np.ndarray
    cold: np.ndarray
    results: dict[str, PolicyResult]
    facts: dict[str, dict[str, Any]] = field(default_factory=dict)
    policy_s: dict[str, dict[str, float]] = field(default_factory=dict)
    wall_s: float = 0.0


def run_replay(events: Sequence[Interaction], policies: Sequence[Policy], *, warmup_fraction: float = 0.8,
               exclude_seen: bool = False, window: int = 200, n_partitions: int = 4,
               progress: bool = True) -> ReplayResult:
    """Test-then-train replay of ``events`` through ``policies`` (see the module docstring).

    Args:
        events: the log, ordered by (timestamp, file order) (as the readers return it; re-sorted stably if not).
        policies: the policies (distinct names).
        warmup_fraction: fraction of events (by count) before the replay, in (0, 1).
        exclude_seen: remove each user's earlier items from every policy's ranking; a click on one of them is
            then a miss for every policy (:data:`EXCLUDED`).
        window: items kept per user window (the stream config's ``window``).
        n_partitions: sequence-updates partitions (the stream config's), for the updates' partition/offsets.
        progress: tqdm progress bar on stderr.

    Returns:
        :class:`ReplayResult`.

    Raises:
        ConfigError: a fraction outside (0, 1), an empty warm-up or replay part, duplicate policy names.
        AssertionError: a policy was asked to rank a click with a model trained on it or on a later click.
    """
    from tqdm import tqdm  # noqa: PLC0415

    if not 0.0 < warmup_fraction < 1.0:
        raise ConfigError(f"--warmup-fraction must be in (0, 1), got {warmup_fraction}")
    names = [p.name for p in policies]
    if len(set(names)) != len(names):
        raise ConfigError(f"duplicate policies: {names}")
    t_all = time.perf_counter()
    warm, replay = chronological_split(events, warmup_fraction)
    if not warm or not replay:
        raise ConfigError(f"--warmup-fraction {warmup_fraction} of {len(events)} events leaves "
                          f"{len(warm)} warm-up and {len(replay)} replayed events; both must be non-empty")
    history: dict[str, list[str]] = {}
    for x in warm:
        history.setdefault(x.user_id, []).append(x.item_id)
    updates = updates_from_clicks(((x.user_id, x.item_id, x.ts) for x in replay), window=window,
                                  n_partitions=n_partitions, history=history)
    n = len(replay)
    timing: dict[str, dict[str, float]] = {}
    for p in policies:
        t0 = time.perf_counter()
        p.start(warm, n)
        timing[p.name] = {"start_s": time.perf_counter() - t0, "replay_s": 0.0}
    seen: dict[str, set[str]] | None = ({u: set(items) for u, items in history.items()} if exclude_seen else None)
    known_users = set(history)
    cold = np.zeros(n, dtype=bool)
    w = len(warm)
    clock = {p.name: 0.0 for p in policies}
    bar = tqdm(total=n, unit="click", desc="replay", disable=not progress, mininterval=1.0)
    try:
        for pos, (x, upd) in enumerate(zip(replay, updates)):
            is_cold = x.user_id not in known_users
            cold[pos] = is_cold
            click = Click(pos=pos, index=w + pos, user=x.user_id, item=x.item_id, ts=float(x.ts),
                          history=upd.items[:-1], seen=None if seen is None else frozenset(seen.get(x.user_id, ())),
                          cold=is_cold, update=upd)
            excluded = seen is not None and x.item_id in seen.get(x.user_id, ())
            for p in policies:  # test ...
                if excluded:  # the served list cannot hold an item the user clicked before
                    p.result.record(pos, EXCLUDED, 0)
                    continue
                t0 = time.perf_counter()
                p.judge(click)
                clock[p.name] += time.perf_counter() - t0
                bound = p.trained_until()  # the model that served this click
                if bound is not None and bound >= click.index:
                    raise AssertionError(f"{p.name} served event {click.index} with a model trained on events up "
                                         f"to {bound}")
            for p in policies:  # ... then train
                t0 = time.perf_counter()
                p.reveal(click)
                clock[p.name] += time.perf_counter() - t0
            known_users.add(x.user_id)
            if seen is not None:
                seen.setdefault(x.user_id, set()).add(x.item_id)
            bar.update(1)
    finally:
        bar.close()
    for p in policies:
        t0 = time.perf_counter()
        p.finish()
        clock[p.name] += time.perf_counter() - t0
        timing[p.name]["replay_s"] = clock[p.name]
        left = int(np.count_nonzero(p.result.higher == NOT_JUDGED))
        if left:
            raise AssertionError(f"policy {p.name} left {left} clicks unjudged")
    return ReplayResult(
        warmup_events=w, users=[x.user_id for x in replay], items=[x.item_id for x in replay],
        ts=np.array([x.ts for x in replay], dtype=np.float64), index=np.arange(w, w + n), cold=cold,
        results={p.name: p.result for p in policies}, facts={p.name: p.facts() for p in policies},
        policy_s=timing, wall_s=time.perf_counter() - t_all)
