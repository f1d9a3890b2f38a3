"""``adrec-stream status`` and the dashboard's API read real HTTP endpoints served by WorkerMetrics/OpsServer
(no broker: the workers' wiring is tested in the broker tests; here the combining of the figures)."""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator

import pytest

from adrec_stream.evaluation.prequential import OnlinePrequential
from adrec_stream.ops.dashboard import Dashboard, history_point
from adrec_stream.ops.http import OpsServer, Readiness
from adrec_stream.ops.metrics import WorkerMetrics
from adrec_stream.ops.status import collect_status, render_text
from adrec_stream.stream.config import StreamConfig


class FakeDeployment:
    """Three WorkerMetrics with their endpoints on free loopback ports, filled with known figures."""

    def __init__(self) -> None:
        self.metrics: dict[str, WorkerMetrics] = {}
        self.servers: list[OpsServer] = []
        self.ready = {"ingest": True, "score": True, "finetune": True}
        self.endpoints: list[str] = []
        for role in ("ingest", "score", "finetune"):
            m = WorkerMetrics(role, group=f"g-{role}", clock=lambda: 1_000.0)  # time stands still for the windows
            r = Readiness(lambda ok, m=m: m.ready.set(int(ok)))
            r.add("assigned", lambda role=role: (self.ready[role], "no partitions assigned yet"))
            s = OpsServer(m.registry, r, "127.0.0.1", 0)
            self.endpoints.append(f"127.0.0.1:{s.start()}")
            self.metrics[role] = m
            self.servers.append(s)

    def stop(self) -> None:
        for s in self.servers:
            s.stop()


@pytest.fixture
def deployment() -> Iterator[FakeDeployment]:
    d = FakeDeployment()
    yield d
    d.stop()


def _fill(d: FakeDeployment) -> OnlinePrequential:
    ing, sc, ft = d.metrics["ingest"], d.metrics["score"], d.metrics["finetune"]
    ing.observe_batch(120, 0.01)
    ing.applied.inc(117)
    ing.dead_lettered.labels("invalid_json").inc(2)
    ing.dead_lettered.labels("bad_ts").inc(1)
    ing.set_lag("clicks", {0: 7, 1: 0})
    ing.skipped.labels("tombstone").inc()
    sc.observe_batch(117, 0.05)
    sc.recommendations.inc(117)
    sc.fallbacks.inc(3)
    sc.observe_latencies([0.04] * 98 + [0.5, 0.6])
    sc.set_serving(4, 1_700_000_000.0)
    sc.set_lag("updates", {0: 2, 1: 1})
    pq = OnlinePrequential(k=10, last_n=1000)
    sc.watch_prequential(pq.window)
    pq.observe("u1", "e1", ["1"], ["2", "9"])
    pq.observe("u1", "e2", ["1", "2"], ["5", "3"])   # judged: 2 at rank 1
    pq.observe("u1", "e3", ["1", "2", "3"], ["4"])   # judged: 3 at rank 2
    pq.observe("u1", "e4", ["1", "2", "3", "8"], None)  # judged: miss
    ft.ft_rounds.labels("published").inc(2)
    ft.ft_rounds.labels("rejected").inc()
    ft.ft_rejected.labels("heldout_guard").inc()
    ft.ft_heldout.labels("candidate").set(0.081)
    ft.ft_heldout.labels("serving").set(0.079)
    ft.ft_published_version.set(4)
    return pq


