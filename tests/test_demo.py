"""The demo job: prequential metrics (exact values), config, data-file errors, and (slow) a short end-to-end run."""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from conftest import REPO_ROOT

from adrec_stream import demo
from adrec_stream.config import load_config
from adrec_stream.errors import ConfigError, DataFileError
from adrec_stream.evaluation.prequential import (
    latency_percentiles,
    next_click_pairs,
    prequential_by_group,
    prequential_metrics,
)
from adrec_stream.serving.registry import ModelRegistry

ML100K = REPO_ROOT.parent / "shared" / "data" / "events" / "ml-100k" / "u.data"


def test_next_click_pairs_follow_each_user():
    clicks = [("a", "1", "e1"), ("b", "5", "e2"), ("a", "2", "e3"), ("a", "3", "e4"), ("b", "6", "e5"), ("c", "9", "e6")]
    assert next_click_pairs(clicks) == [("e1", "2"), ("e3", "3"), ("e2", "6")]  # in order of the next click


def test_prequential_hr_ndcg_exact_values():
    clicks = [("a", "1", "e1"), ("a", "2", "e2"), ("a", "3", "e3"), ("b", "7", "e4"), ("b", "8", "e5"),
              ("b", "9", "e6")]
    recs = {
        "e1": ["2", "9", "4"],        # next item "2" at rank 1 -> 1.0
        "e2": ["5", "6", "3"],        # next "3" at rank 3 -> 1/log2(4) = 0.5
        "e4": ["1", "2", "3"],        # next "8" absent -> 0
        # "e5" missing: a miss; "e3"/"e6" are last clicks, not judged
        "e6": ["1"],
    }
    res = prequential_metrics(clicks, recs, k=3)
    assert res.judged == 4 and res.hits == 2 and res.missing == 1
    assert res.hr == pytest.approx(0.5)
    assert res.ndcg == pytest.approx((1.0 + 0.5) / 4)
    assert list(res.ranks) == [1.0, 3.0, math.inf, math.inf]
    # cut-off: with k = 2 the rank-3 hit no longer counts
    res2 = prequential_metrics(clicks, recs, k=2)
    assert res2.hits == 1 and res2.ndcg == pytest.approx(0.25)
    assert res2.as_dict()["HR@2"] == pytest.approx(0.25)


def test_prequential_empty_and_bad_k():
    assert prequential_metrics([], {}, k=10).hr == 0.0
    with pytest.raises(ValueError, match="k must be"):
        prequential_metrics([], {}, k=0)


def test_latency_percentiles_in_ms():
    lat = latency_percentiles([0.010, 0.020, 0.030, None, float("nan")], qs=(50, 100))
    assert lat == {"p50_ms": pytest.approx(20.0), "p100_ms": pytest.approx(30.0)}
    assert np.isnan(latency_percentiles([])["p50_ms"])


def test_shipped_demo_config_is_valid():
    cfg = load_config(demo.DEFAULT_DEMO_CONFIG, demo.DemoConfig)
    assert cfg.train_fraction == 0.8 and cfg.top_k == 10
    assert demo._repo_path(cfg.data) == REPO_ROOT / "../shared/data/events/ml-100k/u.data"


def test_missing_data_file_is_named(tmp_path: Path):
    missing = tmp_path / "nowhere" / "u.data"
    args = argparse.Namespace(data=str(missing), config=str(demo.DEFAULT_DEMO_CONFIG), limit=None, rate=None)
    with pytest.raises(DataFileError, match=r"demo data file not found: .*nowhere/u\.data .*--data PATH"):
        demo.run(args)


