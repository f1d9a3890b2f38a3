"""Scenario 4: two ingest workers on one host sharing ``state_dir``; partitions move while clicks flow.

Worker A runs alone; clicks are produced continuously (3,000 clicks of 60 users, keyed by user id, 150/s); worker B
starts with the same ``state_dir`` while they flow (the group rebalances: each worker owns one of the two
clicks partitions); A gets SIGTERM (its partition moves to B, with the partition's RocksDB store); the rest
is produced. Every click must be applied exactly once, per-user order kept, and B must continue the moved
partition's windows from the state A stored.
"""

from __future__ import annotations

import threading
import time

import pytest
from conftest import click_producer, consume, last_log_event
from reliability_helpers import assigned_partitions, by_event_id, expected_windows, store_contents

from adrec_stream.broker.process import effective_bootstrap
from adrec_stream.data.events import Interaction
from adrec_stream.state.partitioned import partition_for_key
from adrec_stream.stream.events import encode_click

pytestmark = pytest.mark.broker  # ~40 s: in the default suite

N_CLICKS = 3000
N_USERS = 60
RATE_PER_S = 150.0
#: The producer pauses before this click until worker A was terminated ("produce the rest").
REST_FROM = 2000
#: From this click until the rebalance was observed, the producer sends only TRICKLE_PER_S clicks/s, so that
#: the rebalance happens while clicks flow even when worker B is slow to start (a CI rehearsal on a loaded
#: machine took longer than the 1,600 clicks / 150 per s = 11 s between B's start and REST_FROM).
TRICKLE_FROM = 600
TRICKLE_PER_S = 10.0


