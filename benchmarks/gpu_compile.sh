#!/usr/bin/env bash
# GPU evidence of the study issue's launch-bound analysis: eager and --compile runs of sd15, cogvideox-2b and
# llamagen at their full presets, one process each (`mmchar sweep` resumes a cut-off slot), slim stores packed
# into $OUT/results.tgz after each. Run on the device machine from the repo root (wheels: gpu-wheels.sh and
# benchmarks/extra_wheels.sh). Then, here: `mmchar study STORE... -o DIR` and `mmchar dashboard ... --png DIR`.
# Then, while the budget lasts, `mmchar compare W --backends math,flash` of the token models (COMPARE) for the
# study's flash-vs-math question on transformer families.
#   WORKLOADS="sd15 llamagen cogvideox-2b"  MODES="eager compile"  COMPARE="llamagen amused"  BUDGET_S=540
# (MODES=compile when the eager run of a workload is already committed.)
set -u
OUT=${OUT:-gpu-out}
STORE=${STORE:-/tmp/compile-runs}
BUDGET_S=${BUDGET_S:-540}
mkdir -p "$OUT" "$STORE"
. benchmarks/gpu_install.sh
export PYTHONSAFEPATH=1  # `-m mmchar` / torchrun import the installed package, not ./mmchar
mmchar calibrate > /dev/null 2>&1
t0=$(date +%s)
for w in ${WORKLOADS:-sd15 llamagen cogvideox-2b}; do
  steps=4; [ "$w" = llamagen ] && steps=32
  for m in ${MODES:-eager compile}; do
    case $m in eager) mode="" ;; compile) mode="--compile" ;; *) echo "MODES: $m is not eager or compile"; exit 2 ;; esac
    [ $(( $(date +%s) - t0 )) -gt "$BUDGET_S" ] && { echo "budget spent: $w $mode and later not started"; break 2; }
    timeout "${PER_RUN_S:-300}" mmchar sweep "$w" --preset full --steps $steps --repeat 3 --profile-steps 1 --no-trace \
      --device cuda --store "$STORE" $mode 2>&1 | tail -3 | tee -a "$OUT/log.txt"
    tar czf "$OUT/results.tgz" -C "$(dirname "$STORE")" "$(basename "$STORE")"
  done
done
for w in ${COMPARE:-llamagen amused}; do
  [ $(( $(date +%s) - t0 )) -gt "$BUDGET_S" ] && { echo "budget spent: compare $w and later not started"; break; }
  steps=4; kv=""; [ "$w" = llamagen ] && { steps=32; kv="--kv-cache dynamic"; }  # flash takes no mask: static's
  timeout "${PER_RUN_S:-300}" mmchar compare "$w" $kv --backends math,flash --preset full --steps $steps --repeat 3 \
    --profile-steps 1 --no-trace --device cuda --store "$STORE" 2>&1 | tail -4 | tee -a "$OUT/log.txt"
  tar czf "$OUT/results.tgz" -C "$(dirname "$STORE")" "$(basename "$STORE")"
done
ls -la "$OUT"
