"""One fine-tune round: fresh window -> grown vocabulary -> stage 3 -> held-out guard (no I/O here).

A round (docs/incremental.md):

1. **Window** (:func:`build_window`): the clicks above the serving version's training window, in arrival order;
   the newest ``holdout_fraction`` of them (bounded by ``holdout_min_events`` / ``holdout_max_events``) is the
   held-out slice, the rest the training part. Every user with a click in the training part contributes their
   window as of their LAST training click (and as of every L-th click before it, so that each fresh click is
   a training target); ``replay_ratio`` × that many users without fresh clicks are sampled
   (seeded) and contribute their stored window (against catastrophic forgetting). Users whose only fresh
   clicks are held out contribute nothing (their newest window would leak the held-out clicks).
2. **Vocabulary** (:func:`grow_vocabulary`): raw ids first seen in the training sequences are appended to the
   serving model's vocabulary (append-only: every old index keeps its meaning) and get rows in the item table,
   which is also the output layer (scores are dot products with the table). New rows start at the mean row of
   the items clicked right before them (``context_mean``).
3. **Stage 3** (:func:`train_window`): every parameter trains with the model's own loss (ADRec: 0.5·(CE + MSE),
   one backward per batch; paper Sec. 3.4, stage 3), Adam with a constant learning rate, for ``epochs``
   passes over the training windows bounded by ``max_steps`` and ``max_seconds``; bf16 autocast on CUDA. A NaN
   or infinite loss or parameter ends the round (:class:`~adrec_stream.errors.TrainingDivergedError`), and so
   does a window loss (:func:`probe_loss`, same batches and noise before and after) that grew by more than
   ``divergence_loss_ratio``: a finite but exploded model is as unusable as a NaN one.
4. **Guard** (:func:`heldout_metrics`): the serving model and the candidate rank all their items for every
   held-out click (history = the user's window before the click); a click whose target a model does not know
   counts as a miss for that model. The candidate passes if its NDCG@10 >= the serving model's - ``tolerance``.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from adrec_stream.data.batching import training_windows, window_batches
from adrec_stream.errors import TrainingDivergedError
from adrec_stream.evaluation.offline import evaluate_model
from adrec_stream.incremental.config import FinetuneConfig
from adrec_stream.incremental.updates import SequenceUpdateRecord
from adrec_stream.logging import get_logger
from adrec_stream.model import ModelConfig, SequenceModel
from adrec_stream.model.base import EMB_INIT_STD
from adrec_stream.state.vocab import Vocabulary
from adrec_stream.training.config import ExperimentConfig, TrainConfig
from adrec_stream.training.distributed import DistContext
from adrec_stream.training.trainer import autocast_context, train_model

#: batches of the training window on which the loss is measured before and after training (each probe is a
#: forward pass over them: 4 batches cost 15 % of a 10,000-click round, docs/benchmarks.md)
PROBE_BATCHES = 2
#: the guard metric
GUARD_METRIC = "NDCG@10"
#: :attr:`RoundOutcome.reason` values of a round that trained nothing to judge (the worker records it as "skipped")
NOT_TRAINED_REASONS: tuple[str, ...] = ("stopped", "no_training_windows", "no_steps")


@dataclass
class RoundWindow:
    """The data of one round.

    Attributes:
        train: fresh clicks trained on, arrival order.
        holdout: the newest fresh clicks, held out for the guard.
        sequences: training sequences (fresh users' first, then replayed users'), raw item ids oldest first.
        fresh_users: users with a click in ``train``.
        replay_users: users sampled from the pool.
        cut: partition -> last sequence-updates offset covered by ``train`` (merged over the serving cut).
    """

    train: list[SequenceUpdateRecord]
    holdout: list[SequenceUpdateRecord]
    sequences: list[list[str]]
    fresh_users: int
    replay_users: int
    cut: dict[int, int]

    def bounds(self) -> dict[str, Any]:
        """Training-window bounds for the manifest: first/last event time (epoch s) and offsets per partition."""
        ts = [u.event_ts for u in self.train if u.event_ts is not None]
        offsets: dict[str, list[int]] = {}
        for u in self.train:
            lo_hi = offsets.setdefault(str(u.partition), [u.offset, u.offset])
            lo_hi[0], lo_hi[1] = min(lo_hi[0], u.offset), max(lo_hi[1], u.offset)
        return {"events": len(self.train), "fresh_users": self.fresh_users, "replay_users": self.replay_users,
                "first_event_ts": min(ts) if ts else None, "last_event_ts": max(ts) if ts else None,
                "offsets": offsets, "holdout_events": len(self.holdout)}


def holdout_size(n_fresh: int, cfg: FinetuneConfig) -> int:
    """Held-out clicks of a round with ``n_fresh`` fresh clicks (at least one click is left to train on)."""
    n = max(cfg.holdout_min_events, int(round(cfg.holdout_fraction * n_fresh)))
    return max(0, min(n, cfg.holdout_max_events, n_fresh - 1))


def build_window(fresh: Sequence[SequenceUpdateRecord], pool: Sequence[SequenceUpdateRecord],
                 serving_cut: dict[int, int], cfg: FinetuneConfig, rng: np.random.Generator, *,
                 max_len: int) -> RoundWindow:
    """Split the fresh clicks and pick the training sequences (step 1 of the module docstring).

    Args:
        fresh: clicks above the serving version's window, oldest first
            (:meth:`~adrec_stream.incremental.updates.UpdateTracker.fresh`: partitions merged by event time,
            each in offset order); the newest ``holdout`` of them are held out.
        pool: latest update of every user without a fresh click (replay candidates).
        serving_cut: the serving version's partition -> last covered offset.
        cfg: the ``finetune`` settings.
        rng: sampling generator (seeded by the caller).
        max_len: the model's history length L: a fresh user with more than L training clicks contributes
            one window per L clicks (ending at its newest one), so that every fresh click is a target.

    Returns:
        :class:`RoundWindow`; ``train`` is empty when ``fresh`` has fewer than two clicks.
    """
    n_hold = holdout_size(len(fresh), cfg)
    train, holdout = list(fresh[: len(fresh) - n_hold]), list(fresh[len(fresh) - n_hold:])
    per_user: dict[str, list[SequenceUpdateRecord]] = {}
    cut = dict(serving_cut)
    for u in train:
        per_user.setdefault(u.user_id, []).append(u)  # a user's updates share a partition: offset = click order
        cut[u.partition] = max(cut.get(u.partition, -1), u.offset)
    fresh_seqs = []
    for updates in per_user.values():
        # the window as of the user's newest training click, and as of every max_len-th click before it, so
        # that each fresh click is a target once (a model window covers the last max_len + 1 items)
        fresh_seqs.extend(list(u.items) for u in reversed(updates[::-1][::max_len]))
    n_replay = min(len(pool), int(round(cfg.replay_ratio * len(per_user))))
    picks = rng.choice(len(pool), size=n_replay, replace=False) if n_replay else []
    replay_seqs = [list(pool[int(i)].items) for i in sorted(picks)]
    return RoundWindow(train, holdout, fresh_seqs + replay_seqs, len(per_user), n_replay, cut)


def grow_vocabulary(model: SequenceModel, vocab: Vocabulary, sequences: Sequence[Sequence[str]],
                    init: str = "context_mean", generator: torch.Generator | None = None) -> list[str]:
    """Append the raw ids of ``sequences`` unknown to ``vocab`` and give them rows in ``model``'s item table.

    The item table is also the output layer (scores are dot products with it), so one new row per item is
    all a new item needs. Initialisation of a new item's row:

    - ``context_mean``: the mean of the (old) rows of the items clicked right before it in ``sequences``,
      plus N(0, (0.1·s)²) noise with s the per-dimension std of the old rows, so that two new items with the
      same context still differ; the mean of all old rows when no known item precedes it. Why: ADRec's
      denoiser predicts the x0 of the next item in the region of the table where the items following that
      context live; a row started there can be ranked (and learn) from the first round, while a
      N(0, 0.02²) row sits near the origin, far from every trained row.
    - ``normal``: N(0, 0.02²), as a freshly initialised table.

    Args:
        model: a model with ``grow_items`` and ``item_emb`` (:class:`~adrec_stream.model.base.SequenceModel`).
        vocab: the model's vocabulary (extended in place).
        sequences: raw item ids, oldest first.
        init: "context_mean" or "normal".
        generator: RNG of the noise (CPU).

    Returns:
        The raw ids added, in order of first appearance (their indices are ``len(old vocab) + 1 ...``).

    Raises:
        ValueError: unknown ``init``.
    """
    if init not in ("context_mean", "normal"):
        raise ValueError(f"new_item_init must be context_mean or normal, got {init!r}")
    old_n = len(vocab)
    added = vocab.extend(item for seq in sequences for item in seq)
    if not added:
        return added
    model.grow_items(len(vocab))
    if init == "normal":
        return added
    table = model.item_emb.weight
    with torch.no_grad():
        old = table[1: old_n + 1].detach().float().cpu()
        sums = torch.zeros(len(added), table.shape[1])
        counts = torch.zeros(len(added))
        for seq in sequences:
            for prev, item in zip(seq, seq[1:]):
                j, p = vocab.index(item), vocab.index(prev)
                if j is not None and j > old_n and p is not None and p <= old_n:
                    sums[j - old_n - 1] += old[p - 1]
                    counts[j - old_n - 1] += 1
        fallback = old.mean(dim=0)
        rows = torch.where(counts.unsqueeze(1) > 0, sums / counts.clamp(min=1).unsqueeze(1), fallback)
        scale = 0.1 * float(old.std(dim=0).mean()) if old_n > 1 else EMB_INIT_STD
        rows = rows + scale * torch.randn(rows.shape, generator=generator)
        table[old_n + 1:] = rows.to(table.device, table.dtype)
    return added


@dataclass
class TrainStats:
    """Outcome of :func:`train_window`: optimiser steps, epochs started, the last epoch's mean loss terms,
    seconds, and why it stopped ("epochs", "max_steps", "stopped": the time limit or a shutdown)."""

    steps: int = 0
    epochs: int = 0
    loss: float = float("nan")
    ce: float = float("nan")
    mse: float = float("nan")
    train_s: float = 0.0
    stop_reason: str = "epochs"


def stage3_experiment(cfg: FinetuneConfig, model_cfg: ModelConfig) -> ExperimentConfig:
    """The experiment config of a round's stage 3: the serving model's architecture and the ``finetune``
    settings as the stage's budget (``epochs``, ``max_steps``), optimiser (Adam, constant ``lr``,
    ``weight_decay``, ``max_grad_norm``), ``batch_size``, ``amp`` and ``seed``; no validation."""
    train = TrainConfig(lr=cfg.lr, weight_decay=cfg.weight_decay, batch_size=cfg.batch_size,
                        finetune_epochs=cfg.epochs, lr_schedule="constant", max_grad_norm=cfg.max_grad_norm,
                        max_steps=cfg.max_steps, amp=cfg.amp, seed=cfg.seed)
    return ExperimentConfig(model=model_cfg, train=train)


def probe_loss(model: SequenceModel, windows: Sequence[Sequence[int]], cfg: FinetuneConfig,
               device: torch.device) -> float:
    """Mean training loss of ``model`` on the first :data:`PROBE_BATCHES` batches of ``windows`` (fixed order,
    dropout off, a fixed seed for ADRec's timesteps and noise), so that the loss before and after a round are
    measured on the same terms. NaN if there is nothing to measure."""
    batches = window_batches(windows, cfg.batch_size, shuffle=False, bucket=False)
    was_training = model.training
    model.eval()
    total, n = 0.0, 0
    with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(cfg.seed)
        for i, (hist, tgt) in enumerate(batches):
            if i >= PROBE_BATCHES:
                break
            with autocast_context(device, cfg.amp):
                total += float(model.loss(hist.to(device), tgt.to(device))["loss"].float())
            n += 1
    model.train(was_training)
    return total / n if n else float("nan")


def train_window(model: SequenceModel, sequences: Sequence[Sequence[int]], cfg: FinetuneConfig,
                 device: torch.device, *, should_stop: Callable[[], bool] | None = None,
                 log: Any = None, dist: DistContext | None = None) -> TrainStats:
    """Stage 3 on the round's sequences, in place, through the project's one stage loop
    (:func:`~adrec_stream.training.trainer.train_model` with ``stages=("finetune",)`` and the candidate as
    ``init_model``): every parameter, the model's loss, one backward per batch (step 3 of the module
    docstring), stopped at ``max_steps``, after ``max_seconds`` of training, or when ``should_stop()``.

    Args:
        model: the candidate (moved to ``device``, left in eval mode).
        sequences: internal item ids, oldest first; one window of the last ``max_len + 1`` items each.
        cfg: ``finetune`` settings (see :func:`stage3_experiment`; ``max_seconds``).
        device: where to train.
        should_stop: polled between steps (worker shutdown).
        log: structlog logger for the stage's epoch lines.
        dist: train data-parallel on this process group (every rank calls this with the same sequences; the
            ``max_seconds`` limit of any rank stops all of them at the same step).

    Returns:
        :class:`TrainStats`.

    Raises:
        TrainingDivergedError: a NaN/infinite loss (no update made with it) or, after training, a
            non-finite parameter; the model must then not be published.
    """
    t0 = time.perf_counter()

    def stop() -> bool:
        return time.perf_counter() - t0 >= cfg.max_seconds or (should_stop is not None and should_stop())

    res = train_model([list(s) for s in sequences], model.n_items, stage3_experiment(cfg, model.cfg),
                      stages=("finetune",), init_model=model, device=str(device), progress=False,
                      log=log if log is not None else get_logger("adrec_stream.finetune.train"), should_stop=stop,
                      distributed=dist)
    # the last epoch that trained: an epoch cut off before its first step has no loss (its record says 0.0)
    last = next((h for h in reversed(res.history) if h.get("steps")), {})
    reason = res.stop_reason
    if reason == "stopped" and not (should_stop is not None and should_stop()):
        reason = "max_seconds"
    stats = TrainStats(steps=res.steps, epochs=res.epochs_run, loss=float(last.get("loss", float("nan"))),
                       ce=float(last.get("ce", float("nan"))), mse=float(last.get("mse", float("nan"))),
                       train_s=time.perf_counter() - t0, stop_reason=reason)
    bad = [name for name, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:
        raise TrainingDivergedError(f"training diverged: non-finite parameters after {stats.steps} steps "
                                    f"({', '.join(bad[:3])}); lower finetune.lr")
    return stats


def heldout_metrics(model: SequenceModel, vocab: Vocabulary, holdout: Sequence[SequenceUpdateRecord],
                    judged: Sequence[bool], cfg: FinetuneConfig, device: torch.device) -> dict[str, float]:
    """HR@k / NDCG@k (k = 5, 10, 20; full ranking over the model's items) on the held-out clicks.

    Args:
        model: the model to judge.
        vocab: its vocabulary.
        holdout: held-out clicks; history = ``items[:-1]`` (the user's window before the click), target =
            ``items[-1]``.
        judged: per click, whether it is judged (the caller judges the same clicks for both models).
        cfg: ``finetune`` settings (eval_batch_size, seed).
        device: where to score.

    Returns:
        {"HR@5", ..., "NDCG@20": averages over the judged clicks, a target unknown to the model counting as a
        miss; "judged": number of judged clicks; "unknown_targets": judged clicks whose target the model
        does not know}.
    """
    hists, targets = [], []
    n_judged = unknown = 0
    for u, ok in zip(holdout, judged):
        if not ok:
            continue
        n_judged += 1
        target = vocab.index(u.clicked)
        history = vocab.encode(u.items[:-1])
        if target is None or not history:
            unknown += target is None
            continue
        hists.append(history)
        targets.append(target)
    out: dict[str, float] = {}
    if hists:
        got = evaluate_model(model, hists, targets, batch_size=cfg.eval_batch_size, device=device, seed=cfg.seed)
        out = {k: v * len(hists) / n_judged for k, v in got.items() if k != "n_users"}
    else:
        out = {f"{m}@{k}": 0.0 for m in ("HR", "NDCG") for k in (5, 10, 20)}
    out["judged"] = n_judged
    out["unknown_targets"] = unknown
    return out


@dataclass
class RoundOutcome:
    """What a round produced (publishing is the caller's job).

    Attributes:
        accepted: the candidate passed every guard and may be published.
        reason: why not ("diverged", "heldout", "stopped", "no_training_windows": no trained sequence has two
            items, "no_steps": ``max_seconds`` ran out before the first step) or "passed".
        candidate: the trained model (None if it diverged).
        vocab: the candidate's vocabulary (the serving one plus ``new_items``).
        window: the round's :class:`RoundWindow`.
        new_items: raw ids added this round.
        train: :class:`TrainStats`.
        loss_before, loss_after: :func:`probe_loss` of the serving model's weights (grown) and the candidate.
        heldout_serving, heldout_candidate: :func:`heldout_metrics` of both on the same clicks.
        error: the divergence message, if any.
        round_s: wall seconds of the round (window to guard).
    """

    accepted: bool
    reason: str
    candidate: torch.nn.Module | None
    vocab: Vocabulary
    window: RoundWindow
    new_items: list[str]
    train: TrainStats = field(default_factory=TrainStats)
    loss_before: float = float("nan")
    loss_after: float = float("nan")
    heldout_serving: dict[str, float] = field(default_factory=dict)
    heldout_candidate: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    round_s: float = 0.0


def run_round(serving: SequenceModel, serving_vocab: Sequence[str], window: RoundWindow, cfg: FinetuneConfig,
              device: torch.device, *, should_stop: Callable[[], bool] | None = None,
              log: Any = None, dist: DistContext | None = None) -> RoundOutcome:
    """Steps 2-4 of the module docstring on a built window; the serving model is not changed.

    Distributed (``dist``): every rank calls this with the same serving model, vocabulary, window and settings;
    stage 3 runs data-parallel (:func:`train_window`), and rank 0 alone measures the losses and judges the
    held-out clicks, then broadcasts its verdict, so every rank returns the same ``accepted`` / ``reason`` /
    metrics (and, in the candidate, the same weights).

    Args:
        serving: the serving model (copied; never modified).
        serving_vocab: its raw ids in index order (``checkpoint.vocab``).
        window: from :func:`build_window` (``train`` must be non-empty).
        cfg: ``finetune`` settings.
        device: where to train and evaluate.
        should_stop: polled between training steps (worker shutdown).
        log: structlog logger for the training stage's lines.
        dist: the process group of a distributed round (None: this process alone).

    Returns:
        :class:`RoundOutcome`.

    Raises:
        ValueError: ``window.train`` is empty.
    """
    if not window.train:
        raise ValueError("a round needs at least one fresh click to train on")
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(cfg.seed)
    vocab = Vocabulary(serving_vocab)
    candidate = copy.deepcopy(serving).to(device)
    serving = serving.to(device)
    added = grow_vocabulary(candidate, vocab, window.sequences, cfg.new_item_init, gen)
    sequences = [vocab.encode(s) for s in window.sequences]
    windows = training_windows(sequences, candidate.max_len)
    outcome = RoundOutcome(False, "passed", candidate, vocab, window, added)
    if not windows:  # every trained sequence has a single item: nothing to predict
        outcome.reason, outcome.candidate = "no_training_windows", None
        outcome.round_s = time.perf_counter() - t0
        return outcome
    main = dist is None or dist.is_main
    if main:
        outcome.loss_before = probe_loss(candidate, windows, cfg, device)
    try:
        outcome.train = train_window(candidate, sequences, cfg, device, should_stop=should_stop, log=log, dist=dist)
    except TrainingDivergedError as err:  # distributed: raised on every rank (the check is collective)
        outcome.reason, outcome.error, outcome.candidate = "diverged", str(err), None
        outcome.round_s = time.perf_counter() - t0
        return outcome
    if outcome.train.stop_reason == "stopped" or outcome.train.steps == 0:
        # shut down, or the time limit came before the first step: an unchanged copy is no new version
        outcome.reason = "stopped" if outcome.train.stop_reason == "stopped" else "no_steps"
        outcome.candidate = None
        outcome.round_s = time.perf_counter() - t0
        return outcome
    if main:
        _judge(outcome, serving, serving_vocab, windows, cfg, device)
    if dist is not None:
        verdict = dist.broadcast_object({k: getattr(outcome, k) for k in _VERDICT} if main else None)
        for k, v in verdict.items():
            setattr(outcome, k, v)
        if outcome.reason == "diverged":
            outcome.candidate = None
    outcome.round_s = time.perf_counter() - t0
    return outcome


#: the :class:`RoundOutcome` fields rank 0 decides and broadcasts in a distributed round
_VERDICT = ("accepted", "reason", "error", "loss_before", "loss_after", "heldout_serving", "heldout_candidate")


def _judge(outcome: RoundOutcome, serving: SequenceModel, serving_vocab: Sequence[str], windows: list[list[int]],
           cfg: FinetuneConfig, device: torch.device) -> None:
    """Step 4 on a trained candidate (in place): the divergence ratio of the window loss, then the held-out guard."""
    candidate = outcome.candidate
    outcome.loss_after = probe_loss(candidate, windows, cfg, device)
    if not math.isfinite(outcome.loss_after) or outcome.loss_after > cfg.divergence_loss_ratio * outcome.loss_before:
        outcome.reason, outcome.candidate = "diverged", None
        outcome.error = (f"training diverged: the window's loss went from {outcome.loss_before:.4g} to "
                         f"{outcome.loss_after:.4g} (limit: x{cfg.divergence_loss_ratio:g}, "
                         "finetune.divergence_loss_ratio); lower finetune.lr")
        return
    # judge the held-out clicks whose history the serving model can read (both models see the same clicks)
    base = Vocabulary(serving_vocab)
    judged = [bool(base.encode(u.items[:-1])) for u in outcome.window.holdout]
    outcome.heldout_serving = heldout_metrics(serving, base, outcome.window.holdout, judged, cfg, device)
    outcome.heldout_candidate = heldout_metrics(candidate, outcome.vocab, outcome.window.holdout, judged, cfg, device)
    old, new = outcome.heldout_serving[GUARD_METRIC], outcome.heldout_candidate[GUARD_METRIC]
    outcome.accepted = new >= old - cfg.tolerance
    outcome.reason = "passed" if outcome.accepted else "heldout"
