"""Local Linear Attention: the exact reference against an independent local linear fit and its limits (softmax
attention as λ → ∞, affine maps reproduced as λ → 0), the CG form against the exact one, the eager form, the
Triton kernel under TRITON_INTERPRET=1 on small shapes (fp32, fp16: the interpreter cannot run bf16), and on the
GPU in bf16 at a real shape (``gpu`` marker)."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from mmchar.kernels.lla.reference import (DEFAULT_CG_ITERS, DEFAULT_RIDGE_LAMBDA, lla_cg_ref, lla_eager, lla_flops,
                                          lla_ref)

INTERPRET = not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") == "1"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tensors are tiny: one intra-op thread is as fast, and on a busy 2-core machine OpenMP's spinning
    barriers made the CG loops (hundreds of small ops) 50-100× slower with two."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def _qkv(b, h, sq, skv, d, seed=0, dtype=torch.float32, device="cpu"):
    g = torch.Generator(device=device).manual_seed(seed)
    return tuple(torch.randn(b, h, s, d, generator=g, device=device).to(dtype) for s in (sq, skv, skv))


def _own_error(q32, k32, v32, dt, **kw) -> tuple[torch.Tensor, float]:
    """The fp64 CG reference of the inputs as rounded to ``dt``, and the error the reference makes itself: for fp32
    its fp32 rounding (lla_cg_ref in fp32 against fp64), for fp16/bf16 the rounding of its inputs (the fp32
    reference of the rounded inputs against that of the fp32 ones)."""
    q, k, v = (t.to(dt).double() for t in (q32, k32, v32))
    ref = lla_cg_ref(q, k, v, **kw)
    if dt == torch.float32:
        return ref, _rel(lla_cg_ref(q32, k32, v32, **kw), ref)
    return ref, _rel(lla_cg_ref(q.float(), k.float(), v.float(), **kw), lla_cg_ref(q32, k32, v32, **kw))


def test_defaults_are_the_authors():
    """flashlla.lla_attention(ridge_lambda=10.0, cg_max_iters=32) (github.com/Yifei-Zuo/FlashLLA)."""
    assert DEFAULT_RIDGE_LAMBDA == 10.0 and DEFAULT_CG_ITERS == 32


@pytest.mark.parametrize("lam", [1e-3, 0.7, 10.0])
def test_exact_reference_is_the_local_linear_fit(lam):
    """lla_ref against the regression it claims to solve, written two other ways: the weighted normal equations
    of [1, k − q] with the ridge on the slope only (the paper's objective, λ on the normalised weights as the
    authors' code scales it by Σw), and the authors' query-centred closed form (flashlla/ops/naive.py)."""
    q, k, v = (t.double() for t in _qkv(1, 2, 9, 21, 5, seed=1))
    d = q.shape[-1]
    p = torch.softmax(q @ k.transpose(-1, -2) * d ** -0.5, -1)
    direct = torch.empty_like(q)
    reg = torch.eye(d + 1, dtype=torch.float64) * lam
    reg[0, 0] = 0.0
    for h in range(q.shape[1]):
        for i in range(q.shape[2]):
            x = torch.cat([torch.ones(k.shape[2], 1, dtype=torch.float64), k[0, h] - q[0, h, i]], 1)
            xw = x.T * p[0, h, i]
            direct[0, h, i] = torch.linalg.solve(xw @ x + reg, xw @ v[0, h])[0]
    mu = p @ k - q  # the authors' form: ρ = (Σ_q + λI)⁻¹ μ, b = Σ p (1 − ρ·(k − q)) v / (1 − μ·ρ)
    kq = k[:, :, None] - q[:, :, :, None]
    sigma_q = torch.einsum("bhij,bhijd,bhije->bhide", p, kq, kq)
    rho = torch.linalg.solve(sigma_q + lam * torch.eye(d, dtype=torch.float64), mu.unsqueeze(-1)).squeeze(-1)
    s = p * (1 - torch.einsum("bhijd,bhid->bhij", kq, rho)) / (1 - (mu * rho).sum(-1, keepdim=True))
    out = lla_ref(q, k, v, ridge_lambda=lam)
    assert out.dtype == torch.float32
    assert _rel(out, direct) < 1e-6
    assert _rel(out, s @ v) < 1e-6


def test_affine_maps_are_reproduced():
    """The local linear estimator is exact on affine data (the bias softmax attention has at a slope)."""
    q, k, _ = _qkv(2, 1, 13, 40, 6, seed=2)
    a, c = torch.randn(6, 6), torch.randn(6)
    v = k @ a.T + c
    want = q @ a.T + c
    assert _rel(lla_ref(q, k, v, ridge_lambda=1e-7), want) < 1e-4
    assert _rel(lla_cg_ref(q, k, v, ridge_lambda=1e-7, cg_iters=40), want) < 1e-3
    assert _rel(F.scaled_dot_product_attention(q, k, v), want) > 0.1


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_softmax_limit(causal):
    """λ → ∞: the slope is shrunk to zero and LLA is softmax attention; at a finite λ it is not."""
    q, k, v = _qkv(1, 2, 24, 24, 16, seed=3)
    sdpa = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    for out in (lla_ref(q, k, v, causal=causal, ridge_lambda=1e9),
                lla_cg_ref(q, k, v, causal=causal, ridge_lambda=1e9, cg_iters=4),
                lla_eager(q, k, v, causal=causal, ridge_lambda=1e9, cg_iters=4, block=10)):
        assert _rel(out, sdpa) < 1e-5
    assert _rel(lla_ref(q, k, v, causal=causal, ridge_lambda=1.0), sdpa) > 0.05


@pytest.mark.parametrize("case", [(1, 2, 16, 16, 16, False, 0.5), (2, 1, 11, 29, 16, False, 0.1),
                                  (1, 2, 20, 20, 12, True, 1.0), (1, 1, 18, 18, 32, False, 10.0)],
                         ids=lambda c: f"B{c[0]}-H{c[1]}-S{c[2]}x{c[3]}-D{c[4]}-{'causal' if c[5] else 'full'}"
                                       f"-lam{c[6]}")
def test_cg_reference_equals_exact_when_iterations_cover_the_dim(case):
    """CG is exact in D steps; one step is far off (the comparison can fail)."""
    b, h, sq, skv, d, causal, lam = case
    q, k, v = _qkv(b, h, sq, skv, d, seed=4)
    exact = lla_ref(q, k, v, causal=causal, ridge_lambda=lam)
    assert _rel(lla_cg_ref(q, k, v, causal=causal, ridge_lambda=lam, cg_iters=d), exact) < 1e-4
    if lam < 10:
        assert _rel(lla_cg_ref(q, k, v, causal=causal, ridge_lambda=lam, cg_iters=1), exact) > 1e-2


def test_default_budget_is_close_to_exact():
    q, k, v = _qkv(1, 2, 24, 40, 64, seed=5)
    assert _rel(lla_cg_ref(q, k, v), lla_ref(q, k, v)) < 1e-5


@pytest.mark.parametrize("causal,skv", [(False, 37), (True, 30), (False, 30)], ids=["cross", "causal", "full"])
def test_eager_matches_reference(causal, skv):
    """Query blocks of 7 over 30 queries (a ragged last block; causal blocks see only their keys) and one block
    give the CG reference: in fp32 for a truncated solve, within 8× the fp32 reference's own rounding error (see
    _own_error); in fp16/bf16 for a converged one, within 3× the error the reference makes from its inputs'
    rounding."""
    q, k, v = _qkv(2, 2, 30, skv, 24, seed=6)
    kw = dict(causal=causal, ridge_lambda=0.5, cg_iters=12)
    ref, own = _own_error(q, k, v, torch.float32, **kw)
    for block in (7, 1024):
        out = lla_eager(q, k, v, block=block, **kw)
        assert out.dtype == torch.float32 and _rel(out, ref) < 8 * own + 1e-6
    kw = dict(causal=causal, ridge_lambda=2.0, cg_iters=24)
    for dt in (torch.bfloat16, torch.float16):
        ref, own = _own_error(q, k, v, dt, **kw)
        out = lla_eager(q.to(dt), k.to(dt), v.to(dt), block=7, **kw)
        assert out.dtype == dt and own < 5e-3
        assert _rel(out, ref) < 3 * own


@pytest.mark.parametrize("bad,match", [(dict(q=(1, 1, 8, 16), k=(1, 1, 8, 16), v=(1, 1, 8, 8)), "value head dim"),
                                       (dict(q=(1, 1, 8, 16), k=(1, 1, 9, 16), v=(1, 1, 9, 16), causal=True), "causal"),
                                       (dict(q=(1, 1, 8, 16), k=(1, 1, 8, 16), v=(1, 1, 8, 16), ridge_lambda=-1.0),
                                        "ridge_lambda"),
                                       (dict(q=(1, 8, 16), k=(1, 8, 16), v=(1, 8, 16)), "B, H, S, D")])
def test_references_refuse_what_lla_cannot_take(bad, match):
    kw = {key: val for key, val in bad.items() if key not in "qkv"}
    q, k, v = (torch.randn(*bad[n]) for n in "qkv")
    for fn in (lla_ref, lla_cg_ref, lla_eager):
        with pytest.raises(ValueError, match=match):
            fn(q, k, v, **kw)


def test_flop_model():
    """2·d per length-d product: 3 in the softmax pass, 2 per CG iteration, 2 in the output pass; causal half."""
    assert lla_flops(1, 1, 10, 20, 8, 0, False) == 10 * 20 * 2 * 8 * 5
    assert lla_flops(2, 3, 64, 64, 32, 32, False) == 2 * 3 * 64 * 64 * 2 * 32 * (5 + 64)
    assert lla_flops(2, 3, 64, 64, 32, 32, True) == lla_flops(2, 3, 64, 64, 32, 32, False) / 2


# ---- the Triton kernel -------------------------------------------------------------------------------------------

CPU_CASES = [  # B, H, Sq, Skv, D, causal, dtype, λ, cg_iters: ragged lengths, cross lengths, padded head dims
    (1, 2, 33, 33, 32, False, torch.float32, 1.0, 6),
    (2, 1, 20, 45, 16, False, torch.float32, 0.3, 10),  # Sq ≠ Skv
    (1, 2, 37, 37, 64, True, torch.float32, 1.0, 6),
    (1, 1, 19, 19, 128, True, torch.float32, 10.0, 3),
    (1, 2, 19, 23, 8, False, torch.float32, 0.5, 8),  # d < 16: padded
    (1, 2, 33, 47, 64, False, torch.float16, 10.0, 32),
    (1, 2, 33, 47, 32, False, torch.float16, 0.3, 12),
    (1, 1, 30, 30, 40, True, torch.float16, 10.0, 16),  # padded 40 → 64
]


def _ids(c):
    b, h, sq, skv, d, causal, dt, lam, it = c
    return (f"B{b}-H{h}-S{sq}x{skv}-D{d}-{'causal' if causal else 'full'}-{str(dt).removeprefix('torch.')}"
            f"-lam{lam}-it{it}")


@pytest.mark.skipif(not INTERPRET, reason="interpreter run: the CPU without CUDA, with TRITON_INTERPRET=1")
@pytest.mark.parametrize("case", CPU_CASES, ids=_ids)
def test_interpreter_matches_cg_reference(case):
    """Same iteration count as the reference, within 8× (fp32: two summation orders of one recurrence) or 4×
    (fp16) the reference's own error (see _own_error), plus 1e-6.
    The comparison must be able to fail: that tolerance stays small, and the output is far from softmax
    attention (the correction is exercised)."""
    from mmchar.kernels.lla.kernel import lla

    b, h, sq, skv, d, causal, dt, lam, it = case
    q32, k32, v32 = _qkv(b, h, sq, skv, d, seed=7)
    kw = dict(causal=causal, ridge_lambda=lam, cg_iters=it)
    out = lla(q32.to(dt), k32.to(dt), v32.to(dt), **kw)
    assert out.shape == q32.shape and out.dtype == dt
    ref, own = _own_error(q32, k32, v32, dt, **kw)
    tol = (8 if dt == torch.float32 else 4) * own + 1e-6
    assert tol < (1e-3 if dt == torch.float32 else 3e-3)
    assert _rel(out, ref) < tol
    assert _rel(F.scaled_dot_product_attention(q32, k32, v32, is_causal=causal), ref) > 10 * tol


@pytest.mark.skipif(not INTERPRET, reason="interpreter run")
@pytest.mark.parametrize("case", [c for c in CPU_CASES if c[6] == torch.float16], ids=_ids)
def test_interpreter_descriptor_path(case):
    """The tensor-descriptor (TMA) loads: the copy engine's zero fill stands in for the masks (rows past the
    keys, pad columns of d = 40), so the result must match the pointer path's tolerance."""
    from mmchar.kernels.lla.kernel import lla

    b, h, sq, skv, d, causal, dt, lam, it = case
    q32, k32, v32 = _qkv(b, h, sq, skv, d, seed=7)
    kw = dict(causal=causal, ridge_lambda=lam, cg_iters=it)
    out = lla(q32.to(dt), k32.to(dt), v32.to(dt), tma=True, **kw)
    ref, own = _own_error(q32, k32, v32, dt, **kw)
    assert _rel(out, ref) < 4 * own + 1e-6 < 3e-3


