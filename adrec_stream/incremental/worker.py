"""The fine-tune worker process (``adrec-stream worker finetune``): keeps the served ADRec fresh.

A plain Kafka consumer, not a Faust agent: a round trains for up to ``finetune.max_seconds`` and must never
stall a consumer group or cause a rebalance. The worker assigns itself every partition of the
sequence-updates topic (no group membership, so nothing to rebalance while it trains), reads it from the
beginning at start (each update carries the user's whole window, so the newest update per user rebuilds every
user's window: the replay pool) and keeps reading between rounds.

Reading state: it reads the sequence-updates topic, never the ingest workers' RocksDB stores, so it needs no
store lock, works on any host that reaches the broker, and sees exactly what the scoring side sees. What a
version was trained on is recorded in the version itself (``meta["finetune"]["cut"]``: per sequence-updates
partition, the last offset its window covered), so a restarted worker knows which clicks are fresh without
any local state.

Schedule: a round starts when ``min_new_events`` updates arrived since the last round, or ``interval_s``
passed and something new arrived; only once the consumer has caught up with the topic. The round
(:mod:`adrec_stream.incremental.round`) starts from the registry's current version (``LATEST``), so a
rollback is honoured by the next round. A candidate that passes the guards is saved
(:func:`~adrec_stream.model.checkpoint.save_checkpoint`: temp file, fsync, rename), published
(:meth:`~adrec_stream.serving.registry.ModelRegistry.publish`: staging folder, fsync, rename, then the
``LATEST`` pointer; a registry at an fsspec URL: claim, upload, manifest last) and the registry is pruned to
``keep_versions``; the new version is then announced on ``topics.model_versions`` (``model_versions.announce``),
on which every score worker switches at once; score workers also poll ``LATEST`` every ``registry_poll_s`` (the
fallback for a missed announcement) and swap the model between two batches.

Every round logs one ``finetune_round`` JSON line (window, steps, losses, held-out metrics old vs new,
seconds, staleness) and the counters (``rounds``, ``published``, ``rejected`` by reason).

Operations: the worker's :class:`~adrec_stream.ops.metrics.WorkerMetrics` (updates consumed, rounds by outcome,
rejections by reason, the last round's held-out NDCG@10 and seconds, the version it published, lag per partition:
fetch high watermark minus position, refreshed after every poll - not while a round trains) and readiness (caught up
with the topic at least once, a model version in the registry, lag not growing for ``ops.lag_growth_not_ready_s``),
served by :func:`run_finetune_worker` on ``ops.ports.finetune``.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adrec_stream.errors import CheckpointError
from adrec_stream.incremental.distributed import check_distributed, run_distributed_round
from adrec_stream.incremental.round import (
    GUARD_METRIC,
    NOT_TRAINED_REASONS,
    RoundOutcome,
    build_window,
    run_round,
)
from adrec_stream.incremental.updates import BadUpdateError, UpdateTracker, parse_update
from adrec_stream.logging import get_logger
from adrec_stream.model.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from adrec_stream.ops.http import Readiness, serve_ops
from adrec_stream.ops.lag import ConsumerLag
from adrec_stream.ops.metrics import WorkerMetrics
from adrec_stream.runtime import resolve_device
from adrec_stream.serving.registry import open_registry
from adrec_stream.stream.config import StreamConfig

#: records asked for per poll
POLL_MAX_RECORDS = 5000
#: the checkpoint meta keys a new version inherits from its parent (training facts stay with the parent)
INHERITED_META = ("dataset", "trained_on", "train_fraction")


@dataclass
class FinetuneHooks:
    """Test-only hooks, all off in production (the CLI hides the flags that set them).

    Attributes:
        hold_publish_s: sleep this long inside publish, after the checkpoint is staged in the registry and
            before the version is committed (a test kills the worker there with SIGKILL).
    """

    hold_publish_s: float = 0.0

    def before_commit(self, log: Any) -> Callable[[Path], None] | None:
        """The registry ``before_commit`` callback for these hooks (None when off)."""
        if self.hold_publish_s <= 0:
            return None

        def hold(staging: Path) -> None:
            log.warning("publish_held_by_test_hook", staging=str(staging), seconds=self.hold_publish_s)
            time.sleep(self.hold_publish_s)

        return hold


@dataclass
class FinetuneCounters:
    """Counters of one fine-tune worker (logged after every round and at shutdown)."""

    updates_consumed: int = 0
    bad_updates: int = 0
    rounds: int = 0
    published: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    skipped: int = 0
    last_version: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-able copy; ``rounds_rejected`` is the total over reasons; ``last_published_version`` is the
        newest version this worker published (None before its first)."""
        return {"updates_consumed": self.updates_consumed, "bad_updates": self.bad_updates, "rounds": self.rounds,
                "published": self.published, "rounds_rejected": sum(self.rejected.values()),
                "rejected_by_reason": dict(self.rejected), "skipped": self.skipped,
                "last_published_version": self.last_version}

    def export(self, metrics: WorkerMetrics) -> None:
        """Mirror the counters into a "finetune" :class:`~adrec_stream.ops.metrics.WorkerMetrics`: records consumed
        (valid + bad), skipped ``bad_update``, updates consumed, rounds by outcome (published, rejected), rejected
        rounds by reason, the last published version."""
        m = metrics
        m.sync(m.consumed, self.updates_consumed + self.bad_updates)
        m.sync(m.skipped, self.bad_updates, "bad_update")
        m.sync(m.ft_updates, self.updates_consumed)
        m.sync(m.ft_rounds, self.published, "published")
        m.sync(m.ft_rounds, sum(self.rejected.values()), "rejected")
        for reason, n in self.rejected.items():
            m.sync(m.ft_rejected, n, reason)
        if self.last_version is not None:
            m.ft_published_version.set(self.last_version)


