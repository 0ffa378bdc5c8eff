#!/usr/bin/env bash
# The mixers issue's last device call of 2026-12-05: the H200's roofs, RWKV-7 beside fla's chunk_rwkv7 (causal,
# d = 64, S = 4k), then sd15 end to end under each mixer. $OUT/results.tgz, $OUT/log.txt.
CALIBRATE=1 BENCH="causal d64 S4k" BACKENDS=cudnn,rwkv7 PER_BENCH_S=180 WORKLOADS=sd15 MIXERS=cudnn,mlstm,rwkv7,lla \
  STEPS=2 REPEAT=1 PER_RUN_S=90 BUDGET_S=200 bash benchmarks/gpu_mixers.sh 2>&1 | tail -24
