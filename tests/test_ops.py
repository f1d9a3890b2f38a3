"""Operations pieces without a broker: LagTrend, Readiness, the recent windows, ConsumerLag, WorkerMetrics and its
exposition, the HTTP endpoint, and OnlinePrequential against prequential_metrics."""

from __future__ import annotations

import json
import math
import random
import socket

import pytest
from ops_helpers import http_get, parse_samples

from adrec_stream.errors import ConfigError
from adrec_stream.evaluation.prequential import OnlinePrequential, prequential_metrics
from adrec_stream.ops.config import OpsConfig
from adrec_stream.ops.http import LagTrend, OpsServer, Readiness, serve_ops
from adrec_stream.ops.lag import ConsumerLag, partitions_check
from adrec_stream.ops.metrics import RecentEvents, RecentValues, WorkerMetrics


class FakeClock:
    """A settable clock (seconds)."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def exposition(metrics: WorkerMetrics) -> dict:
    from prometheus_client import generate_latest

    return parse_samples(generate_latest(metrics.registry).decode())


# ------------------------------------------------------------------------------------------ LagTrend, Readiness
def test_lag_trend_counts_a_rise_that_is_not_undone():
    clock = FakeClock(0.0)
    trend = LagTrend(clock)
    assert trend.growing_for_s() == 0.0  # nothing observed
    for t, lag in ((0, 0), (10, 0)):  # idle at 0: never growing
        clock.t = t
        trend.observe(lag)
    assert trend.growing_for_s() == 0.0
    clock.t = 11.0
    trend.observe(40)  # rose from 0, last seen at 0 at t = 10
    assert trend.growing_for_s() == 1.0
    clock.t = 30.0
    trend.observe(40)  # stays up (a stalled worker): still counting from t = 10
    assert trend.growing_for_s() == 20.0
    clock.t = 31.0
    trend.observe(25)  # any decrease starts a new run at 25
    assert trend.growing_for_s() == 0.0
    clock.t = 90.0
    trend.observe(25)  # sitting at the value it fell to is not growth
    assert trend.growing_for_s() == 0.0
    clock.t = 91.0
    trend.observe(26)
    clock.t = 95.0
    assert trend.growing_for_s() == 5.0  # from t = 90, the last reading at the base


def test_readiness_reports_every_check_and_survives_a_raising_one():
    flags = {"a": False}
    changes: list[bool] = []
    r = Readiness(on_change=changes.append)
    assert r.evaluate() == {"ready": False, "checks": {}}  # no checks: not ready
    r.add("a", lambda: (flags["a"], "a is missing"))
    r.add("b", lambda: (True, "ignored when ok"))
    assert r.evaluate() == {"ready": False, "checks": {"a": {"ok": False, "reason": "a is missing"},
                                                       "b": {"ok": True, "reason": ""}}}
    flags["a"] = True
    assert r.evaluate()["ready"] is True

    def boom() -> tuple[bool, str]:
        raise RuntimeError("disk gone")

    r.add("c", boom)
    state = r.evaluate()
    assert state["ready"] is False and state["checks"]["c"] == {"ok": False, "reason": "check failed: "
                                                                "RuntimeError('disk gone')"}
    assert changes == [False, True, False]


# ------------------------------------------------------------------------------------------- recent windows
def test_recent_events_per_second_over_the_window():
    clock = FakeClock(100.2)
    ev = RecentEvents(10.0, clock)
    ev.add(30)
    clock.t = 105.7
    ev.add(20)
    assert ev.per_second() == pytest.approx(50 / 5.5)  # first window: / the 5.5 s since creation
    clock.t = 109.2
    assert ev.per_second() == pytest.approx(50 / 9.0)
    clock.t = 110.5  # the bucket of second 100 is out (100 <= 110.5 - 10)
    assert ev.per_second() == 2.0
    clock.t = 116.0
    assert ev.per_second() == 0.0


def test_recent_values_quantiles_drop_old_values():
    clock = FakeClock(50.0)
    vals = RecentValues(5.0, clock=clock)
    assert vals.quantiles((0.5,)) is None
    vals.add_many([10.0, 20.0, 30.0])
    clock.t = 53.0
    vals.add_many([40.0, 50.0])
    assert vals.quantiles((0.5, 1.0)) == {0.5: 30.0, 1.0: 50.0}
    clock.t = 55.0  # the first three are 5 s old: out
    assert vals.quantiles((0.0, 0.5)) == {0.0: 40.0, 0.5: 45.0}
    bounded = RecentValues(60.0, max_values=2, clock=clock)
    bounded.add_many([1.0, 2.0, 3.0])
    assert bounded.quantiles((0.0,)) == {0.0: 2.0}


# ------------------------------------------------------------------------------------------------ ConsumerLag
def test_consumer_lag_finds_a_log_cut_back_under_the_consumer():
    """Next offset (handled, else committed) beyond the log end, unchanged for confirm_s = the log was cut back (empty
    restart, recreated topic); after the rewind (restart_at) the partition is in order again."""
    clock = FakeClock(0.0)
    lag = ConsumerLag("clicks", clock=clock)
    lag.assign([0, 1, 2, 3])
    lag.handled(0, 39)  # next 40, the new log ends at 12
    lag.handled(1, 11)  # next 12 == end 12: caught up, not cut back
    ends, committed = {0: 12, 1: 12, 2: 5, 3: None}, {2: 30, 3: 50}
    assert lag.past_log_end(ends, committed) == {}  # first sight: not yet
    clock.t = 4.9
    assert lag.past_log_end(ends, committed) == {}
    clock.t = 5.0
    assert lag.past_log_end(ends, committed) == {0: (40, 12), 2: (30, 5)}
    lag.restart_at(0, 0)
    clock.t = 20.0
    assert lag.past_log_end({0: 12, 1: 12}) == {}
    assert lag.refresh({0: 12, 1: 12}) == {0: 12, 1: 0}


def test_a_high_watermark_trailing_the_handled_records_is_no_cut_back():
    """After a reconnect the cached high watermark can still say 0 while records 0-15 were just handled (a fresh
    user's worker rewound on that and applied 26 clicks twice); it catches up with the next fetch."""
    clock = FakeClock(0.0)
    lag = ConsumerLag("clicks", clock=clock)
    lag.assign([0])
    lag.handled(0, 15)
    for t, end in ((0.0, 0), (0.08, 0), (1.0, 0), (1.1, 16), (6.0, 16)):
        clock.t = t
        assert lag.past_log_end({0: end}) == {}
    lag.handled(0, 20)  # progress restarts the wait as well
    for t, end in ((7.0, 3), (11.0, 3)):
        clock.t = t
        assert lag.past_log_end({0: end}) == {}
    clock.t = 12.0
    assert lag.past_log_end({0: 3}) == {0: (21, 3)}


def test_consumer_lag_per_partition_gauges_and_checks():
    clock = FakeClock(0.0)
    m = WorkerMetrics("ingest", group="g")
    lag = ConsumerLag("clicks", m, clock=clock)
    assert partitions_check(lag)() == (False, "no partitions of clicks assigned yet (joining the consumer group)")
    lag.assign([0, 1, 2])
    assert partitions_check(lag)() == (True, "")
    lag.handled(0, 9)
    lag.handled(0, 4)  # an older record never moves the next offset back
    assert lag.unknown_next() == [1, 2]
    # partition 1: next offset from the committed one (3); partition 2: log end unknown -> left out
    assert lag.refresh({0: 25, 1: 3, 2: None}, {1: 3, 2: 0}) == {0: 15, 1: 0}
    got = exposition(m)
    assert got[("adrec_consumer_lag_records", (("partition", "0"), ("topic", "clicks")))] == 15
    assert got[("adrec_consumer_lag_records", (("partition", "1"), ("topic", "clicks")))] == 0
    assert lag.total() == 15
    lag.revoke([0])
    clock.t = 1.0
    assert lag.refresh({1: 8, 2: 4}, {1: 3, 2: 0}) == {1: 5, 2: 4}
    got = exposition(m)
    assert ("adrec_consumer_lag_records", (("partition", "0"), ("topic", "clicks"))) not in got  # revoked: removed
    assert got[("adrec_consumer_lag_records", (("partition", "2"), ("topic", "clicks")))] == 4
    # growth: 15 -> 9 fell (base 9), then keeps rising for 70 s
    for t, end in ((2.0, 8), (40.0, 20), (72.0, 30)):
        clock.t = t
        lag.refresh({1: end, 2: 4}, {1: 3, 2: 0})
    assert lag.check(60.0) == (False, "consumer lag of clicks has kept growing for 70 s (now 31 records; limit "
                                      "ops.lag_growth_not_ready_s = 60 s)")
    clock.t = 73.0
    lag.refresh({1: 4, 2: 4}, {1: 3, 2: 0})  # drained
    assert lag.check(60.0) == (True, "")
    clock.t = 200.0  # no refresh for 127 s: the loop is stuck
    assert lag.check(60.0) == (True, "")  # without stale_after_s (the fine-tune worker) that is fine
    assert lag.check(60.0, stale_after_s=60.0) == (
        False, "consumer lag of clicks not refreshed for 127 s (worker loop blocked?)")


# ---------------------------------------------------------------------------------------------- WorkerMetrics
def test_score_metrics_serving_age_and_prequential_gauges():
    m = WorkerMetrics("score")
    got = exposition(m)
    assert got[("adrec_serving_model_version", ())] == -1
    assert math.isnan(got[("adrec_serving_model_age_seconds", ())])
    assert math.isnan(got[("adrec_prequential_hr_at_10", ())]) and got[("adrec_prequential_window_judged", ())] == 0
    m.set_serving(4, 1_000.0)
    m.watch_prequential(lambda: (0.25, 0.125, 8))
    m.observe_latencies([0.02, 0.04, float("nan"), -1.0])  # NaN and negative (clock skew) are left out
    got = exposition(m)
    assert got[("adrec_serving_model_version", ())] == 4
    assert got[("adrec_serving_model_published_timestamp_seconds", ())] == 1_000.0
    assert got[("adrec_serving_model_age_seconds", ())] > 1e9
    assert (got[("adrec_prequential_hr_at_10", ())], got[("adrec_prequential_ndcg_at_10", ())],
            got[("adrec_prequential_window_judged", ())]) == (0.25, 0.125, 8)
    assert got[("adrec_click_to_recommendation_seconds_count", ())] == 2
    assert got[("adrec_click_to_recommendation_last_minute_seconds", (("quantile", "0.5"),))] == pytest.approx(0.03)


# --------------------------------------------------------------------------------------------------- endpoint
def test_ops_server_serves_metrics_health_and_readiness_with_reasons():
    m = WorkerMetrics("ingest")
    ready = {"ok": False}
    r = Readiness()
    r.add("partitions", lambda: (ready["ok"], "no partitions of clicks assigned yet"))
    m.watch_readiness(lambda: r.evaluate()["ready"])
    server = OpsServer(m.registry, r, "127.0.0.1", 0)
    port = server.start()
    try:
        assert port > 0 and server.url == f"http://127.0.0.1:{port}"
        code, body = http_get(f"{server.url}/readyz")
        assert code == 503 and json.loads(body) == {
            "ready": False, "checks": {"partitions": {"ok": False, "reason": "no partitions of clicks assigned yet"}}}
        assert parse_samples(http_get(f"{server.url}/metrics")[1])[("adrec_ready", ())] == 0
        ready["ok"] = True
        assert http_get(f"{server.url}/readyz")[0] == 200
        assert parse_samples(http_get(f"{server.url}/metrics")[1])[("adrec_ready", ())] == 1
        assert http_get(f"{server.url}/healthz") == (200, "ok\n")
        assert http_get(f"{server.url}/nope")[0] == 404
        # a second server on the same port: one clear error (the CLI prints it and exits 2)
        with pytest.raises(ConfigError, match=rf"cannot serve metrics/health on 127\.0\.0\.1:{port}: .*"
                                              r"--set ops\.ports\.<role>=PORT"):
            OpsServer(m.registry, r, "127.0.0.1", port).start()
    finally:
        server.stop()
        server.stop()  # idempotent
    with socket.socket() as s:  # the port is free again (closed connections may linger in TIME_WAIT)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))


def test_serve_ops_follows_the_ops_section():
    m, r = WorkerMetrics("score"), Readiness()
    assert serve_ops(OpsConfig(enabled=False), "score", m.registry, r) is None
    server = serve_ops(OpsConfig(bind="0.0.0.0", ports={"score": 0}), "score", m.registry, r)
    try:
        assert server is not None and server.url == f"http://127.0.0.1:{server.port}"
        assert http_get(f"{server.url}/healthz")[0] == 200
    finally:
        server.stop()
    assert OpsConfig().ports.model_dump() == {"ingest": 9464, "score": 9465, "finetune": 9466}


# ------------------------------------------------------------------------------------------ OnlinePrequential
def _simulate_score_worker(seed: int = 7):
    """A click stream through a simulated score worker: batches with user de-duplication (superseded lists), window
    truncation (W = 5), a user who repeats one item, and re-delivered batches whose lists differ (the first counts).

    Returns (clicks, updates in processing order as (user, event_id, window, served or None, seq), first list per
    event id, event ids whose first record was superseded)."""
    rng = random.Random(seed)
    items = [str(i) for i in range(1, 31)]
    users = [f"u{i}" for i in range(12)]
    clicks, windows, seqs = [], {}, {}
    hist: dict[str, list[str]] = {}
    for n in range(600):
        user = rng.choice(users + ["rep"])
        item = "3" if user == "rep" else rng.choice(items)
        eid = f"e{n}"
        clicks.append((user, item, eid))
        hist.setdefault(user, []).append(item)
        windows[eid], seqs[eid] = list(hist[user][-5:]), n  # offsets rise with the stream (one partition here)
    processed, first, superseded = [], {}, set()
    i = 0
    previous_batch: list = []
    while i < len(clicks):
        batch = clicks[i:i + rng.randint(1, 8)]
        i += len(batch)
        for b in ([batch, previous_batch] if previous_batch and rng.random() < 0.2 else [batch]):
            newest = {u: eid for u, _, eid in b}
            for user, _, eid in b:
                served = rng.sample(items, 10) if newest[user] == eid else None
                processed.append((user, eid, windows[eid], served, seqs[eid]))
                if eid not in first:
                    first[eid] = served
                    if served is None:
                        superseded.add(eid)
        previous_batch = batch
    return clicks, processed, {e: s for e, s in first.items() if s is not None}, superseded


def test_online_prequential_equals_prequential_metrics_with_duplicates_and_superseded_lists():
    clicks, processed, recs, superseded = _simulate_score_worker()
    assert len(processed) > len(clicks) and superseded  # the stream really has re-deliveries and superseded lists
    online = OnlinePrequential(k=10, last_n=10_000)
    for user, eid, window, served, seq in processed:
        online.observe(user, eid, window, served, seq=seq)
    expected = prequential_metrics(clicks, recs, k=10, not_judged=superseded)
    assert expected.missing == 0 and expected.judged > 300
    hr, ndcg, n = online.window()
    assert (n, online.judged, online.hits) == (expected.judged, expected.judged, expected.hits)
    assert hr == pytest.approx(expected.hr, abs=1e-12) and ndcg == pytest.approx(expected.ndcg, abs=1e-12)
    # the window covers the last N judged clicks only
    short = OnlinePrequential(k=10, last_n=50)
    for user, eid, window, served, seq in processed:
        short.observe(user, eid, window, served, seq=seq)
    assert short.window()[2] == 50 and short.judged == expected.judged


def test_online_prequential_judges_against_the_previous_served_list():
    online = OnlinePrequential(k=3, last_n=10, max_users=1)
    assert online.window() is None
    assert online.observe("a", "a1", ["1"], ["2", "9", "4"]) is None  # first click: nothing to judge
    assert online.observe("a", "a2", ["1", "2"], ["5", "6", "3"]) == 1.0  # "2" at rank 1
    assert online.observe("a", "a2", ["1", "2"], ["7"]) is None  # re-delivery: ignored
    assert online.observe("a", "a3", ["1", "2", "3"], None) == 0.5  # "3" at rank 3; its own list superseded
    assert online.observe("a", "a4", ["1", "2", "3", "4"], ["1"]) is None  # previous list superseded: not judged
    assert online.observe("b", "b1", ["8"], ["1"]) is None  # max_users = 1: "a" forgotten
    assert online.observe("a", "a5", ["1", "2", "3", "4", "1"], ["2"]) is None
    assert online.window() == (1.0, 0.75, 2) and (online.judged, online.hits) == (2, 2)


def test_ops_server_on_an_ipv6_address_and_its_url():
    import socket
    import urllib.request

    from adrec_stream.ops.http import url_host

    assert [url_host(b) for b in ("0.0.0.0", "::", "::1", "10.0.0.5")] == ["127.0.0.1", "[::1]", "[::1]", "10.0.0.5"]
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback on this host")
    server = OpsServer(WorkerMetrics("ingest").registry, Readiness(), "::1", 0)
    server.start()
    try:
        assert server.url == f"http://[::1]:{server.port}"
        assert urllib.request.urlopen(f"{server.url}/healthz", timeout=5).read() == b"ok\n"
    finally:
        server.stop()


def test_docs_operations_lists_every_exported_metric_and_nothing_else():
    """docs/operations.md's metric table names exactly the metrics the three roles register (exposition names)."""
    import re
    from pathlib import Path

    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    doc = (Path(__file__).resolve().parent.parent / "docs" / "operations.md").read_text()
    documented = set(re.findall(r"^\| `(adrec_[a-z0-9_]+)` \|", doc, flags=re.M))
    exported: set[str] = set()
    for role in ("ingest", "score", "finetune"):
        for fam in text_string_to_metric_families(generate_latest(WorkerMetrics(role).registry).decode()):
            if fam.name.startswith("adrec_"):
                exported.add(fam.name + ("_total" if fam.type == "counter" else "_info" if fam.type == "info" else ""))
    assert documented == exported
