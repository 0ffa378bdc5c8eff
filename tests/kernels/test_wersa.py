"""WERSA's reference against the properties docs/kernels/wersa.md lists, and the `wersa` backend in a UNet3D."""

from __future__ import annotations

import pytest
import torch

from mmchar.kernels.wersa.reference import WersaParams, haar_filter, merge_heads, wersa_ref

B, H, N, D = 2, 3, 37, 16  # n not a multiple of 2^L: the padding and the block-start gains are exercised


@pytest.fixture
def qkvx():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, N, D, generator=g) for _ in range(3))
    return q, k, v, torch.randn(B, N, H * D, generator=g)


@pytest.mark.parametrize("levels", [1, 2, 4])
def test_constant_gains_scale_exactly(levels):
    y = torch.randn(B, H, N, D)
    out = haar_filter(y, torch.full((B, N, levels + 1), 0.7), levels)
    torch.testing.assert_close(out, 0.7 * y, rtol=1e-5, atol=1e-5)


def test_filter_is_block_local():
    """Only tokens inside one aligned block of 2^L mix: changing block 2 leaves the others untouched."""
    y = torch.randn(1, 1, 16, 4)
    gains = torch.rand(1, 16, 3)
    y2 = y.clone()
    y2[:, :, 8:12] += 1.0
    a, b = haar_filter(y, gains, 2), haar_filter(y2, gains, 2)
    assert torch.equal(a[:, :, :8], b[:, :, :8]) and torch.equal(a[:, :, 12:], b[:, :, 12:])
    assert not torch.equal(a[:, :, 8:12], b[:, :, 8:12])


def test_gain_of_a_block_is_its_first_token():
    """A coefficient takes the gain of its block's first token (the public port's resampling is the bug fixed)."""
    y = torch.randn(1, 1, 8, 4)
    gains = torch.ones(1, 8, 3)
    gains[0, 1::2] = 5.0  # odd tokens start no block at any level: their gains must not matter
    torch.testing.assert_close(haar_filter(y, gains, 2), y, rtol=1e-5, atol=1e-5)


def test_temperature_cancels(qkvx):
    q, k, v, x = qkvx
    p = WersaParams(H * D, D, features=64, seed=1)
    a = wersa_ref(q, k, v, p, x_q=x)
    with torch.no_grad():
        p.lam.fill_(2.5)
    torch.testing.assert_close(wersa_ref(q, k, v, p, x_q=x), a, rtol=1e-4, atol=1e-4)


def test_only_relative_gains_matter(qkvx):
    q, k, v, x = qkvx
    p = WersaParams(H * D, D, features=64, seed=1)
    a = wersa_ref(q, k, v, p, x_q=x)
    with torch.no_grad():
        p.s.mul_(3.0)
    torch.testing.assert_close(wersa_ref(q, k, v, p, x_q=x), a, rtol=1e-4, atol=1e-4)


def test_causal_never_looks_ahead_and_q_gain_cancels(qkvx):
    q, k, v, x = qkvx
    p = WersaParams(H * D, D, features=64, seed=1, causal=True)
    assert p.levels == 0
    a = wersa_ref(q, k, v, p, x_q=x)
    q2, k2, v2, x2 = (t.clone() for t in (q, k, v, x))
    for t in (q2, k2, v2):
        t[:, :, 20:] += 3.0
    x2[:, 20:] += 3.0
    torch.testing.assert_close(wersa_ref(q2, k2, v2, p, x_q=x2)[:, :, :20], a[:, :, :20])
    # q's own gain cancels in the normalised output: a source that changes only q's gains changes nothing
    xq = x.clone()
    xq[:, 5] += 10.0  # token 5's gain (and, through the causal conv, later tokens') changes for q and k alike
    out_qk = wersa_ref(q, k, v, p, x_q=xq)
    out_k = wersa_ref(q, k, v, p, x_q=x, x_k=xq)  # same k gains, q gains from the original source
    torch.testing.assert_close(out_qk, out_k, rtol=1e-4, atol=1e-4)


