"""A pipeline on this host: worker subprocesses next to an embedded broker, as the demo and
``evaluate-replay --through-kafka`` run it.

- :class:`WorkerProcess`: one ``python -m workers.<role>`` subprocess with its log file and restart count;
  :func:`wait_ready` waits for the readiness markers in the workers' logs, :func:`supervise` restarts crashed
  workers and raises for any other exit.
- :func:`bootstrap_state`: load historical clicks into the per-partition sequence stores before the workers
  start (so known users are scored with their history).
- :func:`finetune_rounds`: the fine-tune worker's ``finetune_round`` records from its log (:func:`log_events`: any
  event's); :meth:`WorkerProcess.ops_url` / :func:`ops_urls`: the workers' operations endpoints from their logs.
- :func:`start_pipeline_broker`: the embedded broker on a free port for one run, and the config the workers read;
  :func:`write_stream_config`: the stream config as YAML for the workers' ``--config``;
  :func:`run_dir_overrides`: the overrides that keep the broker files, stores and registry in one run folder (and
  let every worker's operations endpoint take a free port: :func:`ops_urls` reads them from the workers' logs).
- :class:`OutputCollector`: reads the recommendations and dead-letter topics back (first copy per event id).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from adrec_stream.config import CONFIG_DIR
from adrec_stream.errors import AdrecStreamError
from adrec_stream.logging import get_logger
from adrec_stream.procs import die_with_parent

#: the repository root: workers run there (``python -m workers.<role>``)
REPO_ROOT = CONFIG_DIR.parent
log = get_logger("adrec_stream.local")

#: log lines that show a worker of each role is ready (consumer group joined; model loaded)
READY_MARKERS = {"ingest": ['"partitions_assigned"'], "score": ['"partitions_assigned"', '"model_version_loaded"'],
                 "finetune": ['"finetune_started"']}


class WorkerProcess:
    """One worker subprocess (``python -m workers.<role>``) with its log file and restart count.

    ``restart_codes``: exit codes after which :func:`supervise` restarts it (default: the Faust workers'
    :data:`~adrec_stream.stream.app.EXIT_AGENT_CRASHED`); any other exit while the demo runs is an error.
    ``log_name``: the log file's name without ``.log`` (default the role; several workers of one role need their own).
    """

    def __init__(self, role: str, config_path: Path, log_dir: Path, extra: list[str],
                 restart_codes: frozenset[int] | None = None, log_name: str | None = None) -> None:
        self.role = role
        self.cmd = [sys.executable, "-m", f"workers.{role}", "--config", str(config_path), *extra]
        self.log_path = log_dir / f"{log_name or role}.log"
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self.restart_codes = restart_codes

    def start(self) -> None:
        """Start (or restart) the process, appending to its log."""
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(self.cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         cwd=str(REPO_ROOT), env={**os.environ, "OMP_NUM_THREADS": "1"},
                                         preexec_fn=die_with_parent)

    def log_text(self) -> str:
        """The whole log so far (empty if none)."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def ops_url(self) -> str | None:
        """``http://host:port`` of the worker's operations endpoint (``/metrics``, ``/healthz``, ``/readyz``) from
        its last ``ops_http_listening`` log line (a restarted worker logs its new port); None if there is none."""
        lines = log_events(self.log_text(), "ops_http_listening")
        return lines[-1].get("url") if lines else None

    def tail(self, n: int = 12) -> str:
        """Last ``n`` log lines."""
        return "\n".join(self.log_text().splitlines()[-n:])

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM, wait up to ``timeout_s``, then SIGKILL."""
        p = self.proc
        if p is None or p.poll() is not None:
            return
        p.terminate()
        try:
            p.wait(timeout_s)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


def wait_ready(workers: list[WorkerProcess], markers: dict[str, list[str]], timeout_s: float) -> float:
    """Wait until every worker's log contains all of its role's ``markers``; returns the seconds waited.

    Raises:
        AdrecStreamError: a worker exited during start (its log tail is in the message), or ``timeout_s``
            passed.
    """
    t0 = time.time()
    while True:
        missing = [w.role for w in workers if not all(m in w.log_text() for m in markers[w.role])]
        if not missing:
            return time.time() - t0
        for w in workers:
            if w.proc is not None and w.proc.poll() is not None:
                raise AdrecStreamError(f"{w.role} worker exited with code {w.proc.returncode} during start; "
                                       f"log {w.log_path}:\n{w.tail()}")
        if time.time() - t0 > timeout_s:
            raise AdrecStreamError(f"workers {missing} not ready after {timeout_s:.0f} s; logs in "
                                   f"{workers[0].log_path.parent}")
        time.sleep(0.2)


def supervise(workers: list[WorkerProcess], max_restarts: int) -> None:
    """Restart workers that crashed (an exit code in their ``restart_codes``, by default EXIT_AGENT_CRASHED);
    raise for any other exit (also exit 0: nothing but the demo's own SIGTERM should stop a worker)."""
    from adrec_stream.stream.app import EXIT_AGENT_CRASHED  # noqa: PLC0415

    for w in workers:
        rc = w.proc.poll() if w.proc is not None else None
        if rc is None:
            continue
        codes = w.restart_codes if w.restart_codes is not None else frozenset({EXIT_AGENT_CRASHED})
        if rc in codes and w.restarts < max_restarts:
            w.restarts += 1
            log.warning("worker_restart", role=w.role, exit_code=rc, restarts=w.restarts)
            w.start()
            continue
        raise AdrecStreamError(f"{w.role} worker exited with code {rc}; log {w.log_path}:\n{w.tail()}")


def log_events(log_text: str, event: str) -> list[dict[str, Any]]:
    """The JSON log records of ``event`` in a worker's log, in log order (other lines are ignored)."""
    out = []
    for line in log_text.splitlines():
        if f'"{event}"' not in line or "{" not in line:
            continue
        try:
            rec = json.loads(line[line.index("{"):])
        except ValueError:
            continue
        if isinstance(rec, dict) and rec.get("event") == event:
            out.append(rec)
    return out


def finetune_rounds(log_text: str) -> list[dict[str, Any]]:
    """The ``finetune_round`` records of a fine-tune worker's log, in log order (other lines are ignored)."""
    return log_events(log_text, "finetune_round")


def bootstrap_state(scfg: Any, train: list, source: str) -> dict[int, int]:
    """Apply the training interactions to the per-partition sequence stores (pseudo-topic ``bootstrap:<source>``).

    Each user's history goes into the store of the clicks partition its key (UTF-8 user id) maps to under
    the producer's default partitioner (:func:`~adrec_stream.state.partitioned.partition_for_key`), i.e.
    where the ingest worker that owns that partition will look for it. Returns clicks per partition.
    """
    from adrec_stream.data.events import Interaction  # noqa: PLC0415
    from adrec_stream.state.partitioned import partition_for_key, partition_store_path  # noqa: PLC0415
    from adrec_stream.state.store import SequenceStore, SourceRecord  # noqa: PLC0415

    n = scfg.topics.clicks.partitions
    by_part: dict[int, list[SourceRecord]] = {}
    for i, x in enumerate(train):
        part = partition_for_key(str(x.user_id).encode("utf-8"), n)
        by_part.setdefault(part, []).append(
            SourceRecord(f"bootstrap:{source}", 0, i, Interaction(x.user_id, x.item_id, x.ts, f"{source}:{i}")))
    for part, records in by_part.items():
        with SequenceStore(partition_store_path(scfg.state_dir, scfg.topics.clicks.name, part),
                           window=scfg.window) as store:
            store.apply(records)
    return {p: len(r) for p, r in sorted(by_part.items())}


def write_stream_config(scfg: Any, path: Path) -> None:
    """Write the stream config ``scfg`` as YAML to ``path`` (the workers' ``--config``)."""
    path.write_text(yaml.safe_dump(scfg.model_dump(mode="json"), sort_keys=False))


def start_pipeline_broker(stack: contextlib.ExitStack, scfg: Any, config_path: Path) -> tuple[Any, str]:
    """Start ``scfg``'s embedded broker on a free loopback port, stopped when ``stack`` closes, with the pipeline's
    topics; write the stream config with that port to ``config_path`` (the workers' ``--config``).

    Returns:
        (the stream config with the broker's port, the bootstrap address).

    Raises:
        BrokerError: the broker did not start.
    """
    from adrec_stream.broker.process import start_broker, stop_broker  # noqa: PLC0415

    handle = start_broker(scfg.broker, port=0, topics=scfg.topics.all(), owned=True)
    stack.callback(stop_broker, scfg.broker)
    scfg = scfg.model_copy(update={"broker": scfg.broker.model_copy(update={"port": handle.port})})
    write_stream_config(scfg, config_path)
    return scfg, handle.bootstrap


def run_dir_overrides(run_dir: Path) -> dict[str, Any]:
    """Stream-config overrides (dotted keys) that put a local pipeline's embedded broker (Tansu compatibility on,
    its PID and log files), its sequence stores and its model registry inside ``run_dir``, and give every worker's
    operations endpoint a free port (``ops.ports.*: 0``: several workers of one role, or another pipeline, may run
    on this host; :func:`ops_urls` reads the ports from the logs)."""
    return {
        "broker.embedded": True,
        "broker.tansu_compat": True,
        "broker.data_dir": str(run_dir / "broker"),
        "broker.pid_file": str(run_dir / "broker" / "tansu.pid"),
        "broker.log_file": str(run_dir / "broker" / "tansu.log"),
        "state_dir": str(run_dir / "state"),
        "registry_dir": str(run_dir / "registry"),
        "ops.ports.ingest": 0,
        "ops.ports.score": 0,
        "ops.ports.finetune": 0,
    }


def ops_urls(workers: list[WorkerProcess]) -> dict[str, str]:
    """Role (the log name for a second worker of a role) -> ``http://host:port`` of each worker's operations
    endpoint, for those that logged one."""
    out = {}
    for w in workers:
        url = w.ops_url()
        if url is not None:
            out[w.log_path.stem] = url
    return out


class OutputCollector:
    """Reads a pipeline's recommendations and dead-letter topics from the beginning (no consumer group).

    Use as ``async with OutputCollector(...) as out:`` and call :meth:`poll` repeatedly. ``recs`` maps each event
    id to the FIRST recommendation seen for it (the decoded JSON record plus ``received_ts``, epoch s); later
    copies (at-least-once redelivery) are counted in ``duplicates`` only.

    Args:
        bootstrap: the broker address.
        scfg: the pipeline's stream config (topic names and partitions).
        client_id: the consumer's client id.
        fetch_max_wait_ms: broker-side wait of a fetch (ms).

    Attributes:
        recs, recommendations_out (records read), duplicates, dead_lettered, fallback (first copies that were
        the popularity fallback).
    """

    def __init__(self, bootstrap: str, scfg: Any, *, client_id: str, fetch_max_wait_ms: int = 100) -> None:
        self.bootstrap, self.scfg = bootstrap, scfg
        self.client_id, self.fetch_max_wait_ms = client_id, fetch_max_wait_ms
        self.recs: dict[Any, dict[str, Any]] = {}
        self.recommendations_out = self.duplicates = self.dead_lettered = self.fallback = 0

    @property
    def answered(self) -> int:
        """Clicks answered so far: distinct event ids with a recommendation, plus dead letters."""
        return len(self.recs) + self.dead_lettered

    async def __aenter__(self) -> OutputCollector:
        from aiokafka import AIOKafkaConsumer, TopicPartition  # noqa: PLC0415

        from adrec_stream.broker.security import security_of  # noqa: PLC0415

        t = self.scfg.topics
        self.consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap.split(","), **security_of(self.scfg).aiokafka(),
                                         enable_auto_commit=False, group_id=None,
                                         fetch_max_wait_ms=self.fetch_max_wait_ms, auto_offset_reset="earliest",
                                         client_id=self.client_id)
        await self.consumer.start()
        try:
            tps = [TopicPartition(t.recommendations.name, p) for p in range(t.recommendations.partitions)]
            tps += [TopicPartition(t.dead_letter.name, p) for p in range(t.dead_letter.partitions)]
            self.consumer.assign(tps)
            await self.consumer.seek_to_beginning(*tps)
        except BaseException:
            await self.consumer.stop()
            raise
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.consumer.stop()

    async def poll(self, timeout_ms: int = 200) -> int:
        """Read what arrived within ``timeout_ms``; returns the number of records read (0: nothing new)."""
        import orjson  # noqa: PLC0415

        batch = await self.consumer.getmany(timeout_ms=timeout_ms, max_records=5000)
        now = time.time()
        n = 0
        for tp, msgs in batch.items():
            n += len(msgs)
            if tp.topic == self.scfg.topics.dead_letter.name:
                self.dead_lettered += len(msgs)
                continue
            for m in msgs:
                self.recommendations_out += 1
                v = orjson.loads(m.value)
                eid = v.get("event_id")
                if eid in self.recs:
                    self.duplicates += 1
                    continue
                v["received_ts"] = now
                self.recs[eid] = v
                self.fallback += bool(v.get("fallback"))
        return n
