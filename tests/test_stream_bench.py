"""The streaming benchmarks' own code on a tiny run through the real embedded broker (the figures are not checked:
benchmarks measure speed, tests check that they measure what they say)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from conftest import REPO_ROOT
from kafka import KafkaProducer

from adrec_stream.bench.stream_bench import _percentile, _raw_consume, bench_ingest
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


def test_bench_ingest_applies_every_click_and_reports_the_ceiling(tmp_path: Path):
    res = bench_ingest(str(ML100K), events=600, workers=(1,), run_root=tmp_path)
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
