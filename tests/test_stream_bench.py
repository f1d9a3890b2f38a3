"""The streaming benchmarks' own code on a tiny run through the real embedded broker (the figures are not checked:
benchmarks measure speed, tests check that they measure what they say)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest
from conftest import REPO_ROOT, tiny_checkpoint
from kafka import KafkaProducer

from adrec_stream.bench.common import process_cpu_s
from adrec_stream.bench.stream_bench import _percentile, _raw_consume, bench_ingest, bench_latency, latency_hops
from adrec_stream.broker.admin import ensure_topics
from adrec_stream.broker.config import TopicConfig
from adrec_stream.cli import main
from adrec_stream.data.events import Interaction
from adrec_stream.stream.events import encode_click

ML100K = REPO_ROOT.parent / "shared" / "data" / "events" / "ml-100k" / "u.data"

pytestmark = [pytest.mark.broker, pytest.mark.skipif(not ML100K.is_file(), reason="needs ml-100k u.data")]


def test_percentile_is_nearest_rank():
    xs = [float(i) for i in range(1, 101)]
    assert _percentile(xs, 50) == 51.0 and _percentile(xs, 99) == 99.0 and _percentile(xs, 100) == 100.0
    assert _percentile([7.0], 99) == 7.0


def test_latency_hops_split_the_path_and_skip_records_without_a_time():
    recs = [{"produced_ts": 100.0, "ingest_ts": 100.010, "scoring_start_ts": 100.030, "emitted_ts": 100.035,
             "received_ts": 100.050 + i / 1000} for i in range(100)]
    recs.append({"produced_ts": 100.0, "ingest_ts": None, "scoring_start_ts": 100.5, "emitted_ts": 100.6,
                 "received_ts": 100.7})  # an update without ingest_ts (an older ingest worker)
    hops = latency_hops(recs)
    assert list(hops) == ["ingest", "to_scoring", "scoring", "delivery"]
    assert hops["ingest"]["n"] == hops["to_scoring"]["n"] == 100 and hops["scoring"]["n"] == 101
    assert hops["ingest"]["p50_ms"] == pytest.approx(10.0) and hops["to_scoring"]["p99_ms"] == pytest.approx(20.0)
    assert hops["scoring"]["p50_ms"] == pytest.approx(5.0) and hops["scoring"]["p99_ms"] == pytest.approx(5.0)
    assert hops["delivery"]["p50_ms"] == pytest.approx(65.0) and hops["delivery"]["p99_ms"] == pytest.approx(113.0)
    assert latency_hops([])["delivery"] == {"p50_ms": None, "p99_ms": None, "n": 0}


def test_bench_ingest_applies_every_click_and_reports_the_ceiling(tmp_path: Path):
    # batches of at most 100: the rate is taken over the batches after the first (a batch shares one ingest_ts)
    res = bench_ingest(str(ML100K), events=600, workers=(1,), run_root=tmp_path,
                       overrides={"batch.ingest_max_records": 100})
    run = res["runs"][0]
    assert run["workers"] == 1 and run["applied"] == 600  # every click published one sequence update
    assert run["events_per_s"] > 0 and res["raw_consume_events_per_s"] > 0
    assert res["ratio_to_raw"] == pytest.approx(res["events_per_s"] / res["raw_consume_events_per_s"], rel=0.01)
    assert res["goal_events_per_s"] == 20_000 and isinstance(res["goal_met"], bool)


def test_bench_cli_rejects_bad_rate_lists(capsys):
    assert main(["bench", "latency", "--rates", "100,abc"]) == 2
    assert "--rates: expected comma-separated numbers" in capsys.readouterr().err



def test_raw_consume_reads_every_record_before_stopping(broker):
    """The ceiling's clock stops only once all n records were read (it used to add each fetch's whole count once per
    partition in the fetch, and stopped early: the ceiling came out too high)."""
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
    ensure_topics(broker.bootstrap, [TopicConfig(name="raw-consume-check", partitions=4)])
    for i in range(400):
        producer.send("raw-consume-check", key=f"u{i}".encode(),
                      value=encode_click(Interaction(f"u{i}", "1", 1.0, f"e{i}")))
    producer.flush()
    producer.close()
    seconds, read = asyncio.run(_raw_consume(broker.bootstrap, "raw-consume-check", 4, 400, max_records=50))
    assert read == 400 and seconds > 0


def test_process_cpu_s_of_a_process_and_of_none():
    before = process_cpu_s(os.getpid())
    end = time.process_time() + 0.2
    while time.process_time() < end:
        pass
    assert before is not None and process_cpu_s(os.getpid()) - before >= 0.15
    assert process_cpu_s(2**22 + 7) is None  # above the largest pid Linux allows (2**22): no such process


def test_bench_latency_runs_each_rate_on_its_own_pipeline(tmp_path: Path, monkeypatch):
    """--fresh-broker-per-rate: two rates, two pipelines (broker, state, workers); every click answered, every
    recommendation split into the four hops, the broker's CPU measured. An untrained tiny model stands in for the
    demo's (latency figures are not checked; clicks of items outside its 40 get the fallback list)."""
    import adrec_stream.demo as demo

    ckpt = tiny_checkpoint(tmp_path / "tiny" / "model.pt")
    monkeypatch.setattr(demo, "prepare_model",
                        lambda dcfg, train, path: (ckpt, {"train_events": len(train), "items": 40, "cached": False}))
    res = bench_latency(str(ML100K), rates=(20, 40), duration_s=2.0, search_rates=(), fresh_broker_per_rate=True,
                        run_root=tmp_path / "bench")
    assert res["fresh_broker_per_rate"] is True and len(res["ready_s"]) == 2
    assert [r["rate"] for r in res["rates"]] == [20, 40] and res["search"] == []
    for r in res["rates"]:
        assert r["sent"] == r["answered"] == int(r["rate"] * 2.0)
        assert list(r["hops"]) == ["ingest", "to_scoring", "scoring", "delivery"]
        assert all(h["n"] == r["answered"] and h["p50_ms"] >= 0 for h in r["hops"].values())
        assert r["broker_cpu_s_per_s"] > 0
    assert sorted(p.name for p in (tmp_path / "bench" / "latency").iterdir()) == ["rate-0", "rate-1"]
