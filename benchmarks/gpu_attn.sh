#!/usr/bin/env bash
# GPU evidence of the attention-kernels issue, run on the device machine from the repo root:
#   PHASES="tests sweep workloads wersa tune ncu probe launch" (default: tests sweep workloads; per-phase limits SWEEP_S, WORKLOADS_S, else BENCH_S; shape filters SWEEP_MATCH, WORKLOADS_MATCH) — gpu-marked kernel/backend tests, `mmchar bench-attn` on the
#   S sweep and on the workload shapes, Nsight Compute on chosen kernels. Results packed into $OUT/results.tgz.
# Autotuning dominates a fresh machine's time: the tuned choices (Triton's *.autotune.json, a few KB) come back in
# $OUT/autotune.tgz; unpack it into .triton-cache/ here and pass carry=[".whl", ".triton-cache"] next time, and
# the kernels skip their tuning (same Triton, same kernel source, same GPU). tune: every triton_flash candidate
# config timed against SDPA cuDNN/flash (benchmarks/tune_flash.py).
set -u
OUT=${OUT:-gpu-out}
mkdir -p "$OUT" /tmp/pack
PHASES=${PHASES:-tests sweep workloads}
REPO=$PWD
# SEED_DIR: a committed bench folder (SEED_DIR/workloads, SEED_DIR/sweep) that this run's --resume continues
for phase in sweep workloads; do
  [ -n "${SEED_DIR:-}" ] && [ -d "$SEED_DIR/$phase" ] && cp -r "$SEED_DIR/$phase" /tmp/pack/
done
export TRITON_CACHE_DIR=$REPO/.triton-cache
mkdir -p "$TRITON_CACHE_DIR"
. benchmarks/gpu_install.sh
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee /tmp/pack/gpu.txt
mmchar calibrate 2>&1 | tail -6 | tee /tmp/pack/calibrate.txt
for phase in $PHASES; do
  t0=$(date +%s)
  case $phase in
    tests)
      (cd /tmp && timeout "${TEST_S:-200}" python3 -P -m pytest -v -m gpu ${TESTS:-"$REPO/tests/test_gpu.py" "$REPO/tests/kernels"} \
        -p no:cacheprovider -rfEs --tb=short --durations=12 > /tmp/pack/pytest-gpu.txt 2>&1) ;;
    sweep|workloads)
      # a kernel that breaks the CUDA context ends the process with its row recorded as crashed: go on with
      # --resume in a fresh one while the phase's time lasts
      limit_var="${phase^^}_S" match_var="${phase^^}_MATCH"
      limit=${!limit_var:-${BENCH_S:-330}}
      while :; do
        left=$(( limit - ($(date +%s) - t0) ))
        [ "$left" -gt 10 ] || break
        timeout "$left" mmchar bench-attn --only "$phase" --resume ${BACKENDS:+--backends $BACKENDS} ${!match_var:+--match "${!match_var}"} -o "/tmp/pack/$phase" \
          >> "/tmp/pack/$phase.txt" 2>> "/tmp/pack/$phase-progress.txt" && break
        grep -q "broke the CUDA context" "/tmp/pack/$phase-progress.txt" || break
        tail -1 "/tmp/pack/$phase-progress.txt"
      done ;;
    probe)  # every backend alone on SHAPE (B,H,Sq,Skv,d), one process each: which one breaks the context
      for b in ${BACKENDS//,/ }; do
        CUDA_LAUNCH_BLOCKING=1 timeout 120 python3 -u benchmarks/probe_shape.py "$b" ${PROBE_SHAPE:-2,70,1024,300,32} \
          >> /tmp/pack/probe.txt 2>&1 || echo "$b: exit $?" >> /tmp/pack/probe.txt
      done ;;
    launch)  # host cost per call of the small attention calls (benchmarks/probe_launch.py)
      timeout "${LAUNCH_S:-120}" python3 -u benchmarks/probe_launch.py --out /tmp/pack/launch.md > /tmp/pack/launch.txt 2>&1 ;;
    wersa)
      timeout "${WERSA_S:-120}" python3 -u benchmarks/profile_wersa.py --out /tmp/pack/wersa-parts.md > /tmp/pack/wersa.txt 2>&1 ;;
    tune)
      timeout "${TUNE_S:-300}" python3 -u benchmarks/tune_flash.py --out /tmp/pack/tune > /tmp/pack/tune.txt 2>&1 ;;
    ncu)
      timeout "${NCU_S:-200}" bash benchmarks/ncu_attn.sh /tmp/pack/ncu > /tmp/pack/ncu.txt 2>&1 ;;
  esac
  echo "$phase: $(( $(date +%s) - t0 )) s" | tee -a /tmp/pack/phases.txt
  tar czf "$OUT/results.tgz" -C /tmp/pack .
  (cd "$TRITON_CACHE_DIR" && find . -name '*.autotune.json' | tar czf "$OUT/autotune.tgz" -T -)
done
ls -la "$OUT"
