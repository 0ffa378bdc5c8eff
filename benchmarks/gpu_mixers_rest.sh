#!/usr/bin/env bash
# What issue 16 still needs from the GPU after 2026-12-05 (that session's device time ran out): run as
#   STAGE=bars bash benchmarks/gpu_mixers_rest.sh       # roofs; RWKV-7 beside fla (d 64); the whole GPU test suite
#   STAGE=workloads bash benchmarks/gpu_mixers_rest.sh  # LLA at d 128; the four workloads under each mixer
#   STAGE=tests bash benchmarks/gpu_mixers_rest.sh      # the kernels' GPU tests alone
# each its own device call (< 10 min), .whl carried; $OUT/results.tgz holds /tmp/mixers (bench/, bench-lla/, runs/).
# fla's chunk_rwkv7 autotunes for a minute or more per new shape: the RWKV-7 shapes get long per-shape limits.
set -u
case "${STAGE:-bars}" in
  bars)
    CALIBRATE=1 BENCH="causal d64 S4k|causal d64 S16k|causal d64 S64k" BACKENDS=cudnn,flash,rwkv7 \
      PER_BENCH_S=200 BUDGET_S=230 bash benchmarks/gpu_mixers.sh 2>&1 | tail -20
    GPU_SUITE=1 GPU_SUITE_S=170 bash benchmarks/gpu_mixers.sh 2>&1 | tail -30 ;;
  workloads)
    # 480p, 81 frames (the finding's question) under the linear-time mixers; LLA (~1 s per layer call there) on
    # fewer frames, every mixer beside cuDNN in each group
    WORKLOADS="wan2.1-1.3b cogvideox-2b" MIXERS=cudnn,mlstm,rwkv7 REPEAT=1 PER_RUN_S=150 BUDGET_S=240 \
      bash benchmarks/gpu_mixers.sh 2>&1 | tail -16
    WORKLOADS=sd15 MIXERS=cudnn,mlstm,rwkv7,lla REPEAT=1 PER_RUN_S=80 BUDGET_S=60 bash benchmarks/gpu_mixers.sh 2>&1 | tail -8
    WORKLOADS=llamagen MIXERS=cudnn,mlstm,rwkv7,lla REPEAT=1 PER_RUN_S=100 BUDGET_S=60 \
      COMPARE_ARGS="--kv-cache dynamic --fallback cudnn" bash benchmarks/gpu_mixers.sh 2>&1 | tail -8
    WORKLOADS="wan2.1-1.3b cogvideox-2b" MIXERS=cudnn,lla REPEAT=1 PER_RUN_S=100 BUDGET_S=100 \
      COMPARE_ARGS="--frames 17" bash benchmarks/gpu_mixers.sh 2>&1 | tail -8 ;;
  tests)
    TESTS=1 TESTS_S=540 BUDGET_S=600 bash benchmarks/gpu_mixers.sh 2>&1 | tail -25 ;;
esac
