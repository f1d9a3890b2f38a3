"""The workers' metric updates without a broker: the ingest and score handlers (real RocksDB stores, a real tiny model,
a memory publisher, a real registry), the registry's publication time, the fine-tune worker's counters and readiness."""

from __future__ import annotations

import asyncio
import json
import math
import os
from pathlib import Path

import orjson
import pytest
import torch
from ops_helpers import key, subset
from test_ops import exposition

from adrec_stream import __version__
from adrec_stream.evaluation.prequential import OnlinePrequential
from adrec_stream.ops.metrics import WorkerMetrics
from adrec_stream.stream.config import StreamConfig
from adrec_stream.stream.handler_support import ConsumedRecord, MemoryPublisher, WorkerStats


def test_worker_stats_export_mirrors_the_counts_once():
    m = WorkerMetrics("ingest", group="grp")
    stats = WorkerStats()
    stats.received, stats.applied, stats.published, stats.duplicates_skipped = 10, 6, 6, 1
    stats.dead_letter("invalid_json")
    stats.dead_letter("invalid_json")
    stats.dead_letter("bad_ts")
    stats.skip("tombstone")
    stats.export(m)
    stats.export(m)  # idempotent: a total is mirrored, not added
    stats.received += 5
    stats.end_batch(5, 0.02, m)
    expected = {key("adrec_records_consumed_total"): 15, key("adrec_clicks_applied_total"): 6,
                key("adrec_sequence_updates_published_total"): 6, key("adrec_duplicates_skipped_total"): 1,
                key("adrec_clicks_dead_lettered_total", reason="invalid_json"): 2,
                key("adrec_clicks_dead_lettered_total", reason="bad_ts"): 1,
                key("adrec_records_skipped_total", reason="tombstone"): 1,
                key("adrec_records_skipped_total", reason="empty_key"): 0,
                key("adrec_batch_size_records_count"): 1, key("adrec_batch_size_records_sum"): 5,
                key("adrec_worker_info", group="grp", pid=str(os.getpid()), role="ingest", version=__version__): 1}
    assert subset(exposition(m), expected) == expected
    assert stats.as_dict()["dead_letter_reasons"] == {"invalid_json": 2, "bad_ts": 1}
    m.sync(m.applied, 3)  # a lower total never lowers a counter
    assert exposition(m)[("adrec_clicks_applied_total", ())] == 6
    with pytest.raises(ValueError, match="role must be one of"):
        WorkerMetrics("broker")


def _click(part: int, off: int, user: str, item: str) -> ConsumedRecord:
    from adrec_stream.data.events import Interaction
    from adrec_stream.stream.events import encode_click

    return ConsumedRecord("clicks", part, off, user.encode(), encode_click(Interaction(user, item, 100.0 + off,
                                                                                       f"e{part}-{off}")), 1.0)


def test_ingest_handler_counts_into_the_metrics_and_opens_owned_stores(tmp_path: Path):
    from adrec_stream.stream.ingest import IngestHandler, make_stores

    cfg = StreamConfig(state_dir=str(tmp_path / "state"), window=3)
    m, stats = WorkerMetrics("ingest"), WorkerStats()
    handler = IngestHandler(cfg, make_stores(cfg), MemoryPublisher(), stats, metrics=m)
    handler.assign([0, 1])
    assert handler.stores_check() == (False, "sequence stores of clicks partitions [0, 1] not open yet (opening)")
    assert asyncio.run(handler.open_owned_stores()) == [0, 1]
    assert handler.stores_check() == (True, "")
    batch = [_click(0, 0, "a", "1"), ConsumedRecord("clicks", 0, 1, b"a", b"{not json", None),
             ConsumedRecord("clicks", 1, 0, b"b", b'{"user_id": "b", "item_id": "1", "ts": "late"}', None),
             ConsumedRecord("clicks", 1, 1, b"b", None, None), ConsumedRecord("clicks", 1, 2, b"", b'{"item_id": "3"}'),
             _click(1, 3, "b", "2"), _click(0, 2, "a", "2")]
    assert asyncio.run(handler.handle(batch)) == {0, 1}
    assert asyncio.run(handler.handle(batch[:1])) == {0}  # a re-delivery: a duplicate
    expected = {key("adrec_records_consumed_total"): 8, key("adrec_clicks_applied_total"): 3,
                key("adrec_duplicates_skipped_total"): 1, key("adrec_sequence_updates_published_total"): 3,
                key("adrec_clicks_dead_lettered_total", reason="invalid_json"): 1,
                key("adrec_clicks_dead_lettered_total", reason="bad_ts"): 1,
                key("adrec_records_skipped_total", reason="tombstone"): 1,
                key("adrec_records_skipped_total", reason="empty_key"): 1,
                key("adrec_batch_size_records_count"): 2, key("adrec_batch_size_records_sum"): 8}
    assert subset(exposition(m), expected) == expected
    m.watch_stores(lambda: [("clicks", p, handler.stores.path("clicks", p)) for _, p in
                            handler.stores.open_partitions()])
    sizes = {k[1]: v for k, v in exposition(m).items() if k[0] == "adrec_store_size_bytes"}
    assert set(sizes) == {(("partition", "0"), ("topic", "clicks")), (("partition", "1"), ("topic", "clicks"))}
    assert all(v > 0 for v in sizes.values())
    handler.revoke([0, 1])
    assert handler.owned == set() and handler.stores.open_partitions() == []