def test_seeded_parameters_are_reproducible():
    a, b = WersaParams(32, 16, seed=7), WersaParams(32, 16, seed=7)
    assert torch.equal(a.omega_q, b.omega_q) and torch.equal(a.conv.weight, b.conv.weight)
    assert not torch.equal(a.omega_q, a.omega_k)
    assert torch.equal(WersaParams(32, 16, seed=7, shared_omega=True).omega_k,
                       WersaParams(32, 16, seed=7, shared_omega=True).omega_q)


def test_merge_heads():
    t = torch.randn(2, 3, 5, 4)
    assert merge_heads(t).shape == (2, 5, 12) and torch.equal(merge_heads(t)[:, :, 4:8], t[:, 1])


def test_wersa_backend_in_a_video_unet(tmp_path):
    from mmchar.api import run_config_hash
    from mmchar.runner import ProfileOptions, run_and_store
    from mmchar.workloads import get_workload

    w = get_workload("modelscope-t2v")
    cfg = w.resolve("tiny", device="cpu", frames=2)
    opts = ProfileOptions(backend="wersa", repeat=1, cross_backend="math")
    run = run_and_store(w.build(cfg), opts, tmp_path, run_config_hash(cfg, opts))
    assert run.status == "ok", run.meta.get("error")
    sites, backends = run.meta["attention_layers"], run.meta["backend_per_layer"]
    assert all(backends[p] == ("math" if s == "cross" else "wersa") for p, s in sites.items())
    notes = run.meta["backend_notes"]
    assert notes and all(n["filter_source"] == "hidden_states" for n in notes.values())


INTERPRET = not torch.cuda.is_available() and __import__("os").environ.get("TRITON_INTERPRET") == "1"


@pytest.mark.skipif(not INTERPRET, reason="interpreter run: the CPU without CUDA, with TRITON_INTERPRET=1")
@pytest.mark.parametrize("b,h,n,nk,d,m,causal", [(1, 2, 37, 37, 16, 32, False), (2, 1, 50, 50, 24, 40, False),
                                                 (1, 2, 21, 30, 16, 32, False), (1, 2, 33, 33, 16, 32, True)],
                         ids=lambda x: str(x))
def test_fused_kernel_matches_reference(b, h, n, nk, d, m, causal):
    """GELU + block Haar filter + features + state, then output + LayerNorm, fused (docs/kernels/wersa.md, "Implementation")."""
    from mmchar.kernels.wersa.kernel import wersa

    g = torch.Generator().manual_seed(0)
    q, (k, v) = torch.randn(b, h, n, d, generator=g), (torch.randn(b, h, nk, d, generator=g) for _ in range(2))
    p = WersaParams(h * d, d, features=m, seed=3, causal=causal)
    x_q = torch.randn(b, n, h * d, generator=g)
    x_k = None if nk == n else merge_heads(k)  # joint attention: k's tokens filter by k's own gains
    with torch.no_grad():
        out, ref = wersa(q, k, v, p, x_q=x_q, x_k=x_k), wersa_ref(q, k, v, p, x_q=x_q, x_k=x_k)
    assert float((out - ref).norm() / ref.norm()) < 1e-5


