"""The ingest and score handlers without a broker: real RocksDB stores, a real (tiny) model, a memory publisher."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest
import torch

from adrec_stream.data.events import Interaction
from adrec_stream.errors import StoreError
from adrec_stream.model import ModelConfig, build_model, save_checkpoint
from adrec_stream.serving.recommender import Recommender
from adrec_stream.state.partitioned import partition_store_path
from adrec_stream.state.store import SequenceStore, SourceRecord
from adrec_stream.stream.config import StreamConfig
from adrec_stream.stream.events import encode_click
from adrec_stream.stream.handler_support import ConsumedRecord, MemoryPublisher, WorkerHooks, WorkerStats
from adrec_stream.stream.ingest import IngestHandler, make_stores
from adrec_stream.stream.score import ScoreHandler


def _cfg(tmp_path: Path, **over) -> StreamConfig:
    return StreamConfig(state_dir=str(tmp_path / "state"), window=3, **over)


def _click(part: int, off: int, user: str, item: str, ts: float = 100.0) -> ConsumedRecord:
    value = encode_click(Interaction(user, item, ts, f"e{part}-{off}"))
    return ConsumedRecord("clicks", part, off, user.encode(), value, 1_700_000_000.5)


def _ingest(tmp_path: Path, hooks: WorkerHooks | None = None, **over):
    cfg = _cfg(tmp_path, **over)
    pub, stats = MemoryPublisher(), WorkerStats()
    handler = IngestHandler(cfg, make_stores(cfg, hooks), pub, stats, hooks=hooks)
    handler.assign([0, 1])
    return handler, pub, stats


def test_ingest_publishes_updates_dead_letters_and_stores_once(tmp_path: Path):
    handler, pub, stats = _ingest(tmp_path)
    batch = [_click(0, 0, "a", "1"), _click(1, 0, "b", "7"), _click(0, 1, "a", "2"),
             ConsumedRecord("clicks", 0, 2, b"a", b"{not json", None),
             ConsumedRecord("clicks", 1, 1, b"b", None, None),  # tombstone: skipped
             _click(0, 3, "a", "3"), _click(0, 4, "a", "4"),
             _click(2, 0, "c", "5")]  # partition 2 is not owned: left alone (not acknowledged)
    done = asyncio.run(handler.handle(batch))
    assert done == {0, 1}
    updates = [orjson.loads(v) for v in pub.values("sequence-updates")]
    assert [(u["user_id"], u["items"], u["source"]) for u in updates] == [
        ("a", ["1"], {"partition": 0, "offset": 0}), ("a", ["1", "2"], {"partition": 0, "offset": 1}),
        ("a", ["1", "2", "3"], {"partition": 0, "offset": 3}), ("a", ["2", "3", "4"], {"partition": 0, "offset": 4}),
        ("b", ["7"], {"partition": 1, "offset": 0})]
    assert updates[0]["produced_ts"] == 1_700_000_000.5 and updates[0]["event_id"] == "e0-0"
    dead = [orjson.loads(v) for v in pub.values("clicks-dead-letter")]
    assert [(d["reason"], d["source"]["offset"]) for d in dead] == [("invalid_json", 2)]
    assert (stats.received, stats.applied, stats.dead_lettered, stats.skipped, stats.published) == (8, 5, 1, 1, 5)
    # the same batch again (a re-delivery): nothing applied twice, nothing re-published
    assert asyncio.run(handler.handle(batch[:7])) == {0, 1}
    assert stats.applied == 5 and stats.duplicates_skipped == 5 and len(pub.values("sequence-updates")) == 5
    assert stats.restored_skipped == 0  # its own writes
    assert handler.stores.get("clicks", 0).sequence("a") == ["2", "3", "4"]
    assert handler.revoke([0, 1]) == [("clicks", 0), ("clicks", 1)]


def test_ingest_counts_clicks_held_by_a_restored_window_as_restored_skipped(tmp_path: Path):
    """The store holds, above its applied offset, clicks an earlier owner wrote to the changelog but not to its store
    (it died between the two; the restore brought u1's window record, the batch's offset marker never arrived).
    Their re-delivery is skipped and counted as ``restored_skipped``; u0's clicks of that batch are applied."""
    cfg = _cfg(tmp_path)
    src = [SourceRecord("clicks", 0, i, Interaction(f"u{i % 2}", str(i), 100.0, f"e0-{i}")) for i in range(6)]
    with SequenceStore(tmp_path / "earlier-owner", window=3) as earlier:
        earlier.apply(src[:2])
        lost_batch = earlier.plan(src[2:])
    with SequenceStore(partition_store_path(cfg.state_dir, "clicks", 0), window=3) as restored:
        restored.apply(src[:2])  # the batch before: store, changelog windows and marker (applied offset 1)
        restored.apply_changelog({"u1": lost_batch.windows["u1"]}, {}, ("clicks-changelog", 0, 4))
    handler, pub, stats = _ingest(tmp_path)
    redelivered = [_click(0, i, f"u{i % 2}", str(i)) for i in range(6)]
    assert asyncio.run(handler.handle(redelivered)) == {0}
    assert (stats.applied, stats.duplicates_skipped, stats.restored_skipped) == (2, 4, 2)  # 0, 1 re-delivered; 3, 5
    assert [orjson.loads(v)["source"]["offset"] for v in pub.values("sequence-updates")] == [2, 4]
    assert handler.stores.get("clicks", 0).sequence("u0") == ["0", "2", "4"]
    assert handler.stores.get("clicks", 0).sequence("u1") == ["1", "3", "5"]
    asyncio.run(handler.handle(redelivered))  # again: now all its own or below the applied offset
    assert (stats.applied, stats.duplicates_skipped, stats.restored_skipped) == (2, 10, 2)
    handler.revoke([0, 1])


