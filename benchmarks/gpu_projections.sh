#!/usr/bin/env bash
# Projection backends (issue 18) on the GPU, one device call per stage, .whl carried (torchao among its wheels:
# benchmarks/extra_wheels.sh); results in $OUT/results.tgz (/tmp/proj), console $OUT/log.txt:
#   STAGE=kernel bash benchmarks/gpu_projections.sh    # the Memory Layer's and fp8's GPU tests, then
#                                                      # probe_memory_layer (kernel vs eager, embedding_bag, cuBLAS)
#   STAGE=compare WORKLOADS="wan2.1-1.3b sd15" bash benchmarks/gpu_projections.sh
#                                                      # mmchar compare under dense, fp8, memoryformer (slim runs)
#   STAGE=linear bash benchmarks/gpu_projections.sh     # mmchar bench-linear (workload shapes and the token sweep),
#                                                      # --resume: a second call measures what the first lacked
# PRE="STAGE=causal ..." style chaining is the caller's: each stage appends to the same log and archive.
set -u
. benchmarks/gpu_install.sh
export PYTHONSAFEPATH=1
mkdir -p /tmp/proj
save() { tar czf "$OUT/results.tgz" -C /tmp proj; }
log() { tee -a "$OUT/log.txt"; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | log
case "${STAGE:-kernel}" in
  kernel)
    timeout "${TESTS_S:-150}" python3 -m pytest -m gpu -q -p no:cacheprovider tests/kernels/test_memory_layer.py \
      tests/test_linear_swap.py 2>&1 | tail -6 | log
    timeout "${PROBE_S:-240}" python3 -u benchmarks/probe_memory_layer.py --out /tmp/proj/probe_memory_layer.md 2>&1 \
      | grep -v Warning | log
    save ;;
  compare)
    for w in ${WORKLOADS:-wan2.1-1.3b}; do
      # shellcheck disable=SC2086
      timeout "${PER_S:-300}" mmchar compare "$w" --preset full --backends "${BACKENDS:-cudnn}" \
        --linear-backend dense,fp8,memoryformer --steps "${STEPS:-2}" --repeat "${REPEAT:-2}" --profile-steps 1 \
        --no-trace --device cuda --store /tmp/proj/runs ${EXTRA:-} 2>&1 | tail -14 | log
      save
    done ;;
  linear)
    # an earlier call's rows (committed under RESUME_FROM) are resumed, not measured again
    if [ -n "${RESUME_FROM:-}" ] && [ ! -e /tmp/proj/bench-linear/linear.json ]; then
      mkdir -p /tmp/proj/bench-linear && cp "$RESUME_FROM/linear.json" /tmp/proj/bench-linear/
    fi
    # shellcheck disable=SC2086
    timeout "${LINEAR_S:-400}" mmchar bench-linear --device cuda --resume -o /tmp/proj/bench-linear ${EXTRA:-} 2>&1 \
      | grep -v Warning | tail -40 | log
    save ;;
esac
