"""The status page in a real headless browser (Debian's Chromium) during a short replay of real clicks through real
ingest and score workers: the figures the page shows equal ``adrec-stream status --json`` taken at the same time."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from browser import chromium_or_skip, dump_dom, fields, screenshot
from conftest import REPO_ROOT, write_stream_config
from ops_helpers import poll

from adrec_stream.ops.dashboard import Dashboard

pytestmark = pytest.mark.broker

ML100K = REPO_ROOT.parent / "shared" / "data" / "events" / "ml-100k" / "u.data"
N_CLICKS = 600

#: page fields whose value cannot change while the pipeline is idle (compared for equality)
STABLE = ("serving_model.version", "clicks_applied", "recommendations", "fallbacks", "dead_lettered.total",
          "dead_letter_topic_records", "lag_clicks", "lag_sequence_updates", "prequential.NDCG@10",
          "prequential.HR@10", "prequential.judged", "latency_ms.p50", "latency_ms.p95", "latency_ms.p99",
          "finetune.rounds_published", "finetune.rounds_rejected")


def _get(st: dict, path: str):
    cur = st
    for part in path.split("."):
        if cur is None:
            return None
        cur = cur.get(part)
    return cur


def page_text(path: str, v) -> str:
    """What the page's ``fmt`` (static/dashboard.html) shows for value ``v`` of field ``path``."""
    if v is None:
        return "-"
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, int):
        return f"{v:,}"
    if path.startswith(("prequential.", "finetune.heldout")):
        return f"{v:.4f}"
    return f"{v:.1f}"


def _status(cfg_path: Path, endpoints: list[str]) -> dict:
    args = [sys.executable, "-m", "adrec_stream.cli", "status", "--json", "--config", str(cfg_path)]
    for e in endpoints:
        args += ["--endpoint", e]
    out = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=str(REPO_ROOT))
    assert out.returncode in (0, 1), out.stderr[-2000:]
    return json.loads(out.stdout)


def test_status_page_in_a_browser_shows_what_status_json_says(stream_config, tiny_registry, spawn_worker, tmp_path):
    chromium = chromium_or_skip()
    if not ML100K.is_file():
        pytest.fail(f"MovieLens 100K not found at {ML100K} (u.data: user item rating timestamp, tab-separated)")
    cfg = stream_config.model_copy(update={"ops": stream_config.ops.model_copy(update={"dashboard_interval_s": 0.5})})
    cfg_path = write_stream_config(cfg, tmp_path / "stream.yaml")
    workers = [spawn_worker("ingest", cfg), spawn_worker("score", cfg, "--set", "scoring.deduplicate_users=false")]
    endpoints = [w.ops_url().removeprefix("http://") for w in workers]
    dash = Dashboard(cfg, endpoints)
    url = f"http://127.0.0.1:{dash.start(bind='127.0.0.1', port=0)}/"
    try:
        poll(lambda: all(w["ready"] for w in _status(cfg_path, endpoints)["workers"]), "both workers ready",
             timeout_s=120)
        replay = subprocess.Popen([sys.executable, "-m", "adrec_stream.cli", "replay", "--dataset", str(ML100K),
                                   "--limit", str(N_CLICKS), "--rate", "100", "--no-progress", "--config", str(cfg_path)],
                                  cwd=str(REPO_ROOT), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        # during the replay: the page renders live figures from both workers
        poll(lambda: dash.latest and dash.latest["recommendations"] > 0, "first recommendations", timeout_s=60)
        live = fields(dump_dom(chromium, url))
        assert live["serving_model.version"] == "1"
        assert 0 < int(live["recommendations"].replace(",", "")) <= N_CLICKS
        assert replay.wait(120) == 0, replay.stdout.read()[-2000:]

        # drained: every click applied and recommended, no lag; then page vs status at the same time
        def drained() -> dict | None:
            st = _status(cfg_path, endpoints)
            ok = (st["clicks_applied"] == N_CLICKS and st["recommendations"] == N_CLICKS
                  and st["lag_clicks"] == 0 and st["lag_sequence_updates"] == 0)
            return st if ok else None

        poll(drained, f"{N_CLICKS} clicks applied and recommended with lag 0", timeout_s=120)
        before = _status(cfg_path, endpoints)
        page = fields(dump_dom(chromium, url))
        after = _status(cfg_path, endpoints)
        shot = tmp_path / "dashboard.png"
        screenshot(chromium, url, shot)
    finally:
        dash.stop()
    assert before["prequential"]["judged"] > 0 and before["latency_ms"]["p99"] is not None
    for path in STABLE:
        assert _get(before, path) == _get(after, path), f"{path} changed while idle"
        assert page[path] == page_text(path, _get(before, path)), (path, page[path], _get(before, path))
    # moving figures: the page's value lies between the two status readings
    for path in ("throughput_per_s.ingest", "throughput_per_s.score", "serving_model.age_s"):
        lo, hi = sorted((_get(before, path), _get(after, path)))
        assert lo - 0.05 <= float(page[path].replace(",", "")) <= hi + 0.05, (path, page[path], lo, hi)
    assert shot.stat().st_size > 20_000  # a rendered page, not a blank one
