#!/usr/bin/env bash
# GPU evidence of the core issue, run on the device machine from the repo root:
#   profile sd15 (512x512, batch 1 with guidance) and modelscope-t2v (16 frames, 256x256) under math, flash and
#   cudnn; the swap-overhead benchmark; the gpu-marked tests. Results under $OUT (or ./gpu-out).
set -u
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
STEPS=${STEPS:-4}
. benchmarks/gpu_install.sh
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
S=/tmp/gpu-runs
mmchar backends --device cuda | tee "$OUT/backends.txt"
for wl in sd15 modelscope-t2v; do
  mmchar compare $wl --preset full --backends math,flash,cudnn,efficient --steps "$STEPS" --repeat 5 --device cuda --store "$S" 2>&1 | tee "$OUT/compare-$wl.txt"
done
# cudnn refuses some layers? then the same with the flash fallback, so its figures exist too
if grep -q "cannot take" "$OUT"/compare-*.txt; then
  for wl in sd15 modelscope-t2v; do
    grep -q "cudnn: error.*cannot take" "$OUT/compare-$wl.txt" && \
      mmchar profile $wl --preset full --backend cudnn --fallback flash --steps "$STEPS" --device cuda --store "$S" 2>&1 | tee "$OUT/profile-$wl-cudnn-fallback.txt"
  done
fi
# a local pipeline folder (save_pretrained of the tiny preset) profiled with --pipeline on the GPU
python3 -P -c "
from mmchar.workloads import get_workload
w = get_workload('sd15'); w.build(w.resolve('tiny', device='cpu')).pipe.save_pretrained('/tmp/tiny-sd15')"
mmchar profile --pipeline /tmp/tiny-sd15 --prompt "a cat" --steps 4 --height 64 --width 64 --device cuda --store /tmp/pipe-runs 2>&1 | tail -12 | tee "$OUT/profile-pipeline.txt"
python3 -u benchmarks/bench_swap_overhead.py --device cuda --out "$OUT" 2>&1 | tee "$OUT/swap.txt"
python3 -P -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider 2>&1 | tail -15 | tee "$OUT/pytest-gpu.txt"
# pack: slim run stores (no traces), the benchmark tables and the logs in one archive; one trace beside it
mkdir -p /tmp/pack && cp -r /tmp/gpu-runs /tmp/pack/runs && cp "$OUT"/*.md "$OUT"/*.json "$OUT"/*.txt /tmp/pack/ 2>/dev/null
tar czf "$OUT/results.tgz" --exclude='*.trace.json.gz' -C /tmp/pack .
t=$(ls /tmp/gpu-runs/sd15-flash-*/trace.pt.trace.json.gz 2>/dev/null | head -1)
[ -n "$t" ] && cp "$t" "$OUT/sd15-flash.trace.json.gz"
rm -f "$OUT"/*.md "$OUT"/*.json "$OUT"/compare-*.txt "$OUT"/backends.txt "$OUT"/swap.txt
ls -la "$OUT"
