#!/usr/bin/env bash
# Reverse sampling steps study of docs/sampling-steps.md: offline test accuracy and scoring throughput of ADRec
# as a function of the number of reverse diffusion steps used at inference (T = 32 is the trained schedule).
#
# Usage: scripts/sampling_steps.sh [NAME ...]   (NAME in ml-100k, beauty; default both; run from anywhere)
# Environment:
#   DATA          folder holding <NAME>/dataset.pkl          (default ../shared/data/adrec beside the repository)
#   OUT           output folder for checkpoints and results  (default var/steps-study, ignored by git)
#   PHASES        comma-separated subset of train,eval,speed (default all three; the summary always runs)
#   SPEED_ROUNDS  interleaved timing rounds of the speed phase (default 5)
#
# Phases, per data set:
#   train  one ADRec with a bounded wall-clock budget (train.stage_time_budget_s per stage), unless
#          OUT/<NAME>/model.pt exists (then nothing is retrained);
#   eval   `adrec-stream evaluate` on the test split with --steps 32, 16, 8, 4, 2, 1 (stochastic, noise seeds 0, 1, 2)
#          and --deterministic with --steps 32 and 1; each JSON object (dataset, metrics, steps, deterministic,
#          seed, wall_s, users_per_s) goes to OUT/<NAME>/evals.jsonl;
#   speed  one process, one thread: (a) the top-10 lists of every setting (seed 0) compared with T = 32 stochastic
#          seed 0 (and T = 32 seed 1 vs seed 0: the noise floor); (b) users/s of the same evaluation code for every
#          setting, SPEED_ROUNDS rounds in rotated order (each measurement repeats the pass for >= 3 s), medians and
#          the median per-round speed-up over T = 32 stochastic; written to OUT/<NAME>/speed.jsonl.
# Summary: one JSON line per setting on stdout (metrics x100 as mean and sample std, ddof 1, over the seeds, the
# per-seed values, the CLI's users_per_s, the speed phase's figures), the same rows as markdown in OUT/<NAME>/table.md.
# Everything runs on one torch thread, one job at a time. On the shared 2-core CPU (load 1-5 from other work) the
# trainings took 8.5 min (ml-100k) and 27 min (beauty), the evaluations 3.5 and 4.5 min, the speed phase 2 and 8 min.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/adrec}
OUT=${OUT:-var/steps-study}
PHASES=${PHASES:-train,eval,speed}
SPEED_ROUNDS=${SPEED_ROUNDS:-5}
A=(.venv/bin/adrec-stream --log-level WARNING)

phase() { [[ ",$PHASES," == *",$1,"* ]]; }

