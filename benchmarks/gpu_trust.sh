#!/usr/bin/env bash
# GPU evidence of the trust issue, run on the device machine from the repo root:
#   1. the attention swap's own cost per backend on a launch-bound step (SD 1.5 UNet at 512 px, batch 2, bf16,
#      300 alternating forwards per variant; SWAP_BUDGET_S: no round started after it, so a call's limit cuts
#      rounds, not the table): benchmarks/results/swap_overhead.{md,json};
#   2. the noise guard on CUDA: one lone `mmchar profile sd15 --preset full`, then two started at once into one
#      store (each must come out clean or flagged, never silently wrong), their verdicts and windows printed;
#   3. the gpu-marked tests (the CUDA noise guard through NVML, the swapped UNet per backend, the backends).
# Results packed into $OUT/results.tgz after each phase (slim run stores, tables, logs).
set -u
OUT=${OUT:-gpu-out}
mkdir -p "$OUT" /tmp/pack
PHASES=${PHASES:-"swap noise tests"}
. benchmarks/gpu_install.sh
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee /tmp/pack/gpu.txt
S=/tmp/trust-runs
for phase in $PHASES; do
  case $phase in
    swap)
      python3 -u benchmarks/bench_swap_overhead.py --device cuda --rounds "${ROUNDS:-300}" --out /tmp/pack \
        ${SWAP_BUDGET_S:+--budget-s "$SWAP_BUDGET_S"} 2>&1 \
        | tee /tmp/pack/swap.txt ;;
    noise)
      mmchar profile sd15 --preset full --steps 20 --repeat 5 --no-trace --device cuda --store "$S/lone" 2>&1 \
        | tail -4 | tee /tmp/pack/noise-lone.txt
      for i in 1 2; do
        mmchar profile sd15 --preset full --steps 20 --repeat 5 --no-trace --device cuda --store "$S/together" \
          > "/tmp/pack/noise-together-$i.txt" 2>&1 &
      done
      wait
      tail -n 3 /tmp/pack/noise-together-*.txt
      python3 - "$S" <<'PY' | tee /tmp/pack/noise.txt
import json, sys
from pathlib import Path
for meta in sorted(Path(sys.argv[1]).glob("*/*/meta.json")):
    m = json.loads(meta.read_text())
    n, t = m.get("noise") or {}, m["timings"]
    w = (n.get("windows") or {}).get("timed") or {}
    print(meta.parent.parent.name, m["run_id"], "noisy" if n.get("noisy") else "clean",
          f"e2e {t['e2e']['median_ms']:.1f} ms (spread {t['e2e'].get('spread') or 0:.1%})",
          f"step {t['denoiser_step']['median_ms']:.2f} ms (spread {t['denoiser_step'].get('spread') or 0:.1%})",
          f"window {w.get('start_epoch')}-{w.get('end_epoch')}", "gpu", json.dumps(w.get("gpu")))
    for r in n.get("reasons") or []:
        print("   ", r)
PY
      ;;
    tests)
      python3 -P -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider 2>&1 | tail -15 | tee /tmp/pack/pytest-gpu.txt ;;
  esac
  # packed after every phase: a call's limit then loses the phase it cut, not the ones before it
  rm -rf /tmp/pack/runs && cp -r "$S" /tmp/pack/runs 2>/dev/null
  tar czf "$OUT/results.tgz" --exclude='*.trace.json.gz' -C /tmp/pack .
done
ls -la "$OUT"
