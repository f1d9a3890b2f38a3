"""``adrec-stream demo``: the product's main job, end to end on MovieLens 100K.

Steps (all settings in ``configs/demo.yaml``; relative paths there are relative to the repository root):

1. Read the interaction log (default ``../shared/data/events/ml-100k/u.data``) and split it by time: the
   first ``train_fraction`` (80%) of events trains the model, the rest (20%) is replayed as clicks.
2. Train ADRec (three stages, :func:`adrec_stream.training.trainer.train_model`) on per-user sequences of the
   training part, internal ids from its vocabulary, with a SMALL epoch budget (printed), or load it from the
   cache folder when the same data/config was trained before. It is published to a fresh model registry with
   ``item_counts`` (popularity fallback) in its meta.
3. Load the training part into the per-partition sequence stores (``bootstrap_state``, each user into the
   store of the clicks partition its key maps to) so known users keep their history;
   start the embedded broker (Tansu, free loopback port), the ingest and score workers as subprocesses, and
   wait until both have joined their consumer groups.
4. Replay the held-out part into the clicks topic (paced, default 100 events/s) while consuming the
   recommendations and dead-letter topics; wait until every valid click has a recommendation (or no progress
   for ``drain_timeout_s``).
5. Print a summary: events in, recommendations out, dead-lettered, prequential HR@k / NDCG@k
   (:mod:`adrec_stream.evaluation.prequential`) next to a popularity baseline, latency p50/p99 from click produce time to the
   recommendation's arrival at a consumer; the LAST line is one JSON object with those figures.

Everything started is stopped on exit, on errors and on Ctrl-C / SIGTERM (workers: SIGTERM then SIGKILL;
broker: :func:`~adrec_stream.stream.broker.stop_broker`). A worker that exits with
:data:`~adrec_stream.stream.app.EXIT_AGENT_CRASHED` is restarted (it resumes from its committed offset).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field

from adrec_stream.config import CONFIG_DIR, StrictModel, load_config
from adrec_stream.errors import AdrecStreamError, ConfigError, DataFileError
from adrec_stream.logging import get_logger
from adrec_stream.stream.broker import die_with_parent

REPO_ROOT = CONFIG_DIR.parent
DEFAULT_DEMO_CONFIG = CONFIG_DIR / "demo.yaml"
#: File that marks a work_dir as the demo's own (only such folders are wiped).
MARKER = ".adrec-demo"
log = get_logger("adrec_stream.demo")


class DemoEpochs(StrictModel):
    """Epoch budget per training stage (the paper trains up to 500 epochs with early stopping)."""

    pretrain: int = Field(8, ge=0)
    align: int = Field(2, ge=0)
    finetune: int = Field(6, ge=0)


class DemoConfig(StrictModel):
    """Settings of ``adrec-stream demo`` (``configs/demo.yaml``).

    ``bootstrap_state``: load the training part into the sequence store before the replay, so that users
    seen in training are scored with their full history (as a deployment that built its state from the
    historical log would); False starts every user from an empty window.
    ``experiment_overrides`` are dotted keys applied to the experiment YAML (e.g. ``train.batch_size: 128``:
    with ~750 training users a batch of 512 gives only 2 optimiser steps per epoch).
    """

    data: str = "../shared/data/events/ml-100k/u.data"
    data_format: Literal["auto", "ml100k", "mlcsv", "ml1m", "csv"] = "auto"
    train_fraction: float = Field(0.8, strict=False, gt=0, lt=1)
    stream_config: str = "configs/stream.yaml"
    experiment: str = "configs/adrec-cpu.yaml"
    epochs: DemoEpochs = DemoEpochs()
    experiment_overrides: dict[str, Any] = Field(default_factory=dict)
    train_threads: int = Field(2, ge=1)
    work_dir: str = "var/demo"
    cache_dir: str = "var/demo-cache"
    replay_rate_per_s: float = Field(100.0, strict=False, ge=0)
    replay_limit: int | None = Field(None, ge=1)
    exclude_history: bool = True
    bootstrap_state: bool = True
    top_k: int = Field(10, ge=1)
    ready_timeout_s: float = Field(120.0, strict=False, gt=0)
    drain_timeout_s: float = Field(120.0, strict=False, gt=0)
    max_worker_restarts: int = Field(3, ge=0)


def _repo_path(p: str | Path) -> Path:
    q = Path(p).expanduser()
    return q if q.is_absolute() else (REPO_ROOT / q)


def _say(msg: str) -> None:
    print(msg, flush=True)


# ------------------------------------------------------------------------------------------------ model
def _cache_key(train: list, exp: Any, epochs: DemoEpochs, data_path: Path) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"exp": exp.model_dump(mode="json"), "epochs": epochs.model_dump(), "data": data_path.name,
                         "format": 2}, sort_keys=True).encode())
    for x in train:
        h.update(f"{x.user}\t{x.item}\t{x.ts}\n".encode())
    return h.hexdigest()[:16]


def prepare_model(dcfg: DemoConfig, train: list, data_path: Path) -> tuple[Path, dict[str, Any]]:
    """Train ADRec on the training part (or reuse the cached checkpoint); returns (checkpoint path, facts).

    Facts: users, items, events, epochs per stage, wall seconds, and whether it came from the cache.
    """
    import torch  # noqa: PLC0415

    from adrec_stream.data.events import build_vocabulary, item_counts, user_sequences  # noqa: PLC0415
    from adrec_stream.model.checkpoint import save_checkpoint  # noqa: PLC0415
    from adrec_stream.training.config import load_experiment  # noqa: PLC0415

    exp = load_experiment(_repo_path(dcfg.experiment), dict(dcfg.experiment_overrides))
    vocab = build_vocabulary(train)
    seqs = user_sequences(train, vocab)
    facts: dict[str, Any] = {"train_events": len(train), "train_users": len(seqs), "items": len(vocab),
                             "epochs": dcfg.epochs.model_dump(), "kind": exp.model.kind}
    key = _cache_key(train, exp, dcfg.epochs, data_path)
    ckpt = _repo_path(dcfg.cache_dir) / f"{exp.model.kind}-{key}" / "model.pt"
    if ckpt.is_file():
        facts.update(cached=True, wall_s=0.0)
        return ckpt, facts
    from adrec_stream.training.trainer import train_model  # noqa: PLC0415

    torch.set_num_threads(dcfg.train_threads)
    t0 = time.perf_counter()
    res = train_model(list(seqs.values()), len(vocab), exp, epochs=dcfg.epochs.model_dump(), progress=False,
                      log=get_logger("adrec_stream.demo.train"))
    facts.update(cached=False, wall_s=time.perf_counter() - t0, epochs_run=res.epochs_run)
    counts = item_counts(train, vocab)
    save_checkpoint(ckpt, res.model, vocab=vocab, config=exp.model_dump(mode="json"),
                    meta={"item_counts": counts, "trained_on": str(data_path), "train_fraction": dcfg.train_fraction,
                          "epochs": dcfg.epochs.model_dump()})
    return ckpt, facts


# ---------------------------------------------------------------------------------------------- workers
class WorkerProcess:
    """One worker subprocess (``python -m workers.<role>``) with its log file and restart count."""

    def __init__(self, role: str, config_path: Path, log_dir: Path, extra: list[str]) -> None:
        self.role = role
        self.cmd = [sys.executable, "-m", f"workers.{role}", "--config", str(config_path), *extra]
        self.log_path = log_dir / f"{role}.log"
        self.proc: subprocess.Popen | None = None
        self.restarts = 0

    def start(self) -> None:
        """Start (or restart) the process, appending to its log."""
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(self.cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         cwd=str(REPO_ROOT), env={**os.environ, "OMP_NUM_THREADS": "1"},
                                         preexec_fn=die_with_parent)

    def log_text(self) -> str:
        """The whole log so far (empty if none)."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, n: int = 12) -> str:
        """Last ``n`` log lines."""
        return "\n".join(self.log_text().splitlines()[-n:])

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM, wait up to ``timeout_s``, then SIGKILL."""
        p = self.proc
        if p is None or p.poll() is not None:
            return
        p.terminate()
        try:
            p.wait(timeout_s)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


def _wait_ready(workers: list[WorkerProcess], markers: dict[str, list[str]], timeout_s: float) -> float:
    t0 = time.time()
    while True:
        missing = [w.role for w in workers if not all(m in w.log_text() for m in markers[w.role])]
        if not missing:
            return time.time() - t0
        for w in workers:
            if w.proc is not None and w.proc.poll() is not None:
                raise AdrecStreamError(f"{w.role} worker exited with code {w.proc.returncode} during start; "
                                       f"log {w.log_path}:\n{w.tail()}")
        if time.time() - t0 > timeout_s:
            raise AdrecStreamError(f"workers {missing} not ready after {timeout_s:.0f} s; logs in "
                                   f"{workers[0].log_path.parent}")
        time.sleep(0.2)


def _supervise(workers: list[WorkerProcess], max_restarts: int) -> None:
    """Restart workers that crashed (exit code EXIT_AGENT_CRASHED); raise for any other exit."""
    from adrec_stream.stream.app import EXIT_AGENT_CRASHED  # noqa: PLC0415

    for w in workers:
        rc = w.proc.poll() if w.proc is not None else None
        if rc is None:
            continue
        if rc == EXIT_AGENT_CRASHED and w.restarts < max_restarts:
            w.restarts += 1
            log.warning("worker_restart", role=w.role, exit_code=rc, restarts=w.restarts)
            w.start()
            continue
        raise AdrecStreamError(f"{w.role} worker exited with code {rc}; log {w.log_path}:\n{w.tail()}")


# ---------------------------------------------------------------------------------------------- stream
async def _stream_phase(bootstrap: str, scfg: Any, clicks: list, dcfg: DemoConfig,
                        workers: list[WorkerProcess]) -> dict[str, Any]:
    """Replay ``clicks`` and collect recommendations / dead letters until drained."""
    from aiokafka import AIOKafkaConsumer, TopicPartition  # noqa: PLC0415
    import orjson  # noqa: PLC0415

    from adrec_stream.stream.replay import produce_clicks  # noqa: PLC0415

    recs: dict[str, dict[str, Any]] = {}
    state = {"recommendations_out": 0, "dead_lettered": 0, "fallback": 0, "last_progress": time.time()}
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None,
                                fetch_max_wait_ms=int(min(scfg.consumer.fetch_max_wait_s, 0.1) * 1000),
                                auto_offset_reset="earliest", client_id="adrec-demo-collector")
    await consumer.start()
    try:
        tps = [TopicPartition(scfg.topics.recommendations.name, p)
               for p in range(scfg.topics.recommendations.partitions)]
        tps += [TopicPartition(scfg.topics.dead_letter.name, p) for p in range(scfg.topics.dead_letter.partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)

        async def collect() -> None:
            while True:
                batch = await consumer.getmany(timeout_ms=200, max_records=5000)
                now = time.time()
                for tp, msgs in batch.items():
                    if tp.topic == scfg.topics.dead_letter.name:
                        state["dead_lettered"] += len(msgs)
                        continue
                    for m in msgs:
                        state["recommendations_out"] += 1
                        v = orjson.loads(m.value)
                        eid = v.get("event_id")
                        if eid not in recs:
                            v["received_ts"] = now
                            recs[eid] = v
                            state["fallback"] += bool(v.get("fallback"))
                if batch:
                    state["last_progress"] = now

        collector = asyncio.create_task(collect())
        replay_task = asyncio.create_task(produce_clicks(bootstrap, scfg.topics.clicks.name, clicks,
                                                         rate_per_s=dcfg.replay_rate_per_s or None, progress=False))
        try:
            while not replay_task.done():
                _supervise(workers, dcfg.max_worker_restarts)
                await asyncio.wait({replay_task, collector}, timeout=0.5, return_when=asyncio.FIRST_COMPLETED)
                if collector.done():
                    collector.result()
            replay = replay_task.result()
            state["last_progress"] = max(state["last_progress"], time.time())
            expected = replay.sent
            while len(recs) + state["dead_lettered"] < expected:
                if collector.done():
                    collector.result()
                _supervise(workers, dcfg.max_worker_restarts)
                if time.time() - state["last_progress"] > dcfg.drain_timeout_s:
                    log.warning("drain_timeout", recommendations=len(recs), expected=expected)
                    break
                await asyncio.sleep(0.2)
            await asyncio.sleep(0.5)  # let straggling duplicates arrive, so the count is complete
        finally:
            for t in (collector, replay_task):
                t.cancel()
            await asyncio.gather(collector, replay_task, return_exceptions=True)
    finally:
        await consumer.stop()
    return {"replay": replay, "recs": recs, **state}


# --------------------------------------------------------------------------------------------- helpers
def _derived_stream_config(dcfg: DemoConfig, run_dir: Path) -> tuple[Any, Path]:
    """Load the stream config and point broker files, state and registry into ``run_dir``."""
    from adrec_stream.stream.config import load_stream_config  # noqa: PLC0415

    over = {
        "broker.embedded": True,
        "broker.tansu_compat": True,
        "broker.data_dir": str(run_dir / "broker"),
        "broker.pid_file": str(run_dir / "broker" / "tansu.pid"),
        "broker.log_file": str(run_dir / "broker" / "tansu.log"),
        "state_dir": str(run_dir / "state"),
        "registry_dir": str(run_dir / "registry"),
        "top_k": dcfg.top_k,
    }
    return load_stream_config(_repo_path(dcfg.stream_config), over), run_dir / "stream.yaml"


def _bootstrap_state(scfg: Any, train: list, source: str) -> dict[int, int]:
    """Apply the training interactions to the per-partition sequence stores (pseudo-topic ``bootstrap:<source>``).

    Each user's history goes into the store of the clicks partition its key (UTF-8 user id) maps to under
    the producer's default partitioner (:func:`~adrec_stream.state.partitioned.partition_for_key`), i.e.
    where the ingest worker that owns that partition will look for it. Returns clicks per partition.
    """
    from adrec_stream.state.partitioned import partition_for_key, partition_store_path  # noqa: PLC0415
    from adrec_stream.state.store import SequenceStore, SourceRecord  # noqa: PLC0415
    from adrec_stream.stream.events import ClickEvent  # noqa: PLC0415

    n = scfg.topics.clicks.partitions
    by_part: dict[int, list[SourceRecord]] = {}
    for i, x in enumerate(train):
        part = partition_for_key(str(x.user).encode("utf-8"), n)
        by_part.setdefault(part, []).append(
            SourceRecord(f"bootstrap:{source}", 0, i, ClickEvent(x.user, x.item, x.ts, f"{source}:{i}")))
    for part, records in by_part.items():
        with SequenceStore(partition_store_path(scfg.state_dir, scfg.topics.clicks.name, part),
                           window=scfg.window) as store:
            store.apply(records)
    return {p: len(r) for p, r in sorted(by_part.items())}


def _write_config(scfg: Any, path: Path) -> None:
    path.write_text(yaml.safe_dump(scfg.model_dump(mode="json"), sort_keys=False))


def _on_sigterm(signum: int, frame: Any) -> None:  # noqa: ARG001
    raise KeyboardInterrupt


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``--data``, ``--config`` and ``--limit``."""
    parser.add_argument("--data", default=None,
                        help="interaction log (default from configs/demo.yaml: ../shared/data/events/ml-100k/u.data)")
    parser.add_argument("--config", default=str(DEFAULT_DEMO_CONFIG), help="demo config YAML")
    parser.add_argument("--limit", type=_positive_int, default=None, help="replay at most N held-out events (N >= 1)")
    parser.add_argument("--rate", type=_non_negative_float, default=None,
                        help="replay rate (events/s; default: config, 0 = max)")


