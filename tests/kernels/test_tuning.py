"""The autotuner's timing (kernels/tuning.py): GPU time per launch, not the Python launch path."""

from __future__ import annotations

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
