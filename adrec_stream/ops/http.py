"""The HTTP endpoint of every worker: ``/metrics`` (Prometheus text format), ``/healthz``, ``/readyz``.

Served by a small threaded WSGI server from the standard library (``wsgiref``) running
``prometheus_client.make_wsgi_app`` for ``/metrics``, in daemon threads, so a scrape never waits for the worker's
event loop or a fine-tune round. ``/healthz`` answers 200 while the process runs. ``/readyz`` answers 200 when
every readiness check passes, else 503; the body is JSON ``{"ready": bool, "checks": {name: {"ok", "reason"}}}``
in both cases, so the reason is visible to whoever probes it.
"""

from __future__ import annotations

import json
import socket
import socketserver
import threading
import time
from collections.abc import Callable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app

from adrec_stream.errors import ConfigError
from adrec_stream.logging import get_logger

#: A readiness check: () -> (ok, reason when not ok).
Check = Callable[[], tuple[bool, str]]

log = get_logger("adrec_stream.ops")


class LagTrend:
    """Tells how long a consumer's total lag has kept growing (for ``/readyz``).

    The run's base is the value the lag last fell to (or its first reading); any decrease starts a new run at the
    new value. The lag "has been growing for" the time since it was last at its base, once it is above it: a lag
    that rose and stays up without ever coming down (a stalled worker) keeps counting, a lag that sits at a
    constant value it fell to (e.g. 0) does not.

    Args:
        clock: time source, seconds.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._prev: int | None = None
        self._since: float | None = None
        self._base = 0

    def observe(self, total_lag: int) -> None:
        """Record the worker's total lag now (records, summed over its partitions)."""
        now = self.clock()
        if self._prev is None or total_lag < self._prev or total_lag <= self._base:
            self._since, self._base = now, max(total_lag, 0)
        self._prev = total_lag

    def growing_for_s(self) -> float:
        """Seconds the lag has been growing (0 when it is not above the run's start)."""
        if self._since is None or self._prev is None or self._prev <= self._base:
            return 0.0
        return self.clock() - self._since


class Readiness:
    """Named readiness checks of one worker; :meth:`evaluate` runs them all.

    Args:
        on_change: called with the new overall state when it changes (the ``adrec_ready`` gauge).
    """

    def __init__(self, on_change: Callable[[bool], None] | None = None) -> None:
        self.checks: dict[str, Check] = {}
        self.on_change = on_change
        self._last: bool | None = None

    def add(self, name: str, check: Check) -> None:
        """Register ``check`` under ``name`` (replaces one of the same name)."""
        self.checks[name] = check

    def evaluate(self) -> dict[str, Any]:
        """``{"ready": bool, "checks": {name: {"ok": bool, "reason": str}}}``; a check that raises is not ok."""
        results = {}
        for name, check in list(self.checks.items()):
            try:
                ok, reason = check()
            except Exception as err:  # noqa: BLE001 - a failing check means "not ready", with the error
                ok, reason = False, f"check failed: {err!r}"
            results[name] = {"ok": bool(ok), "reason": "" if ok else reason}
        ready = bool(results) and all(r["ok"] for r in results.values())
        if ready != self._last:
            self._last = ready
            if self.on_change is not None:
                self.on_change(ready)
        return {"ready": ready, "checks": results}


class ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    """``wsgiref``'s server, one daemon thread per request."""

    daemon_threads = True
    allow_reuse_address = True


class ThreadingWSGIServer6(ThreadingWSGIServer):
    """The same on an IPv6 address (``::`` also accepts IPv4 where the host allows dual-stack sockets)."""

    address_family = socket.AF_INET6


def make_ops_server(bind: str, port: int, app: Callable) -> WSGIServer:
    """A threaded, quiet WSGI server for ``app`` on ``bind:port`` (IPv6 when ``bind`` contains a colon).

    Raises:
        OSError: the address cannot be bound.
    """
    server_class = ThreadingWSGIServer6 if ":" in bind else ThreadingWSGIServer
    return make_server(bind, port, app, server_class=server_class, handler_class=QuietHandler)


