#!/usr/bin/env bash
# The mixers issue on the GPU: the three kernels' GPU tests at real shapes, then bench-attn's rows for mlstm,
# rwkv7 and lla beside cuDNN / flash SDPA and the peers (TFLA's mlstm_kernels, fla's chunk_rwkv7) on the sweep
# shapes MATCH selects, then the workloads under each mixer. Run on the device machine from the repo root with
# .whl carried (mlstm_kernels-2.0.6 and fla_core-0.6.0 among the wheels); writes $OUT/results.tgz and $OUT/log.txt.
#   MATCH="S4k" WORKLOADS="sd15 cogvideox-2b" BUDGET_S=500 bash benchmarks/gpu_mixers.sh
set -u
. benchmarks/gpu_install.sh
export PYTHONSAFEPATH=1
t0=$(date +%s)
mkdir -p /tmp/mixers
python3 -m pytest -q -p no:cacheprovider tests/kernels/test_mlstm.py tests/kernels/test_rwkv7.py tests/kernels/test_lla.py \
  tests/test_mixers.py 2>&1 | tail -15 | tee -a "$OUT/log.txt"
mmchar calibrate > /dev/null 2>&1
for m in ${MATCH:-"d128 S4k" "d64 S4k" "d128 S16k" "d64 S16k" "d128 S64k" "d64 S64k"}; do
  [ $(( $(date +%s) - t0 )) -gt "${BUDGET_S:-500}" ] && { echo "budget spent: bench $m and later not started"; break; }
  timeout "${PER_BENCH_S:-120}" mmchar bench-attn --only sweep --match "$m" --backends cudnn,flash,mlstm,rwkv7,lla \
    --resume -o /tmp/mixers/bench 2>&1 | tail -3 | tee -a "$OUT/log.txt"
  tar czf "$OUT/results.tgz" -C /tmp mixers
done
for w in ${WORKLOADS:-sd15 cogvideox-2b}; do
  [ $(( $(date +%s) - t0 )) -gt "${BUDGET_S:-500}" ] && { echo "budget spent: compare $w and later not started"; break; }
  timeout "${PER_RUN_S:-150}" mmchar compare "$w" --preset full --backends cudnn,mlstm,rwkv7,lla --steps 2 --repeat 2 \
    --profile-steps 1 --no-trace --device cuda --store /tmp/mixers/runs 2>&1 | tail -6 | tee -a "$OUT/log.txt"
  tar czf "$OUT/results.tgz" -C /tmp mixers
done
tar czf "$OUT/results.tgz" -C /tmp mixers
