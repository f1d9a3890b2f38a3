"""Helpers shared by tests/test_reliability*.py: partition-exact producing, committed offsets, store reads."""

from __future__ import annotations

import json
import time
from collections import defaultdict

import orjson
from conftest import click_producer, reader_from_beginning, send_checked

from adrec_stream.data.events import Interaction
from adrec_stream.state.changelog import decode_record
from adrec_stream.state.partitioned import read_all
from adrec_stream.stream.config import StreamConfig
from adrec_stream.stream.events import encode_click


def produce_to(bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes | None]], partition: int | None,
               *, retries_s: float = 0.0) -> None:
    """Produce (key, value) records in order to one ``partition`` (None: by key), acks=all, flush, and check
    every delivery (:func:`conftest.send_checked`: failed ones are re-sent, never dropped silently).

    ``retries_s`` > 0 keeps retrying sends for that long (producing while the broker is down).
    """
    extra = {"retries": 1_000_000, "retry_backoff_ms": 200, "delivery_timeout_ms": int(retries_s * 1000),
             "request_timeout_ms": 5000, "max_in_flight_requests_per_connection": 1} if retries_s else {}
    producer = click_producer(bootstrap, **extra)
    try:
        send_checked(producer, topic, records, partition, flush_s=max(30.0, retries_s + 10))
    finally:
        producer.close(5)


def click_records(clicks: list[Interaction]) -> list[tuple[bytes, bytes]]:
    """Clicks as (key = user id, value = JSON) records."""
    return [(c.user_id.encode(), encode_click(c)) for c in clicks]


def committed_offsets(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int | None]:
    """Committed offset (next record to consume) of ``group`` per partition of ``topic`` (None: none committed).

    Uses OffsetFetch (``KafkaConsumer.committed``), which does not join the group and is not affected by
    Tansu's ListOffsets end-offset bug.
    """
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        return {p: consumer.committed(TopicPartition(topic, p)) for p in range(partitions)}
    finally:
        consumer.close()


def wait_committed(bootstrap: str, group: str, topic: str, expected: dict[int, int], timeout_s: float = 60.0,
                   alive: object = None) -> dict[int, int | None]:
    """Poll until the group's committed offsets equal ``expected`` on those partitions; return the last read."""
    deadline = time.time() + timeout_s
    parts = max(expected) + 1
    got: dict[int, int | None] = {}
    while time.time() < deadline:
        got = committed_offsets(bootstrap, group, topic, parts)
        if all(got.get(p) == o for p, o in expected.items()):
            return got
        time.sleep(0.5)
    return got


def store_contents(cfg: StreamConfig) -> tuple[dict[str, list[str]], dict[tuple[str, int], int]]:
    """(user -> window, applied offsets) across the ingest workers' per-partition stores (workers stopped)."""
    return read_all(cfg.state_dir, window=cfg.window)


def changelog_windows(bootstrap: str, changelog: str, timeout_s: float = 60.0) -> dict[str, list[str]]:
    """User -> item ids of the user's latest window record in the ``changelog`` topic, read from the beginning to
    each partition's high watermark as reported by the fetch responses (right on Tansu, unlike ListOffsets)."""
    with reader_from_beginning(bootstrap, changelog) as (consumer, tps):
        windows: dict[str, list[str]] = {}
        deadline = time.time() + timeout_s
        while True:
            for recs in consumer.poll(timeout_ms=200).values():
                for r in recs:
                    rec = decode_record(r.key, r.value)
                    if rec is not None and rec[0] == "window":
                        windows[rec[1][0]] = rec[1][1][0]
            ends = [consumer.highwater(tp) for tp in tps]
            if all(hw is not None and consumer.position(tp) >= hw for tp, hw in zip(tps, ends, strict=True)):
                return windows
            if time.time() > deadline:
                raise AssertionError(f"changelog {changelog} not read to its end within {timeout_s} s")


def expected_windows(clicks: list[Interaction], window: int) -> dict[str, list[str]]:
    """Per-user last ``window`` item ids of an uninterrupted, in-order application of ``clicks``."""
    seqs: dict[str, list[str]] = defaultdict(list)
    for c in clicks:
        seqs[c.user_id].append(c.item_id)
    return {u: s[-window:] for u, s in seqs.items()}


