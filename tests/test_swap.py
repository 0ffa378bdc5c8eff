"""The diffusers adapter: routing only inside wrapped modules, restoration, unsupported layers, fallback."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

from mmchar.backends import AttentionBackend, Constraints, _REGISTRY, register_backend
from mmchar.errors import BackendUnsupportedError
from mmchar.scopes import attention_site
from mmchar.swap import measure_dispatch_overhead_us, swap_attention

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def pipe():
    from mmchar.workloads import get_workload

    w = get_workload("modelscope-t2v")
    return w.build(w.resolve("tiny", device="cpu", frames=2)).pipe


@pytest.fixture
def counting():
    calls = []

    @register_backend
    class Counting(AttentionBackend):
        name = "counting-test"
        description = "records calls"

        def __call__(self, q, k, v, *, causal=False, scale=None, mask=None, hidden_states=None):
            calls.append((self.module_path, tuple(q.shape), tuple(k.shape), hidden_states is not None))
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)  # reaches the original

    yield calls
    _REGISTRY.pop("counting-test")


def test_routes_denoiser_attention_and_restores(pipe, counting):
    before = {n: type(p) for n, p in pipe.unet.attn_processors.items()}
    original = F.scaled_dot_product_attention
    with swap_attention(pipe, ["unet"], "counting-test", CPU) as state:
        assert F.scaled_dot_product_attention is not original
        pipe(prompt="a cat", num_inference_steps=1, height=64, width=64, num_frames=2, output_type="latent")
    assert F.scaled_dot_product_attention is original
    assert {n: type(p) for n, p in pipe.unet.attn_processors.items()} == before
    paths = {c[0] for c in counting}
    assert paths and all(p.startswith("unet.") for p in paths)  # the text encoder and VAE were not routed
    assert all(c[3] for c in counting)  # the module's hidden states reach the backend
    assert set(state.layer_backend.values()) == {"counting-test"}
    sites = state.layer_site
    assert {"spatial", "temporal", "cross"} == set(sites.values())
    for path, q, k, _ in counting:
        if sites[path] == "temporal":
            assert q[2] == 2 and k[2] == 2  # sequence = frames


def test_unsupported_layers_are_named_once_or_fall_back(pipe):
    class Tiny(AttentionBackend):
        name = "tiny-dims-test"
        description = "takes head dim <= 4 only"
        constraints = Constraints(max_head_dim=4)

        def __call__(self, q, k, v, **kw):
            raise AssertionError("never called: every layer is refused")

    register_backend(Tiny)
    try:
        with swap_attention(pipe, ["unet"], "tiny-dims-test", CPU) as state:
            pipe(prompt="a cat", num_inference_steps=1, height=64, width=64, num_frames=2, output_type="latent")
        assert state.unsupported
        with pytest.raises(BackendUnsupportedError, match=r"cannot take \d+ attention layer.*head dim 8 > 4.*--fallback"):
            state.raise_if_unsupported()
        with swap_attention(pipe, ["unet"], "tiny-dims-test", CPU, fallback="math") as state:
            pipe(prompt="a cat", num_inference_steps=1, height=64, width=64, num_frames=2, output_type="latent")
        state.raise_if_unsupported()
        assert set(state.layer_backend.values()) == {"math"}
    finally:
        _REGISTRY.pop("tiny-dims-test")


def test_site_rules_first_then_the_call():
    rules = [(re.compile(r"temp_attentions\."), "temporal")]
    assert attention_site("unet.down_blocks.0.temp_attentions.0.x.attn2", rules, cross=False) == "temporal"
    assert attention_site("unet.down_blocks.0.attentions.0.x.attn2", rules, cross=True) == "cross"
    assert attention_site("unet.down_blocks.0.attentions.0.x.attn1", rules, cross=False) == "spatial"


def test_dispatch_overhead_is_measured():
    us = measure_dispatch_overhead_us(calls=50, rounds=3)
    assert 0.0 <= us < 1000.0


def _attention_pipe(processor=None):
    import types

    from diffusers.models.attention_processor import Attention

    torch.manual_seed(0)
    attn = Attention(query_dim=16, heads=2, dim_head=8, processor=processor)
    return types.SimpleNamespace(m=attn), attn


def test_processor_signature_survives_the_wrapper():
    import inspect

    pipe, attn = _attention_pipe()
    params = set(inspect.signature(attn.processor.__call__).parameters)
    with swap_attention(pipe, ["m"], "math", CPU):
        assert set(inspect.signature(attn.processor.__call__).parameters) == params  # cross_attention_kwargs kept
        assert hasattr(attn.processor, "__call__") and not hasattr(attn.processor, "no_such_attribute")


def test_layers_that_never_call_sdpa_are_named():
    from diffusers.models.attention_processor import AttnProcessor  # baddbmm + softmax, no F.sdpa

    pipe, attn = _attention_pipe(AttnProcessor())
    x = torch.randn(1, 4, 16)
    swap = swap_attention(pipe, ["m"], "flash", CPU)
    with swap as state:
        attn(x)
        state.check_routed(swap.processors)
    with pytest.raises(BackendUnsupportedError, match="AttnProcessor: computed without a route"):
        state.raise_if_unsupported()
    swap = swap_attention(pipe, ["m"], "sdpa", CPU)  # the default keeps the layer's own code, and says so
    with swap as state:
        attn(x)
        state.check_routed(swap.processors)
    state.raise_if_unsupported()
    assert state.layer_backend == {"m": "native:AttnProcessor"}


def test_grouped_query_attention_is_expanded_for_backends(counting):
    import types

    class GQA(torch.nn.Module):
        processor = None

        def set_processor(self, p):
            self.processor = p

        def forward(self, q, k, v):
            return self.processor(self, q, k, v)

    class Proc:
        def __call__(self, attn, q, k, v):
            return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)

    m = GQA()
    m.set_processor(Proc())
    q, k = torch.randn(1, 4, 6, 8), torch.randn(1, 2, 6, 8)
    with swap_attention(types.SimpleNamespace(m=m), ["m"], "counting-test", CPU):
        out = m(q, k, k)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, k, enable_gqa=True))
    assert counting[-1][2][1] == 4  # the backend saw k with one head per query head


def test_transformers_text_encoder_routes_through_the_attention_interface():
    """The second adapter: transformers models switch to attn_implementation "mmchar" inside the swap."""
    from mmchar.workloads import get_workload

    w = get_workload("sd15")
    pipe = w.build(w.resolve("tiny", device="cpu")).pipe
    te = pipe.text_encoder
    ids = pipe.tokenizer(["a cat"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    before = te.config._attn_implementation
    with torch.inference_mode():
        ref = te(ids)[0]
        with swap_attention(pipe, ["text_encoder"], "math", CPU) as state:
            assert te.config._attn_implementation == "mmchar"
            out = te(ids)[0]
    assert te.config._attn_implementation == before
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    assert state.layer_backend and set(state.layer_backend.values()) == {"math"}
    assert set(state.layer_site.values()) == {"text"}
    assert all(p.startswith("text_encoder.") for p in state.layer_backend)


def test_t5_position_bias_keeps_transformers_own_attention():
    """T5 passes its relative position bias to the attention function: no backend takes it, so those layers keep
    transformers' SDPA path (recorded), and a chosen backend is refused for them rather than silently wrong."""
    import types

    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    t5 = T5EncoderModel(T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)).eval()
    pipe = types.SimpleNamespace(text_encoder_2=t5)
    ids = torch.randint(0, 64, (2, 11))
    with torch.inference_mode():
        ref = t5(ids).last_hidden_state
        swap = swap_attention(pipe, ["text_encoder_2"], "sdpa", CPU)
        with swap as state:
            out = t5(ids).last_hidden_state
            state.check_routed(swap.processors)
    torch.testing.assert_close(out, ref)
    assert state.layer_backend and all(b.startswith("native:") for b in state.layer_backend.values())
    swap = swap_attention(pipe, ["text_encoder_2"], "math", CPU)
    with torch.inference_mode(), swap as state:
        t5(ids)
        state.check_routed(swap.processors)
    with pytest.raises(BackendUnsupportedError, match="position bias"):
        state.raise_if_unsupported()


