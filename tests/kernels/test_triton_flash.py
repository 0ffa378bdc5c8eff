"""triton_flash against its fp32 reference: under TRITON_INTERPRET=1 on the CPU (small shapes, fp32/fp16, one
fixed config), and on the GPU in bf16 at real shapes (``gpu`` marker)."""

from __future__ import annotations

import os

import pytest
import torch

triton = pytest.importorskip("triton")

from mmchar.kernels.triton_flash import triton_flash_ref  # noqa: E402
from mmchar.kernels.triton_flash.kernel import tma_allowed, triton_flash  # noqa: E402

CPU_CASES = [  # B, H, Sq, Skv, D, causal, dtype: odd lengths, non-power-of-two head dims, cross lengths
    (2, 2, 33, 33, 40, False, torch.float32),
    (1, 2, 20, 77, 72, False, torch.float16),
    (1, 2, 37, 37, 64, True, torch.float32),
    (1, 1, 12, 30, 80, True, torch.float32),
    (1, 1, 30, 12, 32, True, torch.float16),
    (3, 2, 16, 16, 160, False, torch.float16),
    (16, 2, 5, 5, 96, False, torch.float32),  # temporal-like: huge batch, a few frames
    (1, 1, 64, 64, 256, False, torch.float32),
    (1, 2, 19, 23, 8, True, torch.float32),  # below 16: padded to 16
    (1, 2, 19, 23, 48, False, torch.float16),
    (1, 1, 19, 23, 112, True, torch.float32),
    (1, 1, 17, 17, 192, False, torch.float32),
]


def _ids(c):
    b, h, sq, skv, d, causal, dt = c
    return f"B{b}-H{h}-S{sq}x{skv}-D{d}-{'causal' if causal else 'full'}-{str(dt).removeprefix('torch.')}"


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.skipif(torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") != "1",
                    reason="interpreter run: the CPU without CUDA, with TRITON_INTERPRET=1")
@pytest.mark.parametrize("tma", [False, True], ids=["pointers", "descriptors"])
@pytest.mark.parametrize("case", CPU_CASES, ids=_ids)
def test_interpreter_matches_reference(case, tma):
    b, h, sq, skv, d, causal, dt = case
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(b, h, s, d, generator=g).to(dt) for s in (sq, skv, skv))
    out = triton_flash(q, k, v, causal=causal, tma=tma)
    assert out.shape == q.shape and out.dtype == dt
    tol = 1e-5 if dt == torch.float32 else 2e-3
    assert _rel(out, triton_flash_ref(q, k, v, causal=causal)) < tol


def test_strided_inputs_and_scale():
    if torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("interpreter run")
    x = torch.randn(2, 24, 3, 40)  # [B, S, H, D] viewed as [B, H, S, D], as diffusers processors pass it
    q = x.transpose(1, 2)
    for tma in (False, True):
        out = triton_flash(q, q, q, scale=0.3, tma=tma)
        assert _rel(out, triton_flash_ref(q, q, q, scale=0.3)) < 1e-5


AHEAD_CASES = [  # several whole key blocks before the masked ones, none (keys shorter than a block), causal
    (1, 2, 20, 77, 72, False), (1, 2, 70, 70, 64, True), (2, 1, 40, 8, 32, False), (1, 1, 33, 49, 40, True)]


@pytest.mark.skipif(torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") != "1",
                    reason="interpreter run: the CPU without CUDA, with TRITON_INTERPRET=1")
@pytest.mark.parametrize("tma", [False, True], ids=["pointers", "descriptors"])
@pytest.mark.parametrize("block_m", [16, 32])
@pytest.mark.parametrize("case", AHEAD_CASES, ids=lambda c: _ids((*c, torch.float32)))
def test_scores_one_block_ahead_match_reference(case, block_m, tma):
    """The AHEAD loop (block j+1's scores before block j's softmax: a tune_flash candidate) computes the same
    attention: its prologue, steady state and last unmasked block hand over to the masked blocks correctly."""
    b, h, sq, skv, d, causal = case
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(b, h, s, d, generator=g) for s in (sq, skv, skv))
    out = triton_flash(q, k, v, causal=causal, tma=tma, config={"BLOCK_M": block_m, "BLOCK_N": 16, "AHEAD": True})
    assert _rel(out, triton_flash_ref(q, k, v, causal=causal)) < 1e-5


def test_a_config_with_an_unknown_key_is_refused():
    q = torch.randn(1, 1, 8, 16)
    with pytest.raises(ValueError, match="takes .*AHEAD.*got .*BLCK_N"):
        triton_flash(q, q, q, config={"BLOCK_M": 16, "BLCK_N": 16})
    with pytest.raises(ValueError, match="one of WS and AHEAD"):  # AHEAD's loop has no warp specialisation
        triton_flash(q, q, q, config={"BLOCK_M": 16, "BLOCK_N": 16, "WS": True, "AHEAD": True})


@pytest.mark.parametrize("bad,match", [((1, 1, 8, 300), "head dim 300"), ((1, 1, 8), "B, H, S, D")])
def test_shapes_it_cannot_take_are_refused(bad, match):
    q = torch.randn(*bad)
    with pytest.raises(ValueError, match=match):
        triton_flash(q, q, q)


