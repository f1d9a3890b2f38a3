"""``adrec-stream dashboard``: a read-only live status page of a running deployment.

A sampler thread takes a :func:`~adrec_stream.ops.status.collect_status` snapshot of the workers' endpoints every
``ops.dashboard_interval_s`` seconds and keeps the last ``ops.dashboard_history`` points for the plots (no state
beyond that in-memory ring; everything comes from the workers' metrics). The page (``static/dashboard.html``,
plain HTML + SVG, no external scripts) polls:

- ``/api/status``: the newest snapshot, the same dict ``adrec-stream status --json`` prints;
- ``/api/history``: ``[{t, ingest_per_s, score_per_s, p50_ms, p99_ms, ndcg10, hr10, version}]``, oldest first.

Served on ``ops.bind:ops.dashboard_port`` (loopback by default) with the same small threaded WSGI server as the
worker endpoints.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from importlib import resources
from typing import Any

from adrec_stream.argtypes import host_port, tcp_port
from adrec_stream.errors import ConfigError
from adrec_stream.logging import get_logger
from adrec_stream.ops.http import make_ops_server, url_host
from adrec_stream.ops.status import check_broker_security, collect_status
from adrec_stream.stream.config import StreamConfig

log = get_logger("adrec_stream.dashboard")

#: Seconds between two reads of the dead-letter topic's size from the broker (the rest is sampled every interval).
BROKER_REFRESH_S = 10.0


def history_point(st: dict[str, Any]) -> dict[str, Any]:
    """The plotted figures of one snapshot."""
    tp = st["throughput_per_s"]
    return {"t": st["taken_at"], "ingest_per_s": tp.get("ingest"), "score_per_s": tp.get("score"),
            "p50_ms": st["latency_ms"]["p50"], "p99_ms": st["latency_ms"]["p99"],
            "ndcg10": st["prequential"]["NDCG@10"], "hr10": st["prequential"]["HR@10"],
            "version": st["serving_model"]["version"]}


class Dashboard:
    """Samples the deployment and serves the page.

    Args:
        cfg: stream config (``ops`` section).
        endpoints: worker endpoints (default ``cfg.ops.endpoint_list()``).
        with_broker: also show the dead-letter topic's size (read every :data:`BROKER_REFRESH_S`).
        collect: the snapshot function (default :func:`collect_status`).
    """

    def __init__(self, cfg: StreamConfig, endpoints: Iterable[str] | None = None, *, with_broker: bool = True,
                 collect: Callable[..., dict[str, Any]] = collect_status) -> None:
        self.cfg = cfg
        self.endpoints = list(endpoints) if endpoints else cfg.ops.endpoint_list()
        self.with_broker = with_broker
        self.collect = collect
        self.history: deque[dict[str, Any]] = deque(maxlen=cfg.ops.dashboard_history)
        self.latest: dict[str, Any] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._broker_at = float("-inf")
        self._dead_letter_records: int | None = None
        self._server: Any = None
        self.port: int | None = None

    def sample(self) -> dict[str, Any]:
        """Take one snapshot now, append its point to the history and make it the latest."""
        ask_broker = self.with_broker and time.monotonic() - self._broker_at >= BROKER_REFRESH_S
        st = self.collect(self.cfg, self.endpoints, with_broker=ask_broker)
        if ask_broker:
            self._broker_at = time.monotonic()
            self._dead_letter_records = st["dead_letter_topic_records"]
        else:
            st["dead_letter_topic_records"] = self._dead_letter_records
        with self._lock:
            self.latest = st
            self.history.append(history_point(st))
        return st

    def _loop(self) -> None:
        while not self._stop.wait(self.cfg.ops.dashboard_interval_s):  # start() took the first one
            try:
                self.sample()
            except Exception as err:  # noqa: BLE001 - the page keeps the last good snapshot
                log.warning("dashboard_sample_failed", error=repr(err))

    def app(self, environ: dict, start_response: Callable) -> list[bytes]:
        """WSGI: ``/`` the page, ``/api/status``, ``/api/history``."""
        path = environ.get("PATH_INFO", "")
        if path in ("/", "/index.html"):
            body = resources.files("adrec_stream.ops").joinpath("static/dashboard.html").read_bytes()
            start_response("200 OK", [("Content-Type", "text/html; charset=utf-8"), ("Cache-Control", "no-store")])
            return [body]
        if path in ("/api/status", "/api/history"):
            with self._lock:
                data = self.latest if path == "/api/status" else list(self.history)
            if data is None:
                start_response("503 Service Unavailable", [("Content-Type", "application/json")])
                return [b'{"error": "no snapshot yet"}']
            start_response("200 OK", [("Content-Type", "application/json"), ("Cache-Control", "no-store")])
            return [json.dumps(data).encode()]
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"not found: try /, /api/status or /api/history\n"]

    def start(self, bind: str | None = None, port: int | None = None) -> int:
        """Take a first snapshot, start sampling and serving; returns the bound port.

        Raises:
            ConfigError: the address cannot be bound.
        """
        bind = bind or self.cfg.ops.bind
        port = self.cfg.ops.dashboard_port if port is None else port
        try:
            self._server = make_ops_server(bind, port, self.app)
        except OSError as err:
            raise ConfigError(f"cannot serve the dashboard on {bind}:{port}: {err.strerror or err}; choose another "
                              "port with --port (or ops.dashboard_port)") from None
        self.port = self._server.server_port
        self.sample()
        threading.Thread(target=self._loop, name="dashboard-sampler", daemon=True).start()
        threading.Thread(target=self._server.serve_forever, name="dashboard-http", daemon=True).start()
        return self.port

    def stop(self) -> None:
        """Stop sampling and serving (idempotent)."""
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config``/``--set``, ``--endpoint``, ``--bind``, ``--port``, ``--no-broker``."""
    from adrec_stream.stream.worker_cli import add_common_config_arguments  # noqa: PLC0415

    add_common_config_arguments(parser)
    parser.add_argument("--endpoint", action="append", default=None, metavar="HOST:PORT", type=host_port,
                        help="a worker's metrics endpoint (repeatable; default: ops.endpoints or the role ports)")
    parser.add_argument("--bind", default=None, help="listen address (default ops.bind, loopback)")
    parser.add_argument("--port", type=tcp_port, default=None,
                        help="listen port (default ops.dashboard_port, 9470 in configs/stream.yaml; 0 = any free port)")
    parser.add_argument("--no-broker", action="store_true", help="do not read the dead-letter topic's size")


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM."""
    import signal  # noqa: PLC0415

    from adrec_stream.stream.worker_cli import load_from_args  # noqa: PLC0415

    cfg = load_from_args(args)
    if not args.no_broker:
        check_broker_security(cfg)
    dash = Dashboard(cfg, args.endpoint, with_broker=not args.no_broker)
    port = dash.start(args.bind, args.port)
    url = f"http://{url_host(args.bind or cfg.ops.bind)}:{port}/"
    log.info("dashboard_listening", url=url, endpoints=dash.endpoints)
    print(f"status page: {url}  (reads {', '.join(dash.endpoints)}; Ctrl-C stops)", flush=True)
    stopped = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopped.set())
    stopped.wait()
    dash.stop()
    return 0
