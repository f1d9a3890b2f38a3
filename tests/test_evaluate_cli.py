"""`adrec-stream train` / `adrec-stream evaluate` end to end on the real ml-100k split (tiny model)."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch

from adrec_stream.cli import build_parser, main
from adrec_stream.model import ADRec, ModelConfig, build_model, load_checkpoint, save_checkpoint

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "adrec"
ML100K = DATA / "ml-100k" / "dataset.pkl"
METRICS = {"HR@5", "NDCG@5", "HR@10", "NDCG@10", "HR@20", "NDCG@20"}
KEYS = METRICS | {"n_users", "steps", "deterministic", "seed", "threads", "wall_s", "users_per_s"}

TINY = """
model: {kind: adrec, hidden_size: 16, num_heads: 2, max_len: 10, diffusion_steps: 4}
train: {batch_size: 256, pretrain_epochs: 1, align_epochs: 1, finetune_epochs: 2, eval_every: 1, patience: 2}
"""


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    """(config, output folder, the JSON line train printed)."""
    root = tmp_path_factory.mktemp("train")
    cfg = root / "tiny.yaml"
    cfg.write_text(TINY)
    out = root / "run"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        rc = main(["train", "--dataset", str(ML100K), "--config", str(cfg), "--output", str(out), "--device", "cpu",
                   "--seed", "11", "--no-progress", "--json"])  # --json: the form; the line is JSON anyway
    assert rc == 0
    return cfg, out, json.loads(printed.getvalue().strip().splitlines()[-1])


@pytest.fixture(scope="module")
def trained(trained_run: tuple[Path, Path, dict]) -> tuple[Path, Path]:
    return trained_run[0], trained_run[1]


def test_train_prints_time_and_peak_memory_with_the_result(trained_run: tuple[Path, Path, dict]) -> None:
    _, out, res = trained_run
    assert res["checkpoint"] == str(out / "model.pt") and res["stages"] == ["pretrain", "align", "finetune"]
    assert res["epochs"] == {"pretrain": 1, "align": 1, "finetune": 2}
    assert set(res["best_val"]) == {"pretrain", "align", "finetune"}
    assert res["best_val"]["finetune"] == load_checkpoint(out).meta["best_val_metric"]
    assert res["wall_s"] > 0
    assert 100 < res["peak_rss_mb"] < 24 * 1024  # torch alone is > 100 MiB resident


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
    assert all(0.0 <= res[k] <= 1.0 for k in METRICS)
    assert res["HR@5"] <= res["HR@10"] <= res["HR@20"] and res["NDCG@5"] <= res["NDCG@20"] <= res["HR@20"]
    # the sampling settings actually used (defaults: T = diffusion_steps of the tiny config, with noise)
    assert res["steps"] == 4 and res["deterministic"] is False and res["seed"] == 0 and res["threads"] >= 1
    # users_per_s comes from the unrounded wall time and wall_s is rounded to the millisecond: on a fast machine
    # (a 28 ms evaluation) that rounding alone moves n / wall_s by up to 1.8 %, so bound by the rounding, not by 1 %
    wall = res["wall_s"]
    assert wall > 0 and 938 / (wall + 0.0005) - 0.1 <= res["users_per_s"] <= 938 / max(wall - 0.0005, 1e-6) + 0.1
    again = _evaluate(capsys, "--checkpoint", str(out), "--dataset", str(ML100K), "--split", "test")
    timing = {"wall_s", "users_per_s"}
    assert {k: again[k] for k in KEYS - timing} == {k: res[k] for k in KEYS - timing}  # seeded noise: reproducible


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


@pytest.fixture(scope="module")
def t32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny ADRec with T = 32 diffusion steps over ml-100k's 1008 items (scores only, no training)."""
    torch.manual_seed(3)
    model = build_model(1008, ModelConfig(hidden_size=16, num_heads=2, num_blocks=1, max_len=10, diffusion_steps=32))
    path = tmp_path_factory.mktemp("t32")
    save_checkpoint(path, model.eval(), vocab=[str(i) for i in range(1, 1009)], config={})
    return path


@pytest.fixture
def score_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[dict, torch.Tensor]]:
    """Records (keyword arguments, returned scores) of every ADRec.score call."""
    calls: list[tuple[dict, torch.Tensor]] = []
    original = ADRec.score

    def spy(self: ADRec, history: torch.Tensor, **kwargs: object) -> torch.Tensor:
        out = original(self, history, **kwargs)
        calls.append((kwargs, out.clone()))
        return out

    monkeypatch.setattr(ADRec, "score", spy)
    return calls


