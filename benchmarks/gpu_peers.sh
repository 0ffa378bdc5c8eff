#!/usr/bin/env bash
# Issue 17's peers on the GPU (sage, diffusers:*, fla's linear kernel) (one device call, .whl carried with sageattention-1.0.6 and diffusers): bench-attn on
# the workloads' own attention shapes and the d = 64 / 128 sweep at 4k and 16k for `sage` and diffusers'
# dispatcher backends beside cuDNN and flash, then SD 1.5 and Wan 2.1 end to end under them (output agreement
# against cuDNN recorded: SageAttention quantises QKᵀ). $OUT/results.tgz holds /tmp/peers.
set -u
. benchmarks/gpu_install.sh
export PYTHONSAFEPATH=1
mkdir -p /tmp/peers
B=cudnn,flash,sage,diffusers:native,diffusers:_native_cudnn,diffusers:flex
timeout 200 mmchar bench-attn --only workloads --backends "$B" --resume -o /tmp/peers/bench 2>&1 | grep -v "^|" | tail -3
for m in "d64 S4k" "d128 S4k" "d64 S16k" "d128 S16k"; do
  timeout 60 mmchar bench-attn --only sweep --match "$m" --backends "$B" --resume -o /tmp/peers/bench 2>&1 | tail -2
done
# causal linear beside fla's chunk_linear_attn, normalised and not (fla's layout, inputs made outside the call)
for m in "causal d64 S4k" "causal d128 S4k" "causal d64 S16k" "causal d128 S16k" "causal d64 S64k"; do
  timeout 90 mmchar bench-attn --only sweep --match "$m" --backends cudnn,linear --resume -o /tmp/peers/bench-linear \
    2>&1 | tail -2
done
tar czf "$OUT/results.tgz" -C /tmp peers
for w in sd15 wan2.1-1.3b; do
  timeout 150 mmchar compare "$w" --preset full --backends cudnn,sage,diffusers:_native_cudnn --steps 2 --repeat 1 \
    --profile-steps 1 --no-trace --device cuda --store /tmp/peers/runs 2>&1 | tail -8
  tar czf "$OUT/results.tgz" -C /tmp peers
done