GPU_CASES = [(2, 8, 4096, 4096, 40, False), (2, 8, 1024, 77, 80, False), (2, 8, 256, 256, 160, False),
             (2, 10, 4096, 4096, 64, False), (2, 16, 4096, 300, 72, False), (2048, 5, 16, 16, 64, False),
             (1, 16, 8192, 8192, 128, False), (1, 16, 4096, 4096, 128, True), (1, 4, 2048, 2048, 256, False),
             (1, 8, 1000, 1000, 96, True)]


@pytest.mark.gpu
@pytest.mark.parametrize("case", GPU_CASES, ids=lambda c: f"B{c[0]}-H{c[1]}-S{c[2]}x{c[3]}-D{c[4]}-{'causal' if c[5] else 'full'}")
@pytest.mark.parametrize("tma", [None, False, True], ids=["tuned", "pointers", "descriptors"])
def test_gpu_bf16_matches_reference(case, tma):
    b, h, sq, skv, d, causal = case
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(b, h, s, d, generator=g, device="cuda", dtype=torch.bfloat16) for s in (sq, skv, skv))
    if tma and not tma_allowed(q, k, v):
        pytest.skip("descriptors need a Hopper GPU")
    out = triton_flash(q, k, v, causal=causal, tma=tma)
    assert _rel(out, triton_flash_ref(q, k, v, causal=causal)) < 1e-2


@pytest.mark.gpu
@pytest.mark.parametrize("tma", [False, True], ids=["pointers", "descriptors"])
def test_gpu_scores_one_block_ahead_match_reference(tma):
    """The AHEAD candidate compiled for the GPU at a tile tune_flash times, non-causal and causal."""
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(1, 4, 1000, 128, generator=g, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    if tma and not tma_allowed(q, k, v):
        pytest.skip("descriptors need a Hopper GPU")
    for causal in (False, True):
        out = triton_flash(q, k, v, causal=causal, tma=tma, config={"BLOCK_M": 128, "BLOCK_N": 64, "AHEAD": True,
                                                                    "num_warps": 8, "num_stages": 2})
        assert _rel(out, triton_flash_ref(q, k, v, causal=causal)) < 1e-2


@pytest.mark.gpu
def test_gpu_later_calls_launch_the_tuned_config():
    """The first call of a key tunes it; later calls launch the chosen config directly (no autotuner lookup):
    the same output bit for bit, one entry per key, and fp16 and bf16 of one shape tuned apart."""
    from mmchar.kernels.triton_flash import kernel

    chosen = kernel._triton_flash_fwd_tuned.chosen
    g = torch.Generator(device="cuda").manual_seed(0)
    for dtype in (torch.bfloat16, torch.float16):
        q, k, v = (torch.randn(2, 8, 1000, 80, generator=g, device="cuda", dtype=dtype) for _ in range(3))
        before = set(chosen)
        first = triton_flash(q, k, v)
        new = set(chosen) - before
        assert len(new) <= 1 and all(set(key[1]) - {None} == {dtype} for key in new)
        again = triton_flash(q, k, v)
        assert torch.equal(first, again)
        assert _rel(again, triton_flash_ref(q, k, v)) < 1e-2
    assert {key[1][0] for key in chosen} >= {torch.bfloat16, torch.float16}  # q's


@pytest.mark.gpu
def test_gpu_descriptors_on_diffusers_strided_views():
    """[B, S, H, D] projections viewed as [B, H, S, D] (what diffusers processors hand over) take the descriptor
    path: row stride H·D, head stride D."""
    x = torch.randn(2, 1000, 3 * 10 * 64, device="cuda", dtype=torch.bfloat16)
    q, k, v = (t.unflatten(-1, (10, 64)).transpose(1, 2) for t in x.chunk(3, dim=-1))
    if not tma_allowed(q, k, v):
        pytest.skip("descriptors need a Hopper GPU")
    out = triton_flash(q, k, v, tma=True)
    assert _rel(out, triton_flash_ref(q, k, v)) < 1e-2


def test_backend_swaps_into_a_diffusers_attention_module():
    """The `triton-flash` backend through the one registry and the diffusers adapter (interpreter on CPU)."""
    import types

    from diffusers.models.attention_processor import Attention

    from mmchar.swap import swap_attention

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs CUDA or TRITON_INTERPRET=1")
    torch.manual_seed(0)
    attn = Attention(query_dim=48, heads=2, dim_head=24, cross_attention_dim=16).to(device, torch.float16)
    x = torch.randn(2, 40, 48, device=device, dtype=torch.float16)
    ctx = torch.randn(2, 7, 16, device=device, dtype=torch.float16)
    with torch.inference_mode():
        ref = attn(x, encoder_hidden_states=ctx)
        with swap_attention(types.SimpleNamespace(m=attn), ["m"], "triton-flash", device) as state:
            out = attn(x, encoder_hidden_states=ctx)
    assert state.layer_backend == {"m": "triton-flash"} and state.layer_site == {"m": "cross"}
    assert _rel(out, ref) < 2e-3
