"""linear_attn (Triton, under TRITON_INTERPRET=1 on the CPU; bf16 at real shapes on the GPU) and the eager
baseline, against the fp32 reference; the `linear` backend keeps softmax for cross attention."""

from __future__ import annotations

import os

import pytest
import torch

triton = pytest.importorskip("triton")

from mmchar.kernels.linear_attn.reference import linear_attn_eager, linear_attn_ref  # noqa: E402

INTERPRET = not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") == "1"

CASES = [  # B, H, Sq, Skv, D, Dv, causal, feature, dtype
    (1, 2, 37, 37, 32, 32, False, "relu", torch.float32),  # SANA: d = 32, ReLU
    (2, 1, 20, 77, 40, 40, False, "elu1", torch.float32),  # different query and key lengths
    (1, 2, 45, 45, 32, 48, True, "relu", torch.float32),
    (1, 1, 70, 70, 64, 64, True, "elu1", torch.float16),
    (3, 2, 16, 16, 72, 72, False, "relu", torch.float16),
    (2, 1, 150, 150, 16, 128, True, "relu", torch.float32),  # five chunks; dv over two blocks of the state pass
    (4, 2, 300, 130, 64, 64, False, "relu", torch.float16),  # output programs walk 3 query tiles, the last part-full
]


def _rel(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


def _ids(c):
    return f"B{c[0]}-H{c[1]}-S{c[2]}x{c[3]}-D{c[4]}-Dv{c[5]}-{'causal' if c[6] else 'full'}-{c[7]}-{str(c[8])[6:]}"


@pytest.mark.skipif(not INTERPRET, reason="interpreter run: the CPU without CUDA, with TRITON_INTERPRET=1")
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_triton_matches_reference(case):
    from mmchar.kernels.linear_attn.kernel import linear_attn

    b, h, sq, skv, d, dv, causal, feature, dt = case
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(b, h, sq, d, generator=g).to(dt), torch.randn(b, h, skv, d, generator=g).to(dt)
    v = torch.randn(b, h, skv, dv, generator=g).to(dt)
    out = linear_attn(q, k, v, causal=causal, feature=feature)
    assert out.shape == (b, h, sq, dv) and out.dtype == dt
    assert _rel(out, linear_attn_ref(q, k, v, causal=causal, feature=feature)) < (1e-5 if dt == torch.float32 else 3e-3)


@pytest.mark.skipif(not INTERPRET, reason="interpreter run: the CPU without CUDA, with TRITON_INTERPRET=1")
@pytest.mark.parametrize("path", ["scan", "chunked"])
@pytest.mark.parametrize("dt", [torch.float32, torch.float16])
def test_both_causal_paths_match_the_reference(path, dt):
    from mmchar.kernels.linear_attn.kernel import linear_attn

    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 2, 83, 24, generator=g).to(dt) for _ in range(3))
    out = linear_attn(q, k, v, causal=True, causal_path=path)
    assert _rel(out, linear_attn_ref(q, k, v, causal=True)) < (1e-5 if dt == torch.float32 else 3e-3)


@pytest.mark.skipif(not INTERPRET, reason="interpreter run: the CPU without CUDA, with TRITON_INTERPRET=1")
@pytest.mark.parametrize("per_group", [1, 2, 5])
@pytest.mark.parametrize("dt", [torch.float32, torch.float16])
@pytest.mark.parametrize("normalize", [True, False])
def test_causal_groups_of_chunks(per_group, dt, normalize):
    """The state pass's groups (one program walks `per_group` chunks; groups joined by a prefix sum, kept in the
    inputs' dtype for the output pass) change nothing: every split gives the reference."""
    from mmchar.kernels.linear_attn.kernel import linear_attn

    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, 161, 32, generator=g).to(dt) for _ in range(3))
    out = linear_attn(q, k, v, causal=True, feature="elu1", chunks_per_group=per_group, normalize=normalize)
    ref = linear_attn_ref(q, k, v, causal=True, feature="elu1", normalize=normalize)
    assert _rel(out, ref) < (1e-5 if dt == torch.float32 else 3e-3)


