#!/bin/bash
# Does a CPU sweep train faster as one run at a time on every core, or as one 1-thread run per core at once?
# Training images/s of the models (stn.bench.train, fp32, RTS-sized input) both ways, into results/bench/cpu_layout/:
#   one_run_<N>_threads/train_cpu.md   one process on all N cores
#   run<i>_of_<N>_1_thread/train_cpu.md N processes of 1 thread each, started together (their sum is the throughput)
# Run it on an otherwise idle machine: bash scripts/bench_cpu_layout.sh  (MODELS="fcn cnn" to narrow it)
set -euo pipefail
PY=${PY:-.venv/bin/python}
OUT=${OUT:-results/bench/cpu_layout}
CORES=${CORES:-$(nproc)}
read -r -a models <<< "${MODELS:-fcn st_fcn_aff cnn st_cnn_aff}"
args=(--device cpu --columns mnist_rts --modes fp32 --models "${models[@]}" --repeats 5)
OMP_NUM_THREADS=$CORES MKL_NUM_THREADS=$CORES $PY -m stn.bench.train "${args[@]}" --out "$OUT/one_run_${CORES}_threads"
for i in $(seq 1 "$CORES"); do
  OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $PY -m stn.bench.train "${args[@]}" --out "$OUT/run${i}_of_${CORES}_1_thread" &
done
wait