def test_status_combines_the_workers_figures(deployment: FakeDeployment) -> None:
    _fill(deployment)
    st = collect_status(StreamConfig(), deployment.endpoints, with_broker=False)
    assert [w["role"] for w in st["workers"]] == ["ingest", "score", "finetune"]
    assert all(w["up"] and w["ready"] for w in st["workers"])
    assert st["lag"] == {"clicks": {"0": 7, "1": 0}, "updates": {"0": 2, "1": 1}}
    assert st["lag_total"] == {"clicks": 7, "updates": 3}
    assert st["lag_clicks"] == 7 and st["lag_sequence_updates"] is None  # the config names it "sequence-updates"
    assert st["clicks_applied"] == 117 and st["recommendations"] == 117 and st["fallbacks"] == 3
    assert st["dead_lettered"] == {"total": 3, "by_reason": {"invalid_json": 2, "bad_ts": 1}}
    assert st["serving_model"]["version"] == 4 and st["serving_model"]["age_s"] > 1e6
    assert st["latency_ms"]["p50"] == pytest.approx(40.0)
    assert st["latency_ms"]["p99"] > 400.0
    assert st["throughput_per_s"]["ingest"] == 120.0  # no time passed: / 1 s (a new worker does not read low)
    pq = st["prequential"]
    assert pq["judged"] == 3 and pq["HR@10"] == pytest.approx(2 / 3)
    assert pq["NDCG@10"] == pytest.approx((1.0 + 1 / math.log2(3) + 0.0) / 3)
    ft = st["finetune"]
    assert ft["rounds_published"] == 2 and ft["rounds_rejected"] == 1
    assert ft["rejected_by_reason"] == {"heldout_guard": 1}
    assert ft["heldout_ndcg_at_10"] == {"candidate": pytest.approx(0.081), "serving": pytest.approx(0.079)}
    assert ft["published_version"] == 4
    json.dumps(st, allow_nan=False)  # NaN written as null: the snapshot is strict JSON
    text = render_text(st)
    assert "lag clicks: total 7  p0=7  p1=0" in text
    assert st["skipped"] == {"tombstone": 1} and "; skipped tombstone 1" in text
    assert "dead-lettered: 3 since the workers started (bad_ts 1, invalid_json 2)" in text


def test_status_reports_a_down_and_a_not_ready_worker(deployment: FakeDeployment) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"  # nothing listens there once closed
    deployment.ready["score"] = False
    st = collect_status(StreamConfig(), [*deployment.endpoints, dead], with_broker=False, timeout_s=1.0)
    by_ep = {w["endpoint"]: w for w in st["workers"]}
    assert by_ep[dead]["up"] is False and "Connection refused" in by_ep[dead]["error"]
    score = by_ep[deployment.endpoints[1]]
    assert score["ready"] is False and score["not_ready"] == {"assigned": "no partitions assigned yet"}
    assert st["serving_model"]["version"] is None and st["prequential"]["HR@10"] is None
    assert "DOWN" in render_text(st) and "NOT READY: assigned: no partitions assigned yet" in render_text(st)


def test_status_cli_json_and_exit_code(deployment: FakeDeployment) -> None:
    _fill(deployment)
    args = [sys.executable, "-m", "adrec_stream.cli", "status", "--json", "--no-broker"]
    for ep in deployment.endpoints:
        args += ["--endpoint", ep]
    out = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    st = json.loads(out.stdout)
    assert st["clicks_applied"] == 117 and st["serving_model"]["version"] == 4
    deployment.ready["ingest"] = False
    assert subprocess.run(args, capture_output=True, text=True, timeout=60).returncode == 1


def test_dashboard_api_serves_the_status_snapshot_and_history(deployment: FakeDeployment) -> None:
    _fill(deployment)
    cfg = StreamConfig.model_validate({"ops": {"dashboard_interval_s": 30}})
    dash = Dashboard(cfg, deployment.endpoints, with_broker=False)
    port = dash.start(port=0)
    try:
        deployment.metrics["score"].set_serving(5, 1_700_000_100.0)
        dash.sample()
        base = f"http://127.0.0.1:{port}"
        st = json.loads(urllib.request.urlopen(f"{base}/api/status", timeout=5).read())
        hist = json.loads(urllib.request.urlopen(f"{base}/api/history", timeout=5).read())
        page = urllib.request.urlopen(f"{base}/", timeout=5).read().decode()
    finally:
        dash.stop()
    assert st["serving_model"]["version"] == 5 and st["clicks_applied"] == 117
    assert [p["version"] for p in hist] == [4, 5]
    assert hist[-1] == history_point(st)
    assert 'data-field="serving_model.version"' in page and 'data-field="prequential.NDCG@10"' in page


