"""Measure how far a 2-rank (gloo, CPU) fine-tune round is from the single-process round on the same window.

For each seed and configuration it runs adrec_stream.bench.finetune_ddp.compare_rounds and prints one JSON line;
the numbers behind the tolerance of tests/test_distributed_finetune.py and docs/incremental.md. Configurations:
realistic (the tiny model's dropout 0.1 / 0.3, lambda 0.001), deterministic (dropout 0, lambda 0: no random draw
changes the training), and two references: the single-process round against itself with another finetune.seed
(the training noise floor), and against itself with half the batch (what a DDP whose ranks did not average their
gradients would come close to).

    .venv/bin/python scripts/ddp_round_compare.py [--seeds 2025 7 11] [--data ../shared/data/events/ml-100k/u.data]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from adrec_stream.bench.finetune_ddp import compare_rounds

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "events" / "ml-100k" / "u.data"
ROUND = {"finetune.max_steps": 10, "finetune.batch_size": 32}
DETERMINISTIC = {"dropout": 0.0, "emb_dropout": 0.0, "lambda_uncertainty": 0.0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[2025, 7, 11])
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--only", nargs="*", default=None, help="configuration names to run")
    args = p.parse_args()
    runs = {
        "realistic_ddp2": {"nproc": 2},
        "deterministic_ddp2": {"nproc": 2, "model_overrides": DETERMINISTIC},
        "realistic_single_other_seed": {"nproc": 1, "second_overrides": "seed+1"},
        "deterministic_single_half_batch": {"nproc": 1, "model_overrides": DETERMINISTIC,
                                            "second_overrides": {"finetune.batch_size": 16}},
    }
    for name, kw in runs.items():
        if args.only and name not in args.only:
            continue
        for seed in args.seeds:
            kw2 = dict(kw)
            if kw2.get("second_overrides") == "seed+1":
                kw2["second_overrides"] = {"finetune.seed": seed + 1}
            t0 = time.perf_counter()
            r = compare_rounds(args.data, seed=seed, overrides=ROUND, **kw2)
            keep = {k: r[k] for k in ("score_max_abs_diff", "score_scale", "param_max_abs_diff", "heldout_ndcg10_diff",
                                      "users_scored")}
            print(json.dumps({"config": name, "seed": seed, **keep, "single": r["single"], "second": r["distributed"],
                              "wall_s": round(time.perf_counter() - t0, 1)}), flush=True)


if __name__ == "__main__":
    main()