def serving_cut(ckpt: Checkpoint, topic: str) -> dict[int, int]:
    """Partition -> last sequence-updates offset the checkpoint's training covered (``{}``: none, e.g. a model
    trained offline, or one trained on another topic)."""
    info = ckpt.meta.get("finetune") if isinstance(ckpt.meta, dict) else None
    if not isinstance(info, dict) or info.get("topic") != topic or not isinstance(info.get("cut"), dict):
        return {}
    return {int(p): int(o) for p, o in info["cut"].items()}


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


class FinetuneWorker:
    """See the module docstring.

    Args:
        cfg: the stream config (topics, registry_dir, state_dir, ``finetune`` section).
        device: overrides ``finetune.device`` ("auto", "cpu", "cuda", "cuda:N").
        hooks: test hooks (default: none).

    Rounds run in this process, or, when ``finetune.distributed`` names more than one rank, as a torchrun job
    (:mod:`adrec_stream.incremental.distributed`) whose accepted candidate this process publishes.

    Raises:
        ConfigError: the device is unknown or CUDA was requested without CUDA; ``finetune.distributed`` asks for
            nccl without CUDA or for more ranks per host than it has GPUs.
    """

    def __init__(self, cfg: StreamConfig, *, device: str | None = None, hooks: FinetuneHooks | None = None) -> None:
        self.cfg = cfg
        self.fcfg = cfg.finetune
        self.device = resolve_device(device or self.fcfg.device)
        check_distributed(self.fcfg, self.device)
        self.hooks = hooks or FinetuneHooks()
        self.topic = cfg.topics.sequence_updates.name
        self.registry = open_registry(cfg.registry_dir, cache_dir=cfg.registry_cache)
        self._announcer: Any = None
        self.tracker = UpdateTracker(self.fcfg.max_window_events)
        self.counters = FinetuneCounters()
        self.log = get_logger("adrec_stream.worker.finetune", topic=self.topic)
        self._stop = threading.Event()
        self._rng = np.random.default_rng(self.fcfg.seed)
        self._candidate_dir = Path(cfg.state_dir) / "finetune" / "candidate"
        self._round_dir = Path(cfg.state_dir) / "finetune" / "round"  # a distributed round's spec and outcome
        self._last_round = time.monotonic()
        self._consumed_at_round = 0
        self.metrics = WorkerMetrics("finetune", group=cfg.groups.finetune, recent_window_s=cfg.ops.recent_window_s)
        self.lag = ConsumerLag(self.topic, self.metrics)
        self.lag.assign(range(cfg.topics.sequence_updates.partitions))
        self.caught_up = False
        self.readiness = Readiness()
        self.readiness.add("caught_up", self._caught_up_check)
        self.readiness.add("model", self._model_check)
        self.readiness.add("lag", lambda: self.lag.check(cfg.ops.lag_growth_not_ready_s))
        self.metrics.watch_readiness(lambda: self.readiness.evaluate()["ready"])

    # ------------------------------------------------------------------ control
    def stop(self) -> None:
        """Ask the loop (and a round in progress, between two steps) to stop."""
        self._stop.set()

    # ------------------------------------------------------------------ consuming
    def ingest(self, records: list[tuple[int, int, bytes]]) -> int:
        """Take raw (partition, offset, value) records of the sequence-updates topic; bad ones are counted and
        logged, never fatal. Returns the number of valid updates."""
        good = []
        for partition, offset, value in records:
            try:
                good.append(parse_update(value, partition, offset, item_id_type=self.cfg.item_id_type))
            except BadUpdateError as err:
                self.counters.bad_updates += 1
                self.log.warning("bad_sequence_update", partition=partition, offset=offset, error=str(err))
        n = self.tracker.add(good)
        self.counters.updates_consumed += n
        return n

    def refresh_lag(self, log_end: dict[int, int | None], positions: dict[int, int | None]) -> dict[int, int]:
        """Lag per partition from the consumer's fetch high watermarks and positions (everything polled is taken
        in before the next poll, so the position is the next offset to process); the first time every partition is
        at its log end, the worker counts as caught up (readiness). Returns partition -> lag."""
        lags = self.lag.refresh(log_end, positions)
        if not self.caught_up and len(lags) == len(self.lag.assigned) and sum(lags.values()) == 0:
            self.caught_up = True
            self.log.info("finetune_caught_up", topic=self.topic, updates_consumed=self.counters.updates_consumed)
        self.counters.export(self.metrics)
        return lags

    def _caught_up_check(self) -> tuple[bool, str]:
        if self.caught_up:
            return True, ""
        total = self.lag.total()
        return False, (f"not caught up with {self.topic} yet"
                       + (f" ({total} records behind)" if total is not None else " (no fetch response yet)"))

    def _model_check(self) -> tuple[bool, str]:
        if self.registry.current_version() is not None:
            return True, ""
        return False, (f"no model version in the registry at {self.registry.root} (rounds are skipped until one is "
                       "published: adrec-stream model publish CHECKPOINT)")

    def _export_round(self, record: dict[str, Any]) -> None:
        """The counters and, for a round that trained (published or rejected), its held-out NDCG@10 and seconds."""
        self.counters.export(self.metrics)
        if record.get("status") not in ("published", "rejected"):
            return
        m = self.metrics
        for model in ("candidate", "serving"):
            value = record.get(f"heldout_{GUARD_METRIC}_{model}")
            m.ft_heldout.labels(model).set(float(value) if value is not None else float("nan"))
        m.ft_round_seconds.set(float(record.get("round_s") or 0.0))

    def due(self, now: float | None = None) -> bool:
        """Whether a round should start now (see the module docstring; the caller checks catching up)."""
        new = self.tracker.consumed - self._consumed_at_round
        if new <= 0:
            return False
        now = time.monotonic() if now is None else now
        return new >= self.fcfg.min_new_events or now - self._last_round >= self.fcfg.interval_s

    # ------------------------------------------------------------------ rounds
    def run_once(self) -> dict[str, Any]:
        """Run one round now from the registry's current version; returns the ``finetune_round`` record.

        The record's ``status`` is "published", "rejected" (with ``reason``: diverged / heldout /
        distributed_failed) or "skipped" (no serving model, too few fresh clicks, or stopped).
        """
        self._last_round = time.monotonic()
        self._consumed_at_round = self.tracker.consumed
        found = self.registry.latest()
        if found is None:
            return self._skip("no_serving_model", hint=f"publish a model to {self.cfg.registry_dir} first: "
                              "adrec-stream model publish CHECKPOINT")
        parent_version, path = found
        try:
            parent = load_checkpoint(path, device="cpu")
        except CheckpointError as err:
            return self._skip("serving_model_unreadable", error=str(err), version=parent_version)
        cut = serving_cut(parent, self.topic)
        fresh = self.tracker.fresh(cut)
        if len(fresh) < self.fcfg.min_round_events:
            return self._skip("too_few_fresh_events", fresh_events=len(fresh),
                              min_round_events=self.fcfg.min_round_events, serving_version=parent_version)
        window = build_window(fresh, self.tracker.pool(cut), cut, self.fcfg, self._rng, max_len=parent.model.max_len)
        self.counters.rounds += 1
        if self.fcfg.distributed.enabled:
            outcome = run_distributed_round(path, parent.vocab, window, self.fcfg, self.device, self._round_dir,
                                            should_stop=self._stop.is_set, log=self.log)
        else:
            outcome = run_round(parent.model, parent.vocab, window, self.fcfg, self.device,
                                should_stop=self._stop.is_set, log=self.log)
        record = self._record(outcome, parent_version)
        if outcome.reason in NOT_TRAINED_REASONS:
            record.update(status="skipped", reason=outcome.reason)
            self.counters.skipped += 1
        elif not outcome.accepted:
            self.counters.rejected[outcome.reason] = self.counters.rejected.get(outcome.reason, 0) + 1
            record.update(status="rejected", reason=outcome.reason, error=outcome.error, serving_version=parent_version)
        else:
            t_pub = time.perf_counter()
            version = self._publish(parent, parent_version, outcome)
            now = time.time()
            ages = [now - u.ingest_ts for u in outcome.window.train if u.ingest_ts is not None]
            self.counters.published += 1
            self.counters.last_version = version
            record.update(status="published", version=version, publish_s=round(time.perf_counter() - t_pub, 3),
                          staleness_s_p50=_round(_percentile(ages, 50)),
                          staleness_s_max=_round(max(ages, default=None)), announced=self._announce(version))
        record.update(self.counters.as_dict())
        level = self.log.info if record["status"] == "published" else self.log.warning
        level("finetune_round", **record)
        self._export_round(record)
        return record

    def _skip(self, reason: str, **facts: Any) -> dict[str, Any]:
        self.counters.skipped += 1
        record = {"status": "skipped", "reason": reason, **facts, **self.counters.as_dict()}
        self.log.info("finetune_round", **record)
        self._export_round(record)
        return record

    def _record(self, o: RoundOutcome, parent_version: int) -> dict[str, Any]:
        w = o.window
        bounds = w.bounds()
        hs, hc = o.heldout_serving, o.heldout_candidate
        return {
            "parent_version": parent_version, "window_events": len(w.train), "window_users": w.fresh_users,
            "replay_users": w.replay_users, "holdout_events": len(w.holdout), "holdout_judged": hs.get("judged"),
            "new_items": len(o.new_items), "vocab_size": len(o.vocab), "steps": o.train.steps,
            "epochs": o.train.epochs, "stop_reason": o.train.stop_reason, "loss_before": _round(o.loss_before),
            "loss_after": _round(o.loss_after), "train_loss": _round(o.train.loss),
            f"heldout_{GUARD_METRIC}_serving": _round(hs.get(GUARD_METRIC)),
            f"heldout_{GUARD_METRIC}_candidate": _round(hc.get(GUARD_METRIC)),
            "heldout_HR@10_serving": _round(hs.get("HR@10")), "heldout_HR@10_candidate": _round(hc.get("HR@10")),
            "train_s": round(o.train.train_s, 3), "round_s": round(o.round_s, 3), "device": str(self.device),
            "world_size": self.fcfg.distributed.world_size,
            "first_event_ts": bounds["first_event_ts"], "last_event_ts": bounds["last_event_ts"],
        }

    def _publish(self, parent: Checkpoint, parent_version: int, o: RoundOutcome) -> int:
        """Save the candidate with its manifest and publish it; prune old versions. Returns the new version."""
        assert o.candidate is not None
        counts = o.vocab.counts([[u.clicked for u in o.window.train]], base=parent.meta.get("item_counts"))
        bounds = o.window.bounds()
        manifest = {
            "source": "finetune", "parent_version": parent_version, "vocab_size": len(o.vocab),
            "parent_vocab_size": len(parent.vocab), "new_items": len(o.new_items), "window": bounds,
            "heldout": {"metric": GUARD_METRIC, "serving": o.heldout_serving, "candidate": o.heldout_candidate,
                        "tolerance": self.fcfg.tolerance},
            "loss_before": _round(o.loss_before), "loss_after": _round(o.loss_after), "steps": o.train.steps,
            "wall_s": round(o.round_s, 3), "device": str(self.device),
        }
        cut = {str(p): off for p, off in sorted(o.window.cut.items())}
        meta = {k: parent.meta[k] for k in INHERITED_META if k in parent.meta}
        meta.update(item_counts=counts, parent_version=parent_version,
                    vocabulary={"size": len(o.vocab), "parent_size": len(parent.vocab), "added": o.new_items[:1000]},
                    finetune={"topic": self.topic, "cut": cut, "window": bounds})
        ckpt_path = save_checkpoint(self._candidate_dir / "model.pt", o.candidate.cpu(), vocab=o.vocab.raw_ids,
                                    config=parent.config, meta=meta)
        version = self.registry.publish(ckpt_path, meta=manifest, move=True,
                                        before_commit=self.hooks.before_commit(self.log))
        pruned = self.registry.prune(self.fcfg.keep_versions)
        if pruned:
            self.log.info("registry_pruned", versions=pruned, keep=self.fcfg.keep_versions)
        return version

    def _announce(self, version: int) -> bool:
        """Announce ``version`` on the model-versions topic (``model_versions.announce``); a failure is logged, not
        fatal (score workers still find the version at their next registry poll). True if delivered."""
        if not self.cfg.model_versions.announce:
            return False
        from adrec_stream.errors import AdrecStreamError  # noqa: PLC0415
        from adrec_stream.serving.announce import Announcer  # noqa: PLC0415

        if self._announcer is None:
            self._announcer = Announcer(self.cfg)
        try:
            ann = self._announcer.announce(self.registry, version, source="finetune")
        except AdrecStreamError as err:
            self.log.warning("model_version_not_announced", version=version, error=str(err))
            return False
        self.log.info("model_version_announced", topic=self._announcer.topic, version=version,
                      sha256=ann["sha256"], registry=ann["registry"])
        return True

    # ------------------------------------------------------------------ the loop
    def _consumer(self) -> Any:
        from kafka import KafkaConsumer, TopicPartition  # noqa: PLC0415

        from adrec_stream.broker.security import kafka_client_kwargs  # noqa: PLC0415
        from adrec_stream.stream.undecodable import install_undecodable_batch_errors  # noqa: PLC0415

        install_undecodable_batch_errors()  # a batch it cannot decode: one clear error, not a bare library one

        consumer = KafkaConsumer(
            **kafka_client_kwargs(self.cfg), group_id=None, enable_auto_commit=False,
            client_id=f"{self.cfg.client_id}-finetune", auto_offset_reset="earliest",
            fetch_max_wait_ms=int(self.cfg.consumer.fetch_max_wait_s * 1000),
            request_timeout_ms=int(self.cfg.consumer.request_timeout_s * 1000),
            max_poll_records=POLL_MAX_RECORDS,
        )
        tps = [TopicPartition(self.topic, p) for p in range(self.cfg.topics.sequence_updates.partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        return consumer

    def run(self) -> int:
        """Consume and run rounds until :meth:`stop` (SIGTERM/SIGINT when run by :func:`run_finetune_worker`).

        Returns:
            0 after a clean stop.

        Raises:
            BrokerError: the broker cannot be reached at start.
            UndecodableBatchError: a record batch of the sequence-updates topic cannot be decoded (logged once as
                ``undecodable_record_batch`` with topic, partition, offset and cause).
        """
        if self.device.type == "cpu":
            torch.set_num_threads(self.fcfg.threads)
        if self.fcfg.nice:
            # training is background work: on a host shared with ingest and score workers, let them go first
            os.nice(self.fcfg.nice)
        # the first optimiser of a process imports torch._dynamo (1.5-30 s on a loaded host): pay it now, not out
        # of the first round's max_seconds (a fresh user's first round ended with 0 steps)
        torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])
        removed = self.registry.clean_staging()
        if removed:
            self.log.warning("stale_publish_staging_removed", paths=[str(p) for p in removed],
                             hint="a fine-tune worker died while publishing; no version was committed from it")
        consumer = self._consumer()
        self.log.info("finetune_started", device=str(self.device), registry=self.cfg.registry_dir,
                      interval_s=self.fcfg.interval_s, min_new_events=self.fcfg.min_new_events,
                      max_window_events=self.fcfg.max_window_events, pid=os.getpid())
        try:
            while not self._stop.is_set():
                polled = consumer.poll(timeout_ms=500, max_records=POLL_MAX_RECORDS)
                n, t0 = 0, time.perf_counter()
                for tp, msgs in polled.items():
                    n += len(msgs)
                    self.ingest([(tp.partition, m.offset, m.value) for m in msgs])
                if n:
                    self.metrics.observe_batch(n, time.perf_counter() - t0)
                tps = consumer.assignment()
                # timeout 0: the position if known, None while its reset is in flight (never blocks the loop)
                self.refresh_lag({tp.partition: consumer.highwater(tp) for tp in tps},
                                 {tp.partition: consumer.position(tp, timeout_ms=0) for tp in tps})
                caught_up = n < POLL_MAX_RECORDS
                if caught_up and self.due():
                    self.run_once()
        finally:
            consumer.close()
            if self._announcer is not None:
                self._announcer.close()
            self.log.info("finetune_stopped", **self.counters.as_dict())
        return 0


