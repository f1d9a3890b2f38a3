"""Changelog restore (adrec_stream.state.changelog): a missing store restored from the changelog the ingest handler
wrote, a store that is behind restored incrementally, a restore that runs out of time, a batch whose changelog
records were only partly delivered, and the partition-count guard (at start, and while the worker runs).

Real broker (Tansu) and real RocksDB; the handler produces through a real aiokafka producer.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from conftest import last_log_event

from adrec_stream.broker.process import effective_bootstrap
from adrec_stream.data.events import Interaction
from adrec_stream.errors import PartitionCountChangedError, RestoreTimeoutError
from adrec_stream.state.changelog import (
    MARKER_KEY,
    PARTITIONS_FILE,
    _Chunk,
    check_partition_count,
    make_consumer,
    marker_value,
    restore_partition,
    window_value,
)
from adrec_stream.state.partitioned import PartitionStores
from adrec_stream.state.store import SequenceStore, SourceRecord
from adrec_stream.stream.events import encode_click
from adrec_stream.stream.handler_support import ConsumedRecord, WorkerStats, send_batches
from adrec_stream.stream.ingest import IngestHandler


class AioPublisher:
    """A Publisher over a plain aiokafka producer (what the Faust app's producer is underneath)."""

    def __init__(self, producer) -> None:
        self.producer = producer

    async def send(self, topic, key, value, partition=None):
        return await self.producer.send(topic, value, key=key, partition=partition)

    async def send_many(self, topic, records, partition=None):
        return await send_batches(self.producer, topic, records, partition)


def _records(topic: str, start: int, n: int, *, bad_last: bool = False) -> list[ConsumedRecord]:
    """n clicks of 5 users on partition 0 from offset ``start`` (the last one undecodable if ``bad_last``)."""
    out = []
    for off in range(start, start + n):
        user = f"u{off % 5}"
        value = encode_click(Interaction(user, str(off % 17 + 1), 1_700_000_000.0 + off, f"e{off}"))
        if bad_last and off == start + n - 1:
            value = b"not json"
        out.append(ConsumedRecord(topic, 0, off, user.encode(), value, None))
    return out


def _contents(store: SequenceStore) -> dict[str, tuple[list[str], list[float]]]:
    return {u: store.history(u) for u in store.users()}


async def _ingest(cfg, state_dir, batches: list[list[ConsumedRecord]]) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=effective_bootstrap(cfg), acks="all", linger_ms=2)
    await producer.start()
    stores = PartitionStores(state_dir, window=cfg.window, lock_wait_s=0)
    try:
        handler = IngestHandler(cfg, stores, AioPublisher(producer), WorkerStats())
        handler.assign([0])
        for batch in batches:
            assert await handler.handle(batch) == {0}
    finally:
        stores.close_all()
        await producer.stop()


async def _restore(cfg, store: SequenceStore, **kw):
    consumer = make_consumer(effective_bootstrap(cfg), client_id="test-restore", fetch_max_wait_s=0.02,
                             request_timeout_s=30)
    await consumer.start()
    try:
        return await restore_partition(store, consumer, changelog=cfg.topics.changelog_topic.name,
                                       clicks_topic=cfg.topics.clicks.name, partition=0,
                                       timeout_s=kw.pop("timeout_s", 30), chunk_records=kw.pop("chunk_records", 7), **kw)
    finally:
        await consumer.stop()


@pytest.mark.broker
def test_missing_store_then_behind_store_restore_from_the_changelog(stream_config, tmp_path):
    """Store missing: restored from the beginning, equal to the writer's store (windows, event times, applied offset
    past a dead-lettered last record, changelog position). Store behind: only the new records are read."""
    cfg = stream_config
    topic, changelog = cfg.topics.clicks.name, cfg.topics.changelog_topic.name
    first = [_records(topic, 0, 20), _records(topic, 20, 20), _records(topic, 40, 21, bad_last=True)]
    asyncio.run(_ingest(cfg, tmp_path / "writer", first))
    writer_path = tmp_path / "writer" / "sequences" / f"{topic}-0"
    with SequenceStore(writer_path, window=cfg.window) as w:
        expected, expected_pos = _contents(w), w.changelog_position(changelog, 0)
        assert w.applied_offset(topic, 0) == 60  # the dead-lettered click 60 counts as applied
    # per batch: one window record per user (5) and one offset marker
    assert expected_pos == 3 * (5 + 1)

    with SequenceStore(tmp_path / "restored", window=cfg.window) as r:
        res = asyncio.run(_restore(cfg, r))
        assert (res.from_offset, res.restored_offset, res.records) == (0, 18, 18)
        # windows written: each of the 5 users at least once, at most once per window record (one per chunk of <= 7)
        assert 5 <= res.users <= 15
        assert res.applied_offset == 60
        assert _contents(r) == expected
        assert r.changelog_position(changelog, 0) == 18

    # the writer goes on; the restored copy is now behind and reads only the tail
    asyncio.run(_ingest(cfg, tmp_path / "writer", [_records(topic, 61, 10)]))
    with SequenceStore(writer_path, window=cfg.window) as w:
        expected = _contents(w)
    with SequenceStore(tmp_path / "restored", window=cfg.window) as r:
        res = asyncio.run(_restore(cfg, r))
        assert (res.from_offset, res.restored_offset, res.records, res.applied_offset) == (18, 24, 6, 70)
        assert _contents(r) == expected
        # restoring again reads nothing (already at the end)
        again = asyncio.run(_restore(cfg, r))
        assert (again.from_offset, again.restored_offset, again.records) == (24, 24, 0)