train() {
  local name=$1; shift
  local dir=$OUT/$name
  if [ -f "$dir/model.pt" ]; then
    echo "# $name: checkpoint $dir exists, not retraining" >&2
    return
  fi
  if ! phase train; then
    echo "no checkpoint $dir/model.pt and PHASES=$PHASES has no train" >&2
    exit 2
  fi
  mkdir -p "$dir"
  echo "# $name: training into $dir ($(uptime))" >&2
  .venv/bin/adrec-stream --log-level INFO train --dataset "$DATA/$name" --output "$dir" --threads 1 --no-progress "$@" \
    2>"$dir/train.log" >&2
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

speed() {  # top-10 agreement with T = 32 and interleaved throughput, one process and one thread
  .venv/bin/python - "$1" "$OUT/$1" "$DATA/$1" "$SPEED_ROUNDS" "$OUT/$1/speed.jsonl" <<'PY'
import json, statistics, sys, time
import torch
from adrec_stream.data.adrec_pkl import load_adrec_dataset
from adrec_stream.data.batching import left_pad, loo_histories
from adrec_stream.evaluation.offline import evaluate_model
from adrec_stream.model import load_checkpoint
name, ck_dir, data_dir, rounds, out_path = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
torch.set_num_threads(1)
model = load_checkpoint(ck_dir, device="cpu").model.eval()
ds = load_adrec_dataset(data_dir)
hists, targets = loo_histories(ds.train, ds.val, ds.test, "test", model.cfg.max_len)
n, T = len(hists), model.cfg.diffusion_steps
settings = [(s, False) for s in (T, 16, 8, 4, 2, 1)] + [(T, True), (1, True)]

def top10(steps, det, seed):  # top-10 items per user, same batches and noise draws as evaluate_model's
    order = sorted(range(n), key=lambda i: len(hists[i]))
    gen = torch.Generator().manual_seed(seed)
    out = torch.zeros(n, 10, dtype=torch.long)
    for start in range(0, n, 512):
        idx = order[start:start + 512]
        s = model.score(left_pad([hists[i] for i in idx]), steps=steps, deterministic=det, generator=gen)
        out[torch.tensor(idx)] = s.topk(10, dim=1).indices
    return out

ref = top10(T, False, 0)
def agreement(other):  # mean |top10 ∩ ref| / 10, share of users with the same top-10 set, same top-1
    inter = (other.unsqueeze(2) == ref.unsqueeze(1)).any(dim=2).sum(dim=1)
    return {"top10_overlap": round(inter.float().mean().item() / 10, 5),
            "top10_identical": round((inter == 10).float().mean().item(), 5),
            "top1_identical": round((other[:, 0] == ref[:, 0]).float().mean().item(), 5)}
agree = {(s, d): agreement(ref if (s, d) == (T, False) else top10(s, d, 0)) for s, d in settings}
floor = agreement(top10(T, False, 1))

def users_per_s(steps, det, seed):  # repeat the evaluation pass for >= 3 s
    done, t0 = 0, time.perf_counter()
    while True:
        evaluate_model(model, hists, targets, batch_size=512, seed=seed, steps=steps, deterministic=det)
        done += n
        if time.perf_counter() - t0 >= 3.0:
            return done / (time.perf_counter() - t0)

users_per_s(T, False, 0)  # warm-up
times = {sd: [] for sd in settings}
for r in range(rounds):
    k = r % len(settings)
    for s, d in settings[k:] + settings[:k]:  # rotated order: no setting always runs first
        times[(s, d)].append(users_per_s(s, d, r))
base = times[(T, False)]
with open(out_path, "w") as f:
    for (s, d), ups in times.items():
        row = {"dataset": name, "steps": s, "deterministic": d, **agree[(s, d)],
               "speed_users_per_s": round(statistics.median(ups), 1),
               "speed_users_per_s_rounds": [round(u, 1) for u in ups],
               "speedup_vs_T32": round(statistics.median(u / b for u, b in zip(ups, base)), 3)}
        if (s, d) == (T, False):
            row["seed1_vs_seed0"] = floor
        f.write(json.dumps(row) + "\n")
PY
}

summarize() {  # one JSON line per setting on stdout, markdown table in OUT/<NAME>/table.md
  .venv/bin/python - "$1" "$OUT/$1" <<'PY'
import json, os, statistics, sys
name, out = sys.argv[1:]
runs = [json.loads(line) for line in open(f"{out}/evals.jsonl")]
speed = {}
if os.path.exists(f"{out}/speed.jsonl"):
    speed = {(r["deterministic"], r["steps"]): r for r in map(json.loads, open(f"{out}/speed.jsonl"))}
keys = ["NDCG@10", "HR@10", "NDCG@20", "HR@20"]
groups: dict = {}
for r in runs:
    groups.setdefault((r["deterministic"], -r["steps"]), []).append(r)
def ms(xs):
    return round(statistics.mean(xs), 4), round(statistics.stdev(xs), 4) if len(xs) > 1 else 0.0
head = ["setting", "seeds", *keys, "users/s (evaluate)", "users/s (speed, median)", "speed-up vs T=32",
        "top-10 overlap with T=32", "same top-10"]
rows = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
for (det, neg_steps), rs in sorted(groups.items()):
    out_row = {"dataset": name, "steps": -neg_steps, "deterministic": det, "seeds": [r["seed"] for r in rs]}
    cells = []
    for k in keys + ["users_per_s"]:
        scale = 1 if k == "users_per_s" else 100
        vals = [scale * r[k] for r in rs]
        out_row[k], out_row[k + "_std"] = ms(vals)
        out_row[k + "_runs"] = [round(v, 4) for v in vals]
        f = ".0f" if k == "users_per_s" else ".2f"
        cells.append(f"{out_row[k]:{f}} ± {out_row[k + '_std']:{f}}" if len(rs) > 1 else f"{out_row[k]:{f}}")
    sp = speed.get((det, -neg_steps))
    if sp:
        out_row.update({k: v for k, v in sp.items() if k not in out_row})
        cells += [f"{sp['speed_users_per_s']:.0f}", f"{sp['speedup_vs_T32']:.2f}×",
                  f"{100 * sp['top10_overlap']:.2f} %", f"{100 * sp['top10_identical']:.2f} %"]
    print(json.dumps(out_row))
    label = f"T={-neg_steps} " + ("deterministic" if det else "stochastic")
    seeds = "–" if det else ",".join(str(r["seed"]) for r in rs)
    rows.append(f"| {label} | {seeds} | " + " | ".join(cells) + " |")
open(f"{out}/table.md", "w").write("\n".join(rows) + "\n")
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
  if phase eval; then
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
  fi
  if phase speed; then
    echo "# $n: speed phase starts ($(uptime))" >&2
    speed "$n"
    echo "# $n: speed phase done ($(uptime))" >&2
  fi
  if [ -f "$OUT/$n/evals.jsonl" ]; then summarize "$n"; fi
done