@pytest.mark.slow
@pytest.mark.broker
@pytest.mark.skipif(not ML100K.is_file(), reason=f"{ML100K} not present")
def test_demo_end_to_end_short(tmp_path: Path):
    """The real command with a tiny model and training budget (~40 s of training on a loaded machine), 600
    replayed clicks at 30/s (20 s) and a fine-tune worker whose rounds fit in that time; checks the final JSON
    line against the registry and the workers' logs. About 2 min on 2 loaded cores."""
    stream = yaml.safe_load((REPO_ROOT / "configs" / "stream.yaml").read_text())
    stream["registry_poll_s"] = 1  # the score worker takes a new version within the short replay
    (tmp_path / "stream.yaml").write_text(yaml.safe_dump(stream))
    settings = {"interval_s": 5, "min_new_events": 150, "min_round_events": 40, "holdout_min_events": 10,
                "max_seconds": 4, "max_steps": 20, "batch_size": 64, "tolerance": 1.0, "keep_versions": 50,
                "device": "cpu", "threads": 1}
    cfg = tmp_path / "demo.yaml"
    small = {"model.hidden_size": 32, "model.num_heads": 2, "model.num_blocks": 1, "model.diffusion_steps": 8}
    cfg.write_text(yaml.safe_dump({"epochs": {"pretrain": 1, "align": 1, "finetune": 1}, "experiment_overrides": small,
                                   "replay_limit": 600, "replay_rate_per_s": 30,
                                   "stream_config": str(tmp_path / "stream.yaml"),
                                   "finetune": {"enabled": True, "settings": settings},
                                   "work_dir": str(tmp_path / "run"), "cache_dir": str(tmp_path / "cache")}))
    out = subprocess.run([sys.executable, "-m", "adrec_stream.cli", "demo", "--config", str(cfg)], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    summary = json.loads(lines[-1])
    assert summary["events_in"] == 600 and summary["recommendations_out"] >= 600
    assert summary["dead_lettered"] == 0 and summary["missing"] == 0  # superseded pairs are counted apart
    assert 0 <= summary["superseded"] < summary["judged"]
    assert 0.0 <= summary["NDCG@10"] <= summary["HR@10"] <= 1.0
    assert 0 < summary["p50_ms"] <= summary["p99_ms"]
    assert any("SMALL TRAINING BUDGET" in ln for ln in lines)
    assert any(ln.startswith("fine-tune worker: rounds every 5 s or 150 clicks") for ln in lines)
    assert not (tmp_path / "run" / "broker" / "tansu.pid").exists()  # broker stopped
    # the workers' operations endpoints: printed while they ran, and in the summary
    assert set(summary["ops"]) == {"ingest", "score", "finetune", "dashboard"}
    dashboard = summary["ops"].pop("dashboard")
    assert dashboard.startswith("http://127.0.0.1:") and f"status page: {dashboard} (live while the demo runs)" in \
        "\n".join(lines)
    for role, url in summary["ops"].items():  # (a restarted worker would serve on a new port: not compared)
        assert url.startswith("http://127.0.0.1:")
        assert any(ln.startswith("metrics: http://127.0.0.1:") and ln.endswith("/healthz)") and f"({role} worker;" in ln
                   for ln in lines)

    # fine-tune rounds: as many as the worker's log says; every published one is a registry version
    logs = tmp_path / "run" / "logs"
    rounds = demo.finetune_rounds((logs / "finetune.log").read_text())
    published = [r for r in rounds if r["status"] == "published"]
    rejected = [r for r in rounds if r["status"] == "rejected"]
    assert summary["finetune_rounds"] == len(published) + len(rejected) >= 1, rounds
    assert summary["rounds_rejected"] == len(rejected)
    versions = ModelRegistry(tmp_path / "run" / "registry").versions()
    assert versions == list(range(1, len(versions) + 1))
    assert summary["model_versions_published"] == len(versions) - 1 == len(published)
    assert sorted(r["version"] for r in published) == versions[1:]
    if published:
        assert summary["staleness_s"] > 0
        assert all(f"  v{r['version']} published: window" in out.stdout for r in published)
    else:
        assert summary["staleness_s"] is None

    # metrics by model version: versions the score worker served, pairs adding up to the overall count
    by_version = summary["by_version"]
    loaded = {str(demo_log["version"]) for demo_log in _log_events((logs / "score.log").read_text(),
                                                                 "model_version_loaded")}
    assert "1" in by_version and set(by_version) <= loaded <= {str(v) for v in versions}
    assert sum(v["judged"] for v in by_version.values()) == summary["judged"] > 0
    for v, m in by_version.items():
        assert 0.0 <= m["NDCG@10"] <= m["HR@10"] <= 1.0
        assert f"  v{v}: {m['judged']:,} pairs" in out.stdout


def _log_events(log_text: str, event: str) -> list[dict]:
    return [json.loads(ln[ln.index("{"):]) for ln in log_text.splitlines() if f'"event": "{event}"' in ln]


def test_prequential_by_group_counts_each_pair_once():
    clicks = [("a", "1", "e1"), ("a", "2", "e2"), ("a", "3", "e3"), ("b", "7", "e4"), ("b", "8", "e5"),
              ("b", "9", "e6"), ("c", "4", "e7"), ("c", "5", "e8")]
    recs = {"e1": ["2", "9"], "e2": ["5", "3"], "e4": ["8"], "e5": ["1"], "e7": ["5"]}  # "e8" last click; no "e3"
    versions = {"e1": 1, "e2": 2, "e4": 2, "e5": 2, "e7": None}
    by = prequential_by_group(clicks, recs, versions, k=2)
    assert list(by) == [1, 2, None]
    assert (by[1].judged, by[1].hits, by[1].missing, by[1].hr, by[1].ndcg) == (1, 1, 0, 1.0, 1.0)
    # v2: e2 -> "3" at rank 2, e4 -> "8" at rank 1, e5 -> "9" absent; v1's pair is not a miss here
    assert (by[2].judged, by[2].hits, by[2].missing) == (3, 2, 0)
    assert by[2].ndcg == pytest.approx((1 / math.log2(3) + 1.0) / 3)
    assert list(by[2].ranks) == [2.0, 1.0, math.inf]
    # a pair without recommendation (there is none here) would be in no group: groups add up to judged - missing
    overall = prequential_metrics(clicks, recs, k=2)
    assert sum(r.judged for r in by.values()) == overall.judged - overall.missing
    assert sum(r.hits for r in by.values()) == overall.hits
    del recs["e5"]
    by = prequential_by_group(clicks, recs, versions, k=2)
    overall = prequential_metrics(clicks, recs, k=2)
    assert by[2].judged == 2 and overall.missing == 1
    assert sum(r.judged for r in by.values()) == overall.judged - overall.missing
    assert prequential_by_group([], {}, {}) == {}
    with pytest.raises(ValueError, match="k must be"):
        prequential_by_group([], {}, {}, k=0)


def test_finetune_log_summary():
    log = "\n".join([
        "not json",
        json.dumps({"event": "finetune_started", "pid": 1}),
        json.dumps({"event": "finetune_round", "status": "skipped", "reason": "too_few_fresh_events"}),
        "\x1b[0m" + json.dumps({"event": "finetune_round", "status": "published", "version": 2,
                                "staleness_s_max": 30.0}),
        json.dumps({"event": "finetune_round", "status": "rejected", "reason": "heldout"}),
        json.dumps({"event": "finetune_round", "status": "published", "version": 3, "staleness_s_max": 50.0,
                    "heldout_NDCG@10_serving": 0.0312, "heldout_NDCG@10_candidate": 0.0292}),
        json.dumps({"event": "finetune_round", "status": "published", "version": 4, "staleness_s_max": 10.0}),
        json.dumps({"event": "finetune_round", "status": "skipped", "reason": "stopped"}),
        '{"event": "finetune_round", "status": "publi',  # a line cut by SIGKILL
    ])
    rounds = demo.finetune_rounds(log)
    assert [r["status"] for r in rounds] == ["skipped", "published", "rejected", "published", "published", "skipped"]
    s = demo.finetune_summary(rounds)
    assert s["finetune_rounds"] == 4 and s["published"] == 3 and s["rounds_rejected"] == 1
    assert s["rejected_by_reason"] == {"heldout": 1}
    assert s["skipped"] == 2 and s["skipped_by_reason"] == {"too_few_fresh_events": 1, "stopped": 1}
    assert s["staleness_s"] == 30.0  # median of 30, 50, 10
    assert demo.finetune_summary([])["staleness_s"] is None
    worker = SimpleNamespace(proc=SimpleNamespace(returncode=0), restarts=0)
    report = demo._finetune_report(s, rounds, 1, [2, 3, 4], 3, worker)
    assert report[0].startswith("fine-tune: 4 rounds trained (3 published, 1 rejected (held-out NDCG@10 below the "
                                "tolerance: 1)), 2 not trained (cut short by the shutdown: 1, too few fresh clicks: 1); "
                                "registry v1 -> v4")
    assert [line.split(":")[0] for line in report[1:]] == ["  v2 published", "  rejected (held-out NDCG@10 below the "
                                                           "tolerance)", "  v3 published (lower, within the tolerance)",
                                                           "  v4 published"]


def test_shipped_demo_config_runs_the_finetune_worker():
    cfg = load_config(demo.DEFAULT_DEMO_CONFIG, demo.DemoConfig)
    assert cfg.finetune.enabled
    scfg, _ = demo._derived_stream_config(cfg, Path("/nonexistent/run"), source="demo.yaml")
    f = scfg.finetune
    assert (f.interval_s, f.min_new_events, f.threads, f.device, f.max_seconds) == (40, 4000, 1, "cpu", 30)
    shipped = yaml.safe_load((REPO_ROOT / "configs" / "stream.yaml").read_text())["finetune"]
    assert f.min_round_events == shipped["min_round_events"] and f.tolerance == shipped["tolerance"]
    # a demo.yaml without a finetune block gets the same settings as the shipped one
    assert demo.DemoConfig().finetune.settings == cfg.finetune.settings


@pytest.mark.skipif(not ML100K.is_file(), reason=f"{ML100K} not present")
@pytest.mark.parametrize(("settings", "message"), [
    ({"intervl_s": 40}, r"demo\.yaml: finetune\.settings\.intervl_s: unknown key"),
    ({"interval_s": "soon"}, r"demo\.yaml: finetune\.settings\.interval_s: Input should be a valid number"),
    ({"min_round_events": 5}, r"demo\.yaml: finetune\.settings: min_round_events \(5\) must exceed"),
])
def test_bad_finetune_settings_name_the_demo_config(tmp_path: Path, settings: dict, message: str):
    cfg = tmp_path / "demo.yaml"
    cfg.write_text(yaml.safe_dump({"work_dir": str(tmp_path / "run"), "cache_dir": str(tmp_path / "cache"),
                                   "finetune": {"settings": settings}}))
    args = argparse.Namespace(data=None, config=str(cfg), limit=None, rate=None)
    with pytest.raises(ConfigError, match=message):
        demo.run(args)
    assert not (tmp_path / "cache").exists()  # refused before any training


def test_version_lines_account_for_every_published_version():
    """A version published after the last scored click made no recommendation: it still gets a line (a fresh
    user saw "registry v1 -> v4" above a per-version list that stopped at v3)."""
    stats = SimpleNamespace
    by_version = {None: stats(judged=3, hr=0.0, ndcg=0.0), 3: stats(judged=10, hr=0.2, ndcg=0.1),
                  1: stats(judged=20, hr=0.15, ndcg=0.05)}
    none = "0 pairs (no recommendation was made with it: published after the last scored click, or replaced before one)"
    lines = demo.version_lines(by_version, [2, 3, 4], 10)
    assert lines == ["  v1: 20 pairs, HR@10 0.1500, NDCG@10 0.0500", f"  v2: {none}",
                     "  v3: 10 pairs, HR@10 0.2000, NDCG@10 0.1000", f"  v4: {none}",
                     "  no version: 3 pairs, HR@10 0.0000, NDCG@10 0.0000"]
    assert demo.version_lines({}, [], 10) == []


def test_popularity_baseline_excludes_seen_items():
    from adrec_stream.evaluation.prequential import popularity_recommendations

    train = ["1", "2", "1", "3", "2", "1", "4"]  # counts: 1:3, 2:2, 3:1, 4:1
    clicks = [("a", "1", "e1"), ("b", "9", "e2"), ("a", "3", "e3")]
    recs = popularity_recommendations(train, clicks, k=2, history={"b": ["2"]})
    assert recs == {"e1": ["2", "3"], "e2": ["1", "3"], "e3": ["2", "4"]}
    assert popularity_recommendations(train, clicks, k=2, exclude_seen=False)["e3"] == ["1", "2"]


@pytest.mark.skipif(not ML100K.is_file(), reason=f"{ML100K} not present")
def test_foreign_work_dir_is_not_wiped(tmp_path: Path):
    work = tmp_path / "mine"
    work.mkdir()
    (work / "precious.txt").write_text("keep me")
    cfg = tmp_path / "demo.yaml"
    cfg.write_text(yaml.safe_dump({"work_dir": str(work)}))
    args = argparse.Namespace(data=None, config=str(cfg), limit=None, rate=None)
    with pytest.raises(ConfigError, match="was not made by the demo"):
        demo.run(args)
    assert (work / "precious.txt").read_text() == "keep me"


def test_superseded_pairs_are_left_out_not_counted_missing():
    clicks = [("a", "1", "e1"), ("a", "2", "e2"), ("a", "3", "e3"), ("b", "9", "e4"), ("b", "8", "e5")]
    recs = {"e2": ["3", "7"], "e4": ["5"]}  # e1's list was superseded by e2's; e4 misses
    r = prequential_metrics(clicks, recs, k=2, not_judged={"e1"})
    assert (r.judged, r.hits, r.missing) == (2, 1, 0) and r.hr == 0.5
    assert prequential_metrics(clicks, recs, k=2).missing == 1  # without it the pair counts as missing
