#!/usr/bin/env bash
# What issue 16 still needs from the GPU after its second session (2026-12-05; what that measured is in
# benchmarks/results/attention/mixers-h200-2026-12-05/README.md): run as
#   STAGE=checks bash benchmarks/gpu_mixers_rest.sh     # the whole GPU test suite; RWKV-7 per pass, both layouts;
#                                                       # LLA at d = 128
#   STAGE=workloads bash benchmarks/gpu_mixers_rest.sh  # sd15 under each mixer; LLA inside the video models
# each its own device call (< 10 min), .whl carried; $OUT/results.tgz holds /tmp/mixers (bench-lla/, runs/).
# The compares autotune every mixer kernel at each new attention shape: sd15's UNet has several, hence 300 s.
set -u
case "${STAGE:-checks}" in
  checks)
    GPU_SUITE=1 GPU_SUITE_S=240 bash benchmarks/gpu_mixers.sh 2>&1 | tail -30
    STRIDED=1 NCU=0 bash benchmarks/gpu_rwkv7_probe.sh 2>&1 | tail -8
    BENCH="d128 S4k" BACKENDS=cudnn,flash,lla BENCH_DIR=/tmp/mixers/bench-lla PER_BENCH_S=90 \
      bash benchmarks/gpu_mixers.sh 2>&1 | tail -4 ;;
  workloads)
    WORKLOADS=sd15 MIXERS=cudnn,mlstm,rwkv7,lla REPEAT=1 PER_RUN_S=300 BUDGET_S=300 bash benchmarks/gpu_mixers.sh 2>&1 | tail -8
    WORKLOADS="wan2.1-1.3b cogvideox-2b" MIXERS=cudnn,lla REPEAT=1 PER_RUN_S=130 BUDGET_S=150 \
      COMPARE_ARGS="--frames 17" bash benchmarks/gpu_mixers.sh 2>&1 | tail -8 ;;
esac
