"""RWKV-7's generalized delta rule: the references against the convention and each other, the Triton kernel
against them (CPU under TRITON_INTERPRET=1), and on a GPU at a real shape, beside fla's chunk_rwkv7."""

from __future__ import annotations

import contextlib
import math
import os

import pytest
import torch
import torch.nn.functional as F

from mmchar.kernels.rwkv7.reference import (_recurrence, rwkv7_chunk_ref, rwkv7_decode, rwkv7_eager, rwkv7_final_state,
                                           rwkv7_recurrent_ref)

INTERPRET = not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") == "1"
needs_interpreter = pytest.mark.skipif(not INTERPRET, reason="interpreter run: the CPU without CUDA, with "
                                                             "TRITON_INTERPRET=1")


def rwkv7_inputs(b, h, t, d, *, seed=0, device="cpu"):
    """fp32 inputs in RWKV-7's ranges (the time-mix block, as mmchar/mixers.py's Rwkv7Params makes them): log
    decay w = −e^{−1/2}·σ(x) with channel biases from −6 (slow: memory of ~700 tokens) to 1 (fast), unit κ̂,
    a_lr ∈ (0, 1), a = −κ̂, b = κ̂ ⊙ a_lr. The transition diag(e^w) − κ̂(κ̂ ⊙ a_lr)ᵀ is a contraction: the state
    stays bounded over any length."""
    g = torch.Generator(device=device).manual_seed(seed)
    rn = lambda: torch.randn(b, h, t, d, generator=g, device=device)  # noqa: E731
    bias = torch.linspace(-6.0, 1.0, d, device=device)
    w = -math.exp(-0.5) * torch.sigmoid(bias + 0.5 * rn())
    kappa = F.normalize(rn(), dim=-1)
    lr = torch.sigmoid(rn())
    return [rn(), w, rn(), rn(), -kappa, kappa * lr]  # r, w, k, v, a, b


def _rel(x, y):
    return float((x.float() - y.float()).norm() / y.float().norm())


def _floor(exact, dtype):
    """The reference's own low-precision error: its exact output rounded to ``dtype``. No form that returns
    ``dtype`` does better; the low-precision tolerances below are small multiples of it."""
    return _rel(exact.to(dtype), exact)


# --- the convention -------------------------------------------------------------------------------------------


def test_recurrence_is_the_general_form_in_fla_convention():
    """S_t = S_{t−1}(diag(e^{w_t}) + a_tᵀb_t) + v_tᵀk_t, o_t = S_t r_t · scale, S value × key, written with
    explicit matrices; the transposed rank-one term (b_tᵀa_t: the other side of the product) differs."""
    r, w, k, v, a, b = (x[0, 0] for x in rwkv7_inputs(1, 1, 6, 5, seed=3))
    scale = 0.7

    def run(rank_one):
        s, out = torch.zeros(5, 5), []
        for t in range(6):
            s = s @ (torch.diag(torch.exp(w[t])) + rank_one(t)) + torch.outer(v[t], k[t])
            out.append(s @ r[t] * scale)
        return torch.stack(out)[None, None]

    ref = rwkv7_recurrent_ref(*(x[None, None] for x in (r, w, k, v, a, b)), scale=scale)
    torch.testing.assert_close(ref, run(lambda t: torch.outer(a[t], b[t])), rtol=1e-5, atol=1e-6)
    assert _rel(ref, run(lambda t: torch.outer(b[t], a[t]))) > 1e-2


def test_recurrence_matches_fla_naive():
    """fla-core's own token loop (dplr_recurrence: head-first [B, H, T, D], q scaled by D^-1/2)."""
    naive = pytest.importorskip("fla.ops.generalized_delta_rule.dplr.naive")
    r, w, k, v, a, b = rwkv7_inputs(2, 2, 33, 16)
    o, _ = naive.dplr_recurrence(r, k, v, a, b, w)
    assert _rel(rwkv7_recurrent_ref(r, w, k, v, a, b, scale=16 ** -0.5), o) < 1e-5


