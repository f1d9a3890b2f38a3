"""Full-ranking top-k metrics for one held-out item per user (leave-one-out), with one rule for ties.

Tie rule (used wherever a model's scores are turned into metrics: offline evaluation, validation during
training, the replay evaluation, the model-free popularity statistics): with ``h`` candidate items scored
strictly higher than the target and ``e`` OTHER candidates scored exactly equal to it, the target's rank is
that of a uniformly random tie-break, uniform on ``h+1 .. h+e+1``. HR@k and NDCG@k are the exact expectations
of the metric under that tie-break (:func:`tie_metrics`): ``HR@k = P(rank <= k)``,
``NDCG@k = E[1/log2(rank+1) * 1[rank <= k]]``. A model that scores every item the same therefore gets
HR@k = k/N (it is no better than a random order), never 1.0; without ties (the usual case for real-valued model
scores) the metrics are those of the one rank ``h + 1``. The expectation is taken of the METRIC, not the metric
of the expected rank ``1 + h + e/2`` (:func:`expected_rank`, reported as a mean rank), which would be biased
for large tie groups.

The padding column 0 is never ranked. NaN scores rank below every number (-inf included) and tie with
nothing; a target scored NaN ranks last (``h`` = candidates - 1, ``e`` = 0): a model that cannot score the
target gets no credit. A negative ``h`` marks a target that could not be ranked at all (unknown to the policy,
or removed by the history exclusion in the replay evaluation): a miss.

Ranks of a list that was actually served (the prequential metrics of the stream, the ``--through-kafka``
replay) are definite positions, without ties: :func:`hit_ndcg` takes those. HR@k = 1[rank <= k];
NDCG@k = 1 / log2(rank + 1) if rank <= k else 0 (one relevant item). All metrics are computed per user (or per
click) and averaged over users (not over batches).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # torch is imported by the functions that take tensors: the NumPy part stays light
    import torch

DEFAULT_KS: tuple[int, ...] = (5, 10, 20)


def target_rank_counts(
    scores: torch.Tensor, targets: torch.Tensor, exclude: torch.Tensor | None = None, *,
    candidates: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(higher, ties)`` of each target under full ranking (the inputs of :func:`tie_metrics`).

    Args:
        scores: FloatTensor (B, N+1); column 0 (padding) is never a candidate whatever its value.
        targets: LongTensor (B,), item ids in 1..N.
        exclude: optional LongTensor (B, H) of item ids to remove from the ranking per user
            (e.g. the history; 0 entries are ignored). The target itself is never excluded.
        candidates: optional BoolTensor (B, N+1) of the columns that are ranked (default: all real items);
            combined with ``exclude``; the target is always ranked.

    Returns:
        Two LongTensors (B,): ``higher`` = candidates scored strictly higher than the target, ``ties`` = OTHER
        candidates scored exactly equal to it (NaN scores are never higher nor tied; a NaN target gets
        ``higher`` = candidates - 1, ``ties`` = 0).

    Raises:
        ValueError: shape mismatch or a target outside 1..N.
    """
    import torch  # noqa: PLC0415

    if scores.dim() != 2 or targets.shape != (scores.shape[0],):
        raise ValueError(f"expected scores (B, N+1) and targets (B,), got {tuple(scores.shape)} and {tuple(targets.shape)}")
    n_cols = scores.shape[1]
    if candidates is not None and candidates.shape != scores.shape:
        raise ValueError(f"candidates must have the shape of scores {tuple(scores.shape)}, got {tuple(candidates.shape)}")
    targets = targets.to(scores.device).long()
    if targets.numel() and (int(targets.min()) < 1 or int(targets.max()) >= n_cols):
        raise ValueError(f"target ids must be in 1..{n_cols - 1} (0 is padding)")
    s = scores.float()
    mask = torch.ones_like(s, dtype=torch.bool) if candidates is None else candidates.to(s.device).bool().clone()
    mask[:, 0] = False
    if exclude is not None and exclude.numel():
        mask.scatter_(1, exclude.to(s.device).long(), False)
    rows = torch.arange(s.shape[0], device=s.device)
    mask[rows, targets] = True
    st = s[rows, targets].unsqueeze(1)
    higher = ((s > st) & mask).sum(dim=1)
    ties = ((s == st) & mask).sum(dim=1) - 1
    nan_target = torch.isnan(st.squeeze(1))
    higher = torch.where(nan_target, mask.sum(dim=1) - 1, higher)
    ties = torch.where(nan_target, torch.zeros_like(ties), ties)
    return higher, ties


def ranks_of_targets(
    scores: torch.Tensor, targets: torch.Tensor, exclude: torch.Tensor | None = None
) -> torch.Tensor:
    """Expected 1-based rank of each target under a uniformly random tie-break: ``1 + higher + ties / 2``.

    For reporting a mean rank. HR@k / NDCG@k must come from :func:`tie_metrics` on
    :func:`target_rank_counts` (the metric of the expected rank is biased for large tie groups). All N items
    scored equal: rank (N + 1) / 2 for every target, not 1.

    Args:
        scores, targets, exclude: as in :func:`target_rank_counts`.

    Returns:
        Float64 tensor (B,): the expected rank; N (last) when the target's score is NaN.

    Raises:
        ValueError: shape mismatch or a target outside 1..N.
    """
    higher, ties = target_rank_counts(scores, targets, exclude)
    return 1.0 + higher.double() + ties.double() / 2.0