def test_a_mask_arriving_after_the_first_call_is_refused():
    from mmchar.swap import LayerRoute, SwapState
    from mmchar.backends import get_backend

    route = LayerRoute("m", SwapState(backend="linear", fallback=None), get_backend("linear"), None, [], 0)
    q = torch.randn(1, 2, 8, 16)
    route.attend(q, q, q, None, False, None)
    with pytest.raises(BackendUnsupportedError, match="later call of m: attention mask not supported"):
        route.attend(q, q, q, torch.ones(1, 1, 8, 8, dtype=torch.bool), False, None)


def test_wersa_joint_attention_filters_q_and_k_by_their_own_tokens():
    from mmchar.backends import get_backend
    from mmchar.kernels.wersa.reference import merge_heads, wersa_ref

    b = get_backend("wersa")("joint")
    q, k = torch.randn(1, 2, 12, 16), torch.randn(1, 2, 12, 16)
    hidden = torch.randn(1, 8, 40)  # image tokens only: 8 of q's 12 (text joined in): not a filter source
    out = b(q, k, k, hidden_states=hidden)
    torch.testing.assert_close(out, wersa_ref(q, k, k, b.params, x_q=merge_heads(q), x_k=merge_heads(k)))
    assert b.notes["filter_source"] == "q with heads merged"