def _round(x: float | None, nd: int = 5) -> float | None:
    if x is None:
        return None
    return round(float(x), nd) if np.isfinite(x) else float(x)


def run_finetune_worker(cfg: StreamConfig, *, device: str | None = None, hooks: FinetuneHooks | None = None) -> int:
    """Run a :class:`FinetuneWorker` in the foreground until SIGTERM/SIGINT; returns the exit code (0).

    Raises:
        ConfigError: bad device, or the operations endpoint's port is in use. BrokerError: the cluster is
            unreachable.
    """
    from adrec_stream.broker.admin import ensure_topics  # noqa: PLC0415
    from adrec_stream.broker.process import effective_bootstrap  # noqa: PLC0415
    from adrec_stream.broker.security import security_of  # noqa: PLC0415

    worker = FinetuneWorker(cfg, device=device, hooks=hooks)  # a bad device fails before the broker is asked
    security = security_of(cfg)  # credentials missing / unreadable: ConfigError (exit 2) before anything starts
    worker.log.info("kafka_security", **security.describe())
    ensure_topics(effective_bootstrap(cfg), cfg.topics.all(), security=security)

    def _on_signal(signum: int, _frame: Any) -> None:
        worker.log.info("finetune_stop_requested", signal=signal.Signals(signum).name)
        worker.stop()

    server = serve_ops(cfg.ops, "finetune", worker.metrics.registry, worker.readiness)  # port in use: ConfigError
    old = {s: signal.signal(s, _on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        return worker.run()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if server is not None:
            server.stop()


