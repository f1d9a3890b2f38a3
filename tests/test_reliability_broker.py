"""Scenario 5: the embedded broker restarts EMPTY under a running ingest worker (own private broker).

Tansu's memory storage loses all topics and committed offsets on restart, so new clicks start again at
offset 0, below the offsets the worker's store remembers. The worker must notice (``broker_reset_detected``
error event), reconcile its stored offsets and apply the new clicks, without a process restart.
"""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
from conftest import click_producer, consume, last_log_event
from reliability_helpers import (
    by_event_id,
    click_records,
    expected_windows,
    produce_to,
    recreate_topic,
    restart_broker_empty,
    store_contents,
    wait_committed,
)

from adrec_stream.broker.admin import ensure_topics, true_end_offsets
from adrec_stream.broker.process import start_broker, stop_broker
from adrec_stream.data.events import Interaction
from adrec_stream.stream.config import BrokerConfig

pytestmark = pytest.mark.broker


@pytest.fixture
def private_broker(tmp_path: Path):
    """(BrokerConfig, port) of a broker owned by this test only (it gets restarted); always stopped."""
    d = tmp_path / "pbroker"
    bcfg = BrokerConfig(data_dir=str(d), pid_file=str(d / "tansu.pid"), log_file=str(d / "tansu.log"))
    handle = start_broker(bcfg, port=0, owned=True)
    bcfg = bcfg.model_copy(update={"port": handle.port, "tansu_compat": True})
    try:
        yield bcfg
    finally:
        stop_broker(bcfg)


def _clicks(n: int, start: int, users: int = 5) -> list[Interaction]:
    return [Interaction(f"u{i % users}", str(i % 40 + 1), 1_700_000_000.0 + i, f"e{i}") for i in range(start, start + n)]


def _run_broker_reset(cfg, private_broker, spawn_worker, outage_s: float, produce_during_outage: bool) -> None:
    bootstrap = cfg.broker.address
    topic = cfg.topics.clicks.name
    ensure_topics(bootstrap, cfg.topics.all())
    before = _clicks(40, 0)
    produce_to(bootstrap, topic, click_records(before), partition=None)
    worker = spawn_worker("ingest", cfg)
    assert len(by_event_id(consume(bootstrap, cfg.topics.sequence_updates.name, 40, timeout_s=60))) == 40

    during = _clicks(10, 40)
    producer = None
    if produce_during_outage:  # connected before the outage, sends while the broker is down, retrying
        producer = click_producer(bootstrap, retries=1_000_000, retry_backoff_ms=250, request_timeout_ms=5000,
                                  delivery_timeout_ms=int((outage_s + 60) * 1000), linger_ms=0,
                                  max_in_flight_requests_per_connection=1, reconnect_backoff_max_ms=2000)
        assert producer.partitions_for(topic)
    stop_broker(private_broker)
    futures = [producer.send(topic, key=k, value=v) for k, v in click_records(during)] if producer else []
    restart_broker_empty(private_broker, private_broker.port, outage_s, cfg.topics.all(), hold=worker.proc)
    if producer is not None:
        producer.flush(outage_s + 60)
        assert all(f.succeeded() for f in futures), [f.exception for f in futures if f.failed()]
        producer.close(5)
    else:
        produce_to(bootstrap, topic, click_records(during), partition=None)
    after = _clicks(10, 50)
    produce_to(bootstrap, topic, click_records(after), partition=None)

    new = by_event_id(consume(bootstrap, cfg.topics.sequence_updates.name, 20, timeout_s=120))
    assert sorted(new) == sorted(c.event_id for c in during + after)  # applied, not skipped as duplicates
    assert worker.proc.poll() is None  # the same process, no restart
    ends = {p: e for p, e in true_end_offsets(bootstrap, topic, compat=True).items() if e > 0}
    assert wait_committed(bootstrap, cfg.groups.ingest, topic, ends, timeout_s=30) == ends  # lag back to 0
    assert worker.stop() == 0
    reset = last_log_event(worker.log(), "broker_reset_detected")
    assert reset["log_end_offset"] <= reset["stored_applied_offset"]
    assert last_log_event(worker.log(), "worker_stopped")["broker_resets"] >= 1
    seqs, offsets = store_contents(cfg)
    assert seqs == expected_windows(before + during + after, cfg.window)
    assert {p: o + 1 for (_, p), o in offsets.items()} == ends


