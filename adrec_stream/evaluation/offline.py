"""Offline leave-one-out evaluation with full ranking (paper Sec. 4.1 protocol; ties by the rule of
:mod:`adrec_stream.evaluation.metrics`: expected metrics under a uniformly random tie-break)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from adrec_stream.data.batching import left_pad
from adrec_stream.evaluation.metrics import DEFAULT_KS, summarize, target_rank_counts, tie_metrics


def evaluate_model(
    model: torch.nn.Module,
    histories: Sequence[Sequence[int]],
    targets: Sequence[int],
    *,
    ks: Sequence[int] = DEFAULT_KS,
    exclude_history: bool = False,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    seed: int = 0,
    steps: int | None = None,
    deterministic: bool | None = None,
) -> dict[str, float]:
    """HR@k and NDCG@k of next-item scores over all items, averaged per user.

    Users are processed in length-sorted batches (each trimmed to its longest history, which is
    exact with a key-padding-masked model); ranks are mapped back to users before averaging, so
    every user weighs the same whatever the batch sizes. Items scored equal to the target count as a uniformly
    random tie-break would place them (:func:`~adrec_stream.evaluation.metrics.tie_metrics`): a model that scores
    every item the same gets HR@k = k/N.

    Args:
        model: an ADRec/SASRec (:class:`~adrec_stream.model.base.SequenceModel`: ``score(history (B, L)) -> (B, N+1)``).
        histories: per-user history (internal ids, oldest first; at most ``model.cfg.max_len`` used).
        targets: per-user held-out item (1..N).
        ks: cut-offs.
        exclude_history: remove items of the history from the ranking (off by default, as in
            the paper); the target itself is never removed.
        batch_size: users per forward pass.
        device: where to run the model (None = the model's current device).
        seed: seed of the generator used by stochastic (diffusion) sampling, for reproducibility.
        steps: reverse-diffusion steps (None = the model's default: its config's ``sampling_steps``, else T).
        deterministic: None = the model's default (its config's ``deterministic_sampling``); True = reverse
            diffusion from zeros without noise (``seed`` then plays no part); False = stochastic sampling.

    Returns:
        {"HR@5": ..., "NDCG@5": ..., ..., "n_users": B} with metric values as fractions in [0, 1].

    Raises:
        ValueError: histories and targets differ in length, or (ADRec) ``steps`` is outside [1, T].
    """
    if len(histories) != len(targets):
        raise ValueError(f"{len(histories)} histories but {len(targets)} targets")
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(dev)
    was_training = model.training
    model.eval()
    max_len = model.max_len
    hists = [list(h)[-max_len:] for h in histories]
    order = np.argsort([len(h) for h in hists], kind="stable")
    higher = np.zeros(len(hists), dtype=np.int64)
    ties = np.zeros(len(hists), dtype=np.int64)
    gen = torch.Generator(device=dev)
    gen.manual_seed(seed)
    kwargs = {"generator": gen}
    if steps is not None:
        kwargs["steps"] = steps
    if deterministic is not None:
        kwargs["deterministic"] = deterministic
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            hist = left_pad([hists[i] for i in idx]).to(dev)
            tgt = torch.tensor([targets[i] for i in idx], dtype=torch.long, device=dev)
            scores = model.score(hist, **kwargs)
            h, e = target_rank_counts(scores, tgt, hist if exclude_history else None)
            higher[idx], ties[idx] = h.cpu().numpy(), e.cpu().numpy()
    if was_training:
        model.train()
    out: dict[str, float] = summarize(tie_metrics(higher, ties, ks))
    out["n_users"] = len(hists)
    return out


def popularity_scores(item_counts: Sequence[int], n_users: int) -> torch.Tensor:
    """Score matrix (n_users, N+1) ranking items by training popularity (column 0 = -inf)."""
    s = torch.tensor(item_counts, dtype=torch.float32)
    s[0] = float("-inf")
    return s.unsqueeze(0).expand(n_users, -1)
