"""The backend registry and the SDPA family on the CPU, against a plain fp64 reference."""

from __future__ import annotations

import pytest
import torch

from mmchar.backends import (AttentionBackend, Constraints, backend_names, default_softmax_backend, describe_backends,
                             get_backend, register_backend, require_backend)
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

    monkeypatch.setattr(mb, "_entry_points_loaded", False)
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [EP()] if group == mb.ENTRY_POINT_GROUP else [])
    try:
        assert "plugin-test" in backend_names()
        assert get_backend("plugin-test") is Plugin
    finally:
        mb._REGISTRY.pop("plugin-test", None)
    assert register_backend(Plugin) is Plugin
    mb._REGISTRY.pop("plugin-test", None)
