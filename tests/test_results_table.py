"""The results-table harness (scripts/results_table.py): the shipped rows are valid train/evaluate commands, seeds
are aggregated into mean ± std, finished steps are not trained again, and a real (tiny) row runs end to end."""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from adrec_stream.config import parse_overrides
from adrec_stream.errors import ConfigError
from adrec_stream.evaluation.results_table import (
    METRICS,
    load_rows,
    markdown_table,
    plan,
    run_row,
    summarise,
)
from adrec_stream.training import cli as train_cli
from adrec_stream.training.config import load_experiment

ROOT = Path(__file__).resolve().parent.parent
ROWS = ROOT / "configs/results-rows.yaml"
DATA = ROOT.parent / "shared/data/adrec"
CLI = [sys.executable, "-m", "adrec_stream.cli", "--log-level", "WARNING"]


def test_every_shipped_row_is_a_valid_train_and_evaluate_command(tmp_path):
    rows = load_rows(ROWS)
    assert {r.dataset for r in rows.values()} == {"ml-100k", "beauty", "sports", "toys", "baby"}
    parser = argparse.ArgumentParser()
    train_cli.add_arguments(parser)
    for name in rows:
        cmds = plan(rows, name, 7, data_root=DATA, runs=tmp_path, threads=1, cli=CLI)
        assert [c.kind for c in cmds][-2:] == ["val", "test"]
        for c in cmds:
            if c.kind != "train":
                continue
            args = parser.parse_args(c.argv[len(CLI) + 1:])
            assert args.seed == 7 and Path(args.dataset) == DATA / rows[name].dataset
            assert Path(args.output) == tmp_path / (rows[name].run_of or name) / "seed-7"
            exp = load_experiment(ROOT / args.config, parse_overrides(args.set))  # every --set key exists
            trained = rows[rows[name].run_of or name]  # beauty-sasrec: the stage-1 model of an ADRec run
            assert exp.model.kind == ("sasrec" if trained.model == "SASRec+" else "adrec")


def test_a_rows_shared_args_precede_each_of_its_steps(tmp_path):
    rows_file = tmp_path / "rows.yaml"
    rows_file.write_text("rows:\n  r:\n    dataset: ml-100k\n    model: ADRec\n    args: [--config, c.yaml]\n"
                         "    steps: [[--stage, pretrain], [--set, train.lr=0.01, --stage, align]]\n")
    cmds = plan(load_rows(rows_file), "r", 1, data_root=DATA, runs=tmp_path, threads=1, cli=CLI)
    tails = [c.argv[c.argv.index("--no-progress") + 1:] for c in cmds if c.kind == "train"]
    assert tails == [["--config", "c.yaml", "--stage", "pretrain"],
                     ["--config", "c.yaml", "--set", "train.lr=0.01", "--stage", "align"]]


def test_run_of_row_evaluates_the_source_runs_stage_checkpoint(tmp_path):
    rows = load_rows(ROWS)
    cmds = plan(rows, "beauty-sasrec", 2025, data_root=DATA, runs=tmp_path, threads=1, cli=CLI)
    test = cmds[-1].argv
    assert test[test.index("--checkpoint") + 1] == str(tmp_path / "beauty-adrec/seed-2025/pretrain")
    with pytest.raises(ConfigError, match="unknown row 'nope'"):
        plan(rows, "nope", 1, data_root=DATA, runs=tmp_path, threads=1, cli=CLI)


@pytest.mark.parametrize("text, match", [
    ("rows: {a: {dataset: x, model: m}}\n", "either steps"),
    ("rows: {a: {dataset: x, model: m, steps: [[--config, c.yaml]], run_of: b}}\n", "either steps"),
    ("rows: {a: {dataset: x, model: m, run_of: b}}\n", "must name a row that trains"),
    ("rows: {a: {dataset: x, model: m, steps: [[]], colour: red}}\n", "colour"),
    ("rows: {a: {dataset: x, model: m, steps: [[]]}, b: {dataset: x, model: m, run_of: a, args: [--epochs, '1']}}\n",
     "a run_of row cannot have args"),
])
def test_bad_rows_file_is_a_config_error(tmp_path, text, match):
    p = tmp_path / "rows.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=match) as err:
        load_rows(p)
    assert "\n" not in str(err.value) and "pydantic" not in str(err.value)  # one line, no validator dump
    with pytest.raises(ConfigError, match="not found"):
        load_rows(tmp_path / "missing.yaml")


