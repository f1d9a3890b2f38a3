#!/usr/bin/env python
"""Training-step time with torch's Bernoulli dropout masks vs random-bits masks (``model.dropout_masks``), side by side.

    .venv/bin/python scripts/bench_dropout_masks.py [--dataset ../shared/data/adrec/ml-100k] [--threads 2]
        [--batch 128] [--steps 12]

For each model kind (the stage-1 SASRec and ADRec, the paper architecture with learned positions: d 128, L 50, 2
blocks, 4 heads, dropout 0.1 / 0.3), two models with the same initial weights, one per mask kind, take Adam steps
on the same real batches (every training window of the split, ``train.windows: all``, plainly shuffled), the two
alternating step by step (the order flips every step) so that load from other processes hits both alike. The first
2 steps of each are warm-up. Before that, the dropout op alone (p 0.1 on a (batch, 50, 128) tensor), interleaved
the same way. Prints one JSON object: ``dropout_op`` (median ms of each and ``op_ratio``), per kind the median
seconds per step of each mask kind and ``step_ratio`` = random_bits / bernoulli, with the thread count and the
1-minute load average. Figures:
docs/benchmarks.md ("Dropout masks").
"""

from __future__ import annotations

import argparse
import json
import os
import statistics

import numpy as np
import torch

from adrec_stream.bench.common import timed, train_step
from adrec_stream.data.adrec_pkl import load_adrec_dataset
from adrec_stream.data.batching import training_windows, window_batches
from adrec_stream.errors import DataFileError
from adrec_stream.model import ModelConfig, build_model
from adrec_stream.model.layers import random_bits_dropout

MASKS = ("bernoulli", "random_bits")
CPU = torch.device("cpu")
WARMUP = 2


def compare(kind: str, n_items: int, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> dict:
    """Median s/step of each mask kind for one model kind over ``batches`` (steps interleaved)."""
    sides = {}
    for masks in MASKS:
        torch.manual_seed(0)
        model = build_model(n_items, ModelConfig(kind=kind, positional=True, dropout_masks=masks)).train()
        sides[masks] = (model, torch.optim.Adam(model.parameters(), lr=1e-3), [])
    for i, (hist, tgt) in enumerate(batches):
        for masks in (MASKS if i % 2 else MASKS[::-1]):
            model, opt, times = sides[masks]
            times.append(timed(lambda m=model, o=opt, h=hist, t=tgt: train_step(m, o, h, t), CPU))
    med = {m: statistics.median(sides[m][2][WARMUP:]) for m in MASKS}
    return {f"{m}_s_per_step": round(med[m], 4) for m in MASKS} | {
        "step_ratio": round(med["random_bits"] / med["bernoulli"], 3)}


def compare_dropout_op(batch: int, repeats: int = 20) -> dict:
    """Median milliseconds of the dropout op alone (p 0.1, training mode) on a (batch, 50, 128) tensor, the size of
    a residual-stream dropout of a batch: ``torch.nn.functional.dropout`` (Bernoulli masks) vs
    :func:`random_bits_dropout`, interleaved."""
    x = torch.randn(batch, 50, 128)
    ops = {"bernoulli": lambda: torch.nn.functional.dropout(x, 0.1, True), "random_bits": lambda: random_bits_dropout(x, 0.1)}
    times: dict[str, list[float]] = {m: [] for m in MASKS}
    for i in range(repeats + WARMUP):
        for m in (MASKS if i % 2 else MASKS[::-1]):
            times[m].append(timed(ops[m], CPU))
    med = {m: statistics.median(times[m][WARMUP:]) for m in MASKS}
    return {"elements": x.numel()} | {f"{m}_ms": round(1000 * med[m], 3) for m in MASKS} | {
        "op_ratio": round(med["random_bits"] / med["bernoulli"], 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="../shared/data/adrec/ml-100k", help="dataset.pkl or its folder")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--batch", type=int, default=128, help="windows per batch (default 128)")
    parser.add_argument("--steps", type=int, default=12, help="timed steps per side after 2 warm-up steps (default 12)")
    args = parser.parse_args()
    for name in ("threads", "batch", "steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1 (got {getattr(args, name)})")
    torch.set_num_threads(args.threads)
    try:
        ds = load_adrec_dataset(args.dataset)
    except DataFileError as err:
        parser.error(str(err))
    windows = training_windows(ds.train, 50, "all")
    if args.batch > len(windows):
        parser.error(f"--batch {args.batch} is more than the {len(windows)} training windows of {ds.name}")
    rng = np.random.default_rng(0)
    batches: list[tuple[torch.Tensor, torch.Tensor]] = []
    while len(batches) < args.steps + WARMUP:
        batches += [b for b in window_batches(windows, args.batch, shuffle=True, bucket=False, rng=rng)
                    if b[0].shape[0] == args.batch]
    batches = batches[: args.steps + WARMUP]
    result = {"dataset": ds.name, "batch": args.batch, "threads": args.threads, "steps": args.steps,
              "load_avg_start": os.getloadavg()[0]}
    result["dropout_op"] = compare_dropout_op(args.batch)
    for kind in ("sasrec", "adrec"):
        result[kind] = compare(kind, ds.n_items, batches)
    result["load_avg_end"] = os.getloadavg()[0]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
