"""The diffusers adapter: routing only inside wrapped modules, restoration, unsupported layers, fallback."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

from mmchar.backends import AttentionBackend, Constraints, _REGISTRY, register_backend
from mmchar.errors import BackendUnsupportedError
from mmchar.swap import attention_site, measure_dispatch_overhead_us, swap_attention

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