def _clicks() -> list[Interaction]:
    return [Interaction(f"u{i % N_USERS}", str((i * 7 + i // N_USERS) % 40 + 1), 1_700_000_000.0 + i, f"r{i}")
            for i in range(N_CLICKS)]


class _PacedProducer(threading.Thread):
    """Produces the clicks keyed by user id at ``RATE_PER_S`` (``TRICKLE_PER_S`` from click ``TRICKLE_FROM``
    until ``rebalanced`` is set), pausing before click ``REST_FROM`` until ``rest`` is set; ``sent`` counts the
    records handed over."""

    def __init__(self, bootstrap: str, topic: str, clicks: list[Interaction]) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.topic, self.clicks = bootstrap, topic, clicks
        self.sent = 0
        self.error: BaseException | None = None
        self.partitions: dict[str, int] = {}
        self.rest = threading.Event()
        self.rebalanced = threading.Event()

    def run(self) -> None:
        producer = click_producer(self.bootstrap)
        try:
            due = time.monotonic()  # when the next click is due
            futures = []
            for i, c in enumerate(self.clicks):
                if i == REST_FROM:
                    self.rest.wait(120)
                    due = time.monotonic()
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                # full rate, except a trickle from TRICKLE_FROM until the test saw the rebalance: clicks keep
                # flowing during it however long a loaded machine takes to start worker B
                trickle = TRICKLE_FROM <= i < REST_FROM and not self.rebalanced.is_set()
                due = max(due, time.monotonic() - 1.0) + 1.0 / (TRICKLE_PER_S if trickle else RATE_PER_S)
                futures.append((c.user_id, producer.send(self.topic, key=c.user_id.encode(), value=encode_click(c))))
                self.sent = i + 1
            producer.flush(60)
            for user, f in futures:
                self.partitions[user] = f.get(10).partition
        except BaseException as err:  # noqa: BLE001 - reported by the test
            self.error = err
        finally:
            producer.close(5)


def _wait(cond, timeout_s: float, what: str) -> None:
    deadline = time.time() + timeout_s
    while not cond():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_second_worker_joins_then_first_is_terminated_exactly_once(stream_config, spawn_worker):
    """Scenario 4: no crash (B alive, A exits 0), every click applied exactly once (per-user windows equal the
    in-order computation), every click has >= 1 sequence update and duplicates carry the same event_id and
    window, and B continues the moved partition's windows from A's stored state (shared state_dir)."""
    cfg = stream_config.model_copy(update={"window": 100})  # 50 clicks per user: whole sequences compared
    bootstrap = effective_bootstrap(cfg)
    topic = cfg.topics.clicks.name
    n_parts = cfg.topics.clicks.partitions
    clicks = _clicks()

    a = spawn_worker("ingest", cfg)
    a.wait_for('"partitions_assigned"', timeout_s=60)
    assert assigned_partitions(a.log())[-1] == list(range(n_parts))
    producer = _PacedProducer(bootstrap, topic, clicks)
    producer.start()
    _wait(lambda: producer.sent >= 400, 30, "400 clicks produced")

    b = spawn_worker("ingest", cfg)  # same state_dir, while clicks flow
    b.wait_for('"partitions_assigned"', timeout_s=60)
    _wait(lambda: len(assigned_partitions(a.log())) >= 2 and assigned_partitions(a.log())[-1]
          and assigned_partitions(b.log())[-1], 60, "the rebalance to split the partitions between A and B")
    sent_at_join = producer.sent
    producer.rebalanced.set()  # back to the full rate
    a_parts, b_parts = assigned_partitions(a.log())[-1], assigned_partitions(b.log())[-1]
    assert sorted(a_parts + b_parts) == list(range(n_parts))  # split, no partition owned twice
    assert sent_at_join < REST_FROM, "the rebalance happened after the first part was produced: not while clicks flowed"

    _wait(lambda: producer.sent >= REST_FROM, 60, "the first part produced")
    time.sleep(1.0)  # both workers apply what was produced so far
    t_term = time.time()
    assert a.stop(timeout_s=30) == 0  # SIGTERM: clean exit, its partitions move to B
    assert b.proc.poll() is None
    _wait(lambda: assigned_partitions(b.log())[-1] == list(range(n_parts)), 60, "B to own every partition")
    producer.rest.set()  # produce the rest
    producer.join(60)
    assert producer.error is None and producer.sent == N_CLICKS

    updates = consume(bootstrap, cfg.topics.sequence_updates.name, N_CLICKS, timeout_s=120, settle_s=2)
    assert b.proc.poll() is None  # B never crashed
    assert b.stop() == 0
    a_stopped, b_stopped = last_log_event(a.log(), "worker_stopped"), last_log_event(b.log(), "worker_stopped")
    assert a_stopped["failed"] is None and b_stopped["failed"] is None

    # the producer's partitioner is the one the state is routed by
    assert {u: partition_for_key(u.encode(), n_parts) for u in producer.partitions} == producer.partitions

    # every click applied exactly once, in per-user order
    seqs, offsets = store_contents(cfg)
    assert seqs == expected_windows(clicks, cfg.window)
    assert sum(o + 1 for (t, _), o in offsets.items() if t == topic) == N_CLICKS
    # a click whose batch reached the changelog but not the store before its partition moved is applied by neither:
    # the next owner's restore brings it (restored_skipped)
    assert sum(w["applied"] + w["restored_skipped"] for w in (a_stopped, b_stopped)) == N_CLICKS
    assert a_stopped["applied"] > 0 and b_stopped["applied"] > 0

    # >= 1 sequence update per click; duplicates (at-least-once) carry the same event_id and window
    grouped = by_event_id(updates)
    assert len(updates) >= N_CLICKS
    assert sorted(grouped) == sorted(c.event_id for c in clicks)
    history: dict[str, list[str]] = {}
    for c in clicks:
        history.setdefault(c.user_id, []).append(c.item_id)
        assert all(u["items"] == history[c.user_id][-cfg.window:] for u in grouped[c.event_id]), c.event_id

    # B holds the moved partitions' state: in a partition A owned until its SIGTERM, B's first update of a user
    # whose earlier clicks A had applied continues that user's full history
    first_by_b = 0
    index = {c.event_id: i for i, c in enumerate(clicks)}
    for p in a_parts:
        for user in sorted(u for u, q in producer.partitions.items() if q == p):
            ups = sorted((x for c in clicks if c.user_id == user for x in grouped[c.event_id]),
                         key=lambda x: index[x["event_id"]])
            before = [x for x in ups if x["ingest_ts"] < t_term]
            after = [x for x in ups if x["ingest_ts"] > t_term + 0.5]
            if before and after:
                assert len(after[0]["items"]) > len(before[-1]["items"])  # continues A's window, not from []
                first_by_b += 1
    assert first_by_b > 0, "no user of a moved partition had clicks applied by both A and B"
    print(f"rebalance: clicks sent at B's join {sent_at_join}; applied by A {a_stopped['applied']}, by B "
          f"{b_stopped['applied']} (duplicates skipped by B {b_stopped['duplicates_skipped']}); "
          f"updates {len(updates)} for {N_CLICKS} clicks; users continued by B in moved partitions {first_by_b}")
