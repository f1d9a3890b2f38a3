"""Batched publishing (``send_batches``, ``Publisher.send_many``) against the real broker: the same partitions and
the same order as one ``send`` per record, batches split at the producer's batch size."""

from __future__ import annotations

import asyncio
from collections import defaultdict

import pytest
from conftest import consume

from adrec_stream.broker.process import effective_bootstrap
from adrec_stream.stream.handler_support import MemoryPublisher, delivered, send_batches


def _records(n: int, tag: str) -> list[tuple[bytes, bytes]]:
    """n records of 37 users with ~300-byte values (16 KiB batches hold ~50 of them)."""
    return [(f"user-{i % 37}".encode(), f"{tag}-{i:05d}-".encode() + b"x" * 290) for i in range(n)]


async def _send_both(bootstrap: str, batched_topic: str, plain_topic: str, records, partition=None) -> int:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=2, max_batch_size=16384)
    await producer.start()
    try:
        futures = await send_batches(producer, batched_topic, records, partition)
        await delivered(futures)
        await delivered([await producer.send(plain_topic, v, key=k, partition=partition) for k, v in records])
        with pytest.raises(ValueError, match="without a key"):
            await send_batches(producer, batched_topic, [(None, b"v")])
        return len(futures)
    finally:
        await producer.stop()


def _by_partition(recs) -> dict[int, list[tuple[bytes, bytes]]]:
    out: dict[int, list] = defaultdict(list)
    for r in sorted(recs, key=lambda r: (r.partition, r.offset)):
        out[r.partition].append((r.key, r.value))
    return dict(out)


def test_batches_land_where_single_sends_land_in_the_same_order(stream_config):
    cfg = stream_config
    bootstrap = effective_bootstrap(cfg)
    batched, plain = cfg.topics.sequence_updates.name, cfg.topics.recommendations.name  # 2 partitions each
    records = _records(600, "k")
    n_batches = asyncio.run(_send_both(bootstrap, batched, plain, records))
    got_batched = _by_partition(consume(bootstrap, batched, len(records), settle_s=0.5))
    got_plain = _by_partition(consume(bootstrap, plain, len(records), settle_s=0.5))
    assert got_batched == got_plain  # same partition per key, same order within each partition
    assert sorted(sum(got_batched.values(), [])) == sorted(records) and len(got_batched) == 2
    assert n_batches >= 600 * 300 // 16384  # split at the producer's 16 KiB batch size, nothing lost


def test_explicit_partition_keeps_the_order(stream_config):
    cfg = stream_config
    bootstrap = effective_bootstrap(cfg)
    records = _records(120, "p")
    asyncio.run(_send_both(bootstrap, cfg.topics.sequence_updates.name, cfg.topics.recommendations.name, records,
                           partition=1))
    got = _by_partition(consume(bootstrap, cfg.topics.sequence_updates.name, len(records), settle_s=0.5))
    assert got == {1: records}


def test_memory_publisher_send_many_records_like_send():
    async def run():
        pub = MemoryPublisher()
        futures = await pub.send_many("t", [(b"a", b"1"), (b"b", b"2")], partition=3)
        return pub, await delivered(futures)

    pub, meta = asyncio.run(run())
    assert pub.sent == [("t", b"a", b"1"), ("t", b"b", b"2")] and pub.partitions == [3, 3]
    assert [(m.partition, m.offset) for m in meta] == [(3, 0), (3, 1)]