def test_mixing_rows_reproduce_the_filter():
    from mmchar.kernels.wersa.kernel import mixing_rows

    g, y = torch.rand(2, 37, 3), torch.randn(2, 1, 37, 5)
    rows = mixing_rows(g, 37, 2).view(2, 10, 4, 4)
    blocks = torch.nn.functional.pad(y, (0, 0, 0, 3))[:, 0].view(2, 10, 4, 5)
    mixed = torch.einsum("bkij,bkjd->bkid", rows, blocks).reshape(2, 40, 5)[:, :37]
    torch.testing.assert_close(mixed, haar_filter(y, g, 2)[:, 0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_eager_baseline_matches_reference(causal):
    """The eager baseline bench-attn times (input dtype, chunked causal prefix sums) computes the reference's maths."""
    from mmchar.kernels.wersa.reference import wersa_eager

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 70, 16, generator=g) for _ in range(3))
    p = WersaParams(32, 16, features=32, seed=1, causal=causal)
    x = torch.randn(2, 70, 32, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(wersa_eager(q, k, v, p, x_q=x), wersa_ref(q, k, v, p, x_q=x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("causal", [False, True])
def test_gain_conv_is_the_specified_depthwise_conv(causal):
    """gains() runs the conv as a channels-last 2-D conv; it equals the spec's padded Conv1d over tokens."""
    import torch.nn.functional as F

    p = WersaParams(24, 8, seed=2, causal=causal)
    x = torch.randn(2, 50, 24)
    u = F.pad(x.transpose(1, 2), (32, 0) if causal else (16, 16))
    u = p.conv(u).transpose(1, 2)
    want = torch.sigmoid(p.fc2(F.relu(p.fc1(u)))) * p.s
    with torch.no_grad():
        torch.testing.assert_close(p.gains(x), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("levels,n", [(1, 9), (2, 37), (3, 40), (2, 4)])
def test_mixing_rows_closed_form_equals_filtering_unit_vectors(levels, n):
    from mmchar.kernels.wersa.kernel import _mixing_rows_direct, mixing_rows

    g = torch.rand(3, n, levels + 1)
    got, want = mixing_rows(g, n, levels), _mixing_rows_direct(g, n, levels)
    p = 1 << levels
    t = torch.arange(got.shape[1])
    real = (t[:, None] < n) & ((t[:, None] // p) * p + torch.arange(p)[None, :] < n)  # tokens that exist
    assert got.shape == want.shape
    torch.testing.assert_close(got[:, real], want[:, real], rtol=1e-6, atol=1e-6)


@pytest.mark.skipif(not INTERPRET, reason="interpreter run: the CPU without CUDA, with TRITON_INTERPRET=1")
def test_haar_blocks_wider_than_the_token_tile():
    """levels = 8: 256-token Haar blocks, wider than every tuned token tile: the slices follow the block size."""
    from mmchar.kernels.wersa.kernel import wersa

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 300, 16, generator=g) for _ in range(3))
    p = WersaParams(32, 16, levels=8, features=16, seed=1)
    with torch.no_grad():
        out, ref = wersa(q, k, v, p, x_q=merge_heads(q)), wersa_ref(q, k, v, p, x_q=merge_heads(q))
    assert float((out - ref).norm() / ref.norm()) < 1e-5


def test_head_dims_past_the_fused_limit_are_refused_by_the_kernel_and_run_eager_in_the_backend(monkeypatch):
    """d = 160 (SD 1.5's deepest level): the fused kernel refuses it with a one-line reason; the backend computes
    those layers with the plain PyTorch form of the same maths and says so in its notes."""
    import mmchar.backends as backends
    from mmchar.backends import get_backend
    from mmchar.kernels.wersa.kernel import MAX_HEAD_DIM, wersa

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 24, 160, generator=g) for _ in range(3))
    p = WersaParams(2 * 160, 160, features=32, seed=3)
    with pytest.raises(ValueError, match=f"head dim 160 > {MAX_HEAD_DIM}"):
        wersa(q, k, v, p, x_q=merge_heads(q))
    monkeypatch.setattr(backends, "_triton_usable", lambda t: True)  # the CUDA route, on the CPU
    be = get_backend("wersa")("down.2.attn1")
    with torch.no_grad():
        out = be(q, k, v)
        ref = be.reference(q, k, v)
    assert "head dim 160" in be.notes["path"]
    assert float((out - ref).norm() / ref.norm()) < 1e-4


def test_head_dims_that_faulted_on_the_gpu_are_refused_there_only():
    """d = 32 (SANA) faulted in the fused output pass on the H100: refused on CUDA (the backend runs it eager),
    still computed by the interpreter's tests; d > 128 refused everywhere."""
    from mmchar.kernels.wersa.kernel import fused_unsupported

    assert "32-wide tiles" in fused_unsupported(32, cuda=True)
    assert fused_unsupported(32, cuda=False) is None and fused_unsupported(40, cuda=True) is None
    assert fused_unsupported(128, cuda=True) is None and "> 128" in fused_unsupported(160, cuda=False)


def test_mixing_rows_caches_built_under_inference_mode_serve_autograd():
    """The term matrices and gather indices are cached per shape; the first call of a profiled pipeline runs under
    inference mode, and a later call with learnable gains (autograd on) must still save them for backward."""
    from mmchar.kernels.wersa import kernel

    kernel._TERMS.clear()
    kernel._GATHER.clear()
    with torch.inference_mode():
        first = kernel.mixing_rows(torch.rand(1, 64, 4), 64, 3)
    g = torch.rand(1, 64, 4, requires_grad=True)
    rows = kernel.mixing_rows(g * 1.0, 64, 3)
    rows.sum().backward()
    assert g.grad is not None and torch.isfinite(g.grad).all() and first.is_inference()
    assert not any(t.is_inference() for t in (*kernel._TERMS[(3, "cpu")], *kernel._GATHER.values()))


@pytest.mark.parametrize("levels,n", [(1, 9), (2, 37), (3, 40), (2, 4), (2, 38), (3, 1)])
def test_mixing_rows_from_the_even_tokens_gains_alone(levels, n):
    """The fused path computes the gains of even tokens only (the filter reads no other): the rows of the real
    tokens are the same as from every token's gains."""
    from mmchar.kernels.wersa.kernel import mixing_rows

    g = torch.rand(3, n, levels + 1)
    got, want = mixing_rows(g[:, ::2], n, levels, every=2), mixing_rows(g, n, levels)
    p = 1 << levels
    t = torch.arange(got.shape[1])
    real = (t[:, None] < n) & ((t[:, None] // p) * p + torch.arange(p)[None, :] < n)
    torch.testing.assert_close(got[:, real], want[:, real], rtol=0, atol=0)


@pytest.mark.parametrize("n", [50, 51])
def test_strided_gains_are_every_other_tokens(n):
    p = WersaParams(24, 8, seed=2)
    x = torch.randn(2, n, 24)
    with torch.no_grad():
        torch.testing.assert_close(p.gains(x, 2), p.gains(x)[:, ::2], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="causal"):
        WersaParams(24, 8, causal=True).gains(x, 2)


@pytest.mark.skipif(not INTERPRET, reason="interpreter run: the CPU without CUDA, with TRITON_INTERPRET=1")
@pytest.mark.parametrize("lam", [-3.0, 1.5, 25.0])
def test_fused_passes_read_lambda_on_the_device(lam):
    """The kernels compute τ = softplus(λ) + 0.1 from λ in memory (no host read): right for any λ, softplus's
    linear branch above 20 included."""
    from mmchar.kernels.wersa.kernel import wersa

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 37, 16, generator=g) for _ in range(3))
    p = WersaParams(32, 16, features=32, seed=1)
    with torch.no_grad():
        p.lam.fill_(lam)
    x = torch.randn(1, 37, 32, generator=g)
    with torch.no_grad():
        out, ref = wersa(q, k, v, p, x_q=x), wersa_ref(q, k, v, p, x_q=x)
    assert float((out - ref).norm() / ref.norm()) < 1e-5


@pytest.mark.skipif(not INTERPRET, reason="interpreter run: the CPU without CUDA, with TRITON_INTERPRET=1")
def test_backend_fused_path_inside_inference_mode(monkeypatch):
    """The backend as the runner calls it on a GPU: parameters built on the first call inside inference_mode,
    the fused passes (here under the interpreter) against the layer's own reference."""
    import mmchar.backends as B
    from mmchar.backends import get_backend

    monkeypatch.setattr(B, "_triton_usable", lambda t: True)
    be = get_backend("wersa")("down.attn1")
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 37, 32, generator=g) for _ in range(3))
    with torch.inference_mode():  # no hidden states: q and k filter by their own merged heads, as reference() does
        out = be(q, k, v, causal=False)
        ref = be.reference(q, k, v, causal=False)
    assert float((out - ref).norm() / ref.norm()) < 1e-4


