#!/usr/bin/env bash
# Nsight Compute on the attention kernels that miss their bars (issue: attention kernels): speed of light, memory
# workload and occupancy of the last launch of each kernel, clocks left alone (device/METHOD.md). Usage:
#   bash benchmarks/ncu_attn.sh OUTDIR        (on the device machine, after the package is installed)
set -u
OUT=${1:-ncu-out}
mkdir -p "$OUT"
run() {  # name, kernel-name regex, ncu_attn.py arguments...
  local name=$1 kernel=$2; shift 2
  timeout 120 ncu --clock-control none --target-processes all --kernel-name "regex:$kernel" --profile-from-start off \
    --launch-count 1 --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy \
    --section LaunchStats --csv --page details python3 -P benchmarks/ncu_attn.py "$@" > "$OUT/$name.csv" 2> "$OUT/$name.err"
  echo "$name: $(wc -l < "$OUT/$name.csv") lines"
}
run triton-flash-d64 "_triton_flash_fwd_kernel" triton-flash --b 4 --h 32 --s 4096 --d 64
run triton-flash-d128 "_triton_flash_fwd_kernel" triton-flash --b 4 --h 16 --s 4096 --d 128
run cudnn-d128 "sdpa|fprop|flash" cudnn --b 4 --h 16 --s 4096 --d 128
run linear-d128-state "_linear_attn_state_kernel" linear --b 1 --h 16 --s 16384 --d 128
run linear-d128-out "_linear_attn_out_kernel" linear --b 1 --h 16 --s 16384 --d 128
run wersa-state "_wersa_state_kernel" wersa --b 4 --h 16 --s 4096 --d 128
run wersa-out "_wersa_out_kernel" wersa --b 4 --h 16 --s 4096 --d 128
