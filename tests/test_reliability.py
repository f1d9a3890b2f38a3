"""Reliability scenarios (fast part): real Tansu broker (session fixture), real RocksDB, real
worker subprocesses. Slow crash / long-outage scenarios are in test_reliability_slow.py, the two-worker
rebalance (scenario 4) in test_reliability_rebalance.py.

Each test names its scenario; docs/reliability.md maps scenarios -> guarantees -> these tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import orjson
import pytest
from conftest import REPO_ROOT, consume, last_log_event, write_stream_config
from reliability_helpers import (
    by_event_id,
    changelog_windows,
    click_records,
    committed_offsets,
    produce_to,
    store_contents,
    wait_committed,
)

from adrec_stream.broker.process import effective_bootstrap
from adrec_stream.data.events import Interaction
from adrec_stream.state.partitioned import partition_store_path
from adrec_stream.state.store import SequenceStore
from adrec_stream.stream.app import EXIT_AGENT_CRASHED
from adrec_stream.stream.events import encode_click

pytestmark = pytest.mark.broker


def _click(user: str, item: str, i: int) -> Interaction:
    return Interaction(user, item, 1_700_000_000.0 + i, f"{user}-{i}")


def test_poison_tombstone_empty_key_and_oversize_commit_past_them(stream_config, spawn_worker):
    """Scenarios 1, 7 and the size limit: one partition holds, in order,
    0 valid, 1 valid, 2 ``ts: "yesterday"``, 3 no user_id (no key), 4 valid, 5 valid, 6 tombstone,
    7 empty key + no user_id, 8 over max_event_bytes, 9 valid.
    -> 0, 1, 4, 5, 9 applied in order; 2, 3, 8 dead-lettered with reason and source partition/offset;
    6, 7 skipped and counted; the group's committed offset reaches 10 (past every bad record)."""
    cfg = stream_config.model_copy(update={"max_event_bytes": 1024})
    bootstrap = effective_bootstrap(cfg)
    topic = cfg.topics.clicks.name
    u = b"u1"
    records = [
        (u, encode_click(_click("u1", "1", 0))),
        (u, encode_click(_click("u1", "2", 1))),
        (u, b'{"user_id": "u1", "item_id": "3", "ts": "yesterday"}'),
        (None, b'{"item_id": "4", "ts": 1700000003}'),
        (u, encode_click(_click("u1", "5", 4))),
        (u, encode_click(_click("u1", "6", 5))),
        (u, None),  # tombstone
        (b"", b'{"item_id": "8", "ts": 1700000007}'),  # empty key, no user_id
        (u, orjson.dumps({"user_id": "u1", "item_id": "9", "ts": 1700000008, "pad": "x" * 2000})),
        (u, encode_click(_click("u1", "10", 9))),
    ]
    produce_to(bootstrap, topic, records, partition=0)
    worker = spawn_worker("ingest", cfg)
    got = wait_committed(bootstrap, cfg.groups.ingest, topic, {0: len(records)}, timeout_s=60)
    assert got[0] == len(records), f"committed offset did not pass the bad records: {got}"
    assert committed_offsets(bootstrap, cfg.groups.ingest, topic, 2)[1] in (None, 0)  # partition 1 stayed empty

    dead = consume(bootstrap, cfg.topics.dead_letter.name, 3, settle_s=0.5)
    letters = sorted((json.loads(d.value) for d in dead), key=lambda d: d["source"]["offset"])
    assert [(d["reason"], d["source"]["topic"], d["source"]["partition"], d["source"]["offset"])
            for d in letters] == [("bad_ts", topic, 0, 2), ("missing_user_id", topic, 0, 3), ("too_large", topic, 0, 8)]
    updates = consume(bootstrap, cfg.topics.sequence_updates.name, 5, settle_s=0.5)
    assert sorted(by_event_id(updates)) == sorted(["u1-0", "u1-1", "u1-4", "u1-5", "u1-9"])

    assert worker.stop() == 0
    stopped = last_log_event(worker.log(), "worker_stopped")
    assert (stopped["applied"], stopped["dead_lettered"], stopped["skipped"]) == (5, 3, 2)
    seqs, offsets = store_contents(cfg)
    assert seqs == {"u1": ["1", "2", "5", "6", "10"]}
    assert offsets == {(topic, 0): 9}


