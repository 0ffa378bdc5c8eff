"""`diffusers:<name>` backends: diffusers' own attention dispatcher in mmchar's registry (mmchar.diffusers_backends)."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import types

import pytest
import torch

import mmchar.backends as backends
from mmchar import diffusers_backends as db
from mmchar.cli import main
from mmchar.errors import UnknownNameError

dispatch = pytest.importorskip("diffusers.models.attention_dispatch")
CPU = torch.device("cpu")


def test_the_names_are_the_dispatchers_enum():
    enum_values = [m.value for m in dispatch.AttentionBackendName]
    assert list(db.SPECS) == enum_values, "update mmchar.diffusers_backends.SPECS to this diffusers' AttentionBackendName"
    names = [n for n in backends.backend_names() if n.startswith(db.PREFIX)]
    assert names == [db.PREFIX + v for v in enum_values]
    registry = dispatch._AttentionBackendRegistry
    for value, spec in db.SPECS.items():
        member = dispatch.AttentionBackendName(value)
        assert member in registry._backends, value
        if spec.mask:
            assert "attn_mask" in registry._supported_arg_names[member], value
        cls = backends.get_backend(db.PREFIX + value)
        assert cls.mechanism == "softmax" and cls.changes_math == value.startswith(("sage", "_sage")), value
        assert ("the output changes" in cls.description) == cls.changes_math


def test_importing_mmchar_imports_no_diffusers():
    code = "import sys, mmchar.backends as b\nprint('diffusers' in sys.modules, 'diffusers:native' in b.backend_names())"
    out = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True)
    assert out.stdout.split() == ["False", "True"], out.stderr


def test_no_diffusers_registers_nothing(tmp_path):
    (tmp_path / "diffusers").mkdir()
    (tmp_path / "diffusers" / "__init__.py").write_text('raise ImportError("an old diffusers")\n')  # no dispatcher
    code = "import mmchar.backends as b\nprint(sum(n.startswith('diffusers:') for n in b.backend_names()))"
    out = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True,
                         env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert out.returncode == 0 and out.stdout.strip() == "0", out.stderr


@pytest.mark.parametrize("name", ["diffusers:native", "diffusers:_native_math"])
@pytest.mark.parametrize("causal", [False, True])
def test_exact_backends_agree_with_math(name, causal):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 17, 16) for _ in range(3))
    if not causal:
        k, v = k[:, :, :11], v[:, :, :11]  # cross attention: fewer keys than queries
    cls = backends.require_backend(name, CPU)
    want = backends.get_backend("math")()(q, k, v, causal=causal, scale=0.3)
    got = cls()(q, k, v, causal=causal, scale=0.3)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_a_mask_is_passed_as_sdpa_broadcasts_it():
    torch.manual_seed(1)
    q, k, v = (torch.randn(1, 2, 5, 8) for _ in range(3))
    mask = torch.rand(5, 5) > 0.3
    mask[:, 0] = True
    want = backends.get_backend("math")()(q, k, v, mask=mask)
    torch.testing.assert_close(backends.get_backend("diffusers:native")()(q, k, v, mask=mask), want)


def test_cuda_only_and_hub_backends_say_why_not_on_cpu():
    for name in ("diffusers:_native_cudnn", "diffusers:sage", "diffusers:_flash_3"):
        why = backends.get_backend(name).unavailable_reason(CPU)
        assert why and "cuda" in why and "\n" not in why
    why = backends.get_backend("diffusers:flash_hub").unavailable_reason(CPU)
    assert "Hub" in why and "diffusers:flash" in why
    assert "npu" in backends.get_backend("diffusers:_native_npu").unavailable_reason(CPU)
    for name in ("diffusers:native", "diffusers:_native_math", "diffusers:flex"):
        assert backends.get_backend(name).unavailable_reason(CPU) is None, name


def test_diffusers_own_requirement_check_is_the_reason(monkeypatch):
    cls = backends.get_backend("diffusers:_native_math")

    def refuse(backend):
        raise RuntimeError("Backend is not usable. Please install `something>=1`.")

    monkeypatch.setattr(dispatch, "_check_attention_backend_requirements", refuse)
    assert cls.unavailable_reason(CPU) == "diffusers says: Backend is not usable. Please install `something>=1`."


def test_native_under_a_swap_reaches_pytorch_and_does_not_recurse():
    from diffusers.models.attention_processor import Attention

    from mmchar.swap import swap_attention

    torch.manual_seed(0)
    attn = Attention(query_dim=16, heads=2, dim_head=8)
    x = torch.randn(2, 6, 16)
    with torch.no_grad():
        want = attn(x)
        with swap_attention(types.SimpleNamespace(m=attn), ["m"], "diffusers:native", CPU) as state:
            got = attn(x)
    assert set(state.layer_backend.values()) == {"diffusers:native"}
    assert torch.nn.functional.scaled_dot_product_attention is backends.ORIGINAL_SDPA  # the router is gone again
    torch.testing.assert_close(got, want)


def cli(args: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    return code, out.getvalue(), err.getvalue()


def test_backends_command_lists_them():
    code, out, err = cli(["backends", "--device", "cpu", "--format", "json"])
    assert code == 0, err
    rows = {r["name"]: r for r in json.loads(out)}
    assert rows["diffusers:native"]["available"] == "yes"
    assert rows["diffusers:sage"]["available"] == "no" and rows["diffusers:sage"]["changes_math"] is True


def test_compare_math_with_diffusers_native(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code, out, err = cli(["compare", "sd15", "--preset", "tiny", "--steps", "2", "--repeat", "1",
                              "--backends", "math,diffusers:native", "--store", str(tmp_path / "store")])
    finally:
        torch.set_num_threads(threads)
    assert code == 0, err
    metas = [json.loads(p.read_text()) for p in (tmp_path / "store").glob("*/meta.json")]
    assert {m["backend"] for m in metas} == {"math", "diffusers:native"}
    for m in metas:
        assert m["status"] == "ok" and m["compare"]["agrees"] is True, m["compare"]
    native = next(m for m in metas if m["backend"] == "diffusers:native")
    assert native["backend_per_layer"] and set(native["backend_per_layer"].values()) == {"diffusers:native"}
    assert native["run_id"].startswith("sd15-diffusers_native-")  # a portable folder name, the backend's own in meta
    assert not [p for p in (tmp_path / "store").rglob("*") if ":" in p.name]


def test_unknown_diffusers_backend_is_one_line(capsys):
    with pytest.raises(UnknownNameError):
        backends.get_backend("diffusers:nope")
    code = main(["profile", "sd15", "--backend", "diffusers:nope", "--store", "/nonexistent/never-written"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert "'diffusers:nope'" in err and "valid backends" in err and "diffusers:native" in err


def test_flex_agrees_without_causal_and_refuses_causal():
    """diffusers 0.42's flex drops is_causal when no mask is given: mmchar refuses those calls instead."""
    torch.manual_seed(2)
    q, k, v = (torch.randn(1, 2, 9, 16) for _ in range(3))
    flex = backends.get_backend("diffusers:flex")()
    assert flex.unsupported(q, k, v, causal=True, mask=None) == "causal attention not supported"
    assert flex.unsupported(q, k, v, causal=False, mask=None) is None
    got = flex(q, k, v, causal=False, scale=0.3)  # eager FlexAttention on the CPU (PyTorch warns: unfused)
    torch.testing.assert_close(got, backends.get_backend("math")()(q, k, v, scale=0.3), atol=1e-5, rtol=1e-5)