def rank_counts(scores: np.ndarray, target: int, candidates: np.ndarray | None = None) -> tuple[int, int]:
    """``(higher, ties)`` of the target in one score row (NumPy; the rule of :func:`target_rank_counts`).

    Args:
        scores: (C,) scores of the candidate columns (any real dtype; NaN ranks below every number and ties
            with nothing, a NaN target below everything: ``higher`` = candidates - 1, ``ties`` = 0).
        target: column of the clicked item in ``scores``.
        candidates: optional (C,) bool mask of the columns that are ranked (the target is always ranked);
            None = all columns.

    Returns:
        (number of candidates scored strictly higher than the target, number of OTHER candidates scored equal).
    """
    s = np.asarray(scores)
    mask = np.ones(s.shape[0], dtype=bool) if candidates is None else np.asarray(candidates, dtype=bool).copy()
    mask[target] = True
    t = s[target]
    if isinstance(t, float | np.floating) and np.isnan(t):
        return int(mask.sum()) - 1, 0
    return int(np.count_nonzero((s > t) & mask)), int(np.count_nonzero((s == t) & mask)) - 1


def expected_rank(higher: np.ndarray | int, ties: np.ndarray | int) -> np.ndarray | float:
    """Expected 1-based rank of the target under a uniformly random tie-break.

    ``rank = 1 + higher + ties / 2`` (see :func:`rank_counts`). All N candidates scored equal: ``higher = 0``,
    ``ties = N - 1``, rank = (N + 1) / 2. A negative ``higher`` (a target that could not be ranked) gives ``inf``.

    Args:
        higher, ties: ints or int arrays of the same shape.

    Returns:
        float (or float64 array): the expected rank, ``inf`` where ``higher`` is negative (a miss).
    """
    h = np.asarray(higher, dtype=np.float64)
    r = 1.0 + h + np.asarray(ties, dtype=np.float64) / 2.0
    r = np.where(h < 0, np.inf, r)
    return float(r) if r.ndim == 0 else r


def _discount_cumsum(kmax: int) -> np.ndarray:
    """``D[r] = sum_{j=1..r} 1/log2(j+1)`` for r = 0..kmax (D[0] = 0)."""
    return np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(2, kmax + 2, dtype=np.float64)))])


def tie_metrics(higher: torch.Tensor | np.ndarray | Sequence[int], ties: torch.Tensor | np.ndarray | Sequence[int],
                ks: Iterable[int] = DEFAULT_KS) -> dict[str, np.ndarray]:
    """Per-user (per-click) HR@k and NDCG@k, exact expectations under a uniformly random tie-break.

    The target's rank is uniform on ``higher+1 .. higher+ties+1``, so
    ``HR@k = clip(k - higher, 0, ties + 1) / (ties + 1)`` and
    ``NDCG@k = (D[min(higher+ties+1, k)] - D[min(higher, k)]) / (ties + 1)`` with ``D[r] = sum_{j<=r} 1/log2(j+1)``.
    A negative ``higher`` is a miss (0). With ``ties`` all 0 this is :func:`hit_ndcg` of ``higher + 1``.

    Args:
        higher, ties: (n,) int arrays or tensors from :func:`target_rank_counts` / :func:`rank_counts`.
        ks: cut-offs.

    Returns:
        ``{"HR@k": (n,) float64, "NDCG@k": (n,) float64}`` for each k, values in [0, 1].
    """
    h = _as_int_array(higher)
    e = _as_int_array(ties)
    ks = list(ks)
    known = h >= 0
    hh, ee = np.where(known, h, 0), np.where(known, e, 0)
    d = _discount_cumsum(max(ks))
    out: dict[str, np.ndarray] = {}
    for k in ks:
        n = ee + 1.0
        hr = np.clip(k - hh, 0, ee + 1) / n
        ndcg = (d[np.minimum(hh + ee + 1, k)] - d[np.minimum(hh, k)]) / n
        out[f"HR@{k}"] = np.where(known, hr, 0.0)
        out[f"NDCG@{k}"] = np.where(known, ndcg, 0.0)
    return out


def _as_numpy(x: Any) -> np.ndarray:
    """A tensor (anything with ``detach``), array or sequence as a NumPy array."""
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def _as_int_array(x: torch.Tensor | np.ndarray | Sequence[int]) -> np.ndarray:
    return _as_numpy(x).astype(np.int64)


def hit_ndcg(ranks: torch.Tensor | np.ndarray | Sequence[int], ks: Iterable[int] = DEFAULT_KS) -> dict[str, np.ndarray]:
    """Per-user HR@k and NDCG@k from definite 1-based ranks (positions in a served list: no ties).

    Scores with possible ties go through :func:`target_rank_counts` and :func:`tie_metrics` instead.

    Returns:
        dict "HR@k" / "NDCG@k" -> float64 array (B,) for each k.
    """
    r = _as_numpy(ranks).astype(np.float64)
    out: dict[str, np.ndarray] = {}
    for k in ks:
        hit = r <= k
        out[f"HR@{k}"] = hit.astype(np.float64)
        out[f"NDCG@{k}"] = np.where(hit, 1.0 / np.log2(r + 1.0), 0.0)
    return out


def summarize(per_user: dict[str, np.ndarray]) -> dict[str, float]:
    """Mean of each per-user metric array (fractions in [0, 1]; NaN if there are no users)."""
    return {k: float(np.mean(v)) if len(v) else float("nan") for k, v in per_user.items()}
