# Sourced by the benchmarks/gpu_*.sh scripts on the device machine, from the repo root: the carried wheels (.whl/,
# see ../shared/tools/gpu-wheels.sh and benchmarks/extra_wheels.sh) into /tmp/site beside the image's torch, then
# this checkout; stops the calling script when either install fails.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 KINETO_LOG_LEVEL=5
python3 -m pip install -q --no-index --no-deps --no-build-isolation . || exit 1
