#!/usr/bin/env bash
# GPU evidence of the multi-GPU issues, run on a several-GPU device machine from the repo root (wheels in .whl/):
# each video DiT's full preset profiled on 1 GPU and split over 2, 4, 8 GPUs (up to the machine's count) under
# every scheme (`torchrun ... mmchar profile --sequence-parallel --sp-scheme S`, and CFG parallelism alone or with
# sequence parallelism inside each half), the attention-level benchmark (benchmarks/bench_sequence_parallel.py),
# optionally the sharded suite sweep (SWEEP=1), and `mmchar study` over the store: sequence_parallel.csv holds step
# latency, speedup, efficiency and the communication per step. Slim stores + study packed into $OUT/results.tgz
# after each run (a call cut short keeps what finished; a later call with the same STORE adds runs: split a grid
# that outlasts one call by COUNTS or SCHEMES, with BASELINE=0 after the first).
#   WORKLOADS="wan2.1-1.3b cogvideox-2b wan2.1-14b cogvideox-5b"  COUNTS="2 4 8" (kept <= the GPUs)
#   SCHEMES="ulysses ring usp cfg"  PER_RUN_S=300  STEPS=2 REPEAT=2  BASELINE=1 (0: skip the 1-GPU run)
#   SWEEP=0 (1: also the sharded suite sweep after the grid; only: the sweep alone)  SWEEP_STORE=/tmp/sweep-runs
# USP runs from 4 ranks, CFG parallel alone on 2 (with sequence parallelism in each half from 4). Ulysses where the
# ranks do not divide the heads (Wan 1.3B's 12 on 8, CogVideoX-2B's 30 on 4 and 8) is refused by mmchar in one line
# at its first attention call; the line lands in log.txt.
set -u
OUT=${OUT:-gpu-out}
STORE=${STORE:-/tmp/sp-runs}
PACK=/tmp/sp-pack
mkdir -p "$OUT" "$STORE" "$PACK"
. benchmarks/gpu_install.sh
export PYTHONSAFEPATH=1  # `-m mmchar` / torchrun import the installed package, not ./mmchar
NGPU=$(nvidia-smi -L | wc -l)
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$PACK/gpu.txt"
nvidia-smi topo -m > "$PACK/topo.txt" 2>&1
mmchar calibrate 2>&1 | tail -3 | tee "$PACK/calibrate.txt"
ARGS="--preset full --steps ${STEPS:-2} --repeat ${REPEAT:-2} --profile-steps 1 --no-trace --device cuda --store $STORE"
pack() { tar czf "$OUT/results.tgz" -C "$(dirname "$STORE")" "$(basename "$STORE")" -C "$(dirname "$PACK")" "$(basename "$PACK")"; }
devices() { seq -s, 0 $(( $1 - 1 )); }  # the first N GPUs
# the flags of one scheme at N ranks ("" where it cannot run there)
scheme_flags() {
  local scheme=$1 n=$2
  case $scheme in
    ulysses|ring) echo "--sequence-parallel --sp-scheme $scheme" ;;
    usp) [ "$n" -ge 4 ] && echo "--sequence-parallel --sp-scheme usp" ;;
    cfg) if [ "$n" -eq 2 ]; then echo "--cfg-parallel"; else echo "--cfg-parallel --sequence-parallel"; fi ;;
  esac
}
GRID_WORKLOADS=${WORKLOADS:-wan2.1-1.3b cogvideox-2b wan2.1-14b cogvideox-5b}
[ "${SWEEP:-0}" = only ] && GRID_WORKLOADS="" COUNTS=""
for w in $GRID_WORKLOADS; do
  if [ "${BASELINE:-1}" = 1 ]; then  # BASELINE=0: a later call of the same grid (same STORE) that has it already
    t0=$(date +%s)
    CUDA_VISIBLE_DEVICES=0 timeout "${PER_RUN_S:-300}" mmchar profile "$w" $ARGS 2>&1 | tail -3 | tee -a "$PACK/log.txt"
    echo "$w 1 GPU: $(( $(date +%s) - t0 )) s" | tee -a "$PACK/phases.txt"
    pack
  fi
  for n in ${COUNTS-2 4 8}; do
    [ "$n" -gt "$NGPU" ] && { echo "$w: $n GPUs skipped ($NGPU here)" | tee -a "$PACK/phases.txt"; continue; }
    for scheme in ${SCHEMES:-ulysses ring usp cfg}; do
      flags=$(scheme_flags "$scheme" "$n")
      [ -z "$flags" ] && continue
      t0=$(date +%s)
      CUDA_VISIBLE_DEVICES=$(devices "$n") timeout "${PER_RUN_S:-300}" torchrun --nproc-per-node "$n" -m mmchar \
        profile "$w" $ARGS $flags 2>&1 | grep -v "^W1\|OMP_NUM_THREADS\|^\*\*\*" | tail -4 | tee -a "$PACK/log.txt"
      echo "$w $n GPUs ($scheme: $flags): $(( $(date +%s) - t0 )) s" | tee -a "$PACK/phases.txt"
      pack  # after every run: a call cut short keeps what finished
    done
  done
  pack
done
for n in ${COUNTS-2 4 8}; do
  [ "$n" -gt "$NGPU" ] && continue
  t0=$(date +%s)
  CUDA_VISIBLE_DEVICES=$(devices "$n") timeout "${BENCH_S:-120}" torchrun --nproc-per-node "$n" \
    benchmarks/bench_sequence_parallel.py --out "$PACK/attention" > "$PACK/attention-$n.txt" 2>&1
  echo "attention benchmark, $n GPUs: $(( $(date +%s) - t0 )) s" | tee -a "$PACK/phases.txt"
  pack
done
if [ "${SWEEP:-0}" != 0 ]; then  # the whole suite at its published sizes, sharded over every GPU, one store;
  # SWEEP_S bounds it inside a device call: a re-run with the same SWEEP_STORE resumes the points left
  SWEEP_STORE=${SWEEP_STORE:-/tmp/sweep-runs}
  mkdir -p "$SWEEP_STORE"
  t0=$(date +%s)
  timeout "${SWEEP_S:-420}" torchrun --nproc-per-node "$NGPU" -m mmchar sweep all --preset full --steps 2 --repeat 1 \
    --profile-steps 1 --no-trace --device cuda --store "$SWEEP_STORE" --distributed 2>&1 | tail -40 \
    | tee "$PACK/sweep.txt"
  echo "sharded sweep over $NGPU GPUs: $(( $(date +%s) - t0 )) s" | tee -a "$PACK/phases.txt"
  tar czf "$OUT/sweep.tgz" -C "$(dirname "$SWEEP_STORE")" "$(basename "$SWEEP_STORE")"
fi
mmchar study "$STORE" -o "$PACK/study" > "$PACK/study.txt" 2>&1
python3 -c "import pandas as pd; print(pd.read_csv('$PACK/study/sequence_parallel.csv').to_string())" | tee "$PACK/sequence_parallel.txt"
pack
ls -la "$OUT"
