#!/usr/bin/env bash
# Regenerates the replay-evaluation reports of docs/replay.md (issue 9): one folder per data set under
# docs/replay/<name>/ with metrics.json, report.md and the PNG plots.
# Usage: scripts/replay_reports.sh [NAME ...]   (default: all five; run from the repository root, ../shared beside it)
# Each run trains ADRec and SASRec+ on the first 80% (cached under var/replay-cache/) and replays the rest
# test-then-train; on 2 CPU cores a data set takes 4-25 minutes. MovieLens 100K, Diginetica and Gowalla also
# replay the model policies through the real pipeline (--through-kafka; worker logs under var/replay-kafka/).
set -euo pipefail
cd "$(dirname "$0")/.."
# --exclude-seen for the MovieLens rating logs (an item is rated once); not for the check-ins and item views,
# where revisiting is the signal: with the exclusion on, every revisit is a miss for every policy.
R=(.venv/bin/adrec-stream --log-level WARNING evaluate-replay --policy all
   --set finetune.interval_s=1e12 --no-progress)
E=../shared/data/events
run() {
  local name=$1; shift
  "${R[@]}" "$@" --kafka-work-dir "var/replay-kafka/$name" --out "docs/replay/$name"
}
names=("$@"); [ ${#names[@]} -gt 0 ] || names=(ml-100k ml-latest-small ml-1m-sample diginetica gowalla)
for n in "${names[@]}"; do
  case $n in
    ml-100k) run ml-100k --dataset $E/ml-100k/u.data --exclude-seen --through-kafka ;;
    ml-latest-small) run ml-latest-small --dataset $E/ml-latest-small/ratings.csv --exclude-seen ;;
    ml-1m-sample) run ml-1m-sample --dataset $E/ml-1m-sample100k/sample_movielens_rating.dat --exclude-seen ;;
    diginetica) run diginetica --dataset $E/diginetica-sample/sample_train-item-views.csv \
        --columns user=session_id,item=item_id,ts=eventdate,order=timeframe --sep ';' --header --ts-unit iso \
        --set finetune.min_new_events=600 --through-kafka ;;
    gowalla) run gowalla --dataset $E/gowalla-head50k/Gowalla_totalCheckins50000.txt --set finetune.min_new_events=2500 \
        --through-kafka ;;
    *) echo "unknown data set $n (ml-100k ml-latest-small ml-1m-sample diginetica gowalla)" >&2; exit 2 ;;
  esac
done