@pytest.mark.skipif(not INTERPRET, reason="interpreter run: the CPU without CUDA, with TRITON_INTERPRET=1")
@pytest.mark.parametrize("feature", ["relu", "identity"])
@pytest.mark.parametrize("causal,path", [(False, None), (True, "scan"), (True, "chunked")])
def test_unnormalised_is_the_numerator_alone(causal, path, feature):
    """normalize=False (fla's fast path's maths): φ(q)ᵀU without the division, on every kernel path; the reference
    and the eager form agree, and it is not the normalised output (the flag is not ignored). ``identity`` (features
    the caller mapped: SANA-Video's rotated ones) keeps negative entries."""
    from mmchar.kernels.linear_attn.kernel import linear_attn

    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 2, 83, 24, generator=g) for _ in range(3))
    ref = linear_attn_ref(q, k, v, causal=causal, normalize=False, feature=feature)
    out = linear_attn(q, k, v, causal=causal, causal_path=path, normalize=False, feature=feature)
    assert _rel(out, ref) < 1e-5
    assert _rel(linear_attn_eager(q, k, v, causal=causal, normalize=False, feature=feature), ref) < 1e-5
    assert _rel(out, linear_attn_ref(q, k, v, causal=causal)) > 0.5
    fq, fk = (torch.relu(q), torch.relu(k)) if feature == "relu" else (q, k)  # the numerator by hand, non-causal
    if not causal:
        torch.testing.assert_close(out, fq @ (fk.transpose(-1, -2) @ v), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("case", [c for c in CASES if c[8] == torch.float32], ids=_ids)
def test_eager_matches_reference(case):
    b, h, sq, skv, d, dv, causal, feature, _ = case
    q, k, v = torch.randn(b, h, sq, d), torch.randn(b, h, skv, d), torch.randn(b, h, skv, dv)
    assert _rel(linear_attn_eager(q, k, v, causal=causal, feature=feature),
                linear_attn_ref(q, k, v, causal=causal, feature=feature)) < 1e-5


def test_bad_input():
    from mmchar.kernels.linear_attn.kernel import linear_attn

    q = torch.randn(1, 1, 8, 16)
    with pytest.raises(ValueError, match="feature map"):
        linear_attn(q, q, q, feature="softmax")
    with pytest.raises(ValueError, match="numerator only"):
        linear_attn(q, q, q, feature="identity")
    with pytest.raises(ValueError, match="as many queries as keys"):
        linear_attn(q, torch.randn(1, 1, 9, 16), torch.randn(1, 1, 9, 16), causal=True)


def test_linear_backend_keeps_softmax_for_cross_attention():
    from mmchar.swap import swap_attention
    from mmchar.workloads import get_workload

    w = get_workload("modelscope-t2v")
    pipe = w.build(w.resolve("tiny", device="cpu", frames=2)).pipe
    with swap_attention(pipe, ["unet"], "linear", torch.device("cpu"), cross_backend="math") as state:
        pipe(prompt="a cat", num_inference_steps=1, height=64, width=64, num_frames=2, output_type="latent")
    for path, site in state.layer_site.items():
        assert state.layer_backend[path] == ("math" if site == "cross" else "linear"), path
    assert {"spatial", "temporal", "cross"} == set(state.layer_site.values())


@pytest.mark.gpu
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("b,h,n,d,dv", [(2, 8, 4096, 32, 32), (2, 8, 16384, 64, 64), (2, 8, 8192, 128, 128),
                                        (16, 32, 1024, 64, 64), (16, 32, 1024, 256, 64)])
def test_gpu_bf16(b, h, n, d, dv, causal):
    """The last two shapes have enough batch·heads for the one-pass causal scan (the last with causal WERSA's
    256 features over 64-wide values); the others take the chunked path. The causal fp32 reference holds
    B·H·S·d·dv floats twice (products, then their prefix sums), 64 GiB at the last shape: it runs one batch
    element at a time (out of memory on an 80 GB H100 beside seven test workers, 2026-12-07)."""
    from mmchar.kernels.linear_attn.kernel import linear_attn

    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(b, h, n, e, device="cuda", dtype=torch.bfloat16, generator=g) for e in (d, d, dv))
    ref = torch.cat([linear_attn_ref(q[i:i + 1], k[i:i + 1], v[i:i + 1], causal=causal) for i in range(b)])
    assert _rel(linear_attn(q, k, v, causal=causal), ref) < 2e-2


@pytest.mark.gpu
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("d,dv", [(128, 128), (256, 64)])
def test_gpu_chunked_groups_bf16(d, dv, normalize):
    """The chunked path with several groups of chunks (4 batch·heads: each of the 12 chunks of 3000 tokens its own
    group), normalised and not, at the head dims whose output pass holds two [d, dv] states for its products
    (the chunk's and the groups' before it): 128, and 256 features over 64-wide values (causal WERSA's)."""
    from mmchar.kernels.linear_attn.kernel import linear_attn

    g = torch.Generator(device="cuda").manual_seed(5)
    q, k, v = (torch.randn(1, 4, 3000, e, device="cuda", dtype=torch.bfloat16, generator=g) for e in (d, d, dv))
    out = linear_attn(q, k, v, causal=True, causal_path="chunked", normalize=normalize)
    assert _rel(out, linear_attn_ref(q, k, v, causal=True, normalize=normalize)) < 2e-2


