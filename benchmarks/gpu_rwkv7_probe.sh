#!/usr/bin/env bash
# RWKV-7 on the GPU (issue 16): each pass's time per config (benchmarks/probe_rwkv7.py) at B1 H32 T16k d64 on
# contiguous inputs and on the backend's strided views (STRIDED=1 adds that run), then Nsight Compute on the best
# contiguous pair (NCU=0 skips it). Results under $OUT.
. benchmarks/gpu_install.sh; mkdir -p $OUT
timeout 70 python3 -u benchmarks/probe_rwkv7.py 1 32 16384 64 --chunks 32,16 2>&1 | grep -v Warning | tee $OUT/probe_rwkv7.txt
[ -n "${STRIDED:-}" ] && timeout 70 python3 -u benchmarks/probe_rwkv7.py 1 32 16384 64 --chunks 32 --strided 2>&1 \
  | grep -v Warning | tee -a $OUT/probe_rwkv7.txt
best=$(grep '^best C=32' $OUT/probe_rwkv7.txt | head -1 | sed 's/.*ncu: //')
if [ "${NCU:-1}" = 1 ] && [ -n "$best" ] && which ncu >/dev/null; then
  timeout 60 ncu --clock-control none -k regex:_rwkv7_ --section SpeedOfLight --section ComputeWorkloadAnalysis \
    --section Occupancy --section WarpStateStats --section LaunchStats --section MemoryWorkloadAnalysis \
    python3 -u benchmarks/probe_rwkv7.py 1 32 16384 64 --ncu "$best" > $OUT/ncu_rwkv7.txt 2>&1; tail -3 $OUT/ncu_rwkv7.txt
fi
