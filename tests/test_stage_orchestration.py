"""One owner for the stage sequence: :func:`train_model` runs any ordered subset of the stages (each from
``train.seed``) and reports each one through ``on_stage_end``; ``adrec-stream train`` only saves what it reports
(DIR/pretrain, DIR/align, DIR) and, for a single ``--stage``, loads the previous stage's output first."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from adrec_stream.cli import main
from adrec_stream.errors import ConfigError
from adrec_stream.model import ModelConfig, build_model, load_checkpoint
from adrec_stream.training import cli as train_cli
from adrec_stream.training.config import STAGES, ExperimentConfig, TrainConfig, load_experiment
from adrec_stream.training.trainer import TrainResult, check_stages, pretrain_config, train_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = """
model: {kind: adrec, hidden_size: 16, num_heads: 2, max_len: 8, diffusion_steps: 4}
train: {batch_size: 8, pretrain_epochs: 1, align_epochs: 1, finetune_epochs: 1, eval_every: 1, patience: 2}
"""


@pytest.fixture
def tiny_run(tmp_path: Path) -> tuple[Path, Path]:
    """(config YAML, dataset.pkl): 30 users over 20 items in the paper's pickle layout."""
    rng = np.random.default_rng(0)
    train = [[int(x) for x in rng.integers(1, 21, size=int(rng.integers(2, 10)))] for _ in range(30)]
    data = {"train": train, "val": [[int(rng.integers(1, 21))] for _ in train],
            "test": [[int(rng.integers(1, 21))] for _ in train]}
    pkl = tmp_path / "tiny" / "dataset.pkl"
    pkl.parent.mkdir()
    pkl.write_bytes(pickle.dumps(data))
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    return cfg, pkl


def _train(cfg: Path, pkl: Path, out: Path, *args: str) -> int:
    return main(["train", "--dataset", str(pkl), "--config", str(cfg), "--output", str(out), "--device", "cpu",
                 "--no-progress", *args])


def _small_exp(kind: str = "adrec") -> ExperimentConfig:
    model = ModelConfig(kind=kind, hidden_size=16, num_heads=2, max_len=8, diffusion_steps=4,
                        positional=kind == "sasrec")
    return ExperimentConfig(model=model, train=TrainConfig(batch_size=8, pretrain_epochs=1, align_epochs=2,
                                                           finetune_epochs=1, eval_every=1, patience=2))


def _toy(n_users: int = 40, n_items: int = 30) -> list[list[int]]:
    rng = np.random.default_rng(0)
    return [[int(x) for x in rng.integers(1, n_items + 1, size=int(rng.integers(3, 12)))] for _ in range(n_users)]


def test_positional_pretrain_checkpoint_stores_the_stage_one_config(tiny_run: tuple[Path, Path],
                                                                    tmp_path: Path) -> None:
    """train.pretrain_positional: DIR/pretrain's stored experiment config is pretrain_config(exp) (positions,
    pretrain_init_std), not a SASRec without positions, so a model rebuilt from it takes the saved weights."""
    cfg, pkl = tiny_run
    out = tmp_path / "run"
    sets = ["--set", "train.pretrain_positional=true", "--set", "train.pretrain_init_std=0.05"]
    assert _train(cfg, pkl, out, "--stage", "pretrain", *sets) == 0
    pre = load_checkpoint(out / "pretrain")
    exp = load_experiment(cfg, {"train.pretrain_positional": True, "train.pretrain_init_std": 0.05})
    assert pre.config["model"] == pretrain_config(exp).model_dump(mode="json")
    assert pre.config["model"]["positional"] is True and pre.config["model"]["kind"] == "sasrec"
    assert pre.config["model"]["init_std"] == 0.05 and pre.config["train"]["pretrain_positional"] is True
    assert pre.model.pos_emb is not None and pre.model.cfg.positional is True
    rebuilt = build_model(pre.model.n_items, ModelConfig.model_validate(pre.config["model"]))
    rebuilt.load_state_dict(pre.model.state_dict())  # strict: the stored config describes these weights
    assert rebuilt.pos_emb is not None
    # stage 2 alone continues from it: the ADRec gets the stage-1 table and keeps no positions
    assert _train(cfg, pkl, out, "--stage", "align", *sets) == 0
    align = load_checkpoint(out / "align")
    assert torch.equal(align.model.item_emb.weight, pre.model.item_emb.weight) and align.model.pos_emb is None
    assert align.config["model"]["kind"] == "adrec" and align.config["model"]["positional"] is False


