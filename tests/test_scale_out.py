"""Scoring on many hosts (issue 13): two score workers in one consumer group share the sequence updates (every click
answered exactly once between them) and both switch to a model version announced on the model-versions topic, with
registry polling off, loading it from a registry at a file:// URL (the object-store protocol: manifest last,
checksum-verified downloads into each worker's own cache)."""

from __future__ import annotations

import json
import time

import orjson
import pytest
from conftest import consume, last_log_event, produce, tiny_checkpoint, write_stream_config
from ops_helpers import poll_metrics

from adrec_stream.broker.process import effective_bootstrap
from adrec_stream.cli import main
from adrec_stream.data.events import Interaction
from adrec_stream.serving.registry import FsspecRegistry, open_registry
from adrec_stream.stream.events import encode_click

pytestmark = pytest.mark.broker


def _clicks(n: int, start: int) -> list[Interaction]:
    # 30 users over both partitions: each worker owns one partition, so both answer some clicks
    return [Interaction(f"u{i % 30}", str((i * 7) % 40 + 1), 1_000_000.0 + i, f"ev-{i}") for i in range(start, start + n)]


def _send(bootstrap, topic, clicks):
    produce(bootstrap, topic, [(c.user_id.encode(), encode_click(c)) for c in clicks])


def _assigned_one_each(workers, topic) -> bool:
    parts = []
    for w in workers:
        try:
            ev = last_log_event(w.log(), "partitions_assigned")
        except AssertionError:
            return False
        parts.append(sorted(p for p in ev["partitions"] if p.startswith(f"{topic}:")))
    return all(len(p) == 1 for p in parts) and parts[0] != parts[1]


def test_two_score_workers_share_the_group_and_follow_announcements(stream_config, spawn_worker, tmp_path):
    url = f"file://{tmp_path}/shared-registry"
    cfg = stream_config.model_copy(update={
        "registry_dir": url, "registry_poll_s": 3600.0,
        "model_versions": stream_config.model_versions.model_copy(update={"registry_poll": False})})
    registry = open_registry(url, cache_dir=tmp_path / "test-cache")
    assert isinstance(registry, FsspecRegistry)
    assert registry.publish(tiny_checkpoint(tmp_path / "v1" / "model.pt", seed=0)) == 1
    bootstrap = effective_bootstrap(cfg)
    updates = cfg.topics.sequence_updates.name

    ingest = spawn_worker("ingest", cfg)
    # two "hosts": the same config, each with its own download cache and operations port
    scorers = [spawn_worker("score", cfg, "--set", f"registry_cache_dir={tmp_path}/cache-{i}") for i in range(2)]
    for s in scorers:
        s.wait_for('"version_follower_started"')
        assert last_log_event(s.log(), "model_version_loaded")["version"] == 1
    deadline = time.time() + 90
    while not _assigned_one_each(scorers, updates):
        assert time.time() < deadline, "the two score workers never held one sequence-updates partition each"
        time.sleep(0.2)
    ingest.wait_for('"partitions_assigned"')
    for i, s in enumerate(scorers):  # each worker loaded v1 from its own verified download
        assert last_log_event(s.log(), "model_version_loaded")["path"].startswith(f"{tmp_path}/cache-{i}/")

    first = _clicks(120, 0)
    _send(bootstrap, cfg.topics.clicks.name, first)
    recs = [orjson.loads(r.value) for r in consume(bootstrap, cfg.topics.recommendations.name, len(first))]
    ids = [r["event_id"] for r in recs]
    assert sorted(ids) == sorted(c.event_id for c in first) and len(set(ids)) == len(ids)
    assert {r["model_version"] for r in recs} == {1}
    # both workers answered some of them, and together exactly every click
    urls = [s.ops_url() for s in scorers]
    per_worker = [poll_metrics(u, lambda m: m.get(("adrec_recommendations_total", ()), 0) > 0,
                               "recommendations from both score workers", worker=s)[("adrec_recommendations_total", ())]
                  for u, s in zip(urls, scorers)]
    assert all(n > 0 for n in per_worker) and sum(per_worker) == len(first)

    # v2 through the CLI, which publishes to the config's registry and announces it; polling is off, so the
    # announcement is what moves both workers
    cfg_path = write_stream_config(cfg, tmp_path / "cli.yaml")
    assert main(["model", "publish", str(tiny_checkpoint(tmp_path / "v2" / "model.pt", seed=1)),
                 "--config", str(cfg_path)]) == 0
    announced = [json.loads(r.value) for r in consume(bootstrap, cfg.topics.model_versions.name, 1, settle_s=0.2)]
    assert [(a["version"], a["registry"], a["sha256"], a["rollback"]) for a in announced] == [
        (2, url, registry.manifest(2)["sha256"], False)]
    for i, s in enumerate(scorers):
        s.wait_for('"via": "announcement"', timeout_s=30)
        loaded = last_log_event(s.log(), "model_version_loaded")
        assert (loaded["version"], loaded["previous_version"], loaded["via"]) == (2, 1, "announcement")
        assert loaded["path"].startswith(f"{tmp_path}/cache-{i}/") and "/v000002-" in loaded["path"]
        assert s.log().count('"model_version_loaded"') == 2  # v1 at start, v2 on the announcement: nothing else

    second = _clicks(80, 120)
    _send(bootstrap, cfg.topics.clicks.name, second)
    recs = [orjson.loads(r.value) for r in consume(bootstrap, cfg.topics.recommendations.name, len(first) + len(second))]
    ids = [r["event_id"] for r in recs]
    assert sorted(ids) == sorted(c.event_id for c in first + second) and len(set(ids)) == len(ids)
    assert {r["model_version"] for r in recs if r["event_id"] in {c.event_id for c in second}} == {2}
    after = [poll_metrics(u, lambda m: m[("adrec_serving_model_version", ())] == 2, "v2 serving", worker=s)
             for u, s in zip(urls, scorers)]
    counts = [m[("adrec_recommendations_total", ())] for m in after]
    assert sum(counts) == len(first) + len(second) and all(c > p for c, p in zip(counts, per_worker))

    # a stale announcement of v1 (not a rollback) never moves a worker back
    produce(bootstrap, cfg.topics.model_versions.name, [(url.encode(), orjson.dumps(
        {"version": 1, "registry": url, "sha256": registry.manifest(1)["sha256"], "rollback": False}))])
    for s in scorers:
        s.wait_for('"older_model_version_ignored"', timeout_s=30)
        assert last_log_event(s.log(), "older_model_version_ignored")["serving_version"] == 2
