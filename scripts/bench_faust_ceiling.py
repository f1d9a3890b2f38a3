#!/usr/bin/env python
"""What Faust itself allows: ingest workers whose handler does nothing, against the real ingest workers, side by side.

    .venv/bin/python scripts/bench_faust_ceiling.py [--events 100000] [--workers 1,2] \
        [--data ../shared/data/events/ml-100k/u.data]

For each worker count, in one run: ``adrec-stream bench ingest`` (the real ingest workers: decode, sequence updates,
changelog, RocksDB) and then the same worker processes - same Faust app, consumer settings, natural batching,
direct delivery, per-event acknowledgement and offset commits - with ``IngestHandler.handle`` replaced by a
no-op that publishes one small marker record per batch (its record count and time) and reports every partition of
the batch as stored. The no-op rate is the ceiling of this Faust path on this machine: the real workers can only
approach it. Rates are the records of the batches after the first over the span between the first and the last
batch (the formula of ``bench ingest``). Prints one JSON object; figures: docs/benchmarks.md ("Ingest").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]


def run_noop_worker(config: str) -> int:
    """Worker mode: the ingest worker with a no-op handler (one marker record per batch)."""
    from adrec_stream.cli import main
    from adrec_stream.stream import ingest

    async def handle(self, records):  # noqa: ANN001, ANN202 - replaces IngestHandler.handle
        self.stats.received += len(records)
        marker = orjson.dumps({"n": len(records), "t": time.time()})
        await (await self.publisher.send(self.cfg.topics.sequence_updates.name, b"batch", marker))
        return {r.partition for r in records}

    ingest.IngestHandler.handle = handle
    return main(["worker", "ingest", "--config", config])


async def _marker_span(bootstrap: str, topic: str, partitions: int, n: int, timeout_s: float) -> tuple[int, int, float]:
    """(records seen, records of the batches after the first, last - first batch time in s) from the markers."""
    from adrec_stream.bench.stream_bench import _from_start

    async with _from_start(bootstrap, topic, partitions) as consumer:
        marks: list[tuple[float, int]] = []
        last_progress = time.time()
        while sum(m[1] for m in marks) < n and time.time() - last_progress < timeout_s:
            batch = await consumer.getmany(timeout_ms=500)
            for msgs in batch.values():
                for m in msgs:
                    v = orjson.loads(m.value)
                    marks.append((v["t"], v["n"]))
                last_progress = time.time() if msgs else last_progress
    marks.sort()
    if len(marks) < 2:
        return sum(m[1] for m in marks), 0, 0.0
    return sum(m[1] for m in marks), sum(m[1] for m in marks[1:]), marks[-1][0] - marks[0][0]


def noop_rate(data: str, events: int, n_workers: int, run_root: Path) -> dict:
    """Events/s of ``n_workers`` no-op ingest workers over ``events`` clicks of ``data`` produced first."""
    from adrec_stream.bench.common import load_avg_1m, sig
    from adrec_stream.bench.stream_bench import _clicks_from, _Pipeline
    from adrec_stream.stream.local import READY_MARKERS, WorkerProcess, wait_ready
    from adrec_stream.stream.replay import produce_clicks

    clicks = _clicks_from(data, events)
    with _Pipeline(run_root / f"noop-{n_workers}", {}) as pipe:
        bootstrap = pipe.start_broker()
        t = pipe.scfg.topics
        asyncio.run(produce_clicks(bootstrap, t.clicks.name, clicks, progress=False))
        (pipe.run_dir / "logs").mkdir(exist_ok=True)
        workers = []
        for i in range(n_workers):
            w = WorkerProcess("ingest", pipe.run_dir / "stream.yaml", pipe.run_dir / "logs", [], log_name=f"noop-{i}")
            w.cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(pipe.run_dir / "stream.yaml")]
            pipe.callback(w.stop)
            w.start()
            workers.append(w)
        wait_ready(workers, READY_MARKERS, 120.0)
        seen, later, span = asyncio.run(_marker_span(bootstrap, t.sequence_updates.name, t.sequence_updates.partitions,
                                                     events, timeout_s=30.0))
    return {"workers": n_workers, "handled": seen, "events_per_s": sig(later / span) if span > 0 else None,
            "load_avg": load_avg_1m()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000, help="clicks produced per run (default 100000)")
    parser.add_argument("--workers", default="1,2", help="worker counts (default 1,2)")
    parser.add_argument("--data", default="../shared/data/events/ml-100k/u.data", help="interaction log")
    parser.add_argument("--run-dir", default="var/bench-ceiling", help="brokers' and workers' files (replaced)")
    parser.add_argument("--worker", metavar="CONFIG", help=argparse.SUPPRESS)  # the no-op worker process itself
    args = parser.parse_args()
    if args.worker:
        sys.exit(run_noop_worker(args.worker))
    from adrec_stream.bench.common import load_avg_1m
    from adrec_stream.bench.stream_bench import bench_ingest

    counts = tuple(int(x) for x in args.workers.split(","))
    run_root = Path(args.run_dir)
    out: dict = {"events": args.events, "load_avg_start": load_avg_1m(), "rows": []}
    for n in counts:
        real = bench_ingest(args.data, events=args.events, workers=(n,), run_root=run_root)["runs"][0]
        noop = noop_rate(args.data, args.events, n, run_root)
        out["rows"].append({"workers": n, "ingest_events_per_s": real["events_per_s"],
                            "noop_handler_events_per_s": noop["events_per_s"], "noop_handled": noop["handled"],
                            "ingest_to_noop": round(real["events_per_s"] / noop["events_per_s"], 3)
                            if real["events_per_s"] and noop["events_per_s"] else None,
                            "load_avg": [real["load_avg"], noop["load_avg"]]})
    out["load_avg_end"] = load_avg_1m()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
