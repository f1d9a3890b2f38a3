#!/usr/bin/env bash
# Reverse sampling steps study of docs/sampling-steps.md: offline test accuracy and scoring throughput of ADRec
# as a function of the number of reverse diffusion steps used at inference (T = 32 is the trained schedule).
#
# Usage: scripts/sampling_steps.sh [NAME ...]   (NAME in ml-100k, beauty; default both; run from anywhere)
# Environment:
#   DATA       folder holding <NAME>/dataset.pkl           (default ../shared/data/adrec beside the repository)
#   OUT        output folder for checkpoints and results   (default var/steps-study, ignored by git)
#   TRAIN_ONLY=1  train the missing checkpoints and stop (no evaluations)
#
# For each data set: train one ADRec with a bounded wall-clock budget (train.stage_time_budget_s per stage) unless
# OUT/<NAME>/model.pt exists, then evaluate the test split with steps 32, 16, 8, 4, 2, 1 (stochastic, noise seeds
# 0, 1, 2) and deterministically with steps 32 and 1. Every evaluation appends its JSON object (dataset, metrics,
# steps, deterministic, seed, wall_s, users_per_s) to OUT/<NAME>/evals.jsonl; at the end one JSON line per setting
# (data set, steps, deterministic) is printed on stdout: metrics x100 as mean and sample std (ddof 1) over the seeds,
# users_per_s mean and std, and the per-seed values; the same rows as a markdown table go to OUT/<NAME>/table.md.
# Everything runs on one torch thread (--threads 1), one job at a time; on the shared 2-core CPU the trainings
# take about 12 min (ml-100k) and 30 min (beauty), the evaluations about 3 min (ml-100k) and 30 min (beauty).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/adrec}
OUT=${OUT:-var/steps-study}
A=(.venv/bin/adrec-stream --log-level WARNING)

train() {
  local name=$1; shift
  local dir=$OUT/$name
  if [ -f "$dir/model.pt" ]; then
    echo "# $name: checkpoint $dir exists, not retraining" >&2
    return
  fi
  mkdir -p "$dir"
  echo "# $name: training into $dir ($(uptime))" >&2
  .venv/bin/adrec-stream --log-level INFO train --dataset "$DATA/$name" --output "$dir" --threads 1 --no-progress "$@" 2>"$dir/train.log" >&2
  echo "# $name: trained ($(uptime))" >&2
}

evaluate() {
  local name=$1; shift
  local line
  line=$("${A[@]}" evaluate --checkpoint "$OUT/$name" --dataset "$DATA/$name" --split test --threads 1 \
         --device cpu --json "$@")
  line=$(printf '%s' "$line" | sed "s/^{/{\"dataset\": \"$name\", /")
  printf '%s\n' "$line" >>"$OUT/$name/evals.jsonl"
  echo "# $line" >&2
}

summarize() {  # one JSON line per setting on stdout, markdown table in OUT/<NAME>/table.md
  .venv/bin/python - "$1" "$OUT/$1/evals.jsonl" "$OUT/$1/table.md" <<'PY'
import json, statistics, sys
name, src, table = sys.argv[1:]
runs = [json.loads(line) for line in open(src)]
keys = ["NDCG@10", "HR@10", "NDCG@20", "HR@20"]
groups: dict = {}
for r in runs:
    groups.setdefault((r["deterministic"], -r["steps"]), []).append(r)
def ms(xs):
    return round(statistics.mean(xs), 4), round(statistics.stdev(xs), 4) if len(xs) > 1 else 0.0
rows = ["| setting | seeds | " + " | ".join(keys) + " | users/s |", "|---" * (len(keys) + 3) + "|"]
for (det, neg_steps), rs in sorted(groups.items()):
    out = {"dataset": name, "steps": -neg_steps, "deterministic": det, "seeds": [r["seed"] for r in rs]}
    cells = []
    for k in keys + ["users_per_s"]:
        scale = 1 if k == "users_per_s" else 100
        vals = [scale * r[k] for r in rs]
        out[k], out[k + "_std"] = ms(vals)
        out[k + "_runs"] = [round(v, 4) for v in vals]
        f = ".0f" if k == "users_per_s" else ".2f"
        cells.append(f"{out[k]:{f}} ± {out[k + '_std']:{f}}" if len(rs) > 1 else f"{out[k]:{f}}")
    print(json.dumps(out))
    label = f"T={-neg_steps} " + ("deterministic" if det else "stochastic")
    seeds = "–" if det else ",".join(str(r["seed"]) for r in rs)
    rows.append(f"| {label} | {seeds} | " + " | ".join(cells) + " |")
open(table, "w").write("\n".join(rows) + "\n")
PY
}

names=("$@"); [ ${#names[@]} -gt 0 ] || names=(ml-100k beauty)
for n in "${names[@]}"; do
  case $n in
    # ml-100k: run (b) of docs/results.md (cpu config, batch 256, stage-1 lr 1e-3, align 5, eval every 2,
    # patience 5) with every stage cut at 300 s.
    ml-100k) train ml-100k --config configs/adrec-cpu.yaml --set train.batch_size=256 --set train.pretrain_lr=0.001 \
        --set train.align_epochs=5 --set train.pretrain_epochs=60 --set train.finetune_epochs=60 \
        --set train.eval_every=2 --set train.patience=5 --set train.stage_time_budget_s=300 ;;
    # beauty: the cpu config (batch 128, stage-1 lr 2e-3, align 3, 30/30 epochs) with every stage cut at 720 s.
    beauty) train beauty --config configs/adrec-cpu.yaml --set train.stage_time_budget_s=720 ;;
    *) echo "unknown data set $n (ml-100k beauty)" >&2; exit 2 ;;
  esac
  [ "${TRAIN_ONLY:-0}" = 1 ] && continue
  echo "# $n: evaluations start ($(uptime))" >&2
  rm -f "$OUT/$n/evals.jsonl"
  for steps in 32 16 8 4 2 1; do
    for seed in 0 1 2; do
      evaluate "$n" --steps "$steps" --seed "$seed"
    done
  done
  for steps in 32 1; do
    evaluate "$n" --steps "$steps" --deterministic
  done
  echo "# $n: evaluations done ($(uptime))" >&2
  summarize "$n"
done
