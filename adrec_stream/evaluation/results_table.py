"""The offline results table of ``docs/results.md``: run every row over several seeds, then mean ± std.

A row (``configs/results-rows.yaml``) names a dataset, a model and the ``adrec-stream train`` steps that produce its
run; :func:`plan` expands it into the commands for each seed (each train step with ``--seed S --output
RUNS/ROW/seed-S --threads N --no-progress``, then ``adrec-stream evaluate --split val`` and ``--split test`` of the
row's checkpoint); :func:`run_row` runs them and appends one JSON line per seed to ``rows.jsonl``; :func:`summarise`
and :func:`markdown_table` turn those lines into the table (metrics ×100, mean ± sample standard deviation over
the seeds present, n = number of seeds). Selection stays validation-only: each seed's checkpoint is whatever its
training selected on the validation split; the test figures are only read afterwards.

Usage (from the repository root)::

    .venv/bin/python scripts/results_table.py run ml-100k-adrec ml-100k-sasrec --seeds 2025,1,2
    .venv/bin/python scripts/results_table.py table

A seed whose run folder already holds the finished step is not trained again (``.steps-done`` in the run folder),
so an interrupted table resumes where it stopped.
"""

from __future__ import annotations

import json
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from adrec_stream.config import load_config
from adrec_stream.errors import ConfigError

#: The metrics of a results row, in table order (fractions in [0, 1] in the JSON, ×100 in the table).
METRICS = ("HR@5", "NDCG@5", "HR@10", "NDCG@10", "HR@20", "NDCG@20")
DEFAULT_SEEDS = (2025, 1, 2)


class RowSpec(BaseModel):
    """One row of the table: ``steps`` are ``adrec-stream train`` argument lists (without dataset, output, seed),
    each preceded by the row's ``args`` (the arguments its steps share); ``run_of`` evaluates another row's run
    folders instead (training them first where missing); ``checkpoint`` is the path inside the run folder that is
    evaluated ("" = the run's final model)."""

    model_config = ConfigDict(extra="forbid")
    dataset: str
    model: str
    args: list[str] = Field(default_factory=list)
    steps: list[list[str]] = Field(default_factory=list)
    run_of: str | None = None
    checkpoint: str = ""

    @model_validator(mode="after")
    def _steps_or_run_of(self) -> RowSpec:
        if bool(self.steps) == bool(self.run_of):
            raise ValueError("give either steps (train argument lists) or run_of (another row's name), not both")
        if self.args and not self.steps:
            raise ValueError("a run_of row cannot have args (they are shared by a row's train steps)")
        return self


class RowsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rows: dict[str, RowSpec]

    @model_validator(mode="after")
    def _run_of_known(self) -> RowsFile:
        for name, row in self.rows.items():
            if row.run_of is not None and (row.run_of not in self.rows or self.rows[row.run_of].run_of is not None):
                raise ValueError(f"row {name}: run_of {row.run_of!r} must name a row that trains (has steps)")
        return self


def load_rows(path: str | Path) -> dict[str, RowSpec]:
    """Read and validate the rows file (the project's YAML loader, :func:`adrec_stream.config.load_config`).

    Raises:
        ConfigError: missing file, invalid YAML or a row that does not validate (one line per problem, naming the
            row).
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"results rows file not found: {p} (expected configs/results-rows.yaml's format)")
    return load_config(p, RowsFile).rows


@dataclass(frozen=True)
class Command:
    """One command of a row's plan: ``kind`` is "train" (index ``step``), "val" or "test"."""

    kind: str
    argv: list[str]
    step: int = 0


def run_dir(runs: Path, rows: dict[str, RowSpec], name: str, seed: int) -> Path:
    """The run folder of ``name`` at ``seed`` (the trained row's folder for a ``run_of`` row)."""
    return runs / (rows[name].run_of or name) / f"seed-{seed}"


def plan(rows: dict[str, RowSpec], name: str, seed: int, *, data_root: Path, runs: Path, threads: int,
         cli: Sequence[str]) -> list[Command]:
    """The commands that produce and evaluate ``name`` at ``seed``, in order.

    Raises:
        ConfigError: unknown row name (the message lists the known ones).
    """
    if name not in rows:
        raise ConfigError(f"unknown row {name!r}; rows: {', '.join(rows)}")
    row = rows[name]
    trained = rows[row.run_of] if row.run_of else row
    out = run_dir(runs, rows, name, seed)
    dataset = str(data_root / row.dataset)
    common = ["--threads", str(threads), "--no-progress"]
    # a run_of row trains its source row's run when that is missing (finished steps are skipped by run_row)
    cmds = [Command("train", [*cli, "train", "--dataset", dataset, "--output", str(out), "--seed", str(seed), *common,
                              *trained.args, *step], i)
            for i, step in enumerate(trained.steps)]
    ckpt = str(out / row.checkpoint) if row.checkpoint else str(out)
    for split in ("val", "test"):
        cmds.append(Command(split, [*cli, "evaluate", "--checkpoint", ckpt, "--dataset", dataset, "--split", split,
                                    "--json", "--threads", str(threads)]))
    return cmds


def _done_steps(out: Path) -> set[int]:
    f = out / ".steps-done"
    return {int(x) for x in f.read_text().split()} if f.is_file() else set()


