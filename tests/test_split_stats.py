"""Model-free val vs test statistics of a leave-one-out split (``adrec-stream split-stats``)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from adrec_stream.cli import main
from adrec_stream.data.adrec_pkl import AdrecDataset, load_adrec_dataset
from adrec_stream.evaluation.split_stats import popularity_rank_counts, split_statistics

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "adrec"


def _toy() -> AdrecDataset:
    # training counts: item 1 x3, item 2 x2, item 3 x1, items 4 and 5 never; pairs seen: (1,2) (2,3) (1,1) (2,1)
    train = [[1, 2, 3], [1, 1], [2, 1]]
    val = [[2], [4], [1]]   # val pairs: (3,2) no, (1,4) no, (1,1) yes; target 4 is cold
    test = [[1], [5], [2]]  # test pairs: (2,1) yes, (4,5) no, (1,2) yes; target 5 is cold
    return AdrecDataset(train=train, val=val, test=test, n_items=5, n_users=3, n_interactions=13, name="toy")


def test_popularity_ties_count_by_the_random_tie_break_rule_and_padding_is_never_ranked() -> None:
    counts = [99, 3, 2, 2, 0, 5]  # padding count is ignored; order 5, 1, {2, 3} tied, 4
    higher, ties = popularity_rank_counts(counts, [5, 1, 2, 3, 4])
    assert higher.tolist() == [0, 1, 2, 2, 4]
    assert ties.tolist() == [0, 0, 1, 1, 0]  # items 2 and 3 share rank 3 or 4, half a chance each
    flat = popularity_rank_counts([0] + [7] * 100, [1, 50, 100])  # every item equally popular
    assert flat[0].tolist() == [0, 0, 0] and flat[1].tolist() == [99, 99, 99]


def test_split_statistics_hand_computed() -> None:
    st = split_statistics(_toy(), ks=(1, 2))
    # popularity order 1, 2, 3, 4, 5: val targets 2, 4, 1 -> ranks 2, 4, 1; test targets 1, 5, 2 -> ranks 1, 5, 2
    assert st["val"]["pop_HR@1"] == pytest.approx(1 / 3) and st["val"]["pop_HR@2"] == pytest.approx(2 / 3)
    assert st["val"]["pop_NDCG@2"] == pytest.approx((1 / math.log2(3) + 1.0) / 3)
    assert st["test"]["pop_HR@2"] == pytest.approx(2 / 3)
    assert st["val"]["cold_target"] == pytest.approx(1 / 3) and st["test"]["cold_target"] == pytest.approx(1 / 3)
    assert st["val"]["seen_transition"] == pytest.approx(1 / 3) and st["test"]["seen_transition"] == pytest.approx(2 / 3)
    assert st["val"]["mean_history"] == pytest.approx(7 / 3) and st["test"]["mean_history"] == pytest.approx(10 / 3)
    assert st["val"]["n_users"] == st["test"]["n_users"] == 3


def test_beauty_test_step_is_harder_than_validation_for_any_model() -> None:
    """The finding behind docs/results.md: on beauty the test step is harder than validation by every
    model-free measure (popularity, cold targets, transitions seen in training)."""
    path = DATA / "beauty" / "dataset.pkl"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    st = split_statistics(load_adrec_dataset(path))
    val, test = st["val"], st["test"]
    assert val["n_users"] == test["n_users"] == 10553
    assert test["pop_HR@20"] < 0.7 * val["pop_HR@20"]
    assert test["cold_target"] > 3 * val["cold_target"]
    assert test["seen_transition"] < 0.85 * val["seen_transition"]
    assert test["mean_history"] == pytest.approx(val["mean_history"] + 1.0)


def test_split_stats_cli_json_and_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pkl = DATA / "ml-100k"
    if not (pkl / "dataset.pkl").is_file():
        pytest.skip(f"{pkl} not present")
    assert main(["split-stats", "--dataset", str(pkl), "--json"]) == 0
    obj = json.loads(capsys.readouterr().out)
    assert obj["dataset"] == "ml-100k" and obj["val"]["n_users"] == 938 and obj["test"]["cold_target"] == 0.0
    assert main(["split-stats", "--dataset", str(tmp_path / "nope")]) == 2
    assert "nope" in capsys.readouterr().err