def test_broker_restart_empty_is_detected_and_reconciled(stream_config, private_broker, spawn_worker):
    """Short outage (3 s): new clicks after the empty restart are applied by the running worker."""
    cfg = stream_config.model_copy(update={"broker": private_broker, "window": 100})
    _run_broker_reset(cfg, private_broker, spawn_worker, outage_s=3.0, produce_during_outage=False)


@pytest.mark.slow
def test_broker_down_60s_while_producing_with_retries(stream_config, private_broker, spawn_worker):
    """60 s outage while a producer keeps retrying: after the (empty) restart the buffered clicks are
    delivered and applied, the worker keeps running, and the committed offsets reach the log end (lag 0)."""
    cfg = stream_config.model_copy(update={"broker": private_broker, "window": 100})
    _run_broker_reset(cfg, private_broker, spawn_worker, outage_s=60.0, produce_during_outage=True)


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")  # a producer left unclosed
def test_announcer_and_click_producers_survive_an_empty_restart(stream_config, private_broker, tiny_registry):
    """A long-lived Announcer (the fine-tune worker keeps one) and a test click producer deliver after the broker
    restarted empty, and an announcement that failed while the broker was down does not spoil the next one.
    Before the fix both used idempotent kafka-python producers, which fail every send once the broker forgot their
    producer id (``UnknownError``, error -1: the CI failure of the 60 s outage scenario)."""
    from adrec_stream.errors import BrokerError
    from adrec_stream.serving.announce import Announcer, parse_announcement
    from adrec_stream.serving.registry import ModelRegistry

    cfg = stream_config.model_copy(update={"broker": private_broker})
    bootstrap, clicks = cfg.broker.address, cfg.topics.clicks.name
    ensure_topics(bootstrap, cfg.topics.all())
    registry = ModelRegistry(cfg.registry_dir)
    announcer = Announcer(cfg, timeout_s=3.0)
    producer = click_producer(bootstrap)
    try:
        assert announcer.announce(registry, 1, source="before")["version"] == 1
        producer.send(clicks, key=b"u0", value=b"{}").get(10)
        restart_broker_empty(private_broker, private_broker.port, 1.0, cfg.topics.all())
        sent = [producer.send(clicks, key=b"u%d" % i, value=b"{}") for i in range(4)]
        producer.flush(30)
        assert [f.exception for f in sent if not f.succeeded()] == []
        assert announcer.announce(registry, 1, source="after-restart")["source"] == "after-restart"

        stop_broker(private_broker)
        with pytest.raises(BrokerError, match="could not announce model version 1"):
            announcer.announce(registry, 1, source="while-down")
        restart_broker_empty(private_broker, private_broker.port, 0.5, cfg.topics.all())
        assert announcer.announce(registry, 1, source="after-failure")["source"] == "after-failure"
    finally:
        producer.close(5)
        announcer.close()
    gc.collect()  # a dropped producer that failed to close would raise in __del__ now (before: KafkaTimeoutError)
    got = consume(bootstrap, cfg.topics.model_versions.name, 1)
    assert [parse_announcement(r.value)["source"] for r in got] == ["after-failure"]  # the broker forgot the rest


