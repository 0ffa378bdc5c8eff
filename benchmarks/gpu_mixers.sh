#!/usr/bin/env bash
# The mixers issue on the GPU, in stages chosen by the environment (one device call each; run from the repo root
# on the device machine with .whl carried: mlstm_kernels-2.0.6 and fla_core-0.6.0 among the wheels). Everything
# lands in /tmp/mixers, packed into $OUT/results.tgz after every step (a call cut short keeps what it measured);
# the log is $OUT/log.txt.
#   BENCH="d128 S4k|d128 S16k" BACKENDS=cudnn,flash,mlstm bash benchmarks/gpu_mixers.sh   # bench-attn sweep rows
#   TESTS=1 bash benchmarks/gpu_mixers.sh                                                  # the kernels' GPU tests
#   GPU_SUITE=1 bash benchmarks/gpu_mixers.sh                                              # pytest -m gpu, all of it
#   WORKLOADS="sd15 cogvideox-2b" MIXERS=cudnn,mlstm,rwkv7 bash benchmarks/gpu_mixers.sh  # the workloads
# ONLY=workloads takes the workloads' own shapes instead of the sweep's (BENCH then matches e.g. "wan-480p").
# BUDGET_S (default 500) stops starting new steps; PER_BENCH_S / PER_RUN_S bound each one.
set -u
. benchmarks/gpu_install.sh
export PYTHONSAFEPATH=1
t0=$(date +%s)
mkdir -p /tmp/mixers
save() { tar czf "$OUT/results.tgz" -C /tmp mixers; }
spent() { [ $(( $(date +%s) - t0 )) -gt "${BUDGET_S:-500}" ]; }
log() { tee -a "$OUT/log.txt"; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | log
[ -n "${CALIBRATE:-}" ] && { mmchar calibrate 2>&1 | tail -4 | log; }
IFS='|' read -r -a matches <<< "${BENCH:-}"
for m in "${matches[@]}"; do
  spent && { echo "budget spent: bench $m and later not started" | log; break; }
  echo "== bench $m ($(( $(date +%s) - t0 )) s)" | log
  timeout "${PER_BENCH_S:-150}" mmchar bench-attn --only "${ONLY:-sweep}" --match "$m" --backends "${BACKENDS:-cudnn,flash}" \
    --max-seq "${MAX_SEQ:-65536}" --resume -o "${BENCH_DIR:-/tmp/mixers/bench}" 2>&1 | grep -v "^|" | tail -4 | log
  save
done
if [ -n "${GPU_SUITE:-}" ]; then  # the whole GPU suite, as the README runs it (one config per kernel: conftest; SIGINT
  # at the limit, so pytest still prints its summary and durations)
  timeout -s INT "${GPU_SUITE_S:-200}" python3 -m pytest -m gpu -q -p no:cacheprovider --durations=12 tests 2>&1 | tail -30 | log
fi
if [ -n "${TESTS:-}" ] && ! spent; then
  timeout "${TESTS_S:-240}" python3 -m pytest -q -p no:cacheprovider --durations=8 tests/kernels/test_mlstm.py \
    tests/kernels/test_rwkv7.py tests/kernels/test_lla.py tests/test_mixers.py 2>&1 | tail -25 | log
fi
for w in ${WORKLOADS:-}; do
  spent && { echo "budget spent: compare $w and later not started" | log; break; }
  echo "== compare $w ($(( $(date +%s) - t0 )) s)" | log
  timeout "${PER_RUN_S:-200}" mmchar compare "$w" --preset full --backends "${MIXERS:-cudnn,mlstm,rwkv7,lla}" \
    --steps "${STEPS:-2}" --repeat "${REPEAT:-2}" --profile-steps 1 --no-trace --device cuda \
    ${COMPARE_ARGS:-} --store /tmp/mixers/runs 2>&1 | tail -8 | log
  save
done
save
