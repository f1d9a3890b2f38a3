"""Tests of the speed-benchmark code (tiny synthetic data; the real benchmarks are marked ``benchmark``)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from adrec_stream.bench.score_bench import batch_sweep, bench_score
from adrec_stream.bench.train_bench import bench_train
from adrec_stream.cli import main
from adrec_stream.model import ModelConfig, build_model

BABY = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "adrec" / "baby" / "dataset.pkl"
TINY_CFG = ModelConfig(hidden_size=16, num_heads=2, max_len=10, diffusion_steps=4)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    """24 users over 20 items, lengths 1..12, written in the paper's pickle layout."""
    train = [[(u * 7 + i) % 20 + 1 for i in range(1 + u % 12)] for u in range(24)]
    val = [[(u % 20) + 1] for u in range(24)]
    data = {"train": train, "val": val, "test": [[((u + 3) % 20) + 1] for u in range(24)]}
    path = tmp_path / "tiny" / "dataset.pkl"
    path.parent.mkdir()
    path.write_bytes(pickle.dumps(data))
    return path


def test_bench_train_reports_both_paths(tiny_dataset: Path):
    res = bench_train(tiny_dataset, steps=2, batch_size=8, cfg=TINY_CFG)
    assert res["steps_measured"] == {"fast": 2, "reference": 2}
    assert res["windows"] == 22  # users 0 and 12 have a single item: no (history, next item) pair
    assert res["fast"]["batches_per_epoch"] == 3 and res["reference"]["batches_per_epoch"] == 3
    assert res["extrapolated"] == {"fast": True, "reference": True}
    assert res["fast"]["real_positions_per_epoch"] == sum(min(u % 12, 10) for u in range(24))
    assert res["fast"]["positions_per_epoch"] < res["reference"]["positions_per_epoch"] == 22 * 10
    assert res["epoch_s"] > 0 and res["speedup"] == pytest.approx(res["reference_epoch_s"] / res["epoch_s"], rel=0.01)
    full = bench_train(tiny_dataset, batch_size=8, cfg=TINY_CFG)  # whole fast epoch, 3 reference steps
    assert full["steps_measured"] == {"fast": 3, "reference": 3} and full["extrapolated"]["fast"] is False


def test_bench_score_paths_agree(tiny_dataset: Path):
    res = bench_score(tiny_dataset, users=24, reference_users=3, batch_size=10, cfg=TINY_CFG, sweep=False)
    assert res["users_measured"] == 24 and res["reference_users_measured"] == 3
    assert res["max_abs_score_diff"] < 1e-5
    assert res["per_user_ms"] > 0 and res["sampling_steps"] == 4
    # speedup = median of the per-round ratios (each round times both sides under the same load)
    assert res["rounds"] == 5 and len(res["speedup_per_round"]) == 5 and len(res["round_s"]["fast"]) == 5
    assert res["speedup"] == sorted(res["speedup_per_round"])[2]
    with pytest.raises(ValueError, match="users"):
        bench_score(tiny_dataset, users=0, cfg=TINY_CFG)
    with pytest.raises(ValueError, match="rounds"):
        bench_score(tiny_dataset, rounds=0, cfg=TINY_CFG)


def test_bench_cli_prints_one_json_object(tiny_dataset: Path, capsys):
    rc = main(["bench", "score", "--dataset", str(tiny_dataset), "--json", "--users", "6", "--reference-users", "1",
               "--denoiser", "mlp", "--no-sweep"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert {"per_user_ms", "reference_per_user_ms", "speedup"} <= set(res)
    assert res["model"]["denoiser"] == "mlp" and res["model"]["hidden_size"] == 128


def test_batch_sweep_measures_every_model_and_batch_size():
    torch.manual_seed(0)
    model = build_model(20, TINY_CFG).eval()
    hists = [[(u * 3 + i) % 20 + 1 for i in range(1 + u % 9)] for u in range(16)]
    res = batch_sweep(model, hists, 20, dev=torch.device("cpu"), seed=1, steps=2, rounds=1, batch_sizes=(1, 4),
                      seconds=0.02, synthetic_items=500)
    assert res["batch_sizes"] == [1, 4] and res["steps"] == 2 and res["synthetic_items"] == 500
    for name in ("adrec", "adrec_100k_items", "sasrec"):
        assert set(res[name]) == {1, 4} and min(res[name].values()) > 0
    assert res["adrec_over_sasrec"][4] == pytest.approx(res["adrec"][4] / res["sasrec"][4], rel=0.01)


def test_bench_cli_missing_dataset_is_one_line_error(tmp_path: Path, capsys):
    rc = main(["bench", "train", "--dataset", str(tmp_path / "none.pkl"), "--json"])
    assert rc == 2
    assert "none.pkl" in capsys.readouterr().err


@pytest.mark.benchmark
@pytest.mark.skipif(not BABY.is_file(), reason="needs ../shared/data/adrec/baby/dataset.pkl")
def test_speed_goals_on_baby():
    """The issue's goals on the real baby split: >= 10x per training epoch, >= 100x per scored user."""
    train = bench_train(BABY, steps=3)
    score = bench_score(BABY, users=2048, reference_users=20)
    assert train["speedup"] >= 10, train
    assert score["speedup"] >= 100, score
    assert score["max_abs_score_diff"] < 1e-4
