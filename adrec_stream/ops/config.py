"""Settings of the operations endpoints: the ``ops:`` section of ``configs/stream.yaml``.

Every worker serves ``/metrics`` (Prometheus text format), ``/healthz`` and ``/readyz`` on ``bind:ports.<role>``;
``adrec-stream status`` and ``adrec-stream dashboard`` read the same endpoints. Loopback by default: expose them
deliberately (``bind: 0.0.0.0``) behind whatever guards the host's other metrics ports.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, model_validator

from adrec_stream.config import StrictModel

_Port = Annotated[int, Field(ge=0, le=65535)]
_PosFloat = Annotated[float, Field(strict=False, gt=0, allow_inf_nan=False)]


class OpsPorts(StrictModel):
    """Port of each worker role's HTTP endpoint (0 = a free port chosen at start and logged as
    ``ops_http_listening``; status and dashboard then need ``ops.endpoints``). A second worker of a role on one
    host needs its own port: ``--set ops.ports.score=9475``."""

    ingest: _Port = 9464
    score: _Port = 9465
    finetune: _Port = 9466


class OpsConfig(StrictModel):
    """Metrics, health and status settings.

    ``enabled``: serve the endpoints (off: no port is opened; the metrics are still counted).
    ``bind``: listen address of every worker's endpoint and of the dashboard.
    ``ports``: per role (:class:`OpsPorts`); ``dashboard_port``: ``adrec-stream dashboard``'s page.
    ``endpoints``: ``host:port`` of every worker endpoint that ``status`` and ``dashboard`` read; empty = the
    three ``bind:ports.<role>`` of this config (one worker per role on this host).
    ``lag_growth_not_ready_s``: ``/readyz`` answers 503 once the worker's consumer lag has kept growing for this
    many seconds (a worker that falls further and further behind is not serving its partitions).
    ``recent_window_s``: the window of the "last minute" figures (throughput, latency quantiles), seconds.
    ``prequential_last_n``: the score worker's prequential HR@10 / NDCG@10 gauges cover the last N judged clicks.
    ``prequential_max_users``: users whose last recommendation the score worker keeps for judging (least
    recently seen dropped first; a dropped user's next click is simply not judged; about 0.4 KB per user).
    ``scrape_timeout_s``: per endpoint, for status and the dashboard.
    ``dashboard_history``: samples kept by the dashboard for its plots (one per ``dashboard_interval_s``).
    """

    enabled: bool = True
    bind: Annotated[str, Field(min_length=1)] = "127.0.0.1"
    ports: OpsPorts = OpsPorts()
    dashboard_port: _Port = 9470
    endpoints: list[str] = []
    lag_growth_not_ready_s: _PosFloat = 60.0
    recent_window_s: _PosFloat = 60.0
    prequential_last_n: Annotated[int, Field(ge=1)] = 1000
    prequential_max_users: Annotated[int, Field(ge=1)] = 100_000
    scrape_timeout_s: _PosFloat = 2.0
    dashboard_interval_s: _PosFloat = 2.0
    dashboard_history: Annotated[int, Field(ge=2)] = 1800

    @model_validator(mode="after")
    def _check_endpoints(self) -> OpsConfig:
        for e in self.endpoints:
            host, sep, port = e.rpartition(":")
            if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
                raise ValueError(f"ops.endpoints entry {e!r} is not host:port")
        return self

    def endpoint_list(self) -> list[str]:
        """``endpoints``, or the ``bind:port`` of each role whose port is fixed (not 0)."""
        if self.endpoints:
            return list(self.endpoints)
        from adrec_stream.ops.http import url_host  # noqa: PLC0415

        host = url_host(self.bind)
        return [f"{host}:{p}" for p in (self.ports.ingest, self.ports.score, self.ports.finetune) if p]
