#!/usr/bin/env bash
# Regenerates the test rows of docs/results.md ("Test results"): for each row, the training command that produced
# the reported run, then `adrec-stream evaluate --split test --json`, appended as one JSON line (with the row name)
# to var/results/rows.jsonl. Run from the repository root with ../shared beside it. On 2 CPU cores the whole table
# takes about 6 hours (each row's wall time is in docs/results.md); on a CUDA machine the same commands run there.
# Usage: scripts/results_table.sh [ROW ...]   ROW: ml-100k-adrec ml-100k-sasrec beauty-adrec beauty-sasrec
#        sports-adrec sports-sasrec toys-adrec toys-sasrec baby-adrec baby-sasrec (default: all)
# A row whose run folder under runs/ already has a final checkpoint is only re-evaluated.
set -euo pipefail
cd "$(dirname "$0")/.."
A=(.venv/bin/adrec-stream --log-level WARNING)
T=(--threads 1 --no-progress)
D=../shared/data/adrec
OUT=var/results
mkdir -p "$OUT" runs

train() {  # train RUN_DIR DATASET ARGS...: train unless the run's final checkpoint exists
  local run=$1 ds=$2; shift 2
  [ -f "$run/model.pt" ] || "${A[@]}" train --dataset "$D/$ds" --output "$run" "${T[@]}" "$@"
}
evaluate() {  # evaluate ROW CHECKPOINT DATASET
  local row=$1 ck=$2 ds=$3
  "${A[@]}" evaluate --checkpoint "$ck" --dataset "$D/$ds" --split test --json --threads 1 |
    python3 -c "import json,sys; d=json.load(sys.stdin); d['row']='$row'; print(json.dumps(d))" >> "$OUT/rows.jsonl"
}
row() {
  case $1 in
    ml-100k-adrec)
      train runs/adrec-ml-100k-b ml-100k --config configs/adrec-cpu.yaml --set train.batch_size=256 \
        --set train.pretrain_lr=0.001 --set train.align_epochs=5 --set train.pretrain_epochs=60 \
        --set train.finetune_epochs=60 --set train.eval_every=2 --set train.patience=5
      evaluate "$1" runs/adrec-ml-100k-b ml-100k ;;
    ml-100k-sasrec)
      train runs/sasrec-ml-100k ml-100k --config configs/sasrec-cpu.yaml --set train.finetune_epochs=60 \
        --set train.patience=4
      evaluate "$1" runs/sasrec-ml-100k ml-100k ;;
    beauty-adrec|beauty-sasrec)  # the SASRec+ row is the stage-1 model of the reference-recipe ADRec run
      train runs/adrec-beauty-refrecipe beauty --config configs/adrec.yaml --set train.metric=any \
        --set train.pretrain_positional=true --set train.pretrain_init_std=0.1 \
        --set train.align_table=reference_decay --set train.finetune_epochs=100 --set train.stage_time_budget_s=1500
      if [ "$1" = beauty-adrec ]; then evaluate "$1" runs/adrec-beauty-refrecipe beauty
      else evaluate "$1" runs/adrec-beauty-refrecipe/pretrain beauty; fi ;;
    sports-adrec)  # the finetune stage was re-run from the align checkpoint with a stage budget to end in time
      train runs/adrec-sports-any sports --config configs/adrec.yaml --set train.metric=any \
        --set train.pretrain_epochs=40 --set train.finetune_epochs=40 --stage pretrain
      train runs/adrec-sports-any sports --config configs/adrec.yaml --set train.metric=any --stage align
      train runs/adrec-sports-any sports --config configs/adrec.yaml --stage finetune --set train.metric=any \
        --set train.finetune_epochs=40 --set train.stage_time_budget_s=2280
      evaluate "$1" runs/adrec-sports-any sports ;;
    sports-sasrec)
      train runs/sasrec-sports-ref sports --config configs/sasrec.yaml --set train.stage_time_budget_s=1140
      evaluate "$1" runs/sasrec-sports-ref sports ;;
    toys-adrec)
      train runs/adrec-toys-cpu toys --config configs/adrec-cpu.yaml --epochs 20 --set train.stage_time_budget_s=540
      evaluate "$1" runs/adrec-toys-cpu toys ;;
    baby-adrec)
      train runs/adrec-baby-cpu baby --config configs/adrec-cpu.yaml --epochs 20 --set train.stage_time_budget_s=400
      evaluate "$1" runs/adrec-baby-cpu baby ;;
    toys-sasrec|baby-sasrec)
      local ds=${1%-sasrec}
      train "runs/sasrec-$ds" "$ds" --config configs/sasrec.yaml
      evaluate "$1" "runs/sasrec-$ds" "$ds" ;;
    *) echo "unknown row: $1" >&2; exit 2 ;;
  esac
}
rows=("$@")
[ ${#rows[@]} -gt 0 ] || rows=(ml-100k-adrec ml-100k-sasrec beauty-adrec beauty-sasrec sports-adrec sports-sasrec
                               toys-adrec toys-sasrec baby-adrec baby-sasrec)
for r in "${rows[@]}"; do echo "== $r ($(date -u +%H:%M:%S))" >&2; row "$r"; done
echo "rows appended to $OUT/rows.jsonl" >&2
