"""Experiment YAML configs: shipped defaults, unknown / ill-typed keys refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from adrec_stream.errors import ConfigError
from adrec_stream.training.config import ExperimentConfig, experiment_from_dict, load_experiment

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_shipped_adrec_config_has_paper_defaults() -> None:
    exp = load_experiment(CONFIGS / "adrec.yaml")
    assert exp.model.kind == "adrec" and exp.model.positional is False and exp.model.diffusion_steps == 32
    t = exp.train
    assert (t.lr, t.weight_decay, t.batch_size, t.align_epochs, t.eval_every, t.patience, t.seed) == (
        1e-3, 1e-5, 512, 5, 5, 4, 2025)
    assert t.metric == "NDCG@10" and t.lr_schedule == "cosine"
    assert exp.stages() == ("pretrain", "align", "finetune")


def test_shipped_sasrec_config_is_single_stage_with_positions() -> None:
    exp = load_experiment(CONFIGS / "sasrec.yaml")
    assert exp.model.kind == "sasrec" and exp.model.positional is True
    assert exp.stages() == ("finetune",)


def test_shipped_sasrec_cpu_config_shuffles_plainly() -> None:
    """Best validated ml-100k settings (config comment): plain shuffling (length bucketing fixed the batches and cost
    a fifth of test NDCG@10), the reference SASRec's N(0, 0.1²) init and Dropout(LN(x)) input layer."""
    exp = load_experiment(CONFIGS / "sasrec-cpu.yaml")
    assert exp.model.kind == "sasrec" and exp.train.bucket_by_length is False
    assert exp.model.init_std == 0.1 and exp.model.input_order == "norm_dropout"  # the reference SASRec's
    assert (exp.train.eval_every, exp.train.patience) == (1, 8)  # 3-seed validation mean 6.31 -> 6.49


def test_round_trip_through_a_checkpoint_dict() -> None:
    exp = load_experiment(CONFIGS / "adrec.yaml", {"train.finetune_epochs": 7})
    again = experiment_from_dict(exp.model_dump(mode="json"))
    assert again == exp and again.train.finetune_epochs == 7


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("train:\n  learning_rate: 0.1\n", "train.learning_rate: unknown key"),
        ("model:\n  hidden: 64\n", "model.hidden: unknown key"),
        ("train:\n  batch_size: big\n", "train.batch_size"),
        ("train:\n  metric: MRR\n", "train.metric"),
        ("train:\n  bucket_by_length: 'yes'\n", "train.bucket_by_length"),
        ("optimizer: adam\n", "optimizer: unknown key"),
    ],
)
def test_unknown_or_ill_typed_keys_raise(tmp_path: Path, text: str, fragment: str) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_experiment(f)
    assert fragment in str(info.value) and str(f) in str(info.value)


def test_yaml_ints_are_accepted_for_floats(tmp_path: Path) -> None:
    f = tmp_path / "ok.yaml"
    f.write_text("train:\n  lr: 1\n  weight_decay: 0\n")
    exp = load_experiment(f)
    assert exp.train.lr == 1.0 and isinstance(exp.train.lr, float)
    assert exp.train.stage_lr("pretrain") == 1.0
    assert ExperimentConfig().train.stage_epochs("align") == 5
