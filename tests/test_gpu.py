"""GPU checks (``gpu`` marker; skipped without CUDA): backends against the reference in bf16 at the workloads'
attention shapes, and a CUDA profile whose kernels are attributed by name.

A backend is skipped only where something it needs is absent here (a Python package, a GPU older than the study's
sm80); a backend that declares it takes a shape must take it: its refusal is a failure, not a skip
(tests/test_backends.py checks the declarations themselves against the workloads' shapes on the CPU)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from mmchar.backends import AttentionBackend, get_backend
from mmchar.bench_attn import workload_shapes

pytestmark = pytest.mark.gpu

SOFTMAX = ["math", "flash", "efficient", "cudnn", "sdpa", "flex", "triton-flash"]
# the workloads' own attention calls (mmchar bench-attn's table) whose fp32 reference fits easily in memory
SHAPES = [s for s in workload_shapes() if s.b * s.h * s.sq * s.skv <= 2**30]


def usable(name: str, device: torch.device) -> type[AttentionBackend]:
    """The backend class; skips only when what it needs is absent here (a package not installed, a GPU below sm80),
    and fails when it says it is unavailable for any other reason (a wrong device list, a wrong build check)."""
    cls = get_backend(name)
    missing = [m for m in cls.requires if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"{name} needs {', '.join(missing)}, not installed here")
    if torch.cuda.get_device_capability(device) < (8, 0):
        pytest.skip("the backends' checks target sm80+ GPUs")
    reason = cls.unavailable_reason(device)
    assert reason is None, f"{name} says it cannot run on {torch.cuda.get_device_name(device)}: {reason}"
    return cls


def must_take(backend: AttentionBackend, q, k, v, *, causal: bool) -> bool:
    """Whether the backend's declared constraints take this call; and if they do, that the backend takes it."""
    declared = AttentionBackend.unsupported(backend, q, k, v, causal=causal, mask=None)
    why = backend.unsupported(q, k, v, causal=causal, mask=None)
    if declared is not None:
        assert why is not None, f"{backend.name} does not refuse a call its constraints exclude ({declared})"
        return False
    assert why is None, (f"{backend.name} refuses a call its constraints take (q {tuple(q.shape)}, k "
                         f"{tuple(k.shape)}, {q.dtype}, causal {causal}): {why}")
    return True


@pytest.mark.parametrize("name", SOFTMAX)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.name.replace(" ", "-"))
def test_backend_matches_reference_bf16(name, shape):
    dev = torch.device("cuda")
    cls = usable(name, dev)
    b, h, sq, skv, d = shape.b, shape.h, shape.sq, shape.skv, shape.d
    g = torch.Generator(device=dev).manual_seed(0)
    q = torch.randn(b, h, sq, d, device=dev, dtype=torch.bfloat16, generator=g)
    k = torch.randn(b, h, skv, d, device=dev, dtype=torch.bfloat16, generator=g)
    v = torch.randn(b, h, skv, d, device=dev, dtype=torch.bfloat16, generator=g)
    backend = cls("test")
    assert must_take(backend, q, k, v, causal=False), f"{name}'s constraints exclude the workload shape {shape}"
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
    cls = usable(name, dev)
    g = torch.Generator(device=dev).manual_seed(0)
    q, k, v = (torch.randn(b, h, n, d, device=dev, dtype=torch.bfloat16, generator=g) for _ in range(3))
    backend = cls("test.layer")
    if name == "fla" and not causal:  # its kernels are causal only, as it says
        assert "causal only" in (backend.unsupported(q, k, v, causal=causal, mask=None) or "")
        return
    assert must_take(backend, q, k, v, causal=causal), f"{name}'s constraints exclude {(b, h, n, d, causal)}"
    with torch.inference_mode():
        out = backend(q, k, v, causal=causal).float()
        ref = backend.reference(q, k, v, causal=causal).float()
    rel = ((out - ref).norm(dim=-1) / ref.norm(dim=-1).clamp_min(1e-6)).max().item()
    assert rel < 2e-2, f"{name} worst per-row relative error {rel:.3g}"


@pytest.mark.gpu_alone
def test_cuda_run_records_the_gpu_side_of_the_noise_guard(tmp_path, gpu_siblings):
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
    # the lent GPU is this test's alone (under pytest -n the idle sibling workers keep their contexts on it): no
    # other process on it, its clocks not slowed
    timed = noise["windows"]["timed"]["gpu"]
    assert set(timed["other_processes"]) <= gpu_siblings and not timed["slowdowns"]
    assert not any("GPU" in r for r in noise["reasons"]), noise["reasons"]


@pytest.mark.parametrize("name", ["sdpa", "flash", "cudnn", "efficient", "triton-flash"])
def test_swapped_unet_matches_the_native_one_on_cuda(name):
    """The resolved-once route (one lookup per call) sends every CUDA call to the backend's kernel: a swapped
    UNet's output is the native one's within bf16 rounding, and every layer ran the named backend."""
    import types

    from mmchar.swap import swap_attention
    from mmchar.workloads import get_workload

    device = torch.device("cuda")
    usable(name, device)
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