def test_a_store_revoked_while_opening_is_closed_again(tmp_path: Path):
    from adrec_stream.stream.ingest import IngestHandler, make_stores

    cfg = StreamConfig(state_dir=str(tmp_path / "state"), window=3)
    handler = IngestHandler(cfg, make_stores(cfg), MemoryPublisher(), WorkerStats())
    handler.assign([0])
    real_open = handler.stores.open_async

    async def open_then_revoke(topic: str, part: int):
        store = await real_open(topic, part)
        handler.owned.discard(part)  # the revocation ran while the open waited for the lock
        return store

    handler.stores.open_async = open_then_revoke
    assert asyncio.run(handler.open_owned_stores()) == []
    assert handler.stores.open_partitions() == []  # the next owner can take the store


@pytest.fixture()
def registry_recommender(tmp_path: Path):
    """A ReloadingRecommender on a registry holding one tiny model (vocabulary "1".."20") as version 1."""
    from adrec_stream.model import ModelConfig, build_model, save_checkpoint
    from adrec_stream.serving.recommender import ReloadingRecommender
    from adrec_stream.serving.registry import ModelRegistry

    torch.manual_seed(0)
    cfg = ModelConfig(hidden_size=16, max_len=4, num_heads=2, num_blocks=1, diffusion_steps=4)
    path = save_checkpoint(tmp_path / "m.pt", build_model(20, cfg).eval(), vocab=[str(i) for i in range(1, 21)],
                           config=cfg.model_dump(mode="json"), meta={"item_counts": list(range(21))})
    reg = ModelRegistry(tmp_path / "reg")
    return ReloadingRecommender(reg, poll_s=0.0, deterministic=True), reg, path


def _update(off: int, user: str, items: list[str], eid: str, produced_ts: float | None) -> ConsumedRecord:
    value = orjson.dumps({"user_id": user, "items": items, "event_id": eid, "event_ts": 1.0,
                          "produced_ts": produced_ts, "ingest_ts": 3.0, "source": {"partition": 0, "offset": off}})
    return ConsumedRecord("sequence-updates", 0, off, user.encode(), value, None)


def test_score_handler_metrics_serving_version_latency_and_prequential(registry_recommender, one_torch_thread):
    import time

    from adrec_stream.stream.score import ScoreHandler

    rec, reg, path = registry_recommender
    m, preq = WorkerMetrics("score"), OnlinePrequential(k=10)
    cfg = StreamConfig(top_k=4, registry_dir=str(reg.root))
    handler = ScoreHandler(cfg, rec, MemoryPublisher(), WorkerStats(), metrics=m, prequential=preq)
    assert handler.model_check() == (False, f"no model version in the registry at {reg.root}")
    reg.publish(path, meta={})
    now = time.time()
    asyncio.run(handler.handle([_update(0, "a", ["1"], "a1", now - 0.5), _update(1, "b", ["5"], "b1", None)]))
    assert handler.model_check() == (True, "")
    # de-duplicated batch: a2 superseded by a3, so only a2 is judged (against a1's list); a3 is not (a2's was
    # superseded); a re-delivered b1 is ignored
    batch = [_update(2, "a", ["1", "2"], "a2", now), _update(3, "a", ["1", "2", "3"], "a3", now),
             ConsumedRecord("sequence-updates", 0, 4, b"x", b"[1]", None), _update(1, "b", ["5"], "b1", now)]
    asyncio.run(handler.handle(batch))
    expected = {key("adrec_records_consumed_total"): 6, key("adrec_records_skipped_total", reason="bad_update"): 1,
                key("adrec_recommendations_total"): 5,
                key("adrec_users_scored_total"): 4,  # a1, b1 | a3, b1
                key("adrec_recommendation_fallbacks_total"): 0,
                key("adrec_click_to_recommendation_seconds_count"): 4,  # b1's first copy had no produced_ts
                key("adrec_serving_model_version"): 1,
                key("adrec_serving_model_published_timestamp_seconds"): reg.published_ts(1),
                key("adrec_model_reloads_total"): 1, key("adrec_model_refusals_total"): 0,
                key("adrec_prequential_judged_total"): 1}
    assert subset(exposition(m), expected) == expected and preq.judged == 1
    reg.publish(path, meta={})
    rec.maybe_reload()  # what the worker's ops timer does while no update arrives
    handler.export_metrics()
    got = exposition(m)
    assert got[("adrec_serving_model_version", ())] == 2 and got[("adrec_model_reloads_total", ())] == 2
    assert got[("adrec_serving_model_published_timestamp_seconds", ())] == reg.published_ts(2)


