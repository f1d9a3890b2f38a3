"""Integration: real broker (session fixture), real RocksDB in tmp_path, workers as real subprocesses."""

from __future__ import annotations

import json
from collections import defaultdict

import orjson
import pytest
from conftest import consume, last_log_event, produce

from adrec_stream.broker.process import effective_bootstrap
from adrec_stream.data.events import Interaction
from adrec_stream.state.partitioned import read_all, user_sequence
from adrec_stream.stream.app import EXIT_AGENT_CRASHED
from adrec_stream.stream.events import encode_click

pytestmark = pytest.mark.broker


def _clicks(n: int, start: int = 0, users: int = 7) -> list[Interaction]:
    """Deterministic valid clicks: user u{i % users}, item (i*7 % 40) + 1, increasing ts."""
    return [Interaction(f"u{i % users}", str((i * 7) % 40 + 1), 1_000_000.0 + i, f"ev-{i}") for i in range(start, start + n)]


def _expected_sequences(clicks: list[Interaction], window: int) -> dict[str, list[str]]:
    seqs: dict[str, list[str]] = defaultdict(list)
    for c in clicks:
        seqs[c.user_id].append(c.item_id)
    return {u: s[-window:] for u, s in seqs.items()}


def test_clicks_to_recommendations_with_dead_letters(stream_config, tiny_registry, spawn_worker):
    cfg = stream_config
    bootstrap = effective_bootstrap(cfg)
    ingest = spawn_worker("ingest", cfg)
    score = spawn_worker("score", cfg, "--set", "scoring.seen_items=exclude")
    valid = _clicks(120)
    malformed = [
        (b"u1", b"{not json", "invalid_json"),
        (None, b'{"item_id": "3", "ts": 5}', "missing_user_id"),
        (b"u2", b'{"user_id": "u2", "item_id": "12a", "ts": 5}', "bad_item_id"),
        (b"u3", b'{"user_id": "u3", "item_id": "4", "ts": "yesterday"}', "bad_ts"),
    ]
    records: list[tuple[bytes | None, bytes | None]] = []
    for i, c in enumerate(valid):
        records.append((c.user_id.encode(), encode_click(c)))
        if i % 30 == 10:  # malformed records between valid ones
            key, value, _ = malformed[i // 30]
            records.append((key, value))
    records.append((b"u4", None))  # tombstone: skipped, not dead-lettered
    records.append((b"", b'{"item_id": "3", "ts": 5}'))  # empty key and no user_id: skipped too
    produce(bootstrap, cfg.topics.clicks.name, records)
    ingest.wait_for('"partitions_assigned"')
    score.wait_for('"model_version_loaded"')

    updates = consume(bootstrap, cfg.topics.sequence_updates.name, len(valid))
    recs = consume(bootstrap, cfg.topics.recommendations.name, len(valid))
    dead = consume(bootstrap, cfg.topics.dead_letter.name, len(malformed))

    # exactly one sequence update and one recommendation per valid click
    assert len(updates) == len(valid)
    assert len(recs) == len(valid)
    upd = {orjson.loads(r.value)["event_id"]: orjson.loads(r.value) for r in updates}
    rec = {orjson.loads(r.value)["event_id"]: orjson.loads(r.value) for r in recs}
    assert set(upd) == set(rec) == {c.event_id for c in valid}
    # each update carries the user's window up to and including its click, oldest first
    history: dict[str, list[str]] = defaultdict(list)
    for c in valid:
        history[c.user_id].append(c.item_id)
        assert upd[c.event_id]["items"] == history[c.user_id][-cfg.window:]
        assert upd[c.event_id]["user_id"] == c.user_id
    for c in valid:
        r = rec[c.event_id]
        assert r["user_id"] == c.user_id and r["model_version"] == 1 and r["fallback"] is False
        assert len(r["items"]) == cfg.top_k == len(r["scores"])
        assert set(r["items"]) <= set(tiny_registry)  # valid raw ids, never padding
        assert "0" not in r["items"]
        assert not set(r["items"]) & set(upd[c.event_id]["items"])  # scoring.seen_items=exclude
        assert r["scores"] == sorted(r["scores"], reverse=True)
        assert r["event_ts"] == c.ts and r["produced_ts"] is not None and r["emitted_ts"] >= r["produced_ts"]
        # the hops' times are in path order (the Kafka timestamp has millisecond resolution)
        assert r["ingest_ts"] == upd[c.event_id]["ingest_ts"]
        assert r["produced_ts"] - 0.001 <= r["ingest_ts"] <= r["scoring_start_ts"] <= r["emitted_ts"]

    # malformed records: dead-lettered with reason and source position; tombstone / empty key only skipped
    assert len(dead) == len(malformed)
    letters = {json.loads(d.value)["reason"]: json.loads(d.value) for d in dead}
    assert sorted(letters) == sorted(m[2] for m in malformed)  # one letter per reason (partition order varies)
    clicks_in = consume(bootstrap, cfg.topics.clicks.name, len(records), settle_s=0.2)
    by_pos = {(r.partition, r.offset): r.value for r in clicks_in}
    for _, value, reason in malformed:
        src = letters[reason]["source"]
        assert src["topic"] == cfg.topics.clicks.name
        assert by_pos[(src["partition"], src["offset"])] == value  # the source position holds that record
        assert letters[reason]["value"]["data"] == value.decode()

    assert ingest.stop() == 0
    stopped = last_log_event(ingest.log(), "worker_stopped")
    assert stopped["applied"] == len(valid) and stopped["dead_lettered"] == len(malformed)
    assert stopped["skipped"] == 2
    for user, seq in _expected_sequences(valid, cfg.window).items():
        assert user_sequence(cfg.state_dir, cfg.topics.clicks.name, cfg.topics.clicks.partitions, user,
                             window=cfg.window) == seq


def test_ingest_crash_and_restart_applies_nothing_twice(stream_config, spawn_worker):
    """A handler failure after the RocksDB write but before the ack: the worker exits (crashing supervisor),
    the restarted one gets the unacknowledged batch again and skips it by stored offset."""
    cfg = stream_config.model_copy(update={"window": 1000})  # keep whole sequences: counts are exact
    bootstrap = effective_bootstrap(cfg)
    first = _clicks(300)
    produce(bootstrap, cfg.topics.clicks.name, [(c.user_id.encode(), encode_click(c)) for c in first])
    crashing = spawn_worker("ingest", cfg, "--crash-after-batches", "1")
    crashing.proc.wait(90)
    assert crashing.proc.returncode == EXIT_AGENT_CRASHED
    applied_before = sum(len(s) for s in read_all(cfg.state_dir, window=cfg.window)[0].values())
    assert 0 < applied_before < len(first)  # one batch was stored, then the handler failed before acking

    second = _clicks(100, start=300)
    produce(bootstrap, cfg.topics.clicks.name, [(c.user_id.encode(), encode_click(c)) for c in second])
    again = spawn_worker("ingest", cfg)
    updates = consume(bootstrap, cfg.topics.sequence_updates.name, len(first) + len(second), timeout_s=90)
    assert again.stop() == 0
    ids = [orjson.loads(r.value)["event_id"] for r in updates]
    assert sorted(ids) == sorted(c.event_id for c in first + second)  # each click's update exactly once
    stopped = last_log_event(again.log(), "worker_stopped")
    assert stopped["duplicates_skipped"] == applied_before  # the re-delivered batch was not applied again
    assert read_all(cfg.state_dir, window=cfg.window)[0] == _expected_sequences(first + second, cfg.window)