def test_initial_state_continues_the_sequence():
    """initial_state is h_0 in fla's [B, H, D_k, D_v] layout: two halves chained equal the whole."""
    x = rwkv7_inputs(2, 2, 40, 8, seed=1)
    full = rwkv7_recurrent_ref(*x)
    _, h = _recurrence(*(t[:, :, :25] for t in x), 1.0, None)
    second = rwkv7_recurrent_ref(*(t[:, :, 25:] for t in x), initial_state=h)
    torch.testing.assert_close(second, full[:, :, 25:], rtol=1e-5, atol=1e-5)


def test_padding_tokens_change_no_state():
    """A padded token (w = 0, a = b = k = v = 0) is the identity: the tokens after it read the same state."""
    x = rwkv7_inputs(1, 2, 20, 8, seed=2)
    _, h = _recurrence(*x, 1.0, None)
    r_pad = torch.randn(1, 2, 5, 8)
    padded = [torch.cat([t, r_pad if i == 0 else torch.zeros(1, 2, 5, 8)], 2) for i, t in enumerate(x)]
    o = rwkv7_recurrent_ref(*padded)
    torch.testing.assert_close(o[:, :, 20:], torch.einsum("bhtk,bhkv->bhtv", r_pad, h), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(o[:, :, :20], rwkv7_recurrent_ref(*x))


# --- the chunked forms ----------------------------------------------------------------------------------------

SHAPES = [(1, 2, 45, 16, 16), (2, 1, 77, 32, 32), (1, 1, 100, 16, 64)]  # B, H, T, D, chunk: ragged tails


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}-H{}-T{}-D{}-C{}".format(*s))
def test_chunk_ref_matches_recurrence(shape):
    b, h, t, d, c = shape
    x = rwkv7_inputs(b, h, t, d)
    assert _rel(rwkv7_chunk_ref(*x, scale=d ** -0.5, chunk_size=c), rwkv7_recurrent_ref(*x, scale=d ** -0.5)) < 2e-6


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}-H{}-T{}-D{}-C{}".format(*s))
def test_eager_matches_reference(shape):
    b, h, t, d, c = shape
    x = rwkv7_inputs(b, h, t, d, seed=1)
    out = rwkv7_eager(*x, scale=d ** -0.5, chunk_size=c)
    assert out.dtype == torch.float32
    assert _rel(out, rwkv7_recurrent_ref(*x, scale=d ** -0.5)) < 2e-6


@pytest.mark.parametrize("dt", [torch.bfloat16, torch.float16])
def test_eager_low_precision(dt):
    """In the input dtype with an fp32 state: within a few times the rounding of the exact output."""
    x = [t.to(dt) for t in rwkv7_inputs(1, 2, 150, 32, seed=2)]
    exact = rwkv7_recurrent_ref(*x, scale=32 ** -0.5)
    out = rwkv7_eager(*x, scale=32 ** -0.5)
    assert out.dtype == dt
    assert _rel(out, exact) < 4 * _floor(exact, dt)


def test_strong_decays_are_exact():
    """Log decays down to −40 (the state wiped each token) beside ones near 0: every pair's decay is a product
    of factors ≤ 1, nothing overflows (a factorization through e^{−Γ_j} would, past ~88 in the exponent)."""
    x = rwkv7_inputs(1, 2, 70, 16, seed=4)
    x[1][..., :4] = -40.0
    x[1][..., 4:8] = -1e-6
    ref = rwkv7_recurrent_ref(*x)
    assert _rel(rwkv7_chunk_ref(*x, chunk_size=32), ref) < 2e-6
    assert _rel(rwkv7_eager(*x, chunk_size=64), ref) < 2e-6


# --- decoding with a carried state ----------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 2, 45, 16, 16), (2, 1, 77, 32, 32), (1, 2, 30, 8, 64), (1, 1, 5, 16, 1)],
                         ids=lambda s: "B{}-H{}-T{}-D{}-C{}".format(*s))
