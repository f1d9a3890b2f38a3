"""The policies of ``adrec-stream evaluate-replay``.

Model policies (ADRec, paper: Chen, Xu, Jiang, KDD 2025, arXiv 2505.19544; SASRec+ as its baseline):

- ``adrec-static`` / ``sasrec-static``: trained once on the warm-up part with the project's one stage loop
  (:func:`~adrec_stream.training.trainer.train_model`; ADRec: pretrain, align, finetune; SASRec+: finetune),
  then frozen. Checkpoints are cached (:mod:`adrec_stream.training.cache`).
- ``adrec-incremental`` / ``sasrec-incremental``: start from the static model and follow the fine-tune
  worker (:mod:`adrec_stream.incremental.worker`) by calling its own functions: an
  :class:`~adrec_stream.incremental.updates.UpdateTracker` fed with each revealed click's sequence update; a
  round is due after ``finetune.min_new_events`` revealed clicks, or when ``finetune.interval_s`` seconds of
  EVENT time passed since the last round and something is new (the worker's :meth:`due`, on event time since
  there is no wall clock in a replay); a round is skipped with fewer than ``min_round_events`` fresh clicks,
  else :func:`~adrec_stream.incremental.round.build_window` +
  :func:`~adrec_stream.incremental.round.run_round` from the LATEST accepted version (the registry's
  ``LATEST``, as the worker does) with its cut; an accepted candidate becomes LATEST at once and replaces the
  SERVING model after ``swap_delay`` further clicks (the score worker's poll and load; the real delay depends
  on the stream's rate and the round's wall time, which a replay does not have: 0 by default). Its popularity
  fallback counts are updated like the worker's published ``item_counts`` (+ the window's training clicks).

Every model policy keeps, per model version, the last event index it was trained on (``trained_until``; the
static model: the last warm-up event; a round's candidate: the last click revealed before the round) and
raises ``AssertionError`` when asked to rank a click at or before it. Clicks are ranked in chunks: between
two swaps the serving model is fixed and each click's input is its own history, so a chunk is one batched
``model.score`` call (internal ids through the version's vocabulary, left-padded, newest ``max_len`` items);
ADRec's sampling noise comes from one seeded generator per policy (drawn per batch, so the figures are
reproducible for a given seed and ``batch_size``). Users without a usable history (no earlier click, or
none of its items known to the model) get the version's popularity ranking (``fallback``).

Counter policies: ``popularity`` (item counts of the warm-up part, static; knows the warm-up items),
``recent-popularity`` (counts over the last ``window`` revealed clicks, warm-up included, updated after every
click; knows every item revealed so far), ``markov`` (first-order transitions last item -> next item counted
from every revealed pair of consecutive clicks of the same user, warm-up included, with a back-off to the
online popularity: score = transitions(last, i) · BIG + popularity(i), BIG = number of events + 1 so the
order is lexicographic; knows every item revealed so far).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from adrec_stream.data.events import Interaction
from adrec_stream.errors import ConfigError
from adrec_stream.evaluation.replay.engine import Click, Policy
from adrec_stream.logging import get_logger

#: every policy, in report order
ALL_POLICIES: tuple[str, ...] = ("adrec-incremental", "adrec-static", "sasrec-incremental", "sasrec-static",
                                 "popularity", "recent-popularity", "markov")
#: model kind of each model policy
MODEL_KIND: dict[str, str] = {"adrec-incremental": "adrec", "adrec-static": "adrec",
                              "sasrec-incremental": "sasrec", "sasrec-static": "sasrec"}

log = get_logger("adrec_stream.replay")


def parse_policies(spec: str | Sequence[str] | None) -> list[str]:
    """Policy names from ``--policy P1,P2`` (None or "all" = :data:`ALL_POLICIES`), duplicates removed.

    Raises:
        ConfigError: an unknown name (the valid ones are listed) or an empty list.
    """
    if spec is None:
        return list(ALL_POLICIES)
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [s.strip() for s in items if s.strip()]
    if names == ["all"]:
        return list(ALL_POLICIES)
    bad = [s for s in names if s not in ALL_POLICIES]
    if bad or not names:
        raise ConfigError(f"unknown policy {', '.join(map(repr, bad)) or '(none given)'}; "
                          f"use a comma-separated subset of: {', '.join(ALL_POLICIES)} (or all)")
    return list(dict.fromkeys(names))


# ------------------------------------------------------------------------------------------- counters
class _ItemIndex:
    """Raw item id -> dense column 0..M-1 (append-only) with int64 count arrays that grow with it."""

    def __init__(self) -> None:
        self.index: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.index)

    def add(self, raw: str) -> int:
        j = self.index.get(raw)
        if j is None:
            j = self.index[raw] = len(self.index)
        return j

    def excluded(self, click: Click) -> np.ndarray:
        """Columns of the click's ``seen`` items known here (empty without exclusion; never the target: the engine
        does not judge a click whose target the user clicked before)."""
        if not click.seen:
            return np.zeros(0, dtype=np.int64)
        cols = [self.index[i] for i in click.seen if i in self.index]
        return np.asarray(cols, dtype=np.int64)


def _grow(a: np.ndarray, n: int) -> np.ndarray:
    if n <= a.shape[0]:
        return a
    out = np.zeros(max(n, 2 * a.shape[0], 16), dtype=a.dtype)
    out[: a.shape[0]] = a
    return out


def _subtract_excluded(scores: np.ndarray, st: Any, excl: np.ndarray, higher: int, ties: int) -> tuple[int, int]:
    if excl.size:
        ex = scores[excl]
        higher -= int(np.count_nonzero(ex > st))
        ties -= int(np.count_nonzero(ex == st))
    return higher, ties


class PopularityPolicy(Policy):
    """``popularity``: items ranked by their warm-up click counts (static; knows the warm-up items)."""

    name = "popularity"

    def start(self, warmup: Sequence[Interaction], n_replay: int) -> None:
        super().start(warmup, n_replay)
        self.items = _ItemIndex()
        counts: dict[int, int] = {}
        for x in warmup:
            j = self.items.add(x.item_id)
            counts[j] = counts.get(j, 0) + 1
        self.counts = np.array([counts[j] for j in range(len(self.items))], dtype=np.int64)
        self.sorted = np.sort(self.counts)

    def judge(self, click: Click) -> None:
        t = self.items.index.get(click.item)
        if t is None:
            self.result.record_unknown(click.pos)
            return
        st = self.counts[t]
        right = int(np.searchsorted(self.sorted, st, side="right"))
        higher, ties = len(self.sorted) - right, right - int(np.searchsorted(self.sorted, st, side="left")) - 1
        higher, ties = _subtract_excluded(self.counts, st, self.items.excluded(click), higher, ties)
        self.result.record(click.pos, higher, ties)

    def facts(self) -> dict[str, Any]:
        return {"items": len(self.items)}


class RecentPopularityPolicy(Policy):
    """``recent-popularity``: counts over the sliding window of the last ``window`` revealed clicks (warm-up
    included), updated after every click; ranks every item revealed so far (items outside the window tie at 0).

    Args:
        window: clicks in the sliding window (>= 1).
    """

    name = "recent-popularity"

    def __init__(self, window: int = 1000) -> None:
        if window < 1:
            raise ConfigError(f"--recent-window must be >= 1, got {window}")
        self.window = window

    def start(self, warmup: Sequence[Interaction], n_replay: int) -> None:
        super().start(warmup, n_replay)
        self.items = _ItemIndex()
        self.counts = np.zeros(16, dtype=np.int64)
        self.recent: deque[int] = deque()
        for x in warmup:
            self._add(x.item_id)

    def _add(self, raw: str) -> None:
        j = self.items.add(raw)
        self.counts = _grow(self.counts, len(self.items))
        self.counts[j] += 1
        self.recent.append(j)
        if len(self.recent) > self.window:
            self.counts[self.recent.popleft()] -= 1

    def judge(self, click: Click) -> None:
        t = self.items.index.get(click.item)
        if t is None:
            self.result.record_unknown(click.pos)
            return
        c = self.counts[: len(self.items)]
        st = c[t]
        higher, ties = int(np.count_nonzero(c > st)), int(np.count_nonzero(c == st)) - 1
        self.result.record(click.pos, *_subtract_excluded(c, st, self.items.excluded(click), higher, ties))

    def reveal(self, click: Click) -> None:
        self._add(click.item)

    def facts(self) -> dict[str, Any]:
        return {"window": self.window, "items": len(self.items)}


class MarkovPolicy(Policy):
    """``markov``: last item -> next item transition counts with a popularity back-off (module docstring).

    Transitions come from consecutive clicks of the same user (warm-up included), popularity from all
    revealed clicks; both are updated after every click. A click whose user has no last item, or whose last
    item has no outgoing transition yet, is ranked by popularity alone (``fallback``).
    """

    name = "markov"

    def start(self, warmup: Sequence[Interaction], n_replay: int) -> None:
        super().start(warmup, n_replay)
        self.items = _ItemIndex()
        self.pop = np.zeros(16, dtype=np.int64)
        self.trans: dict[int, dict[int, int]] = {}
        self.last: dict[str, int] = {}
        self.big = len(warmup) + n_replay + 1  # > any popularity count: lexicographic (transitions, popularity)
        for x in warmup:
            self._add(x.user_id, x.item_id)

    def _add(self, user: str, raw: str) -> None:
        j = self.items.add(raw)
        self.pop = _grow(self.pop, len(self.items))
        self.pop[j] += 1
        prev = self.last.get(user)
        if prev is not None:
            row = self.trans.setdefault(prev, {})
            row[j] = row.get(j, 0) + 1
        self.last[user] = j

    def judge(self, click: Click) -> None:
        prev = self.last.get(click.user)
        row = self.trans.get(prev) if prev is not None else None
        t = self.items.index.get(click.item)
        if t is None:
            self.result.record_unknown(click.pos, fallback=not row)
            return
        s = self.pop[: len(self.items)]
        if row:
            s = s.copy()
            cols = np.fromiter(row.keys(), dtype=np.int64, count=len(row))
            s[cols] += self.big * np.fromiter(row.values(), dtype=np.int64, count=len(row))
        st = s[t]
        higher, ties = int(np.count_nonzero(s > st)), int(np.count_nonzero(s == st)) - 1
        higher, ties = _subtract_excluded(s, st, self.items.excluded(click), higher, ties)
        self.result.record(click.pos, higher, ties, fallback=not row)

    def reveal(self, click: Click) -> None:
        self._add(click.user, click.item)

    def facts(self) -> dict[str, Any]:
        return {"items": len(self.items), "transition_sources": len(self.trans),
                "transitions": int(sum(len(r) for r in self.trans.values()))}


# --------------------------------------------------------------------------------------------- models
@dataclass
class ModelVersion:
    """One model version of a model policy.

    Attributes:
        model: the :class:`~adrec_stream.model.base.SequenceModel` (eval mode, on the scoring device).
        vocab: its :class:`~adrec_stream.state.vocab.Vocabulary` (raw id <-> internal index).
        counts: (N+1,) int64 popularity-fallback counts per internal index (entry 0 = padding = 0).
        trained_until: index (in the time-ordered log) of the last event this version was trained or selected
            on; it may only rank events after it.
        version: 1 = the static model, then 2, 3, ... per accepted round (the registry's numbering: the
            pipeline publishes the static model as v1).
        cut: sequence-updates partition -> last offset covered by its training (the worker's ``finetune.cut``).
    """

    model: Any
    vocab: Any
    counts: np.ndarray
    trained_until: int
    version: int = 1
    cut: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.sorted_counts = np.sort(np.asarray(self.counts[1:], dtype=np.int64))


@dataclass
class TrainSpec:
    """How a static model is trained (or found in the cache).

    Attributes:
        exp: the :class:`~adrec_stream.training.config.ExperimentConfig` (``configs/adrec-cpu.yaml`` /
            ``configs/sasrec-cpu.yaml`` with ``--experiment-set`` overrides).
        epochs: epochs per stage used by the kind (ADRec: pretrain, align, finetune; SASRec+: finetune).
        cache_dir: checkpoint cache folder.
        data_name: the data file's name (part of the cache key).
        threads: torch CPU threads while training.
        device: training / scoring device.
    """

    exp: Any
    epochs: dict[str, int]
    cache_dir: Path
    data_name: str
    threads: int
    device: Any


def train_static(warmup: Sequence[Interaction], spec: TrainSpec) -> tuple[ModelVersion, dict[str, Any]]:
    """Train the static model on the warm-up part, or load it from the cache.

    Vocabulary: :func:`~adrec_stream.data.events.build_vocabulary` of the warm-up part; training sequences:
    :func:`~adrec_stream.data.events.user_sequences`; no validation split (the last weights are kept, as in
    the demo). The checkpoint (with ``item_counts`` for the popularity fallback) is cached under
    ``cache_dir/<kind>-<key>/model.pt`` (:func:`~adrec_stream.training.cache.training_cache_key`: the warm-up
    events, the experiment config, the epochs, the file name).

    Returns:
        (version 1 with ``trained_until`` = last warm-up index, facts: kind, key, checkpoint, cached, wall_s,
        train_users, items, train_events, epochs).

    Raises:
        ConfigError: no warm-up user has two clicks. TrainingDivergedError: NaN loss. CheckpointError: an
            unreadable cached checkpoint (delete it).
    """
    import torch  # noqa: PLC0415

    from adrec_stream.data.events import build_vocabulary, item_counts, user_sequences  # noqa: PLC0415
    from adrec_stream.model.checkpoint import load_checkpoint, save_checkpoint  # noqa: PLC0415
    from adrec_stream.state.vocab import Vocabulary  # noqa: PLC0415
    from adrec_stream.training.cache import cached_checkpoint_path, training_cache_key  # noqa: PLC0415

    kind = spec.exp.model.kind
    vocab = build_vocabulary(warmup)
    seqs = user_sequences(warmup, vocab)
    key = training_cache_key(warmup, spec.exp, spec.epochs, spec.data_name)
    path = cached_checkpoint_path(spec.cache_dir, kind, key)
    facts: dict[str, Any] = {"kind": kind, "cache_key": key, "checkpoint": str(path), "train_events": len(warmup),
                             "train_users": len(seqs), "items": len(vocab), "epochs": dict(spec.epochs)}
    if path.is_file():
        facts.update(cached=True, wall_s=0.0)
    else:
        from adrec_stream.training.trainer import train_model  # noqa: PLC0415

        before = torch.get_num_threads()
        torch.set_num_threads(spec.threads)
        t0 = time.perf_counter()
        try:
            log.info("replay_training", kind=kind, users=len(seqs), items=len(vocab), epochs=spec.epochs,
                     cache=str(path))
            res = train_model(list(seqs.values()), len(vocab), spec.exp, epochs=spec.epochs, progress=False,
                              device=str(spec.device), log=get_logger("adrec_stream.replay.train"))
        finally:
            torch.set_num_threads(before)
        facts.update(cached=False, wall_s=round(time.perf_counter() - t0, 3), epochs_run=res.epochs_run)
        save_checkpoint(path, res.model.cpu(), vocab=vocab, config=spec.exp.model_dump(mode="json"),
                        meta={"item_counts": item_counts(warmup, vocab), "trained_on": spec.data_name,
                              "train_events": len(warmup), "epochs": dict(spec.epochs), "source": "evaluate-replay"})
    ckpt = load_checkpoint(path, device=spec.device)
    counts = np.asarray(ckpt.meta.get("item_counts") or item_counts(warmup, ckpt.vocab), dtype=np.int64)
    version = ModelVersion(ckpt.model.eval(), Vocabulary(ckpt.vocab), counts, trained_until=len(warmup) - 1)
    return version, facts


@dataclass
class _Pending:
    pos: int
    index: int
    hist: list[int]
    target: int
    excl: list[int]
    version: ModelVersion


class StaticModelPolicy(Policy):
    """A model frozen after the warm-up (``adrec-static`` / ``sasrec-static``; module docstring).

    Args:
        name: policy name.
        provider: warm-up events -> (version 1, training facts) (e.g. :func:`train_static`, shared and memoised
            by the caller so that the static and incremental policies of a kind train once).
        batch_size: clicks per ``model.score`` call.
        seed: seed of the scoring generator (ADRec's sampling noise).
    """

    def __init__(self, name: str, provider: Callable[[Sequence[Interaction]], tuple[ModelVersion, dict[str, Any]]],
                 *, batch_size: int = 256, seed: int = 2025) -> None:
        if batch_size < 1:
            raise ConfigError(f"--score-batch must be >= 1, got {batch_size}")
        self.name = name
        self.provider = provider
        self.batch_size = batch_size
        self.seed = seed

    def start(self, warmup: Sequence[Interaction], n_replay: int) -> None:
        import torch  # noqa: PLC0415

        super().start(warmup, n_replay)
        self.serving, self.training_facts = self.provider(warmup)
        self.device = next(self.serving.model.parameters()).device
        self.generator = torch.Generator(device=self.device).manual_seed(self.seed)
        self.buffer: list[_Pending] = []
        self.scored_clicks = 0
        self.score_s = 0.0

    def check_causal(self, index: int, version: ModelVersion) -> None:
        """Raise ``AssertionError`` unless event ``index`` lies after everything ``version`` was trained on."""
        if index <= version.trained_until:
            raise AssertionError(
                f"{self.name}: model version {version.version} was trained on events up to index "
                f"{version.trained_until} and was asked to score event {index} (not after its training window)")

    def trained_until(self) -> int | None:
        return self.serving.trained_until

    def _before_judge(self, click: Click) -> None:
        """Hook of the incremental policy: apply due model swaps before ``click`` is judged."""

    def judge(self, click: Click) -> None:
        self._before_judge(click)
        v = self.serving
        self.check_causal(click.index, v)
        hist = v.vocab.encode(click.history)[-v.model.max_len:]
        target = v.vocab.index(click.item)
        if target is None:
            self.result.record_unknown(click.pos, fallback=not hist)
            return
        excl = v.vocab.encode(sorted(click.seen)) if click.seen else []  # never holds the target (engine)
        if not hist:  # no usable history: the version's popularity fallback
            st = v.counts[target]
            right = int(np.searchsorted(v.sorted_counts, st, side="right"))
            higher = len(v.sorted_counts) - right
            ties = right - int(np.searchsorted(v.sorted_counts, st, side="left")) - 1
            ex = np.asarray(excl, dtype=np.int64)
            higher, ties = _subtract_excluded(v.counts, st, ex, higher, ties)
            self.result.record(click.pos, higher, ties, fallback=True)
            return
        self.buffer.append(_Pending(click.pos, click.index, hist, target, excl, v))
        if len(self.buffer) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        """Rank the buffered clicks with the version each was judged with (one ``score`` call per version)."""
        import torch  # noqa: PLC0415

        from adrec_stream.data.batching import left_pad  # noqa: PLC0415
        from adrec_stream.evaluation.metrics import target_rank_counts  # noqa: PLC0415

        if not self.buffer:
            return
        t0 = time.perf_counter()
        buf, self.buffer = self.buffer, []
        groups: dict[int, list[_Pending]] = {}
        for p in buf:
            self.check_causal(p.index, p.version)
            groups.setdefault(id(p.version), []).append(p)
        for group in groups.values():
            v = group[0].version
            hist = left_pad([p.hist for p in group], v.model.max_len).to(self.device)
            with torch.no_grad():
                scores = v.model.score(hist, generator=self.generator).float()
            b = len(group)
            tgt = torch.tensor([p.target for p in group], dtype=torch.long, device=scores.device)
            mask = torch.ones_like(scores, dtype=torch.bool)
            for row, p in enumerate(group):
                if p.excl:
                    mask[row, torch.tensor(p.excl, dtype=torch.long, device=scores.device)] = False
            higher_t, ties_t = target_rank_counts(scores, tgt, candidates=mask)
            higher, ties = higher_t.cpu().numpy(), ties_t.cpu().numpy()
            for row, p in enumerate(group):
                self.result.record(p.pos, int(higher[row]), int(ties[row]))
            self.scored_clicks += b
        self.score_s += time.perf_counter() - t0

    def finish(self) -> None:
        self.flush()

    def facts(self) -> dict[str, Any]:
        return {"training": self.training_facts, "scored_by_model": self.scored_clicks,
                "score_s": round(self.score_s, 3), "batch_size": self.batch_size, "seed": self.seed,
                "trained_until_index": self.serving.trained_until}


def due_rounds(replay_ts: Sequence[float], fcfg: Any, start_ts: float) -> list[int]:
    """Replay positions after which the incremental policies' rounds are due (:meth:`IncrementalModelPolicy.due`).

    The schedule depends only on the click times: every due round (run, rejected or skipped) resets the count
    and the clock, whatever its outcome. So this is the exact number of rounds a replay will start (some of
    them may be skipped for too few fresh clicks), known before it runs.

    Args:
        replay_ts: event times of the replayed clicks (epoch s), in order.
        fcfg: the fine-tune settings (``min_new_events``, ``interval_s``).
        start_ts: time of the last warm-up event (the schedule's start).
    """
    out, new, last = [], 0, start_ts
    for pos, ts in enumerate(replay_ts):
        new += 1
        if new >= fcfg.min_new_events or ts - last >= fcfg.interval_s:
            out.append(pos)
            new, last = 0, ts
    return out


class IncrementalModelPolicy(StaticModelPolicy):
    """The static model kept fresh by the fine-tune worker's logic (``adrec-incremental`` /
    ``sasrec-incremental``; module docstring).

    Args:
        name, provider, batch_size, seed: as :class:`StaticModelPolicy`.
        fcfg: the :class:`~adrec_stream.incremental.config.FinetuneConfig` (stream config ``finetune:``).
        swap_delay: clicks served by the old model after a round's candidate was accepted (>= 0).
        device: where rounds train and evaluate (a :class:`torch.device`).
    """

    def __init__(self, name: str, provider: Callable[[Sequence[Interaction]], tuple[ModelVersion, dict[str, Any]]],
                 *, fcfg: Any, swap_delay: int = 0, device: Any = None, batch_size: int = 256,
                 seed: int = 2025) -> None:
        super().__init__(name, provider, batch_size=batch_size, seed=seed)
        if swap_delay < 0:
            raise ConfigError(f"--swap-delay-events must be >= 0, got {swap_delay}")
        self.fcfg = fcfg
        self.swap_delay = swap_delay
        self.round_device = device

    def start(self, warmup: Sequence[Interaction], n_replay: int) -> None:
        from adrec_stream.incremental.updates import UpdateTracker  # noqa: PLC0415

        super().start(warmup, n_replay)
        self.round_device = self.round_device if self.round_device is not None else self.device
        self.latest = self.serving
        self.tracker = UpdateTracker(self.fcfg.max_window_events)
        self.rng = np.random.default_rng(self.fcfg.seed)
        self.consumed_at_round = 0
        self.last_round_ts = float(warmup[-1].ts) if warmup else float("-inf")
        self.pending: deque[tuple[int, ModelVersion]] = deque()
        self.rounds: list[dict[str, Any]] = []
        self.versions: list[dict[str, Any]] = [{
            "version": 1, "source": "static (warm-up)", "trained_until_index": self.serving.trained_until,
            "accepted_index": None, "accepted_ts": None, "swap_pos": 0, "swap_index": None, "swap_ts": None,
            "served_from_first_click": True}]

    # -------------------------------------------------------------------- serving side
    def _before_judge(self, click: Click) -> None:
        while self.pending and self.pending[0][0] <= click.pos:
            _, new = self.pending.popleft()
            self.flush()  # clicks judged before the swap are ranked by the old model
            self.serving = new
            rec = self.versions[new.version - 1]
            rec.update(swap_pos=click.pos, swap_index=click.index, swap_ts=click.ts)

    # -------------------------------------------------------------------- the fine-tune worker's logic
    def due(self, now_ts: float) -> bool:
        """The worker's schedule (:meth:`FinetuneWorker.due`) on event time: something new since the last
        round, and ``min_new_events`` new updates or ``interval_s`` event seconds since the last round."""
        new = self.tracker.consumed - self.consumed_at_round
        if new <= 0:
            return False
        return new >= self.fcfg.min_new_events or now_ts - self.last_round_ts >= self.fcfg.interval_s

    def reveal(self, click: Click) -> None:
        self.tracker.add([click.update])
        if self.due(click.ts):
            self.run_round(click)

    def run_round(self, click: Click) -> dict[str, Any]:
        """One round after ``click`` was revealed, as :meth:`FinetuneWorker.run_once` (window from the tracker
        above the LATEST version's cut, stage 3, guards); returns the round record."""
        import torch  # noqa: PLC0415

        from adrec_stream.incremental.round import (  # noqa: PLC0415
            GUARD_METRIC,
            NOT_TRAINED_REASONS,
            build_window,
            run_round,
        )

        self.last_round_ts = click.ts
        self.consumed_at_round = self.tracker.consumed
        parent = self.latest
        cut = parent.cut
        fresh = self.tracker.fresh(cut)
        rec: dict[str, Any] = {"round": len(self.rounds) + 1, "after_index": click.index, "after_pos": click.pos,
                               "event_ts": click.ts, "parent_version": parent.version, "fresh_events": len(fresh)}
        if len(fresh) < self.fcfg.min_round_events:
            rec.update(status="skipped", reason="too_few_fresh_events")
            self.rounds.append(rec)
            return rec
        window = build_window(fresh, self.tracker.pool(cut), cut, self.fcfg, self.rng, max_len=parent.model.max_len)
        before = torch.get_num_threads()
        if self.round_device.type == "cpu":
            torch.set_num_threads(self.fcfg.threads)
        try:
            out = run_round(parent.model, parent.vocab.raw_ids, window, self.fcfg, self.round_device,
                            log=get_logger("adrec_stream.replay.round", policy=self.name))
        finally:
            torch.set_num_threads(before)
        hs, hc = out.heldout_serving, out.heldout_candidate
        rec.update(window_events=len(window.train), holdout_events=len(window.holdout),
                   window_users=window.fresh_users, replay_users=window.replay_users, new_items=len(out.new_items),
                   steps=out.train.steps, stop_reason=out.train.stop_reason, loss_before=_num(out.loss_before),
                   loss_after=_num(out.loss_after), round_s=round(out.round_s, 3),
                   **{f"heldout_{GUARD_METRIC}_serving": _num(hs.get(GUARD_METRIC)),
                      f"heldout_{GUARD_METRIC}_candidate": _num(hc.get(GUARD_METRIC)),
                      "heldout_HR@10_serving": _num(hs.get("HR@10")),
                      "heldout_HR@10_candidate": _num(hc.get("HR@10")), "heldout_judged": hs.get("judged")})
        if out.reason in NOT_TRAINED_REASONS:  # recorded as the worker records them
            rec.update(status="skipped", reason=out.reason)
        elif not out.accepted:
            rec.update(status="rejected", reason=out.reason, error=out.error)
        else:
            counts = out.vocab.counts([[u.clicked for u in window.train]], base=parent.counts.tolist())
            model = out.candidate.to(self.device).eval()
            new = ModelVersion(model, out.vocab, np.asarray(counts, dtype=np.int64), trained_until=click.index,
                               version=len(self.versions) + 1, cut=dict(window.cut))
            self.latest = new
            self.pending.append((click.pos + 1 + self.swap_delay, new))
            self.versions.append({"version": new.version, "source": f"round {rec['round']}",
                                  "parent_version": parent.version, "trained_until_index": click.index,
                                  "accepted_index": click.index, "accepted_ts": click.ts,
                                  "swap_pos": click.pos + 1 + self.swap_delay, "swap_index": None, "swap_ts": None,
                                  "vocab_size": len(out.vocab), "new_items": len(out.new_items)})
            rec.update(status="published", reason="passed", version=new.version)
        log.info("replay_round", policy=self.name, **{k: v for k, v in rec.items() if k != "error"})
        self.rounds.append(rec)
        return rec

    def facts(self) -> dict[str, Any]:
        out = super().facts()
        by_status: dict[str, int] = {}
        for r in self.rounds:
            by_status[r["status"]] = by_status.get(r["status"], 0) + 1
        out.update(versions=self.versions, rounds=self.rounds, rounds_by_status=by_status,
                   swap_delay_events=self.swap_delay, serving_version_at_end=self.serving.version,
                   trained_until_index=self.serving.trained_until)
        return out


def _num(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return round(x, 6) if np.isfinite(x) else None


def make_policies(names: Sequence[str], *, specs: dict[str, TrainSpec], fcfg: Any = None, recent_window: int = 1000,
                  swap_delay: int = 0, device: Any = None, batch_size: int = 256, seed: int = 2025) -> list[Policy]:
    """The policies ``names`` (see :data:`ALL_POLICIES`), in that order.

    The static and incremental policies of a model kind share ONE trained static model (trained or loaded
    from the cache once, on the first :meth:`Policy.start`).

    Args:
        names: policy names (validated with :func:`parse_policies`).
        specs: model kind ("adrec", "sasrec") -> :class:`TrainSpec`, for the kinds ``names`` use.
        fcfg: :class:`~adrec_stream.incremental.config.FinetuneConfig` (needed by the incremental policies).
        recent_window: ``recent-popularity``'s window.
        swap_delay: clicks between a round's acceptance and the swap (incremental policies).
        device: round device (None = the scoring device).
        batch_size: clicks per scoring call.
        seed: scoring generator seed.

    Raises:
        ConfigError: unknown policy, a model policy without its spec, an incremental policy without ``fcfg``,
            bad sizes.
    """
    names = parse_policies(list(names))
    memo: dict[str, tuple[ModelVersion, dict[str, Any]]] = {}

    def provider_for(kind: str) -> Callable[[Sequence[Interaction]], tuple[ModelVersion, dict[str, Any]]]:
        if kind not in specs:
            raise ConfigError(f"no training settings for the {kind} policies")

        def provide(warmup: Sequence[Interaction]) -> tuple[ModelVersion, dict[str, Any]]:
            if kind not in memo:
                memo[kind] = train_static(warmup, specs[kind])
            return memo[kind]

        return provide

    out: list[Policy] = []
    for name in names:
        if name == "popularity":
            out.append(PopularityPolicy())
        elif name == "recent-popularity":
            out.append(RecentPopularityPolicy(recent_window))
        elif name == "markov":
            out.append(MarkovPolicy())
        elif name.endswith("-static"):
            out.append(StaticModelPolicy(name, provider_for(MODEL_KIND[name]), batch_size=batch_size, seed=seed))
        else:
            if fcfg is None:
                raise ConfigError(f"{name} needs the fine-tune settings (finetune: section of the stream config)")
            out.append(IncrementalModelPolicy(name, provider_for(MODEL_KIND[name]), fcfg=fcfg, swap_delay=swap_delay,
                                              device=device, batch_size=batch_size, seed=seed))
    return out