def test_sana_linear_self_attention_gets_a_backend_route():
    """SANA's self-attention computes linear attention without F.sdpa: under `linear` the route computes the same
    maths (relu features); a softmax backend replaces it and the run says the maths changed; under the default
    `sdpa` the layer keeps its own code, recorded as native."""
    import types

    import torch
    from diffusers import SanaTransformer2DModel

    from mmchar.swap import swap_attention

    torch.manual_seed(0)
    m = SanaTransformer2DModel(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8,
                               num_layers=1, num_cross_attention_heads=2, cross_attention_head_dim=8,
                               cross_attention_dim=16, caption_channels=8, sample_size=8, patch_size=1).eval()
    x, t, ctx = torch.randn(1, 4, 8, 8), torch.tensor([10]), torch.randn(1, 5, 8)
    self_attn = "transformer.transformer_blocks.0.attn1"
    with torch.no_grad():
        ref = m(x, ctx, t, return_dict=False)[0]
        outs, states = {}, {}
        for backend in ("sdpa", "linear", "math"):
            swap = swap_attention(types.SimpleNamespace(transformer=m), ["transformer"], backend, torch.device("cpu"))
            with swap as state:
                outs[backend] = m(x, ctx, t, return_dict=False)[0]
                state.check_routed(swap.processors)
            states[backend] = state
    assert states["sdpa"].layer_backend[self_attn] == "native:SanaLinearAttnProcessor2_0"
    assert states["linear"].layer_backend[self_attn] == "linear" and states["linear"].layer_site[self_attn] == "spatial"
    assert torch.allclose(outs["linear"], ref, atol=1e-5) and not states["linear"].math_changed
    assert states["math"].layer_backend[self_attn] == "math" and not states["math"].unsupported
    assert self_attn in states["math"].math_changed and not torch.allclose(outs["math"], ref, atol=1e-3)


def test_sana_video_rotary_linear_attention_gets_a_backend_route():
    """SANA-Video's self-attention turns φ(q) and φ(k) by RoPE in the numerator only (SanaLinearAttnProcessor3_0):
    under `linear` the route computes that maths (identity features into the kernel's numerator, the plain
    normaliser beside it) and matches diffusers' processor; a softmax backend attends over the rotated projections
    and the run says the maths changed."""
    import types

    from diffusers import SanaVideoTransformer3DModel

    from mmchar.swap import swap_attention

    torch.manual_seed(0)
    m = SanaVideoTransformer3DModel(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=12,
                                    num_layers=1, num_cross_attention_heads=2, cross_attention_head_dim=12,
                                    cross_attention_dim=24, caption_channels=8, sample_size=8, patch_size=(1, 2, 2)).eval()
    x, t, ctx = torch.randn(1, 4, 3, 8, 8), torch.tensor([10]), torch.randn(1, 5, 8)
    self_attn = "transformer.transformer_blocks.0.attn1"
    with torch.no_grad():
        ref = m(x, ctx, t, return_dict=False)[0]
        outs, states, calls = {}, {}, {}
        for backend in ("sdpa", "linear", "math"):
            swap = swap_attention(types.SimpleNamespace(transformer=m), ["transformer"], backend, torch.device("cpu"))
            with swap as state:
                outs[backend] = m(x, ctx, t, return_dict=False)[0]
                state.check_routed(swap.processors)
                calls[backend] = state.calls(swap.processors)
            states[backend] = state
    assert states["sdpa"].layer_backend[self_attn] == "native:SanaLinearAttnProcessor3_0"
    assert states["linear"].layer_backend[self_attn] == "linear" and not states["linear"].math_changed
    torch.testing.assert_close(outs["linear"], ref, atol=1e-4, rtol=1e-4)
    assert calls["linear"][self_attn] == calls["math"][self_attn] == 1  # one core call per forward, counted
    assert states["math"].layer_backend[self_attn] == "math" and not states["math"].unsupported
    assert "RoPE on the numerator" in states["math"].math_changed[self_attn]
    assert not torch.allclose(outs["math"], ref, atol=1e-3)


