#!/usr/bin/env bash
# GPU evidence of the multi-GPU issue, run on a several-GPU device machine from the repo root (wheels in .whl/):
# each video DiT's full preset profiled on 1 GPU and split over N GPUs (`torchrun ... mmchar profile
# --sequence-parallel`, Ulysses where N divides the heads, and the ring forced beside it), the attention-level
# benchmark (benchmarks/bench_sequence_parallel.py), and `mmchar study` over the store: sequence_parallel.csv holds
# step latency, speedup, efficiency and the communication per step. Slim stores + study packed into $OUT/results.tgz.
#   WORKLOADS="cogvideox-2b wan2.1-1.3b"  NPROC (default: every GPU)  PER_RUN_S=200  RING=1 (also the forced ring)
set -u
OUT=${OUT:-gpu-out}
STORE=${STORE:-/tmp/sp-runs}
PACK=/tmp/sp-pack
mkdir -p "$OUT" "$STORE" "$PACK"
. benchmarks/gpu_install.sh
export PYTHONSAFEPATH=1  # `-m mmchar` / torchrun import the installed package, not ./mmchar
NPROC=${NPROC:-$(nvidia-smi -L | wc -l)}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$PACK/gpu.txt"
nvidia-smi topo -m > "$PACK/topo.txt" 2>&1
mmchar calibrate 2>&1 | tail -3 | tee "$PACK/calibrate.txt"
ARGS="--preset full --steps ${STEPS:-2} --repeat ${REPEAT:-2} --profile-steps 1 --no-trace --device cuda --store $STORE"
pack() { tar czf "$OUT/results.tgz" -C "$(dirname "$STORE")" "$(basename "$STORE")" -C "$(dirname "$PACK")" "$(basename "$PACK")"; }
for w in ${WORKLOADS:-cogvideox-2b wan2.1-1.3b}; do
  t0=$(date +%s)
  CUDA_VISIBLE_DEVICES=0 timeout "${PER_RUN_S:-200}" mmchar profile "$w" $ARGS 2>&1 | tail -3 | tee -a "$PACK/log.txt"
  echo "$w 1 GPU: $(( $(date +%s) - t0 )) s" | tee -a "$PACK/phases.txt"
  schemes="auto"; [ "${RING:-1}" = 1 ] && schemes="auto ring"
  for scheme in $schemes; do
    t0=$(date +%s)
    timeout "${PER_RUN_S:-200}" torchrun --nproc-per-node "$NPROC" -m mmchar profile "$w" $ARGS --sequence-parallel \
      --sp-scheme "$scheme" 2>&1 | grep -v "^W1\|OMP_NUM_THREADS\|^\*\*\*" | tail -4 | tee -a "$PACK/log.txt"
    echo "$w $NPROC GPUs ($scheme): $(( $(date +%s) - t0 )) s" | tee -a "$PACK/phases.txt"
  done
  pack
done
t0=$(date +%s)
timeout "${BENCH_S:-120}" torchrun --nproc-per-node "$NPROC" benchmarks/bench_sequence_parallel.py --out "$PACK/attention" \
  > "$PACK/attention.txt" 2>&1
echo "attention benchmark: $(( $(date +%s) - t0 )) s" | tee -a "$PACK/phases.txt"
mmchar study "$STORE" -o "$PACK/study" > "$PACK/study.txt" 2>&1
python3 -c "import pandas as pd; print(pd.read_csv('$PACK/study/sequence_parallel.csv').to_string())" | tee "$PACK/sequence_parallel.txt"
pack
ls -la "$OUT"
