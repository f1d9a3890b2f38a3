"""Three-stage training (paper Sec. 3.4) and the stage-3 fine-tune used by the streaming worker.

1. ``pretrain``: a SASRec without positions trained with full-softmax CE at every position;
   only its item table is kept.
2. ``align``: the table is loaded into ADRec and frozen for real (``requires_grad=False`` and
   left out of the optimiser, so weight decay cannot shrink it); the rest trains on CE + MSE.
   ``train.align_table: reference_decay`` reproduces the reference code instead (table in the optimiser
   with zero gradients, shrunk by weight decay), for comparisons only.
3. ``finetune``: everything trains with the same loss. The SASRec+ baseline trains only this stage.

:func:`train_model` is the one owner of the stage sequence: offline training (``adrec-stream train``,
which saves a checkpoint per stage through ``on_stage_end``) and the demo both run their stages
through it. Each stage starts from ``train.seed`` (Python, NumPy, torch and the shuffling RNG are
re-seeded), so running the stages in one call gives the same weights as running them one call at a
time with the previous stage's output passed on. The streaming fine-tune worker runs stage 3 through it
too (:mod:`adrec_stream.incremental.round`: ``stages=("finetune",)`` on the serving model, bounded by
``train.max_steps`` and ``should_stop``).

Each stage: Adam (lr, weight decay), cosine LR over the stage's epoch budget, one backward of the
model's combined loss per batch, validation every ``eval_every`` epochs on ``metric`` (when
validation data is given), early stop after ``patience`` evaluations without improvement, and the
best weights restored at the end.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from adrec_stream.data.batching import training_windows, window_batches
from adrec_stream.errors import ConfigError, TrainingDivergedError
from adrec_stream.evaluation.offline import evaluate_model
from adrec_stream.logging import get_logger
from adrec_stream.model import SequenceModel, build_model
from adrec_stream.model.base import trim_left_padding
from adrec_stream.runtime import resolve_device, seed_everything
from adrec_stream.training.config import STAGES, ExperimentConfig
from adrec_stream.training.distributed import DistContext, ShardLoss, shard_rows, shard_weights


@dataclass
class TrainResult:
    """Outcome of :func:`train_model` (all stages of the call), or of one stage (``on_stage_end``).

    Attributes:
        model: the model of the last stage run, holding its best (validation-selected) weights.
        best_metric: best validation value of the selection metric in the last stage (None if
            no validation data was given).
        history: one dict per epoch (stage, epoch, loss, ce, mse, lr (the rate the epoch starts at), seconds, and the
            validation metrics on evaluation epochs).
        epochs_run: total epochs run over all stages.
        wall_s: wall-clock seconds of the whole call (of the stage, for a per-stage result).
        stage_epochs: epochs run per stage.
        best_epoch: epoch (within the last stage) of the selected weights.
        pretrained_table: the item table kept from stage 1 (FloatTensor (N+1, d)), if run or given.
        steps: optimiser steps of the last stage.
        stop_reason: why the last stage ended: "epochs" (budget done), "early_stop", "time_budget",
            "max_steps" (``train.max_steps``) or "stopped" (``should_stop``).
    """

    model: SequenceModel
    best_metric: float | None
    history: list[dict[str, Any]]
    epochs_run: int
    wall_s: float
    stage_epochs: dict[str, int] = field(default_factory=dict)
    best_epoch: int | None = None
    pretrained_table: torch.Tensor | None = None
    steps: int = 0
    stop_reason: str = "epochs"


def _cosine(total_steps: int, min_ratio: float):
    def factor(step: int) -> float:
        if total_steps <= 0:
            return 1.0
        frac = min(step, total_steps) / total_steps
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * frac))

    return factor


@dataclass
class _StageRun:
    epochs: int
    best_metric: float | None
    best_epoch: int | None
    steps: int = 0
    stop_reason: str = "epochs"


def autocast_context(device: torch.device, amp: bool):
    """bf16 autocast on CUDA when ``amp`` (safe without a gradient scaler: bf16 has fp32's exponent range;
    the softmax CE runs in fp32 under autocast); a no-op context elsewhere."""
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _run_stage(
    model: torch.nn.Module,
    windows: list[list[int]],
    exp: ExperimentConfig,
    stage: str,
    *,
    epochs: int,
    lr: float,
    schedule: str,
    val: tuple[list[list[int]], list[int]] | None,
    device: torch.device,
    progress: bool,
    log: Any,
    rng: np.random.Generator,
    history: list[dict[str, Any]],
    decay_only: Sequence[torch.nn.Parameter] = (),
    should_stop: Callable[[], bool] | None = None,
    distributed: DistContext | None = None,
) -> _StageRun:
    """Train the parameters of ``model`` that require grad for ``epochs`` epochs (see module doc).

    ``decay_only``: parameters without gradient that are nevertheless in the optimiser with a zero gradient
    (``train.align_table: reference_decay``), so that weight decay alone moves them. The stage also ends
    between two steps once ``train.max_steps`` optimiser steps are done ("max_steps") or ``should_stop()``
    returns True ("stopped"); the epoch then ends there (validated if validation data is given).

    ``distributed``: train data-parallel (:mod:`adrec_stream.training.distributed`): every rank cuts the same
    global batches, trains on its shard through ``DistributedDataParallel``; stop requests and the time budget
    are agreed by all ranks (any rank's request stops all at the same step); the logged losses are the global
    batch's."""
    tc = exp.train
    model.ce_chunk_rows = tc.ce_chunk_rows
    params = [p for p in model.parameters() if p.requires_grad]
    ddp = None
    if distributed is not None:
        from torch.nn.parallel import DistributedDataParallel  # noqa: PLC0415

        # construction broadcasts rank 0's parameters: every rank starts from the same weights
        ddp = DistributedDataParallel(ShardLoss(model), device_ids=[device.index] if device.type == "cuda" else None,
                                      forward_sync_buffers=False)  # buffers are constants, synced at init
    opt = torch.optim.Adam(params + list(decay_only), lr=lr, weight_decay=tc.weight_decay)
    steps_per_epoch = math.ceil(len(windows) / tc.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, _cosine(epochs * steps_per_epoch, tc.min_lr_ratio) if schedule == "cosine" else (lambda _s: 1.0)
    )
    best, best_state, best_epoch, bad = -math.inf, None, None, 0
    bests: dict[str, float] = {}  # best value so far of each validation metric
    epoch = steps = 0
    stop_reason = "epochs"
    stage_t0 = time.perf_counter()
    for epoch in range(1, epochs + 1):
        model.train()
        t0 = time.perf_counter()
        epoch_lr = opt.param_groups[0]["lr"]  # logged: the rate the epoch starts at (the schedule steps per batch)
        sums = {"loss": 0.0, "ce": 0.0, "mse": 0.0}
        n_batches = 0
        batches = window_batches(windows, tc.batch_size, shuffle=True, bucket=tc.bucket_by_length, rng=rng)
        for hist, tgt in tqdm(batches, total=steps_per_epoch, disable=not progress, desc=f"{stage} {epoch}/{epochs}",
                              leave=False):
            if tc.max_steps is not None and steps >= tc.max_steps:
                stop_reason = "max_steps"
            else:
                stop = should_stop is not None and should_stop()
                if distributed is not None:
                    stop = distributed.any(stop)  # every rank takes the same number of steps
                if stop:
                    stop_reason = "stopped"
            if stop_reason != "epochs":
                break
            try:
                with autocast_context(device, tc.amp):
                    if ddp is not None:
                        out = _ddp_step(ddp, distributed, opt, params, hist, tgt, device, tc.max_grad_norm, decay_only)
                    else:
                        out = _optimizer_step(model, opt, params, hist.to(device), tgt.to(device), tc.max_grad_norm,
                                              decay_only, tc.micro_batches)
            except TrainingDivergedError as err:
                raise TrainingDivergedError(f"stage {stage}, epoch {epoch}: {err}") from None
            _accumulate(sums, out)
            sched.step()
            n_batches += 1
            steps += 1
        rec: dict[str, Any] = {"stage": stage, "epoch": epoch, "lr": epoch_lr,
                               "epoch_s": round(time.perf_counter() - t0, 3), "steps": n_batches}
        rec.update({k: v / max(n_batches, 1) for k, v in sums.items()})
        over_budget = tc.stage_time_budget_s is not None and time.perf_counter() - stage_t0 > tc.stage_time_budget_s
        if distributed is not None:
            over_budget = distributed.any(over_budget)
        if over_budget and stop_reason == "epochs":
            stop_reason = "time_budget"
        do_eval = val is not None and (epoch % tc.eval_every == 0 or epoch == epochs or stop_reason != "epochs")
        if do_eval:
            t1 = time.perf_counter()
            metrics = evaluate_model(model, val[0], val[1], batch_size=tc.eval_batch_size, device=device, seed=tc.seed)
            rec["eval_s"] = round(time.perf_counter() - t1, 3)
            rec.update({f"val_{k}": v for k, v in metrics.items() if k != "n_users"})
            if _improved(metrics, tc.metric, bests):
                best, best_epoch, bad = metrics[SELECTION_REPORT_METRIC if tc.metric == "any" else tc.metric], epoch, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                bad += 1
            rec["best"] = best
            rec["best_metric"] = SELECTION_REPORT_METRIC if tc.metric == "any" else tc.metric  # what "best" is
            log.info("eval", **rec)
            history.append(rec)
            if bad >= tc.patience:
                log.info("early_stop", stage=stage, epoch=epoch, best_epoch=best_epoch, best=best)
                stop_reason = "early_stop"
                break
        else:
            log.info("epoch", **rec)
            history.append(rec)
        if stop_reason == "time_budget":
            log.info("time_budget_reached", stage=stage, epoch=epoch, budget_s=tc.stage_time_budget_s,
                     best_epoch=best_epoch, best=best if best_state is not None else None)
        if stop_reason != "epochs":
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return _StageRun(epochs=epoch, best_metric=None if best_state is None else best, best_epoch=best_epoch,
                     steps=steps, stop_reason=stop_reason)


#: metric whose value is reported as "best" (log, checkpoint meta) when ``train.metric`` is "any"
SELECTION_REPORT_METRIC = "NDCG@10"


def _improved(metrics: dict[str, float], metric: str, bests: dict[str, float]) -> bool:
    """Whether this evaluation improves the selection ``metric`` (or, for "any", at least one of the six
    metrics, as the reference code's early stopping does); updates ``bests`` (per-metric best so far) in place."""
    names = [k for k in metrics if k != "n_users"] if metric == "any" else [metric]
    better = [k for k in names if metrics[k] > bests.get(k, -math.inf)]
    for k in better:
        bests[k] = metrics[k]
    return bool(better)


def _load_table(model: torch.nn.Module, table: torch.Tensor) -> None:
    """Copy a stage-1 item table (N+1, d) into ``model.item_emb``.

    Raises:
        ConfigError: the shapes differ (other dataset or hidden size).
    """
    weight = model.item_emb.weight
    if tuple(table.shape) != tuple(weight.shape):
        raise ConfigError(f"pre-trained table has shape {tuple(table.shape)}, the model expects "
                          f"{tuple(weight.shape)}: same dataset and hidden_size are required")
    with torch.no_grad():
        weight.copy_(table.to(weight.device))


def pretrain_config(exp: ExperimentConfig):
    """Model config of the stage-1 encoder: the same architecture as a SASRec, without positions unless
    ``train.pretrain_positional`` (the reference's pretraining SASRec has learned positions), initialised with
    ``train.pretrain_init_std`` when set."""
    update: dict[str, Any] = {"kind": "sasrec", "positional": exp.train.pretrain_positional}
    if exp.train.pretrain_init_std is not None:
        update["init_std"] = exp.train.pretrain_init_std
    return exp.model.model_copy(update=update)


def _optimizer_step(
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    params: list[torch.nn.Parameter],
    hist: torch.Tensor,
    tgt: torch.Tensor,
    max_grad_norm: float | None,
    decay_only: Sequence[torch.nn.Parameter] = (),
    micro_batches: int = 1,
) -> dict[str, torch.Tensor]:
    """One update: the model's combined loss on a (B, L) batch, its gradient, optional clipping, step.
    Parameters in ``decay_only`` get a zero gradient before the step (weight decay acts on them alone).

    ``micro_batches`` > 1 (``train.micro_batches``) accumulates the gradient over that many contiguous row parts of
    the batch, each trimmed to its own longest window and weighted by its share of the batch's target tokens (CE)
    and sequences (MSE) (:func:`~adrec_stream.training.distributed.shard_weights`, the data-parallel weighting), so
    the update is the whole batch's (to float rounding and the order of the random draws) with about 1/parts of the
    activation memory.

    Returns the batch's loss dict ("loss", "ce", "mse").

    Raises:
        TrainingDivergedError: the loss is NaN or infinite (no update is made)."""
    parts = min(micro_batches, hist.shape[0])
    opt.zero_grad(set_to_none=True)
    if parts <= 1:
        out = model.loss(hist, tgt)
        _check_finite(out["loss"])
        out["loss"].backward()
    else:
        weighted = ShardLoss(model)
        totals = {"loss": 0.0, "ce": 0.0, "mse": 0.0}
        for part in range(parts):
            rows = shard_rows(hist.shape[0], part, parts)
            ce_w, mse_w = shard_weights(tgt, rows, parts)
            part_out = weighted(*trim_left_padding(hist[rows], tgt[rows]), ce_w, mse_w)
            _check_finite(part_out["loss"])
            (part_out["loss"] / parts).backward()
            for key in totals:
                totals[key] += float(part_out[key].detach()) / parts
        out = {key: torch.tensor(value) for key, value in totals.items()}
    _finish_step(opt, params, max_grad_norm, decay_only)
    return out


def _check_finite(loss: torch.Tensor) -> None:
    """Raise :class:`TrainingDivergedError` when ``loss`` is NaN or infinite."""
    if not bool(torch.isfinite(loss.detach())):
        raise TrainingDivergedError(
            f"training diverged: the loss is {float(loss.detach())}; lower the learning rate (train.lr or "
            "train.<stage>_lr) or the initialisation scale (train.pretrain_init_std, model.init_std)"
        )


def _finish_step(opt: torch.optim.Optimizer, params: list[torch.nn.Parameter], max_grad_norm: float | None,
                 decay_only: Sequence[torch.nn.Parameter]) -> None:
    """After the backward pass(es): optional gradient-norm clipping, zero gradients for ``decay_only`` (the
    reference's stage-2 table: weight decay only), optimiser step."""
    if max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    for p in decay_only:
        p.grad = torch.zeros_like(p)
    opt.step()


def _ddp_step(
    ddp: torch.nn.Module,
    dist_ctx: DistContext,
    opt: torch.optim.Optimizer,
    params: list[torch.nn.Parameter],
    hist: torch.Tensor,
    tgt: torch.Tensor,
    device: torch.device,
    max_grad_norm: float | None,
    decay_only: Sequence[torch.nn.Parameter] = (),
) -> dict[str, torch.Tensor]:
    """One data-parallel update: this rank's shard of the global (B, L) batch through DDP (a
    :class:`~adrec_stream.training.distributed.ShardLoss`), the non-finite check agreed by every rank BEFORE the
    backward (a rank that skipped it would leave the others waiting in the gradient all-reduce), one backward
    (DDP averages the gradients over the ranks), clipping (of the averaged, identical gradients), step.

    A rank whose shard is empty (a last batch smaller than the world) runs one row with weight 0: it still takes
    part in the all-reduce and adds nothing.

    Returns:
        {"loss", "ce", "mse"} of the GLOBAL batch (the single-process step's values up to float order).

    Raises:
        TrainingDivergedError: the loss is NaN or infinite on some rank (on every rank; no update is made).
    """
    rows = shard_rows(hist.shape[0], dist_ctx.rank, dist_ctx.world_size)
    ce_w, mse_w = shard_weights(tgt, rows, dist_ctx.world_size)
    if rows.numel() == 0:
        rows, ce_w, mse_w = torch.zeros(1, dtype=torch.long), 0.0, 0.0
    out = ddp(hist[rows].to(device), tgt[rows].to(device), ce_w, mse_w)
    local = [float(out["loss"].detach()), float(out["ce"]), float(out["mse"])]
    bad = not all(math.isfinite(v) for v in local)
    sums = dist_ctx.all_reduce_sum([0.0 if bad else v for v in local] + [1.0 if bad else 0.0])
    if sums[3] > 0:
        raise TrainingDivergedError(
            f"training diverged: the loss is not finite on {int(sums[3])} of {dist_ctx.world_size} ranks (this rank: "
            f"{local[0]}); lower the learning rate (train.lr or train.<stage>_lr) or the initialisation scale"
        )
    opt.zero_grad(set_to_none=True)
    out["loss"].backward()
    _finish_step(opt, params, max_grad_norm, decay_only)
    w = dist_ctx.world_size
    return {k: torch.tensor(v / w) for k, v in zip(("loss", "ce", "mse"), sums[:3])}


def _accumulate(sums: dict[str, float], out: dict[str, torch.Tensor]) -> None:
    """Add the batch's loss terms to the running sums (keys present in both)."""
    for k in sums:
        if k in out:
            sums[k] += float(out[k].detach())


#: called by :func:`train_model` after each stage with (stage name, that stage's :class:`TrainResult`)
StageCallback = Callable[[str, TrainResult], None]


def check_stages(exp: ExperimentConfig, stages: Sequence[str] | None) -> tuple[str, ...]:
    """The stages to run: ``stages`` validated, or all the model kind uses (``exp.stages()``) when None.

    Raises:
        ConfigError: empty, an unknown stage, out of order (pretrain -> align -> finetune), or a stage other
            than finetune for the SASRec+ baseline.
    """
    stages = tuple(stages) if stages is not None else exp.stages()
    bad = [s for s in stages if s not in STAGES]
    if not stages or bad or list(stages) != sorted(stages, key=STAGES.index):
        raise ConfigError(f"stages must be a non-empty subset of {STAGES} in that order, got {list(stages)}")
    if exp.model.kind == "sasrec" and set(stages) - {"finetune"}:
        raise ConfigError("the SASRec+ baseline (model.kind: sasrec) trains in a single stage: use stage "
                          "'finetune' (or 'all')")
    return stages


def train_model(
    train_seqs: list[list[int]],
    n_items: int,
    exp: ExperimentConfig,
    *,
    val: tuple[list[list[int]], list[int]] | None = None,
    stages: Sequence[str] | None = None,
    device: str | None = None,
    progress: bool = True,
    log: Any = None,
    init_model: SequenceModel | None = None,
    pretrained_table: torch.Tensor | None = None,
    epochs: dict[str, int] | None = None,
    on_stage_end: StageCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
    distributed: DistContext | None = None,
) -> TrainResult:
    """Train ADRec (three stages) or SASRec+ (one stage) on per-user training sequences.

    The one stage loop of the project: any ordered subset of the stages runs here, each starting from
    ``train.seed``, so a chain of single-stage calls (previous output passed on through ``init_model`` /
    ``pretrained_table``) gives the same weights as one call with all of them.

    Args:
        train_seqs: per-user chronological item ids (1..n_items); the training samples are one window of the
            last ``max_len + 1`` items per user (``train.windows: last``) or all of them (``all``).
        n_items: number of items N.
        exp: experiment config (model + train sections).
        val: (histories, targets) for validation/early stopping in every stage; None = no selection
            (last weights).
        stages: subset of ("pretrain", "align", "finetune") in that order; None = all stages the
            model kind uses (``exp.stages()``).
        device: "auto"/None, "cpu", "cuda".
        progress: show tqdm progress bars.
        log: structlog logger (default: ``get_logger("train")``).
        init_model: continue from this model (e.g. the stage-2 output when running finetune alone);
            its table is replaced by ``pretrained_table`` only if align runs.
        pretrained_table: FloatTensor (N+1, d) from stage 1 when running align (or finetune on a fresh
            model) without pretrain.
        epochs: per-stage epoch overrides (default: the config's budgets).
        on_stage_end: called after each stage with (stage, that stage's :class:`TrainResult`: its model,
            history, epochs, best metric/epoch and wall seconds), e.g. to save a checkpoint per stage.
            Align and finetune train the same model object in place: copy it to keep a stage's weights.
        should_stop: polled between two optimiser steps; True ends the stage in progress there (the
            streaming fine-tune worker's shutdown and its per-round time limit).
        distributed: train data-parallel on the ranks of this process group (every rank calls ``train_model``
            with the same arguments; :mod:`adrec_stream.training.distributed`): global batches of
            ``train.batch_size`` windows, each rank training on ``batch_size / world_size`` of them, so the
            steps and learning rate are the single-process ones. No validation data (``val``) then.

    Returns:
        :class:`TrainResult` of the whole call (history and epochs over all stages; model, best metric
        and best epoch of the last stage).

    Raises:
        ConfigError: empty stage list, unknown stage or stage order, align without a pre-trained table,
            a stage not applicable to the model kind, no training window, a table of the wrong shape, or
            validation data given to a distributed call.
        TrainingDivergedError: the loss became NaN or infinite (the message names the stage and epoch).
    """
    t_start = time.perf_counter()
    log = log if log is not None else get_logger("train")
    stages = check_stages(exp, stages)
    if distributed is not None and val is not None:
        raise ConfigError("validation (early stopping) is not supported in a distributed train_model call: pass "
                          "val=None (the fine-tune round judges its candidate after training)")
    if "align" in stages and "pretrain" not in stages and pretrained_table is None:
        raise ConfigError("stage 'align' needs the stage-1 item table: run 'pretrain' first (or pass it)")
    dev = resolve_device(device)
    tc = exp.train
    windows = training_windows(train_seqs, exp.model.max_len, tc.windows)
    if not windows:
        raise ConfigError("no user has two or more training items: nothing to train on")
    if val is not None and tc.val_users is not None and tc.val_users < len(val[1]):
        pick = np.sort(np.random.default_rng(tc.seed + 1).choice(len(val[1]), tc.val_users, replace=False))
        val = ([val[0][i] for i in pick], [val[1][i] for i in pick])
    budgets = {s: tc.stage_epochs(s) for s in STAGES}
    budgets.update(epochs or {})
    table = pretrained_table
    history: list[dict[str, Any]] = []
    stage_epochs: dict[str, int] = {}
    adrec: SequenceModel | None = None  # the ADRec (or SASRec+) that align and finetune train
    for stage in stages:
        t0 = time.perf_counter()
        seed_everything(tc.seed)  # every stage from the seed: one call == the stages run one call at a time
        if stage == "pretrain":
            model = build_model(n_items, pretrain_config(exp)).to(dev)
        else:
            if adrec is None:  # the given model when continuing, else a fresh one
                adrec = init_model.to(dev) if init_model is not None else build_model(n_items, exp.model).to(dev)
                if table is not None and (init_model is None or stage == "align"):
                    _load_table(adrec, table)
            model = adrec
        last = _train_stage(model, windows, exp, stage, epochs=budgets[stage], val=val, device=dev,
                            progress=progress, log=log, should_stop=should_stop, distributed=distributed)
        if stage == "pretrain":
            table = model.item_emb.weight.detach().clone()
        last = replace(last, wall_s=time.perf_counter() - t0, pretrained_table=table)
        history += last.history
        stage_epochs.update(last.stage_epochs)
        if on_stage_end is not None:
            on_stage_end(stage, last)
    return replace(last, history=history, epochs_run=sum(stage_epochs.values()), stage_epochs=stage_epochs,
                   wall_s=time.perf_counter() - t_start)


def _train_stage(
    model: SequenceModel,
    windows: list[list[int]],
    exp: ExperimentConfig,
    stage: str,
    *,
    epochs: int,
    val: tuple[list[list[int]], list[int]] | None,
    device: torch.device,
    progress: bool,
    log: Any,
    should_stop: Callable[[], bool] | None = None,
    distributed: DistContext | None = None,
) -> TrainResult:
    """One stage on ``model`` (already on ``device``, seeded by the caller): set which parameters train
    (align freezes the item table, finetune unfreezes everything), run it, and return its result
    (``wall_s`` and ``pretrained_table`` are left for the caller to fill)."""
    tc = exp.train
    table = model.item_emb.weight
    if stage == "finetune":
        for p in model.parameters():
            p.requires_grad_(True)
    elif stage == "align":
        table.requires_grad_(False)
    log.info("stage_start", stage=stage, epochs=epochs, windows=len(windows), device=str(device),
             batch_size=tc.batch_size, micro_batches=tc.micro_batches, ce_chunk_rows=tc.ce_chunk_rows)
    history: list[dict[str, Any]] = []
    try:
        run = _run_stage(model, windows, exp, stage, epochs=epochs, lr=tc.stage_lr(stage), schedule=tc.lr_schedule,
                         val=val, device=device, progress=progress, log=log, rng=np.random.default_rng(tc.seed),
                         history=history,
                         decay_only=[table] if stage == "align" and tc.align_table == "reference_decay" else (),
                         should_stop=should_stop, distributed=distributed)
    finally:
        if stage == "align":
            table.requires_grad_(True)
    return TrainResult(model=model, best_metric=run.best_metric, history=history, epochs_run=run.epochs, wall_s=0.0,
                       stage_epochs={stage: run.epochs}, best_epoch=run.best_epoch, steps=run.steps,
                       stop_reason=run.stop_reason)