@pytest.mark.skipif(not INTERPRET, reason="interpreter run")
def test_interpreter_defaults_strides_and_scale():
    """The authors' defaults (λ = 10, 32 iterations) on diffusers-style [B, S, H, D] views, and an explicit scale."""
    from mmchar.kernels.lla.kernel import lla

    g = torch.Generator().manual_seed(8)
    x = torch.randn(1, 21, 3 * 2 * 24, generator=g)  # q, k, v projections [B, S, H·D] viewed as [B, H, S, D]
    q, k, v = (t.unflatten(-1, (2, 24)).transpose(1, 2) for t in x.chunk(3, dim=-1))
    assert not q.is_contiguous()
    assert _rel(lla(q, k, v), lla_cg_ref(q, k, v)) < 1e-5
    kw = dict(scale=0.5, ridge_lambda=0.2, cg_iters=5)
    ref, own = _own_error(q, k, v, torch.float32, **kw)
    assert _rel(lla(q, k, v, **kw), ref) < 8 * own + 1e-6 < 1e-2


@pytest.mark.skipif(not INTERPRET, reason="interpreter run")
def test_interpreter_softmax_limit():
    from mmchar.kernels.lla.kernel import lla

    q, k, v = _qkv(1, 1, 20, 20, 16, seed=9)
    assert _rel(lla(q, k, v, causal=True, ridge_lambda=1e9, cg_iters=2),
                F.scaled_dot_product_attention(q, k, v, is_causal=True)) < 1e-5


