"""SequenceStore (adrec_stream.state.store) on real RocksDB: windows, idempotent offsets, atomic batches."""

from __future__ import annotations

from collections import defaultdict, deque
from pathlib import Path

import pytest

from adrec_stream.data.events import Interaction, read_interactions
from adrec_stream.errors import StalePlanError, StoreError
from adrec_stream.state.store import SequenceStore, SequenceUpdate, SourceRecord

ML100K = Path(__file__).resolve().parents[2] / "shared" / "data" / "events" / "ml-100k" / "u.data"


def rec(offset: int, user: str | None, item: str = "1", *, partition: int = 0, topic: str = "clicks") -> SourceRecord:
    ev = None if user is None else Interaction(user, item, float(offset), f"{topic}:{partition}:{offset}")
    return SourceRecord(topic, partition, offset, ev)


def test_apply_appends_in_order_and_reports_updates(tmp_path):
    with SequenceStore(tmp_path / "db", window=3) as store:
        ups = store.apply([rec(0, "a", "10"), rec(1, "b", "20"), rec(2, "a", "0"), rec(3, "a", "12")])
        assert [u.user_id for u in ups] == ["a", "b", "a", "a"]
        assert ups[0].items == ["10"] and ups[2].items == ["10", "0"]
        assert ups[3] == SequenceUpdate("a", ["10", "0", "12"], Interaction("a", "12", 3.0, "clicks:0:3"), 0, 3)
        store.apply([rec(4, "a", "13")])
        assert store.sequence("a") == ["0", "12", "13"]  # window 3: oldest dropped
        assert store.history("a") == (["0", "12", "13"], [2.0, 3.0, 4.0])
        assert store.sequence("b") == ["20"]
        assert store.sequence("nobody") == []
        assert store.applied_offset("clicks", 0) == 4
        assert store.applied_offset("clicks", 1) is None


def test_replay_is_idempotent(tmp_path):
    records = [rec(i, f"u{i % 3}", str(i)) for i in range(12)]
    with SequenceStore(tmp_path / "db", window=50) as store:
        assert len(store.apply(records[:8])) == 8
        before = {u: store.sequence(u) for u in ("u0", "u1", "u2")}
        assert store.apply(records[:8]) == []  # full replay: nothing applied
        assert {u: store.sequence(u) for u in ("u0", "u1", "u2")} == before
        ups = store.apply(records[5:])  # overlapping replay: only offsets 8..11 applied
        assert [u.offset for u in ups] == [8, 9, 10, 11]
        assert store.sequence("u0") == ["0", "3", "6", "9"]
        assert store.sequence("u2") == ["2", "5", "8", "11"]
        # duplicates and out-of-order offsets inside one batch are skipped too
        ups = store.apply([rec(12, "u0", "x"), rec(12, "u0", "x"), rec(11, "u0", "y"), rec(13, "u0", "z")])
        assert [u.offset for u in ups] == [12, 13]
        assert store.sequence("u0")[-2:] == ["x", "z"]


def test_offsets_are_per_topic_and_partition(tmp_path):
    with SequenceStore(tmp_path / "db", window=10) as store:
        store.apply([rec(5, "a", "1", partition=0), rec(2, "b", "2", partition=1), rec(0, "c", "3", topic="other")])
        assert store.applied_offsets() == {("clicks", 0): 5, ("clicks", 1): 2, ("other", 0): 0}
        assert store.applied_offsets("clicks") == {("clicks", 0): 5, ("clicks", 1): 2}
        # offset 3 is new on partition 1 although partition 0 is at 5
        assert [u.user_id for u in store.apply([rec(3, "b", "4", partition=1), rec(3, "a", "9", partition=0)])] == ["b"]
        assert store.sequence("b") == ["2", "4"] and store.sequence("a") == ["1"]


