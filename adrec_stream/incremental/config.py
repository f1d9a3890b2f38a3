"""Settings of the fine-tune worker: the ``finetune:`` section of ``configs/stream.yaml``.

Durations are seconds; every field is validated on load (unknown keys and out-of-range values are refused with
the key named, see :class:`~adrec_stream.config.StrictModel`).
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, model_validator

from adrec_stream.config import StrictModel

_PosFloat = Annotated[float, Field(strict=False, gt=0, allow_inf_nan=False)]
_NonNegFloat = Annotated[float, Field(strict=False, ge=0, allow_inf_nan=False)]
_Fraction = Annotated[float, Field(strict=False, gt=0, lt=1)]


class DistributedConfig(StrictModel):
    """``finetune.distributed``: run each fine-tune round data-parallel under ``torchrun`` (docs/incremental.md).

    ``nproc_per_node``: processes (ranks) on the fine-tune worker's host, one per GPU on CUDA; ``nnodes``: hosts
    (the worker's host is node 0; the others run ``adrec-stream finetune-round --follow``). World size =
    ``nproc_per_node · nnodes``; 1 (the default) = the round runs in the worker's process as before.
    ``backend``: auto (nccl on CUDA, gloo on the CPU), gloo or nccl. ``master_addr`` / ``master_port``: where
    rank 0's rendezvous listens when ``nnodes > 1`` (a single host uses ``torchrun --standalone``, which picks a
    free local port). ``launch_timeout_s``: seconds the worker waits for a round's job beyond
    ``finetune.max_seconds`` (process start-up, rendezvous, judging) before it ends the job; also the job's
    collective timeout.

    The round's global batch is ``finetune.batch_size`` windows (each rank trains on ``batch_size / world_size``
    of them), so the number of steps and the learning rate are the single-process round's.
    """

    nproc_per_node: int = Field(1, ge=1)
    nnodes: int = Field(1, ge=1)
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    master_addr: str = Field("127.0.0.1", min_length=1)
    master_port: int = Field(29500, ge=1, le=65535)
    launch_timeout_s: _PosFloat = 300.0

    @property
    def world_size(self) -> int:
        """Number of ranks (``nproc_per_node · nnodes``)."""
        return self.nproc_per_node * self.nnodes

    @property
    def enabled(self) -> bool:
        """Whether rounds run under torchrun (world size > 1)."""
        return self.world_size > 1


class FinetuneConfig(StrictModel):
    """When and how the fine-tune worker runs ADRec's stage 3 on fresh windows (see docs/incremental.md).

    Schedule:
        ``interval_s``: a round starts at the latest this long after the previous one (if there is
        anything new); ``min_new_events``: or as soon as this many sequence updates arrived since it.
        ``min_round_events``: a round needs at least this many fresh clicks (since the serving version's
        training window), else it is skipped until more arrive.
    Window:
        ``max_window_events``: the freshest clicks kept for a round (older fresh ones are dropped from the
        window, never from the users' histories); ``replay_ratio``: users with no fresh click sampled per
        fresh user, trained on their stored window (against catastrophic forgetting); ``holdout_fraction``
        of the fresh clicks (the newest, at least ``holdout_min_events``, at most ``holdout_max_events``)
        is held out for the publish guard and trained on in the next round.
    Training (stage 3: every parameter, CE + MSE, one backward per batch, Adam with constant ``lr``):
        ``epochs`` passes over the window, stopped early at ``max_steps`` optimiser steps or ``max_seconds``
        of training; ``batch_size`` windows per step; ``max_grad_norm`` clipping (None = off).
        ``new_item_init``: how rows of items first seen in the window start: ``context_mean`` (mean of the
        rows of the items clicked right before them, see :func:`~adrec_stream.incremental.round.grow_vocabulary`)
        or ``normal`` (N(0, 0.02²) like a fresh table).
    Guard and publish:
        ``divergence_loss_ratio``: the round is treated as diverged (like a NaN loss) when the window's loss after
        training exceeds this multiple of the loss before; ``tolerance``: a candidate is published only if its
        held-out NDCG@10 is at least the serving model's
        minus this (absolute, fraction in [0, 1]); ``keep_versions``: registry versions kept (the one LATEST
        names is always kept).
    Device:
        ``device``: auto (CUDA when present, else CPU), cpu, cuda[:N]; ``amp``: bf16 autocast on CUDA (no
        effect on CPU); ``threads``: torch CPU threads of the worker; ``nice``: added to the worker's CPU
        niceness at start (0-19; rounds then yield the CPU to ingest and score workers on the same host).
    Scale-out:
        ``distributed``: :class:`DistributedConfig` (several processes / GPUs / hosts per round).
    """

    interval_s: _PosFloat = 300.0
    min_new_events: int = Field(5000, ge=1)
    min_round_events: int = Field(50, ge=2)
    max_window_events: int = Field(20000, ge=2)
    replay_ratio: _NonNegFloat = 0.5
    holdout_fraction: _Fraction = 0.1
    holdout_min_events: int = Field(10, ge=1)
    holdout_max_events: int = Field(2000, ge=1)
    epochs: int = Field(8, ge=1)
    max_steps: int = Field(400, ge=1)
    max_seconds: _PosFloat = 45.0
    batch_size: int = Field(128, ge=1)
    lr: _PosFloat = 5e-4
    weight_decay: _NonNegFloat = 0.0
    max_grad_norm: _PosFloat | None = 1.0
    new_item_init: Literal["context_mean", "normal"] = "context_mean"
    divergence_loss_ratio: Annotated[float, Field(strict=False, gt=1, allow_inf_nan=False)] = 1.5
    tolerance: Annotated[float, Field(strict=False, ge=0, le=1)] = 0.002
    keep_versions: int = Field(5, ge=1)
    eval_batch_size: int = Field(256, ge=1)
    device: str = "auto"
    amp: bool = True
    threads: int = Field(1, ge=1)
    nice: int = Field(10, ge=0, le=19)
    seed: int = 2025
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)

    @model_validator(mode="after")
    def _check(self) -> FinetuneConfig:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        d = self.distributed
        if d.enabled:
            if self.batch_size < d.world_size:
                raise ValueError(f"batch_size ({self.batch_size}) must be at least the distributed world size "
                                 f"({d.world_size} = nproc_per_node x nnodes): every rank trains on batch_size / "
                                 "world_size windows of each step")
            if d.backend == "nccl" and self.device == "cpu":
                raise ValueError("distributed.backend nccl needs CUDA devices, but device is cpu: use gloo or auto")
            if re.fullmatch(r"cuda:\d+", self.device):
                raise ValueError(f"device {self.device!r} names one GPU, but a distributed round puts rank i on "
                                 "cuda:<local rank i>: use device cuda or auto")
        if self.holdout_min_events > self.holdout_max_events:
            raise ValueError(f"holdout_min_events ({self.holdout_min_events}) must not exceed holdout_max_events "
                             f"({self.holdout_max_events})")
        if self.min_round_events <= self.holdout_min_events:
            raise ValueError(f"min_round_events ({self.min_round_events}) must exceed holdout_min_events "
                             f"({self.holdout_min_events}): a round needs clicks to train on besides the held-out ones")
        return self
