# Sourced by the benchmarks/gpu_*.sh scripts on the device machine, from the repo root: the carried wheels (.whl/,
# see ../shared/tools/gpu-wheels.sh and benchmarks/extra_wheels.sh) into /tmp/site beside the image's torch, then
# this checkout; stops the calling script when either install fails. Each only when it changed: a script that
# runs another sources this again, and a warm machine keeps /tmp between calls.
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 KINETO_LOG_LEVEL=5
wheels=$(ls -l .whl | md5sum)
if [ "$(cat /tmp/site/.wheels 2>/dev/null)" != "$wheels" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  echo "$wheels" > /tmp/site/.wheels
fi
tree=$(find pyproject.toml mmchar kernels workloads analysis dashboards -type f \( -name '*.py' -o -name '*.toml' -o -name '*.json' -o -name '*.js' -o -name '*.css' \) | sort | xargs cat | md5sum)
if [ "$(cat /tmp/site/.mmchar 2>/dev/null)" != "$tree" ]; then
  python3 -m pip install -q --no-index --no-deps --no-build-isolation . || exit 1
  echo "$tree" > /tmp/site/.mmchar
fi