def test_dead_lettered_records_only_advance_the_offset(tmp_path):
    with SequenceStore(tmp_path / "db", window=10) as store:
        assert store.apply([rec(0, None), rec(1, None)]) == []
        assert store.applied_offset("clicks", 0) == 1
        assert list(store.users()) == []
        assert [u.offset for u in store.apply([rec(1, "a"), rec(2, "a", "7")])] == [2]
        assert store.sequence("a") == ["7"]


def test_state_survives_close_and_reopen(tmp_path):
    path = tmp_path / "db"
    with SequenceStore(path, window=4) as store:
        store.apply([rec(i, "a", str(i)) for i in range(6)])
    assert store.closed
    with SequenceStore(path, window=4) as store:
        assert store.sequence("a") == ["2", "3", "4", "5"]
        assert store.applied_offset("clicks", 0) == 5
        assert store.apply([rec(5, "a", "dup")]) == []
    with SequenceStore(path, window=2) as store:  # smaller window: trimmed on read
        assert store.sequence("a") == ["4", "5"]
        store.apply([rec(6, "a", "6")])
        assert store.history("a") == (["5", "6"], [5.0, 6.0])


def test_ten_thousand_clicks_keep_only_the_window(tmp_path):
    with SequenceStore(tmp_path / "db", window=200) as store:
        records = [rec(i, "heavy", str(i)) for i in range(10_000)]
        for start in range(0, len(records), 1000):
            last = store.apply(records[start : start + 1000])[-1]
            assert len(last.items) == 200
        assert store.sequence("heavy") == [str(i) for i in range(9800, 10_000)]
        assert store.history("heavy")[1][0] == 9800.0


def test_failed_write_changes_nothing(tmp_path, monkeypatch):
    with SequenceStore(tmp_path / "db", window=10) as store:
        store.apply([rec(0, "a", "1")])

        def boom(wb):
            raise OSError("disk full (injected)")

        monkeypatch.setattr(store, "_write_batch", boom)
        with pytest.raises(StoreError, match="nothing was applied") as info:
            store.apply([rec(1, "a", "2"), rec(2, "b", "3"), rec(3, None)])
        assert "disk full (injected)" in str(info.value)
        assert store.applied_offset("clicks", 0) == 0
        assert store.sequence("a") == ["1"] and store.sequence("b") == []
        monkeypatch.undo()
        # the same records apply normally afterwards (they were not marked applied)
        assert [u.offset for u in store.apply([rec(1, "a", "2"), rec(2, "b", "3"), rec(3, None)])] == [1, 2]
        assert store.applied_offset("clicks", 0) == 3
        assert store.sequence("a") == ["1", "2"]
    with SequenceStore(tmp_path / "db", window=10) as store:  # on disk too
        assert store.sequence("a") == ["1", "2"] and store.applied_offset("clicks", 0) == 3


def test_apply_plan_writes_what_apply_would_and_survives_a_failed_write(tmp_path, monkeypatch):
    """The ingest handler plans a batch, publishes, then stores that plan: same state as apply(); a failed write
    leaves the plan valid for the retry."""
    batch = [rec(1, "a", "2"), rec(1, "a", "X"), rec(2, None), rec(3, "b", "3"), rec(4, "a", "4")]
    with SequenceStore(tmp_path / "by-apply", window=2) as ref:
        ref.apply([rec(0, "a", "1")])
        expected = ref.apply(batch)
        expected_state = ({u: ref.history(u) for u in ref.users()}, ref.applied_offsets())
    with SequenceStore(tmp_path / "by-plan", window=2) as store:
        store.apply([rec(0, "a", "1")])
        plan = store.plan(batch)
        assert store.sequence("a") == ["1"]  # planning writes nothing

        def boom(wb):
            raise OSError("disk full (injected)")

        monkeypatch.setattr(store, "_write_batch", boom)
        with pytest.raises(StoreError, match="nothing was applied"):
            store.apply_plan(plan, ("clicks-changelog", 0, 7))
        monkeypatch.undo()
        assert store.apply_plan(plan, ("clicks-changelog", 0, 7)) == expected == plan.updates
        assert ({u: store.history(u) for u in store.users()}, store.applied_offsets()) == expected_state
        assert store.changelog_position("clicks-changelog", 0) == 7
        assert store.apply(batch) == []  # everything of the plan counts as applied