def test_status_does_not_import_torch_and_a_stopped_broker_costs_one_connect() -> None:
    """The CLI imports only the module of the command it runs; with no broker listening, the dead-letter topic's
    size is None after one refused connection (not the Kafka client's bootstrap retries)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    code = ("import sys, json, time\n"
            "from adrec_stream.cli import main\n"
            "t = time.perf_counter()\n"
            f"rc = main(['status', '--json', '--endpoint', '127.0.0.1:{free}', '--set', 'broker.port={free}'])\n"
            "print(json.dumps({'rc': rc, 'torch': 'torch' in sys.modules, 'faust': 'faust' in sys.modules, "
            "'s': time.perf_counter() - t}))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    lines = out.stdout.strip().splitlines()
    st, facts = json.loads(lines[0]), json.loads(lines[-1])
    assert facts["rc"] == 1 and facts["torch"] is False and facts["faust"] is False
    assert st["dead_letter_topic_records"] is None and st["workers"][0]["up"] is False
    assert "kafka" not in out.stderr.lower()  # no client retry noise


def test_probe_exit_code_rules() -> None:
    from adrec_stream.ops.status import probe_exit_code

    up = {"up": True, "ready": True}
    down = {"up": False, "ready": None}
    not_ready = {"up": True, "ready": False}
    assert probe_exit_code([up, up, down], explicit=False) == 0  # default ports: no fine-tune worker is fine
    assert probe_exit_code([up, up, down], explicit=True) == 1  # a named endpoint must answer
    assert probe_exit_code([down, down, down], explicit=False) == 1
    assert probe_exit_code([up, not_ready], explicit=False) == 1
    assert probe_exit_code([], explicit=False) == 1


@pytest.mark.parametrize(("args", "message"), [
    (["status", "--endpoint", "http://127.0.0.1:9465"], "expected HOST:PORT without a scheme"),
    (["status", "--endpoint", "nonsense"], "expected HOST:PORT with a port 1-65535"),
    (["status", "--endpoint", "127.0.0.1:99999"], "expected HOST:PORT with a port 1-65535"),
    (["dashboard", "--port", "99999"], "expected a port number 0-65535, got 99999"),
])
def test_bad_endpoint_and_port_arguments_are_usage_errors(args: list[str], message: str) -> None:
    out = subprocess.run([sys.executable, "-m", "adrec_stream.cli", *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr


def test_status_refuses_missing_sasl_credentials_like_every_client_and_survives_a_closed_pipe(
        deployment: FakeDeployment, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """SASL without credentials used to be swallowed: the snapshot printed "dead-letter topic holds -" and no
    reason; `status | head -1` ended in a BrokenPipeError traceback."""
    from adrec_stream.cli import main

    for name in ("ADREC_KAFKA_SASL_USERNAME", "ADREC_KAFKA_SASL_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name + "_FILE", raising=False)
    sasl = ["--set", "broker.embedded=false", "--set", "bootstrap_servers=127.0.0.1:1", "--set",
            "security.security_protocol=SASL_PLAINTEXT", "--set", "security.sasl_mechanism=PLAIN",
            "--endpoint", deployment.endpoints[0]]
    assert main(["status", *sasl]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ADREC_KAFKA_SASL_PASSWORD" in err and "--no-broker" in err
    assert main(["status", "--no-broker", *sasl]) == 0  # the workers' endpoints need no credentials
    capsys.readouterr()
    _fill(deployment)
    args = [sys.executable, "-m", "adrec_stream.cli", "status", "--no-broker", "--endpoint", deployment.endpoints[0]]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the snapshot is printed
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141 and "Traceback" not in stderr
