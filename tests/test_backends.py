"""The backend registry and the SDPA family on the CPU, against a plain fp64 reference."""

from __future__ import annotations

import pytest
import torch

from mmchar.backends import (AttentionBackend, Constraints, backend_names, default_softmax_backend, describe_backends,
                             get_backend, register_backend, require_backend)
from mmchar.bench_attn import Shape, sweep_shapes, workload_shapes
from mmchar.errors import BackendUnavailableError, UnknownNameError

CPU = torch.device("cpu")


def reference(q, k, v, causal=False, mask=None):
    q, k, v = q.double(), k.double(), v.double()
    s = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
    if causal:
        s = s.masked_fill(~torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).tril(), float("-inf"))  # top-left
    if mask is not None:
        s = s + mask.double()
    return torch.softmax(s, -1) @ v


@pytest.mark.parametrize("name", ["math", "flash", "sdpa", "flex"])
@pytest.mark.parametrize("b,h,sq,skv,d,causal", [(2, 3, 17, 17, 40, False), (1, 2, 33, 77, 80, False),
                                                  (2, 2, 16, 16, 64, True), (3, 1, 5, 9, 72, False),
                                                  (1, 2, 7, 12, 32, True), (1, 2, 12, 7, 32, True)],
                         ids=lambda x: str(x))
def test_matches_reference(name, b, h, sq, skv, d, causal):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(b, h, s, d, generator=g) for s in (sq, skv, skv))
    out = get_backend(name)("layer")(q, k, v, causal=causal)
    torch.testing.assert_close(out.double(), reference(q, k, v, causal), rtol=1e-4, atol=1e-5)


def test_math_takes_an_additive_mask():
    q = torch.randn(1, 2, 6, 8)
    mask = torch.zeros(1, 1, 6, 6)
    mask[..., -2:] = float("-inf")
    out = get_backend("math")("x")(q, q, q, mask=mask)
    torch.testing.assert_close(out.double(), reference(q, q, q, mask=mask), rtol=1e-4, atol=1e-5)


def test_registry_lists_the_sdpa_family_and_explains_unavailability():
    assert {"math", "flash", "efficient", "cudnn", "sdpa"} <= set(backend_names())
    rows = {r["name"]: r for r in describe_backends(CPU)}
    assert rows["math"]["available"] and rows["flash"]["available"]
    if not torch.cuda.is_available():
        assert not rows["cudnn"]["available"] and "cuda" in rows["cudnn"]["why_not"]
        with pytest.raises(BackendUnavailableError, match="available here: .*math"):
            require_backend("cudnn", CPU)
    with pytest.raises(UnknownNameError, match="valid backends: .*flash"):
        get_backend("nosuch")
    assert default_softmax_backend(CPU) in ("flash", "sdpa")


def test_constraints_are_checked_per_call():
    class Narrow(AttentionBackend):
        name = "narrow-test"
        description = "test"
        constraints = Constraints(max_head_dim=64, mask=False, causal=False, dtypes=(torch.float16,))

    b = Narrow("layer")
    q = torch.randn(1, 1, 4, 80)
    assert "head dim 80 > 64" in b.unsupported(q.half(), q.half(), q.half(), causal=False, mask=None)
    assert "dtype float32" in b.unsupported(q, q, q, causal=False, mask=None)
    q = q[..., :32].half()
    assert b.unsupported(q, q, q, causal=True, mask=None) == "causal attention not supported"
    assert b.unsupported(q, q, q, causal=False, mask=torch.zeros(1)) == "attention mask not supported"
    assert b.unsupported(q, q, q, causal=False, mask=None) is None


def _refusal(backend: AttentionBackend, shape: Shape, dtype: torch.dtype) -> str | None:
    """Why ``backend`` would refuse ``shape`` on a GPU, by its declared constraints and its own checks, asked with
    meta tensors (no memory, no device): the checks read only shapes and dtypes."""
    q, k, v = (torch.empty(shape.b, shape.h, s, shape.d, dtype=dtype, device="meta")
               for s in (shape.sq, shape.skv, shape.skv))
    return (AttentionBackend.unsupported(backend, q, k, v, causal=shape.causal, mask=None)
            or backend.unsupported(q, k, v, causal=shape.causal, mask=None))


