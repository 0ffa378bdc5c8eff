"""GPU checks (``gpu`` marker; skipped without CUDA): backends against the reference in bf16 at real shapes,
and a CUDA profile whose kernels are attributed by name."""

from __future__ import annotations

import pytest
import torch

from mmchar.backends import get_backend

pytestmark = pytest.mark.gpu

SHAPES = [(2, 8, 4096, 4096, 40), (2, 8, 1024, 77, 80), (2, 8, 256, 256, 160), (2048, 5, 16, 16, 64)]


@pytest.mark.parametrize("name", ["math", "flash", "efficient", "cudnn", "sdpa", "flex", "triton-flash"])
@pytest.mark.parametrize("b,h,sq,skv,d", SHAPES, ids=lambda s: str(s))
def test_backend_matches_reference_bf16(name, b, h, sq, skv, d):
    dev = torch.device("cuda")
    cls = get_backend(name)
    if cls.unavailable_reason(dev):
        pytest.skip(cls.unavailable_reason(dev))
    g = torch.Generator(device=dev).manual_seed(0)
    q = torch.randn(b, h, sq, d, device=dev, dtype=torch.bfloat16, generator=g)
    k = torch.randn(b, h, skv, d, device=dev, dtype=torch.bfloat16, generator=g)
    v = torch.randn(b, h, skv, d, device=dev, dtype=torch.bfloat16, generator=g)
    backend = cls("test")
    why = backend.unsupported(q, k, v, causal=False, mask=None)
    if why:
        pytest.skip(f"{name}: {why}")
    ref = torch.softmax((q.float() @ k.float().transpose(-1, -2)) * d ** -0.5, -1) @ v.float()
    out = backend(q, k, v)
    rel = ((out.float() - ref).norm() / ref.norm()).item()
    assert rel < 2e-2, f"{name} relative error {rel:.3g}"


def test_cuda_profile_attributes_kernels(tmp_path):
    from mmchar.api import run_config_hash
    from mmchar.runner import ProfileOptions, run_and_store
    from mmchar.workloads import get_workload

    w = get_workload("modelscope-t2v")
    cfg = w.resolve("tiny", device="cuda")
    target = w.build(cfg)
    opts = ProfileOptions(backend="flash", repeat=2)
    run = run_and_store(target, opts, tmp_path, run_config_hash(cfg, opts))
    assert run.status == "ok", run.meta.get("error")
    k = run.kernels
    assert (k["stage"] == "denoiser").any()
    den = run.breakdown[run.breakdown["stage"] == "denoiser"]
    classes = set(den["op_class"])
    assert {"conv", "gemm", "attention", "norm"} <= classes
    att = k[(k["op_class"] == "attention") & (k["stage"] == "denoiser")]
    assert set(att["attn_site"]) >= {"spatial", "temporal", "cross"}
    assert run.meta["busy"]["denoiser_step"]["busy_ms"] > 0
    other = den[den["op_class"] == "other"]["share"].sum()
    assert other < 0.02, run.meta["unmatched_kernels"]


@pytest.mark.parametrize("name", ["linear", "wersa", "fla"])
@pytest.mark.parametrize("b,h,n,d,causal", [(2, 8, 4096, 64, False), (1, 16, 8192, 128, False),
                                            (2, 5, 1024, 40, False), (1, 16, 8192, 64, True),
                                            (2, 8, 4097, 128, True)], ids=lambda s: str(s))
def test_changed_math_backend_matches_its_reference_bf16(name, b, h, n, d, causal):
    """Linear, WERSA and FLA backends in bf16 at real shapes against their own fp32 references (the check
    bench-attn makes before timing), causal and not, odd lengths included."""
    dev = torch.device("cuda")
    cls = get_backend(name)
    if cls.unavailable_reason(dev):
        pytest.skip(cls.unavailable_reason(dev))
    g = torch.Generator(device=dev).manual_seed(0)
    q, k, v = (torch.randn(b, h, n, d, device=dev, dtype=torch.bfloat16, generator=g) for _ in range(3))
    backend = cls("test.layer")
    why = backend.unsupported(q, k, v, causal=causal, mask=None)
    if why:
        pytest.skip(f"{name}: {why}")
    with torch.inference_mode():
        out = backend(q, k, v, causal=causal).float()
        ref = backend.reference(q, k, v, causal=causal).float()
    rel = ((out - ref).norm(dim=-1) / ref.norm(dim=-1).clamp_min(1e-6)).max().item()
    assert rel < 2e-2, f"{name} worst per-row relative error {rel:.3g}"


def test_cuda_run_records_the_gpu_side_of_the_noise_guard(tmp_path):
    """On CUDA the noise guard reads the GPU through NVML (nvidia-ml-py): SM clocks, slowdowns, other processes."""
    pytest.importorskip("pynvml")
    from mmchar.api import run_config_hash
    from mmchar.runner import ProfileOptions, run_and_store
    from mmchar.workloads import get_workload

    w = get_workload("sd15")
    cfg = w.resolve("tiny", device="cuda")
    opts = ProfileOptions(backend="sdpa", repeat=3)
    run = run_and_store(w.build(cfg), opts, tmp_path, run_config_hash(cfg, opts))
    assert run.status == "ok", run.meta.get("error")
    noise = run.meta["noise"]
    for window in ("timed", "profiles"):
        gpu = noise["windows"][window]["gpu"]
        assert len(gpu["sm_clock_mhz"]) == 2 and gpu["sm_clock_max_mhz"] > 0
        assert isinstance(gpu["other_processes"], list) and isinstance(gpu["slowdowns"], list)
    # the lent GPU is this test's alone: no other process on it, its clocks not slowed
    assert noise["windows"]["timed"]["gpu"]["other_processes"] == [] and not noise["windows"]["timed"]["gpu"]["slowdowns"]
    assert not any("GPU" in r for r in noise["reasons"]), noise["reasons"]


@pytest.mark.parametrize("name", ["sdpa", "flash", "cudnn", "efficient", "triton-flash"])
def test_swapped_unet_matches_the_native_one_on_cuda(name):
    """The resolved-once route (one lookup per call) sends every CUDA call to the backend's kernel: a swapped
    UNet's output is the native one's within bf16 rounding, and every layer ran the named backend."""
    import types

    from mmchar.backends import require_backend
    from mmchar.errors import MmcharError
    from mmchar.swap import swap_attention
    from mmchar.workloads import get_workload

    device = torch.device("cuda")
    try:
        require_backend(name, device)
    except MmcharError as e:
        pytest.skip(str(e))
    w = get_workload("sd15")
    unet = w.build(w.resolve("tiny", device="cuda", dtype="bf16")).pipe.unet
    x = torch.randn(2, 4, 8, 8, device=device, dtype=torch.bfloat16)
    ctx = torch.randn(2, 77, unet.config.cross_attention_dim, device=device, dtype=torch.bfloat16)
    with torch.inference_mode():
        ref = unet(x, 10, ctx).sample.float()
        swap = swap_attention(types.SimpleNamespace(unet=unet), ["unet"], name, device)
        with swap as state:
            for _ in range(2):  # the second call takes the resolved route
                out = unet(x, 10, ctx).sample.float()
    assert set(state.layer_backend.values()) == {name}
    assert ((out - ref).norm() / ref.norm()).item() < 2e-2