def test_a_plan_made_before_another_write_is_refused(tmp_path):
    """A write between plan and apply_plan (e.g. offsets forgotten after a broker reset) makes the plan stale: refused,
    and nothing of it written - every kind of write counts (apply, restore from the changelog, forgotten offsets),
    also for a plan of duplicates only; another store's plan is refused too."""
    with SequenceStore(tmp_path / "db", window=5) as store:
        for write in (lambda: store.apply([rec(9, "z", "9")]),
                      lambda: store.apply_changelog({"y": (["7"], [7.0], ("clicks", 0, 8))}, {}, ("cl", 0, 1)),
                      lambda: store.forget_offsets("clicks")):
            plan = store.plan([rec(20, "a", "1"), rec(21, "b", "2")])
            before = ({u: store.history(u) for u in store.users()}, store.applied_offsets())
            write()
            after_write = ({u: store.history(u) for u in store.users()}, store.applied_offsets())
            with pytest.raises(StalePlanError, match="written after this batch's plan was made"):
                store.apply_plan(plan)
            assert ({u: store.history(u) for u in store.users()}, store.applied_offsets()) == after_write
            assert after_write != before  # each write did change the store
        assert store.sequence("a") == [] and store.sequence("b") == []
        fresh = store.plan([rec(20, "a", "1")])
        assert [u.items for u in store.apply_plan(fresh)] == [["1"]]
        only_duplicates = store.plan([rec(20, "a", "1")])
        assert only_duplicates.fresh == 0
        store.forget_offsets("clicks")  # the offset that made rec 20 a duplicate is gone: it is new again
        with pytest.raises(StalePlanError):
            store.apply_plan(only_duplicates)
        with SequenceStore(tmp_path / "other", window=5) as other:
            with pytest.raises(StalePlanError, match="another store's"):
                other.apply_plan(store.plan([rec(30, "c", "3")]))
            assert other.sequence("c") == [] and store.sequence("c") == []


def test_sequences_multi_get_and_users_scan(tmp_path):
    with SequenceStore(tmp_path / "db", window=5) as store:
        n = 5000  # more than one internal scan chunk (4096)
        store.apply([rec(i, f"user{i:05d}", str(i)) for i in range(n)])
        users = list(store.users())
        assert len(users) == n and users[0] == "user00000" and users[-1] == "user04999"
        assert users == sorted(users)
        assert store.sequences(["user00003", "ghost", "user04999"]) == [["3"], [], ["4999"]]
        assert store.sequences([]) == []
        gen = store.users()
        assert next(gen) == "user00000"  # an abandoned generator must not keep the DB locked
    with SequenceStore(tmp_path / "db", window=5) as store:
        assert store.sequence("user00001") == ["1"]


def test_unicode_user_ids(tmp_path):
    with SequenceStore(tmp_path / "db", window=5) as store:
        store.apply([rec(0, "ユーザー", "1"), rec(1, "a:b\x00c", "2")])
        assert store.sequence("ユーザー") == ["1"]
        assert store.sequence("a:b\x00c") == ["2"]
        assert sorted(store.users()) == sorted(["ユーザー", "a:b\x00c"])


def test_forget_offsets_after_broker_reset(tmp_path):
    with SequenceStore(tmp_path / "db", window=5) as store:
        store.apply([rec(9, "a", "1", partition=0), rec(4, "a", "2", partition=1), rec(3, "x", "3", topic="t2")])
        store.forget_offsets("clicks", [1])
        assert store.applied_offsets() == {("clicks", 0): 9, ("t2", 0): 3}
        store.forget_offsets("clicks")
        assert store.applied_offsets() == {("t2", 0): 3}
        assert [u.offset for u in store.apply([rec(0, "a", "new")])] == [0]  # offsets restart from 0
        assert store.sequence("a") == ["1", "2", "new"]  # sequences kept
    with SequenceStore(tmp_path / "db", window=5) as store:
        assert store.applied_offsets() == {("clicks", 0): 0, ("t2", 0): 3}


