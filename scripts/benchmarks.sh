#!/usr/bin/env bash
# Re-runs the benchmarks whose figures are in docs/benchmarks.md and writes one JSON file per run to
# var/bench-results/ (copy the figures into the doc by hand: the machine is shared, so each table row also records
# the load average). Run from the repository root with ../shared beside it; about 50 minutes on 2 cores.
# Usage: scripts/benchmarks.sh [KIND ...]   KIND: train dropout score groups ingest ceiling latency memory finetune
# (default: all)
# The score benchmark times the beauty model of scripts/sampling_steps.sh when it exists, else fresh weights.
set -euo pipefail
cd "$(dirname "$0")/.."
B=(.venv/bin/adrec-stream --log-level WARNING bench)
OUT=var/bench-results
mkdir -p "$OUT"
kinds=("$@"); [ ${#kinds[@]} -gt 0 ] || kinds=(train dropout score groups ingest ceiling latency memory finetune)
ckpt=var/steps-study/beauty/model.pt
for k in "${kinds[@]}"; do
  stamp=$(date +%Y%m%dT%H%M%S)
  echo "== $k ($(uptime))" >&2
  case $k in
    train) "${B[@]}" train --dataset ../shared/data/adrec/baby/dataset.pkl --json --threads 1 > "$OUT/train-$stamp.json" ;;
    dropout) .venv/bin/python scripts/bench_dropout_masks.py --threads 2 > "$OUT/dropout-$stamp.json" ;;
    score)
      extra=(); [ -f "$ckpt" ] && extra=(--checkpoint "$ckpt")
      for t in 1 2; do
        "${B[@]}" score --dataset ../shared/data/adrec/beauty "${extra[@]}" --threads "$t" --sampling-steps 2 \
          --users 2048 --reference-users 20 --json > "$OUT/score-t$t-$stamp.json"
      done ;;
    groups)
      for t in 1 2; do
        .venv/bin/python scripts/bench_step_groups.py --threads "$t" > "$OUT/groups-t$t-$stamp.json"
      done ;;
    ingest) "${B[@]}" ingest --events 100000 --ingest-workers 1,2 --json > "$OUT/ingest-$stamp.json" ;;
    ceiling) .venv/bin/python scripts/bench_faust_ceiling.py --events 100000 > "$OUT/ceiling-$stamp.json" ;;
    latency) "${B[@]}" latency --json > "$OUT/latency-$stamp.json" ;;
    memory) "${B[@]}" memory --json > "$OUT/memory-$stamp.json" ;;
    finetune) "${B[@]}" finetune --set finetune.epochs=2 --json --threads 1 > "$OUT/finetune-$stamp.json" ;;
    *) echo "unknown benchmark kind: $k (train dropout score groups ingest ceiling latency memory finetune)" >&2; exit 2 ;;
  esac
done
echo "results in $OUT" >&2