def test_final_state_matches_the_recurrence(shape):
    """The chunked form's state pass alone (no outputs): the token loop's h_T, ragged tails, one chunk longer than
    the sequence, chunks of one token; and from an initial state (two halves chained)."""
    b, h, t, d, c = shape
    x = rwkv7_inputs(b, h, t, d, seed=5)
    _, want = _recurrence(*x, 1.0, None)
    got = rwkv7_final_state(*x[1:], chunk_size=c)
    assert got.dtype == torch.float32 and got.shape == (b, h, d, d)
    assert _rel(got, want) < 2e-6
    half = t // 2
    first = rwkv7_final_state(*(y[:, :, :half] for y in x[1:]), chunk_size=c)
    assert _rel(rwkv7_final_state(*(y[:, :, half:] for y in x[1:]), chunk_size=c, initial_state=first), want) < 2e-6


def test_final_state_with_strong_decays():
    x = rwkv7_inputs(1, 2, 70, 16, seed=4)
    x[1][..., :4] = -40.0
    x[1][..., 4:8] = -1e-6
    _, want = _recurrence(*x, 1.0, None)
    assert _rel(rwkv7_final_state(*x[1:], chunk_size=32), want) < 2e-6


@pytest.mark.parametrize("split", [1, 24, 39])
def test_decode_continues_the_sequence(split):
    """The state after tokens [0, split) (the chunked state pass), then the remaining tokens decoded from it, in
    one call and token by token: the whole sequence's outputs there."""
    x = rwkv7_inputs(2, 2, 40, 16, seed=6)
    scale = 16 ** -0.5
    full = rwkv7_recurrent_ref(*x, scale=scale)
    state = rwkv7_final_state(*(y[:, :, :split] for y in x[1:]))
    rest = [y[:, :, split:] for y in x]
    out, _ = rwkv7_decode(*rest, state, scale=scale)
    assert out.dtype == torch.float32 and _rel(out, full[:, :, split:]) < 2e-6
    for t in range(40 - split):
        o, state = rwkv7_decode(*(y[:, :, t:t + 1] for y in rest), state, scale=scale)
        torch.testing.assert_close(o, full[:, :, split + t:split + t + 1], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="state"):
        rwkv7_decode(*rest, state[:, :1], scale=scale)


def test_bad_input():
    x = rwkv7_inputs(1, 1, 8, 16)
    with pytest.raises(ValueError, match="must all be"):
        rwkv7_recurrent_ref(*x[:5], torch.randn(1, 1, 8, 8))
    with pytest.raises(ValueError, match="multiple of 16"):
        rwkv7_eager(*x, chunk_size=24)


# --- the Triton kernel ----------------------------------------------------------------------------------------

KERNEL_CASES = [  # B, H, T, D, chunk (None: the default), dtype
    (1, 2, 45, 16, 16, torch.float32),  # one block per chunk; ragged tail
    (2, 1, 77, 32, 32, torch.float32),  # two blocks per chunk (one cross-block product)
    (1, 1, 100, 64, 64, torch.float32),  # four blocks per chunk, two chunks
    (1, 2, 70, 24, None, torch.float32),  # head dim padded to 32 in registers; default chunk (64)
    (1, 2, 70, 32, 32, torch.bfloat16),
    (2, 1, 50, 64, None, torch.bfloat16),
    (1, 2, 61, 32, 16, torch.float16),
]


def _kid(c):
    return f"B{c[0]}-H{c[1]}-T{c[2]}-D{c[3]}-C{c[4]}-{str(c[5])[6:]}"