def test_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="window"):
        SequenceStore(tmp_path / "db", window=0)
    store = SequenceStore(tmp_path / "db", window=1)
    with pytest.raises(ValueError, match="negative"):
        store.apply([rec(-1, "a")])
    store.close()
    store.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        store.apply([rec(0, "a")])


def test_not_a_rocksdb_directory(tmp_path):
    bad = tmp_path / "db"
    bad.write_text("not a directory")
    with pytest.raises(StoreError, match="cannot open the sequence store"):
        SequenceStore(bad, window=5)


def test_ml100k_replay_matches_last_window_per_user(tmp_path):
    """All 100,000 real MovieLens clicks, in time order, over 4 partitions by user: exact last-50 windows."""
    rows = read_interactions(ML100K)
    expected: dict[str, deque[str]] = defaultdict(lambda: deque(maxlen=50))
    parts: dict[int, int] = defaultdict(lambda: -1)
    records = []
    for r in rows:
        p = int(r.user_id) % 4
        parts[p] += 1
        records.append(SourceRecord("clicks", p, parts[p], Interaction(r.user_id, r.item_id, r.ts, "")))
        expected[r.user_id].append(r.item_id)
    with SequenceStore(tmp_path / "db", window=50) as store:
        for start in range(0, len(records), 1000):
            store.apply(records[start : start + 1000])
        for start in range(0, len(records), 5000):  # replay of everything: no effect
            assert store.apply(records[start : start + 5000]) == []
        users = list(store.users())
        assert len(users) == 943
        got = store.sequences(users)
        assert {u: s for u, s in zip(users, got)} == {u: list(d) for u, d in expected.items()}
        assert store.applied_offsets() == {("clicks", p): parts[p] for p in range(4)}
        assert sum(parts[p] + 1 for p in range(4)) == 100_000


@pytest.mark.parametrize("cache_users", [0, 2, 100_000])
def test_cache_sizes_give_identical_state(tmp_path, cache_users, monkeypatch):
    """LRU eviction (2 of 5 users cached), no cache and a large cache all agree, also after a failed write."""
    records = [rec(i, f"u{i % 5}", str(i)) for i in range(60)]
    with SequenceStore(tmp_path / "db", window=4, cache_users=cache_users) as store:
        for start in range(0, 40, 7):
            store.apply(records[start : min(start + 7, 40)])
        assert len(store._cache) == min(cache_users, 5)
        monkeypatch.setattr(store, "_write_batch", lambda wb: (_ for _ in ()).throw(OSError("injected")))
        with pytest.raises(StoreError):
            store.apply(records[40:50])
        monkeypatch.undo()
        assert store.sequence("u0") == ["20", "25", "30", "35"]
        got = store.history("u0")
        got[0].append("mutated by caller")  # returned lists are copies
        assert store.sequence("u0") == ["20", "25", "30", "35"]
        store.apply(records[40:])
        assert store.sequences([f"u{k}" for k in range(5)]) == [
            [str(i) for i in range(40 + k, 60, 5)][-4:] for k in range(5)
        ]


def test_one_write_batch_per_apply_holds_sequences_and_offsets(tmp_path, monkeypatch):
    with SequenceStore(tmp_path / "db", window=5) as store:
        calls = []
        real = store._write_batch

        def spy(wb):
            calls.append(wb.len())
            real(wb)

        monkeypatch.setattr(store, "_write_batch", spy)
        # 3 users over 2 partitions of one topic + 1 dead letter on a third partition
        store.apply([rec(0, "a"), rec(1, "b"), rec(0, "a", partition=1), rec(2, "c"), rec(0, None, partition=2)])
        assert calls == [3 + 3]  # 3 user windows + 3 partition offsets, one batch
        store.apply([rec(2, "c")])  # fully skipped: no write at all
        assert calls == [6]
