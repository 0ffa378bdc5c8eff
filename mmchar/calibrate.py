"""`mmchar calibrate`: the device's roofs (dense matmul TFLOP/s per dtype, FP8 on sm89+, copy GB/s), measured once and kept
in a per-user cache keyed by device name. Every run records them in meta.json; every "% of roof" refers to them.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from typing import Any

import torch

from mmchar import environment
from mmchar.devices import synchronize


def _best_ms(fn: Any, device: torch.device, reps: int) -> float:
    fn()
    synchronize(device)
    best = float("inf")
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            synchronize(device)
            best = min(best, start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            best = min(best, (time.perf_counter() - t0) * 1e3)
    return best


def measure_roofs(device: torch.device) -> dict[str, Any]:
    """Best-of-N dense matmul throughput (n³, n = 8192 on a GPU) per dtype and device-memory copy bandwidth."""
    cuda = device.type == "cuda"
    n = 8192 if cuda else 1024
    reps = 20 if cuda else 3
    matmul: dict[str, float] = {}
    for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16), ("fp32", torch.float32)):
        if not cuda and dtype != torch.float32:
            continue
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        ms = _best_ms(lambda: torch.mm(a, b), device, reps)
        matmul[name] = 2.0 * n ** 3 / (ms * 1e-3) / 1e12
    fp8 = _fp8_tflops(device, n, reps)
    if isinstance(fp8, float):
        matmul["fp8"] = fp8
    numel = (1 << 28) if cuda else (1 << 24)  # 512 MiB of bf16 on a GPU
    src = torch.empty(numel, device=device, dtype=torch.bfloat16).fill_(1.0)
    dst = torch.empty_like(src)
    ms = _best_ms(lambda: dst.copy_(src), device, reps)
    copy_gbps = 2.0 * src.numel() * src.element_size() / (ms * 1e-3) / 1e9
    dev = environment.device_info(device)
    return {"device": dev["name"], "matmul_tflops": matmul, "copy_gbps": copy_gbps, "matmul_n": n,
            "measured": datetime.now(timezone.utc).isoformat(), "torch": torch.__version__,
            **({"fp8_unmeasured": fp8} if isinstance(fp8, str) else {})}


def _fp8_capable(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


def _fp8_tflops(device: torch.device, n: int, reps: int) -> float | str | None:
    """The FP8 (e4m3) tensor-core roof on sm89+, the matmul the ``fp8`` projection backend runs
    (``torch._scaled_mm``, per-tensor scales, bf16 out): TFLOP/s; a string saying why it could not be measured
    (an old PyTorch); None off such devices."""
    if not _fp8_capable(device):
        return None
    try:
        a = torch.randn(n, n, device=device).to(torch.float8_e4m3fn)
        b = torch.randn(n, n, device=device).to(torch.float8_e4m3fn).t()  # its second operand column-major
        one = torch.ones((), device=device, dtype=torch.float32)
        ms = _best_ms(lambda: torch._scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=torch.bfloat16), device,
                      reps)
    except (RuntimeError, AttributeError, TypeError) as e:
        return f"{type(e).__name__}: {str(e).strip().splitlines()[0][:100] if str(e).strip() else ''}"
    return 2.0 * n ** 3 / (ms * 1e-3) / 1e12


def _stale(roofs: dict[str, Any], device: torch.device) -> bool:
    """Cached roofs from before the FP8 roof existed lack it on a device that has one: measured again."""
    return _fp8_capable(device) and "fp8" not in roofs.get("matmul_tflops", {}) and "fp8_unmeasured" not in roofs


def calibrate(device: torch.device, *, force: bool = False) -> dict[str, Any]:
    """The cached roofs of ``device``, measured first when missing (or ``force``, or cached before the FP8 roof on an
    sm89+ GPU: `_stale`). A measurement the noise guard flags (other processes on the CPU of a CPU calibration, on
    the GPU or its clocks slowed for a GPU one) is returned with its ``noise`` verdict and not cached: every run
    records the cached roofs, and one measured under load (0.08 against 0.19 TFLOP/s on a busy CPU) put a kernel at
    168 % of its "roof"."""
    dev = environment.device_info(device)
    path = environment.roofs_cache_path()
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        cache = {}
    if force or dev["name"] not in cache or _stale(cache[dev["name"]], device):
        from mmchar.noise import HostProbe, verdict
        from mmchar.store import check_writable

        check_writable(path.parent, "MMCHAR_CACHE")  # before measuring: an unwritable cache would lose it
        path.parent.mkdir(parents=True, exist_ok=True)

        probe = HostProbe(device, needed_cores=float(torch.get_num_threads()) if device.type == "cpu" else 1.0)
        probe.start()
        measured = measure_roofs(device)
        noise = verdict({}, {"calibration": probe.stop()}, on_gpu=device.type == "cuda")
        if noise["noisy"]:
            return {**measured, "noise": noise}
        cache[dev["name"]] = measured
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(cache, indent=2))
        tmp.replace(path)
    return cache[dev["name"]]