def test_after_a_broker_reset_restored_skipped_counts_against_the_new_log(tmp_path: Path):
    """The broker restarted empty below the stored offset (old log 0..5, new log 0..3). A restore later brings a
    window holding new-log clicks 2 and 3 (their store write was lost); their re-delivery is ``restored_skipped``
    although the old log had passed offset 3 (the worker's own offset of the old log must not hide them)."""
    cfg = _cfg(tmp_path)
    log_end: dict[str, int | None] = {"offset": None}
    pub, stats = MemoryPublisher(), WorkerStats()
    handler = IngestHandler(cfg, make_stores(cfg), pub, stats, highwater=lambda topic, part: log_end["offset"])
    handler.assign([0])
    asyncio.run(handler.handle([_click(0, i, "a", str(i)) for i in range(6)]))  # old log: applied offset 5
    log_end["offset"] = 1  # the new log ends at 1
    new_log = [_click(0, i, "c" if i == 1 else "b", str(10 + i)) for i in range(4)]
    asyncio.run(handler.handle(new_log[:2]))
    assert (stats.broker_resets, stats.applied, stats.restored_skipped) == (1, 8, 0)
    handler.revoke([0])
    src = [SourceRecord("clicks", 0, r.offset, Interaction(r.key.decode(), str(10 + r.offset), 100.0,
                                                           f"e0-{r.offset}")) for r in new_log]
    with SequenceStore(tmp_path / "earlier-owner", window=3) as earlier:
        earlier.apply(src[:2])
        lost_batch = earlier.plan(src[2:])
    with SequenceStore(partition_store_path(cfg.state_dir, "clicks", 0), window=3) as restored:
        restored.apply_changelog({"b": lost_batch.windows["b"]}, {}, ("clicks-changelog", 0, 9))
    handler.assign([0])
    asyncio.run(handler.handle(new_log[2:]))
    assert (stats.applied, stats.duplicates_skipped, stats.restored_skipped) == (8, 2, 2)
    assert handler.stores.get("clicks", 0).sequence("b") == ["10", "12", "13"]
    handler.revoke([0])


def test_ingest_failed_delivery_stores_nothing(tmp_path: Path):
    handler, pub, stats = _ingest(tmp_path)
    pub.fail_with = OSError("broker unreachable")
    with pytest.raises(OSError, match="broker unreachable"):
        asyncio.run(handler.handle([_click(0, 0, "a", "1")]))
    assert stats.applied == 0 and handler.stores.get("clicks", 0).sequence("a") == []


