"""State that follows its partition across hosts: three ingest worker processes with their own ``state_dir`` stand
for three hosts; the partitions of a worker that dies (SIGKILL, its state directory deleted) or leaves (SIGTERM,
directory deleted) are restored from the compacted changelog topic by their new owners.

Real broker (Tansu), real RocksDB, real worker subprocesses; real clicks: the first 2,400 ratings of MovieLens 100K
by time.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from conftest import last_log_event
from reliability_helpers import assigned_partitions, click_records, produce_to, wait_committed

from adrec_stream.broker.process import effective_bootstrap
from adrec_stream.data.events import Interaction, read_interactions
from adrec_stream.state.partitioned import partition_for_key, partition_store_path
from adrec_stream.state.store import SequenceStore, SourceRecord

pytestmark = pytest.mark.broker

ML100K = Path(__file__).resolve().parents[2] / "shared" / "data" / "events" / "ml-100k" / "u.data"
N_CLICKS = 2400
FIRST_PART = 1200


def _ml100k_clicks() -> list:
    rows = read_interactions(ML100K)[:N_CLICKS]  # sorted by time
    return [Interaction(r.user_id, r.item_id, r.ts, f"ml100k-{i}") for i, r in enumerate(rows)]


def _events(log_text: str, event: str) -> list[dict]:
    return [json.loads(ln[ln.index("{"):]) for ln in log_text.splitlines() if f'"event": "{event}"' in ln]


def _single_worker_windows(clicks: list, n_parts: int, window: int) -> dict[str, list[str]]:
    """What ONE ingest worker builds from the same clicks: its SequenceStore fed in partition order."""
    offsets = [0] * n_parts
    records = []
    for c in clicks:
        p = partition_for_key(c.user_id.encode(), n_parts)
        records.append(SourceRecord("clicks", p, offsets[p], c))
        offsets[p] += 1
    import tempfile

    with tempfile.TemporaryDirectory() as d, SequenceStore(Path(d) / "db", window=window) as store:
        for i in range(0, len(records), 100):
            store.apply(records[i:i + 100])
        return {u: store.sequence(u) for u in store.users()}


def _wait_all_assigned(workers: list, n_parts: int, timeout_s: float = 60.0) -> dict[int, object]:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        latest = [assigned_partitions(w.log())[-1:] for w in workers]  # [] or [the last assignment]
        owners = {p: w for w, last in zip(workers, latest, strict=True) for p in (last[0] if last else [])}
        if sorted(owners) == list(range(n_parts)) and all(last and last[0] for last in latest):
            return owners
        time.sleep(0.2)
    raise AssertionError(f"partitions not split between {len(workers)} workers within {timeout_s} s: "
                         + str([assigned_partitions(w.log())[-1:] for w in workers]))


def _hosts_a_and_b(spawn_worker, cfg, dirs: dict, n_parts: int) -> tuple:
    """Ingest workers A then B on their own state_dirs (two hosts), once the group split the partitions between
    them: (a, b, A's partitions, ascending)."""
    a = spawn_worker("ingest", cfg, "--set", f"state_dir={dirs['a']}")
    a.wait_for('"partitions_assigned"', timeout_s=60)
    b = spawn_worker("ingest", cfg, "--set", f"state_dir={dirs['b']}")
    owners = _wait_all_assigned([a, b], n_parts)
    return a, b, sorted(p for p, w in owners.items() if w is a)


@pytest.mark.parametrize("how", ["kill9", "sigterm"])
def test_partition_state_follows_its_partition_to_other_hosts(stream_config, spawn_worker, tmp_path, how):
    """A and B ingest the first half; A is stopped (SIGKILL or SIGTERM) and its state_dir deleted; C joins; the
    second half is produced. Every user's window in the live owners' stores equals the single-worker result (0
    clicks lost, 0 applied twice), and the partitions A owned were restored from the changelog up to A's applied
    offset."""
    cfg = stream_config.model_copy(update={"window": 400})  # 26 users, up to 371 clicks each
    bootstrap = effective_bootstrap(cfg)
    topic, n_parts = cfg.topics.clicks.name, cfg.topics.clicks.partitions
    clicks = _ml100k_clicks()
    per_user: dict[str, int] = {}
    for c in clicks:
        per_user[c.user_id] = per_user.get(c.user_id, 0) + 1
    assert max(per_user.values()) <= cfg.window  # whole histories are compared: a duplicate would show
    dirs = {name: tmp_path / f"host-{name}" for name in "abc"}

    a, b, a_parts = _hosts_a_and_b(spawn_worker, cfg, dirs, n_parts)
    assert a_parts and len(a_parts) < n_parts

    produce_to(bootstrap, topic, click_records(clicks[:FIRST_PART]), None)
    ends = {p: 0 for p in range(n_parts)}
    for c in clicks[:FIRST_PART]:
        ends[partition_for_key(c.user_id.encode(), n_parts)] += 1
    got = wait_committed(bootstrap, cfg.groups.ingest, topic, ends, timeout_s=60)
    assert got == ends  # A and B applied and committed the first half
    a_applied = {p: ends[p] - 1 for p in a_parts}

    if how == "kill9":
        a.proc.kill()
        a.proc.wait(10)
    else:
        assert a.stop(timeout_s=30) == 0
    shutil.rmtree(dirs["a"])  # the host is gone with its disk

    c_w = spawn_worker("ingest", cfg, "--set", f"state_dir={dirs['c']}")
    c_w.wait_for('"partitions_assigned"', timeout_s=60)
    produce_to(bootstrap, topic, click_records(clicks[FIRST_PART:]), None)
    for c in clicks[FIRST_PART:]:
        ends[partition_for_key(c.user_id.encode(), n_parts)] += 1
    owners = _wait_all_assigned([b, c_w], n_parts)
    got = wait_committed(bootstrap, cfg.groups.ingest, topic, ends, timeout_s=90)
    assert got == ends
    assert b.proc.poll() is None and c_w.proc.poll() is None
    owners = _wait_all_assigned([b, c_w], n_parts)  # unchanged since the commit: the final owners
    assert b.stop() == 0 and c_w.stop() == 0
    for w in (b, c_w):
        assert last_log_event(w.log(), "worker_stopped")["failed"] is None

    # every user's window, read from the final owner's store of the user's partition
    stored: dict[str, list[str]] = {}
    applied: dict[int, int] = {}
    for p, w in owners.items():
        state_dir = dirs["b"] if w is b else dirs["c"]
        with SequenceStore(partition_store_path(state_dir, topic, p), window=cfg.window) as store:
            for u in store.users():
                assert partition_for_key(u.encode(), n_parts) == p
                stored[u] = store.sequence(u)
            applied[p] = store.applied_offset(topic, p)
    assert stored == _single_worker_windows(clicks, n_parts, cfg.window)  # 0 lost, 0 applied twice
    assert applied == {p: ends[p] - 1 for p in range(n_parts)}

    # A's partitions were restored from the changelog by their next owner, up to what A had applied
    restores = [r for w in (b, c_w) for r in _events(w.log(), "changelog_restored")]
    for p in a_parts:
        first = next(r for r in restores if r["partition"] == p and r["records"] > 0)
        assert first["from_offset"] == 0 and first["restored_offset"] > 0
        assert first["applied_offset"] == a_applied[p]  # >= the committed offset - 1: nothing re-applied
        assert first["users"] > 0 and first["changelog"] == cfg.topics.changelog_topic.name
    stats = [last_log_event(w.log(), "worker_stopped") for w in (b, c_w)]
    summary = [(r["partition"], r["records"], r["users"], r["restored_offset"], r["applied_offset"], r["seconds"])
               for r in restores]
    print(f"{how}: A owned {a_parts}; restores (partition, records, users, restored, applied, s) {summary}; "
          f"B applied {stats[0]['applied']}, C applied {stats[1]['applied']}, duplicates skipped "
          f"{stats[0]['duplicates_skipped'] + stats[1]['duplicates_skipped']}")


def test_standby_replica_makes_the_failover_restore_only_the_tail(stream_config, spawn_worker, tmp_path):
    """With ``state.standby_replicas`` B keeps a warm copy of A's partitions; after A's SIGKILL (disk lost) B restores
    only what its copy lacks, and every window is exact. A second worker on B's state_dir is refused."""
    cfg = stream_config.model_copy(update={
        "window": 400, "state": stream_config.state.model_copy(update={"standby_replicas": True})})
    bootstrap = effective_bootstrap(cfg)
    topic, n_parts = cfg.topics.clicks.name, cfg.topics.clicks.partitions
    clicks = _ml100k_clicks()
    dirs = {name: tmp_path / f"host-{name}" for name in "ab"}
    a, b, a_parts = _hosts_a_and_b(spawn_worker, cfg, dirs, n_parts)

    twin = spawn_worker("ingest", cfg, "--set", f"state_dir={dirs['b']}")  # same "host" as B
    assert twin.proc.wait(60) == 2
    assert "another ingest worker uses state_dir" in twin.log()

    produce_to(bootstrap, topic, click_records(clicks[:FIRST_PART]), None)
    ends = {p: 0 for p in range(n_parts)}
    for c in clicks[:FIRST_PART]:
        ends[partition_for_key(c.user_id.encode(), n_parts)] += 1
    assert wait_committed(bootstrap, cfg.groups.ingest, topic, ends, timeout_s=60) == ends
    import time

    time.sleep(2.0)  # B's replica follows A's last batches
    a.proc.kill()
    a.proc.wait(10)
    shutil.rmtree(dirs["a"])
    produce_to(bootstrap, topic, click_records(clicks[FIRST_PART:]), None)
    for c in clicks[FIRST_PART:]:
        ends[partition_for_key(c.user_id.encode(), n_parts)] += 1
    assert wait_committed(bootstrap, cfg.groups.ingest, topic, ends, timeout_s=90) == ends
    assert b.stop() == 0

    stored: dict[str, list[str]] = {}
    for p in range(n_parts):
        with SequenceStore(partition_store_path(dirs["b"], topic, p), window=cfg.window) as store:
            stored.update({u: store.sequence(u) for u in store.users()})
            assert store.applied_offset(topic, p) == ends[p] - 1
    assert stored == _single_worker_windows(clicks, n_parts, cfg.window)
    for p in a_parts:
        moved = [r for r in _events(b.log(), "changelog_restored") if r["partition"] == p][-1]
        # the warm copy already held most of the changelog: only the tail (if any) was read at the failover
        assert moved["from_offset"] > 0 and moved["records"] < moved["restored_offset"]
        assert moved["applied_offset"] == ends[p] - 1 - sum(
            1 for c in clicks[FIRST_PART:] if partition_for_key(c.user_id.encode(), n_parts) == p)
        print(f"standby: partition {p} restored {moved['records']} of {moved['restored_offset']} changelog records "
              f"in {moved['seconds']} s")
