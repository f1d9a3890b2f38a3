"""Failover of an ingest partition to another host, with and without standby replicas; changelog restore speed.

For each setting (``state.standby_replicas`` off, then on) on a private embedded broker (Tansu): two ingest worker
processes A and B with their own ``state_dir`` (two hosts) split the 2 clicks partitions; ``--users`` users with
``--clicks-per-user`` clicks each are ingested (the state to move); then clicks keep flowing at ``--rate`` clicks/s,
A is killed with SIGKILL, and the script measures

- ``failover_s``: SIGKILL of A -> the first click of one of A's partitions applied by B (its sequence update's
  ``ingest_ts``); includes the consumer group noticing A is gone (session timeout 6 s on Tansu) and the rebalance,
- ``restore_s``, ``restore_records``, ``restore_users``: B's ``changelog_restored`` line of A's partition;
  ``restore_records_per_s`` and ``restore_distinct_users_per_s`` (the moved partition's users / ``restore_s``) are
  the restore speed from the changelog (Tansu does not compact, so there are more records than users).

Prints one JSON object. ``python scripts/bench_failover.py [--users 30000] [--clicks-per-user 2] [--rate 200]``
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent


def _events(path: Path, event: str) -> list[dict]:
    out = []
    for ln in path.read_text(errors="replace").splitlines():
        if f'"event": "{event}"' in ln:
            out.append(json.loads(ln[ln.index("{"):]))
    return out


def _wait(cond, timeout_s: float, what: str) -> None:
    deadline = time.time() + timeout_s
    while not cond():
        if time.time() > deadline:
            raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.1)


def _committed(bootstrap: str, group: str, topic: str, parts: int) -> dict[int, int | None]:
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        return {p: c.committed(TopicPartition(topic, p)) for p in range(parts)}
    finally:
        c.close()


def run_once(bootstrap: str, broker_cfg: dict, work: Path, tag: str, standby: bool, args: argparse.Namespace) -> dict:
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    from adrec_stream.broker.admin import ensure_topics
    from adrec_stream.data.events import Interaction
    from adrec_stream.state.partitioned import partition_for_key
    from adrec_stream.stream.config import StreamConfig
    from adrec_stream.stream.events import encode_click

    cfg = StreamConfig.model_validate({
        "broker": broker_cfg,
        "topics": {"clicks": {"name": f"{tag}-clicks", "partitions": 2},
                   "recommendations": {"name": f"{tag}-recs", "partitions": 2},
                   "dead_letter": {"name": f"{tag}-dead", "partitions": 1},
                   "sequence_updates": {"name": f"{tag}-updates", "partitions": 2}},
        "groups": {"ingest": f"{tag}-ingest"}, "window": 50, "state": {"standby_replicas": standby},
        "ops": {"ports": {"ingest": 0, "score": 0, "finetune": 0}},
    })
    ensure_topics(bootstrap, cfg.topics.all())
    cfg_path = work / f"{tag}.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    topic, n_parts = cfg.topics.clicks.name, 2
    procs, logs = {}, {}
    for name in ("a", "b"):
        logs[name] = work / f"{tag}-{name}.log"
        with open(logs[name], "wb") as f:
            procs[name] = subprocess.Popen(
                [sys.executable, "-m", "workers.ingest", "--config", str(cfg_path), "--set",
                 f"state_dir={work / f'{tag}-state-{name}'}"], stdout=f, stderr=subprocess.STDOUT, cwd=REPO,
                env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        def split() -> bool:
            last = [_events(logs[n], "partitions_assigned")[-1:] for n in ("a", "b")]
            return all(x and x[0]["partitions"] for x in last)

        _wait(split, 90, "A and B to split the partitions")
        a_parts = sorted(int(p.rsplit(":", 1)[1]) for p in _events(logs["a"], "partitions_assigned")[-1]["partitions"])

        # the state to move: users x clicks, keyed by user id
        producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, batch_size=1 << 20)
        ends = [0] * n_parts
        t0 = time.time()
        for k in range(args.clicks_per_user):
            for u in range(args.users):
                user = f"user{u}"
                producer.send(topic, key=user.encode(),
                              value=encode_click(Interaction(user, str((u * 7 + k) % 3000 + 1), 1e9 + k, f"p{k}-{u}")))
                ends[partition_for_key(user.encode(), n_parts)] += 1
        producer.flush(120)
        _wait(lambda: _committed(bootstrap, cfg.groups.ingest, topic, n_parts) == dict(enumerate(ends)), 600,
              "the preload to be applied")
        preload_s = time.time() - t0
        time.sleep(2.0)  # standby: let B's replica catch up with the last batches

        stop = threading.Event()

        def paced() -> None:
            i = 0
            while not stop.is_set():
                user = f"user{i % args.users}"
                producer.send(topic, key=user.encode(),
                              value=encode_click(Interaction(user, "1", 2e9 + i, f"live-{i}")))
                i += 1
                time.sleep(1.0 / args.rate)

        live = threading.Thread(target=paced, daemon=True)
        live.start()
        time.sleep(2.0)
        t_kill = time.time()
        procs["a"].send_signal(signal.SIGKILL)
        procs["a"].wait(10)

        consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                 fetch_max_wait_ms=50, auto_offset_reset="earliest")
        tps = [TopicPartition(cfg.topics.sequence_updates.name, p) for p in range(n_parts)]
        consumer.assign(tps)
        first = None
        deadline = time.time() + 120
        while first is None and time.time() < deadline:
            for recs in consumer.poll(timeout_ms=200).values():
                for r in recs:
                    v = json.loads(r.value)
                    if v["source"]["partition"] in a_parts and v["ingest_ts"] > t_kill:
                        first = v["ingest_ts"] if first is None else min(first, v["ingest_ts"])
        consumer.close()
        stop.set()
        live.join(5)
        producer.close(5)
        if first is None:
            raise TimeoutError("no click of A's partitions applied by B within 120 s of the kill")
        restores = [r for r in _events(logs["b"], "changelog_restored") if r["partition"] in a_parts]
        moved = restores[-1]
        # distinct users of the moved partitions (Tansu does not compact: the changelog holds a record per user and
        # batch, so records and windows written exceed this)
        moved_users = sum(partition_for_key(f"user{u}".encode(), n_parts) in a_parts for u in range(args.users))
        return {"standby_replicas": standby, "users": args.users, "preload_clicks": sum(ends),
                "preload_s": round(preload_s, 1), "a_partitions": a_parts, "failover_s": round(first - t_kill, 2),
                "restore_s": moved["seconds"], "restore_records": moved["records"], "restore_users": moved["users"],
                "restore_users_per_s": moved["users_per_s"],
                "restore_records_per_s": round(moved["records"] / max(moved["seconds"], 1e-9), 1),
                "moved_partition_users": moved_users,
                "restore_distinct_users_per_s": round(moved_users / max(moved["seconds"], 1e-9), 1)
                if moved["records"] else None,
                "restored_offset": moved["restored_offset"], "applied_offset": moved["applied_offset"]}
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=30000)
    parser.add_argument("--clicks-per-user", type=int, default=2)
    parser.add_argument("--rate", type=float, default=200.0, help="live clicks/s around the kill")
    args = parser.parse_args()

    from adrec_stream.broker.config import BrokerConfig
    from adrec_stream.broker.process import start_broker, stop_broker

    with tempfile.TemporaryDirectory(prefix="bench-failover-") as d:
        work = Path(d)
        bcfg = BrokerConfig(data_dir=str(work / "broker"), pid_file=str(work / "broker" / "tansu.pid"),
                            log_file=str(work / "broker" / "tansu.log"))
        handle = start_broker(bcfg, port=0, owned=True)
        try:
            broker = {**bcfg.model_dump(), "port": handle.port, "tansu_compat": True}
            runs = [run_once(handle.bootstrap, broker, work, f"fo{int(s)}", s, args) for s in (False, True)]
        finally:
            stop_broker(bcfg)
    load = os.getloadavg()[0]
    print(json.dumps({"runs": runs, "load_1min": round(load, 2), "cpus": os.cpu_count()}))


if __name__ == "__main__":
    main()
