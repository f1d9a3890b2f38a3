"""Experiment configuration: ``model`` (:class:`~adrec_stream.model.config.ModelConfig`) + ``train``.

Loaded from YAML (``configs/adrec.yaml``, ``configs/sasrec.yaml``) with unknown or ill-typed keys
refused (:class:`~adrec_stream.errors.ConfigError`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from adrec_stream.config import StrictModel, load_config, parse_config
from adrec_stream.model.config import ModelConfig
from adrec_stream.model.losses import DEFAULT_CHUNK_ROWS

STAGES: tuple[str, ...] = ("pretrain", "align", "finetune")

LooseFloat = Field(strict=False)  # accept YAML ints (e.g. ``lr: 1``) for float fields


class TrainConfig(StrictModel):
    """Optimisation and model-selection settings (paper Sec. 4.1; reference defaults).

    Epoch budgets are per stage: ``pretrain_epochs`` (SASRec without positions, full-softmax CE,
    only its item table is kept), ``align_epochs`` (ADRec with that table frozen),
    ``finetune_epochs`` (everything trained; also the single stage of the SASRec+ baseline).
    ``pretrain_lr`` / ``align_lr`` / ``finetune_lr`` override ``lr`` for one stage when set.
    Early stopping: every ``eval_every`` epochs the validation ``metric`` (e.g. "NDCG@10") is
    computed; after ``patience`` evaluations without improvement the stage stops and the best
    weights are kept. ``metric: any`` is the reference code's rule: an evaluation counts as an
    improvement (new selected weights, patience reset) when ANY of the six validation metrics
    exceeds its own best so far; the test figures still come from that one checkpoint.
    ``val_users`` evaluates a fixed random subset of users (None = all).
    ``bucket_by_length``: sort the shuffled windows by length within spans of 32 batches before cutting batches
    (little padding, much faster on short-sequence data). It also fixes the batches: when a span covers the
    data set, the batches are a function of history length, nearly the same every epoch and length-homogeneous
    (ml-100k, 938 windows: batch 512 gives the same two batches every epoch; batch 128 the same short-history
    batches). False = plain shuffling, a new random batch composition each epoch (the reference's DataLoader;
    each batch is still trimmed to its longest window). On ml-100k SASRec+ with batch 128 bucketing cost about
    a fifth of test NDCG@10 (docs in ``configs/sasrec-cpu.yaml``).
    ``stage_time_budget_s``: wall-clock limit per stage (seconds); when an epoch ends past it, the stage
    is validated once more (if that epoch was not an evaluation epoch) and stopped, keeping the best
    weights — a CPU-budget run then still ends with a selected checkpoint. None = no limit.
    ``pretrain_positional``: give the stage-1 SASRec learned (right-aligned) position embeddings, as
    the reference code's pretraining model has; only its item table is kept either way.
    ``pretrain_init_std``: initialise the stage-1 SASRec's Linear and Embedding weights with N(0, σ²), σ in (0, 1]
    (``model.init_std``; the reference's pretraining SASRec uses 0.1). None = the model's own setting.
    ``max_steps``: at most this many optimiser steps per stage (None = no limit; the streaming fine-tune round
    sets it). ``amp``: bf16 autocast of the forward and loss on CUDA (no effect on CPU).
    ``align_table``: "frozen" (default) = the stage-2 item table gets no gradient and is not in the
    optimiser; "reference_decay" = it still gets no gradient but IS in the optimiser with a zero
    gradient, so Adam's L2 weight decay (``weight_decay`` added to the zero gradient, then normalised)
    moves every entry towards 0 by about ``align_lr`` per step: the reference code's behaviour (its
    PCGrad wrapper hands zero gradients to the "frozen" table). Not the default (on sports it was lower on
    validation), but the beauty and ml-100k rows of docs/results.md use it: it had the higher validation there.
    ``micro_batches``: split every batch into this many parts and accumulate their gradients (one optimiser step per
    batch, the same update up to float rounding and the order of random draws; about 1/parts of the activation
    memory, the training step's peak-memory lever). ``ce_chunk_rows``: rows per chunk of the full-softmax CE
    (:func:`adrec_stream.model.losses.full_softmax_cross_entropy`; 0 = one (M, N) logits matrix).
    ``windows``: "last" (default; the paper and the reference code) = one training window per user, its last
    ``max_len + 1`` items; "all" = every user's whole training sequence cut into windows of ``max_len + 1`` items
    from its end (:func:`adrec_stream.data.batching.training_windows`), so users longer than that also train on
    their older items (on ml-100k one window per user leaves 41 % of the training targets unused; the ml-100k rows
    of docs/results.md use "all").
    """

    lr: float = Field(1e-3, strict=False, gt=0)
    weight_decay: float = Field(1e-5, strict=False, ge=0)
    batch_size: int = Field(512, gt=0)
    pretrain_epochs: int = Field(100, ge=0)
    align_epochs: int = Field(5, ge=0)
    finetune_epochs: int = Field(500, ge=0)
    pretrain_lr: float | None = Field(None, strict=False, gt=0)
    align_lr: float | None = Field(None, strict=False, gt=0)
    finetune_lr: float | None = Field(None, strict=False, gt=0)
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    min_lr_ratio: float = Field(0.0, strict=False, ge=0, le=1)
    max_grad_norm: float | None = Field(None, strict=False, gt=0)
    eval_every: int = Field(5, gt=0)
    patience: int = Field(4, gt=0)
    stage_time_budget_s: float | None = Field(None, strict=False, gt=0)
    metric: Literal["HR@5", "NDCG@5", "HR@10", "NDCG@10", "HR@20", "NDCG@20", "any"] = "NDCG@10"
    val_users: int | None = Field(None, gt=0)
    eval_batch_size: int = Field(512, gt=0)
    bucket_by_length: bool = True
    seed: int = 2025
    max_steps: int | None = Field(None, gt=0)
    amp: bool = False
    pretrain_positional: bool = False
    pretrain_init_std: float | None = Field(None, strict=False, gt=0, le=1, allow_inf_nan=False)
    align_table: Literal["frozen", "reference_decay"] = "frozen"
    micro_batches: int = Field(1, gt=0)
    ce_chunk_rows: int = Field(DEFAULT_CHUNK_ROWS, ge=0)
    windows: Literal["last", "all"] = "last"

    def stage_lr(self, stage: str) -> float:
        """Learning rate of ``stage`` (its override, else ``lr``)."""
        return getattr(self, f"{stage}_lr", None) or self.lr

    def stage_epochs(self, stage: str) -> int:
        """Epoch budget of ``stage``."""
        return int(getattr(self, f"{stage}_epochs"))


class ExperimentConfig(StrictModel):
    """A full experiment: the model architecture and the training schedule."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    def stages(self) -> tuple[str, ...]:
        """Stages this model kind trains with: ADRec all three; SASRec+ only "finetune"."""
        return STAGES if self.model.kind == "adrec" else ("finetune",)


def load_experiment(path: str | Path, overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """Load an experiment YAML (dotted ``overrides`` applied first).

    Raises:
        ConfigError: missing file, bad YAML, unknown keys, or ill-typed values.
    """
    return load_config(path, ExperimentConfig, overrides)


def experiment_from_dict(data: dict[str, Any], source: str = "<checkpoint config>") -> ExperimentConfig:
    """Rebuild an :class:`ExperimentConfig` from ``model_dump()`` output (e.g. a checkpoint's config).

    Raises:
        ConfigError: unknown or ill-typed keys.
    """
    return parse_config(data, ExperimentConfig, source)