@needs_interpreter
@pytest.mark.parametrize("case", KERNEL_CASES, ids=_kid)
def test_triton_matches_reference(case):
    """fp32: to fp32 rounding. 16-bit: within a few times the rounding of the exact output (the interpreter
    truncates fp32 → bf16 where a GPU rounds to nearest: twice the GPU's rounding error there)."""
    from mmchar.kernels.rwkv7.kernel import rwkv7

    b, h, t, d, c, dt = case
    x = [u.to(dt) for u in rwkv7_inputs(b, h, t, d, seed=5)]
    out = rwkv7(*x, scale=d ** -0.5, chunk_size=c)
    assert out.shape == (b, h, t, d) and out.dtype == dt
    exact = rwkv7_recurrent_ref(*x, scale=d ** -0.5)
    assert _rel(out, exact) < (2e-6 if dt == torch.float32 else 4 * _floor(exact, dt))


@needs_interpreter
def test_triton_strided_inputs_and_strong_decays():
    """Views of [B, T, H, D] tensors (what a projection's output gives), a head dim of 128, and log decays down
    to −40 beside ones near 0."""
    from mmchar.kernels.rwkv7.kernel import rwkv7

    x = [u.transpose(1, 2) for u in rwkv7_inputs(1, 20, 2, 128, seed=6)]  # generated [B, T, H, D]
    x[1][..., :8] = -40.0
    x[1][..., 8:16] = -1e-6
    assert not x[0].is_contiguous()
    assert _rel(rwkv7(*x, chunk_size=16), rwkv7_recurrent_ref(*x)) < 2e-6


@needs_interpreter
def test_triton_short_and_wide():
    """T = 1 (one token in a 32-token chunk) and the widest head dim (256, 16-token chunks)."""
    from mmchar.kernels.rwkv7.kernel import rwkv7

    x = rwkv7_inputs(1, 1, 1, 64, seed=7)
    assert _rel(rwkv7(*x), rwkv7_recurrent_ref(*x)) < 2e-6
    x = rwkv7_inputs(1, 1, 20, 256, seed=7)
    assert _rel(rwkv7(*x), rwkv7_recurrent_ref(*x)) < 2e-6


def test_triton_bad_input():
    pytest.importorskip("triton")
    from mmchar.kernels.rwkv7.kernel import rwkv7

    x = rwkv7_inputs(1, 1, 8, 16)
    with pytest.raises(ValueError, match="must all be"):
        rwkv7(*x[:5], torch.randn(1, 1, 8, 8))
    with pytest.raises(ValueError, match="valid: 16, 32, 64"):
        rwkv7(*x, chunk_size=48)
    with pytest.raises(ValueError, match="valid: float16, bfloat16, float32"):
        rwkv7(*x[:5], x[5].double())
    with pytest.raises(ValueError, match="valid: 1 to 256"):
        rwkv7(*rwkv7_inputs(1, 1, 4, 300))
    assert rwkv7(*rwkv7_inputs(1, 1, 0, 16)).shape == (1, 1, 0, 16)


def test_autotune_pruning_fits_the_head_dim():
    pytest.importorskip("triton")
    from mmchar.kernels.rwkv7 import kernel as K

    configs = K._state_tuned.configs
    assert {c.kwargs["BV"] for c in K._prune(configs, {"BD": 16})} == {16}
    assert {c.kwargs["BV"] for c in K._prune(configs, {"BD": 64})} == {16, 32, 64}
    assert max(c.kwargs["BV"] for c in K._prune(configs, {"BD": 256})) == 32