def test_registry_published_ts_reads_epoch_and_iso_times(tmp_path: Path):
    from adrec_stream.serving.registry import INFO_NAME, ModelRegistry

    reg = ModelRegistry(tmp_path / "reg")
    (tmp_path / "a.pt").write_bytes(b"weights")
    reg.publish(tmp_path / "a.pt")
    assert reg.published_ts(1) == reg.info(1)["published_at"] and reg.published_ts(2) is None
    info_path = reg.version_dir(1) / INFO_NAME
    for stamp, expected in (("2026-01-02T03:04:05+00:00", 1767323045.0), ("2026-01-02T03:04:05Z", 1767323045.0),
                            ("yesterday", None), (None, None)):
        info = json.loads(info_path.read_text())
        info["published_at"] = stamp
        info_path.write_text(json.dumps(info))
        assert reg.published_ts(1) == expected


# ------------------------------------------------------------------------------------------------- fine-tune
def test_finetune_worker_metrics_and_readiness_without_a_broker(tmp_path: Path):
    from adrec_stream.incremental.worker import FinetuneWorker
    from adrec_stream.serving.registry import ModelRegistry

    cfg = StreamConfig(state_dir=str(tmp_path / "state"), registry_dir=str(tmp_path / "reg"),
                       topics={"sequence_updates": {"name": "sequence-updates", "partitions": 2}})
    worker = FinetuneWorker(cfg, device="cpu")
    topic = cfg.topics.sequence_updates.name
    good = orjson.dumps({"user_id": "u", "items": ["1", "2"], "event_id": "e1", "event_ts": 1.0, "ingest_ts": 2.0,
                         "source": {"partition": 0, "offset": 0}})
    assert worker.ingest([(0, 0, good), (0, 1, b"not json")]) == 1
    state = worker.readiness.evaluate()
    assert state["ready"] is False
    assert state["checks"]["caught_up"]["reason"] == f"not caught up with {topic} yet (no fetch response yet)"
    assert state["checks"]["model"]["reason"].startswith(f"no model version in the registry at {tmp_path / 'reg'} ")
    assert worker.refresh_lag({0: 5, 1: None}, {0: 2, 1: 0}) == {0: 3}
    assert worker.readiness.evaluate()["checks"]["caught_up"]["reason"] == (
        f"not caught up with {topic} yet (3 records behind)")
    worker.refresh_lag({0: 5, 1: 0}, {0: 5, 1: 0})
    assert worker.caught_up is True
    (tmp_path / "m.pt").write_bytes(b"x")
    ModelRegistry(cfg.registry_dir).publish(tmp_path / "m.pt")
    assert worker.readiness.evaluate()["ready"] is True
    worker.counters.published, worker.counters.last_version = 1, 7
    worker.counters.rejected = {"heldout": 2}
    worker._export_round({"status": "rejected", "heldout_NDCG@10_candidate": 0.125, "heldout_NDCG@10_serving": None,
                          "round_s": 3.5})
    got = exposition(worker.metrics)
    expected = {key("adrec_records_consumed_total"): 2, key("adrec_records_skipped_total", reason="bad_update"): 1,
                key("adrec_finetune_updates_consumed_total"): 1,
                key("adrec_finetune_rounds_total", outcome="published"): 1,
                key("adrec_finetune_rounds_total", outcome="rejected"): 2,
                key("adrec_finetune_rejected_total", reason="heldout"): 2,
                key("adrec_finetune_heldout_ndcg_at_10", model="candidate"): 0.125,
                key("adrec_finetune_round_seconds"): 3.5, key("adrec_finetune_published_version"): 7,
                key("adrec_consumer_lag_records", partition="0", topic=topic): 0,
                key("adrec_consumer_lag_records", partition="1", topic=topic): 0, key("adrec_ready"): 1}
    assert subset(got, expected) == expected
    assert math.isnan(got[key("adrec_finetune_heldout_ndcg_at_10", model="serving")])