class _GatedPublisher(MemoryPublisher):
    """Deliveries complete only once ``gate`` is set (a slow broker)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def send(self, topic, key, value, partition=None):
        done = await super().send(topic, key, value, partition)

        async def later():
            await self.gate.wait()
            return await done

        return asyncio.ensure_future(later())


def test_a_log_cut_back_waits_for_the_batch_in_flight(tmp_path: Path):
    """The lag check finds the clicks log cut back (topic recreated, broker restarted empty) while a batch of that
    partition waits for its deliveries: the offsets are forgotten only after the batch is stored. Forgetting them in
    between made the batch's store write stale (refused) while its changelog marker - the old log's offset - stayed
    for the next restore to bring back, and the new log's first clicks would be skipped as duplicates."""
    cfg = _cfg(tmp_path)
    assert cfg.state.changelog
    changelog = cfg.topics.changelog_topic.name
    pub, stats = _GatedPublisher(), WorkerStats()
    handler = IngestHandler(cfg, make_stores(cfg), pub, stats)
    handler.assign([0])

    async def run():
        pub.gate.set()
        await handler.handle([_click(0, i, "a", str(i)) for i in range(3)])  # applied offset 2
        pub.gate.clear()
        batch = asyncio.ensure_future(handler.handle([_click(0, 3, "a", "3"), _click(0, 4, "b", "4")]))
        while not pub.values("sequence-updates")[3:]:
            await asyncio.sleep(0.01)  # the batch's updates are out, their acknowledgements pending
        cut = asyncio.ensure_future(handler.log_cut_back(0, next_offset=5, log_end=0))
        await asyncio.sleep(0.2)
        assert not cut.done()  # waits for the batch in flight
        pub.gate.set()
        assert await batch == {0}
        await cut

    asyncio.run(run())
    store = handler.stores.get("clicks", 0)
    assert store.applied_offset("clicks", 0) is None  # forgotten after the batch was stored
    assert store.sequence("a") == ["1", "2", "3"] and store.sequence("b") == ["4"]
    assert stats.applied == 5 and stats.broker_resets == 1
    # the store reflects every changelog record published (the batch's marker included): a restore starts after it
    to_changelog_0 = sum(t == changelog and p == 0 for (t, _, _), p in zip(pub.sent, pub.partitions, strict=True))
    assert store.changelog_position(changelog, 0) == to_changelog_0
    handler.revoke([0])


def test_a_log_cut_back_waiting_for_a_store_holds_up_no_batch_and_ends_on_revocation(tmp_path: Path):
    """A cut back of a partition whose store is still opening (or restoring) does not hold up batches of the other
    partitions, and a revocation of that partition meanwhile ends it quietly (it used to end the lag-refresh
    timer with the restore's CancelledError)."""
    handler, _, stats = _ingest(tmp_path)

    async def run():
        opening = asyncio.get_running_loop().create_future()
        handler._prepared[1] = opening  # partition 1's store: still opening
        cut = asyncio.ensure_future(handler.log_cut_back(1, next_offset=5, log_end=0))
        await asyncio.sleep(0.05)
        assert await asyncio.wait_for(handler.handle([_click(0, 0, "a", "1")]), 10) == {0}
        assert not cut.done()
        handler.revoke([1])  # cancels the open/restore
        assert await asyncio.wait_for(cut, 10) is None

    asyncio.run(run())
    assert stats.applied == 1 and stats.broker_resets == 0
    handler.revoke([0])


def test_ingest_write_failure_hook_retries_then_fails(tmp_path: Path):
    hooks = WorkerHooks.from_options(inject_write_failure="1:5")
    handler, _, stats = _ingest(tmp_path, hooks, batch={"store_write_attempts": 2})
    with pytest.raises(StoreError):
        asyncio.run(handler.handle([_click(0, 0, "a", "1"), _click(0, 1, "a", "2")]))
    assert stats.write_retries == 1 and stats.applied == 0


def test_crash_hook_fails_after_n_batches(tmp_path: Path):
    handler, _, stats = _ingest(tmp_path, WorkerHooks(crash_after_batches=2))
    asyncio.run(handler.handle([_click(0, 0, "a", "1")]))
    with pytest.raises(RuntimeError, match="injected failure after 2 batches"):
        asyncio.run(handler.handle([_click(0, 1, "a", "2")]))
    assert stats.applied == 2  # stored, but the batch is never acknowledged


