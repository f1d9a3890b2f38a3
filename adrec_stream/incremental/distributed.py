"""A fine-tune round on several processes, GPUs or hosts: ``torchrun`` + ``DistributedDataParallel``.

When ``finetune.distributed`` names more than one rank (``nproc_per_node · nnodes > 1``), the fine-tune worker
does not train in its own process. For each round it

1. builds the window as always (it is the only process that reads the sequence-updates topic) and writes the
   round's input, a JSON **spec** (serving checkpoint path, the window, the ``finetune`` settings), to
   ``<state_dir>/finetune/round/spec.json``;
2. launches ``python -m torch.distributed.run ... -m workers.finetune_round --spec ...``
   (:func:`torchrun_command`; one host: ``--standalone``, a free local port; several hosts: static rendezvous
   on ``master_addr:master_port``, this host being node 0 and the others running :func:`follow`);
3. every rank joins the process group (:func:`~adrec_stream.training.distributed.init_from_env`: gloo on the
   CPU, nccl on CUDA, rank i on ``cuda:<local rank i>``); **rank 0 reads the spec and the serving checkpoint
   and broadcasts them** (``broadcast_object_list``) so that ranks on other hosts need neither the registry nor
   the spec file; every rank then runs the same :func:`~adrec_stream.incremental.round.run_round` with the
   process group: identical vocabulary growth, stage 3 data-parallel (each rank trains on its contiguous
   ``1 / world_size`` of every global batch of ``finetune.batch_size`` windows, so the steps and the learning
   rate are the single-process round's), and rank 0 judges the candidate (loss probes, held-out guard) and
   broadcasts the verdict, so all ranks agree on accept / reject;
4. rank 0 writes the candidate (:func:`~adrec_stream.model.checkpoint.save_checkpoint`) and ``outcome.json``
   to the round folder; all ranks meet at a barrier and leave; the worker reads the outcome back and, if
   accepted, publishes it through its usual path (``FinetuneWorker._publish``): one publisher, the same
   manifest and registry code as a single-process round. Nothing is published from the other ranks.

A job that fails (a rank died, rendezvous or collective timeout, ``finetune.max_seconds +
distributed.launch_timeout_s`` exceeded) is a rejected round with reason ``distributed_failed``; the serving
model stays. Every rank logs structlog JSON lines with ``rank`` / ``world_size`` / ``local_rank`` bound, to the
worker's stderr (torchrun passes its ranks' streams through).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import structlog
import torch

from adrec_stream.errors import ConfigError
from adrec_stream.incremental.config import DistributedConfig, FinetuneConfig
from adrec_stream.incremental.round import RoundOutcome, RoundWindow, TrainStats, run_round
from adrec_stream.incremental.updates import SequenceUpdateRecord
from adrec_stream.logging import get_logger
from adrec_stream.state.vocab import Vocabulary

#: format marker of the round spec and outcome files
SPEC_FORMAT = "adrec-stream/finetune-round"
#: the rejection reason of a round whose distributed job failed
FAILED_REASON = "distributed_failed"
#: seconds between the worker's checks of a running job (stop request, deadline)
POLL_S = 0.2
#: seconds a stopped job gets between SIGTERM and SIGKILL
STOP_GRACE_S = 20.0


# ---------------------------------------------------------------------------------------------- configuration
def check_distributed(cfg: FinetuneConfig, device: torch.device) -> None:
    """Checks of ``finetune.distributed`` that need this host's devices (the rest is validated on load).

    Args:
        cfg: the ``finetune`` settings.
        device: the worker's resolved device (its type decides what every rank trains on).

    Raises:
        ConfigError: nccl without CUDA, or ``nproc_per_node`` larger than this host's CUDA devices.
    """
    d = cfg.distributed
    if not d.enabled:
        return
    if d.backend == "nccl" and device.type != "cuda":
        raise ConfigError("finetune.distributed.backend nccl needs CUDA, but the fine-tune device is "
                          f"{device.type}: use gloo or auto")
    if device.type == "cuda":
        n = torch.cuda.device_count()
        if d.nproc_per_node > n:
            raise ConfigError(f"finetune.distributed.nproc_per_node={d.nproc_per_node} but this host has {n} CUDA "
                              "device(s): one rank per GPU (lower nproc_per_node, or use device cpu with gloo)")


def torchrun_command(d: DistributedConfig, device_kind: str, *, node_rank: int = 0, spec: Path | None = None,
                     timeout_s: float = 1800.0) -> list[str]:
    """The ``python -m torch.distributed.run`` command of one node of a round.

    Args:
        d: ``finetune.distributed``.
        device_kind: "cuda" or "cpu" (what the ranks train on).
        node_rank: this host's node rank (0 = the fine-tune worker's host, the only one with a spec).
        spec: the round spec (node 0 only).
        timeout_s: the ranks' collective timeout (seconds).

    Returns:
        argv: one host: ``--standalone --nnodes 1 --nproc-per-node P`` (the rendezvous picks a free local port);
        several: ``--nnodes N --node-rank K --nproc-per-node P --master-addr A --master-port M`` (static
        rendezvous); then ``-m workers.finetune_round --backend B --device-kind K --timeout-s T [--spec S]``.
    """
    cmd = [sys.executable, "-m", "torch.distributed.run"]
    if d.nnodes == 1:
        cmd += ["--standalone", "--nnodes", "1", "--nproc-per-node", str(d.nproc_per_node)]
    else:
        cmd += ["--nnodes", str(d.nnodes), "--node-rank", str(node_rank), "--nproc-per-node", str(d.nproc_per_node),
                "--master-addr", d.master_addr, "--master-port", str(d.master_port)]
    cmd += ["-m", "workers.finetune_round", "--backend", d.backend, "--device-kind", device_kind,
            "--timeout-s", f"{timeout_s:g}"]
    if spec is not None:
        cmd += ["--spec", str(spec)]
    return cmd


# ---------------------------------------------------------------------------------------------- spec files
def window_to_json(w: RoundWindow) -> dict[str, Any]:
    """A :class:`RoundWindow` as plain JSON data (:func:`window_from_json` reverses it)."""
    return {"train": [asdict(u) for u in w.train], "holdout": [asdict(u) for u in w.holdout],
            "sequences": w.sequences, "fresh_users": w.fresh_users, "replay_users": w.replay_users,
            "cut": {str(p): o for p, o in w.cut.items()}}


def window_from_json(data: dict[str, Any]) -> RoundWindow:
    """The :class:`RoundWindow` of :func:`window_to_json`'s output."""

    def rec(d: dict[str, Any]) -> SequenceUpdateRecord:
        return SequenceUpdateRecord(**{**d, "items": tuple(d["items"])})

    return RoundWindow([rec(u) for u in data["train"]], [rec(u) for u in data["holdout"]],
                       [list(s) for s in data["sequences"]], int(data["fresh_users"]), int(data["replay_users"]),
                       {int(p): int(o) for p, o in data["cut"].items()})


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def write_spec(path: Path, *, checkpoint: str | Path, window: RoundWindow, cfg: FinetuneConfig) -> Path:
    """Write the round's input for rank 0 (JSON, atomic): serving checkpoint, window, ``finetune`` settings; the
    outputs go to the spec's folder. Returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_json(path, {"format": SPEC_FORMAT, "checkpoint": str(checkpoint), "finetune": cfg.model_dump(mode="json"),
                       "window": window_to_json(window)})
    return path


# ---------------------------------------------------------------------------------------------- worker side
def run_distributed_round(checkpoint: str | Path, serving_vocab: list[str], window: RoundWindow, cfg: FinetuneConfig,
                          device: torch.device, round_dir: Path, *, should_stop: Callable[[], bool] | None = None,
                          log: Any = None) -> RoundOutcome:
    """Run one round as a torchrun job (see the module docstring) and read its outcome back.

    Args:
        checkpoint: the serving version's checkpoint (file or folder) in the registry; rank 0 loads it.
        serving_vocab: its vocabulary (for an outcome without a candidate).
        window: from :func:`~adrec_stream.incremental.round.build_window`.
        cfg: ``finetune`` settings (``distributed`` enabled).
        device: the worker's device (its type is every rank's device kind).
        round_dir: the job's folder (emptied first; spec, candidate and outcome).
        should_stop: polled every :data:`POLL_S` s; True ends the job (SIGTERM, then SIGKILL after
            :data:`STOP_GRACE_S`) and the round is "stopped".
        log: structlog logger.

    Returns:
        :class:`~adrec_stream.incremental.round.RoundOutcome` as :func:`run_round` gives it (the candidate
        loaded from rank 0's checkpoint, CPU); ``reason`` "distributed_failed" with ``error`` when the job failed
        or ran past ``max_seconds + distributed.launch_timeout_s``, "stopped" when ``should_stop`` ended it.
    """
    from adrec_stream.model.checkpoint import load_checkpoint  # noqa: PLC0415

    log = log if log is not None else get_logger("adrec_stream.finetune.distributed")
    d = cfg.distributed
    t0 = time.perf_counter()
    shutil.rmtree(round_dir, ignore_errors=True)
    spec = write_spec(round_dir / "spec.json", checkpoint=checkpoint, window=window, cfg=cfg)
    cmd = torchrun_command(d, device.type, spec=spec, timeout_s=cfg.max_seconds + d.launch_timeout_s)
    env = {**os.environ, "OMP_NUM_THREADS": str(cfg.threads)}
    log.info("finetune_round_launched", world_size=d.world_size, nproc_per_node=d.nproc_per_node, nnodes=d.nnodes,
             backend=d.backend, command=" ".join(cmd))
    failed = RoundOutcome(False, FAILED_REASON, None, Vocabulary(serving_vocab), window, [])
    deadline = t0 + cfg.max_seconds + d.launch_timeout_s
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    stopped = False
    try:
        while proc.poll() is None:
            if should_stop is not None and should_stop():
                stopped = True
                break
            if time.perf_counter() > deadline:
                failed.error = (f"the distributed round ran past max_seconds + launch_timeout_s "
                                f"({cfg.max_seconds + d.launch_timeout_s:g} s) and was ended")
                break
            time.sleep(POLL_S)
    finally:
        if proc.poll() is None:
            _end(proc)
    failed.round_s = time.perf_counter() - t0
    if stopped:
        failed.reason = "stopped"
        return failed
    if failed.error is not None:
        return failed
    outcome_path = round_dir / "outcome.json"
    if proc.returncode != 0 or not outcome_path.is_file():
        failed.error = (f"the torchrun job exited with {proc.returncode}"
                        + ("" if outcome_path.is_file() else " without an outcome") + " (its ranks' log lines above)")
        return failed
    data = json.loads(outcome_path.read_text())
    candidate, vocab = None, Vocabulary(serving_vocab)
    if data["candidate"]:
        ckpt = load_checkpoint(round_dir / data["candidate"], device="cpu")
        candidate, vocab = ckpt.model, Vocabulary(ckpt.vocab)
    out = RoundOutcome(bool(data["accepted"]), data["reason"], candidate, vocab, window, list(data["new_items"]),
                       train=TrainStats(**data["train"]), loss_before=data["loss_before"],
                       loss_after=data["loss_after"], heldout_serving=data["heldout_serving"],
                       heldout_candidate=data["heldout_candidate"], error=data["error"],
                       round_s=time.perf_counter() - t0)
    log.info("finetune_round_job_done", world_size=data["world_size"], backend=data["backend"],
             job_s=round(out.round_s, 3), rank0_round_s=data["round_s"], reason=out.reason)
    return out


def _end(proc: subprocess.Popen) -> None:
    """SIGTERM the job's process group (torchrun and its ranks), SIGKILL after :data:`STOP_GRACE_S`."""
    for sig, wait_s in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


# ---------------------------------------------------------------------------------------------- rank side
def run_rank(spec_path: str | None, *, backend: str, device_kind: str, timeout_s: float) -> int:
    """The program of one rank (what ``torchrun`` starts; ``adrec-stream finetune-round --spec ...``).

    Args:
        spec_path: the round spec (rank 0 reads it; other ranks get everything by broadcast, None is fine there).
        backend: "auto", "gloo" or "nccl".
        device_kind: "cuda" (rank i on ``cuda:<local rank i>``) or "cpu".
        timeout_s: collective timeout (seconds).

    Returns:
        0 when the round ran (accepted, rejected or stopped: rank 0 wrote ``outcome.json`` beside the spec).

    Raises:
        ConfigError: not started by torchrun, no spec on rank 0, a spec of another format, CUDA missing.
        CheckpointError: rank 0 cannot read the serving checkpoint.
    """
    from adrec_stream.model import ModelConfig, build_model  # noqa: PLC0415
    from adrec_stream.model.checkpoint import load_checkpoint, save_checkpoint  # noqa: PLC0415
    from adrec_stream.training.distributed import init_from_env, shutdown  # noqa: PLC0415

    ctx = init_from_env(backend, device_kind, timeout_s)
    structlog.contextvars.bind_contextvars(rank=ctx.rank, world_size=ctx.world_size, local_rank=ctx.local_rank)
    log = get_logger("adrec_stream.finetune.rank")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())  # a stop on any rank stops all at the same step
    try:
        payload = None
        if ctx.is_main:
            if spec_path is None:
                raise ConfigError("rank 0 of a fine-tune round needs --spec (written by the fine-tune worker)")
            spec = json.loads(Path(spec_path).read_text())
            if spec.get("format") != SPEC_FORMAT:
                raise ConfigError(f"{spec_path}: not a fine-tune round spec (format {spec.get('format')!r})")
            ckpt = load_checkpoint(spec["checkpoint"], device="cpu")
            payload = {"state_dict": ckpt.model.state_dict(), "model_config": ckpt.model.cfg.model_dump(),
                       "vocab": ckpt.vocab, "finetune": spec["finetune"], "window": spec["window"]}
        payload = ctx.broadcast_object(payload)  # the serving model and the window reach every host
        cfg = FinetuneConfig.model_validate(payload["finetune"])
        if ctx.device.type == "cpu":
            torch.set_num_threads(cfg.threads)
        model = build_model(len(payload["vocab"]), ModelConfig.model_validate(payload["model_config"]))
        model.load_state_dict(payload["state_dict"])
        model.eval()
        window = window_from_json(payload["window"])
        log.info("finetune_rank_started", backend=ctx.backend, device=str(ctx.device), pid=os.getpid(),
                 sequences=len(window.sequences), per_rank_batch=cfg.batch_size / ctx.world_size)
        outcome = run_round(model, payload["vocab"], window, cfg, ctx.device, should_stop=stop.is_set, log=log,
                            dist=ctx)
        if ctx.is_main:
            out_dir = Path(spec_path).parent
            name = None
            if outcome.candidate is not None:
                name = "candidate.pt"
                save_checkpoint(out_dir / name, outcome.candidate.cpu(), vocab=outcome.vocab.raw_ids, config={})
            _write_json(out_dir / "outcome.json", {
                "format": SPEC_FORMAT, "accepted": outcome.accepted, "reason": outcome.reason, "error": outcome.error,
                "candidate": name, "new_items": outcome.new_items, "train": asdict(outcome.train),
                "loss_before": outcome.loss_before, "loss_after": outcome.loss_after,
                "heldout_serving": outcome.heldout_serving, "heldout_candidate": outcome.heldout_candidate,
                "round_s": outcome.round_s, "world_size": ctx.world_size, "backend": ctx.backend})
        log.info("finetune_rank_done", reason=outcome.reason, accepted=outcome.accepted, steps=outcome.train.steps,
                 train_s=round(outcome.train.train_s, 3))
        ctx.barrier()  # the other ranks leave only once rank 0 has written the candidate
    finally:
        shutdown()
    return 0


