"""HR@k / NDCG@k with full ranking: hand-computed values, ties, padding, exclusion, per-user averaging."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from adrec_stream.evaluation.metrics import hit_ndcg, ranks_of_targets, summarize
from adrec_stream.evaluation.offline import evaluate_model


def test_ndcg_values_for_ranks_1_2_3() -> None:
    m = hit_ndcg(torch.tensor([1, 2, 3, 11]), ks=(10,))
    assert m["NDCG@10"] == pytest.approx([1.0, 0.6309, 0.5, 0.0], abs=1e-4)
    assert m["HR@10"].tolist() == [1.0, 1.0, 1.0, 0.0]


def test_hits_are_averaged_per_user() -> None:
    s = summarize(hit_ndcg([1, 4, 30], ks=(5,)))
    assert s["HR@5"] == pytest.approx(2 / 3, abs=1e-4)
    assert round(s["HR@5"], 4) == 0.6667
    assert s["NDCG@5"] == pytest.approx((1.0 + 1 / math.log2(5)) / 3)


def test_rank_counts_strictly_greater_and_skips_padding() -> None:
    # column 0 is padding with the highest score; it must never count
    scores = torch.tensor([[9.0, 0.1, 0.5, 0.5, 0.2], [9.0, 0.9, 0.1, 0.3, float("nan")]])
    ranks = ranks_of_targets(scores, torch.tensor([2, 4]))
    # user 0: item 3 ties with the target (not counted) -> rank 1; user 1: NaN target -> -inf -> last
    assert ranks.tolist() == [1, 4]


def test_exclude_history_removes_items_but_never_the_target() -> None:
    scores = torch.tensor([[0.0, 0.9, 0.8, 0.7, 0.6]])
    assert ranks_of_targets(scores, torch.tensor([4])).item() == 4
    excl = torch.tensor([[0, 1, 4]])  # padding 0 ignored, item 1 removed, the target 4 kept
    assert ranks_of_targets(scores, torch.tensor([4]), excl).item() == 3


def test_bad_targets_raise() -> None:
    with pytest.raises(ValueError):
        ranks_of_targets(torch.zeros(1, 5), torch.tensor([0]))
    with pytest.raises(ValueError):
        ranks_of_targets(torch.zeros(1, 5), torch.tensor([5]))


class _LastItemScorer(torch.nn.Module):
    """Scores item (last history item + 1) highest, then the others by id: a known ranking."""

    max_len = 50  # the part of the model contract evaluate_model reads besides score()

    def __init__(self, n_items: int) -> None:
        super().__init__()
        self.n_items = n_items
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.calls: list[int] = []

    def score(self, history: torch.Tensor, **_: object) -> torch.Tensor:
        self.calls.append(history.shape[0])
        b = history.shape[0]
        s = -torch.arange(self.n_items + 1, dtype=torch.float32).repeat(b, 1)
        nxt = (history[:, -1] % self.n_items) + 1
        s[torch.arange(b), nxt] = 100.0
        s[:, 0] = float("-inf")
        return s


def test_evaluate_model_is_per_user_with_uneven_batches() -> None:
    model = _LastItemScorer(10)
    hists = [[1, 2], [5], [3, 3, 3], [7], [9]]
    targets = [3, 6, 1, 2, 10]  # ranks: 1, 1, 2 (item 4 on top), 3 (items 8, 1 above), 1
    res = evaluate_model(model, hists, targets, batch_size=2, device="cpu")
    assert res["n_users"] == 5 and model.calls == [2, 2, 1]
    ranks = np.array([1, 1, 2, 3, 1])
    assert res["HR@5"] == 1.0
    assert res["NDCG@5"] == pytest.approx(np.mean(np.where(ranks <= 5, 1 / np.log2(ranks + 1), 0)))


def test_a_target_scored_nan_ranks_last_never_first() -> None:
    """An all-NaN model got HR = NDCG = 1.0 (every target "ranked first": nothing scored strictly higher);
    a NaN target score now ranks last (N), whatever the other scores are."""
    n = 6  # items 1..5
    ranks = ranks_of_targets(torch.full((2, n), float("nan")), torch.tensor([1, 5]))
    assert ranks.tolist() == [5, 5]
    assert summarize(hit_ndcg(ranks, (5,)))["HR@5"] == 1.0  # rank N is still inside top-N ...
    assert summarize(hit_ndcg(ranks, (4,)))["HR@4"] == 0.0  # ... and outside any shorter list
    mixed = torch.tensor([[0.0, 1.0, float("nan"), 0.5, float("-inf"), 2.0]])
    assert ranks_of_targets(mixed, torch.tensor([2])).item() == 5  # NaN target: last
    assert ranks_of_targets(mixed, torch.tensor([4])).item() == 4  # -inf target: below every finite score only
    assert ranks_of_targets(mixed, torch.tensor([3])).item() == 3  # finite target: NaN items count as -inf
