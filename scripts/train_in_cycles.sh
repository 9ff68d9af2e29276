#!/bin/bash
# A long DIPNet training run cut into cosine cycles with warm restarts, resumable across
# sessions (docs/experiments.md, "Warm restarts at r_M = 200"). The data (train 4096 samples,
# seed 1; test 1024, seed 2; bases from 1024 samples, seed 1, i.e. the first training ones)
# are regenerated in WORK when missing — `generate` resumes from its partial chunks — and each
# finished cycle's model and report go to KEEP, from which the next cycle (and the next
# session) starts.
#
#   scripts/train_in_cycles.sh PROBLEM [CYCLES=10] [EPOCHS_PER_CYCLE=100]
#   env: BIN (build/bin), WORK (/tmp/dino-train-cycles), KEEP (.train-cycles, git-ignored:
#        a few files of 8 MB per cycle, never committed; an interrupted cycle resumes from
#        its per-epoch checkpoint), INPUT_RANK (200), HIDDEN (φ's
#        hidden widths, 100,100,100,100,100,100; another value keeps its cycles in
#        KEEP/PROBLEM-HIDDEN), and for a smoke run TRAIN_SAMPLES (4096), TEST_SAMPLES (1024),
#        BASIS_SAMPLES (1024)
set -euo pipefail
problem=$1
cycles=${2:-10}
epochs=${3:-100}
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${BIN:-$root/build/bin}
work=${WORK:-/tmp/dino-train-cycles}/$problem
hidden=${HIDDEN:-100,100,100,100,100,100}
keep=${KEEP:-$root/.train-cycles}/$problem
[ "$hidden" = 100,100,100,100,100,100 ] || keep=$keep-${hidden//,/x}
input_rank=${INPUT_RANK:-200}
# One LibTorch and one OpenBLAS thread: on 2 cores the two pools multiply (README).
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
mkdir -p "$work" "$keep"
cd "$work"

generate() {  # folder samples seed
  [ -f "$1/.done" ] && return
  "$bin/dino-train" generate --problem "$problem" --samples "$2" --seed "$3" --jacobian svd \
    --rank 50 --keep-partial --out "$1"
  touch "$1/.done"
}
generate train "${TRAIN_SAMPLES:-4096}" 1
generate test "${TEST_SAMPLES:-1024}" 2
generate bases_data "${BASIS_SAMPLES:-1024}" 1
[ -f bases_data/bases.npz ] || "$bin/dino-train" bases --data bases_data --input-rank "$input_rank" \
  --output-rank 50 --no-kle --tolerance 1e-6

for cycle in $(seq 1 "$cycles"); do
  [ -f "$keep/cycle$cycle.pt" ] && continue
  if [ "$cycle" = 1 ]; then
    start=(--bases bases_data/bases.npz --architecture dipnet --input-rank "$input_rank"
           --hidden "$hidden" --init-seed 2026)
    learning_rate=1e-3
  else
    start=(--init-model "$keep/cycle$((cycle - 1)).pt")
    learning_rate=3e-4  # The warm restart: below the first cycle's start.
  fi
  # Within a cycle, a checkpoint after every epoch: an interrupted cycle resumes exactly.
  checkpoint=$keep/cycle$cycle.checkpoint.pt
  resume=()
  [ -f "$checkpoint.state" ] && resume=(--resume)
  "$bin/dino-train" fit --data train "${start[@]}" --loss h1 --epochs "$epochs" \
    --schedule cosine --learning-rate "$learning_rate" --final-learning-rate 1e-5 --dtype fp64 \
    --seed $((2026 + cycle)) --threads 1 --evaluation-interval 0 --test-data test \
    --checkpoint "$checkpoint" "${resume[@]}" \
    --progress lines --metrics-json "$keep/cycle$cycle.json.tmp" --out "$keep/cycle$cycle.pt.tmp"
  # A cycle counts once both files are complete.
  mv "$keep/cycle$cycle.json.tmp" "$keep/cycle$cycle.json"
  mv "$keep/cycle$cycle.pt.tmp" "$keep/cycle$cycle.pt"
  rm -f "$checkpoint" "$checkpoint.state"
done