class _CountingRecommender:
    """Wraps a real Recommender and records the windows it was asked to score."""

    def __init__(self, rec: Recommender) -> None:
        self.rec, self.calls = rec, []

    def recommend(self, windows, k, **kw):
        self.calls.append([list(w) for w in windows])
        return self.rec.recommend(windows, k, **kw)


@pytest.fixture()
def tiny(tmp_path: Path) -> Recommender:
    torch.manual_seed(0)
    cfg = ModelConfig(hidden_size=16, max_len=4, num_heads=2, num_blocks=1, diffusion_steps=4)
    path = save_checkpoint(tmp_path / "m.pt", build_model(20, cfg).eval(), vocab=[str(i) for i in range(1, 21)],
                           config=cfg.model_dump(mode="json"), meta={"item_counts": list(range(21))})
    return Recommender.from_checkpoint(path, deterministic=True, version=3)


def _update(off: int, user: str, items: list[str], eid: str) -> ConsumedRecord:
    value = orjson.dumps({"user_id": user, "items": items, "event_id": eid, "event_ts": 1.0, "produced_ts": 2.0,
                          "ingest_ts": 3.0, "source": {"partition": 0, "offset": off}})
    return ConsumedRecord("sequence-updates", 0, off, user.encode(), value, None)


def test_score_deduplicates_users_and_answers_every_update(tmp_path: Path, tiny: Recommender):
    cfg = StreamConfig(top_k=4)
    counting, pub, stats = _CountingRecommender(tiny), MemoryPublisher(), WorkerStats()
    handler = ScoreHandler(cfg, counting, pub, stats)
    batch = [_update(0, "a", ["1"], "a1"), _update(1, "b", ["5", "6"], "b1"), _update(2, "a", ["1", "2"], "a2"),
             ConsumedRecord("sequence-updates", 0, 3, b"x", b"[1, 2]", None),  # not an update: skipped
             _update(4, "a", ["1", "2", "3"], "a3")]
    asyncio.run(handler.handle(batch))
    assert counting.calls == [[["5", "6"], ["1", "2", "3"]]]  # one model call, newest window per user
    recs = [orjson.loads(v) for v in pub.values("recommendations")]
    assert [(r["event_id"], r["superseded_by"]) for r in recs] == [("a1", "a3"), ("b1", None), ("a2", "a3"),
                                                                    ("a3", None)]
    assert recs[0]["items"] == recs[2]["items"] == recs[3]["items"]  # the shared result
    assert not {"1", "2", "3"} & set(recs[3]["items"])  # default: seen items excluded
    assert recs[3]["model_version"] == 3 and recs[3]["produced_ts"] == 2.0 and len(recs[3]["items"]) == 4
    assert (stats.received, stats.scored, stats.published, stats.skipped) == (5, 2, 4, 1)


def test_score_worker_recommender_takes_the_serving_settings(tmp_path: Path, tiny: Recommender):
    from adrec_stream.serving.registry import ModelRegistry
    from adrec_stream.stream.app import make_recommender

    ModelRegistry(tmp_path / "reg").publish(tiny.checkpoint.path, meta={})
    cfg = StreamConfig(registry_dir=str(tmp_path / "reg"), scoring={"sampling_steps": 2, "deterministic": True})
    assert StreamConfig().scoring.sampling_steps == 2  # the serving default (docs/sampling-steps.md)
    rr = make_recommender(cfg)
    assert rr.current.steps == 2 and rr.current.deterministic is True and torch.get_num_threads() == 1
    with pytest.raises(ValueError, match=r"steps must be in \[1, T=4\]"):
        Recommender(tiny.checkpoint, steps=5)


def test_score_without_deduplication_scores_every_update(tiny: Recommender):
    cfg = StreamConfig(top_k=4, scoring={"deduplicate_users": False})
    counting, pub = _CountingRecommender(tiny), MemoryPublisher()
    asyncio.run(ScoreHandler(cfg, counting, pub, WorkerStats()).handle(
        [_update(0, "a", ["1"], "a1"), _update(1, "a", ["1", "2"], "a2")]))
    assert counting.calls == [[["1"], ["1", "2"]]]
    assert [orjson.loads(v)["superseded_by"] for v in pub.values("recommendations")] == [None, None]
