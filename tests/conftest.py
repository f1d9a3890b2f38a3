"""Shared fixtures: one embedded Tansu broker per test session, per-test stream configs, a tiny model registry.

The broker (``broker`` fixture) is started on a free loopback port with its PID/log files in a temporary
folder and stopped at the end of the session. Tests that need it get their own topic names (a unique
prefix per test), so they never see each other's records on the shared broker.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from adrec_stream.broker.admin import ensure_topics
from adrec_stream.broker.process import BrokerHandle, start_broker, stop_broker
from adrec_stream.procs import die_with_parent
from adrec_stream.stream.config import BrokerConfig, StreamConfig

REPO_ROOT = Path(__file__).resolve().parent.parent
_counter = itertools.count()


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Tiny tensors: one torch thread avoids oversubscription stalls on a shared 2-core machine."""
    import torch  # noqa: PLC0415

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def broker_config(tmp_path_factory: pytest.TempPathFactory) -> BrokerConfig:
    """Broker section with PID/log/state files in a session temp folder (port chosen at start)."""
    d = tmp_path_factory.mktemp("broker")
    return BrokerConfig(data_dir=str(d), pid_file=str(d / "tansu.pid"), log_file=str(d / "tansu.log"))


@pytest.fixture(scope="session")
def broker(broker_config: BrokerConfig) -> Iterator[BrokerHandle]:
    """A running embedded broker for the whole session (free port); stopped afterwards."""
    handle = start_broker(broker_config, port=0, owned=True)  # dies with the session, even on SIGKILL
    try:
        yield handle
    finally:
        stop_broker(broker_config)


@pytest.fixture
def stream_config(broker: BrokerHandle, broker_config: BrokerConfig, tmp_path: Path) -> StreamConfig:
    """A StreamConfig on the session broker with unique topic names and state/registry under tmp_path.

    The topics are created (clicks/sequence-updates/recommendations: 2 partitions, dead-letter and model-versions: 1).
    The workers'
    operations endpoints listen on free ports (``ops.ports.*: 0``; :meth:`Worker.ops_url` reads the port).
    """
    prefix = f"t{os.getpid()}-{next(_counter)}"
    cfg = StreamConfig.model_validate({
        "broker": {**broker_config.model_dump(), "port": broker.port, "tansu_compat": True},
        "topics": {
            "clicks": {"name": f"{prefix}-clicks", "partitions": 2},
            "recommendations": {"name": f"{prefix}-recs", "partitions": 2},
            "dead_letter": {"name": f"{prefix}-dead", "partitions": 1},
            "sequence_updates": {"name": f"{prefix}-updates", "partitions": 2},
            "model_versions": {"name": f"{prefix}-versions", "partitions": 1, "configs": {"cleanup.policy": "compact"}},
        },
        "groups": {"app": f"{prefix}-app", "ingest": f"{prefix}-ingest", "scoring": f"{prefix}-scoring",
                   "finetune": f"{prefix}-finetune"},
        "state_dir": str(tmp_path / "state"),
        "registry_dir": str(tmp_path / "registry"),
        "registry_poll_s": 1.0,
        "window": 20,
        "batch": {"ingest_max_records": 100, "score_max_users": 64},  # the default natural batching in both agents
        # several workers of one role run at once (and other checkouts' tests on this host): free ports, read
        # from each worker's ops_http_listening line (ops_url)
        "ops": {"ports": {"ingest": 0, "score": 0, "finetune": 0}},
    })
    ensure_topics(broker.bootstrap, cfg.topics.all())
    return cfg


def write_stream_config(cfg: StreamConfig, path: Path) -> Path:
    """Write ``cfg`` as YAML (for worker subprocesses) and return the path."""
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    return path


TINY_VOCAB = [str(i) for i in range(1, 41)]  # raw item ids "1".."40" -> internal 1..40


