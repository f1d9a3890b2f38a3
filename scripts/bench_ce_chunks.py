#!/usr/bin/env python
"""Training-step time and peak RSS of ADRec with the unchunked vs the chunked full-softmax CE, side by side.

    .venv/bin/python scripts/bench_ce_chunks.py [--items 12101] [--threads 2] [--steps 12] [--batch 256]

Each variant (``train.ce_chunk_rows`` 0 and 2048) runs in its own process (peak RSS is per process), twice, in the
order 0, 2048, 0, 2048; a process times ``--steps`` Adam steps of ADRec (paper architecture, d 128, L 50) on random
full-length (B, L) batches after 3 warm-up steps. Prints one JSON object: per variant the median seconds per step of
each run and its peak RSS (MiB), and ``step_ratio`` = chunked / unchunked median. Figures: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys


def _one(items: int, chunk: int, threads: int, steps: int, batch: int) -> dict:
    import torch

    from adrec_stream.bench.common import timed, train_step
    from adrec_stream.model import ModelConfig, build_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model(items, ModelConfig(kind="adrec", hidden_size=128, max_len=50)).train()
    model.ce_chunk_rows = chunk
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(1)
    hist = torch.randint(1, items + 1, (batch, 50), generator=gen)
    tgt = torch.randint(1, items + 1, (batch, 50), generator=gen)
    times = []
    for step in range(steps + 3):
        seconds = timed(lambda: train_step(model, opt, hist, tgt), torch.device("cpu"))
        if step >= 3:
            times.append(seconds)
    return {"median_s": round(statistics.median(times), 4),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=12101, help="item table size N (default: beauty-sized 12,101)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(_one(args.items, args.child, args.threads, args.steps, args.batch)))
        return
    runs: dict[int, list[dict]] = {0: [], 2048: []}
    for chunk in (0, 2048, 0, 2048):
        cmd = [sys.executable, __file__, "--items", str(args.items), "--threads", str(args.threads), "--steps",
               str(args.steps), "--batch", str(args.batch), "--child", str(chunk)]
        runs[chunk].append(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout))
    med = {c: statistics.median(r["median_s"] for r in rs) for c, rs in runs.items()}
    print(json.dumps({"items": args.items, "batch": args.batch, "threads": args.threads, "steps": args.steps,
                      "load_avg": os.getloadavg()[0], "ce_chunk_rows_0": runs[0], "ce_chunk_rows_2048": runs[2048],
                      "step_ratio": round(med[2048] / med[0], 3)}))


if __name__ == "__main__":
    main()
