"""Shared fixtures. GPU tests carry the ``gpu`` marker and skip without CUDA."""

from __future__ import annotations

import os
import shutil
import warnings

os.environ.setdefault("KINETO_LOG_LEVEL", "5")
# Triton kernels run in Triton's interpreter where there is no GPU (set before anything imports triton).
if shutil.which("nvidia-smi") is None:
    os.environ.setdefault("TRITON_INTERPRET", "1")
# the kernels' GPU tests check correctness, not speed: one config per kernel instead of tuning each new shape
# (kernels/tuning.py: tuning_off); MMCHAR_AUTOTUNE=1 tests the tuned picks
os.environ.setdefault("MMCHAR_AUTOTUNE", "0")
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


@pytest.fixture(scope="session")
def torchrun():
    """Run ``torchrun --nproc-per-node N ARGS...`` on a free port, as the README writes it (``-m mmchar`` from the
    checkout's root works: the checkout's folders are the package's); skips where torchrun is missing."""
    import socket
    import subprocess
    import sys
    from pathlib import Path

    exe = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if exe is None:
        pytest.skip("torchrun not installed beside this Python")

    def run(nproc: int, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = {**{k: v for k, v in os.environ.items() if k != "PYTHONSAFEPATH"}, "OMP_NUM_THREADS": "1"}
        return subprocess.run([exe, "--nproc-per-node", str(nproc), "--master-port", str(port), *args],
                              capture_output=True, text=True, env=env, timeout=timeout)

    return run
