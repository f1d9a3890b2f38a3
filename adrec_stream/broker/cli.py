"""``adrec-stream broker start|stop|status``: manage the embedded Tansu broker.

``start`` launches Tansu in the background on ``broker.host`` (loopback) and the given port, writes the PID
and log files under ``broker.data_dir`` (default ``./var/broker``), waits until it accepts connections and
creates the pipeline topics (``topics:`` of the config) if absent. ``stop`` sends SIGTERM, then SIGKILL. ``status`` prints one
JSON object and exits 0 when the broker is reachable, :data:`EXIT_NOT_REACHABLE` (3) when it is not (usable
as a health check in scripts). With ``broker.embedded: false`` start/stop refuse (nothing to manage) and status reports the
external cluster's reachability and topics.
"""

from __future__ import annotations

import argparse
import json
import time

from adrec_stream.broker.admin import ensure_topics, list_topics, port_open
from adrec_stream.broker.process import effective_bootstrap, running_broker, start_broker, stop_broker
from adrec_stream.broker.security import security_of
from adrec_stream.config import parse_overrides
from adrec_stream.errors import BrokerError
from adrec_stream.stream.config import DEFAULT_STREAM_CONFIG, StreamConfig, load_stream_config

#: exit code of ``status`` when no broker answers at the configured / recorded address
EXIT_NOT_REACHABLE = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``action``, ``--port``, ``--config`` and ``--set`` (as the other commands have it)."""
    parser.add_argument("action", choices=["start", "stop", "status"], help="what to do")
    parser.add_argument("--port", type=int, default=None,
                        help="listener port for start (default broker.port from the config; 0 = any free port)")
    parser.add_argument("--config", default=str(DEFAULT_STREAM_CONFIG), help="stream config YAML")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set broker.data_dir=var/broker2 (repeatable)")


def run(args: argparse.Namespace) -> int:
    """Execute the action; prints JSON. Returns 0, or :data:`EXIT_NOT_REACHABLE` for ``status`` of a broker that
    does not answer (``stop`` is idempotent: ``"stopped": false`` and 0 when none ran)."""
    cfg = load_stream_config(args.config, parse_overrides(getattr(args, "set", [])))
    if args.action == "status":
        status = broker_status(cfg)
        print(json.dumps(status))
        return 0 if status.get("reachable") else EXIT_NOT_REACHABLE
    if not cfg.broker.embedded:
        if args.action == "start":
            bootstrap = effective_bootstrap(cfg)
            created = ensure_topics(bootstrap, cfg.topics.all(), security=security_of(cfg))
            print(json.dumps({"embedded": False, "bootstrap": bootstrap, "topics_created": created}))
            return 0
        raise BrokerError("broker.embedded is false: the external cluster is not managed by adrec-stream")
    if args.action == "start":
        h = start_broker(cfg.broker, port=args.port, topics=cfg.topics.all())
        print(json.dumps({"started": True, "pid": h.pid, "bootstrap": h.bootstrap, "pid_file": h.pid_file,
                          "log_file": h.log_file}))
        return 0
    how = stop_broker(cfg.broker)
    print(json.dumps({"stopped": how != "not running", "how": how}))
    return 0


def broker_status(cfg: StreamConfig) -> dict:
    """Status as a JSON-able dict: running/pid/bootstrap/log file, reachability and topics with partitions."""
    out: dict = {"embedded": cfg.broker.embedded, "tansu_compat": cfg.broker.tansu_compat}
    if cfg.broker.embedded:
        h = running_broker(cfg.broker)
        out.update(running=h is not None, pid_file=cfg.broker.pid_file, log_file=cfg.broker.log_file)
        if h is None:
            return out
        out.update(pid=h.pid, bootstrap=h.bootstrap, uptime_s=round(time.time() - h.started_at, 1))
        bootstrap = h.bootstrap
    else:
        bootstrap = effective_bootstrap(cfg)
        out["bootstrap"] = bootstrap
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    out["reachable"] = port_open(host, int(port), timeout=1.0)
    if out["reachable"]:
        try:
            out["topics"] = list_topics(bootstrap, timeout_s=5.0, security=security_of(cfg))
        except BrokerError as err:
            out["topics_error"] = str(err)
    return out