@pytest.mark.gpu
@pytest.mark.parametrize("n,d", [(4096, 64), (8192, 128)])
def test_gpu_fla_backend_matches_linear(n, d):
    from mmchar.backends import get_backend

    dev = torch.device("cuda")
    cls = get_backend("fla")
    if cls.unavailable_reason(dev):
        pytest.skip(cls.unavailable_reason(dev))
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(2, 8, n, d, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3))
    fla_out = cls("t")(q, k, v, causal=True)
    assert _rel(fla_out, linear_attn_ref(q, k, v, causal=True)) < 2e-2


@pytest.mark.skipif(not INTERPRET, reason="interpreter run: the CPU without CUDA, with TRITON_INTERPRET=1")
@pytest.mark.parametrize("causal", [False, True])
def test_fp16_states_beyond_fp16_range_do_not_overflow(causal):
    """Σφ(k)vᵀ over 300 tokens of value 300 is 90 000 > fp16's 65 504: the state enters the fp16 product scaled."""
    from mmchar.kernels.linear_attn.kernel import linear_attn

    q = k = torch.ones(1, 1, 300, 16, dtype=torch.float16)
    v = torch.full((1, 1, 300, 16), 300.0, dtype=torch.float16)
    out = linear_attn(q, k, v, causal=causal, causal_path="scan" if causal else None)
    assert torch.isfinite(out).all()
    if causal:
        assert torch.isfinite(linear_attn(q, k, v, causal=True, causal_path="chunked")).all()
    assert _rel(out, linear_attn_ref(q, k, v, causal=causal)) < 3e-3


@pytest.mark.skipif(not INTERPRET, reason="interpreter run: the CPU without CUDA, with TRITON_INTERPRET=1")
def test_no_queries_or_no_keys():
    """Empty query or key sets: an empty output, and zeros (the normaliser's ε alone) where there is no key."""
    from mmchar.kernels.linear_attn.kernel import linear_attn

    q, k, v = torch.randn(1, 2, 0, 32), torch.randn(1, 2, 5, 32), torch.randn(1, 2, 5, 32)
    assert linear_attn(q, k, v).shape == (1, 2, 0, 32)
    out = linear_attn(torch.randn(1, 2, 3, 32), k[:, :, :0], v[:, :, :0])
    assert out.shape == (1, 2, 3, 32) and not out.abs().any()


def test_autotune_pruning_keeps_configs_the_registers_can_hold():
    """d = 256: only 64-wide value blocks and 64-row tiles survive; when none does, the fallback is small too."""
    from mmchar.kernels.linear_attn import kernel as K

    out = K._prune(K._out_tuned.configs, {"DVP": 256}, BD=256)
    assert out and all(c.kwargs["BDV"] <= 64 and c.kwargs["BLOCK_M"] <= 64 for c in out)
    state = K._prune(K._state_tuned.configs, {"DVP": 256}, BD=256)
    assert all(c.kwargs["BDV"] <= 64 and c.kwargs["BLOCK_N"] <= 64 for c in state)
    assert all(c.kwargs["BDV"] <= 16 for c in K._prune(K._causal_out_tuned.configs, {"DVP": 16}, BD=16))
    # non-causal: the whole value width in one block up to 128 (keys and queries read once), 64 at d = 256
    for bd, widest in ((16, 16), (32, 32), (64, 64), (128, 128), (256, 64)):
        for tuned in (K._state_tuned, K._out_tuned):
            kept = K._prune(tuned.configs, {"DVP": bd}, BD=bd)
            assert kept and {c.kwargs["BDV"] for c in kept} == {widest}


def test_causal_form_follows_the_measured_crossovers():
    """The default causal path: the scan once its programs are about one per SM, but never normalised at d = 128 in
    16-bit, where the chunked path won at every B·H measured on both GPU kinds (the probe's tables, round2
    results); unnormalised at d = 128, B·H = 32 (64 programs) the chunked path won on an H100."""
    pytest.importorskip("triton")
    from mmchar.kernels.linear_attn.kernel import causal_form

    assert causal_form(16, 128, 128, 2) == "chunked"
    assert causal_form(32, 128, 128, 2) == "chunked" and causal_form(128, 128, 128, 2) == "chunked"
    assert causal_form(32, 128, 128, 2, normalize=False) == "chunked"
    assert causal_form(64, 128, 128, 2, normalize=False) == "scan"
    assert causal_form(128, 64, 64, 2) == "scan" and causal_form(16, 64, 64, 2) == "chunked"
    assert causal_form(64, 64, 64, 2) == "chunked"  # 64 programs: the general rule (not measured at d = 64)
    assert causal_form(128, 128, 128, 4) == "scan"  # fp32: not measured otherwise, the general rule
    assert causal_form(128, 112, 112, 2) == "scan"  # d = 112 (SANA-Video): only d = 128 was measured