@pytest.mark.gpu
def test_gpu_sana_video_rotary_linear_attention_in_bf16():
    """The same route on the GPU: the Triton numerator (identity features) in bf16 against diffusers' processor."""
    import types

    from diffusers import SanaVideoTransformer3DModel

    from mmchar.swap import swap_attention

    torch.manual_seed(0)
    m = SanaVideoTransformer3DModel(in_channels=4, out_channels=4, num_attention_heads=4, attention_head_dim=112,
                                    num_layers=1, num_cross_attention_heads=4, cross_attention_head_dim=112,
                                    cross_attention_dim=448, caption_channels=8, sample_size=32,
                                    patch_size=(1, 2, 2)).eval().cuda().bfloat16()
    x = torch.randn(1, 4, 5, 32, 32, device="cuda", dtype=torch.bfloat16)
    t, ctx = torch.tensor([10], device="cuda"), torch.randn(1, 5, 8, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        ref = m(x, ctx, t, return_dict=False)[0].float()
        swap = swap_attention(types.SimpleNamespace(transformer=m), ["transformer"], "linear", torch.device("cuda"))
        with swap as state:
            out = m(x, ctx, t, return_dict=False)[0].float()
            state.check_routed(swap.processors)
    assert state.layer_backend["transformer.transformer_blocks.0.attn1"] == "linear" and not state.math_changed
    assert float((out - ref).norm() / ref.norm()) < 2e-2  # bf16 rounding of two different summation orders


def test_identity_features_give_the_numerator_of_the_callers_features():
    from mmchar.kernels.linear_attn.reference import linear_attn_eager, linear_attn_ref

    q, k, v = torch.randn(1, 2, 9, 8), torch.randn(1, 2, 9, 8), torch.randn(1, 2, 9, 4)
    want = torch.einsum("bhtd,bhsd,bhse->bhte", q, k, v)  # negative features kept: no map
    for fn in (linear_attn_ref, linear_attn_eager):
        torch.testing.assert_close(fn(q, k, v, feature="identity", normalize=False), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["sdpa", "flash", "math"])
def test_a_routed_call_adds_three_python_calls_and_no_scope(backend):
    """The swap's cost on a launch-bound step is host time per attention call: counted, not timed. Beyond the model's
    own calls a routed call adds the wrapper, the router and the backend (one dict lookup inside, no profiler scope
    outside the full profile, no signature work beyond diffusers' own); PyTorch's F.sdpa is reached as usual.
    (The previous route added 17 Python calls and 16 builtins to each attention call.)"""
    import collections
    import sys
    import types

    from diffusers.models.attention_processor import Attention

    from mmchar.swap import swap_attention

    attn = Attention(query_dim=8, heads=1, dim_head=8)
    hs = torch.randn(1, 4, 8)

    def calls() -> collections.Counter:
        seen: collections.Counter = collections.Counter()

        def hook(frame, event, arg):
            if event == "call":
                seen[frame.f_code.co_name] += 1
            elif event == "c_call":
                seen["c:" + getattr(arg, "__name__", "?")] += 1

        sys.setprofile(hook)
        try:
            attn(hs)
        finally:
            sys.setprofile(None)
        return seen

    with torch.inference_mode():
        attn(hs)
        native = calls()
        swap = swap_attention(types.SimpleNamespace(attn=attn), ["attn"], backend, CPU)
        with swap:
            attn(hs)  # binds the layer's route
            routed = calls()
    python = collections.Counter({k: n for k, n in (routed - native).items() if not k.startswith("c:")})
    # the wrapper, the router, the backend; a fused kernel one more (torch.ops' packet on the CPU, the closure that
    # flips PyTorch's kernel switches on CUDA)
    kernel = 1 if backend == "flash" else 0
    assert python == collections.Counter({"__call__": 2 + kernel, "_routed_sdpa": 1}), dict(routed - native)
    if backend == "sdpa":  # PyTorch's own function, reached as the model reaches it: nothing else added
        assert sum((routed - native).values()) == 3
        assert routed["c:scaled_dot_product_attention"] == native["c:scaled_dot_product_attention"] == 1
