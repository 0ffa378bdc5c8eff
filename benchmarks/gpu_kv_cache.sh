#!/usr/bin/env bash
# LlamaGen's two KV caches on the GPU (issue 15): its own static cache (1144 keys on every call, masked) against
# transformers' growing one (121 ... 1143 keys), at the full preset, one whole 512x512 image (1024 tokens), the
# default attention backend (sdpa: the static cache's mask rules the flash kernel out). Run on the device machine
# from the repo root with .whl carried; writes $OUT/results.tgz (slim run store) and $OUT/log.txt.
#   TOKENS=1024 REPEAT=2 bash benchmarks/gpu_kv_cache.sh
set -u
. benchmarks/gpu_install.sh
export PYTHONSAFEPATH=1
STORE=/tmp/kv-cache/runs
mkdir -p "$STORE"
for kv in static dynamic; do
  timeout "${PER_RUN_S:-280}" mmchar profile llamagen --preset full --kv-cache $kv --steps "${TOKENS:-1024}" \
    --repeat "${REPEAT:-2}" --profile-steps 2 --no-trace --device cuda --store "$STORE" 2>&1 | tail -12 \
    | tee -a "$OUT/log.txt"
done
for r in "$STORE"/*/; do rm -f "$r"/trace.pt.trace.json.gz; done
tar czf "$OUT/results.tgz" -C "$(dirname "$STORE")" "$(basename "$STORE")"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader >> "$OUT/log.txt"
