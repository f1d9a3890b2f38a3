"""Fine-tune round benchmark: seconds of ONE round of the fine-tune worker on a window of logged clicks.

The round is the worker's own (:meth:`~adrec_stream.incremental.worker.FinetuneWorker.run_once`): load the
serving version from the registry, build the window (:func:`~adrec_stream.incremental.round.build_window`),
grow the vocabulary, train (stage 3), judge both models on the held-out clicks, publish. Nothing of it is
re-implemented here; the benchmark only feeds the worker what it would have consumed:

* the log (``read_interactions``: time order, ties by file order) is cut like the demo's
  (``chronological_split(..., 0.8)``): the first 80% are the users' history (and, with no ``checkpoint``, the
  vocabulary of a freshly initialised serving model), the ``window_events`` events right after the cut are the
  fresh clicks; ``window_first_event_index`` in the result says where they start in the sorted log;
* :func:`~adrec_stream.incremental.updates.updates_from_clicks` turns those clicks into the sequence updates
  the ingest worker would publish (window and partitions of the stream config, the users' windows starting
  from their history, every update's ingest time = the wall time right before they are built), and they go
  into the worker's :class:`~adrec_stream.incremental.updates.UpdateTracker`;
* the serving checkpoint is published as version 1 of a registry in a temporary folder.

As in the demo's first round, the serving version covers no sequence-updates offset, so every click is fresh
and the replay pool is empty (``replay_users`` = 0).

Timings (seconds): ``round_s`` is the round's own figure from the worker's ``finetune_round`` record (window
to guard: vocabulary growth, the loss probes, training, held-out evaluation of both models); ``round_s_total``
the wall time of the whole ``run_once`` call (plus loading the serving checkpoint, building the window,
saving and publishing the candidate); ``staleness_s`` the record's ``staleness_s_max`` (from the oldest
click's ingest time to the end of publishing; None when the candidate is rejected). ``breakdown`` splits
``run_once`` into its steps (serving checkpoint load, window, vocabulary growth, loss probes, training,
held-out evaluation, publish) by timing the worker's and the round's functions while it runs.

One cost is left out of the timed round: the first optimiser a process builds imports ``torch._dynamo``
(seconds); the benchmark builds one first (``process_warmup_s``), so the figures are those of a worker's
steady-state round; a freshly started worker's first round is longer by about that much.
"""

from __future__ import annotations

import functools
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from adrec_stream.bench.common import fresh_model, machine_info
from adrec_stream.errors import ConfigError

#: fraction of the log before the window (the demo's ``train_fraction``)
HISTORY_FRACTION = 0.8
#: the issue's goal: one round within this many seconds ...
GOAL_ROUND_S = 60.0
#: ... on a window of at least this many events
GOAL_WINDOW_EVENTS = 10_000
#: experiment config whose ``model`` section builds the fresh serving model
FRESH_MODEL_CONFIG = "configs/adrec-cpu.yaml"


