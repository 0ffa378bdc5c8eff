"""What the micro-benchmarks (`mmchar bench-attn`, `mmchar bench-linear`) share: timing a call (do_bench's ``ms``
and the GPU time with launches queued ahead), a failed row's note (and whether the CUDA context is lost), the
markdown table, atomic table writes and the rows an earlier run left for ``--resume``."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from mmchar import environment
from mmchar.errors import MmcharError


def _time_ms(fn: Any, device: torch.device) -> float:
    if device.type == "cuda":
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))
    import time

    fn()
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _failed(row: dict[str, Any], e: Exception, device: torch.device) -> bool:
    """Note why ``row`` failed; True when the error broke the CUDA context (nothing more can run here)."""
    first = str(e).strip().splitlines()[0][:100] if str(e).strip() else ""
    if _context_lost(e):
        row["note"] = f"crashed: {type(e).__name__}: {first}"
        return True
    row["note"] = f"failed: {type(e).__name__}: {first}"
    if device.type == "cuda":
        try:
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()
        except Exception as lost:  # noqa: BLE001 - it broke the context after all
            row["note"] = f"crashed: {type(lost).__name__}: {str(lost).strip().splitlines()[0][:100]}"
            return True
    return False


class BenchmarkCrashed(MmcharError):
    """A backend broke the CUDA context mid-benchmark; the rows so far are written."""


class ContextLost(Exception):
    """A kernel broke the CUDA context (an illegal address, a device-side assert): nothing more can run in this
    process. Carries the rows measured so far, the crashed one last."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        super().__init__(rows[-1]["note"])
        self.rows = rows


def _context_lost(e: BaseException) -> bool:
    msg = str(e).lower()  # the sticky errors only: a launch refused for resources leaves the context usable
    return any(s in msg for s in ("illegal memory access", "unspecified launch failure", "device-side assert",
                                  "misaligned address", "illegal instruction", "illegal address"))


def _gpu_ms(fn: Any, device: torch.device) -> float | None:
    """GPU time per call with the launches queued ahead of the GPU (mmchar.kernels.tuning.gpu_time): what the
    call costs inside a model whose host runs ahead. ``ms`` (do_bench) times each call between events around it
    while the host launches it, so a call shorter than its own launch measures the host; both are reported,
    neither replaces the other."""
    if device.type != "cuda":
        return None
    from mmchar.kernels.tuning import gpu_time

    return float(gpu_time(fn, quantiles=(0.5,))[0])


def _timed_row(row: dict[str, Any], fn: Any, flops: float, nbytes: float, device: torch.device) -> None:
    ms = _time_ms(fn, device)
    row.update(ms=ms, tflops=flops / (ms * 1e-3) / 1e12, gbps=nbytes / (ms * 1e-3) / 1e9)
    try:  # the second timing must not lose the first (its flush buffer can be the allocation that fails)
        row["gpu_ms"] = _gpu_ms(fn, device)
    except Exception as e:  # noqa: BLE001 - noted on the row; a context-breaking error is caught by the caller
        if _context_lost(e):
            raise
        row["note"] = f"gpu_ms failed: {type(e).__name__}"


def _markdown(df: pd.DataFrame) -> str:
    def cell(x):
        if x is None or (isinstance(x, float) and x != x):
            return ""
        return f"{x:.3g}" if isinstance(x, float) else str(x)

    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(x) for x in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def write_text_atomic(path: Path, text: str) -> None:
    """Write through a temporary sibling, so an interrupted benchmark never leaves a half table behind."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def previous_rows(path: Path, device: torch.device, keep: set[str]) -> list[dict[str, Any]]:
    """The rows of an earlier run written to ``path`` on the same device, with only the ``keep`` columns (derived
    ones are computed again); [] when there is none.

    Raises:
        ValueError: the file was measured on another device.
    """
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    if data.get("device", {}).get("name") != environment.device_info(device)["name"]:
        raise ValueError(f"{path} was measured on {data.get('device', {}).get('name')}, not on this device; "
                         f"use another --output folder")
    return [{k: v for k, v in r.items() if k in keep} for r in data["rows"]]