@contextlib.contextmanager
def _untuned(prefix: str):
    """Every Triton autotuner in the imported modules under ``prefix`` runs one config, its least demanding (fewest
    stages, then four warps, then the kwargs' values in order), for as long as the block lasts; yields how many
    tuners it found. A peer checked for correctness need not be tuned: fla's chunk_rwkv7 tunes some 60 configs over
    its kernels at each head dim, about 90 s of a GPU test's 100 (14 s untuned on an H100; issue 17, part 7).
    Triton before 3.9 still times the one config once per new key (and may write it to its disk cache, under a key
    that names the config list): seconds, not the compile of 60."""
    import sys

    from triton.runtime.autotuner import Autotuner

    def lightest(configs):
        return min(configs, key=lambda c: (c.num_stages, abs(c.num_warps - 4), sorted(c.kwargs.items())))

    tuners = set()
    for name, module in list(sys.modules.items()):
        if not name.startswith(prefix) or module is None:
            continue
        for obj in list(vars(module).values()):
            while obj is not None and not isinstance(obj, Autotuner) and hasattr(obj, "fn"):  # heuristics wrap it
                obj = obj.fn
            if isinstance(obj, Autotuner):
                tuners.add(obj)

    def one(prune):
        return lambda *args, **kwargs: [lightest(prune(*args, **kwargs))]

    known = {tuner: (set(tuner.cache), tuner.__dict__.get("prune_configs")) for tuner in tuners}
    for tuner in tuners:
        tuner.prune_configs = one(tuner.prune_configs)
    try:
        yield len(tuners)
    finally:
        for tuner, (keys, own) in known.items():
            if own is None:
                del tuner.prune_configs  # back to the class's method
            else:
                tuner.prune_configs = own
            for key in set(tuner.cache) - keys:  # the untuned picks forgotten
                del tuner.cache[key]


def test_untuned_leaves_one_light_config_and_restores_the_tuner(monkeypatch):
    """On the CPU, without launching: a tuner behind a heuristics wrapper, in a module under the prefix, prunes to
    its lightest config inside the block and to all of them again after, its picks made inside forgotten."""
    import sys
    import types

    import triton
    import triton.language as tl

    @triton.jit
    def kernel(X, BLOCK: tl.constexpr):
        pass

    configs = [triton.Config({"BLOCK": b}, num_warps=w, num_stages=s)
               for b, w, s in ((64, 8, 3), (32, 4, 2), (16, 8, 2))]
    tuner = triton.autotune(configs=configs, key=[])(kernel)
    wrapped = triton.heuristics({"unused": lambda args: 1})(tuner)
    module = types.ModuleType("fakepeer.ops.k")
    module.kernel = wrapped
    monkeypatch.setitem(sys.modules, "fakepeer.ops.k", module)
    tuner.cache[("before",)] = configs[0]
    with _untuned("fakepeer.ops") as found:
        assert found == 1
        kept = tuner.prune_configs({})
        assert len(kept) == 1 and kept[0].kwargs == {"BLOCK": 32} and kept[0].num_stages == 2
        tuner.cache[("inside",)] = kept[0]
    assert len(tuner.prune_configs({})) == 3 and "prune_configs" not in vars(tuner)
    assert set(tuner.cache) == {("before",)}


@pytest.mark.gpu
@pytest.mark.parametrize("b,h,t,d", [(1, 32, 4096, 64), (1, 16, 4096, 128)])
def test_gpu_bf16(b, h, t, d):
    """A real shape in bf16 against the fp32 recurrence, the eager form, and fla's chunk_rwkv7 ([B, T, H, D]) on
    the same inputs where fla is installed."""
    from mmchar.kernels.rwkv7.kernel import rwkv7

    x = [u.bfloat16() for u in rwkv7_inputs(b, h, t, d, device="cuda")]
    out = rwkv7(*x, scale=d ** -0.5)
    exact = rwkv7_chunk_ref(*x, scale=d ** -0.5)  # equal to the recurrence (tested above), and quicker here
    floor = _floor(exact, torch.bfloat16)
    assert torch.isfinite(out).all()
    assert _rel(out, exact) < 4 * floor
    assert _rel(rwkv7_eager(*x, scale=d ** -0.5), exact) < 6 * floor  # ~3× on the CPU cases: bf16 products
    try:
        from fla.ops.rwkv7 import chunk_rwkv7
    except ImportError:
        return
    with _untuned("fla.ops") as tuners:
        assert tuners  # fla's kernels found (else they would tune again, silently)
        o_fla, _ = chunk_rwkv7(*(u.transpose(1, 2).contiguous() for u in x), scale=d ** -0.5)
    o_fla = o_fla.transpose(1, 2)
    assert _rel(o_fla, exact) < 8 * floor  # fla's own error (bf16 intermediates)
    assert _rel(out, o_fla) < 8 * floor
