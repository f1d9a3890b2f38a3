"""``adrec-stream train``: train ADRec (three stages) or the SASRec+ baseline on a dataset.pkl split."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch

from adrec_stream.config import parse_overrides
from adrec_stream.data.adrec_pkl import AdrecDataset, load_adrec_dataset
from adrec_stream.data.batching import loo_histories
from adrec_stream.errors import CheckpointError
from adrec_stream.logging import get_logger
from adrec_stream.model import load_checkpoint, save_checkpoint
from adrec_stream.runtime import peak_rss_mb
from adrec_stream.training.config import STAGES, ExperimentConfig, load_experiment
from adrec_stream.training.trainer import TrainResult, check_stages, pretrain_config, train_model

#: sub-folders of the output directory holding the stage-1 and stage-2 checkpoints; the selected
#: final model (after finetune) is the checkpoint of the output directory itself.
STAGE_DIRS = {"pretrain": "pretrain", "align": "align"}

#: stage run alone -> the earlier stage whose checkpoint (in its STAGE_DIRS folder) it continues from
PREVIOUS_STAGE = {"align": "pretrain", "finetune": "align"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``train`` options."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = (
        "Train ADRec (stages pretrain -> align -> finetune) or the SASRec+ baseline (single stage) on a\n"
        "leave-one-out dataset.pkl split, selecting weights on validation (train.metric, early stopping).\n\n"
        "Output layout: DIR/pretrain/ (stage-1 SASRec whose item table is kept), DIR/align/ (stage 2),\n"
        "and the selected final model in DIR itself (what `adrec-stream evaluate --checkpoint DIR` reads).\n"
        "Running one stage alone loads the previous stage's output from DIR: --stage align reads\n"
        "DIR/pretrain/, --stage finetune reads DIR/align/ (run the earlier stages first).\n\n"
        "Result: one JSON line on stdout (checkpoint, best_val and epochs per stage, per-stage time, threads,\n"
        "wall_s, peak_rss_mb), with or without --json; structured logs go to stderr."
    )
    parser.add_argument("--dataset", required=True, help="dataset.pkl (or its folder), e.g. ../shared/data/adrec/beauty")
    parser.add_argument("--config", default="configs/adrec.yaml", help="experiment YAML (default configs/adrec.yaml)")
    parser.add_argument("--output", required=True, help="output directory for the checkpoints")
    parser.add_argument("--stage", default="all", choices=[*STAGES, "all"],
                        help="stage to run (default all; SASRec+ has only 'finetune', which 'all' means for it)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available, else CPU), cpu or cuda")
    parser.add_argument("--json", action="store_true",
                        help="accepted for symmetry with `evaluate --json`: the result line is JSON either way")
    parser.add_argument("--seed", type=int, default=None, help="override train.seed (default from the config: 2025)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="override the epoch budget of the pretrain and finetune stages (align keeps train.align_epochs)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set train.pretrain_lr=0.002 or --set model.dropout_masks=random_bits "
                             "(value parsed as YAML; repeatable; the common keys: README, 'Training options'; every key: the "
                             "ModelConfig and TrainConfig docstrings, adrec_stream/{model,training}/config.py)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    out = parse_overrides(args.set)
    if args.seed is not None:
        out["train.seed"] = args.seed
    if args.epochs is not None:
        out["train.pretrain_epochs"] = args.epochs
        out["train.finetune_epochs"] = args.epochs
    return out


def _save(path: Path, model: torch.nn.Module, ds: AdrecDataset, exp: ExperimentConfig, res: TrainResult,
          stage: str, extra: dict[str, Any]) -> Path:
    """Write ``<path>/model.pt``; meta["stage_epochs"] / ["pipeline_wall_s"] cover all stages so far."""
    meta = {
        "dataset": ds.name, "stage": stage, "seed": exp.train.seed, "epochs_run": res.epochs_run,
        "best_epoch": res.best_epoch, "metric": exp.train.metric,
        "best_val_metric": res.best_metric, "item_counts": ds.item_counts(), "wall_s": round(res.wall_s, 3),
        "history": res.history, **extra,
    }
    config = exp.model_dump(mode="json")
    if stage == "pretrain":  # the stage-1 encoder's own model config (a SASRec, see pretrain_config)
        config["model"] = pretrain_config(exp).model_dump(mode="json")
    path.mkdir(parents=True, exist_ok=True)  # a directory: the checkpoint is <path>/model.pt
    return save_checkpoint(path, model, vocab=ds.vocab(), config=config, meta=meta)


def _load_stage(path: Path, what: str) -> Any:
    try:
        return load_checkpoint(path)
    except CheckpointError as err:
        raise CheckpointError(f"{err} -- {what}") from None


def _resume(out: Path, first: str, exp: ExperimentConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """What a run starting at stage ``first`` continues from: (``train_model`` keyword arguments, meta of the
    previous stage's checkpoint). Nothing for pretrain or the SASRec+ baseline; align takes the stage-1 item
    table from DIR/pretrain, an ADRec finetune the stage-2 model from DIR/align.

    Raises:
        CheckpointError: the previous stage's checkpoint is missing or unreadable (the message says which
            ``--stage`` to run first).
    """
    previous = PREVIOUS_STAGE.get(first)
    if previous is None or exp.model.kind != "adrec":
        return {}, {}
    ck = _load_stage(out / STAGE_DIRS[previous], f"run `--stage {previous}` first with the same --output")
    if first == "align":
        return {"pretrained_table": ck.model.item_emb.weight.detach().clone()}, ck.meta
    return {"init_model": ck.model}, ck.meta


def stage_time_split(history: list[dict[str, Any]], wall_s: float) -> dict[str, float | int]:
    """Where one stage's wall time went, from its per-epoch history records (``epoch_s``, and ``eval_s`` on
    validation epochs): epochs and seconds of training (batching, forward, backward, optimiser), validation passes
    and their seconds, and the rest of the stage's ``wall_s`` (model set-up, restoring the best weights; the
    checkpoint save comes after it) as ``other_s``. Shows where a run's time goes (e.g. 1 vs 2 threads)."""
    train_s = sum(float(r.get("epoch_s", 0.0)) for r in history)
    evals = [float(r["eval_s"]) for r in history if "eval_s" in r]
    return {"epochs": len(history), "train_s": round(train_s, 1), "evals": len(evals),
            "eval_s": round(sum(evals), 1), "other_s": round(max(wall_s - train_s - sum(evals), 0.0), 1)}


