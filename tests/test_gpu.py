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
