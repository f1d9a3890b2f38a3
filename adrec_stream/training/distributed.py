"""Data-parallel training across processes (``torch.distributed`` + ``DistributedDataParallel``).

The stage loop (:func:`~adrec_stream.training.trainer.train_model`) takes a :class:`DistContext` to train one
model on several processes (one per device, started by ``torchrun``). The rule that keeps a distributed stage
equal to the single-process one:

- every rank builds the SAME global batches (same windows, same shuffling seed); rank r trains on its shard
  (:func:`shard_rows`: ``torch.tensor_split`` of the batch's rows into ``world_size`` near-equal contiguous
  parts), so the global batch size, the number of optimiser steps and the learning rate are those of the
  single-process stage (per-rank batch = ``batch_size / world_size``);
- the loss of a shard is weighted (:func:`shard_weights`) so that DDP's gradient average over the ranks is the
  gradient of the global batch's loss: ADRec's CE is a mean over the batch's non-padding target tokens
  (weight ``world_size · tokens_r / tokens``), its MSE a mean over the sequences with at least one target
  (weight ``world_size · sequences_r / sequences``); unweighted per-rank means would over-weight a rank whose
  shard holds short histories;
- decisions are collective: a non-finite loss on any rank ends the stage on every rank before the backward
  pass, and a stop request (time limit, shutdown) on any rank stops every rank at the same step.

What is left is float summation order and the random draws (dropout masks, ADRec's timesteps and noise),
which each rank makes for its own shard: a distributed stage is the same computation as the single-process
one with other random numbers (docs/incremental.md gives the measured difference).

Process-group setup comes from ``torchrun``'s environment variables (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT): :func:`init_from_env`.
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from adrec_stream.errors import ConfigError

#: torchrun's environment variables that :func:`init_from_env` reads
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistContext:
    """This process's place in an initialised process group.

    Attributes:
        rank: global rank (0 = the main rank: it reads the round's input, judges and writes the candidate).
        world_size: number of processes.
        local_rank: rank on this host (the CUDA device index on GPU hosts).
        backend: "gloo" or "nccl".
        device: the device this rank trains on (``cuda:<local_rank>`` or cpu).
    """

    rank: int
    world_size: int
    local_rank: int
    backend: str
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0."""
        return self.rank == 0

    def _comm_device(self) -> torch.device:
        return self.device if self.backend == "nccl" else torch.device("cpu")

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """Sum ``values`` (one float64 tensor) over the ranks; every rank gets the sums."""
        t = torch.tensor(values, dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return [float(x) for x in t.cpu()]

    def any(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is True on at least one (a collective: every rank must call it)."""
        return self.all_reduce_sum([1.0 if flag else 0.0])[0] > 0

    def broadcast_object(self, obj: Any = None) -> Any:
        """Rank 0's ``obj`` on every rank (``broadcast_object_list``: pickled, so only within the trusted group)."""
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0, device=self._comm_device())
        return box[0]

    def barrier(self) -> None:
        """Wait until every rank reaches this point."""
        if self.backend == "nccl":
            dist.barrier(device_ids=[self.device.index or 0])
        else:
            dist.barrier()


def resolve_backend(backend: str, device: torch.device) -> str:
    """``auto`` -> nccl on CUDA, gloo on the CPU; an explicit choice is checked against the device.

    Raises:
        ConfigError: nccl for a CPU device (NCCL only moves CUDA tensors), or an unknown backend.
    """
    if backend == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if backend not in ("gloo", "nccl"):
        raise ConfigError(f"distributed backend must be auto, gloo or nccl, got {backend!r}")
    if backend == "nccl" and device.type != "cuda":
        raise ConfigError("finetune.distributed.backend nccl needs CUDA devices (device is cpu); use gloo or auto")
    return backend


def init_from_env(backend: str, device_kind: str, timeout_s: float = 1800.0) -> DistContext:
    """Join the process group described by torchrun's environment (:data:`TORCHRUN_ENV`).

    Args:
        backend: "auto", "gloo" or "nccl" (:func:`resolve_backend`).
        device_kind: "cuda" (this rank trains on ``cuda:LOCAL_RANK``) or "cpu".
        timeout_s: collective timeout (seconds): a rank that waits longer for the others fails.

    Returns:
        :class:`DistContext`.

    Raises:
        ConfigError: a torchrun variable is missing (not started by torchrun), CUDA asked without CUDA or
            LOCAL_RANK beyond this host's CUDA devices, or a bad backend.
    """
    missing = [k for k in TORCHRUN_ENV if k not in os.environ]
    if missing:
        raise ConfigError(f"not started by torchrun: {', '.join(missing)} not set (run it through "
                          "python -m torch.distributed.run, see docs/incremental.md)")
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    if device_kind == "cuda":
        if not torch.cuda.is_available() or local >= torch.cuda.device_count():
            raise ConfigError(f"rank {rank}: LOCAL_RANK {local} needs CUDA device {local}, this host has "
                              f"{torch.cuda.device_count() if torch.cuda.is_available() else 0}")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    resolved = resolve_backend(backend, device)
    if not dist.is_initialized():
        dist.init_process_group(resolved, rank=rank, world_size=world,
                                timeout=_dt.timedelta(seconds=timeout_s),
                                device_id=device if device.type == "cuda" else None)
    return DistContext(rank, world, local, resolved, device)


def shutdown() -> None:
    """Leave the process group (no-op when none is initialised)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def shard_rows(batch_rows: int, rank: int, world_size: int) -> torch.Tensor:
    """Row indices of ``rank``'s shard of a batch of ``batch_rows`` rows: ``torch.tensor_split`` into
    ``world_size`` contiguous parts whose sizes differ by at most one (LongTensor, possibly empty)."""
    return torch.tensor_split(torch.arange(batch_rows), world_size)[rank]


def shard_weights(targets: torch.Tensor, rows: torch.Tensor, world_size: int) -> tuple[float, float]:
    """Loss weights of a shard so that the mean over ranks of the weighted shard losses is the global batch's loss.

    Args:
        targets: (B, L) long, the whole global batch's targets (0 = padding).
        rows: the shard's row indices (:func:`shard_rows`).
        world_size: number of ranks.

    Returns:
        (ce_weight, mse_weight): ``world_size · tokens(shard) / tokens(batch)`` for the token-mean CE and
        ``world_size · sequences(shard) / sequences(batch)`` (sequences with >= 1 target) for the
        sequence-mean MSE; 0 where the batch has none.
    """
    keep = targets != 0
    tokens, seqs = int(keep.sum()), int(keep.any(dim=1).sum())
    sk = keep[rows]
    ce_w = world_size * int(sk.sum()) / tokens if tokens else 0.0
    mse_w = world_size * int(sk.any(dim=1).sum()) / seqs if seqs else 0.0
    return ce_w, mse_w


class ShardLoss(torch.nn.Module):
    """The model's training loss on a shard, weighted by :func:`shard_weights`; the module DDP wraps (DDP only
    synchronises gradients of a forward that went through it, and the model's ``loss`` is not its ``forward``).

    ``forward(history (b, L), targets (b, L), ce_weight, mse_weight)`` returns
    ``{"loss": weighted scalar to backpropagate, "ce": weighted CE, "mse": weighted MSE}`` (the last two detached):
    ADRec ``0.5·(w_ce·CE + w_mse·MSE)`` (from ``loss_terms``); a model without ``loss_terms`` (SASRec+: the loss is
    the token-mean CE) ``w_ce·loss``.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, history: torch.Tensor, targets: torch.Tensor, ce_weight: float,
                mse_weight: float) -> dict[str, torch.Tensor]:
        if hasattr(self.model, "loss_terms"):
            ce, mse = self.model.loss_terms(history, targets)
            loss = 0.5 * (ce_weight * ce + mse_weight * mse)
            return {"loss": loss, "ce": (ce_weight * ce).detach(), "mse": (mse_weight * mse).detach()}
        out = self.model.loss(history, targets)
        return {"loss": ce_weight * out["loss"], "ce": (ce_weight * out["ce"]).detach(),
                "mse": (mse_weight * out["mse"]).detach()}
