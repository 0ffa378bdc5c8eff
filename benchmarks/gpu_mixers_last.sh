#!/usr/bin/env bash
# The mixers issue's last device call of 2026-12-05: the H200's roofs, RWKV-7 beside fla's chunk_rwkv7 (causal,
# d = 64, S = 4k), then sd15 and llamagen end to end under each mixer. $OUT/results.tgz, $OUT/log.txt.
export PER_BENCH_S=150
CALIBRATE=1 BENCH="causal d64 S4k" BACKENDS=cudnn,rwkv7 BUDGET_S=150 bash benchmarks/gpu_mixers.sh 2>&1 | tail -10
WORKLOADS=sd15 MIXERS=cudnn,mlstm,rwkv7,lla STEPS=2 REPEAT=1 PER_RUN_S=90 BUDGET_S=80 bash benchmarks/gpu_mixers.sh 2>&1 | tail -8
WORKLOADS=llamagen MIXERS=cudnn,mlstm,rwkv7,lla REPEAT=1 PER_RUN_S=80 BUDGET_S=60 \
  COMPARE_ARGS="--kv-cache dynamic --fallback cudnn" bash benchmarks/gpu_mixers.sh 2>&1 | tail -8
