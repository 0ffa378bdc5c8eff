#!/usr/bin/env bash
# GPU evidence of the workload suite, run on the device machine from the repo root (wheels: gpu-wheels.sh and
# benchmarks/extra_wheels.sh): every workload's full preset at its published default size, 2 steps (tokens for
# llamagen; 1 for hunyuanvideo), one timed generation, one profiled step, each in its own process through
# `mmchar sweep` (an OOM is recorded by the tool; a re-run with the same STORE resumes). Slim stores packed into
# $OUT/results.tgz after each.
#   WORKLOADS="sd15 sdxl ..." (default: all, smallest first)  BUDGET_S=540 (stop starting new ones after it)
#   PER_WORKLOAD_S=300 (each one's limit)  DEADLINE_S (optional: no run outlasts it, counted from the script's
#   start, install included; 15 s kept for packing the results)
#   EXTRA="--cpu-offload" (flags added to every workload's; the run records them: the fallback where the
#   resident models do not fit the card, e.g. Wan 2.2 A14B's two 14B experts on an 80 GB H100)
set -u
t0=$(date +%s)
OUT=${OUT:-gpu-out}
STORE=${STORE:-/tmp/wl-runs}
BUDGET_S=${BUDGET_S:-540}
mkdir -p "$OUT" "$STORE"
. benchmarks/gpu_install.sh
mmchar calibrate > /dev/null 2>&1
WORKLOADS=${WORKLOADS:-"sd15 amused llamagen pixart-sigma sana-1.6b sdxl modelscope-t2v animatediff svd sd3-medium phenaki-like cogvideox-2b wan2.1-1.3b flux-dev cogvideox-5b wan2.1-14b"}
# the card's memory in MiB; empty when unknown (then no preset is changed for a small card)
mem_mib=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits 2>/dev/null | head -1 | tr -cd 0-9)
for w in $WORKLOADS; do
  [ $(( $(date +%s) - t0 )) -gt "$BUDGET_S" ] && { echo "budget spent: $w and later not started"; break; }
  steps=2; [ "$w" = llamagen ] && steps=32  # tokens: 1 prefill + 31 decode calls
  extra="${EXTRA:-}"
  # HunyuanVideo: its 720p x 129-frame decode fits one GPU only tiled, as diffusers' own example runs it
  # and one step: at 118,800 tokens a denoiser call should take ~25 s on an H200 (an estimate: never run on a GPU
  # yet; Wan 2.2 A14B's 39,600-token step of two calls took 8.7 s on an H100), and each of the four passes runs it
  [ "$w" = hunyuanvideo ] && { extra="$extra --vae-tiling"; steps=1; }
  psteps=1
  # Wan 2.2 A14B (both presets): at 2 steps the full preset's scheduler gives timesteps 999 and 750, one each side
  # of the 875 boundary, so each expert runs one step; both profiled, the study splits the step by expert
  # On a card under 100 GB (an 80 GB H100) both experts and UMT5 stay resident (68.8 GB) and the 720p decode ran
  # out of memory after the steps: the decode goes in tiles there (recorded in the run), the steps unchanged
  case $w in wan2.2-t2v-a14b|mlperf-wan2.2) psteps=$steps; [ -n "$mem_mib" ] && [ "$mem_mib" -lt 100000 ] && extra="$extra --vae-tiling" ;; esac
  echo "== $w $extra ($(date -u +%H:%M:%S))" | tee -a "$OUT/log.txt"
  limit=${PER_WORKLOAD_S:-300}
  if [ -n "${DEADLINE_S:-}" ]; then
    left=$(( DEADLINE_S - 15 - ($(date +%s) - t0) ))
    [ "$left" -lt 60 ] && { echo "deadline near: $w and later not started"; break; }
    [ "$left" -lt "$limit" ] && limit=$left
  fi
  timeout "$limit" mmchar sweep "$w" --preset full --steps $steps --repeat 1 --profile-steps $psteps \
    --no-trace --device cuda --store "$STORE" $extra 2>&1 | tail -4 | tee -a "$OUT/log.txt"
  tar czf "$OUT/results.tgz" -C "$(dirname "$STORE")" "$(basename "$STORE")"
done
python3 -P benchmarks/summarize_workloads.py "$STORE" -o "$OUT/README.md" > /dev/null 2>&1
ls -la "$OUT"