def run(args: argparse.Namespace) -> int:
    """Run the demo; returns 0 when every valid click got a recommendation, 1 otherwise."""
    from adrec_stream.data.events import chronological_split, read_interactions  # noqa: PLC0415
    from adrec_stream.evaluation.prequential import (  # noqa: PLC0415
        latency_percentiles,
        popularity_recommendations,
        prequential_metrics,
    )
    from adrec_stream.serving.registry import ModelRegistry  # noqa: PLC0415
    from adrec_stream.stream.broker import start_broker, stop_broker  # noqa: PLC0415
    from adrec_stream.stream.replay import select_clicks  # noqa: PLC0415

    over: dict[str, Any] = {}
    if args.limit is not None:
        over["replay_limit"] = args.limit
    if args.rate is not None:
        over["replay_rate_per_s"] = args.rate
    dcfg = load_config(args.config, DemoConfig, over)
    data_path = Path(args.data).expanduser() if args.data else _repo_path(dcfg.data)
    if not data_path.is_file():
        raise DataFileError(
            f"demo data file not found: {data_path.resolve()} (expected an interaction log: MovieLens 100K u.data "
            "(user<TAB>item<TAB>rating<TAB>unix_ts), MovieLens ratings.csv (userId,movieId,rating,timestamp), "
            "MovieLens 1M ratings.dat (user::item::rating::ts) or a user,item,ts CSV; the default is "
            f"../shared/data/events/ml-100k/u.data relative to the repository {REPO_ROOT}); pass --data PATH"
        )
    run_dir = _repo_path(dcfg.work_dir)
    if run_dir.exists() and any(run_dir.iterdir()) and not (run_dir / MARKER).exists():
        raise ConfigError(f"work_dir {run_dir} exists and was not made by the demo (no {MARKER} file); the demo "
                          "wipes its work_dir at start: choose an empty or new folder")
    t_start = time.time()
    old_term = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        interactions = read_interactions(data_path, fmt=dcfg.data_format)
        train, rest = chronological_split(interactions, dcfg.train_fraction)
        n_users = len({x.user for x in interactions})
        n_items = len({x.item for x in interactions})
        _say(f"adrec-stream demo: {data_path.name} ({len(interactions):,} events, {n_users:,} users, {n_items:,} items); "
             f"train = first {dcfg.train_fraction:.0%} by time ({len(train):,} events), "
             f"replay = the remaining {len(rest):,} as clicks")
        ckpt, facts = prepare_model(dcfg, train, data_path)
        ep = facts["epochs"]
        budget = f"pretrain {ep['pretrain']} / align {ep['align']} / finetune {ep['finetune']} epochs"
        how = "loaded from cache " + str(ckpt.parent) if facts["cached"] else f"trained in {facts['wall_s']:.0f} s"
        _say(f"model: {facts['kind'].upper()} on {facts['train_users']:,} users / {facts['items']:,} items, "
             f"SMALL TRAINING BUDGET ({budget}; the paper trains up to 500 epochs with early stopping), {how}")
        if run_dir.exists():
            shutil.rmtree(run_dir)  # the broker's memory storage starts empty: old stored offsets would skip all
        (run_dir / "logs").mkdir(parents=True)
        (run_dir / MARKER).write_text("made by adrec-stream demo; wiped at each start\n")
        scfg, scfg_path = _derived_stream_config(dcfg, run_dir)
        clicks = select_clicks(interactions, data_path.name, skip_fraction=0.0, limit=None)[len(train):]
        if dcfg.replay_limit is not None:
            clicks = clicks[: dcfg.replay_limit]
        if dcfg.bootstrap_state:
            _bootstrap_state(scfg, train, data_path.name)
            _say(f"state: sequence store bootstrapped with the training part ({len(train):,} clicks, window "
                 f"{scfg.window}), so known users are scored with their history")
        with ExitStack() as stack:
            handle = start_broker(scfg.broker, port=0, topics=scfg.topics.all(), owned=True)
            stack.callback(stop_broker, scfg.broker)
            scfg = scfg.model_copy(update={"broker": scfg.broker.model_copy(update={"port": handle.port})})
            _write_config(scfg, scfg_path)
            registry = ModelRegistry(scfg.registry_dir)
            version = registry.publish(ckpt, meta={"source": "demo", **{k: v for k, v in facts.items()}})
            _say(f"broker: embedded Tansu at {handle.bootstrap} (memory storage, tansu_compat on); "
                 f"model registry version {version} at {scfg.registry_dir}")
            extra = ["--exclude-history"] if dcfg.exclude_history else []
            workers = [WorkerProcess("ingest", scfg_path, run_dir / "logs", []),
                       WorkerProcess("score", scfg_path, run_dir / "logs", extra)]
            for w in workers:
                stack.callback(w.stop)
                w.start()
            ready_s = _wait_ready(workers, {"ingest": ['"partitions_assigned"'],
                                            "score": ['"partitions_assigned"', '"model_version_loaded"']},
                                  dcfg.ready_timeout_s)
            _say(f"workers: ingest pid {workers[0].proc.pid}, score pid {workers[1].proc.pid} joined their "
                 f"consumer groups in {ready_s:.1f} s (logs in {run_dir / 'logs'})")
            res = asyncio.run(_stream_phase(handle.bootstrap, scfg, clicks, dcfg, workers))
        replay, recs = res["replay"], res["recs"]
        pq = prequential_metrics(((c.user_id, c.item_id, c.event_id) for c in clicks),
                                 {e: r.get("items", []) for e, r in recs.items()}, k=dcfg.top_k)
        history: dict[str, list[str]] = {}
        if dcfg.bootstrap_state:
            for x in train:
                history.setdefault(x.user, []).append(x.item)
        base = prequential_metrics(
            ((c.user_id, c.item_id, c.event_id) for c in clicks),
            popularity_recommendations((x.item for x in train), [(c.user_id, c.item_id, c.event_id) for c in clicks],
                                       dcfg.top_k, history=history, exclude_seen=dcfg.exclude_history),
            k=dcfg.top_k)
        timed = [r for r in recs.values() if r.get("produced_ts") is not None]
        lat = latency_percentiles([r["received_ts"] - r["produced_ts"] for r in timed])
        emit = latency_percentiles([r["emitted_ts"] - r["produced_ts"] for r in timed])
        k = dcfg.top_k
        _say(f"replay: {replay.sent:,} clicks in {replay.wall_s:.1f} s ({replay.rate_per_s:,.0f} events/s)")
        _say(f"pipeline: events in {replay.sent:,}, recommendations out {res['recommendations_out']:,} "
             f"({len(recs):,} distinct event ids, {res['recommendations_out'] - len(recs):,} duplicates), "
             f"dead-lettered {res['dead_lettered']:,}, popularity fallback {res['fallback']:,}, "
             f"worker restarts {sum(w.restarts for w in workers)}")
        _say(f"prequential (recommendation after click i of user u vs u's click i+1, {pq.judged:,} pairs, "
             f"{pq.missing:,} without recommendation): HR@{k} = {pq.hr:.4f}, NDCG@{k} = {pq.ndcg:.4f}")
        _say(f"baseline, same protocol: popularity in the training part"
             f"{' (seen items excluded)' if dcfg.exclude_history else ''}: HR@{k} = {base.hr:.4f}, "
             f"NDCG@{k} = {base.ndcg:.4f}")
        _say(f"latency click produce -> recommendation received: p50 {lat['p50_ms']:.0f} ms, "
             f"p99 {lat['p99_ms']:.0f} ms (-> published by the score worker: p50 {emit['p50_ms']:.0f} ms, "
             f"p99 {emit['p99_ms']:.0f} ms); total wall time {time.time() - t_start:.0f} s")
        summary = {"events_in": replay.sent, "recommendations_out": res["recommendations_out"],
                   "dead_lettered": res["dead_lettered"], f"HR@{k}": round(pq.hr, 4), f"NDCG@{k}": round(pq.ndcg, 4),
                   "p50_ms": round(lat["p50_ms"], 1), "p99_ms": round(lat["p99_ms"], 1)}
        print(json.dumps(summary), flush=True)
        return 0 if len(recs) + res["dead_lettered"] >= replay.sent else 1
    finally:
        signal.signal(signal.SIGTERM, old_term)