def by_event_id(records: list) -> dict[str, list[dict]]:
    """Consumed JSON records grouped by their ``event_id`` (duplicates kept, in arrival order)."""
    out: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        v = orjson.loads(r.value)
        out[v["event_id"]].append(v)
    return out


def restart_broker_empty(broker_cfg, port: int, outage_s: float, topics, hold=None) -> None:
    """Stop the embedded broker, wait ``outage_s``, start it again on the same port (memory storage: empty)
    and recreate ``topics``.

    ``hold``: a worker process (Popen) kept stopped (SIGSTOP) from just before the new broker starts until
    the topics exist again. Tansu auto-creates a topic that any client touches with 4 partitions, so a worker
    whose metadata refresh hits the new broker first would otherwise turn the 2-partition clicks topic into a
    4-partition one (seen in CI); an operator restarting the broker recreates the topics before the workers
    come back, and this keeps the test to that order.
    """
    import signal

    from adrec_stream.broker.admin import ensure_topics
    from adrec_stream.broker.process import start_broker, stop_broker

    stop_broker(broker_cfg)
    time.sleep(outage_s)
    if hold is not None:
        hold.send_signal(signal.SIGSTOP)
    try:
        deadline = time.time() + 30
        while True:
            try:
                handle = start_broker(broker_cfg, port=port, owned=True)
                break
            except Exception:  # noqa: BLE001 - port still in TIME_WAIT / held: retry briefly
                if time.time() > deadline:
                    raise
                time.sleep(0.5)
        ensure_topics(handle.bootstrap, topics)
    finally:
        if hold is not None:
            hold.send_signal(signal.SIGCONT)


def recreate_topic(bootstrap: str, topic_cfg, hold=None) -> None:
    """Delete ``topic_cfg``'s topic, wait until the metadata no longer lists it, and create it again (empty, with
    ``topic_cfg``'s partition count). ``hold``: a worker process (Popen) kept stopped (SIGSTOP) meanwhile, so that its
    fetches cannot auto-create the topic with Tansu's 4 partitions in between."""
    import signal

    from kafka.admin import KafkaAdminClient

    from adrec_stream.broker.admin import ensure_topics, list_topics

    if hold is not None:
        hold.send_signal(signal.SIGSTOP)
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        try:
            admin.delete_topics([topic_cfg.name])
        finally:
            admin.close()
        deadline = time.time() + 20
        while topic_cfg.name in list_topics(bootstrap) and time.time() < deadline:
            time.sleep(0.1)
        ensure_topics(bootstrap, [topic_cfg])
    finally:
        if hold is not None:
            hold.send_signal(signal.SIGCONT)


def kill9_after(bootstrap: str, topic: str, n: int, proc, timeout_s: float = 120.0) -> int:
    """Count records arriving on ``topic`` (from the beginning); SIGKILL ``proc`` once ``n`` arrived.

    Returns the count seen at the kill. Raises AssertionError if ``proc`` exits or ``timeout_s`` passes first.
    """
    with reader_from_beginning(bootstrap, topic) as (consumer, _):
        seen, deadline = 0, time.time() + timeout_s
        while seen < n:
            assert proc.poll() is None, f"worker exited ({proc.returncode}) after {seen} records"
            assert time.time() < deadline, f"only {seen} of {n} records on {topic} within {timeout_s} s"
            seen += sum(len(r) for r in consumer.poll(timeout_ms=100).values())
        proc.kill()
        proc.wait(30)
        return seen


def assigned_partitions(log_text: str) -> list[list[int]]:
    """Clicks partitions of every ``partitions_assigned`` event in a worker log, in order."""
    out = []
    for ln in log_text.splitlines():
        if '"event": "partitions_assigned"' in ln:
            ev = json.loads(ln[ln.index("{"):])
            out.append(sorted(int(p.rsplit(":", 1)[1]) for p in ev["partitions"]))
    return out