def tiny_checkpoint(path: Path, seed: int = 0) -> Path:
    """Save an untrained tiny ADRec (the :data:`TINY_VOCAB` items, d=16, T=4, seeded) at ``path``; returns the path."""
    import torch

    from adrec_stream.model import ModelConfig, build_model, save_checkpoint

    torch.manual_seed(seed)
    mcfg = ModelConfig(hidden_size=16, max_len=10, num_heads=2, num_blocks=1, diffusion_steps=4)
    counts = [0] + [len(TINY_VOCAB) - i for i in range(len(TINY_VOCAB))]
    return save_checkpoint(path, build_model(len(TINY_VOCAB), mcfg).eval(), vocab=TINY_VOCAB,
                           config=mcfg.model_dump(mode="json"), meta={"item_counts": counts})


@pytest.fixture
def tiny_registry(stream_config: StreamConfig, tmp_path: Path) -> list[str]:
    """Publish an untrained tiny ADRec (40 items, d=16, T=4) as version 1; returns its vocabulary."""
    import torch

    from adrec_stream.model import ModelConfig, build_model, save_checkpoint
    from adrec_stream.serving.registry import ModelRegistry

    torch.manual_seed(0)
    mcfg = ModelConfig(hidden_size=16, max_len=10, num_heads=2, num_blocks=1, diffusion_steps=4)
    model = build_model(len(TINY_VOCAB), mcfg).eval()
    counts = [0] + [len(TINY_VOCAB) - i for i in range(len(TINY_VOCAB))]
    path = save_checkpoint(tmp_path / "ckpt" / "model.pt", model, vocab=TINY_VOCAB,
                           config=mcfg.model_dump(mode="json"), meta={"item_counts": counts})
    ModelRegistry(stream_config.registry_dir).publish(path, meta={"item_counts": counts})
    return TINY_VOCAB


