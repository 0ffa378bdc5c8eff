#!/usr/bin/env bash
# The mixers issue's bars on the GPU in one call: bench-attn's mlstm rows beside TFLA at d = 128, RWKV-7 beside
# fla's chunk_rwkv7 at d = 64, LLA beside its eager form and cuDNN (own folder: bench-lla). $OUT/results.tgz.
export PER_BENCH_S=${PER_BENCH_S:-110}
BENCH="d128 S4k|d128 S16k|d128 S64k" BACKENDS=cudnn,flash,mlstm BUDGET_S=130 bash benchmarks/gpu_mixers.sh 2>&1 | tail -14
BENCH="d64 S4k|d64 S16k" BACKENDS=cudnn,flash,lla MAX_SEQ=16384 BENCH_DIR=/tmp/mixers/bench-lla BUDGET_S=90 \
  bash benchmarks/gpu_mixers.sh 2>&1 | tail -8
BENCH="d64 S4k|d64 S64k|d64 S16k" BACKENDS=cudnn,flash,rwkv7 BUDGET_S=170 bash benchmarks/gpu_mixers.sh 2>&1 | tail -14