def _line(row, seed, ndcg10, wall=None, rss=None):
    metrics = {m: 0.1 for m in METRICS} | {"NDCG@10": ndcg10}
    train = [] if wall is None else [{"wall_s": wall, "peak_rss_mb": rss}]
    return {"row": row, "dataset": "ml-100k", "model": "ADRec", "seed": seed, "val": metrics, "test": metrics,
            "train": train}


def test_summary_is_mean_and_sample_std_over_the_newest_line_of_each_seed():
    lines = [_line("r", 1, 0.50, 100, 900), _line("r", 2, 0.06, 200, 1200), _line("r", 3, 0.07, 300, 1000),
             _line("r", 1, 0.05, 120, 800)]  # seed 1 re-run: the newest line counts
    (s,) = summarise(lines)
    assert s["seeds"] == [1, 2, 3]
    mean, sd = s["test"]["NDCG@10"]
    assert mean == pytest.approx(6.0) and sd == pytest.approx(statistics.stdev([5.0, 6.0, 7.0]))
    assert s["wall_s"] == pytest.approx((120 + 200 + 300) / 3) and s["peak_rss_mb"] == 1200
    table = markdown_table([s])
    assert "| ml-100k | ADRec | 10.00 ± 0.00 | 10.00 ± 0.00 | 10.00 ± 0.00 | 6.00 ± 1.00 |" in table
    assert "| 3 (1, 2, 3) | 3.4 min | 1,200 MB |" in table
    (one,) = summarise([_line("r", 5, 0.04)])
    assert one["test"]["NDCG@10"] == (pytest.approx(4.0), 0.0) and one["wall_s"] is None
    assert "| 1 (5) | – | – |" in markdown_table([one])


@pytest.mark.slow
def test_a_tiny_row_trains_evaluates_and_resumes_without_retraining(tmp_path):
    rows_file = tmp_path / "rows.yaml"
    rows_file.write_text("rows:\n  tiny:\n    dataset: ml-100k\n    model: SASRec+\n    steps:\n"
                         f"      - [--config, {ROOT}/configs/sasrec-cpu.yaml, --epochs, '1',"
                         " --set, train.eval_every=1]\n")
    rows = load_rows(rows_file)
    results = tmp_path / "rows.jsonl"
    kw = {"data_root": DATA, "runs": tmp_path / "runs", "threads": 1, "results": results, "cli": CLI,
          "echo": lambda *_: None}
    first = run_row(rows, "tiny", 3, **kw)
    assert len(first["train"]) == 1 and first["train"][0]["epochs"] == {"finetune": 1}
    assert first["test"]["n_users"] == 938 and 0 < first["test"]["HR@20"] <= 1
    again = run_row(rows, "tiny", 3, **kw)  # finished step: evaluated again, not trained again
    assert again["train"] == [] and again["test"]["NDCG@10"] == pytest.approx(first["test"]["NDCG@10"])
    assert [json.loads(x)["seed"] for x in results.read_text().splitlines()] == [3, 3]
    table = subprocess.run([sys.executable, str(ROOT / "scripts/results_table.py"), "table", "--results",
                            str(results)], capture_output=True, text=True, check=True).stdout
    assert f"{100 * first['test']['NDCG@10']:.2f} ± 0.00" in table and "| 1 (3) |" in table


def test_script_paths_are_relative_to_the_callers_directory_and_help_says_the_summary_once(tmp_path):
    script = str(ROOT / "scripts/results_table.py")
    (tmp_path / "mine.jsonl").write_text("")
    done = subprocess.run([sys.executable, script, "table", "--results", "missing.jsonl"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert done.returncode == 2 and str(tmp_path / "missing.jsonl") in done.stderr  # not ROOT/missing.jsonl
    helped = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, check=True).stdout
    assert helped.count("Regenerate the results table") == 1 and "results_table.py plan ROW" in helped