class Worker:
    """A worker subprocess (``python -m workers.<role>``) with its log file, for integration tests."""

    def __init__(self, role: str, config_path: Path, log_path: Path, *extra: str) -> None:
        self.role = role
        self.log_path = log_path
        self.cmd = [sys.executable, "-m", f"workers.{role}", "--config", str(config_path), *extra]
        with open(log_path, "ab") as logf:
            self.proc = subprocess.Popen(self.cmd, stdout=logf, stderr=subprocess.STDOUT, cwd=str(REPO_ROOT),
                                         env={**os.environ, "OMP_NUM_THREADS": "1"}, preexec_fn=die_with_parent)

    def log(self) -> str:
        """Whole log text."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for(self, marker: str, timeout_s: float = 60.0, count: int = 1) -> None:
        """Wait until ``marker`` appears ``count`` times in the log; fail with the log tail otherwise."""
        deadline = time.time() + timeout_s
        while self.log().count(marker) < count:
            if self.proc.poll() is not None and self.log().count(marker) < count:
                pytest.fail(f"{self.role} worker exited ({self.proc.returncode}) before {marker!r}:\n"
                            + "\n".join(self.log().splitlines()[-15:]))
            if time.time() > deadline:
                pytest.fail(f"{self.role} worker: no {marker!r} after {timeout_s} s:\n"
                            + "\n".join(self.log().splitlines()[-15:]))
            time.sleep(0.1)

    def ops_url(self, timeout_s: float = 60.0) -> str:
        """``http://host:port`` of the worker's operations endpoint (its last ``ops_http_listening`` line)."""
        self.wait_for('"ops_http_listening"', timeout_s)
        return last_log_event(self.log(), "ops_http_listening")["url"]

    def stop(self, timeout_s: float = 15.0) -> int:
        """SIGTERM, then SIGKILL after ``timeout_s``; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


@pytest.fixture
def spawn_worker(tmp_path: Path) -> Iterator:
    """Factory ``spawn_worker(role, cfg, *extra) -> Worker``; every worker is stopped after the test."""
    started: list[Worker] = []

    def spawn(role: str, cfg: StreamConfig, *extra: str) -> Worker:
        cfg_path = write_stream_config(cfg, tmp_path / f"stream-{role}.yaml")
        w = Worker(role, cfg_path, tmp_path / f"{role}-{len(started)}.log", *extra)
        started.append(w)
        return w

    yield spawn
    for w in started:
        w.stop()
        # Shown by pytest only when the test failed: the worker's own structured events, for diagnosis.
        events = [ln for ln in w.log().splitlines() if ln.lstrip().startswith("{") or '{"' in ln]
        print(f"--- {w.role} worker log ({w.log_path}), last {min(len(events), 60)} JSON lines ---",
              *events[-60:], sep="\n", file=sys.stderr)


def click_producer(bootstrap: str, **overrides):
    """A kafka-python producer for test clicks: acks=all, linger 5 ms, NOT idempotent (``overrides`` win).

    Not idempotent because a Tansu memory broker restarted empty has forgotten every producer id: an idempotent
    kafka-python producer then fails every later send with ``UnknownError`` (error -1 on its InitProducerId or
    produce; seen in CI after ``restart_broker_empty``). The pipeline deduplicates clicks by ``event_id``, so a
    test client, like a user's click producer, needs no broker-side idempotence.
    """
    from kafka import KafkaProducer

    return KafkaProducer(**{"bootstrap_servers": bootstrap, "acks": "all", "linger_ms": 5,
                            "enable_idempotence": False, **overrides})


#: attempts per record in :func:`send_checked` (a failed delivery is re-sent, never silently dropped)
SEND_ATTEMPTS = 8


def send_checked(producer, topic: str, records: list[tuple[bytes | None, bytes | None]],
                 partition: int | None = None, *, flush_s: float = 30.0) -> None:
    """Send (key, value) records in order, flush, and make sure EVERY one was delivered.

    A record whose delivery failed (e.g. a non-retriable ``UnknownError`` from a broker that has just restarted)
    is re-sent, in the original order among the failed ones, up to :data:`SEND_ATTEMPTS` times with a short
    backoff; if it still fails the test fails with the error. (Before this check, a failed delivery was dropped
    silently and a test waited in vain for records that were never in the log.)
    """
    pending = list(records)
    for attempt in range(1, SEND_ATTEMPTS + 1):
        futures = [producer.send(topic, key=k, value=v, partition=partition) for k, v in pending]
        producer.flush(flush_s)
        failed = [(rec, f.exception) for rec, f in zip(pending, futures, strict=True) if not f.succeeded()]
        if not failed:
            return
        if attempt == SEND_ATTEMPTS:
            raise AssertionError(f"{len(failed)} of {len(records)} records to {topic} not delivered after "
                                 f"{SEND_ATTEMPTS} attempts: {failed[0][1]!r}")
        pending = [rec for rec, _ in failed]
        time.sleep(0.25 * attempt)


def produce(bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes | None]]) -> None:
    """Produce (key, value) records in order (one producer, acks=all), flush and check every delivery."""
    producer = click_producer(bootstrap)
    try:
        send_checked(producer, topic, records)
    finally:
        producer.close(5)


@contextlib.contextmanager
def reader_from_beginning(bootstrap: str, topic: str) -> Iterator[tuple]:
    """A group-less kafka-python consumer assigned every partition of ``topic`` at its beginning, and those
    (TopicPartition) partitions; closed on exit."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                             fetch_max_wait_ms=100, auto_offset_reset="earliest")
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        yield consumer, tps
    finally:
        consumer.close()


def consume(bootstrap: str, topic: str, n: int, *, timeout_s: float = 60.0, settle_s: float = 1.5) -> list:
    """Read ``topic`` from the beginning until ``n`` records arrived, then ``settle_s`` more for extras.

    Returns the records (kafka-python ConsumerRecord) in arrival order; fewer than ``n`` on timeout.
    """
    with reader_from_beginning(bootstrap, topic) as (consumer, _):
        out: list = []
        deadline = time.time() + timeout_s
        settle_until = None
        while time.time() < (settle_until or deadline):
            for recs in consumer.poll(timeout_ms=200).values():
                out.extend(recs)
            if settle_until is None and len(out) >= n:
                settle_until = time.time() + settle_s
        return out


def last_log_event(log_text: str, event: str) -> dict:
    """The last structlog JSON line of ``event`` in a worker log (terminal escape prefixes ignored)."""
    import json

    lines = [ln for ln in log_text.splitlines() if f'"event": "{event}"' in ln]
    if not lines:
        raise AssertionError(f"no {event!r} line in the log")
    return json.loads(lines[-1][lines[-1].index("{"):])