def test_clicks_topic_recreated_under_a_running_worker(stream_config, spawn_worker):
    """The clicks topic is deleted and recreated (empty) under a running ingest worker: no rebalance happens and
    Tansu answers the fetches beyond the new log end with nothing, so before the fix the worker waited silently
    (and would have skipped the new log's first records once it outgrew the old position: the CI failure of the
    empty-restart scenario when its rebalance did not come). Now the worker sees its next offset past the log end,
    forgets the stored offsets, rewinds, applies the new clicks and commits them: same process, lag 0."""
    cfg = stream_config.model_copy(update={"window": 100})
    bootstrap, topic = cfg.broker.address, cfg.topics.clicks.name
    ensure_topics(bootstrap, cfg.topics.all())
    before, after = _clicks(40, 0), _clicks(20, 40)
    produce_to(bootstrap, topic, click_records(before), partition=None)
    worker = spawn_worker("ingest", cfg)
    assert len(by_event_id(consume(bootstrap, cfg.topics.sequence_updates.name, 40, timeout_s=60))) == 40

    recreate_topic(bootstrap, cfg.topics.clicks, hold=worker.proc)
    produce_to(bootstrap, topic, click_records(after), partition=None)
    updates = by_event_id(consume(bootstrap, cfg.topics.sequence_updates.name, 60, timeout_s=60))
    assert sorted(set(updates) - {c.event_id for c in before}) == sorted(c.event_id for c in after)
    assert worker.proc.poll() is None
    ends = {p: e for p, e in true_end_offsets(bootstrap, topic, compat=True).items() if e > 0}
    assert wait_committed(bootstrap, cfg.groups.ingest, topic, ends, timeout_s=30) == ends  # lag back to 0
    assert worker.stop() == 0
    cut = last_log_event(worker.log(), "log_cut_back_under_consumer")
    assert cut["next_offset"] > cut["log_end_offset"]
    assert last_log_event(worker.log(), "rewound_to_log_start")["offset"] == 0
    assert last_log_event(worker.log(), "worker_stopped")["broker_resets"] >= 1
    seqs, offsets = store_contents(cfg)
    assert seqs == expected_windows(before + after, cfg.window)
    assert {p: o + 1 for (_, p), o in offsets.items()} == ends


def _update_records(start: int, n: int, users: int = 4) -> list[tuple[bytes, bytes]]:
    """Sequence updates as the ingest worker publishes them (window of the user's items up to the click)."""
    import time

    import orjson

    out = []
    for i in range(start, start + n):
        user = f"u{i % users}"
        items = [str((j * 7) % 40 + 1) for j in range(i % users, i + 1, users)][-10:]
        out.append((user.encode(), orjson.dumps({"user_id": user, "items": items, "event_id": f"ev-{i}",
                                                 "event_ts": 1.0 + i, "produced_ts": time.time(),
                                                 "ingest_ts": time.time(), "source": {"partition": 0, "offset": i}})))
    return out


def test_updates_topic_recreated_under_a_running_score_worker(stream_config, tiny_registry, spawn_worker):
    """The same cut-back log for the score worker (its input, the sequence-updates topic, recreated empty): it
    rewinds and scores the new updates, same process, its group's committed offsets at the new log end."""
    cfg = stream_config
    bootstrap, topic = cfg.broker.address, cfg.topics.sequence_updates.name
    ensure_topics(bootstrap, cfg.topics.all())
    worker = spawn_worker("score", cfg, "--set", "scoring.deduplicate_users=false")
    produce_to(bootstrap, topic, _update_records(0, 30), partition=None)
    assert len(by_event_id(consume(bootstrap, cfg.topics.recommendations.name, 30, timeout_s=90))) == 30

    recreate_topic(bootstrap, cfg.topics.sequence_updates, hold=worker.proc)
    produce_to(bootstrap, topic, _update_records(30, 10), partition=None)
    recs = by_event_id(consume(bootstrap, cfg.topics.recommendations.name, 40, timeout_s=60))
    assert sorted(set(recs)) == sorted(f"ev-{i}" for i in range(40))
    assert worker.proc.poll() is None
    ends = {p: e for p, e in true_end_offsets(bootstrap, topic, compat=True).items() if e > 0}
    assert wait_committed(bootstrap, cfg.groups.scoring, topic, ends, timeout_s=30) == ends
    assert worker.stop() == 0
    assert last_log_event(worker.log(), "log_cut_back_under_consumer")["role"] == "score"
