"""What every Triton kernel of mmchar shares: the interpreter switch, autotune keys bucketed by powers of two,
autotuning with results cached per machine (so a kernel is tuned once, not once per process), and the Hopper
tensor-descriptor (TMA) checks and scratch that the streaming kernels (triton_flash, lla) use."""

from __future__ import annotations

import functools
import inspect
import math
import os
import time
from collections.abc import Callable
from typing import Any

import torch
import triton
import triton.language as tl


def interpreting() -> bool:
    """Under TRITON_INTERPRET=1 (the CPU tests) kernels run one fixed small config instead of autotuning."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def tuning_off() -> bool:
    """MMCHAR_AUTOTUNE=0: each kernel runs the first config its pruning keeps (timed once by Triton before 3.9, but
    compared with none). For correctness runs (the GPU tests: tuning every config at every new shape, compiles
    included, is most of their time); never for timings."""
    return os.environ.get("MMCHAR_AUTOTUNE", "1") == "0"


def bucket(n: int) -> int:
    """An autotune key: the next power of two (at least 16), so nearby sizes share one tuning."""
    return 1 << max(4, math.ceil(math.log2(max(n, 1))))


# Configs whose median time is within this fraction of the fastest count as tied: the earliest of them in the
# kernel's own list wins. Two timings of near-equal configs swap order from one machine (or tuning) to the next,
# so the raw minimum picks differently between machines (one cause of a linear-attention call moving 1.65x
# between two fresh H200s at one shape, issue 17). Each list puts the config preferred on a tie first.
TIE = 0.02  # about the spread of gpu_time medians: a pick costs at most that


def steady_pick(timings: dict, configs: list) -> Any:
    """The first config of ``configs`` whose median is within `TIE` of the fastest (Triton's timings are
    [median, p20, p80] lists; a config that failed to compile times as inf)."""
    best = min(t[0] for t in timings.values())
    return next((c for c in configs if c in timings and timings[c][0] <= best * (1.0 + TIE)),
                min(timings, key=timings.get))


class _Autotuner(triton.runtime.autotuner.Autotuner):
    """Triton's autotuner, choosing with `steady_pick` after its timing (fresh or from its disk cache), and
    launching a key's chosen config directly once it has one.

    Triton's own per-call lookup rebuilds the key from every argument (a dict of all of them, each name searched
    in a list of names): tens of µs of host time per launch, which a short attention call cannot hide (triton_flash
    at 83-116 µs per call, 56-61 µs without it: benchmarks/results/attention/README.md). `_fast_key` holds the same
    information (the key arguments' values and every argument's dtype), so a hit launches what Triton would."""

    def check_disk_cache(self, tuning_key, configs, bench_fn):
        used_cache = super().check_disk_cache(tuning_key, configs, bench_fn)
        timings = getattr(self, "configs_timings", None)
        if tuning_key and timings:
            self.cache[tuning_key] = steady_pick(timings, configs)
        return used_cache

    def _fast_key(self, args: tuple, kwargs: dict) -> tuple:
        n = len(args)
        return (tuple(args[i] if i < n else kwargs.get(k) for i, k in self.key_at),
                tuple(getattr(a, "dtype", None) for a in args),
                tuple(getattr(v, "dtype", None) for v in kwargs.values()))

    def run(self, *args, **kwargs):
        key = self._fast_key(args, kwargs)
        chosen = self.chosen.get(key)
        if chosen is None:  # the first call of a key: Triton's path (tuning, its disk cache, pre-hooks)
            ret = super().run(*args, **kwargs)
            if self.best_config.pre_hook is None:  # a direct launch would skip a hook: such configs stay on it
                self.chosen[key] = (self.best_config, self.best_config.all_kwargs())
            return ret
        self.best_config = chosen[0]
        return self.fn.run(*args, **kwargs, **chosen[1])


def autotune(fn: Any, configs: list[triton.Config], key: list[str], prune: Callable[..., list],
             reset: list[str] | None = None) -> Any:
    """``triton.autotune`` with a pruning hook, results cached across processes where Triton can, ties between
    configs broken by their order (`steady_pick`), later calls of a tuned key launched directly (`_Autotuner`), and
    ``reset`` (arguments zeroed before each trial: kernels that accumulate with atomics)."""
    def prune_or_first(configs: list, named_args: dict, **kwargs: Any) -> list:
        kept = prune(configs, named_args, **kwargs)
        return kept[:1] if tuning_off() else kept  # one config left: Triton 3.9 times nothing, 3.6 times it once

    kw: dict[str, Any] = {"configs": configs, "key": key, "prune_configs_by": {"early_config_prune": prune_or_first}}
    if reset:
        kw["reset_to_zero"] = reset
    params = inspect.signature(triton.autotune).parameters
    if "cache_results" in params:
        kw["cache_results"] = True  # timings then pass through check_disk_cache, where the steady pick is made
    if "do_bench" in params:
        kw["do_bench"] = gpu_time
    tuner = triton.autotune(**kw)(fn)
    if type(tuner) is triton.runtime.autotuner.Autotuner:
        tuner.__class__ = _Autotuner
        tuner.chosen = {}  # _fast_key -> (the config, its launch arguments)
        tuner.key_at = [(tuner.arg_names.index(k), k) for k in tuner.keys if k in tuner.arg_names]  # (position, name)
    return tuner


def gpu_time(kernel_call: Callable[[], Any], quantiles: tuple[float, ...] = (0.5, 0.2, 0.8)) -> list[float]:
    """Milliseconds of GPU time per launch, for the autotuner to rank configs by.

    Triton's default timing issues one launch after another from Python; an attention call shorter than its
    launch then measures the launch, and the ranking of configs is noise (two tunings of one shape can pick
    configs far apart: benchmarks/results/attention/kernel-notes.md). Here the launches queue behind a
    sleeping kernel, so the GPU reaches each launch's events with no gap. As in triton.testing.do_bench (what
    bench-attn reports), L2 is flushed before every launch, so memory-bound passes are ranked cold, not by
    what fits a warm 50 MB L2.
    """
    import torch

    kernel_call()
    torch.cuda.synchronize()
    flush = torch.empty(64 * 2**20 // 4, dtype=torch.int32, device="cuda")  # more than an H100's 50 MB L2
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    t0 = time.perf_counter()
    kernel_call()
    host_us = (time.perf_counter() - t0) * 1e6  # the host's share of one call (many launches for eager forms)
    end.record()
    torch.cuda.synchronize()
    n = int(min(100, max(5, 2.0 / max(start.elapsed_time(end), 1e-3))))  # about 2 ms of work
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    # per queued flush + launch, twice the host's time (and at least ~100 us) of SM cycles at ~2 GHz: Python
    # stays ahead of the GPU even for a call that launches dozens of kernels
    torch.cuda._sleep(n * max(200_000, int((host_us + 20.0) * 4_000)))
    for s, e in zip(starts, ends):
        flush.zero_()
        s.record()
        kernel_call()
        e.record()
    torch.cuda.synchronize()
    samples = sorted(s.elapsed_time(e) for s, e in zip(starts, ends))
    return [samples[min(n - 1, int(q * n))] for q in quantiles]


def kernel_times(fn: Callable[[], Any], calls: int = 10, width: int = 40) -> dict[str, float]:
    """µs of GPU time per call, per kernel name cut to ``width`` characters (the profiler's device time over
    ``calls`` calls back to back, L2 warm, after three that tune and compile): what one kernel of a call costs,
    unmoved by the host and by the call's other kernels."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    per: dict[str, float] = {}
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            per[e.name[:width]] = per.get(e.name[:width], 0.0) + e.device_time / calls
    return per


