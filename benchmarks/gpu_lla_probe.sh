#!/usr/bin/env bash
# LLA on the GPU (issue 16): the config sweep of benchmarks/tune_lla.py at B1 H16 S4096 d64 (D=128: d = 128), Nsight
# Compute on the best config (4 CG iterations), then (unless PROBE_ONLY=1) bench-attn's LLA rows (kernel, eager,
# cuDNN) at S = 4k and the mlstm d = 128 sweep rows beside TFLA (benchmarks/gpu_mixers.sh). Results under $OUT.
. benchmarks/gpu_install.sh; mkdir -p $OUT
d=${D:-64}
timeout 150 python3 -u benchmarks/tune_lla.py 1 16 4096 $d 2>&1 | grep -v Warning | tee $OUT/tune_lla_d$d.txt
best=$(grep '^best' $OUT/tune_lla_d$d.txt | cut -d' ' -f2)
if [ -n "$best" ] && which ncu >/dev/null; then
  timeout 80 ncu --clock-control none -k regex:_lla_fwd --section SpeedOfLight --section ComputeWorkloadAnalysis \
    --section Occupancy --section WarpStateStats --section LaunchStats --section MemoryWorkloadAnalysis \
    python3 -u benchmarks/tune_lla.py 1 16 4096 $d --ncu "$best" > $OUT/ncu_lla_d$d.txt 2>&1; tail -3 $OUT/ncu_lla_d$d.txt
fi
[ -n "${PROBE_ONLY:-}" ] && exit 0
BENCH="d64 S4k" BACKENDS=cudnn,flash,lla MAX_SEQ=4096 BUDGET_S=100 PER_BENCH_S=100 bash benchmarks/gpu_mixers.sh 2>&1 | tail -8
BENCH="d128 S4k|d128 S16k|d128 S64k" BACKENDS=cudnn,flash,mlstm BUDGET_S=150 PER_BENCH_S=90 bash benchmarks/gpu_mixers.sh 2>&1 | tail -12
