"""LlamaGen as LlamaGen is: its VQ-16 decoder with the attention blocks of its lowest level (attention calls that
mmchar times and attributes as spatial attention of the decoder stage), its GPT with the caption embedder inside
(LlamaGen's exact parameter counts), and its static KV cache beside transformers' dynamic one (``--kv-cache``),
recorded in the run's configuration."""

from __future__ import annotations

import ast
import json

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from mmchar.cli import main
from mmchar.errors import InvalidParameterError, UnknownNameError
from mmchar.workloads import get_workload
from mmchar.workloads.build import _construct, model_class, parameters_on_meta
from mmchar.workloads.llamagen.pipeline import static_cache_length

SDPA = "aten::scaled_dot_product_attention"
# the tiny decoder's attention modules: the mid block's, and one after each res block of the lowest level
# (layers_per_block 1 + 1 there; the full preset has 2 + 1, so 4 calls per decode)
TINY_DECODER_ATTENTION = {"vqvae.decoder.mid_block.attentions.0", "vqvae.decoder.up_blocks.0.attentions.0",
                          "vqvae.decoder.up_blocks.0.attentions.1"}


def _on_meta(w, component: str, preset: str = "full"):
    with parameters_on_meta():
        return _construct(model_class(w.components[component]), w.preset_config(preset)["models"][component])


def _only_run(store):
    (run,) = [p for p in store.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return run, json.loads((run / "meta.json").read_text())


def test_the_vq_has_llamagens_attention_blocks():
    """VQ-16: an attention block after each res block of the 512-channel level (2 in the encoder, 3 in the
    decoder) besides each mid block's; each is GroupNorm + q, k, v, out with biases: 1,051,648 parameters, the
    5 x 1,051,648 a VQModel without them lacked (66,625,163 against 71,883,403)."""
    from diffusers.models.attention_processor import Attention

    vq = _on_meta(get_workload("llamagen"), "vqvae")
    blocks = {n: m for n, m in vq.named_modules() if isinstance(m, Attention)}
    assert sorted(blocks) == ["decoder.mid_block.attentions.0", "decoder.up_blocks.0.attentions.0",
                              "decoder.up_blocks.0.attentions.1", "decoder.up_blocks.0.attentions.2",
                              "encoder.down_blocks.4.attentions.0", "encoder.down_blocks.4.attentions.1",
                              "encoder.mid_block.attentions.0"]
    for m in blocks.values():
        assert m.heads == 1 and m.inner_dim == 512 and m.group_norm is not None
        assert sum(p.numel() for p in m.parameters()) == 1_051_648
    assert sum(p.numel() for p in vq.parameters()) == 71_883_403 == 66_625_163 + 5 * 1_051_648


def test_the_transformer_is_llamagens_gpt_with_its_caption_embedder():
    """GPT-XL for text: the Llama decoder (773,418,240) and LlamaGen's bias-free caption MLP inside it
    (2048x1280 + 1280x1280 = 4,259,840); the null caption is a buffer, as in LlamaGen, not a parameter."""
    gpt = _on_meta(get_workload("llamagen"), "transformer")
    embedder = gpt.caption_embedder
    assert embedder.fc1.bias is None and embedder.fc2.bias is None
    assert sum(p.numel() for p in embedder.parameters()) == 4_259_840
    assert "caption_embedder.uncond_embedding" in dict(gpt.named_buffers())
    assert embedder.uncond_embedding.shape == (120, 2048)
    assert sum(p.numel() for p in gpt.parameters()) == 777_678_080 == 773_418_240 + 4_259_840


def test_the_decode_stage_runs_the_vq_decoders_attention(tmp_path, capsys):
    """A tiny trace run: the decoder stage holds 3 attention calls per decode (the mid block's and the lowest
    level's two), all of them spatial, from the VQ decoder's own modules; the caption embedder's gemms are the
    generator's (its prefill); every generator attention call attends over the static cache's 136 keys."""
    code = main(["profile", "llamagen", "--device", "cpu", "--steps", "3", "--repeat", "1", "--profile-steps", "3",
                 "--store", str(tmp_path)])
    assert code == 0, capsys.readouterr().err
    run, meta = _only_run(tmp_path)
    assert meta["config"]["generation"]["kv_cache"] == "static"  # the default, recorded
    k = pd.read_parquet(run / "kernels.parquet")
    stage, op, kernel = k["stage"].astype(str), k["op_class"].astype(str), k["kernel"].astype(str)
    decoder = k[(stage == "decoder") & (op == "attention")]
    assert set(decoder["attn_site"].astype(str)) == {"spatial"}
    calls = decoder[decoder["kernel"].astype(str) == SDPA]  # a CPU trace's rows: each call's own op event, once
    assert len(calls) == 3 and set(calls["module_path"].astype(str)) == TINY_DECODER_ATTENTION
    assert set(k.loc[k["module_path"].astype(str).str.startswith("transformer.caption_embedder"), "stage"]
               .astype(str)) == {"generator"}
    generator = k[(stage == "generator") & (op == "attention") & (kernel == SDPA)]
    shapes = [ast.literal_eval(s) for s in generator["input_shapes"].astype(str)]
    assert sorted({q[2] for q, *_ in shapes}) == [1, 120]  # the prefill and the decode calls ...
    assert {kv[2] for _, kv, *_ in shapes} == {static_cache_length(120, 16)} == {136}  # ... over all 136 keys


def test_the_vq_attention_is_swapped_under_scope_all(tmp_path, capsys):
    """With --scope all the backend takes the VQ decoder's attention too: its layers are spatial."""
    code = main(["profile", "llamagen", "--scope", "all", "--steps", "2", "--repeat", "1", "--profile-steps", "1",
                 "--no-trace", "--store", str(tmp_path)])
    assert code == 0, capsys.readouterr().err
    _, meta = _only_run(tmp_path)
    layers = meta["attention_layers"]
    assert {p for p, s in layers.items() if p.startswith("vqvae.")} == TINY_DECODER_ATTENTION
    assert {layers[p] for p in TINY_DECODER_ATTENTION} == {"spatial"}
    assert set(layers.values()) <= set(get_workload("llamagen").attention_sites)


def _generator_key_lengths(kv_cache: str, monkeypatch) -> tuple[list[tuple[int, int, bool]], torch.Tensor]:
    """(queries, keys, masked) of every attention call of the generator in a 4-token tiny generation, and the image."""
    w = get_workload("llamagen")
    target = w.build(w.resolve("tiny", device="cpu", steps=4, generation={"kv_cache": kv_cache}))
    inside, seen = [False], []
    original = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, *args, **kwargs):
        if inside[0]:
            seen.append((q.shape[-2], k.shape[-2], attn_mask is not None))
        return original(q, k, v, attn_mask, *args, **kwargs)

    gpt = target.pipe.transformer
    gpt.register_forward_pre_hook(lambda *_: inside.__setitem__(0, True))
    gpt.register_forward_hook(lambda *_: inside.__setitem__(0, False))
    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    image = target.run(4)
    return seen, image