@pytest.mark.broker
def test_restore_that_runs_out_of_time_fails_with_a_clear_error(stream_config, tmp_path):
    cfg = stream_config
    topic = cfg.topics.clicks.name
    asyncio.run(_ingest(cfg, tmp_path / "writer", [_records(topic, 0, 10)]))
    ticks = iter(range(1000))
    with SequenceStore(tmp_path / "restored", window=cfg.window) as r:
        with pytest.raises(RestoreTimeoutError, match=r"did not finish within 5 s \(state.restore_timeout_s\)"):
            asyncio.run(_restore(cfg, r, timeout_s=5, clock=lambda: 10.0 * next(ticks)))
        assert r.changelog_position(cfg.topics.changelog_topic.name, 0) is None  # nothing half-written
        assert list(r.users()) == []


def test_partly_delivered_changelog_batch_is_exact_after_restore(tmp_path):
    """A crash after only some window records of a batch reached the changelog (no marker): after the restore,
    users whose record arrived skip the batch's clicks, the others apply theirs - every click exactly once."""
    clicks = [SourceRecord("clicks", 0, i, Interaction(f"u{i % 3}", str(i), float(i), f"e{i}")) for i in range(12)]
    with SequenceStore(tmp_path / "writer", window=50) as w:
        first = w.plan(clicks[:6])
        w.apply(clicks[:6])
        second = w.plan(clicks[6:])
    chunk = _Chunk()  # the first batch completely (windows + marker), of the second only u1's window record
    for user, entry in first.windows.items():
        chunk.add(user.encode(), window_value(entry))
    chunk.add(MARKER_KEY, marker_value("clicks", 0, 5))
    chunk.add(b"u1", window_value(second.windows["u1"]))
    with SequenceStore(tmp_path / "restored", window=50) as r:
        chunk.write(r, "changelog", 0, 7)
        assert r.applied_offset("clicks", 0) == 5
        ups = r.apply(clicks)  # the whole stream re-delivered
        assert [u.offset for u in ups] == [6, 8, 9, 11]  # u1's clicks 7 and 10 were in its restored window
        assert {u: r.sequence(u) for u in ("u0", "u1", "u2")} == {
            f"u{k}": [str(i) for i in range(12) if i % 3 == k] for k in range(3)}


def test_partition_count_is_recorded_then_a_change_is_refused(tmp_path):
    assert check_partition_count(tmp_path, "clicks", 2) == 2
    assert json.loads((tmp_path / PARTITIONS_FILE).read_text()) == {"clicks": 2}
    assert check_partition_count(tmp_path, "clicks", 2) == 2
    assert check_partition_count(tmp_path, "other", 5) == 5  # each topic its own count
    with pytest.raises(PartitionCountChangedError, match=r"clicks topic 'clicks' now has 4 partitions, but the ingest "
                       r"state was built with 2 .*histories split"):
        check_partition_count(tmp_path, "clicks", 4)


def _error_lines(log_text: str) -> list[str]:
    return [ln for ln in log_text.splitlines() if ln.startswith("adrec-stream worker: error:")]


@pytest.mark.broker
def test_worker_refuses_state_built_with_another_partition_count(stream_config, spawn_worker, tmp_path):
    cfg = stream_config
    state = tmp_path / "state"
    state.mkdir(parents=True)
    (state / PARTITIONS_FILE).write_text(json.dumps({cfg.topics.clicks.name: 3}))
    w = spawn_worker("ingest", cfg)
    assert w.proc.wait(60) == 2
    lines = _error_lines(w.log())
    assert lines == [f"adrec-stream worker: error: clicks topic '{cfg.topics.clicks.name}' now has 2 partitions, but "
                     f"the ingest state was built with 3 ({state / PARTITIONS_FILE}): users would be re-keyed to other "
                     "partitions and their histories split, so the worker stops. Restore 3 partitions, or rebuild the "
                     "state: stop every ingest worker, move each state_dir away, delete the changelog topic and replay "
                     "the clicks"]


@pytest.mark.broker
def test_partition_count_change_while_running_stops_the_worker(stream_config, spawn_worker):
    """The clicks topic is recreated with 3 partitions under a running worker (as Tansu's auto-creation after an
    empty restart does): the worker stops with one error line and exit code 2."""
    from reliability_helpers import recreate_topic

    cfg = stream_config.model_copy(update={"state": stream_config.state.model_copy(
        update={"partition_check_interval_s": 1.0})})
    bootstrap = effective_bootstrap(cfg)
    w = spawn_worker("ingest", cfg)
    w.wait_for('"partitions_assigned"', timeout_s=60)
    recreate_topic(bootstrap, cfg.topics.clicks.model_copy(update={"partitions": 3}))
    assert w.proc.wait(60) == 2
    lines = _error_lines(w.log())
    assert len(lines) == 1 and f"clicks topic '{cfg.topics.clicks.name}' now has 3 partitions, but the ingest state " \
        "was built with 2" in lines[0], w.log()[-3000:]
    assert last_log_event(w.log(), "partition_count_changed")["level"] == "error"
