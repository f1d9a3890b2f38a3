"""`adrec-stream train` / `adrec-stream evaluate` end to end on the real ml-100k split (tiny model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from adrec_stream.cli import build_parser, main
from adrec_stream.model import load_checkpoint

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "adrec"
ML100K = DATA / "ml-100k" / "dataset.pkl"
KEYS = {"HR@5", "NDCG@5", "HR@10", "NDCG@10", "HR@20", "NDCG@20", "n_users"}

TINY = """
model: {kind: adrec, hidden_size: 16, num_heads: 2, max_len: 10, diffusion_steps: 4}
train: {batch_size: 256, pretrain_epochs: 1, align_epochs: 1, finetune_epochs: 2, eval_every: 1, patience: 2}
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("train")
    cfg = root / "tiny.yaml"
    cfg.write_text(TINY)
    out = root / "run"
    rc = main(["train", "--dataset", str(ML100K), "--config", str(cfg), "--output", str(out), "--device", "cpu",
               "--seed", "11", "--no-progress"])
    assert rc == 0
    return cfg, out


def _evaluate(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    capsys.readouterr()
    assert main(["evaluate", *args, "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    return json.loads(lines[0])


def test_train_writes_stage_checkpoints_and_meta(trained: tuple[Path, Path]) -> None:
    _, out = trained
    assert (out / "pretrain" / "model.pt").is_file() and (out / "align" / "model.pt").is_file()
    ck = load_checkpoint(out)
    assert type(ck.model).__name__ == "ADRec" and ck.model.n_items == 1008
    assert ck.vocab[:3] == ["1", "2", "3"] and len(ck.vocab) == 1008
    m = ck.meta
    assert m["dataset"] == "ml-100k" and m["seed"] == 11 and m["stage"] == "finetune"
    assert m["stage_epochs"] == {"pretrain": 1, "align": 1, "finetune": 2}
    assert len(m["item_counts"]) == 1009 and m["item_counts"][0] == 0
    assert ck.config["train"]["seed"] == 11 and ck.config["model"]["hidden_size"] == 16
    assert 0 < m["best_val_metric"] < 1 and m["wall_s"] > 0
    pre = load_checkpoint(out / "pretrain")
    assert type(pre.model).__name__ == "SASRec" and pre.model.cfg.positional is False


def test_evaluate_prints_one_json_object(trained: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    _, out = trained
    res = _evaluate(capsys, "--checkpoint", str(out), "--dataset", str(ML100K), "--split", "test")
    assert set(res) == KEYS and res["n_users"] == 938
    assert all(0.0 <= res[k] <= 1.0 for k in KEYS - {"n_users"})
    assert res["HR@5"] <= res["HR@10"] <= res["HR@20"] and res["NDCG@5"] <= res["NDCG@20"] <= res["HR@20"]
    again = _evaluate(capsys, "--checkpoint", str(out), "--dataset", str(ML100K), "--split", "test")
    assert again == res  # seeded sampling noise: reproducible


def test_val_evaluation_matches_the_selection_metric(trained: tuple[Path, Path],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    _, out = trained
    res = _evaluate(capsys, "--checkpoint", str(out), "--dataset", str(ML100K.parent), "--split", "val",
                    "--seed", "11")
    assert res["NDCG@10"] == pytest.approx(load_checkpoint(out).meta["best_val_metric"], abs=1e-9)


def test_stage_alone_reads_previous_stage(trained: tuple[Path, Path], tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    cfg, out = trained
    rc = main(["train", "--dataset", str(ML100K), "--config", str(cfg), "--output", str(tmp_path / "new"),
               "--stage", "finetune", "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "align" in err and str(tmp_path / "new") in err
    # align alone from the fixture's pretrain output: the stage-1 table is loaded and kept frozen
    rc = main(["train", "--dataset", str(ML100K), "--config", str(cfg), "--output", str(out), "--stage", "align",
               "--no-progress"])
    assert rc == 0
    pre = load_checkpoint(out / "pretrain").model.item_emb.weight
    align = load_checkpoint(out / "align")
    assert torch.equal(align.model.item_emb.weight, pre)
    assert align.meta["stage_epochs"] == {"pretrain": 1, "align": 1}
    assert align.meta["pipeline_wall_s"] > align.meta["total_wall_s"]


def test_missing_dataset_and_bad_config_are_one_line_errors(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere" / "dataset.pkl"
    assert main(["train", "--dataset", str(missing), "--output", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "train" in err and "val" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {epochs: 3}\n")
    assert main(["train", "--dataset", str(ML100K), "--config", str(bad), "--output", str(tmp_path / "o")]) == 2
    assert "train.epochs: unknown key" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(tmp_path / "none"), "--dataset", str(ML100K), "--json"]) == 2


def test_train_help_explains_stage_chaining() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["train"]
    text = sub.format_help()
    assert "loads the previous stage's output from DIR" in text and "--no-progress" in text