def test_kill9_between_changelog_and_store_write_restores_that_click(stream_config, spawn_worker):
    """The race CI caught in scenario 3a, made deterministic: the worker dies (SIGKILL) after click 7's sequence
    update, changelog window record and offset marker were acknowledged, before its store write. The restart
    restores that click from the changelog and skips its re-delivery as ``restored_skipped``: applied 3 (clicks
    8-10) + restored 1 = the 4 clicks the killed worker had not stored; the window is exact."""
    k = 6  # offset of click 7
    cfg = stream_config.model_copy(update={
        "window": 50, "batch": stream_config.batch.model_copy(update={"ingest_max_records": 1})})
    bootstrap = effective_bootstrap(cfg)
    clicks = [_click("u7", str(i + 1), i) for i in range(10)]
    produce_to(bootstrap, cfg.topics.clicks.name, click_records(clicks), partition=0)
    first = spawn_worker("ingest", cfg, "--inject-write-failure", f"{k}:kill")
    assert first.proc.wait(90) == -9
    seqs, offsets = store_contents(cfg)
    assert seqs == {"u7": [c.item_id for c in clicks[:k]]} and offsets == {(cfg.topics.clicks.name, 0): k - 1}
    assert changelog_windows(bootstrap, cfg.topics.changelog_topic.name)["u7"] == [c.item_id for c in clicks[:k + 1]]
    second = spawn_worker("ingest", cfg)
    assert wait_committed(bootstrap, cfg.groups.ingest, cfg.topics.clicks.name, {0: 10})[0] == 10
    assert second.stop() == 0
    stopped = last_log_event(second.log(), "worker_stopped")
    assert (stopped["applied"], stopped["restored_skipped"]) == (3, 1)
    seqs, offsets = store_contents(cfg)
    assert seqs == {"u7": [c.item_id for c in clicks]} and offsets == {(cfg.topics.clicks.name, 0): 9}


@pytest.mark.parametrize("failures", [1, 1000], ids=["transient-retried", "persistent-restart"])
def test_store_write_failure_on_click_k_of_10(stream_config, spawn_worker, failures):
    """Scenario 2: the RocksDB write of click k = 7 of 10 fails (injected in the store's write path).

    transient (fails once): retried in place -> all 10 stored once, no restart.
    persistent: after ``store_write_attempts`` the agent fails, the worker exits 3 without committing past
    click 7 (committed offset <= 6, store holds exactly clicks 1-6); a restart without the fault stores all
    10, each exactly once. Sequence updates are at-least-once: duplicates carry the same event_id and window.
    """
    k = 6  # offset of click 7
    cfg = stream_config.model_copy(update={
        "window": 50,
        "batch": stream_config.batch.model_copy(update={"ingest_max_records": 1, "store_write_attempts": 3}),
    })
    bootstrap = effective_bootstrap(cfg)
    topic = cfg.topics.clicks.name
    clicks = [_click("u7", str(i + 1), i) for i in range(10)]
    produce_to(bootstrap, topic, click_records(clicks), partition=0)
    worker = spawn_worker("ingest", cfg, "--inject-write-failure", f"{k}:{failures}")
    if failures == 1:
        assert wait_committed(bootstrap, cfg.groups.ingest, topic, {0: 10})[0] == 10
        assert worker.stop() == 0
        stopped = last_log_event(worker.log(), "worker_stopped")
        assert (stopped["applied"], stopped["write_retries"]) == (10, 1)
    else:
        worker.proc.wait(90)
        assert worker.proc.returncode == EXIT_AGENT_CRASHED
        assert last_log_event(worker.log(), "worker_stopped")["write_retries"] == 2
        committed = committed_offsets(bootstrap, cfg.groups.ingest, topic, 1)[0]
        assert committed is not None and committed <= k  # never past the unapplied click
        seqs, offsets = store_contents(cfg)
        assert seqs == {"u7": [c.item_id for c in clicks[:k]]} and offsets == {(topic, 0): k - 1}
        again = spawn_worker("ingest", cfg)
        assert wait_committed(bootstrap, cfg.groups.ingest, topic, {0: 10})[0] == 10
        assert again.stop() == 0
    seqs, offsets = store_contents(cfg)
    assert seqs == {"u7": [c.item_id for c in clicks]}  # all 10, each once, in order
    assert offsets == {(topic, 0): 9}
    updates = by_event_id(consume(bootstrap, cfg.topics.sequence_updates.name, 10, settle_s=0.5))
    assert sorted(updates) == sorted(c.event_id for c in clicks)
    for i, c in enumerate(clicks):  # re-published updates are identical (same event_id, same window)
        assert all(u["items"] == [x.item_id for x in clicks[: i + 1]] for u in updates[c.event_id])


