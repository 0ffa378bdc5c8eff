"""What a run records about where it ran: device, driver, roofs, library versions, numerics settings, commit."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions() -> dict[str, Any]:
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": cudnn, "triton": _version("triton"), "diffusers": _version("diffusers"),
            "transformers": _version("transformers"), "mmchar": _version("mmchar")}


def device_info(device: torch.device) -> dict[str, Any]:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return {"type": "cuda", "name": props.name, "index": device.index or 0,
                "capability": f"{props.major}.{props.minor}", "memory_bytes": props.total_memory,
                "multiprocessors": props.multi_processor_count, "driver": _driver_version(),
                "count": torch.cuda.device_count()}
    return {"type": "cpu", "name": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "driver": None}


def _driver_version() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


def settings() -> dict[str, Any]:
    """Numerics settings that change what kernels run."""
    cuda = torch.backends.cuda
    return {"tf32_matmul": cuda.matmul.allow_tf32, "tf32_cudnn": torch.backends.cudnn.allow_tf32,
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "sdpa_enabled": {"flash": cuda.flash_sdp_enabled(), "mem_efficient": cuda.mem_efficient_sdp_enabled(),
                             "math": cuda.math_sdp_enabled(), "cudnn": cuda.cudnn_sdp_enabled()},
            "math_backend_dtype": "input (mmchar's math backend: matmul, softmax, matmul in the input dtype)"}


def mmchar_version() -> str:
    """The version of the mmchar that ran (the package's own, installed or from a checkout)."""
    import mmchar

    return _version("mmchar") or mmchar.__version__


def source_checkout() -> Path | None:
    """The repository root when mmchar runs from its own source checkout (not an installed copy), else None."""
    root = Path(__file__).resolve().parent.parent
    try:
        project = (root / "pyproject.toml").read_text()
    except OSError:
        return None
    return root if 'name = "mmchar"' in project and (root / ".git").exists() else None


def git_commit() -> str | None:
    """mmchar's own commit: from its source checkout, or from the VCS record pip keeps for an install from a git
    URL; None for an installed copy (never the commit of whatever repository happens to enclose site-packages)."""
    root = source_checkout()
    if root is not None:
        try:
            out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.SubprocessError):
            return None
        commit = out.stdout.strip() if out.returncode == 0 else ""
        if not commit:
            return None
        try:  # read-only: never takes the index lock a user's own git command may need
            dirty = subprocess.run(["git", "--no-optional-locks", "status", "--porcelain", "--untracked-files=no"],
                                   cwd=root, capture_output=True, text=True, timeout=5).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return commit
        return commit + ("-dirty" if dirty else "")
    try:
        direct = json.loads(importlib.metadata.distribution("mmchar").read_text("direct_url.json") or "{}")
    except (importlib.metadata.PackageNotFoundError, ValueError, OSError):
        return None
    return (direct.get("vcs_info") or {}).get("commit_id")


def cache_dir() -> Path:
    """Per-user cache of measured or derived facts (roofs, parameter counts); $MMCHAR_CACHE overrides it."""
    return Path(os.environ.get("MMCHAR_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "mmchar"))


def roofs_cache_path() -> Path:
    return cache_dir() / "roofs.json"


def roofs(device: dict[str, Any]) -> dict[str, Any] | None:
    """The roofs `mmchar calibrate` stored for this device name, or None when it was never calibrated."""
    try:
        cache = json.loads(roofs_cache_path().read_text())
    except (OSError, ValueError):
        return None
    return cache.get(device.get("name", ""))
