"""mlstm (mLSTMsig by TFLA): the two references against each other and a hand-computed case, the eager baseline
and the Triton kernel (under TRITON_INTERPRET=1 on the CPU; bf16 at a real shape on the GPU) against them."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from mmchar.kernels.mlstm.reference import (_recurrence, mlstm_decode, mlstm_eager, mlstm_final_state,
                                           mlstm_parallel_ref, mlstm_recurrent_ref)

INTERPRET = not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") == "1"
needs_interpreter = pytest.mark.skipif(not INTERPRET, reason="interpreter run: the CPU without CUDA, "
                                                             "with TRITON_INTERPRET=1")


def _rel(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


def _inputs(b, h, t, d, dv, dtype=torch.float32, seed=0, device="cpu", gates=(0.0, 1.0, 3.0, 1.5)):
    """q, k, v in ``dtype``; gate pre-activations fp32: i ~ N(gates[0], gates[1]), f ~ N(gates[2], gates[3])
    (forget gates mostly open, as xLSTM initialises them, with some tokens forgetting fast)."""
    g = torch.Generator(device=device).manual_seed(seed)
    q, k = (torch.randn(b, h, t, d, generator=g, device=device) for _ in range(2))
    v = torch.randn(b, h, t, dv, generator=g, device=device)
    i_pre = gates[0] + gates[1] * torch.randn(b, h, t, generator=g, device=device)
    f_pre = gates[2] + gates[3] * torch.randn(b, h, t, generator=g, device=device)
    return q.to(dtype), k.to(dtype), v.to(dtype), i_pre, f_pre


def _denominators(q, k, i_pre, f_pre):
    """|n_tᵀ q_t| per token, by the recurrence (the normaliser's argument)."""
    ones = torch.ones(*k.shape[:3], 1)
    # with v ≡ 1 and no normalisation, h_t = Σ_s D_ts q_t·k_s = n_tᵀ q_t
    return mlstm_recurrent_ref(q, k, ones, i_pre, f_pre, normalize=False).abs().squeeze(-1)


def _parallel_lowp(q, k, v, i_pre, f_pre, *, normalize):
    """The quadratic form with its products in the inputs' dtype (gates and decays in fp32, as every form here
    takes them): the error the maths itself carries at that precision, the yardstick for the kernel's."""
    dt, t = q.dtype, q.shape[2]
    lf, li = F.logsigmoid(f_pre.float()), F.logsigmoid(i_pre.float())
    decay = lf[..., :, None].expand(*lf.shape, t).tril(-1).cumsum(-2)
    tril = torch.ones(t, t, dtype=torch.bool).tril()
    log_d = torch.where(tril, decay + li[..., None, :], float("-inf"))
    ctil = (q @ k.transpose(-1, -2)) * (log_d.exp() * q.shape[-1] ** -0.5).to(dt)
    if normalize:
        ctil = ctil / ctil.float().sum(-1, keepdim=True).abs().clamp_min(1.0).to(dt)
    return ctil @ v


# --- the references ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("normalize", [False, True])
def test_recurrence_by_hand(normalize):
    """Two tokens, Dqk = Dv = 1 (scale 1): h_0 = i_0 v_0 k_0 q_0, h_1 = (f_1 i_0 v_0 k_0 + i_1 v_1 k_1) q_1, each
    divided by max(|n_t q_t|, 1) when normalising, n_0 = i_0 k_0, n_1 = f_1 i_0 k_0 + i_1 k_1. f_0 plays no part."""
    q, k, v = (torch.tensor([[[[x], [y]]]]) for x, y in ((2.0, -3.0), (1.5, 0.5), (4.0, -1.0)))
    i_pre, f_pre = torch.tensor([[[0.3, -1.2]]]), torch.tensor([[[-5.0, 0.7]]])
    i0, i1 = torch.sigmoid(i_pre[0, 0])
    f1 = torch.sigmoid(f_pre[0, 0, 1])
    n0, n1 = i0 * 1.5, f1 * i0 * 1.5 + i1 * 0.5
    h0 = i0 * 4.0 * 1.5 * 2.0
    h1 = (f1 * i0 * 4.0 * 1.5 + i1 * -1.0 * 0.5) * -3.0
    if normalize:
        h0, h1 = h0 / max(abs(n0 * 2.0), 1.0), h1 / max(abs(n1 * -3.0), 1.0)
    want = torch.stack([h0, h1]).reshape(1, 1, 2, 1)
    for ref in (mlstm_recurrent_ref, mlstm_parallel_ref):
        torch.testing.assert_close(ref(q, k, v, i_pre, f_pre, normalize=normalize), want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("gates", [(0.0, 1.0, 3.0, 1.5), (-10.0, 10.0, -5.0, 10.0)], ids=["open", "extreme"])
def test_recurrent_equals_parallel(normalize, gates):
    """fp32, Dqk ≠ Dv; "extreme" gates span σ ≈ 1e-13 to 1 (sums of log-gates in the hundreds). With "open"
    gates the data hits both sides of the normaliser's max(·, 1), so normalize=True is tested on both."""
    q, k, v, i_pre, f_pre = _inputs(2, 3, 45, 16, 24, gates=gates)
    if gates[0] == 0.0:
        den = _denominators(q, k, i_pre, f_pre)
        assert (den > 1.2).float().mean() > 0.1 and (den < 0.8).float().mean() > 0.1
    rec = mlstm_recurrent_ref(q, k, v, i_pre, f_pre, normalize=normalize)
    par = mlstm_parallel_ref(q, k, v, i_pre, f_pre, normalize=normalize)
    assert rec.dtype == par.dtype == torch.float32 and rec.shape == (2, 3, 45, 24)
    assert _rel(rec, par) < 2e-6
    other = mlstm_recurrent_ref(q, k, v, i_pre, f_pre, normalize=not normalize)
    assert _rel(other, par) > 1e-2  # the setting matters on this data


# --- decoding with a carried state ------------------------------------------------------------------------------

@pytest.mark.parametrize("gates", [(0.0, 1.0, 3.0, 1.5), (-10.0, 10.0, -5.0, 10.0)], ids=["open", "extreme"])
def test_final_state_is_the_recurrences(gates):
    """The closed form C_T = Σ_s D_Ts k_s v_sᵀ (one einsum), n_T = Σ_s D_Ts k_s: the recurrence's last state, with
    forget gates down to σ ≈ 1e-13 (log-decays in the hundreds)."""
    q, k, v, i_pre, f_pre = _inputs(2, 3, 45, 16, 24, gates=gates)
    _, (c_ref, n_ref) = _recurrence(q, k, v, i_pre, f_pre, False, None)
    c, n = mlstm_final_state(k, v, i_pre, f_pre)
    assert c.dtype == n.dtype == torch.float32 and c.shape == (2, 3, 16, 24) and n.shape == (2, 3, 16)
    assert _rel(c, c_ref) < 2e-6 and _rel(n, n_ref) < 2e-6


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("split", [1, 20, 44])
def test_decode_continues_the_sequence(normalize, split):
    """The state after tokens [0, split) (closed form), then the remaining tokens decoded from it, one call of
    several tokens and token by token: the whole sequence's outputs at those positions."""
    q, k, v, i_pre, f_pre = _inputs(2, 2, 45, 16, 24, seed=3)
    full = mlstm_recurrent_ref(q, k, v, i_pre, f_pre, normalize=normalize)
    state = mlstm_final_state(k[:, :, :split], v[:, :, :split], i_pre[..., :split], f_pre[..., :split])
    rest = [q[:, :, split:], k[:, :, split:], v[:, :, split:], i_pre[..., split:], f_pre[..., split:]]
    out, _ = mlstm_decode(*rest, state, normalize=normalize)
    assert out.dtype == torch.float32 and out.shape == (2, 2, 45 - split, 24)
    assert _rel(out, full[:, :, split:]) < 2e-6
    for t in range(45 - split):
        h, state = mlstm_decode(*(x[:, :, t:t + 1] for x in rest), state, normalize=normalize)
        torch.testing.assert_close(h, full[:, :, split + t:split + t + 1], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="state"):
        mlstm_decode(*rest, (state[0][..., :8], state[1]), normalize=normalize)


# --- the eager baseline --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("t,chunk", [(45, 16), (64, 16), (45, 256), (37, 1)], ids=["ragged", "even", "one-chunk", "c1"])
def test_eager_matches_reference_fp32(normalize, t, chunk):
    q, k, v, i_pre, f_pre = _inputs(2, 2, t, 16, 24, seed=1)
    out = mlstm_eager(q, k, v, i_pre, f_pre, normalize=normalize, chunk_size=chunk)
    assert out.dtype == torch.float32 and out.shape == (2, 2, t, 24)
    assert _rel(out, mlstm_parallel_ref(q, k, v, i_pre, f_pre, normalize=normalize)) < 2e-6


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("dt", [torch.bfloat16, torch.float16])
def test_eager_low_precision(normalize, dt):
    """Against the fp32 reference on the same (rounded) inputs: within a small factor of the quadratic form's own
    error at that precision, and within an absolute bound."""
    q, k, v, i_pre, f_pre = _inputs(1, 2, 90, 32, 48, dtype=dt, seed=2)
    ref = mlstm_parallel_ref(q, k, v, i_pre, f_pre, normalize=normalize)
    out = mlstm_eager(q, k, v, i_pre, f_pre, normalize=normalize, chunk_size=32)
    assert out.dtype == dt
    yard = _rel(_parallel_lowp(q, k, v, i_pre, f_pre, normalize=normalize), ref)
    assert _rel(out, ref) < 2.0 * yard and _rel(out, ref) < (1e-2 if dt == torch.bfloat16 else 2e-3)


def test_eager_fp16_state_beyond_fp16_range():
    """f ≈ 1, i ≈ 1, k = q = 1, v = 300 for 300 tokens: the state reaches 90 000 > fp16's 65 504; it enters the
    q·C product in fp32 (reference.state_dtype), so the normalised output (300) stays finite and right. (The
    intra-chunk product C̃V returns fp16, as a user's matmul does: 16-token chunks keep it under 65 504 here.)"""
    q = k = torch.ones(1, 1, 300, 16, dtype=torch.float16)
    v = torch.full((1, 1, 300, 16), 300.0, dtype=torch.float16)
    gate = torch.full((1, 1, 300), 20.0)
    out = mlstm_eager(q, k, v, gate, gate, normalize=True, chunk_size=16)
    assert torch.isfinite(out).all()
    assert _rel(out, mlstm_parallel_ref(q, k, v, gate, gate, normalize=True)) < 2e-3


def test_eager_and_references_refuse_bad_shapes():
    q, k, v, i_pre, f_pre = _inputs(1, 1, 8, 16, 16)
    with pytest.raises(ValueError, match="gates"):
        mlstm_eager(q, k, v, i_pre[..., :7], f_pre, normalize=False)
    with pytest.raises(ValueError, match=r"\[B, H, T, Dqk\]"):
        mlstm_parallel_ref(q, k[..., :8], v, i_pre, f_pre, normalize=False)


# --- the Triton kernel ---------------------------------------------------------------------------------------------

CASES = [  # B, H, T, Dqk, Dv, chunk, dtype
    (1, 2, 70, 16, 24, 32, torch.float32),  # three chunks, ragged tail, Dqk ≠ Dv, Dv padded to 32
    (2, 1, 100, 32, 64, 32, torch.float32),  # four chunks, two query tiles each; Dqk and Dv over several blocks
    (1, 1, 40, 16, 16, 16, torch.float32),  # chunk = tile: only the diagonal tile and the state
    (1, 1, 50, 24, 40, 64, torch.float32),  # one chunk longer than T; head dims not powers of two
    (1, 2, 77, 32, 48, 32, torch.bfloat16),
    (1, 2, 77, 32, 48, 32, torch.float16),
]


def _ids(c):
    return f"B{c[0]}-H{c[1]}-T{c[2]}-Dqk{c[3]}-Dv{c[4]}-L{c[5]}-{str(c[6])[6:]}"


@needs_interpreter
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_triton_matches_reference(case, normalize):
    """fp32: the reference to fp32 rounding. fp16/bf16: against the fp32 reference on the same inputs, at most
    twice the error of the quadratic form computed in that dtype (``_parallel_lowp``)."""
    from mmchar.kernels.mlstm.kernel import mlstm

    b, h, t, d, dv, chunk, dt = case
    q, k, v, i_pre, f_pre = _inputs(b, h, t, d, dv, dtype=dt, seed=3)
    out = mlstm(q, k, v, i_pre, f_pre, normalize=normalize, chunk_size=chunk)
    assert out.shape == (b, h, t, dv) and out.dtype == dt
    ref = mlstm_parallel_ref(q, k, v, i_pre, f_pre, normalize=normalize)
    if dt == torch.float32:
        assert _rel(out, ref) < 2e-6
    else:
        assert _rel(out, ref) < 2.0 * _rel(_parallel_lowp(q, k, v, i_pre, f_pre, normalize=normalize), ref)


@needs_interpreter
@pytest.mark.parametrize("normalize", [False, True])
def test_triton_extreme_gates(normalize):
    """Gates from σ(−40) ≈ 4e-18 to σ(15): log-forget sums over a chunk in the thousands. The kernel takes
    differences of prefix sums only within a tile (16 tokens here) and adds the rest as sums of log-gates ≤ 0,
    so the error stays at that of a tile-long sum (about 2e-6 here; the references agree to 1e-7)."""
    from mmchar.kernels.mlstm.kernel import mlstm

    q, k, v, i_pre, f_pre = _inputs(1, 2, 83, 16, 32, seed=4)
    g = torch.Generator().manual_seed(5)
    i_pre, f_pre = (torch.empty(1, 2, 83).uniform_(-40.0, 15.0, generator=g) for _ in range(2))
    ref = mlstm_recurrent_ref(q, k, v, i_pre, f_pre, normalize=normalize)
    assert _rel(mlstm(q, k, v, i_pre, f_pre, normalize=normalize, chunk_size=64), ref) < 1e-5


@needs_interpreter
def test_triton_strided_inputs():
    """q, k, v as [B, T, H, D] views (a projection's layout) and gates as a [B, T, H] view: strides are honoured."""
    from mmchar.kernels.mlstm.kernel import mlstm

    g = torch.Generator().manual_seed(6)
    q, k = (torch.randn(2, 50, 2, 16, generator=g).transpose(1, 2) for _ in range(2))
    v = torch.randn(2, 50, 2, 32, generator=g).transpose(1, 2)
    i_pre, f_pre = (torch.randn(2, 50, 2, generator=g).transpose(1, 2) + 2.0 for _ in range(2))
    assert not q.is_contiguous() and not f_pre.is_contiguous()
    out = mlstm(q, k, v, i_pre, f_pre, normalize=True, chunk_size=32)
    ref = mlstm_parallel_ref(q.contiguous(), k.contiguous(), v.contiguous(), i_pre.contiguous(), f_pre.contiguous(),
                             normalize=True)
    assert _rel(out, ref) < 2e-6


@needs_interpreter
def test_triton_fp16_state_beyond_fp16_range():
    """As test_eager_fp16_state_beyond_fp16_range: a state of 90 000 enters q·C in fp32, not fp16."""
    from mmchar.kernels.mlstm.kernel import mlstm

    q = k = torch.ones(1, 1, 300, 16, dtype=torch.float16)
    v = torch.full((1, 1, 300, 16), 300.0, dtype=torch.float16)
    gate = torch.full((1, 1, 300), 20.0)
    out = mlstm(q, k, v, gate, gate, normalize=True, chunk_size=64)
    assert torch.isfinite(out).all()
    assert _rel(out, mlstm_parallel_ref(q, k, v, gate, gate, normalize=True)) < 2e-3


def test_triton_refuses_bad_inputs():
    pytest.importorskip("triton")
    from mmchar.kernels.mlstm.kernel import mlstm

    q, k, v, i_pre, f_pre = _inputs(1, 1, 8, 16, 16)
    with pytest.raises(ValueError, match="valid: 1 to 256"):
        mlstm(*_inputs(1, 1, 8, 320, 16), normalize=False)
    with pytest.raises(ValueError, match="power of two"):
        mlstm(q, k, v, i_pre, f_pre, chunk_size=48)
    with pytest.raises(ValueError, match="one dtype"):
        mlstm(q, k.half(), v, i_pre, f_pre)
    with pytest.raises(ValueError, match="one dtype"):
        mlstm(q.double(), k.double(), v.double(), i_pre, f_pre)
    with pytest.raises(ValueError, match="gates"):
        mlstm(q, k, v, i_pre[:, :, :4], f_pre)


def test_autotune_pruning():
    """256-wide queries keep only 64-row tiles and 64-wide value blocks; tiles never exceed the chunk; the
    state-product rows are clamped to Dqk; a 16-token chunk still gets a config."""
    pytest.importorskip("triton")
    from mmchar.kernels.mlstm import kernel as K

    out = K._prune(K._out_tuned.configs, {"BD": 256, "DVP": 256, "CHUNK": 256})
    assert out and all(c.kwargs["BDV"] <= 64 and c.kwargs["BLOCK"] <= 64 for c in out)
    small = K._prune(K._out_tuned.configs, {"BD": 16, "DVP": 64, "CHUNK": 32})
    assert small and all(c.kwargs["BLOCK"] <= 32 and c.kwargs["BDKS"] <= 16 and c.kwargs["BDV"] <= 64 for c in small)
    for tuned, key in ((K._out_tuned, "BLOCK"), (K._state_tuned, "BLOCK_S")):
        tiny = K._prune(tuned.configs, {"BD": 128, "DVP": 128, "CHUNK": 16})
        assert len(tiny) == 1 and tiny[0].kwargs[key] == 16
    state = K._prune(K._state_tuned.configs, {"BD": 32, "DVP": 16, "CHUNK": 256})  # no listed config is this narrow
    assert len(state) == 1 and state[0].kwargs["BDK"] == 32 and state[0].kwargs["BDV"] == 16


# --- on a GPU ------------------------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("normalize", [False, True])
def test_gpu_bf16_tfla_shape(normalize):
    """TFLA's benchmark head shape (16 heads, Dqk 128, Dv 256) at 4096 tokens, bf16: within twice the eager
    baseline's bf16 error (the chunkwise form in bf16) of the fp32 reference, and under 2e-2."""
    from mmchar.kernels.mlstm.kernel import mlstm

    q, k, v, i_pre, f_pre = _inputs(1, 16, 4096, 128, 256, dtype=torch.bfloat16, device="cuda")
    i_pre, f_pre = i_pre.bfloat16(), f_pre.bfloat16()  # as the backend hands them over
    out = mlstm(q, k, v, i_pre, f_pre, normalize=normalize)
    assert out.dtype == torch.bfloat16 and out.shape == (1, 16, 4096, 256)
    ref = mlstm_parallel_ref(q, k, v, i_pre, f_pre, normalize=normalize)
    yard = _rel(mlstm_eager(q, k, v, i_pre, f_pre, normalize=normalize), ref)
    assert _rel(out, ref) < min(2.0 * yard, 2e-2)


@pytest.mark.gpu
@pytest.mark.parametrize("b,h,t,d,dv,chunk,dt", [(2, 4, 1000, 64, 64, 128, torch.float16),
                                                 (1, 4, 777, 256, 64, 256, torch.bfloat16),
                                                 (1, 2, 1500, 40, 128, 512, torch.float32),
                                                 (3, 2, 300, 128, 128, 16, torch.bfloat16)])
def test_gpu_shapes(b, h, t, d, dv, chunk, dt):
    """Ragged lengths, Dqk = 256 (the pruned configs), padded dims, fp32 (exact products), a 16-token chunk (the
    fallback config); normalised."""
    from mmchar.kernels.mlstm.kernel import mlstm

    q, k, v, i_pre, f_pre = _inputs(b, h, t, d, dv, dtype=dt, device="cuda")
    ref = mlstm_parallel_ref(q, k, v, i_pre, f_pre, normalize=True)
    out = mlstm(q, k, v, i_pre, f_pre, normalize=True, chunk_size=chunk)
    if dt == torch.float32:
        assert _rel(out, ref) < 1e-5
    else:
        yard = _rel(mlstm_eager(q, k, v, i_pre, f_pre, normalize=True), ref)
        assert _rel(out, ref) < min(2.0 * yard, 2e-2)


@pytest.mark.gpu
@pytest.mark.parametrize("normalize", [False, True])
def test_gpu_matches_the_peer(normalize):
    """The peer's TFLA kernel (NX-AI's mlstm_kernels, when installed) on the same bf16 inputs, with its eps at 0."""
    peer = pytest.importorskip("mlstm_kernels.torch.chunkwise.triton_xl_chunk_siging")
    from mmchar.kernels.mlstm.kernel import mlstm

    q, k, v, i_pre, f_pre = _inputs(1, 8, 2048, 128, 256, dtype=torch.bfloat16, device="cuda")
    theirs = peer.mlstm_siging_chunkwise__xl_chunk(q, k, v, i_pre, f_pre, eps=0.0, normalize=normalize,
                                                   chunk_size=128, autocast_kernel_dtype=torch.bfloat16)
    ref = mlstm_parallel_ref(q, k, v, i_pre, f_pre, normalize=normalize)
    assert _rel(theirs, ref) < 2e-2  # the peer computes the same function
    assert _rel(mlstm(q, k, v, i_pre, f_pre, normalize=normalize), ref) < 2e-2