def _conv1d_spec(x, weight, bias, every, causal):
    """The spec's depthwise Conv1d over tokens (zero "same" padding, or 32 zeros on the left when causal), in fp32."""
    import torch.nn.functional as F

    u = F.pad(x.float().transpose(1, 2), (32, 0) if causal else (16, 16))
    return F.conv1d(u, weight.float(), None if bias is None else bias.float(), stride=every,
                    groups=x.shape[-1]).transpose(1, 2)


@pytest.mark.skipif(not INTERPRET, reason="interpreter run: the CPU without CUDA, with TRITON_INTERPRET=1")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("causal,every", [(False, 1), (False, 2), (True, 1), (True, 2)])
def test_gain_conv_kernel_matches_conv1d(dtype, causal, every):
    """The Triton depthwise conv (x read in place, padding by masks, output at token stride `every`, bias fused)
    against F.conv1d: 37 tokens and 24 channels, neither a multiple of the interpreter's 16-wide blocks; x as a
    strided view (every other channel of a wider tensor), as it is read in place."""
    from mmchar.kernels.wersa.kernel import gain_conv

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 37, 48, generator=g)[:, :, ::2].to(dtype)  # [2, 37, 24], channel stride 2
    weight, bias = torch.randn(24, 1, 33, generator=g).to(dtype), torch.randn(24, generator=g).to(dtype)
    got = gain_conv(x, weight, bias, every, 32 if causal else 16)
    want = _conv1d_spec(x, weight, bias, every, causal)
    assert got.dtype == dtype and got.shape == (2, -(-37 // every), 24)
    tol = 1e-5 if dtype == torch.float32 else 1e-2  # bf16: one rounding of the fp32 sum
    torch.testing.assert_close(got.float(), want, rtol=tol, atol=tol)
    if every == 1 and not causal:  # no bias, over a single token (every tap but the centre reads padding)
        torch.testing.assert_close(gain_conv(x[:, :1], weight, None, 1, 16).float(),
                                   _conv1d_spec(x[:, :1], weight, None, 1, False), rtol=tol, atol=tol)


@pytest.mark.skipif(not INTERPRET, reason="interpreter run: the CPU without CUDA, with TRITON_INTERPRET=1")
@pytest.mark.parametrize("causal", [False, True])
def test_fused_gains_take_the_triton_conv_and_equal_the_pytorch_gains(monkeypatch, causal):
    """gains(fused=True) takes the Triton conv where `_triton_conv` says so (CUDA; forced here, under the
    interpreter) and gives the PyTorch conv's gains; fused=False (the reference, the eager baseline) never does."""
    import mmchar.kernels.wersa.kernel as K
    import mmchar.kernels.wersa.reference as R

    p = WersaParams(40, 8, seed=2, causal=causal)
    x = torch.randn(2, 51, 40)
    calls, conv = [], K.gain_conv
    monkeypatch.setattr(R, "_triton_conv", lambda t: True)
    monkeypatch.setattr(K, "gain_conv", lambda *a: calls.append(a[3:]) or conv(*a))
    every = p.gain_stride
    with torch.no_grad():
        want = p.gains(x, every)
        assert not calls
        got = p.gains(x, every, fused=True)
    assert calls == [(every, 32 if causal else 16)]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not INTERPRET, reason="interpreter run: the CPU without CUDA, with TRITON_INTERPRET=1")
@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_fused_path_follows_parameters_changed_in_place(monkeypatch, mode):
    """Change the parameters in place, as training or loading weights does, and the next fused call follows: Ω and
    the LayerNorm's affine are read where they live, the conv taps' kept copy (`WersaParams.derived`) is rebuilt.
    Under inference_mode the parameters are built there, as the backend builds them on a GPU run (inference
    tensors would carry no version counter). The Triton conv runs too (forced here)."""
    import mmchar.kernels.wersa.reference as R
    from mmchar.kernels.wersa.kernel import wersa

    monkeypatch.setattr(R, "_triton_conv", lambda t: True)
    ctx = torch.inference_mode if mode == "inference_mode" else torch.no_grad
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 37, 16, generator=g) for _ in range(3))
    x = torch.randn(1, 37, 32, generator=g)
    with ctx():
        p = WersaParams(32, 16, features=32, seed=1)
        before = wersa(q, k, v, p, x_q=x)
        p.omega_q.add_(0.5 * torch.randn(p.omega_q.shape, generator=g))
        p.omega_k.mul_(-1.0)
        p.norm.weight.mul_(2.0)
        p.norm.bias.add_(1.0)
        p.conv.weight.mul_(-3.0)
        p.conv.bias.add_(1.0)
        after, ref = wersa(q, k, v, p, x_q=x), wersa_ref(q, k, v, p, x_q=x)
    assert float((after - ref).norm() / ref.norm()) < 1e-5
    assert float((after - before).norm() / before.norm()) > 0.1