@pytest.mark.parametrize("name", ["math", "sdpa", "flash", "efficient", "cudnn", "flex", "triton-flash"])
def test_softmax_backends_declare_every_workload_shape_on_cuda(name):
    """Every softmax backend's declared constraints (devices, dtypes, head dims) take every attention call the
    workloads declare, in bf16 and fp16 on CUDA: what tests/test_gpu.py holds each backend to on a GPU (a refusal
    there is a failure, not a skip), checked here without one. And the check is live: a head dim past a declared
    limit is refused."""
    cls = get_backend(name)
    backend = cls("layer")
    assert "cuda" in cls.constraints.devices
    shapes = workload_shapes()
    assert {s.d for s in shapes} >= {40, 80, 160, 64, 128}  # SD 1.5's three levels, SDXL / SD3, Flux / Wan
    refused = {(s.name, str(dt)): why for s in shapes for dt in (torch.bfloat16, torch.float16)
               if (why := _refusal(backend, s, dt))}
    assert not refused, refused
    if cls.constraints.max_head_dim:
        too_wide = Shape("too wide", 1, 1, 16, 16, cls.constraints.max_head_dim + 8)
        assert "head dim" in (_refusal(backend, too_wide, torch.bfloat16) or "")


@pytest.mark.parametrize("name", ["linear", "wersa", "fla"])
def test_linear_backends_declare_the_self_attention_they_replace(name):
    """Linear attention and WERSA replace self-attention (conventions.md): their constraints take every workload's
    self-attention call (keys = queries) and the causal sweep bench-attn times; FLA's kernels are causal only, and
    it says so for the non-causal ones."""
    backend = get_backend(name)("layer")
    own = [s for s in workload_shapes() if s.sq == s.skv]
    causal = [s for s in sweep_shapes() if s.causal]
    assert own and causal
    taken = causal if name == "fla" else own + causal
    refused = {s.name: why for s in taken if (why := _refusal(backend, s, torch.bfloat16))}
    assert not refused, refused
    if name == "fla":
        assert all("causal only" in (_refusal(backend, s, torch.bfloat16) or "") for s in own)


def test_register_backend_and_entry_point_group(monkeypatch):
    import importlib.metadata

    import mmchar.backends as mb

    class Plugin(AttentionBackend):
        name = "plugin-test"
        description = "a third-party backend"

        def __call__(self, q, k, v, **kw):
            return v

    class EP:
        name, value = "plugin-test", "pkg:Plugin"

        def load(self):
            return Plugin

    monkeypatch.setattr(mb._BACKENDS, "loaded", False)
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [EP()] if group == mb.ENTRY_POINT_GROUP else [])
    try:
        assert "plugin-test" in backend_names()
        assert get_backend("plugin-test") is Plugin
    finally:
        mb._REGISTRY.pop("plugin-test", None)
    assert register_backend(Plugin) is Plugin
    mb._REGISTRY.pop("plugin-test", None)


def test_sage_is_listed_says_why_not_here_and_calls_sageattention_as_its_users_do(monkeypatch):
    """The `sage` backend on a machine without CUDA: unavailable with the reason, its head-dim limits, and (with a
    stand-in `sageattention` module) the call it makes: [B, H, S, D] as "HND", keys smoothed on a new tensor (the
    package subtracts the mean in place from the caller's k), the scale and causal flag passed on."""
    import sys
    import types

    from mmchar.backends import get_backend

    cls = get_backend("sage")
    assert cls.changes_math and cls.mechanism == "softmax" and cls.check_tolerance > 2e-2
    why = cls.unavailable_reason(torch.device("cpu"))
    assert why is not None and ("sageattention" in why or "cuda" in why)
    seen = {}

    def sageattn(q, k, v, tensor_layout="HND", is_causal=False, sm_scale=None, smooth_k=True):
        seen.update(layout=tensor_layout, causal=is_causal, scale=sm_scale, smooth=smooth_k, k=k.clone())
        k -= k.mean(dim=2, keepdim=True)  # what SageAttention does to the k it is given
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=is_causal, scale=sm_scale)

    monkeypatch.setitem(sys.modules, "sageattention", types.SimpleNamespace(sageattn=sageattn))
    q, k, v = (torch.randn(1, 2, 12, 64) for _ in range(3))
    k0 = k.clone()
    backend = cls("blocks.0.attn1")
    out = backend(q, k, v, causal=True, scale=0.2)
    assert torch.equal(k, k0)  # the caller's keys untouched
    assert seen["layout"] == "HND" and seen["causal"] is True and seen["scale"] == 0.2 and seen["smooth"] is False
    torch.testing.assert_close(seen["k"].mean(dim=2), torch.zeros(1, 2, 64), atol=1e-6, rtol=0)
    torch.testing.assert_close(out, torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                                                     scale=0.2))
    assert "SageAttention takes 64/96/128" in backend.unsupported(q[..., :40], k[..., :40], v[..., :40],
                                                                  causal=False, mask=None)
    assert "as many queries" in backend.unsupported(q[:, :, :3], k, v, causal=True, mask=None)
