"""HR@k / NDCG@k with full ranking: hand-computed values, ties (uniformly random tie-break, in expectation),
padding, exclusion, per-user averaging."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from adrec_stream.evaluation.metrics import (
    hit_ndcg,
    ranks_of_targets,
    summarize,
    target_rank_counts,
    tie_metrics,
)
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


def test_rank_counts_ties_and_skips_padding() -> None:
    # column 0 is padding with the highest score; it must never count
    scores = torch.tensor([[9.0, 0.1, 0.5, 0.5, 0.2], [9.0, 0.9, 0.1, 0.3, float("nan")]])
    higher, ties = target_rank_counts(scores, torch.tensor([2, 4]))
    # user 0: item 3 ties with the target -> rank 1 or 2, expected 1.5; user 1: NaN target -> last (4 items)
    assert higher.tolist() == [0, 3] and ties.tolist() == [1, 0]
    assert ranks_of_targets(scores, torch.tensor([2, 4])).tolist() == [1.5, 4.0]
    m = tie_metrics(higher, ties, ks=(1, 2))
    assert m["HR@1"].tolist() == [0.5, 0.0] and m["HR@2"].tolist() == [1.0, 0.0]
    assert m["NDCG@2"][0] == pytest.approx((1.0 + 1 / math.log2(3)) / 2)


@pytest.mark.parametrize("n_items", [20, 100, 1000])
def test_a_constant_score_model_gets_k_over_n_not_a_perfect_score(n_items: int) -> None:
    """All-equal scores ranked every target first (HR@k = NDCG@k = 1.0 for a model that knows nothing, and
    checkpoint selection trusted it); now every item tied with the target counts as a random tie-break would
    place it: HR@k = k / N exactly, NDCG@k = (sum_{r<=k} 1/log2(r+1)) / N."""
    users = 64
    scores = torch.full((users, n_items + 1), 0.25)
    targets = torch.arange(users) % n_items + 1
    higher, ties = target_rank_counts(scores, targets)
    assert higher.tolist() == [0] * users and ties.tolist() == [n_items - 1] * users
    assert ranks_of_targets(scores, targets).tolist() == [(n_items + 1) / 2] * users
    got = summarize(tie_metrics(higher, ties, ks=(5, 10, 20)))
    for k in (5, 10, 20):
        assert got[f"HR@{k}"] == pytest.approx(k / n_items)
        assert got[f"NDCG@{k}"] == pytest.approx(sum(1 / math.log2(r + 1) for r in range(1, k + 1)) / n_items)


class _ConstantScorer(torch.nn.Module):
    """Scores every item the same (a model that learned nothing)."""

    max_len = 50

    def __init__(self, n_items: int) -> None:
        super().__init__()
        self.n_items = n_items
        self.w = torch.nn.Parameter(torch.zeros(1))

    def score(self, history: torch.Tensor, **_: object) -> torch.Tensor:
        return torch.zeros(history.shape[0], self.n_items + 1)


def test_offline_evaluation_of_a_constant_model_is_k_over_n() -> None:
    """evaluate_model is what `adrec-stream evaluate` and the validation during training (checkpoint selection)
    call: a constant model gets HR@10 = 10 / N there too, with and without the history exclusion."""
    n = 200
    hists = [[(u % n) + 1, ((u + 7) % n) + 1] for u in range(50)]
    targets = [((u + 3) % n) + 1 for u in range(50)]
    res = evaluate_model(_ConstantScorer(n), hists, targets, device="cpu")
    assert res["HR@10"] == pytest.approx(10 / n) and res["HR@20"] == pytest.approx(20 / n)
    assert res["NDCG@10"] == pytest.approx(sum(1 / math.log2(r + 1) for r in range(1, 11)) / n)
    excl = evaluate_model(_ConstantScorer(n), hists, targets, device="cpu", exclude_history=True)
    assert excl["HR@10"] == pytest.approx(10 / (n - 2))  # two history items leave the ranking


def test_exclude_history_removes_items_but_never_the_target() -> None:
    scores = torch.tensor([[0.0, 0.9, 0.8, 0.7, 0.6]])
    assert ranks_of_targets(scores, torch.tensor([4])).item() == 4
    excl = torch.tensor([[0, 1, 4]])  # padding 0 ignored, item 1 removed, the target 4 kept
    assert ranks_of_targets(scores, torch.tensor([4]), excl).item() == 3
    tied = torch.tensor([[0.0, 0.5, 0.5, 0.5, 0.5]])  # an excluded item tied with the target is not a tie
    assert target_rank_counts(tied, torch.tensor([4]), torch.tensor([[1, 2]]))[1].tolist() == [1]


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
    higher, ties = target_rank_counts(torch.full((2, n), float("nan")), torch.tensor([1, 5]))
    assert higher.tolist() == [4, 4] and ties.tolist() == [0, 0]  # rank 5 = N, no tie among NaNs
    assert summarize(tie_metrics(higher, ties, (5,)))["HR@5"] == 1.0  # rank N is still inside top-N ...
    assert summarize(tie_metrics(higher, ties, (4,)))["HR@4"] == 0.0  # ... and outside any shorter list
    mixed = torch.tensor([[0.0, 1.0, float("nan"), 0.5, float("-inf"), 2.0]])
    assert ranks_of_targets(mixed, torch.tensor([2])).item() == 5  # NaN target: last
    assert ranks_of_targets(mixed, torch.tensor([4])).item() == 4  # -inf target: below every finite score only
    assert ranks_of_targets(mixed, torch.tensor([3])).item() == 3  # finite target: NaN items below it
