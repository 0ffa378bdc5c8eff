#!/usr/bin/env bash
# GPU evidence of the study's scaling analysis (latency against resolution, frames and batch, fitted exponents):
# `mmchar sweep` series at full presets, each point in its own process, one store (a re-run resumes), packed into
# $OUT/results.tgz after each series; then SANA's own linear attention against the `linear` backend's kernels.
# Run on the device machine from the repo root (wheels: gpu-wheels.sh and benchmarks/extra_wheels.sh):
#   SERIES="sd15-height sd15-batch wan-frames sana-linear"  BUDGET_S=480  PER_SERIES_S=200
set -u
OUT=${OUT:-gpu-out}
STORE=${STORE:-/tmp/scaling-runs}
BUDGET_S=${BUDGET_S:-480}
mkdir -p "$OUT" "$STORE"
. benchmarks/gpu_install.sh
mmchar calibrate > /dev/null 2>&1
common="--preset full --repeat 1 --profile-steps 1 --no-trace --device cuda --store $STORE"
t0=$(date +%s)
for s in ${SERIES:-sd15-height sd15-batch wan-frames sana-linear}; do
  [ $(( $(date +%s) - t0 )) -gt "$BUDGET_S" ] && { echo "budget spent: $s and later not started"; break; }
  case $s in
    sd15-height) cmd="mmchar sweep sd15 --vary height=256,512,768,1024 --width 512 --steps 4 $common" ;;
    sd15-batch) cmd="mmchar sweep sd15 --vary batch=1,2,4,8 --steps 4 $common" ;;
    wan-frames) cmd="mmchar sweep wan2.1-1.3b --vary frames=17,33,49,81 --steps 2 $common" ;;
    sana-linear) cmd="mmchar compare sana-1.6b --backends sdpa,linear --steps 4 $common" ;;
    *) echo "unknown series $s"; continue ;;
  esac
  echo "== $s: $cmd" | tee -a "$OUT/log.txt"
  timeout "${PER_SERIES_S:-200}" $cmd 2>&1 | tail -12 | tee -a "$OUT/log.txt"
  tar czf "$OUT/results.tgz" -C "$(dirname "$STORE")" "$(basename "$STORE")"
done
ls -la "$OUT"
