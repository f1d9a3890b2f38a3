"""Embedded broker management (start/stop/status, PID and log files, topics) and the Tansu compat layer."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from adrec_stream.broker import cli as broker_cli
from adrec_stream.broker.admin import ensure_topics, list_topics, merge_end_offsets, true_end_offsets
from adrec_stream.broker.process import effective_bootstrap, running_broker, start_broker, stop_broker
from adrec_stream.errors import BrokerError
from adrec_stream.stream.compat import consumer_timing
from adrec_stream.stream.config import BrokerConfig, StreamConfig, TopicConfig

pytestmark = pytest.mark.broker


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "adrec_stream.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=60)


def test_cli_start_status_stop(tmp_path: Path, capsys):
    cfg_path = tmp_path / "stream.yaml"
    d = tmp_path / "b"
    cfg_path.write_text(yaml.safe_dump({
        "broker": {"data_dir": str(d), "pid_file": str(d / "tansu.pid"), "log_file": str(d / "tansu.log")},
        "topics": {"clicks": {"name": "clicks", "partitions": 3}},
    }))
    started = _cli("broker", "start", "--port", "0", "--config", str(cfg_path), cwd=tmp_path)
    try:
        assert started.returncode == 0, started.stderr
        info = json.loads(started.stdout)
        pid = int((d / "tansu.pid").read_text())
        assert info["pid"] == pid and info["started"] is True
        assert (d / "tansu.log").is_file()
        # status and a second start through the same subcommand module, in-process (each CLI process
        # start costs seconds of imports on a loaded 2-core machine)
        assert broker_cli.run(argparse.Namespace(action="status", port=None, config=str(cfg_path))) == 0
        status = json.loads(capsys.readouterr().out)
        assert status["running"] is True and status["reachable"] is True and status["pid"] == pid
        # --set like every other command (it was "unrecognized arguments"): another pid file, no broker there
        other = str(tmp_path / "other" / "tansu.pid")
        sets = [f"broker.data_dir={tmp_path / 'other'}", f"broker.pid_file={other}", "broker.port=1"]
        assert broker_cli.run(argparse.Namespace(action="status", port=None, config=str(cfg_path),
                                                 set=sets)) == broker_cli.EXIT_NOT_REACHABLE
        assert json.loads(capsys.readouterr().out)["pid_file"] == other
        # clients of the same config find the broker started on a free port (no --set broker.port needed)
        scfg = StreamConfig.model_validate(yaml.safe_load(cfg_path.read_text()))
        assert scfg.broker.port == 9092 and status["bootstrap"] != "127.0.0.1:9092"
        assert effective_bootstrap(scfg) == status["bootstrap"] == info["bootstrap"]
        # the changelog follows the clicks topic's partition count (co-partitioned)
        assert status["topics"] == {"clicks": 3, "recommendations": 4, "clicks-dead-letter": 1,
                                    "sequence-updates": 4, "model-versions": 1, "clicks-changelog": 3}
        with pytest.raises(BrokerError, match="already running"):
            broker_cli.run(argparse.Namespace(action="start", port=0, config=str(cfg_path)))
    finally:
        stopped = _cli("broker", "stop", "--config", str(cfg_path), cwd=tmp_path)
    assert stopped.returncode == 0 and json.loads(stopped.stdout)["stopped"] is True
    assert not (d / "tansu.pid").exists()
    stat = Path(f"/proc/{pid}/stat")
    assert not stat.exists() or stat.read_text().split(") ", 1)[1][0] == "Z"  # gone (or a zombie awaiting reaping)
    cfg = BrokerConfig(data_dir=str(d), pid_file=str(d / "tansu.pid"), log_file=str(d / "tansu.log"))
    assert running_broker(cfg) is None and stop_broker(cfg) == "not running"
    # status of a stopped broker: JSON says so, and the exit code is non-zero (health checks in scripts)
    assert broker_cli.run(argparse.Namespace(action="status", port=None, config=str(cfg_path))) == 3
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["running"] is False


def test_start_refuses_a_taken_port(broker, tmp_path: Path):
    cfg = BrokerConfig(data_dir=str(tmp_path), pid_file=str(tmp_path / "p"), log_file=str(tmp_path / "l"))
    with pytest.raises(BrokerError, match=f"port 127.0.0.1:{broker.port} is already in use"):
        start_broker(cfg, port=broker.port)
    assert running_broker(cfg) is None


def test_stale_pid_file_is_not_a_running_broker(tmp_path: Path):
    cfg = BrokerConfig(data_dir=str(tmp_path), pid_file=str(tmp_path / "tansu.pid"), log_file=str(tmp_path / "l"))
    (tmp_path / "tansu.pid").write_text(f"{os.getpid()}\n")  # alive, but not a tansu process
    assert running_broker(cfg) is None
    assert stop_broker(cfg) == "not running"
    assert not (tmp_path / "tansu.pid").exists()


def test_ensure_topics_creates_missing_only(broker):
    topics = [TopicConfig(name="ens-a", partitions=3), TopicConfig(name="ens-b", partitions=1)]
    assert ensure_topics(broker.bootstrap, topics) == ["ens-a", "ens-b"]
    assert ensure_topics(broker.bootstrap, topics) == []
    listed = list_topics(broker.bootstrap)
    assert listed["ens-a"] == 3 and listed["ens-b"] == 1


def test_unreachable_cluster_is_a_broker_error(tmp_path: Path):
    from adrec_stream.broker.process import free_port

    with pytest.raises(BrokerError, match="cannot reach a Kafka broker"):
        list_topics(f"127.0.0.1:{free_port()}", timeout_s=2.0)


def test_effective_bootstrap_embedded_vs_external(tmp_path: Path):
    d = tmp_path / "no-broker-here"
    emb = StreamConfig.model_validate({"broker": {"port": 19093, "data_dir": str(d), "pid_file": str(d / "tansu.pid")}})
    ext = StreamConfig.model_validate({"bootstrap_servers": "kafka-1:9092,kafka-2:9092", "broker": {"embedded": False}})
    assert effective_bootstrap(emb) == "127.0.0.1:19093"
    assert effective_bootstrap(ext) == "kafka-1:9092,kafka-2:9092"
    assert ext.broker.tansu_compat is False and emb.broker.tansu_compat is True


def test_consumer_timing_caps_only_with_compat():
    slow = {"session_timeout_s": 45, "heartbeat_interval_s": 3, "rebalance_timeout_s": 60, "fetch_max_wait_s": 0.5}
    on = consumer_timing(StreamConfig.model_validate({"consumer": slow, "broker": {"tansu_compat": True}}))
    off = consumer_timing(StreamConfig.model_validate({"consumer": slow, "broker": {"tansu_compat": False}}))
    assert (on.session_timeout_s, on.heartbeat_interval_s, on.rebalance_timeout_s, on.fetch_max_wait_s) == \
        (6.0, 1.5, 6.0, 0.1)
    assert (off.session_timeout_s, off.heartbeat_interval_s, off.rebalance_timeout_s, off.fetch_max_wait_s) == \
        (45.0, 3.0, 60.0, 0.5)


def test_merge_end_offsets_takes_the_larger():
    assert merge_end_offsets({0: 5, 1: 9, 2: 3}, {0: 12, 1: 9, 2: None}) == {0: 12, 1: 9, 2: 3}


def test_tansu_end_offset_bug_and_compat_fix(broker):
    """Tansu's ListOffsets(latest) returns (first offset of the last batch) + 1 for a multi-record batch;
    with compat the fetch high watermark gives the true end."""
    from kafka import KafkaProducer

    topic = "compat-end-offsets"
    ensure_topics(broker.bootstrap, [TopicConfig(name=topic, partitions=1)])
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=200, batch_size=1 << 20)
    for i in range(3):
        producer.send(topic, value=b"single-%d" % i).get(10)  # 3 one-record batches: offsets 0..2
    futures = [producer.send(topic, value=b"batched-%d" % i) for i in range(7)]  # one batch: offsets 3..9
    producer.flush()
    producer.close()
    assert {f.get(10).offset for f in futures} == set(range(3, 10))
    raw = true_end_offsets(broker.bootstrap, topic, compat=False)
    fixed = true_end_offsets(broker.bootstrap, topic, compat=True)
    assert fixed == {0: 10}
    # The bug this layer exists for; if a Tansu upgrade fixes it, this fails: then revisit tansu_compat.
    assert raw == {0: 4}


def test_owned_broker_dies_with_its_parent(tmp_path: Path):
    """A broker started with owned=True gets SIGTERM from the kernel when its parent is SIGKILLed."""
    import time

    d = tmp_path / "b"
    code = (
        "import sys, time\n"
        "from adrec_stream.broker.process import start_broker\n"
        "from adrec_stream.stream.config import BrokerConfig\n"
        f"cfg = BrokerConfig(data_dir={str(d)!r}, pid_file={str(d / 'p')!r}, log_file={str(d / 'l')!r})\n"
        "h = start_broker(cfg, port=0, owned=True)\n"
        "print(h.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    pid = int(parent.stdout.readline())
    parent.kill()
    parent.wait(10)
    deadline = time.time() + 10
    stat = Path(f"/proc/{pid}/stat")
    while stat.exists() and stat.read_text().split(") ", 1)[1][0] != "Z" and time.time() < deadline:
        time.sleep(0.1)
    assert not stat.exists() or stat.read_text().split(") ", 1)[1][0] == "Z"
