"""The demo job: prequential metrics (exact values), config, data-file errors, and (slow) a short end-to-end run."""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from adrec_stream.config import load_config
from adrec_stream.errors import ConfigError, DataFileError
from adrec_stream.evaluation.prequential import latency_percentiles, next_click_pairs, prequential_metrics
from adrec_stream.stream import demo
from conftest import REPO_ROOT

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
    """The real command with a tiny training budget and 400 replayed clicks; checks the final JSON line."""
    cfg = tmp_path / "demo.yaml"
    cfg.write_text(yaml.safe_dump({"epochs": {"pretrain": 1, "align": 1, "finetune": 1}, "replay_limit": 400,
                                   "work_dir": str(tmp_path / "run"), "cache_dir": str(tmp_path / "cache")}))
    out = subprocess.run([sys.executable, "-m", "adrec_stream.cli", "demo", "--config", str(cfg)], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    summary = json.loads(lines[-1])
    assert summary["events_in"] == 400 and summary["recommendations_out"] >= 400
    assert summary["dead_lettered"] == 0
    assert 0.0 <= summary["NDCG@10"] <= summary["HR@10"] <= 1.0
    assert 0 < summary["p50_ms"] <= summary["p99_ms"]
    assert any("SMALL TRAINING BUDGET" in ln for ln in lines)
    assert not (tmp_path / "run" / "broker" / "tansu.pid").exists()  # broker stopped


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
