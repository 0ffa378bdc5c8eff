#!/usr/bin/env bash
# What issue 16 still needs from the GPU after its second session (2026-12-05; what that measured is in
# benchmarks/results/attention/mixers-h200-2026-12-05/README.md): run as
#   STAGE=checks bash benchmarks/gpu_mixers_rest.sh     # the whole GPU test suite; RWKV-7 per pass, both layouts;
#                                                       # LLA at d = 128
#   STAGE=workloads bash benchmarks/gpu_mixers_rest.sh  # sd15 under each mixer; LLA inside the video models
# each its own device call (< 10 min), .whl carried; $OUT/results.tgz holds /tmp/mixers (bench-lla/, runs/).
#   STAGE=lla128, then STAGE=final                      # the third session's calls (below)
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
  final)  # the mixers' GPU tests one line each, RWKV-7 and LLA first (fla's chunk_rwkv7 autotunes on its first call:
    # the third session's 140 s cut it there), LLA at d = 128 with its 128-row tiles (tune_lla's d = 128 sweep found
    # them 1.6x faster), LLA at 16k (its own autotune at a new length plus the eager row: 200 s)
    . benchmarks/gpu_install.sh; export PYTHONSAFEPATH=1
    timeout -s INT "${TESTS_S:-230}" python3 -m pytest -m gpu -v -p no:cacheprovider --durations=10 \
      tests/kernels/test_rwkv7.py tests/kernels/test_lla.py tests/kernels/test_mlstm.py > "$OUT/gpu_tests_mixers.txt" 2>&1
    tail -14 "$OUT/gpu_tests_mixers.txt"
    BENCH="d128 S4k|d64 S16k" BACKENDS=cudnn,lla BENCH_DIR=/tmp/mixers/bench-lla PER_BENCH_S=160 BUDGET_S=400 \
      bash benchmarks/gpu_mixers.sh 2>&1 | tail -8 ;;
  lla128)  # the LLA config sweep and Nsight Compute at d = 128 (what made the 128-row tiles candidates)
    D=128 PROBE_ONLY=1 bash benchmarks/gpu_lla_probe.sh 2>&1 | tail -14 ;;
esac