@pytest.mark.parametrize("bad,match", [((1, 1, 8, 160), "head dim 160"), ((1, 1, 8), "B, H, S, D")])
def test_kernel_refuses_shapes_it_cannot_take(bad, match):
    pytest.importorskip("triton")
    from mmchar.kernels.lla.kernel import lla

    q = torch.randn(*bad)
    with pytest.raises(ValueError, match=match):
        lla(q, q, q)
    with pytest.raises(ValueError, match="dtype"):
        x = torch.randn(1, 1, 8, 16)
        lla(x, x.half(), x)


@pytest.mark.gpu
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_gpu_bf16_real_shape(causal):
    """B = 1, H = 16, S = 4096, D = 64 in bf16 with the authors' defaults, against the fp32 CG reference of the
    same bf16 inputs, within 4× the reference's own error from rounding its inputs to bf16; the eager form too."""
    from mmchar.kernels.lla.kernel import lla

    q32, k32, v32 = _qkv(1, 16, 4096, 4096, 64, seed=0, device="cuda")
    q, k, v = (t.bfloat16() for t in (q32, k32, v32))
    ref = lla_cg_ref(q, k, v, causal=causal)
    tol = 4 * _rel(ref, lla_cg_ref(q32, k32, v32, causal=causal))
    out = lla(q, k, v, causal=causal)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert _rel(out, ref) < tol
    for tma in (False, True):  # both load paths, whichever the autotuner chose
        assert _rel(lla(q, k, v, causal=causal, tma=tma), ref) < tol
    assert _rel(lla_eager(q, k, v, causal=causal), ref) < tol
