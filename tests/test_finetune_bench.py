"""Tests of ``adrec-stream bench finetune`` (one fine-tune worker round on logged clicks).

The real 10,000-event benchmark is recorded in docs/benchmarks.md; here a 600-event window of the same log with
5 training steps keeps the round to a few seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adrec_stream.bench.finetune_bench import bench_finetune
from adrec_stream.cli import main
from adrec_stream.errors import ConfigError
from adrec_stream.incremental.round import holdout_size
from adrec_stream.stream.config import load_stream_config

U_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "events" / "ml-100k" / "u.data"
needs_u_data = pytest.mark.skipif(not U_DATA.is_file(), reason="needs ../shared/data/events/ml-100k/u.data")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@needs_u_data
def test_one_round_on_a_small_ml100k_window():
    overrides = {"finetune.max_steps": 5, "finetune.batch_size": 8,
                 "finetune.max_window_events": 100}  # below the window: raised to 600
    res = bench_finetune(U_DATA, window_events=600, threads=1, seed=7, device="cpu", overrides=overrides)
    cfg = load_stream_config(None, {**overrides, "finetune.max_window_events": 600}).finetune
    assert res["finetune_config"] == cfg.model_dump()
    assert res["finetune_config"]["max_window_events"] == 600
    # the window: 600 clicks right after the first 80% of the 100,000 events
    assert res["events_total"] == 100_000 and res["window_first_event_index"] == 80_000
    assert res["window_events"] == 600 == res["train_events"] + res["holdout_events"]
    assert res["holdout_events"] == holdout_size(600, cfg) == 60
    assert res["train_events"] == res["record"]["window_events"] == 540
    assert res["replay_users"] == 0  # as in the demo's first round: nothing is covered, so no replay pool
    assert res["steps"] == 5 and res["stop_reason"] == "max_steps"
    assert res["status"] in {"published", "rejected"}
    assert 0 < res["train_s"] < res["round_s"] <= res["round_s_total"]
    if res["status"] == "published":
        # staleness is taken when the publish ends, inside run_once: it covers the whole round (its clicks were
        # ingested before it started) but not what run_once does after it (the log line), which
        # round_s_total includes; after other tests had configured logging that tail was 0.02-0.44 s
        assert res["publish_s"] > 0 and res["staleness_s"] >= res["round_s"] + res["publish_s"] - 0.01
    # every step of run_once was seen once (held-out evaluation: serving model and candidate)
    calls = {k: v["calls"] for k, v in res["breakdown"].items()}
    assert calls == {"load_checkpoint": 1, "build_window": 1, "grow_vocabulary": 1, "probe_loss": 2,
                     "train_window": 1, "heldout_metrics": 2, "_publish": int(res["status"] == "published")}
    for key in ("heldout_ndcg10_serving", "heldout_ndcg10_candidate"):
        assert 0.0 <= res[key] <= 1.0
    assert res["threads"] == 1 and res["device"] == "cpu" and res["torch_version"]
    assert {"cpu_count", "load_avg_1m"} <= set(res["machine"])
    assert res["goal"] == {"round_s_max": 60.0, "window_events_min": 10_000, "met": False}  # 600 < 10,000
    assert res["model"]["source"].startswith("fresh") and res["model"]["max_len"] == 50
    json.dumps(res)  # JSON-ready


@needs_u_data
def test_window_larger_than_the_log_after_the_cut_is_refused():
    with pytest.raises(ConfigError, match="20,000 events after the first 80%"):
        bench_finetune(U_DATA, window_events=20_001, threads=1)


def test_cli_missing_data_file_exits_2(capsys):
    assert main(["bench", "finetune", "--data", "/nonexistent/u.data", "--json"]) == 2
    err = capsys.readouterr().err
    assert "/nonexistent/u.data" in err and "not found" in err
