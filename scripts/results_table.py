#!/usr/bin/env python
"""Regenerate the results table of docs/results.md: every row of configs/results-rows.yaml over several seeds.

    .venv/bin/python scripts/results_table.py run [ROW ...] [--seeds 2025,1,2] [--threads 1]
    .venv/bin/python scripts/results_table.py table [--results var/results/rows.jsonl]
    .venv/bin/python scripts/results_table.py plan ROW [--seeds ...]      # print the commands only

`run` trains (skipping finished steps), evaluates val and test, and appends one JSON line per row and seed to
var/results/rows.jsonl; `table` prints the markdown table (mean ± std over the seeds, ×100). On 2 CPU cores one seed
of every row takes about 6 hours (docs/results.md gives each row's time); on a CUDA machine the same commands run
unchanged. Logic: adrec_stream/evaluation/results_table.py.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from adrec_stream.errors import ConfigError
from adrec_stream.evaluation.results_table import (
    DEFAULT_SEEDS,
    default_cli,
    load_rows,
    markdown_table,
    plan,
    read_results,
    run_row,
    summarise,
)

ROOT = Path(__file__).resolve().parent.parent


def _seeds(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds takes comma-separated integers, got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    summary, _, usage = __doc__.partition("\n\n")
    ap = argparse.ArgumentParser(description=summary,
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=usage)
    ap.add_argument("command", choices=["run", "plan", "table"],
                    help="run: train and evaluate the rows; plan: print their commands only; table: print the markdown "
                         "table of the results file")
    ap.add_argument("rows", nargs="*", metavar="ROW", help="row names (default: every row of the rows file)")
    ap.add_argument("--seeds", type=_seeds, default=list(DEFAULT_SEEDS), help="comma-separated (default 2025,1,2)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per command (default 1)")
    ap.add_argument("--rows-file", type=Path, default=ROOT / "configs/results-rows.yaml",
                    help="the rows (default configs/results-rows.yaml)")
    ap.add_argument("--data-root", type=Path, default=ROOT.parent / "shared/data/adrec",
                    help="folder of the datasets the rows name (default ../shared/data/adrec)")
    ap.add_argument("--runs", type=Path, default=ROOT / "runs/results", help="run folders (default runs/results)")
    ap.add_argument("--results", type=Path, default=ROOT / "var/results/rows.jsonl",
                    help="JSON-lines file that run appends to and table reads (default var/results/rows.jsonl)")
    args = ap.parse_args(argv)
    # paths given on the command line are relative to the caller's directory, not to ROOT
    for key in ("rows_file", "data_root", "runs", "results"):
        setattr(args, key, getattr(args, key).resolve())
    os.chdir(ROOT)  # the rows' --config paths are relative to the repository root
    try:
        if args.command == "table":
            print(markdown_table(summarise(read_results(args.results))))
            return 0
        rows = load_rows(args.rows_file)
        names = args.rows or list(rows)
        kw = {"data_root": args.data_root, "runs": args.runs, "threads": args.threads, "cli": default_cli()}
        for name in names:
            for seed in args.seeds:
                if args.command == "plan":
                    for cmd in plan(rows, name, seed, **kw):
                        print(shlex.join(cmd.argv))
                else:
                    print(f"== {name} seed {seed}", flush=True)
                    run_row(rows, name, seed, results=args.results, **kw)
    except ConfigError as e:
        print(f"results_table: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