@pytest.mark.gpu
@pytest.mark.parametrize("b,n,c,causal", [(1, 16384, 2048, False), (16, 1024, 2048, False), (2, 4099, 1280, True)],
                         ids=lambda x: str(x))
def test_gpu_gain_conv_bf16(b, n, c, causal):
    """The Triton depthwise conv at real sizes in bf16 against the fp32 Conv1d, and the fused path's gains against
    the PyTorch conv's."""
    from mmchar.kernels.wersa.kernel import gain_conv

    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(b, n, c, device="cuda", dtype=torch.bfloat16, generator=g)
    p = WersaParams(c, 64, seed=1, causal=causal).to(device="cuda", dtype=torch.bfloat16)
    every = p.gain_stride
    with torch.no_grad():
        got = gain_conv(x, p.conv_taps(), p.conv.bias, every, 32 if causal else 16)
        want = _conv1d_spec(x, p.conv.weight, p.conv.bias, every, causal)
        assert got.shape == want.shape and float((got.float() - want).norm() / want.norm()) < 1e-2
        torch.testing.assert_close(p.gains(x, every, fused=True).float(), p.gains(x, every).float(),
                                   rtol=2e-2, atol=1e-2)


def test_derived_values_follow_their_parameters():
    """`WersaParams.derived` (the conv taps the fused path keeps in its own layout) is reused while the parameter
    is unchanged and rebuilt after an in-place change (in or out of inference mode), a state-dict load, a new
    parameter or a move; the module's tensors stay normal tensors (with version counters) when built or moved in
    inference mode."""
    with torch.inference_mode():
        p = WersaParams(8, 4, seed=0).to(torch.float64)
    assert not any(t.is_inference() for t in (*p.parameters(), *p.buffers()))

    taps = p.conv_taps  # [C, 1, K] with channels contiguous, from a kept [K, C] copy

    a = taps()
    assert a.stride()[0::2] == (1, 8) and torch.equal(a, p.conv.weight)
    assert taps().data_ptr() == a.data_ptr()  # reused
    with torch.inference_mode():
        p.conv.weight.mul_(2.0)
    b = taps()
    assert b.data_ptr() != a.data_ptr() and torch.equal(b, p.conv.weight)
    p.load_state_dict({**p.state_dict(), "conv.weight": torch.ones(8, 1, 33, dtype=torch.float64)})
    assert torch.equal(taps(), torch.ones(8, 1, 33, dtype=torch.float64))
    p.conv.weight = torch.nn.Parameter(torch.zeros(8, 1, 33, dtype=torch.float64))
    assert torch.equal(taps(), torch.zeros(8, 1, 33, dtype=torch.float64))
    p.float()
    assert taps().dtype == torch.float32 and torch.equal(taps(), p.conv.weight)


def test_a_copy_made_in_inference_mode_converts_to_fp32_and_still_runs():
    """bench-attn's reference check deep-copies the layer's bf16 parameters inside inference mode and converts
    the copy to fp32: the converted copy must be usable (it was not on the GPU: "Inference tensors do not track
    version counter" at the gain conv's weight view)."""
    import copy

    p = WersaParams(32, 16, seed=3).to(torch.bfloat16)
    x = torch.randn(1, 40, 32)
    with torch.inference_mode():
        ref = copy.deepcopy(p).float()
        g = ref.gains(x)
    assert g.shape == (1, 40, 3) and torch.isfinite(g).all()
    assert not any(t.is_inference() for t in (*ref.parameters(), *ref.buffers()))
    with torch.no_grad():
        torch.testing.assert_close(ref.gains(x), g)  # outside inference mode too