def test_worker_on_locked_store_fails_with_one_clear_line(stream_config, tmp_path):
    """Scenario 6 (worker level): the store of partition 0 is held by another process -> `adrec-stream worker
    ingest` waits ``store_lock_wait_s`` when the partition's first record arrives, then exits 2 with one line
    naming the store path and the holding PID, no traceback. (Library level and reopen after kill -9:
    tests/test_store_lock.py.)"""
    cfg = stream_config.model_copy(update={"store_lock_wait_s": 1.5})
    cfg_path = write_stream_config(cfg, tmp_path / "stream.yaml")
    path = str(partition_store_path(cfg.state_dir, cfg.topics.clicks.name, 0))
    produce_to(effective_bootstrap(cfg), cfg.topics.clicks.name, click_records([_click("u1", "1", 0)]), partition=0)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom adrec_stream.state.store import SequenceStore\n"
         "s = SequenceStore(sys.argv[1], window=5)\nprint('open', flush=True)\ntime.sleep(120)", path],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        t0 = time.monotonic()
        res = subprocess.run([sys.executable, "-m", "adrec_stream.cli", "worker", "ingest", "--config", str(cfg_path)],
                             capture_output=True, text=True, timeout=90, cwd=REPO_ROOT)
        took = time.monotonic() - t0
    finally:
        holder.kill()
        holder.wait(10)
    assert res.returncode == 2, res.stderr[-2000:]
    err_lines = [ln for ln in res.stderr.splitlines() if ln.startswith("adrec-stream worker: error:")]
    assert len(err_lines) == 1, res.stderr[-2000:]
    assert path in err_lines[0] and f"PID {holder.pid}" in err_lines[0] and "waited 1.5 s" in err_lines[0]
    assert took >= 1.5
    assert "Traceback" not in res.stderr + res.stdout
    with SequenceStore(path, window=5) as store:  # after the holder's kill -9 the store reopens
        assert store.applied_offsets() == {}


def _publish_zero_model(cfg, tmp_path) -> list[str]:
    """Tiny ADRec whose vocabulary holds raw item "0" (most popular) and "1".."29"; published as version 1."""
    import torch

    from adrec_stream.model import ModelConfig, build_model, save_checkpoint
    from adrec_stream.serving.registry import ModelRegistry

    vocab = [str(i) for i in range(30)]
    torch.manual_seed(0)
    mcfg = ModelConfig(hidden_size=16, max_len=10, num_heads=2, num_blocks=1, diffusion_steps=4)
    model = build_model(len(vocab), mcfg).eval()
    counts = [0] + [1000] + [len(vocab) - i for i in range(1, len(vocab))]  # "0" (internal 1) most popular
    path = save_checkpoint(tmp_path / "zero" / "model.pt", model, vocab=vocab, config=mcfg.model_dump(mode="json"),
                           meta={"item_counts": counts})
    ModelRegistry(cfg.registry_dir).publish(path, meta={"item_counts": counts})
    return vocab


def test_item_zero_and_unseen_item_through_the_pipeline(stream_config, spawn_worker, tmp_path):
    """Scenarios 8-10 through the real broker: raw item "0" is stored and recommended (it is a real item,
    internal index 1, never padding); item 10^9 (unknown to the model) is stored and skipped at scoring; a user
    whose history holds only unknown items gets the popularity fallback; every score is finite."""
    cfg = stream_config
    vocab = _publish_zero_model(cfg, tmp_path)
    bootstrap = effective_bootstrap(cfg)
    big = "1000000000"
    clicks = [_click("a", "0", 0), _click("a", "3", 1), _click("b", big, 2), _click("c", "0", 3),
              _click("c", big, 4)]
    produce_to(bootstrap, cfg.topics.clicks.name, click_records(clicks), partition=None)
    ingest = spawn_worker("ingest", cfg)
    score = spawn_worker("score", cfg)
    recs = by_event_id(consume(bootstrap, cfg.topics.recommendations.name, len(clicks), timeout_s=90))
    assert sorted(recs) == sorted(c.event_id for c in clicks)
    for c in clicks:
        for r in recs[c.event_id]:
            assert r["user_id"] == c.user_id and len(r["items"]) == cfg.top_k
            assert set(r["items"]) <= set(vocab) and big not in r["items"]
            assert all(isinstance(s, float) and abs(s) < float("inf") for s in r["scores"])
    b = recs["b-2"][0]
    assert b["fallback"] is True and b["items"][0] == "0"  # only unknown items -> popularity, "0" first
    assert recs["c-4"][0]["fallback"] is False  # "0" is a usable history item; 10^9 is skipped
    assert recs["a-1"][0]["fallback"] is False and recs["c-3"][0]["fallback"] is False
    assert ingest.stop() == 0 and score.stop() == 0
    seqs, _ = store_contents(cfg)
    assert seqs == {"a": ["0", "3"], "b": [big], "c": ["0", big]}