def run(args: argparse.Namespace) -> int:
    """Run the requested stage(s) and write their checkpoints; prints one JSON line: the final checkpoint path,
    the stages, each stage's best validation metric and epochs, ``time`` (per stage: :func:`stage_time_split`),
    ``threads`` (torch CPU threads used), ``wall_s`` (seconds) and ``peak_rss_mb`` (MiB).

    The stages run in one :func:`train_model` call that saves each stage's checkpoint as soon as the stage
    ends; a single ``--stage`` continues from the previous stage's checkpoint in the output directory.

    Raises:
        ConfigError: a stage the model kind does not have, or a bad config / override.
        CheckpointError: the previous stage's checkpoint is missing (single ``--stage`` runs).
    """
    if args.threads:
        torch.set_num_threads(args.threads)
    exp = load_experiment(args.config, _overrides(args))
    stages = check_stages(exp, None if args.stage == "all" else (args.stage,))
    ds = load_adrec_dataset(args.dataset)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    log = get_logger("train", dataset=ds.name, kind=exp.model.kind)
    val = loo_histories(ds.train, ds.val, ds.test, "val", exp.model.max_len)
    start, previous = _resume(out, stages[0], exp)
    stage_epochs: dict[str, int] = dict(previous.get("stage_epochs", {}))
    previous_wall = float(previous.get("pipeline_wall_s", 0.0))  # wall time of earlier stages run by earlier calls
    extra = {"command": shlex.join(["adrec-stream", *sys.argv[1:]]), "dataset_path": str(args.dataset)}
    saved: list[Path] = []
    best_val: dict[str, float | None] = {}
    times: dict[str, dict[str, float | int]] = {}
    t0 = time.perf_counter()

    def save_stage(stage: str, res: TrainResult) -> None:
        stage_epochs.update(res.stage_epochs)
        best_val[stage] = res.best_metric
        times[stage] = stage_time_split(res.history, res.wall_s)
        extra["stage_epochs"] = dict(stage_epochs)
        extra["total_wall_s"] = round(time.perf_counter() - t0, 3)
        extra["pipeline_wall_s"] = round(previous_wall + time.perf_counter() - t0, 3)
        target = out / STAGE_DIRS[stage] if stage in STAGE_DIRS else out
        saved.append(_save(target, res.model, ds, exp, res, stage, extra))
        log.info("stage_done", stage=stage, checkpoint=str(saved[-1]), best_val=res.best_metric,
                 epochs=res.epochs_run, wall_s=round(res.wall_s, 1))

    train_model(ds.train, ds.n_items, exp, val=val, stages=stages, device=args.device, progress=not args.no_progress,
                log=log, on_stage_end=save_stage, **start)
    print(json.dumps({"checkpoint": str(saved[-1]), "stages": list(stages),
                      "best_val": {s: v for s, v in best_val.items()}, "epochs": dict(stage_epochs),
                      "time": times, "threads": torch.get_num_threads(),
                      "wall_s": round(time.perf_counter() - t0, 1), "peak_rss_mb": peak_rss_mb()}))
    return 0