def follow(d: DistributedConfig, device_kind: str, node_rank: int, *, timeout_s: float,
           should_stop: Callable[[], bool], log: Any = None, retry_s: float = 2.0) -> int:
    """Node ``node_rank`` (>= 1) of multi-host rounds: run this node's torchrun again and again, each run being
    one round that the fine-tune worker's node 0 starts (static rendezvous on ``master_addr:master_port``).

    Args:
        d: ``finetune.distributed`` (``nnodes > 1``).
        device_kind: "cuda" or "cpu".
        node_rank: this host's node rank, 1 .. nnodes - 1.
        timeout_s: the ranks' collective timeout (seconds).
        should_stop: checked between runs (and every :data:`POLL_S` s during one: a stop ends the run).
        log: structlog logger.
        retry_s: pause after a failed run (no round started within the rendezvous timeout, a rank died).

    Returns:
        0 after a stop.

    Raises:
        ConfigError: ``nnodes`` is 1 or ``node_rank`` is outside 1 .. nnodes - 1.
    """
    log = log if log is not None else get_logger("adrec_stream.finetune.follow")
    if d.nnodes < 2 or not 1 <= node_rank < d.nnodes:
        raise ConfigError(f"--follow needs finetune.distributed.nnodes >= 2 and --node-rank in 1..nnodes-1 "
                          f"(nnodes={d.nnodes}, node rank {node_rank}); node 0 is the fine-tune worker's host")
    cmd = torchrun_command(d, device_kind, node_rank=node_rank, timeout_s=timeout_s)
    log.info("finetune_follow_started", node_rank=node_rank, command=" ".join(cmd))
    while not should_stop():
        proc = subprocess.Popen(cmd, start_new_session=True)
        while proc.poll() is None and not should_stop():
            time.sleep(POLL_S)
        if proc.poll() is None:
            _end(proc)
            break
        log.info("finetune_follow_round_ended", returncode=proc.returncode)
        if proc.returncode != 0:
            time.sleep(retry_s)
    return 0
