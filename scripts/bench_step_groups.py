#!/usr/bin/env python
"""Scoring time with the reverse steps' small length groups merged into larger attention calls vs not, side by side.

    .venv/bin/python scripts/bench_step_groups.py [--dataset ../shared/data/adrec/baby] [--threads 1]
        [--users 4096] [--batch 1024] [--rounds 6] [--merged-rows 256]

``model.score`` (full ranking, T = 32 reverse steps, a freshly initialised default ADRec: speed does not depend on
the weights) on the split's test histories, in batches, once with ``MIN_STEP_GROUP_ROWS = --merged-rows`` (adjacent
length groups share one attention call per step until it holds that many rows; shorter rows get masked padding
keys) and once with 1 (every length group its own call, the default). The two sides alternate per round and
the order flips every round, so that load from other processes hits both alike; one warm-up batch first. Prints
one JSON object: per round the seconds of each side, ``ratio`` = merged / unmerged (above 1: unmerged faster),
``median_ratio``, the thread count and the 1-minute load average. Figures: docs/benchmarks.md ("Scoring").
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

import adrec_stream.model.denoiser as denoiser_module
from adrec_stream.bench.common import fresh_model, load_avg_1m, timed
from adrec_stream.data.adrec_pkl import load_adrec_dataset
from adrec_stream.data.batching import left_pad, loo_histories
from adrec_stream.errors import DataFileError
from adrec_stream.model import ModelConfig

CPU = torch.device("cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="../shared/data/adrec/baby", help="dataset.pkl or its folder")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--users", type=int, default=4096, help="test users scored per side and round (default 4096)")
    parser.add_argument("--batch", type=int, default=1024, help="users per model.score call (default 1024)")
    parser.add_argument("--rounds", type=int, default=6, help="alternating rounds (default 6)")
    parser.add_argument("--merged-rows", type=int, default=256, help="MIN_STEP_GROUP_ROWS of the merged side (256)")
    args = parser.parse_args()
    for name in ("threads", "users", "batch", "rounds", "merged_rows"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1 (got {getattr(args, name)})")
    try:
        ds = load_adrec_dataset(args.dataset)
    except DataFileError as err:
        parser.error(str(err))
    torch.set_num_threads(args.threads)
    model = fresh_model(ds.n_items, ModelConfig(), 2025, CPU).eval()
    width = model.cfg.max_len
    hists, _ = loo_histories(ds.train, ds.val, ds.test, "test", width)
    hists = hists[: args.users]
    batches = [left_pad(hists[i : i + args.batch], width) for i in range(0, len(hists), args.batch)]
    gen = torch.Generator().manual_seed(1)
    sides = {"merged": args.merged_rows, "unmerged": 1}
    rounds = []
    with torch.inference_mode():
        model.score(batches[0], generator=gen)  # warm-up
        for r in range(args.rounds):
            seconds = {}
            for side in (("merged", "unmerged") if r % 2 == 0 else ("unmerged", "merged")):
                denoiser_module.MIN_STEP_GROUP_ROWS = sides[side]
                seconds[side] = sum(timed(lambda b=b: model.score(b, generator=gen), CPU) for b in batches)
            rounds.append({"merged_s": round(seconds["merged"], 3), "unmerged_s": round(seconds["unmerged"], 3),
                           "ratio": round(seconds["merged"] / seconds["unmerged"], 3)})
    print(json.dumps({"dataset": ds.name, "threads": args.threads, "users": len(hists), "batch": args.batch,
                      "merged_rows": args.merged_rows, "rounds": rounds,
                      "median_ratio": round(statistics.median(r["ratio"] for r in rounds), 3),
                      "load_avg_1m": load_avg_1m()}))


if __name__ == "__main__":
    main()
