"""The embedded broker's CPU cost per record as its log grows (why `bench latency --fresh-broker-per-rate` exists).

A private embedded broker (the same start-up as the benchmarks' pipelines); one producer sends 1 KB records to one
partition at a fixed rate in small batches (`linger_ms` 2, like the workers' `batch.produce_linger_s`), while one
consumer follows the log end with the workers' fetch wait (20 ms). Every `--window-s` seconds the broker process's
CPU seconds per second are sampled from /proc. With a constant rate, a flat series means a constant cost per record;
a rising one means the broker's cost per record grows with the data it holds.

    .venv/bin/python scripts/bench_broker_growth.py --rate 500 --windows 8 --window-s 10

Prints one JSON object: the rate sent, the records stored at the end of each window and the broker's CPU s/s in
it, and the ratio of the last window's CPU to the first's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

from adrec_stream.bench.common import load_avg_1m, machine_info, process_cpu_s, sig
from adrec_stream.bench.stream_bench import _Pipeline

TOPIC = "broker-growth"


async def _run(bootstrap: str, broker_pid: int, rate: float, windows: int, window_s: float) -> list[dict]:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.structs import TopicPartition

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=2)
    await producer.start()
    await producer.send_and_wait(TOPIC, b"first", partition=0)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, fetch_max_wait_ms=20, enable_auto_commit=False)
    await consumer.start()
    consumer.assign([TopicPartition(TOPIC, 0)])
    received, stop = 0, asyncio.Event()

    async def follow() -> None:
        nonlocal received
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=100)
            received += sum(len(v) for v in batch.values())

    follower = asyncio.create_task(follow())
    value, sent, out = b"v" * 1000, 1, []
    burst, tick = 5, 5 / rate  # 5 records every 5/rate seconds
    try:
        for _ in range(windows):
            cpu0, t0 = process_cpu_s(broker_pid), time.perf_counter()
            next_at = t0
            while time.perf_counter() - t0 < window_s:
                for _ in range(burst):
                    await producer.send(TOPIC, value, partition=0)
                sent += burst
                next_at += tick
                await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            elapsed = time.perf_counter() - t0
            out.append({"records_stored": sent, "records_received": received,
                        "broker_cpu_s_per_s": sig((process_cpu_s(broker_pid) - cpu0) / elapsed)})
    finally:
        stop.set()
        await follower
        await consumer.stop()
        await producer.stop()
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the measurement and print its JSON; returns the exit code."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=500.0, help="records per second (default 500)")
    ap.add_argument("--windows", type=int, default=8, help="sampling windows (default 8)")
    ap.add_argument("--window-s", type=float, default=10.0, help="seconds per window (default 10)")
    args = ap.parse_args(argv)
    if args.rate <= 0 or args.windows < 2 or args.window_s <= 0:
        ap.error("--rate and --window-s must be > 0 and --windows >= 2")
    with tempfile.TemporaryDirectory() as tmp, _Pipeline(Path(tmp) / "growth", {}) as pipe:
        bootstrap = pipe.start_broker()
        pid = int(Path(pipe.scfg.broker.pid_file).read_text())
        machine = machine_info()
        series = asyncio.run(_run(bootstrap, pid, args.rate, args.windows, args.window_s))
    first, last = series[0]["broker_cpu_s_per_s"], series[-1]["broker_cpu_s_per_s"]
    print(json.dumps({"benchmark": "broker_growth", "rate_per_s": args.rate, "window_s": args.window_s,
                      "windows": series, "last_to_first_cpu": sig(last / first) if first else None,
                      "machine": machine, "load_avg_end": load_avg_1m()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