def url_host(bind: str) -> str:
    """The host part of a URL that reaches a server bound to ``bind`` on this host (wildcards -> loopback)."""
    if bind in ("0.0.0.0", ""):
        return "127.0.0.1"
    if bind == "::":
        return "[::1]"
    return f"[{bind}]" if ":" in bind else bind


class QuietHandler(WSGIRequestHandler):
    """A request handler that does not log every request."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        pass  # one log line per scrape would drown the worker's log


def ops_app(registry: Any, readiness: Readiness) -> Callable:
    """The WSGI application: ``/metrics``, ``/healthz``, ``/readyz`` (anything else: 404)."""
    metrics = make_wsgi_app(registry)

    def app(environ: dict, start_response: Callable) -> list[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return metrics(environ, start_response)
        if path == "/healthz":
            start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"ok\n"]
        if path == "/readyz":
            state = readiness.evaluate()
            start_response("200 OK" if state["ready"] else "503 Service Unavailable",
                           [("Content-Type", "application/json")])
            return [json.dumps(state).encode()]
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"not found: try /metrics, /healthz or /readyz\n"]

    return app


class OpsServer:
    """Serves :func:`ops_app` on ``bind:port`` in a daemon thread.

    Args:
        registry: the worker's ``CollectorRegistry``.
        readiness: the worker's :class:`Readiness`.
        bind: listen address; port: TCP port (0 = any free port; read :attr:`port` after :meth:`start`).
        role: the worker's role, named in the error when the port is taken (None: "<role>").

    Raises:
        ConfigError: from :meth:`start`, when the address cannot be bound (in use, or not an address of this host).
    """

    def __init__(self, registry: Any, readiness: Readiness, bind: str, port: int, role: str | None = None) -> None:
        self.registry, self.readiness, self.bind, self.port = registry, readiness, bind, port
        self.role = role
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> int:
        """Start serving; returns the bound port."""
        try:
            self._server = make_ops_server(self.bind, self.port, ops_app(self.registry, self.readiness))
        except OSError as err:
            raise ConfigError(f"cannot serve metrics/health on {self.bind}:{self.port}: {err.strerror or err}; "
                              "another process (a second worker of the same role?) may hold the port: give this one "
                              f"its own with --set ops.ports.{self.role or '<role>'}=PORT, or switch the endpoint off with "
                              "--set ops.enabled=false") from None
        self.port = self._server.server_port
        self._thread = threading.Thread(target=self._server.serve_forever, name="ops-http", daemon=True)
        self._thread.start()
        return self.port

    @property
    def url(self) -> str:
        """``http://host:port`` of the endpoint (a wildcard bind is reached on the loopback address)."""
        return f"http://{url_host(self.bind)}:{self.port}"

    def stop(self) -> None:
        """Stop serving and close the socket (idempotent)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def serve_ops(ops: Any, role: str, registry: Any, readiness: Readiness) -> OpsServer | None:
    """Start the endpoint of a worker of ``role`` as the ``ops:`` section says, and log one ``ops_http_listening``
    line (role, bind, port, url: tests and local pipelines read the port from it when ``ops.ports.<role>`` is 0).

    Args:
        ops: the stream config's :class:`~adrec_stream.ops.config.OpsConfig`.
        role: "ingest", "score" or "finetune" (picks ``ops.ports.<role>``).
        registry: the worker's ``CollectorRegistry``; readiness: its :class:`Readiness`.

    Returns:
        The started server (stop it on shutdown), or None when ``ops.enabled`` is false.

    Raises:
        ConfigError: the port cannot be bound (in use: one clear line, exit 2 from the CLI).
    """
    if not ops.enabled:
        log.info("ops_http_disabled", role=role)
        return None
    server = OpsServer(registry, readiness, ops.bind, getattr(ops.ports, role), role=role)
    port = server.start()
    log.info("ops_http_listening", role=role, bind=ops.bind, port=port, url=server.url)
    return server
