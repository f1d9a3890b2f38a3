#!/usr/bin/env python
"""What Faust itself allows: ingest workers whose handler does nothing, against the real ingest workers, side by side.

    .venv/bin/python scripts/bench_faust_ceiling.py [--events 100000] [--workers 1,2] \
        [--data ../shared/data/events/ml-100k/u.data]

Run from the repository root (``../shared`` beside it). For each worker count, in one run, ``--rounds`` times
alternating (the order flips every round): ``adrec-stream bench ingest`` (the real ingest workers: decode, sequence
updates, changelog, RocksDB), and the same worker processes - same Faust app, consumer settings, natural batching,
direct delivery, per-event acknowledgement and offset commits - with ``IngestHandler.handle`` replaced by a
no-op that publishes one marker record per batch (the batch's partitions and offsets, and the time) and reports
every partition of the batch as stored. The no-op rate is the ceiling of this Faust path on this machine: the real
workers can only approach it. Rates are the records of the batches after the first over the span between the
first and the last batch (the formula of ``bench ingest``; a re-delivered record counts once). Prints one JSON
object with every round's rates and the median ratio; figures: docs/benchmarks.md ("Ingest").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
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
        marker = orjson.dumps({"records": [[r.partition, r.offset] for r in records], "t": time.time()})
        await (await self.publisher.send(self.cfg.topics.sequence_updates.name, b"batch", marker))
        return {r.partition for r in records}

    ingest.IngestHandler.handle = handle
    return main(["worker", "ingest", "--config", config])


def noop_rate(data: str, events: int, n_workers: int, run_root: Path) -> dict:
    """Events/s of ``n_workers`` no-op ingest workers over ``events`` clicks of ``data`` produced first."""
    from adrec_stream.bench.common import load_avg_1m, sig
    from adrec_stream.bench.stream_bench import _clicks_from, _Pipeline, first_seen_span
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
        # a record handled twice (re-delivered after a rebalance) counts once, at its first batch
        seen, later, span = asyncio.run(first_seen_span(
            bootstrap, t.sequence_updates.name, t.sequence_updates.partitions, events, 30.0,
            lambda marker: (((p, o), marker["t"]) for p, o in marker["records"])))
    return {"workers": n_workers, "handled": seen, "events_per_s": sig(later / span) if span > 0 else None,
            "load_avg": load_avg_1m()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000, help="clicks produced per run (default 100000)")
    parser.add_argument("--workers", default="1,2", help="worker counts (default 1,2)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per worker count (default 3)")
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
    out: dict = {"events": args.events, "rounds": args.rounds, "load_avg_start": load_avg_1m(), "rows": []}
    for n in counts:
        real, noop, loads, counts = [], [], [], []
        for r in range(args.rounds):  # the two sides alternate, the order flipping every round
            for side in (("ingest", "noop") if r % 2 == 0 else ("noop", "ingest")):
                if side == "ingest":
                    run = bench_ingest(args.data, events=args.events, workers=(n,), run_root=run_root)["runs"][0]
                    real.append(run["events_per_s"])
                    counts.append({"side": side, "records": run["applied"]})
                else:
                    run = noop_rate(args.data, args.events, n, run_root)
                    noop.append(run["events_per_s"])
                    counts.append({"side": side, "records": run["handled"]})
                loads.append(run["load_avg"])
        ratios = [a / b for a, b in zip(real, noop, strict=True) if a and b]
        out["rows"].append({"workers": n, "ingest_events_per_s": real, "noop_handler_events_per_s": noop,
                            "median_ingest_to_noop": round(statistics.median(ratios), 3) if ratios else None,
                            "median_noop_events_per_s": statistics.median([x for x in noop if x] or [0]),
                            "records_seen": counts, "complete": all(c["records"] == args.events for c in counts),
                            "load_avg": loads})
    out["load_avg_end"] = load_avg_1m()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
