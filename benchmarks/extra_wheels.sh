#!/usr/bin/env bash
# Wheels the GPU machine lacks beyond ../shared/tools/gpu-wheels.sh (diffusers, plotly, fla-core): accelerate
# (diffusers loads checkpoints with fp32-kept modules, e.g. Wan, only through it) and its psutil, for Python 3.12;
# torchao (the `fp8` projection backend, pyproject's [fp8] extra).
set -eu
mkdir -p .whl
python3 -m pip download -q --no-deps accelerate==1.15.0 -d .whl
python3 -m pip download -q --no-deps torchao==0.18.0 -d .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
  psutil==7.2.2 -d .whl
ls .whl