def _last_json_line(text: str) -> dict[str, Any]:
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"no JSON line in the command's output: {text[-500:]!r}")


def run_row(rows: dict[str, RowSpec], name: str, seed: int, *, data_root: Path, runs: Path, threads: int,
            results: Path, cli: Sequence[str], echo: Any = print) -> dict[str, Any]:
    """Run the plan of ``name`` at ``seed`` (skipping finished train steps) and append its JSON line to ``results``.

    The line: ``row``, ``dataset``, ``model``, ``seed``, ``val`` and ``test`` (the evaluate JSON objects), ``train``
    (the JSON line of each train step run now: ``wall_s``, ``peak_rss_mb``, ``epochs``, ``best_val``; steps finished
    earlier are not repeated, so a resumed or reused run lists fewer), ``commands`` (shell-quoted), ``finished_ts`` (epoch s).

    Raises:
        subprocess.CalledProcessError: a command failed (its output is echoed first).
    """
    out = run_dir(runs, rows, name, seed)
    out.mkdir(parents=True, exist_ok=True)
    line: dict[str, Any] = {"row": name, "dataset": rows[name].dataset, "model": rows[name].model, "seed": seed,
                            "train": [], "commands": []}
    for cmd in plan(rows, name, seed, data_root=data_root, runs=runs, threads=threads, cli=cli):
        line["commands"].append(shlex.join(cmd.argv))
        if cmd.kind == "train" and cmd.step in _done_steps(out):
            echo(f"   skip (done): {shlex.join(cmd.argv)}")
            continue
        echo(f"   {shlex.join(cmd.argv)}")
        t0 = time.time()
        proc = subprocess.run(cmd.argv, capture_output=True, text=True)
        if proc.returncode != 0:
            echo(proc.stdout[-2000:] + proc.stderr[-4000:])
            proc.check_returncode()
        res = _last_json_line(proc.stdout)
        if cmd.kind == "train":
            line["train"].append(res)
            with (out / ".steps-done").open("a") as f:
                f.write(f"{cmd.step}\n")
        else:
            line[cmd.kind] = res
        echo(f"   done in {time.time() - t0:.0f} s")
    line["finished_ts"] = time.time()
    results.parent.mkdir(parents=True, exist_ok=True)
    with results.open("a") as f:
        f.write(json.dumps(line) + "\n")
    return line


def _mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def summarise(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per row (first-seen order): the newest line of each seed, then mean and sample std of every metric.

    Returns dicts with ``row``, ``dataset``, ``model``, ``seeds`` (sorted), ``test`` and ``val``
    ({metric: (mean, std)} ×100), ``wall_s`` (mean of the seeds' summed train wall times, s; None when no seed
    has one), ``peak_rss_mb`` (max over seeds and steps; None when unknown).
    """
    newest: dict[str, dict[int, dict[str, Any]]] = {}
    for ln in lines:
        newest.setdefault(ln["row"], {})[int(ln["seed"])] = ln
    out = []
    for row, by_seed in newest.items():
        runs = [by_seed[s] for s in sorted(by_seed)]
        walls = [sum(t["wall_s"] for t in r["train"]) for r in runs if r["train"]]
        rss = [t["peak_rss_mb"] for r in runs for t in r["train"] if "peak_rss_mb" in t]
        out.append({
            "row": row, "dataset": runs[0]["dataset"], "model": runs[0]["model"], "seeds": sorted(by_seed),
            **{split: {m: _mean_std([100 * r[split][m] for r in runs]) for m in METRICS} for split in ("test", "val")},
            "wall_s": statistics.fmean(walls) if walls else None, "peak_rss_mb": max(rss) if rss else None})
    return out


def markdown_table(summary: list[dict[str, Any]]) -> str:
    """The markdown table of :func:`summarise`'s rows: test metrics mean ± std, val HR@20 / NDCG@20, seeds,
    mean train wall time (min) and peak RSS (MB)."""
    head = ["dataset", "model", *METRICS, "val HR@20 / NDCG@20", "seeds", "train wall (mean)", "peak RSS"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summary:
        cells = [s["dataset"], s["model"], *(f"{m:.2f} ± {sd:.2f}" for m, sd in (s["test"][k] for k in METRICS)),
                 f"{s['val']['HR@20'][0]:.2f} / {s['val']['NDCG@20'][0]:.2f}",
                 f"{len(s['seeds'])} ({', '.join(map(str, s['seeds']))})",
                 "–" if s["wall_s"] is None else f"{s['wall_s'] / 60:.1f} min",
                 "–" if s["peak_rss_mb"] is None else f"{s['peak_rss_mb']:,.0f} MB"]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def read_results(path: str | Path) -> list[dict[str, Any]]:
    """The JSON lines of a results file.

    Raises:
        ConfigError: the file does not exist (run ``results_table.py run`` first).
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"no results at {p}: run `scripts/results_table.py run ROW ...` first")
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()]


def default_cli() -> list[str]:
    """``adrec-stream`` as run by this interpreter (the venv that runs the script)."""
    return [sys.executable, "-m", "adrec_stream.cli", "--log-level", "WARNING"]
