"""Per-partition sequence stores (adrec_stream.state.partitioned): key -> partition routing equal to the
producers' and the broker's, lock hand-over between owners, cross-store reads, and the demo's bootstrap."""

from __future__ import annotations

import asyncio
import threading

import pytest

from adrec_stream.data.events import Interaction
from adrec_stream.errors import StoreError, StoreLockedError
from adrec_stream.state.partitioned import (
    PartitionStores,
    open_store_waiting,
    partition_for_key,
    partition_store_path,
    read_all,
    user_sequence,
)
from adrec_stream.state.store import SequenceStore, SourceRecord

KEYS = [f"u{i}".encode() for i in range(300)] + [b"", b"\x00\xff", "ü-é".encode(), b"x" * 100]


def test_partition_for_key_equals_the_client_partitioners():
    """Same partition as kafka-python's and aiokafka's default partitioners (murmur2) for every key and count."""
    from aiokafka.partitioner import DefaultPartitioner as AioPartitioner
    from kafka.partitioner import DefaultPartitioner as KafkaPartitioner

    class Cluster:  # the two ClusterMetadata calls kafka-python's partitioner makes
        def __init__(self, n: int) -> None:
            self.n = n

        def topics(self) -> set[str]:
            return {"t"}

        def partitions_for_topic(self, topic: str) -> set[int]:
            return set(range(self.n))

        available_partitions_for_topic = partitions_for_topic

    for n in (1, 2, 3, 7, 12):
        parts = list(range(n))
        for key in KEYS:
            p = partition_for_key(key, n)
            assert p == KafkaPartitioner().partition("t", key, key, b"v", b"v", Cluster(n))
            assert p == AioPartitioner()(key, parts, parts)
    assert len({partition_for_key(k, 7) for k in KEYS}) == 7  # spreads
    with pytest.raises(ValueError, match="n_partitions"):
        partition_for_key(b"u1", 0)


@pytest.mark.broker
def test_partition_for_key_equals_where_the_broker_put_the_records(stream_config):
    """Keyed records produced with the default partitioner land where partition_for_key says (real broker)."""
    from conftest import consume, produce

    from adrec_stream.broker.process import effective_bootstrap

    bootstrap = effective_bootstrap(stream_config)
    topic = stream_config.topics.clicks.name
    keys = [f"user-{i}".encode() for i in range(60)]
    produce(bootstrap, topic, [(k, b"{}") for k in keys])
    got = consume(bootstrap, topic, len(keys), settle_s=0.3)
    assert len(got) == len(keys)
    assert {r.key: r.partition for r in got} == {k: partition_for_key(k, 2) for k in keys}
    assert {r.partition for r in got} == {0, 1}


def _rec(topic: str, part: int, off: int, user: str, item: str) -> SourceRecord:
    return SourceRecord(topic, part, off, Interaction(user, item, 1_700_000_000.0 + off, f"{part}-{off}"))


def test_stores_are_per_partition_and_a_new_owner_waits_for_the_lock(tmp_path):
    """A store opened by owner 1 is refused to owner 2 after lock_wait_s (clear error with path and wait);
    once owner 1 closes it (revocation), owner 2's waiting open succeeds and sees owner 1's state."""
    one = PartitionStores(tmp_path, window=5, lock_wait_s=0)
    store = one.open("clicks", 1)
    assert store.path == tmp_path / "sequences" / "clicks-1" == partition_store_path(tmp_path, "clicks", 1)
    store.apply([_rec("clicks", 1, 0, "a", "1"), _rec("clicks", 1, 1, "a", "2")])
    two = PartitionStores(tmp_path, window=5, lock_wait_s=0.3)
    with pytest.raises(StoreLockedError, match=r"clicks-1 is locked .*waited 0\.3 s"):
        two.open("clicks", 1)
    assert two.open("clicks", 0).applied_offsets() == {}  # another partition: its own store, free

    two.lock_wait_s = 10.0
    timer = threading.Timer(0.5, lambda: one.close([("clicks", 1)]))
    timer.start()
    moved = asyncio.run(two.open_async("clicks", 1))  # waits for the previous owner, then opens
    timer.join()
    assert moved.sequence("a") == ["1", "2"] and moved.applied_offset("clicks", 1) == 1
    assert one.open_partitions() == [] and two.open_partitions() == [("clicks", 0), ("clicks", 1)]
    two.close_all()
    assert moved.closed and two.open_partitions() == []


def test_open_store_waiting_gives_up_after_the_bounded_wait(tmp_path):
    path = tmp_path / "db"
    naps: list[float] = []
    with SequenceStore(path, window=3):
        with pytest.raises(StoreLockedError, match=r"waited 0\.2 s"):
            open_store_waiting(path, window=3, lock_wait_s=0.2, sleep=naps.append)
    assert naps and all(n == 0.25 for n in naps)
    with open_store_waiting(path, window=3, lock_wait_s=0) as store:  # free again
        assert store.applied_offsets() == {}


def test_read_all_merges_partitions_and_refuses_split_users_and_the_old_layout(tmp_path):
    ps = PartitionStores(tmp_path, window=5, lock_wait_s=0)
    ps.open("c", 0).apply([_rec("c", 0, 0, "a", "1"), _rec("c", 0, 1, "a", "2")])
    ps.open("c", 1).apply([_rec("c", 1, 0, "b", "3")])
    ps.close_all()
    assert read_all(tmp_path, window=5) == ({"a": ["1", "2"], "b": ["3"]}, {("c", 0): 1, ("c", 1): 0})
    with SequenceStore(partition_store_path(tmp_path, "c", 1), window=5) as s:
        s.apply([_rec("c", 1, 1, "a", "9")])
    with pytest.raises(StoreError, match="'a' has a window in two partition stores"):
        read_all(tmp_path, window=5)
    old = tmp_path / "old"
    SequenceStore(old / "sequences", window=5).close()  # single-store layout of earlier builds
    with pytest.raises(StoreError, match="single sequence store from an earlier build"):
        PartitionStores(old, window=5, lock_wait_s=0)


def test_demo_bootstrap_puts_each_user_into_its_partition_store(tmp_path):
    """The demo's bootstrap routes every user's history to the store of the partition the producer will use."""
    from adrec_stream.data.events import Interaction
    from adrec_stream.stream.config import StreamConfig
    from adrec_stream.stream.local import bootstrap_state as _bootstrap_state

    scfg = StreamConfig.model_validate({"state_dir": str(tmp_path / "state"), "window": 4,
                                        "topics": {"clicks": {"name": "clk", "partitions": 3}}})
    train = [Interaction(f"u{i % 9}", str(i), float(i)) for i in range(45)]
    counts = _bootstrap_state(scfg, train, "u.data")
    assert sum(counts.values()) == 45 and len(counts) == 3
    for u in {x.user_id for x in train}:
        hist = [x.item_id for x in train if x.user_id == u][-4:]
        assert user_sequence(scfg.state_dir, "clk", 3, u, window=4) == hist
        for p in range(3):  # only in its own partition's store
            with SequenceStore(partition_store_path(scfg.state_dir, "clk", p), window=4) as s:
                assert (s.sequence(u) == hist) == (p == partition_for_key(u.encode(), 3))