def _scores_of(calls: list[tuple[dict, torch.Tensor]], capsys: pytest.CaptureFixture[str],
               *args: str) -> tuple[dict, dict, torch.Tensor]:
    """Evaluate (ml-100k test, batches of 400 users) and return (JSON result, kwargs of the first score call, all
    scores concatenated in call order)."""
    calls.clear()
    res = _evaluate(capsys, "--dataset", str(ML100K), "--split", "test", "--batch-size", "400", "--threads", "1",
                    *args)
    assert len(calls) == 3  # 938 users in batches of 400
    return res, calls[0][0], torch.cat([c[1] for c in calls])


def test_steps_and_deterministic_reach_the_model(t32: Path, score_calls: list,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    ck = ("--checkpoint", str(t32))
    full, kw, s_full = _scores_of(score_calls, capsys, *ck, "--seed", "7")
    assert full["steps"] == 32 and full["deterministic"] is False and full["seed"] == 7
    assert kw["steps"] == 32 and kw["deterministic"] is False and isinstance(kw["generator"], torch.Generator)
    explicit, _, s_explicit = _scores_of(score_calls, capsys, *ck, "--seed", "7", "--steps", "32",
                                         "--no-deterministic")
    assert torch.equal(s_explicit, s_full)  # the default is T = 32 with noise

    one, kw, s_one = _scores_of(score_calls, capsys, *ck, "--seed", "7", "--steps", "1")
    assert one["steps"] == 1 and kw["steps"] == 1 and kw["deterministic"] is False
    assert (s_one - s_full)[:, 1:].abs().max() > 1e-6  # a different reverse process, same seed

    det, kw, s_det = _scores_of(score_calls, capsys, *ck, "--seed", "7", "--deterministic")
    assert det["steps"] == 32 and det["deterministic"] is True and kw["deterministic"] is True
    assert (s_det - s_full)[:, 1:].abs().max() > 1e-6
    det_one, _, s_det_one = _scores_of(score_calls, capsys, *ck, "--seed", "7", "--steps", "1", "--deterministic")
    assert (s_det_one - s_det)[:, 1:].abs().max() > 1e-6 and (s_det_one - s_one)[:, 1:].abs().max() > 1e-6

    # deterministic sampling ignores the seed; stochastic sampling does not
    _, _, s_det_other_seed = _scores_of(score_calls, capsys, *ck, "--seed", "8", "--deterministic")
    assert torch.equal(s_det_other_seed, s_det)
    _, _, s_other_seed = _scores_of(score_calls, capsys, *ck, "--seed", "8")
    assert not torch.equal(s_other_seed, s_full)


def test_steps_outside_one_to_t_are_clear_errors(t32: Path, trained: tuple[Path, Path],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    base = ["evaluate", "--dataset", str(ML100K), "--json", "--threads", "1"]
    capsys.readouterr()
    assert main([*base, "--checkpoint", str(t32), "--steps", "33"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "--steps 33 is outside 1..32" in captured.err and "diffusion_steps T = 32" in captured.err
    with pytest.raises(SystemExit) as exc:
        main([*base, "--checkpoint", str(t32), "--steps", "0"])
    assert exc.value.code == 2 and "expected an integer >= 1, got 0" in capsys.readouterr().err
    # a SASRec checkpoint (the fixture's stage-1 model) has no diffusion: the options are refused, not ignored
    _, out = trained
    assert main([*base, "--checkpoint", str(out / "pretrain"), "--steps", "1"]) == 2
    assert "ADRec checkpoints only" in capsys.readouterr().err
    res = _evaluate(capsys, "--checkpoint", str(out / "pretrain"), "--dataset", str(ML100K), "--threads", "1")
    assert res["steps"] is None and res["deterministic"] is None and res["users_per_s"] > 0


def test_a_checkpoint_with_another_item_numbering_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A model trained on an event log (raw MovieLens ids) over more items than the split: refused, not scored."""
    cfg = ModelConfig(hidden_size=16, num_heads=2, max_len=10, diffusion_steps=4)
    vocab = [str(i) for i in range(1, 1201)]
    vocab[6], vocab[7] = vocab[7], vocab[6]  # items 7 and 8 of this model are the log's raw ids "8" and "7"
    path = save_checkpoint(tmp_path / "log-model.pt", build_model(1200, cfg), vocab=vocab,
                           config={"model": cfg.model_dump(mode="json")})
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(path), "--dataset", str(ML100K), "--json"]) == 2
    err = capsys.readouterr().err
    assert "does not number items like" in err and "its item 7 is raw id '8', the dataset's is '7'" in err
