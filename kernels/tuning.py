"""What every Triton kernel of mmchar shares: the interpreter switch, autotune keys bucketed by powers of two,
and autotuning with results cached per machine (so a kernel is tuned once, not once per process)."""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Callable
from typing import Any

import triton


def interpreting() -> bool:
    """Under TRITON_INTERPRET=1 (the CPU tests) kernels run one fixed small config instead of autotuning."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def bucket(n: int) -> int:
    """An autotune key: the next power of two (at least 16), so nearby sizes share one tuning."""
    return 1 << max(4, math.ceil(math.log2(max(n, 1))))


def autotune(fn: Any, configs: list[triton.Config], key: list[str], prune: Callable[..., list],
             reset: list[str] | None = None) -> Any:
    """``triton.autotune`` with a pruning hook, results cached across processes where Triton can, and
    ``reset`` (arguments zeroed before each trial: kernels that accumulate with atomics)."""
    kw: dict[str, Any] = {"configs": configs, "key": key, "prune_configs_by": {"early_config_prune": prune}}
    if reset:
        kw["reset_to_zero"] = reset
    if "cache_results" in inspect.signature(triton.autotune).parameters:
        kw["cache_results"] = True
    return triton.autotune(**kw)(fn)