def test_static_and_dynamic_kv_caches(monkeypatch):
    """static (LlamaGen's setup_caches): every call, the prefill too, attends over the whole cache (caption +
    every image token, rounded up to 8: 136 keys here, 1144 at 512x512) under a mask; dynamic: the prefill is causal
    over the caption, decode call i over caption + i keys. The two compute the same tokens."""
    assert static_cache_length(120, 32 * 32) == 1144  # LlamaGen's 512x512: find_multiple(120 + 1024, 8)
    layers = get_workload("llamagen").preset_config("tiny")["models"]["transformer"]["num_hidden_layers"]
    static, image_static = _generator_key_lengths("static", monkeypatch)
    assert static == [(120, 136, True)] * layers + [(1, 136, True)] * 3 * layers
    dynamic, image_dynamic = _generator_key_lengths("dynamic", monkeypatch)
    assert dynamic == [(120, 120, False)] * layers + [(1, n, False) for n in (121, 122, 123) for _ in range(layers)]
    torch.testing.assert_close(image_static, image_dynamic)


def test_kv_cache_is_chosen_recorded_and_checked(tmp_path, capsys):
    """--kv-cache reaches the resolved configuration (meta.json's config, and so the run's hash), the default is the
    preset's (static), a bad value names the choices, and a sweep passes it to every point."""
    from mmchar import sweep as sw
    from mmchar.api import run_config_hash
    from mmchar.runner import ProfileOptions

    w = get_workload("llamagen")
    static = w.resolve("tiny", device="cpu")
    dynamic = w.resolve("tiny", device="cpu", generation={"kv_cache": "dynamic"})
    assert static["generation"]["kv_cache"] == "static" and dynamic["generation"]["kv_cache"] == "dynamic"
    assert w.resolve("tiny", device="cpu", generation={"kv_cache": "static"}) == static  # explicit = default
    options = ProfileOptions(backend="sdpa")
    assert run_config_hash(static, options) != run_config_hash(dynamic, options)
    with pytest.raises(UnknownNameError, match="valid --kv-cache values: dynamic, static"):
        w.resolve("tiny", device="cpu", generation={"kv_cache": "paged"})
    with pytest.raises(UnknownNameError, match="generation setting"):
        w.resolve("tiny", device="cpu", generation={"cache_size": 4})
    with pytest.raises(InvalidParameterError, match="sd15 has no KV cache.*applies to llamagen"):
        get_workload("sd15").resolve("tiny", device="cpu", generation={"kv_cache": "static"})

    code = main(["profile", "llamagen", "--kv-cache", "dynamic", "--steps", "2", "--repeat", "1", "--profile-steps",
                 "1", "--no-trace", "--store", str(tmp_path / "s")])
    assert code == 0, capsys.readouterr().err
    assert _only_run(tmp_path / "s")[1]["config"]["generation"]["kv_cache"] == "dynamic"
    capsys.readouterr()
    assert main(["profile", "llamagen", "--kv-cache", "paged", "--store", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "dynamic, static" in err and not (tmp_path / "x").exists()

    plan = sw.plan("llamagen", {"steps": [2, 3]}, ["sdpa"], tmp_path / "p", generation={"kv_cache": "dynamic"})
    assert all(p.config["generation"]["kv_cache"] == "dynamic" for p in plan.points)
    cmd = sw.child_command(plan, plan.points[0], tmp_path / "p")
    assert cmd[cmd.index("--kv-cache") + 1] == "dynamic"
    assert "--kv-cache" not in sw.child_command(sw.plan("llamagen", {"steps": [2]}, ["sdpa"], tmp_path / "p"),
                                                plan.points[0], tmp_path / "p")  # the default: not passed
    with pytest.raises(InvalidParameterError, match="has no KV cache"):
        sw.plan("sd15", {"steps": [2]}, ["sdpa"], tmp_path / "p", generation={"kv_cache": "dynamic"})