def test_cli_runs_all_stages_through_one_train_model_call(tiny_run: tuple[Path, Path], tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """`--stage all` is ONE train_model call; its on_stage_end writes each checkpoint as the stage ends."""
    cfg, pkl = tiny_run
    out = tmp_path / "run"
    calls: list[tuple[str, ...]] = []
    written: list[list[str]] = []

    def spy(*args, stages, on_stage_end, **kw):
        calls.append(tuple(stages))

        def on_end(stage: str, res: TrainResult) -> None:
            on_stage_end(stage, res)
            written.append(sorted(str(p.relative_to(out)) for p in out.rglob("model.pt")))

        return train_model(*args, stages=stages, on_stage_end=on_end, **kw)

    monkeypatch.setattr(train_cli, "train_model", spy)
    assert _train(cfg, pkl, out) == 0
    assert calls == [STAGES]
    assert written == [["pretrain/model.pt"], ["align/model.pt", "pretrain/model.pt"],
                       ["align/model.pt", "model.pt", "pretrain/model.pt"]]
    final = load_checkpoint(out)
    assert final.meta["stage_epochs"] == {"pretrain": 1, "align": 1, "finetune": 1}
    assert [h["stage"] for h in final.meta["history"]] == ["finetune"]  # each checkpoint: its own stage's history


def test_cli_reports_where_each_stage_spent_its_time(tiny_run: tuple[Path, Path], tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """The JSON line of `adrec-stream train` splits each stage's wall time into training epochs and validation
    passes (from the epoch history) and names the torch thread count the times were measured with."""
    cfg, pkl = tiny_run
    assert _train(cfg, pkl, tmp_path / "run", "--threads", "1") == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["threads"] == 1
    assert set(line["time"]) == set(STAGES)
    for stage, t in line["time"].items():
        assert t["epochs"] == line["epochs"][stage] == 1 and t["evals"] == 1  # eval_every 1
        assert min(t["train_s"], t["eval_s"], t["other_s"]) >= 0
        assert t["train_s"] + t["eval_s"] <= line["wall_s"] + 0.1


def test_stage_time_split_sums_epoch_and_eval_seconds() -> None:
    history = [{"epoch_s": 2.0}, {"epoch_s": 3.0, "eval_s": 1.5}, {"epoch_s": 2.5}, {"epoch_s": 2.5, "eval_s": 0.5}]
    assert train_cli.stage_time_split(history, 13.0) == {"epochs": 4, "train_s": 10.0, "evals": 2, "eval_s": 2.0,
                                                          "other_s": 1.0}
    assert train_cli.stage_time_split([], 0.5)["other_s"] == 0.5


def test_one_call_equals_the_stages_run_one_at_a_time() -> None:
    """Every stage starts from train.seed, so pretrain -> align -> finetune in one call gives the same weights
    as three single-stage calls chained through pretrained_table / init_model (what `--stage X` does)."""
    exp, seqs = _small_exp(), _toy()
    val = ([s[:-1] for s in seqs], [s[-1] for s in seqs])
    seen: list[tuple[str, TrainResult, dict[str, torch.Tensor]]] = []

    def on_end(stage: str, res: TrainResult) -> None:
        seen.append((stage, res, {k: v.clone() for k, v in res.model.state_dict().items()}))

    full = train_model(seqs, 30, exp, val=val, progress=False, on_stage_end=on_end)
    pre = train_model(seqs, 30, exp, val=val, stages=("pretrain",), progress=False)
    align = train_model(seqs, 30, exp, val=val, stages=("align",), pretrained_table=pre.pretrained_table,
                        progress=False)
    align_state = {k: v.clone() for k, v in align.model.state_dict().items()}  # finetune trains it in place
    fin = train_model(seqs, 30, exp, val=val, stages=("finetune",), init_model=align.model, progress=False)
    assert [s for s, _, _ in seen] == list(STAGES)
    chained = [(pre, pre.model.state_dict()), (align, align_state), (fin, fin.model.state_dict())]
    for (stage, res, state), (alone, alone_state) in zip(seen, chained):
        assert res.stage_epochs == {stage: alone.epochs_run} == alone.stage_epochs
        assert {h["stage"] for h in res.history} == {stage} and res.best_metric == alone.best_metric
        assert all(torch.equal(v, w) for v, w in zip(state.values(), alone_state.values()))
    assert full.stage_epochs == {"pretrain": 1, "align": 2, "finetune": 1} and full.epochs_run == 4
    assert full.history == [h for _, res, _ in seen for h in res.history]
    assert full.model is seen[-1][1].model and torch.equal(full.pretrained_table, pre.pretrained_table)
    assert all(torch.equal(v, w) for v, w in zip(full.model.state_dict().values(), fin.model.state_dict().values()))


def test_stage_lists_are_checked_before_anything_trains() -> None:
    exp = _small_exp()
    assert check_stages(exp, None) == STAGES and check_stages(_small_exp("sasrec"), None) == ("finetune",)
    with pytest.raises(ConfigError, match="non-empty"):
        check_stages(exp, ())
    with pytest.raises(ConfigError, match="in that order"):
        check_stages(exp, ("align", "pretrain"))
    with pytest.raises(ConfigError, match="single stage"):
        check_stages(_small_exp("sasrec"), ("align",))
    called: list[str] = []
    with pytest.raises(ConfigError, match="stage-1 item table"):  # refused before any stage ran
        train_model(_toy(), 30, exp, stages=("align", "finetune"), progress=False,
                    on_stage_end=lambda stage, _res: called.append(stage))
    assert called == []


def test_history_logs_the_learning_rate_each_epoch_starts_at() -> None:
    """The epoch record's ``lr`` is the rate the epoch starts at (the cosine schedule steps per batch), so a stage's
    first epoch shows its configured rate and its last a positive one, not the 0 reached after the final step."""
    exp = _small_exp("sasrec")
    exp = exp.model_copy(update={"train": exp.train.model_copy(update={"finetune_epochs": 3, "lr": 0.004})})
    res = train_model(_toy(), 30, exp, progress=False)
    lrs = [rec["lr"] for rec in res.history]
    assert lrs[0] == pytest.approx(0.004) and len(lrs) == 3
    assert lrs[0] > lrs[1] > lrs[2] > 0.0