def host_us(fn: Callable[[], Any], calls: int = 300, rounds: int = 5) -> float:
    """Microseconds of host time (Python and launches) per call, the median of ``rounds``, each behind ~0.1 s of
    GPU work queued ahead so that no call waits on the GPU: what a call costs the host when the GPU is busy."""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(rounds):
        torch.cuda._sleep(200_000_000)
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - t0) / calls * 1e6)
        torch.cuda.synchronize()
    return sorted(times)[rounds // 2]


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device, asked once per device (grids sized to fill the GPU)."""
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())


@functools.lru_cache(maxsize=None)
def _sm_major(index: int) -> int:
    """The device's compute capability major, asked once per device: the query is a host cost on every call's
    launch path, which small attention calls cannot hide."""
    return torch.cuda.get_device_capability(index)[0]


def tma_allowed(*tensors: torch.Tensor) -> bool:
    """Whether per-head 2-D tensor descriptors can address these [B, H, S, D] tensors: a Hopper-or-newer GPU,
    a contiguous head dim, and a 16-byte aligned base and row stride (what the copy engine requires)."""
    if not hasattr(tl, "make_tensor_descriptor") or interpreting():
        return False
    t0 = tensors[0]
    if t0.device.type != "cuda" or _sm_major(t0.device.index) < 9:
        return False
    for t in tensors:
        size = t.element_size()
        if size != 2:  # fp16/bf16 only: fp32 tiles of 128+ columns exceed what the tuned list was chosen for
            return False
        if t.stride(-1) != 1 or t.data_ptr() % 16:
            return False
        # the row stride always goes into the descriptor; batch and head strides only offset its base
        if (t.stride(2) * size) % 16 or any(n > 1 and (st * size) % 16 for n, st in zip(t.shape[:2], t.stride()[:2])):
            return False
    return True


def _scratch(size: int, alignment: int, stream: int | None) -> torch.Tensor:
    return torch.empty(size, dtype=torch.int8, device="cuda")


def ensure_descriptor_scratch() -> None:
    """Descriptors made inside a kernel live in a small global scratch buffer that Triton asks the host for.
    Triton keeps the allocator in a context variable (per thread), so it is set on every call that needs it."""
    if hasattr(triton, "set_allocator"):
        triton.set_allocator(_scratch)
