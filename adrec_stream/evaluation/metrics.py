"""Full-ranking top-k metrics for one held-out item per user (leave-one-out).

Rank convention: ``rank = 1 + number of real items with a strictly greater score`` than the
target. Ties are therefore resolved in the target's favour (an item tied with the target does
not push it down); with continuous scores ties practically never happen. The padding column 0
is never ranked. NaN scores rank below every number (-inf included), and a target scored NaN ranks last
(rank N): a model that cannot score the target gets no credit (an all-NaN model would otherwise rank every
target first).

HR@k = 1[rank <= k]; NDCG@k = 1 / log2(rank + 1) if rank <= k else 0 (one relevant item).
Both are computed per user and averaged over users (not over batches).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

DEFAULT_KS: tuple[int, ...] = (5, 10, 20)


def ranks_of_targets(
    scores: torch.Tensor, targets: torch.Tensor, exclude: torch.Tensor | None = None
) -> torch.Tensor:
    """1-based rank of each target item under full ranking.

    Args:
        scores: FloatTensor (B, N+1); column 0 (padding) is ignored whatever its value.
        targets: LongTensor (B,), item ids in 1..N.
        exclude: optional LongTensor (B, H) of item ids to remove from the ranking per user
            (e.g. the history; 0 entries are ignored). The target itself is never excluded.

    Returns:
        LongTensor (B,): 1 + number of real items scored strictly higher than the target; N (last) when
        the target's score is NaN.

    Raises:
        ValueError: shape mismatch or a target outside 1..N.
    """
    if scores.dim() != 2 or targets.shape != (scores.shape[0],):
        raise ValueError(f"expected scores (B, N+1) and targets (B,), got {tuple(scores.shape)} and {tuple(targets.shape)}")
    n_cols = scores.shape[1]
    targets = targets.to(scores.device).long()
    if targets.numel() and (int(targets.min()) < 1 or int(targets.max()) >= n_cols):
        raise ValueError(f"target ids must be in 1..{n_cols - 1} (0 is padding)")
    s = torch.nan_to_num(scores.float(), nan=float("-inf")).clone()
    if exclude is not None and exclude.numel():
        exclude = exclude.to(s.device).long()
        keep_target = exclude == targets.unsqueeze(1)
        ex = torch.where(keep_target, torch.zeros_like(exclude), exclude)
        s.scatter_(1, ex, float("-inf"))
    s[:, 0] = float("-inf")
    target_scores = s.gather(1, targets.unsqueeze(1))
    ranks = (s > target_scores).sum(dim=1) + 1
    nan_target = torch.isnan(scores.gather(1, targets.unsqueeze(1).to(scores.device))).squeeze(1)
    return torch.where(nan_target, torch.full_like(ranks, n_cols - 1), ranks)


def hit_ndcg(ranks: torch.Tensor | np.ndarray | Sequence[int], ks: Iterable[int] = DEFAULT_KS) -> dict[str, np.ndarray]:
    """Per-user HR@k and NDCG@k from 1-based ranks.

    Returns:
        dict "HR@k" / "NDCG@k" -> float64 array (B,) for each k.
    """
    r = ranks.detach().cpu().numpy() if isinstance(ranks, torch.Tensor) else np.asarray(ranks)
    r = r.astype(np.float64)
    out: dict[str, np.ndarray] = {}
    for k in ks:
        hit = r <= k
        out[f"HR@{k}"] = hit.astype(np.float64)
        out[f"NDCG@{k}"] = np.where(hit, 1.0 / np.log2(r + 1.0), 0.0)
    return out


def summarize(per_user: dict[str, np.ndarray]) -> dict[str, float]:
    """Mean of each per-user metric array (fractions in [0, 1]; NaN if there are no users)."""
    return {k: float(np.mean(v)) if len(v) else float("nan") for k, v in per_user.items()}
