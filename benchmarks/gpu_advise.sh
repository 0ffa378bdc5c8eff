#!/usr/bin/env bash
# The advisor (issue 19) on the GPU, .whl carried; results in $OUT/advise.tgz (/tmp/adv), console $OUT/log.txt.
# First the runtime modes' GPU tests (CUDA graph capture; TESTS=0 skips them), then per workload: one full-preset
# run (the source), `mmchar advise` on it, and `mmchar advise --validate` of its top opportunities (each a fresh
# `mmchar profile` process of the same work with only that option changed; validation.csv in runs/validate/):
#   WORKLOADS="sd15 llamagen modelscope-t2v" bash benchmarks/gpu_advise.sh
#   TESTS=0 WORKLOADS="cogvideox-2b wan2.1-1.3b" STEPS=4 bash benchmarks/gpu_advise.sh
# EXTRA: more `mmchar profile` arguments of the source runs (the validating runs inherit its configuration)
# BUDGET_S (default 540) stops starting a workload once the call has run that long: the archive keeps what ran.
set -u
. benchmarks/gpu_install.sh
export PYTHONSAFEPATH=1
mkdir -p /tmp/adv
save() { tar czf "$OUT/advise.tgz" -C /tmp adv; }
log() { tee -a "$OUT/log.txt"; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | log
if [ "${TESTS:-1}" = 1 ]; then
  timeout "${TESTS_S:-150}" python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_modes.py 2>&1 | tail -8 | log
fi
for w in ${WORKLOADS:-sd15 llamagen modelscope-t2v}; do
  if [ "$SECONDS" -ge "${BUDGET_S:-540}" ]; then echo "budget spent: $w not run" | log; continue; fi
  timeout "${PER_S:-120}" mmchar profile "$w" --preset full --steps "${STEPS:-10}" --repeat "${REPEAT:-3}" \
    --profile-steps 1 --no-trace --device cuda --store /tmp/adv/runs ${EXTRA:-} 2>&1 | tail -3 | log
  run=$(ls -td /tmp/adv/runs/"$w"-*/ 2>/dev/null | head -1)
  [ -n "$run" ] || { echo "$w: no run" | log; continue; }
  mmchar advise "$run" -o "/tmp/adv/advice-$w.csv" 2>&1 | tail -2 | log
  timeout "${VAL_S:-240}" mmchar advise "$run" --validate --top "${TOP:-3}" 2>&1 | tail -12 | log
  save
done
save
