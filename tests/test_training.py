"""Three-stage training harness: real freezing in stage 2, early stopping, best-weight selection,
the streaming fine-tune, and a short ml-100k run that beats popularity on validation NDCG@10."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from adrec_stream.data.adrec_pkl import load_adrec_dataset
from adrec_stream.data.batching import loo_histories
from adrec_stream.errors import ConfigError, TrainingDivergedError
from adrec_stream.evaluation.metrics import summarize, target_rank_counts, tie_metrics
from adrec_stream.evaluation.offline import popularity_scores
from adrec_stream.model import ModelConfig, build_model
from adrec_stream.runtime import resolve_device
from adrec_stream.training import trainer
from adrec_stream.training.config import ExperimentConfig, TrainConfig
from adrec_stream.training.trainer import train_model

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "adrec"


def _small_exp(kind: str = "adrec", **train: object) -> ExperimentConfig:
    model = ModelConfig(kind=kind, hidden_size=16, num_heads=2, max_len=8, diffusion_steps=4,
                        positional=kind == "sasrec")
    base = dict(batch_size=8, pretrain_epochs=1, align_epochs=1, finetune_epochs=1, eval_every=1, patience=2)
    base.update(train)
    return ExperimentConfig(model=model, train=TrainConfig(**base))


def _toy_sequences(n_users: int = 40, n_items: int = 30, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [[int(x) for x in rng.integers(1, n_items + 1, size=int(rng.integers(3, 12)))] for _ in range(n_users)]


def test_align_freezes_the_item_table_for_real(monkeypatch: pytest.MonkeyPatch) -> None:
    exp = _small_exp(weight_decay=0.5)  # a large decay would visibly shrink a table left in the optimiser
    seqs = _toy_sequences()
    model = build_model(30, exp.model)
    table = torch.randn(31, 16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimised: list[list[torch.Tensor]] = []
    real_adam = torch.optim.Adam

    def spy_adam(params, **kw):
        params = list(params)
        optimised.append(params)
        return real_adam(params, **kw)

    monkeypatch.setattr(torch.optim, "Adam", spy_adam)
    res = train_model(seqs, 30, exp, stages=("align",), init_model=model, pretrained_table=table, progress=False)
    assert res.model is model
    assert torch.equal(model.item_emb.weight.detach(), table)  # bit-identical after the stage-2 steps
    assert all(p is not model.item_emb.weight for p in optimised[0])
    changed = [k for k, v in model.state_dict().items() if k != "item_emb.weight" and not torch.equal(v, before[k])]
    assert len(changed) > 10
    assert model.item_emb.weight.requires_grad  # unfrozen again for stage 3



def test_align_reference_decay_shrinks_the_table_by_lr_per_step() -> None:
    """train.align_table "reference_decay" (the reference code's behaviour, kept only for comparison): the table
    gets no gradient from the loss but sits in Adam with a zero gradient, so the L2 term wd·θ, normalised by
    Adam, moves every entry towards 0 by ≈ lr per step, whatever the decay value."""
    seqs = _toy_sequences()  # 40 users, batch 8 -> 5 steps per epoch
    table = torch.randn(31, 16)
    table[0] = 0.0
    exp = _small_exp(align_table="reference_decay", align_epochs=2, lr=0.01, lr_schedule="constant")
    model = build_model(30, exp.model)
    train_model(seqs, 30, exp, stages=("align",), init_model=model, pretrained_table=table, progress=False)
    after = model.item_emb.weight.detach()
    shrink = table[1:].abs() - after[1:].abs()
    assert torch.equal(after[0], torch.zeros(16))
    big = table[1:].abs() > 0.2  # entries far from 0 move the full ≈ 10 steps × lr = 0.1
    assert torch.allclose(shrink[big], torch.full_like(shrink[big], 0.1), atol=0.01)
    assert torch.all(torch.sign(after[1:][big]) == torch.sign(table[1:][big]))
    # "frozen" (default) on the same run leaves the table bit-identical
    model = build_model(30, _small_exp(align_epochs=2, lr=0.01, lr_schedule="constant").model)
    train_model(seqs, 30, _small_exp(align_epochs=2, lr=0.01, lr_schedule="constant"), stages=("align",),
                init_model=model, pretrained_table=table, progress=False)
    assert torch.equal(model.item_emb.weight.detach(), table)


def test_init_std_gives_the_reference_initialisation() -> None:
    """model.init_std / train.pretrain_init_std: every Linear and Embedding weight ~ N(0, σ²), Linear biases 0,
    padding row 0; only the stage-1 model gets it from train.pretrain_init_std."""
    cfg = ModelConfig(kind="sasrec", positional=True, init_std=0.1)
    model = build_model(500, cfg)
    lin = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    w = torch.cat([m.weight.detach().flatten() for m in lin] + [model.item_emb.weight[1:].detach().flatten()])
    assert abs(float(w.std()) - 0.1) < 0.002 and abs(float(w.mean())) < 0.002
    assert all(m.bias is None or torch.count_nonzero(m.bias) == 0 for m in lin)
    assert torch.count_nonzero(model.item_emb.weight[0]) == 0
    default = build_model(500, ModelConfig(kind="sasrec", positional=True))
    assert abs(float(default.item_emb.weight[1:].detach().std()) - 0.02) < 0.001
    exp = _small_exp(pretrain_init_std=0.1)
    assert trainer.pretrain_config(exp).init_std == 0.1 and exp.model.init_std is None
    with pytest.raises(ValueError, match="init_std"):
        ModelConfig(init_std=0.0)


def test_a_non_finite_loss_stops_training_with_a_clear_error() -> None:
    """A corrupt (NaN) stage-1 table made every loss NaN, and training went on selecting "best" NaN models
    (a fresh user's report): the first non-finite loss now raises, naming the stage and epoch."""
    table = torch.full((31, 16), float("nan"))
    exp = _small_exp()
    model = build_model(30, exp.model)
    with pytest.raises(TrainingDivergedError, match=r"stage align, epoch 1: training diverged: the loss is nan"):
        train_model(_toy_sequences(), 30, exp, stages=("align",), init_model=model, pretrained_table=table,
                    progress=False)
    with pytest.raises(TrainingDivergedError, match=r"stage finetune, epoch 1: training diverged"):
        train_model(_toy_sequences(), 30, exp, stages=("finetune",), init_model=model, progress=False)

def test_align_without_table_and_bad_stage_orders_raise() -> None:
    exp = _small_exp()
    with pytest.raises(ConfigError, match="pretrain"):
        train_model(_toy_sequences(), 30, exp, stages=("align",), progress=False)
    with pytest.raises(ConfigError, match="order"):
        train_model(_toy_sequences(), 30, exp, stages=("finetune", "pretrain"), progress=False)
    with pytest.raises(ConfigError, match="single stage"):
        train_model(_toy_sequences(), 30, _small_exp("sasrec"), stages=("pretrain",), progress=False)


def test_all_stages_keep_pretrained_table_and_record_history() -> None:
    exp = _small_exp()
    seqs = _toy_sequences()
    val = ([s[:-1] for s in seqs], [s[-1] for s in seqs])
    res = train_model(seqs, 30, exp, val=val, progress=False)
    assert res.stage_epochs == {"pretrain": 1, "align": 1, "finetune": 1}
    assert type(res.model).__name__ == "ADRec" and res.pretrained_table.shape == (31, 16)
    assert [h["stage"] for h in res.history] == ["pretrain", "align", "finetune"]
    assert res.best_metric == res.history[-1]["val_NDCG@10"] and res.epochs_run == 3


def test_pretrain_positional_gives_stage_one_learned_positions() -> None:
    """train.pretrain_positional: the stage-1 SASRec has position embeddings (the reference's pretraining
    model does); ADRec itself still has none, and only the item table is carried over."""
    assert trainer.pretrain_config(_small_exp()).positional is False
    exp = _small_exp(pretrain_positional=True)
    cfg = trainer.pretrain_config(exp)
    assert cfg.kind == "sasrec" and cfg.positional is True and exp.model.positional is False
    res = train_model(_toy_sequences(), 30, exp, stages=("pretrain", "align"), progress=False)
    assert res.model.pos_emb is None and torch.equal(res.model.item_emb.weight, res.pretrained_table)


def test_early_stopping_keeps_the_best_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    values = iter([0.1, 0.3, 0.2, 0.25, 0.9])  # best at epoch 2; two evals without improvement -> stop at 4
    snapshots: dict[int, torch.Tensor] = {}

    def fake_eval(model, hists, targets, **_):
        value = next(values)
        snapshots[len(snapshots) + 1] = model.item_emb.weight.detach().clone()
        return {"NDCG@10": value, "n_users": len(targets)}

    monkeypatch.setattr(trainer, "evaluate_model", fake_eval)
    seqs = _toy_sequences()
    res = train_model(seqs, 30, _small_exp("sasrec", finetune_epochs=10), val=([[1]], [2]), progress=False)
    assert res.stage_epochs == {"finetune": 4} and res.best_epoch == 2 and res.best_metric == 0.3
    assert torch.equal(res.model.item_emb.weight, snapshots[2])
    assert not torch.equal(snapshots[2], snapshots[4])


def test_any_metric_selection_follows_the_reference_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    """metric "any": an evaluation where only HR@20 improves still resets patience and takes the weights."""
    evals = iter([(0.10, 0.20), (0.12, 0.19), (0.11, 0.25), (0.11, 0.24), (0.10, 0.23), (0.9, 0.9)])
    snapshots: dict[int, torch.Tensor] = {}

    def fake_eval(model, hists, targets, **_):
        ndcg, hr = next(evals)
        snapshots[len(snapshots) + 1] = model.item_emb.weight.detach().clone()
        return {"NDCG@10": ndcg, "HR@20": hr, "n_users": len(targets)}

    monkeypatch.setattr(trainer, "evaluate_model", fake_eval)
    exp = _small_exp("sasrec", finetune_epochs=10, metric="any")
    res = train_model(_toy_sequences(), 30, exp, val=([[1]], [2]), progress=False)
    # epoch 2 improves NDCG@10 only, epoch 3 HR@20 only (NDCG@10 fell): both count; 4 and 5 improve nothing
    assert res.stage_epochs == {"finetune": 5} and res.best_epoch == 3
    assert res.best_metric == 0.11  # NDCG@10 of the selected epoch is what "best" reports
    assert torch.equal(res.model.item_emb.weight, snapshots[3])
    # the single-metric rule on the same sequence stops earlier and keeps epoch 2
    evals = iter([(0.10, 0.20), (0.12, 0.19), (0.11, 0.25), (0.11, 0.24), (0.9, 0.9)])
    snapshots.clear()
    res = train_model(_toy_sequences(), 30, _small_exp("sasrec", finetune_epochs=10), val=([[1]], [2]),
                      progress=False)
    assert res.stage_epochs == {"finetune": 4} and res.best_epoch == 2 and res.best_metric == 0.12


def test_stage_time_budget_stops_after_a_final_evaluation(monkeypatch: pytest.MonkeyPatch) -> None:
    """train.stage_time_budget_s: the epoch that ends past the budget is validated (even off the eval_every
    grid) and the stage stops there with the best weights; the budget counts per stage."""
    clock = iter(range(0, 10_000, 10))  # every perf_counter() call advances 10 "seconds"
    monkeypatch.setattr(trainer.time, "perf_counter", lambda: float(next(clock)))
    evals: list[int] = []

    def fake_eval(model, hists, targets, **_):
        evals.append(len(evals) + 1)
        return {"NDCG@10": 0.1 * len(evals), "n_users": len(targets)}

    monkeypatch.setattr(trainer, "evaluate_model", fake_eval)
    exp = _small_exp("sasrec", finetune_epochs=50, eval_every=5, stage_time_budget_s=45)
    res = train_model(_toy_sequences(), 30, exp, val=([[1]], [2]), progress=False)
    assert res.stage_epochs == {"finetune": 2}  # budget checks at "30 s" (epoch 1) and "60 s" (epoch 2): stop at 2
    assert [h["epoch"] for h in res.history if "val_NDCG@10" in h] == [2] and res.best_epoch == 2


def test_all_windows_train_on_every_window_of_a_long_sequence() -> None:
    seqs = _toy_sequences()  # 3..11 items, max_len 8: users with 10 or 11 items have a second window
    extra = sum(len(s) > 9 for s in seqs)
    assert extra > 0
    steps = {w: train_model(seqs, 30, _small_exp("sasrec", batch_size=1, windows=w), progress=False).steps
             for w in ("last", "all")}
    assert steps == {"last": 40, "all": 40 + extra}


def test_same_seed_gives_identical_weights() -> None:
    exp = _small_exp("sasrec", finetune_epochs=2, seed=7)
    a = train_model(_toy_sequences(), 30, exp, progress=False).model
    b = train_model(_toy_sequences(), 30, exp, progress=False).model
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_stage3_on_a_given_model_trains_everything_and_stops_at_max_steps_or_when_asked() -> None:
    """The streaming fine-tune round's stage 3 (train_model with stages=("finetune",) on the serving model):
    bounded by train.max_steps, and by should_stop between two steps."""
    exp = _small_exp(finetune_epochs=3)
    exp = exp.model_copy(update={"train": exp.train.model_copy(update={"max_steps": 7, "lr_schedule": "constant"})})
    model = build_model(30, exp.model)
    model.item_emb.weight.requires_grad_(False)  # e.g. left frozen by a caller: stage 3 trains it anyway
    before = model.item_emb.weight.detach().clone()
    res = train_model(_toy_sequences(), 30, exp, stages=("finetune",), init_model=model, progress=False)
    assert res.model is model and res.steps == 7 and res.stop_reason == "max_steps"
    assert [h["steps"] for h in res.history] == [5, 2] and not model.training
    assert not torch.equal(before, model.item_emb.weight)
    polls: list[int] = []

    def stop_after_three() -> bool:
        polls.append(1)
        return len(polls) > 3

    res = train_model(_toy_sequences(), 30, exp, stages=("finetune",), init_model=model, progress=False,
                      should_stop=stop_after_three)
    assert res.steps == 3 and res.stop_reason == "stopped" and res.epochs_run == 1


def test_resolve_device() -> None:
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA"):
            resolve_device("cuda")
    with pytest.raises(ConfigError):
        resolve_device("tpu9")


def test_short_ml100k_run_beats_popularity() -> None:
    """A few epochs of all three stages on the real ml-100k split beat the train-popularity ranking."""
    torch.set_num_threads(2)
    ds = load_adrec_dataset(DATA / "ml-100k" / "dataset.pkl")
    val = loo_histories(ds.train, ds.val, ds.test, "val", 20)
    pop = summarize(tie_metrics(*target_rank_counts(popularity_scores(ds.item_counts(), ds.n_users),
                                                    torch.tensor(val[1]))))
    exp = ExperimentConfig(
        model=ModelConfig(hidden_size=64, num_heads=2, max_len=20, diffusion_steps=8),
        train=TrainConfig(batch_size=128, lr=2e-3, pretrain_epochs=10, align_epochs=1, finetune_epochs=6,
                          eval_every=3, patience=1),
    )
    # speed is measured by `adrec-stream bench train`, not asserted here (docs/benchmarks.md)
    res = train_model(ds.train, ds.n_items, exp, val=val, progress=False)
    assert res.stage_epochs == {"pretrain": 10, "align": 1, "finetune": 6}
    assert res.best_metric > pop["NDCG@10"]  # popularity: 0.0208 on this split