@contextmanager
def _timed_calls(targets: list[tuple[ModuleType, str]]) -> Iterator[dict[str, dict[str, float]]]:
    """Wrap ``module.name`` for each target with a timer while the block runs (restored afterwards).

    Yields ``{name: {"calls": n, "s": seconds}}``, filled as the wrapped functions are called. Used to split
    the round's time into its parts without changing the worker: the worker and the round look these
    functions up in their module namespaces at call time.
    """
    out: dict[str, dict[str, float]] = {}
    saved = []
    for module, name in targets:
        fn = getattr(module, name)
        slot = out.setdefault(name, {"calls": 0, "s": 0.0})

        @functools.wraps(fn)
        def wrapper(*args: Any, _fn: Any = fn, _slot: dict[str, float] = slot, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return _fn(*args, **kwargs)
            finally:
                _slot["calls"] += 1
                _slot["s"] += time.perf_counter() - t0

        saved.append((module, name, fn))
        setattr(module, name, wrapper)
    try:
        yield out
    finally:
        for module, name, fn in reversed(saved):
            setattr(module, name, fn)


def _load_avg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def bench_finetune(
    data_path: str | Path,
    *,
    window_events: int = GOAL_WINDOW_EVENTS,
    checkpoint: str | Path | None = None,
    threads: int | None = None,
    seed: int = 2025,
    device: str = "cpu",
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Time one fine-tune worker round on ``window_events`` clicks of ``data_path`` (see the module docstring).

    Args:
        data_path: an interaction log (e.g. ``../shared/data/events/ml-100k/u.data``).
        window_events: fresh clicks of the round (training + held-out), taken right after the 80% cut.
        checkpoint: serving model (its vocabulary must hold the log's raw item ids, e.g. the demo's
            ``var/demo-cache/adrec-*/model.pt``); None = a freshly initialised ADRec (``configs/adrec-cpu.yaml``'s
            model section, seeded with ``seed``) over the items before the window (timing does not depend
            on the weights).
        threads: torch CPU threads during the round (None = ``finetune.threads``); restored afterwards.
        seed: weight-init seed of the fresh model.
        device: "cpu", "cuda[:N]" or "auto" (overrides ``finetune.device``).
        overrides: dotted stream-config overrides (``{"finetune.max_steps": 5}``) applied to
            ``configs/stream.yaml``; ``finetune.max_window_events`` is raised to ``window_events`` if lower.

    Returns:
        JSON-ready dict: ``round_s``, ``round_s_total``, ``train_s``, ``publish_s``, ``staleness_s`` (seconds),
        ``window_events`` (= ``train_events`` + ``holdout_events``), ``steps``, ``status`` ("published", "rejected",
        or "skipped" with ``reason`` when the round ran but trained nothing), the held-out NDCG@10
        of the serving model and the candidate, ``goal``, the machine, the finetune config used, and the
        worker's whole ``finetune_round`` record (``record``).

    Raises:
        DataFileError: unreadable log. CheckpointError: unreadable checkpoint. ConfigError: bad overrides or
        device, ``window_events`` below ``finetune.min_round_events``, or more than the log holds after the cut;
        the worker skipped the round before running it.
    """
    from adrec_stream.data.events import (  # noqa: PLC0415
        build_vocabulary,
        chronological_split,
        item_counts,
        read_interactions,
    )
    from adrec_stream.incremental import round as round_mod  # noqa: PLC0415
    from adrec_stream.incremental import worker as worker_mod  # noqa: PLC0415
    from adrec_stream.incremental.round import GUARD_METRIC  # noqa: PLC0415
    from adrec_stream.incremental.updates import updates_from_clicks  # noqa: PLC0415
    from adrec_stream.incremental.worker import FinetuneWorker  # noqa: PLC0415
    from adrec_stream.model.checkpoint import load_checkpoint, save_checkpoint  # noqa: PLC0415
    from adrec_stream.stream.config import load_stream_config  # noqa: PLC0415
    from adrec_stream.training.config import load_experiment  # noqa: PLC0415

    interactions = read_interactions(data_path)
    before, after = chronological_split(interactions, HISTORY_FRACTION)
    if window_events > len(after):
        raise ConfigError(f"window_events={window_events}: {data_path} holds only {len(after):,} events after the "
                          f"first {HISTORY_FRACTION:.0%} ({len(interactions):,} in all); use a smaller window")
    window = after[:window_events]
    history: dict[str, list[str]] = {}
    for x in before:
        history.setdefault(x.user_id, []).append(x.item_id)

    with tempfile.TemporaryDirectory(prefix="adrec-bench-finetune-") as tmp:
        base = dict(overrides or {})
        base.update({"registry_dir": str(Path(tmp) / "registry"), "state_dir": str(Path(tmp) / "state")})
        scfg = load_stream_config(None, base)
        if scfg.finetune.max_window_events < window_events:
            scfg = load_stream_config(None, {**base, "finetune.max_window_events": window_events})
        fcfg = scfg.finetune
        if window_events < fcfg.min_round_events:
            raise ConfigError(f"window_events={window_events} is below finetune.min_round_events="
                              f"{fcfg.min_round_events}: the worker would skip the round")

        if checkpoint is not None:
            ckpt = load_checkpoint(checkpoint, device="cpu")
            serving_path = Path(checkpoint)
            model_info = {"source": str(checkpoint), "n_items": len(ckpt.vocab), **ckpt.model.cfg.model_dump()}
            max_len = ckpt.model.cfg.max_len
            del ckpt
        else:
            exp = load_experiment(FRESH_MODEL_CONFIG)
            vocab = build_vocabulary(before)
            model = fresh_model(len(vocab), exp.model, seed, torch.device("cpu"))
            serving_path = save_checkpoint(
                Path(tmp) / "serving" / "model.pt", model, vocab=vocab, config=exp.model_dump(mode="json"),
                meta={"item_counts": item_counts(before, vocab), "trained_on": str(data_path),
                      "train_fraction": HISTORY_FRACTION})
            model_info = {"source": f"fresh ({FRESH_MODEL_CONFIG}, seed {seed})", "n_items": len(vocab),
                          **exp.model.model_dump()}
            max_len = exp.model.max_len
            del model
        scfg.check_model_len(max_len)

        worker = FinetuneWorker(scfg, device=device)
        worker.registry.publish(serving_path, meta={"source": "bench finetune"})
        n_threads = threads or fcfg.threads
        threads_before = torch.get_num_threads()
        if worker.device.type == "cpu":
            torch.set_num_threads(n_threads)
        machine = machine_info()
        # one-off per process, paid by a worker's first round only: the first optimiser built imports
        # torch._dynamo (~800 modules, seconds); done here so that round_s is a steady-state round's
        t_warm = time.perf_counter()
        torch.optim.Adam([torch.zeros(1, requires_grad=True)])
        warmup_s = time.perf_counter() - t_warm
        try:
            t_ingest = time.time()
            updates = updates_from_clicks(((x.user_id, x.item_id, x.ts) for x in window), window=scfg.window,
                                          n_partitions=scfg.topics.sequence_updates.partitions, history=history,
                                          ingest_ts=t_ingest)
            worker.tracker.add(updates)
            worker.counters.updates_consumed += len(updates)
            updates_s = time.time() - t_ingest
            parts = [(worker_mod, "load_checkpoint"), (worker_mod, "build_window"),
                     (round_mod, "grow_vocabulary"), (round_mod, "probe_loss"), (round_mod, "train_window"),
                     (round_mod, "heldout_metrics"), (FinetuneWorker, "_publish")]
            with _timed_calls(parts) as calls:
                t0, c0 = time.perf_counter(), time.process_time()
                record = worker.run_once()
                total_s, cpu_s = time.perf_counter() - t0, time.process_time() - c0
        finally:
            torch.set_num_threads(threads_before)
        load_end = _load_avg()

    if "round_s" not in record:  # skipped before any round ran (no serving model, too few fresh clicks)
        raise ConfigError(f"the worker skipped the round ({record.get('reason')}): {record}")
    train_events, holdout_events = int(record["window_events"]), int(record["holdout_events"])
    n_events = train_events + holdout_events
    round_s, train_s, publish_s = record["round_s"], record["train_s"], record.get("publish_s")
    machine["load_avg_1m_end"] = load_end
    return {
        "data": str(data_path),
        "events_total": len(interactions),
        "history_events": len(before),
        "history_users": len(history),
        "window_first_event_index": len(before),
        "window_selection": f"the {window_events:,} events right after the first {HISTORY_FRACTION:.0%} "
                            "(chronological_split), as the demo's fine-tune worker sees them",
        "window_events": n_events,
        "train_events": train_events,
        "holdout_events": holdout_events,
        "holdout_judged": record.get("holdout_judged"),
        "window_users": record.get("window_users"),
        "replay_users": record.get("replay_users"),
        "new_items": record.get("new_items"),
        "steps": record["steps"],
        "epochs": record.get("epochs"),
        "stop_reason": record.get("stop_reason"),
        "status": record["status"],
        "reason": record.get("reason"),
        "round_s": round_s,
        "round_s_total": round(total_s, 3),
        # CPU seconds of this process (all threads) during run_once: less sensitive to other jobs' load
        "round_cpu_s_total": round(cpu_s, 3),
        "train_s": train_s,
        "publish_s": publish_s,
        # the round minus training: vocabulary growth, the two loss probes, held-out evaluation of both models
        "round_other_s": round(round_s - train_s, 3),
        # run_once minus the round and publishing: serving checkpoint load, build_window, the record
        "load_and_window_s": round(total_s - round_s - (publish_s or 0.0), 3),
        "updates_s": round(updates_s, 3),
        "process_warmup_s": round(warmup_s, 3),
        # seconds (and calls) of the worker's and the round's steps inside run_once
        "breakdown": {name: {"calls": int(v["calls"]), "s": round(v["s"], 3)} for name, v in calls.items()},
        "staleness_s": record.get("staleness_s_max"),
        "staleness_s_p50": record.get("staleness_s_p50"),
        "heldout_ndcg10_serving": record.get(f"heldout_{GUARD_METRIC}_serving"),
        "heldout_ndcg10_candidate": record.get(f"heldout_{GUARD_METRIC}_candidate"),
        "loss_before": record.get("loss_before"),
        "loss_after": record.get("loss_after"),
        "threads": n_threads if worker.device.type == "cpu" else None,
        "device": str(worker.device),
        "torch_version": torch.__version__,
        "machine": machine,
        "model": model_info,
        "finetune_config": fcfg.model_dump(),
        "stream_window": scfg.window,
        "sequence_update_partitions": scfg.topics.sequence_updates.partitions,
        "goal": {"round_s_max": GOAL_ROUND_S, "window_events_min": GOAL_WINDOW_EVENTS,
                 "met": bool(record["status"] in ("published", "rejected") and round_s <= GOAL_ROUND_S
                             and n_events >= GOAL_WINDOW_EVENTS)},
        "record": record,
    }
