"""Shared fixtures. GPU tests carry the ``gpu`` marker and skip without CUDA."""

from __future__ import annotations

import os
import shutil
import warnings

os.environ.setdefault("KINETO_LOG_LEVEL", "5")
# Triton kernels run in Triton's interpreter where there is no GPU (set before anything imports triton).
if shutil.which("nvidia-smi") is None:
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
warnings.filterwarnings("ignore")

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
