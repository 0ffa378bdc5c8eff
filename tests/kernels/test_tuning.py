"""The autotuner's timing (kernels/tuning.py): GPU time per launch, not the Python launch path."""

from __future__ import annotations

import os
import time

import pytest
import torch

from mmchar.kernels.tuning import bucket


def test_bucket_is_the_next_power_of_two_from_16():
    assert [bucket(n) for n in (0, 1, 16, 17, 77, 4096, 4097)] == [16, 16, 16, 32, 128, 4096, 8192]


@pytest.mark.gpu
def test_gpu_time_measures_the_gpu_not_the_launch():
    """A 16-element add takes a few us on the GPU; launched after 50 us of host work it must still time as a
    few us (one-at-a-time timing would see the 50); and a 64x larger matmul must time well over 20x the smaller
    one (both timed as GPU work)."""
    from mmchar.kernels.tuning import gpu_time

    x = torch.zeros(16, device="cuda")

    def slow_launch() -> None:
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 50e-6:  # the host's share of a call, as an autotuned launch has
            pass
        x.add_(1.0)

    tiny = gpu_time(slow_launch)
    assert len(tiny) == 3 and tiny[0] < 0.02  # ms (an H100 measured 4.4-5.3 us without the host delay)
    a, b = torch.randn(1024, 1024, device="cuda"), torch.randn(4096, 4096, device="cuda")
    small, big = gpu_time(lambda: a @ a)[0], gpu_time(lambda: b @ b)[0]
    assert big > 20 * small


@pytest.mark.gpu
def test_kernel_times_splits_a_call_by_kernel():
    """A call of an fp32 matmul (~0.35 ms on an H100) and a 16-element add (a few µs): each kernel gets its own
    row, the matmul's far the larger, and the 1 ms of host time before the launches counts in none."""
    from mmchar.kernels.tuning import kernel_times

    a, x = torch.randn(2048, 2048, device="cuda"), torch.zeros(16, device="cuda")

    def call() -> None:
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 1e-3:
            pass
        a @ a
        x.add_(1.0)

    per = kernel_times(call, calls=4)
    assert len(per) >= 2
    assert max(per.values()) > 20 * min(per.values()) and sum(per.values()) < 1000  # µs


def test_autotune_off_keeps_the_first_config_pruning_leaves(monkeypatch):
    """MMCHAR_AUTOTUNE=0 (the GPU tests' setting) leaves the autotuner one config, so it compiles and times
    nothing else; unset, every config the kernel's own pruning keeps is tried."""
    import triton

    from mmchar.kernels.tuning import autotune

    def kernel(x):  # never launched: only the pruning hook is exercised
        pass

    configs = [triton.Config({"B": b}, num_warps=w) for b in (16, 32, 64) for w in (4, 8)]
    tuned = autotune(triton.jit(kernel), configs, ["x"], lambda cs, nargs, **kw: [c for c in cs if c.kwargs["B"] > 16])
    prune = tuned.early_config_prune
    monkeypatch.setenv("MMCHAR_AUTOTUNE", "1")
    assert [c.kwargs["B"] for c in prune(configs, {})] == [32, 32, 64, 64]
    monkeypatch.setenv("MMCHAR_AUTOTUNE", "0")
    kept = prune(configs, {})
    assert len(kept) == 1 and kept[0].kwargs["B"] == 32 and kept[0].num_warps == 4


def test_steady_pick_prefers_the_earlier_config_within_the_tie():
    """Near-equal configs swap order between machines: within TIE of the fastest, the list's order decides."""
    import triton

    from mmchar.kernels.tuning import TIE, steady_pick

    a, b, c = (triton.Config({"X": i}, num_warps=4) for i in range(3))
    inf = float("inf")
    near = 1.0 + TIE / 2
    assert steady_pick({a: [near, 0, 0], b: [1.0, 0, 0], c: [1.5, 0, 0]}, [a, b, c]) == a
    assert steady_pick({a: [1.0 + 2 * TIE, 0, 0], b: [1.0, 0, 0], c: [1.5, 0, 0]}, [a, b, c]) == b
    assert steady_pick({a: [inf, inf, inf], b: [2.0, 0, 0], c: [near * 2, 0, 0]}, [a, b, c]) == b
    assert steady_pick({a: [1.0, 0, 0], b: [near, 0, 0]}, [b, a]) == b  # the order given, not the dict's


def test_the_autotuner_caches_the_steady_pick(monkeypatch):
    """Fresh timings or timings read back from Triton's disk cache: either way the cached choice is the steady
    pick, not the raw minimum."""
    import triton.runtime.autotuner as at

    from mmchar.kernels.linear_attn import kernel as K
    from mmchar.kernels.tuning import TIE

    tuner = K._out_tuned
    configs = tuner.configs[:3]
    timings = {configs[0]: [1.0 + TIE / 2, 0, 0], configs[1]: [1.0, 0, 0], configs[2]: [3.0, 0, 0]}

    def bench():
        tuner.configs_timings = timings
        tuner.cache[("k",)] = min(timings, key=timings.get)  # what Triton's benchmark() stores

    monkeypatch.setattr(at.Autotuner, "check_disk_cache", lambda self, key, cfgs, bench_fn: (bench_fn(), False)[1])
    monkeypatch.setattr(tuner, "cache", {})
    monkeypatch.setattr(tuner, "configs_timings", None, raising=False)
    assert tuner.check_disk_cache(("k",), configs, bench) is False
    assert tuner.cache[("k",)] == configs[0]


@pytest.mark.skipif(torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") != "1",
                    reason="interpreter run: the CPU without CUDA, with TRITON_INTERPRET=1 (Triton 3.6 times even a "
                           "single config, on the GPU)")
def test_a_tuned_key_launches_its_config_directly(monkeypatch):
    """The autotuner's own lookup runs once per key (key arguments' values and tensor dtypes); later calls of
    that key launch the chosen config without it, with the same result; a new key value or dtype goes through it."""
    import triton
    import triton.language as tl
    import triton.runtime.autotuner as at

    from mmchar.kernels.tuning import autotune

    @triton.jit
    def add_one(X, Y, N, NB, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        ok = offs < N
        tl.store(Y + offs, tl.load(X + offs, mask=ok) + 1, mask=ok)

    monkeypatch.setenv("MMCHAR_AUTOTUNE", "0")  # one config left: Triton 3.9 times nothing (no GPU clock here)
    tuned = autotune(add_one, [triton.Config({"BLOCK": 16}), triton.Config({"BLOCK": 32})], ["NB"],
                     lambda cs, nargs, **kw: cs)
    through = []
    real = at.Autotuner.run
    monkeypatch.setattr(at.Autotuner, "run", lambda self, *a, **kw: (through.append(a[3]), real(self, *a, **kw))[1])

    def call(n: int, dtype: torch.dtype) -> torch.Tensor:
        x = torch.arange(n, dtype=dtype)
        y = torch.empty_like(x)
        tuned[lambda meta: (triton.cdiv(n, meta["BLOCK"]),)](x, y, n, 1 << max(4, (n - 1).bit_length()))
        assert torch.equal(y, x + 1)
        return y

    call(40, torch.float32)
    call(50, torch.float32)  # same bucket, same dtype: launched directly
    call(50, torch.int32)  # a new dtype
    call(100, torch.float32)  # a new bucket
    call(100, torch.float32)
    assert through == [64, 64, 128]
    assert len(tuned.chosen) == 3 and tuned.best_config.kwargs == {"BLOCK": 16}
