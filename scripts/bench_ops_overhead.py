"""What the operations metrics cost the score handler: CPU microseconds per sequence update with and without them.

Drives :class:`~adrec_stream.stream.score.ScoreHandler` directly (no broker) with a constant-time stand-in for the
model, so the difference is the handler's own bookkeeping: the Prometheus counters and latency histogram, the
last-minute windows and the online prequential judge (:class:`~adrec_stream.evaluation.prequential.OnlinePrequential`,
which hashes each 200-item window). Batches of 256 updates of 5,000 users with full windows, as under load.
CPU time (``time.process_time``), so other jobs on the machine change the figures less than wall time would; the
median of ``--repeats`` alternating runs. Prints one JSON object.

    python scripts/bench_ops_overhead.py [--batches 200] [--repeats 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time

import orjson

from adrec_stream.evaluation.prequential import OnlinePrequential
from adrec_stream.ops.metrics import WorkerMetrics
from adrec_stream.serving.recommender import Recommendation
from adrec_stream.stream.config import StreamConfig
from adrec_stream.stream.handler_support import ConsumedRecord, MemoryPublisher, WorkerStats
from adrec_stream.stream.score import ScoreHandler

BATCH = 256


class ConstantRecommender:
    """The same top-10 for every window (the model's own cost is not what is measured)."""

    version, reloads, refusals, registry = 1, 0, 0, None

    def recommend(self, windows, k, exclude_history=False, exclude_last=0):
        return [Recommendation([str(i) for i in range(k)], [1.0] * k, False, 1) for _ in windows]


def make_batches(n_batches: int, seed: int = 0) -> list[list[ConsumedRecord]]:
    rng = random.Random(seed)
    hist: dict[str, list[str]] = {}
    batches, off = [], 0
    for _ in range(n_batches):
        recs = []
        for _ in range(BATCH):
            u = f"u{rng.randrange(5000)}"
            h = hist[u] = (hist.get(u) or [str(rng.randrange(1, 2000)) for _ in range(199)])[-199:] + \
                [str(rng.randrange(1, 2000))]
            v = orjson.dumps({"user_id": u, "items": h, "event_id": f"e{off}", "event_ts": 1.0,
                              "produced_ts": time.time(), "ingest_ts": 1.0, "source": {"partition": 0, "offset": off}})
            recs.append(ConsumedRecord("updates", 0, off, u.encode(), v))
            off += 1
        batches.append(recs)
    return batches


async def cpu_us_per_update(batches: list, with_ops: bool) -> float:
    cfg = StreamConfig.model_validate({"scoring": {"deduplicate_users": False}})
    handler = ScoreHandler(cfg, ConstantRecommender(), MemoryPublisher(), WorkerStats(),
                           metrics=WorkerMetrics("score") if with_ops else None,
                           prequential=OnlinePrequential() if with_ops else None)
    t0 = time.process_time()
    for b in batches:
        await handler.handle(b)
    return (time.process_time() - t0) / (len(batches) * BATCH) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    batches = make_batches(args.batches)
    off, on = [], []
    for _ in range(args.repeats):
        off.append(asyncio.run(cpu_us_per_update(batches, False)))
        on.append(asyncio.run(cpu_us_per_update(batches, True)))
    base, with_ops = statistics.median(off), statistics.median(on)
    print(json.dumps({"updates": args.batches * BATCH, "repeats": args.repeats,
                      "handler_cpu_us_per_update": round(base, 1), "with_ops_cpu_us_per_update": round(with_ops, 1),
                      "ops_overhead_us_per_update": round(with_ops - base, 1), "ratio": round(with_ops / base, 2)}))


if __name__ == "__main__":
    main()
