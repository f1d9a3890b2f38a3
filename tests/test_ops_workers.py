"""The operations endpoints of real workers: real broker (session fixture), real RocksDB, worker subprocesses whose
``/metrics`` and ``/readyz`` are read over HTTP (free ports from their ``ops_http_listening`` lines)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import orjson
import pytest
from conftest import REPO_ROOT, consume, produce, write_stream_config
from ops_helpers import by_label, http_get, key, lag_of, poll, poll_metrics, readyz, scrape, subset
from reliability_helpers import click_records, produce_to

from adrec_stream.broker.process import effective_bootstrap
from adrec_stream.data.events import Interaction
from adrec_stream.evaluation.prequential import prequential_metrics
from adrec_stream.serving.registry import ModelRegistry

pytestmark = pytest.mark.broker


def _clicks(n: int, users: int = 7) -> list[Interaction]:
    return [Interaction(f"u{i % users}", str((i * 7) % 40 + 1), 1_000_000.0 + i, f"ev-{i}") for i in range(n)]


def test_ingest_worker_counts_and_readiness(stream_config, spawn_worker):
    cfg = stream_config
    topic = cfg.topics.clicks.name
    worker = spawn_worker("ingest", cfg)
    url = worker.ops_url()
    # right after start the worker has not joined its group (a join takes seconds on the embedded broker)
    code, state = readyz(url)
    assert code == 503 and state["ready"] is False
    assert state["checks"]["partitions"] == {
        "ok": False, "reason": f"no partitions of {topic} assigned yet (joining the consumer group)"}
    assert scrape(url)[("adrec_ready", ())] == 0

    valid = _clicks(60)
    malformed = {"invalid_json": [(b"u1", b"{not json"), (b"u2", b"[1, 2")],
                 "missing_user_id": [(None, b'{"item_id": "3", "ts": 5}')],
                 "bad_item_id": [(b"u2", b'{"user_id": "u2", "item_id": "12a", "ts": 5}')],
                 "bad_ts": [(b"u3", b'{"user_id": "u3", "item_id": "4", "ts": "yesterday"}')]}
    records = click_records(valid)
    for bad in malformed.values():
        records.extend(bad)
    records += [(b"u4", None), (b"", b'{"item_id": "3", "ts": 5}')]  # tombstone, empty key: skipped
    produce(effective_bootstrap(cfg), topic, records)

    got = poll_metrics(url, lambda s: s[("adrec_records_consumed_total", ())] == len(records),
                       f"{len(records)} records consumed", worker=worker)
    counts = {key("adrec_clicks_applied_total"): len(valid), key("adrec_sequence_updates_published_total"): len(valid),
              key("adrec_duplicates_skipped_total"): 0}
    assert subset(got, counts) == counts
    assert by_label(got, "adrec_clicks_dead_lettered_total", "reason") == {r: len(b) for r, b in malformed.items()}
    assert by_label(got, "adrec_records_skipped_total", "reason") == {"tombstone": 1, "empty_key": 1}
    sizes = by_label(got, "adrec_store_size_bytes", "partition")
    assert set(sizes) == {"0", "1"} and all(v > 0 for v in sizes.values())

    poll_metrics(url, lambda s: lag_of(s, topic, 0) == 0 and lag_of(s, topic, 1) == 0, "lag 0 on both partitions",
                 worker=worker)
    code, state = readyz(url)
    assert code == 200 and state == {"ready": True, "checks": {
        "partitions": {"ok": True, "reason": ""}, "lag": {"ok": True, "reason": ""},
        "stores": {"ok": True, "reason": ""}}}
    assert scrape(url)[("adrec_ready", ())] == 1
    assert http_get(f"{url}/healthz") == (200, "ok\n")


def test_ingest_lag_shows_a_stalled_backlog_and_drains_to_zero(stream_config, spawn_worker):
    """200 clicks wait in partition 0 before the worker starts; the store write of its first batch fails 8 times
    (the reliability tests' hook; retried with a growing backoff, ~7 s), so the whole backlog is lag while it
    stalls; then everything is applied and the lag is 0."""
    cfg = stream_config.model_copy(update={
        "batch": stream_config.batch.model_copy(update={"store_write_attempts": 10})})
    topic = cfg.topics.clicks.name
    clicks = [Interaction("u1", str(i % 40 + 1), 1_000_000.0 + i, f"ev-{i}") for i in range(200)]
    produce_to(effective_bootstrap(cfg), topic, click_records(clicks), partition=0)
    worker = spawn_worker("ingest", cfg, "--inject-write-failure", "0:8")
    url = worker.ops_url()
    stalled = poll_metrics(url, lambda s: (lag_of(s, topic, 0) or 0) > 0, "lag on partition 0", worker=worker)
    assert lag_of(stalled, topic, 0) == len(clicks)  # log end 200, nothing processed (no commit yet: from 0)
    assert stalled[("adrec_clicks_applied_total", ())] == 0
    done = poll_metrics(url, lambda s: s[("adrec_clicks_applied_total", ())] == len(clicks) and lag_of(s, topic, 0) == 0,
                        "the backlog applied and the lag back at 0", worker=worker)
    assert lag_of(done, topic, 1) == 0
    assert done[("adrec_records_consumed_total", ())] == len(clicks)


def _updates(users: int, per_user: int) -> tuple[list[tuple[str, str, str]], list[tuple[bytes, bytes]]]:
    """Sequence updates as the ingest worker publishes them: per user ``per_user`` clicks, each update holding the
    window up to its click; returns (clicks as (user, item, event_id) in order, records)."""
    clicks, records, hist = [], [], {}
    for n in range(users * per_user):
        user, item = f"u{n % users}", str((n * 7) % 40 + 1)
        hist.setdefault(user, []).append(item)
        clicks.append((user, item, f"ev-{n}"))
        value = orjson.dumps({"user_id": user, "items": hist[user], "event_id": f"ev-{n}", "event_ts": 1.0 + n,
                              "produced_ts": time.time(), "ingest_ts": time.time(),
                              "source": {"partition": 0, "offset": n}})
        records.append((user.encode(), value))
    return clicks, records


def test_score_worker_follows_the_registry_and_counts_its_recommendations(stream_config, tiny_registry, spawn_worker,
                                                                          tmp_path):
    source = ModelRegistry(stream_config.registry_dir)
    cfg = stream_config.model_copy(update={"registry_dir": str(tmp_path / "serving")})
    registry = ModelRegistry(cfg.registry_dir)
    worker = spawn_worker("score", cfg, "--set", "scoring.deduplicate_users=false")
    url = worker.ops_url()
    state = poll(lambda: (st := readyz(url))[1]["checks"].get("model", {}).get("reason", "").startswith("no model")
                 and st, "the model check naming the empty registry", worker=worker)
    assert state[0] == 503
    assert state[1]["checks"]["model"] == {"ok": False, "reason": f"no model version in the registry at {registry.root}"}
    assert scrape(url)[("adrec_serving_model_version", ())] == -1

    registry.publish(source.path(1), meta=source.info(1)["meta"])
    got = poll_metrics(url, lambda s: s[("adrec_serving_model_version", ())] == 1, "version 1 serving (loaded while "
                       "idle)", worker=worker)
    assert got[("adrec_serving_model_published_timestamp_seconds", ())] == registry.published_ts(1)
    assert poll(lambda: readyz(url)[0] == 200, "/readyz 200", worker=worker)

    users, per_user = 4, 6
    clicks, records = _updates(users, per_user)
    produce(effective_bootstrap(cfg), cfg.topics.sequence_updates.name, records)
    got = poll_metrics(url, lambda s: s[("adrec_recommendations_total", ())] == len(records),
                       f"{len(records)} recommendations", worker=worker)
    recs: dict[str, list[str]] = {}
    for r in consume(effective_bootstrap(cfg), cfg.topics.recommendations.name, len(records)):
        v = orjson.loads(r.value)
        recs.setdefault(v["event_id"], v["items"])
    expected = prequential_metrics(clicks, recs, k=10)
    assert expected.judged == users * (per_user - 1) and expected.missing == 0
    counts = {key("adrec_records_consumed_total"): len(records),
              key("adrec_users_scored_total"): len(records),  # scoring.deduplicate_users=false
              key("adrec_recommendation_fallbacks_total"): 0,
              key("adrec_click_to_recommendation_seconds_count"): len(records),
              key("adrec_prequential_judged_total"): expected.judged, key("adrec_prequential_hits_at_10_total"):
              expected.hits, key("adrec_prequential_window_judged"): expected.judged}
    assert subset(got, counts) == counts
    assert got[key("adrec_prequential_hr_at_10")] == pytest.approx(expected.hr, abs=1e-9)
    assert got[key("adrec_prequential_ndcg_at_10")] == pytest.approx(expected.ndcg, abs=1e-9)

    registry.publish(source.path(1), meta=source.info(1)["meta"])  # version 2
    got = poll_metrics(url, lambda s: s[("adrec_serving_model_version", ())] == 2, "version 2 serving", worker=worker)
    assert got[("adrec_model_reloads_total", ())] == 2 and got[("adrec_model_refusals_total", ())] == 0
    assert got[("adrec_serving_model_published_timestamp_seconds", ())] == registry.published_ts(2)
    topic = cfg.topics.sequence_updates.name
    poll_metrics(url, lambda s: lag_of(s, topic, 0) == 0 and lag_of(s, topic, 1) == 0, "lag 0", worker=worker)


def test_a_worker_whose_ops_port_is_taken_exits_2_with_one_line(stream_config, tmp_path):
    cfg_path = write_stream_config(stream_config, tmp_path / "stream.yaml")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        res = subprocess.run([sys.executable, "-m", "adrec_stream.cli", "worker", "ingest", "--config", str(cfg_path),
                              "--set", f"ops.ports.ingest={port}"],
                             capture_output=True, text=True, timeout=90, cwd=REPO_ROOT)
    assert res.returncode == 2, res.stderr[-2000:]
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("adrec-stream worker: error:")]
    assert len(errors) == 1 and f"cannot serve metrics/health on 127.0.0.1:{port}: Address already in use" in errors[0]
    assert "Traceback" not in res.stderr
