"""One test per rule of the sub-class table (mmchar/sub_classes.py), with real kernel, op and module names (the
committed H100 runs of Wan 2.1, CogVideoX, Flux and a CPU trace of Wan's tiny preset), the module sets decided from
a whole table, the derivation for runs stored before the column, the decoder table, and one CPU end-to-end check."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mmchar.schema import KERNEL_COLUMNS, SUB_CLASSES
from mmchar.sub_classes import (MODULE_SETS, SUB_RULES, SubRule, add_rule, input_dims, remove_rule, rule_for,
                                sub_class, sub_classes)

CONV3D_GPU = ("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc_tilesize128x256x64_warpgroupsize2x1x1_g1_"
              "execute_segment_k_off_kernel__5x_cudnn")
COPY_GPU = ("void at::native::elementwise_kernel<128, 4, at::native::gpu_kernel_impl_nocast<at::native::direct_copy_"
            "kernel_cuda(at::TensorIteratorBase&)::{lambda()#3}::operator()() const::{lambda()#12}::operator()() const::"
            "{lambda(c10::BFloat16)#1}>(at::TensorIteratorBase&, at::native::direct_copy_kernel_cuda(at::TensorIteratorBase&)"
            "::{lambda()#3}::operator()() const::{lambda()#12}::operator()() const::{lambda(c10::BFloat16)#1} const&)::"
            "{lambda(int)#1}>(int, at::native::gpu_kernel_impl_nocast<at::native::direct_copy_kernel_cuda(at::TensorIterator"
            "Base&)::{lambda()#3}::operator()() const::{lambda()#12}::operator()() const::{lambda(c10::BFloat16)#1}>(at::"
            "TensorIteratorBase&, at::native::direct_copy_kernel_cuda(at::TensorIteratorBase&)::{lambda()#3}::operator()() "
            "const::{lambda()#12}::operator()() const::{lambda(c10::BFloat16)#1} const&)::{lambda(int)#1})")
MUL_GPU = ("void at::native::elementwise_kernel<128, 2, at::native::gpu_kernel_impl_nocast<at::native::BinaryFunctor<float, "
           "float, float, at::native::binary_internal::MulFunctor<float> > >(at::TensorIteratorBase&, at::native::Binary"
           "Functor<float, float, float, at::native::binary_internal::MulFunctor<float> > const&)::{lambda(int)#1}>(int, "
           "at::native::gpu_kernel_impl_nocast<at::native::BinaryFunctor<float, float, float, at::native::binary_internal"
           "::MulFunctor<float> > >(at::TensorIteratorBase&, at::native::BinaryFunctor<float, float, float, at::native::"
           "binary_internal::MulFunctor<float> > const&)::{lambda(int)#1})")
ROWWISE = "void at::native::(anonymous namespace)::RowwiseMomentsCUDAKernel<c10::BFloat16, float>"
WAN_RES = "vae.decoder.up_blocks.0.resnets.0"

# (kernel or CPU op, top-level aten op, module path, op class, stage, input dims, expected sub-class)
CASES = [
    # convolutions by dimensionality: the call decides for every kernel it launches
    (CONV3D_GPU, "aten::conv3d", "transformer.patch_embedding", "conv", "denoiser", "[[1, 16, 21, 60, 104], [1536, 16, 1, 2, 2], [1536]]", "conv3d"),
    ("aten::slow_conv3d_forward", "aten::conv3d", f"{WAN_RES}.conv1", "conv", "decoder", "", "conv3d"),  # CPU
    ("aten::copy_", "aten::conv3d", f"{WAN_RES}.conv1", "conv", "decoder", "", "conv3d"),  # a CPU conv's own copy
    ("aten::mkldnn_convolution", "aten::conv2d", "vae.decoder.up_blocks.0.upsamplers.0.resample.1", "conv", "decoder", "", "conv2d"),
    ("aten::convolution", "aten::conv1d", "vocoder.conv_pre", "conv", "decoder", "", "conv1d"),
    # a generic convolution op (a foreign trace, a backward pass): by its input's rank
    (CONV3D_GPU, "aten::convolution", "", "conv", "", "[[1, 16, 5, 32, 32], [16, 16, 3, 3, 3], [16]]", "conv3d"),
    (CONV3D_GPU, "autograd::engine::evaluate_function: ConvolutionBackward0", "", "conv", "", "[[2, 320, 64, 64], [320, 320, 3, 3]]", "conv2d"),
    ("aten::convolution", "aten::_convolution", "", "conv", "", "[[1, 80, 100], [512, 80, 7]]", "conv1d"),
    # padding: F.pad (Wan's causal conv pads in time and space), and the pad's own fill and copy on a CPU
    ("aten::fill_", "aten::pad", f"{WAN_RES}.conv1", "memory", "decoder", "[[1, 96, 3, 34, 34], [], [], []]", "pad"),
    (COPY_GPU, "aten::pad", "vae.decoder.conv_in", "memory", "decoder", "", "pad"),
    ("aten::constant_pad_nd", "aten::constant_pad_nd", "vae.decoder.conv_in", "memory", "decoder", "", "pad"),
    ("aten::reflection_pad2d", "aten::reflection_pad2d", "vae.decoder.conv_in", "memory", "decoder", "", "pad"),
    # a causal conv's temporal padding as a concatenation of cached frames, and the cache it keeps (Wan's
    # WanCausalConv3d at ...conv1; CogVideoX's CogVideoXCausalConv3d, its spatial norm's conv_y too)
    ("aten::cat", "aten::cat", f"{WAN_RES}.conv1", "memory", "decoder", "", "pad"),
    (COPY_GPU, "aten::cat", "vae.decoder.conv_in", "memory", "decoder", "", "pad"),
    (COPY_GPU, "aten::clone", "vae.decoder.mid_block.resnets.0.norm1.conv_y", "memory", "decoder", "", "pad"),
    ("aten::cat", "aten::cat", WAN_RES, "memory", "decoder", "", ""),  # the block's own feature cache: unnamed
    ("aten::clone", "aten::clone", WAN_RES, "memory", "decoder", "", ""),
    # up-sampling (Wan's nearest-exact 2D, CogVideoX's 3D, DC-AE's pixel shuffle)
    ("aten::_upsample_nearest_exact2d", "aten::_upsample_nearest_exact2d", "vae.decoder.up_blocks.0.upsamplers.0.resample.0", "memory", "decoder", "", "upsample"),
    (COPY_GPU, "aten::upsample_nearest3d", "vae.decoder.mid_block.resnets.0.norm1", "memory", "decoder", "", "upsample"),
    ("aten::as_strided", "aten::pixel_shuffle", "vae.decoder.up_blocks.0.upsample", "memory", "decoder", "", "upsample"),
    # norms by their op
    (ROWWISE, "aten::group_norm", "vae.decoder.mid_block.resnets.0.norm1.norm_layer", "norm", "decoder", "", "group_norm"),
    ("aten::native_layer_norm", "aten::layer_norm", "transformer.blocks.0.norm1", "norm", "denoiser", "", "layer_norm"),
    ("aten::_fused_rms_norm", "aten::rms_norm", "transformer.blocks.0.attn1.norm_q", "norm", "denoiser", "", "rms_norm"),
    # RoPE's frequency tables (Wan's transformer.rope; transformers' rotary_emb)
    ("aten::cat", "aten::cat", "transformer.rope", "memory", "denoiser", "", "rope"),
    ("aten::cos", "aten::cos", "text_encoder.model.rotary_emb", "elementwise", "text_encoder", "", "rope"),
    # adaLN modulation: its projection (Flux's norm1.linear and norm1.silu, Wan's time_proj linear, DiT's
    # adaLN_modulation) ...
    ("aten::addmm", "aten::linear", "transformer.transformer_blocks.0.norm1.linear", "gemm", "denoiser", "", "modulation"),
    ("aten::silu", "aten::silu", "transformer.transformer_blocks.0.norm1.silu", "elementwise", "denoiser", "", "modulation"),
    ("aten::addmm", "aten::linear", "transformer.condition_embedder.time_proj", "gemm", "denoiser", "", "modulation"),
    ("aten::addmm", "aten::linear", "transformer.blocks.0.adaLN_modulation.1", "gemm", "denoiser", "", "modulation"),
    ("aten::sin", "aten::sin", "transformer.time_proj", "elementwise", "denoiser", "", ""),  # CogVideoX: sinusoids
    # ... and its application, a per-sample vector broadcast over the tokens (Wan in the block, Flux in norm1)
    (MUL_GPU, "aten::mul", "transformer.blocks.0", "elementwise", "denoiser", "[[1, 32760, 1536], [1, 1, 1536]]", "modulation"),
    ("aten::add", "aten::add", "transformer.transformer_blocks.0.norm1", "elementwise", "denoiser", "[[1, 4096, 3072], [1, 1, 3072], []]", "modulation"),
    ("aten::mul", "aten::mul", "transformer.single_transformer_blocks.0", "elementwise", "generator", "[[2, 1, 3072], [2, 4096, 3072]]", "modulation"),
    ("aten::add", "aten::add", "transformer.transformer_blocks.0.norm1", "elementwise", "denoiser", "[[2, 1, 1536], [], []]", "modulation"),  # 1 + scale
    ("aten::add", "aten::add", "transformer.blocks.0", "elementwise", "denoiser", "[[1, 32760, 1536], [1, 32760, 1536], []]", ""),  # residual
    ("aten::add", "aten::add", "unet.down_blocks.0.resnets.0", "elementwise", "denoiser", "[[2, 320, 64, 64], [2, 320, 1, 1], []]", ""),  # temb bias
    ("aten::mul", "aten::mul", "vae.decoder.mid_block", "elementwise", "decoder", "[[1, 512, 64], [1, 1, 64]]", ""),  # not a step stage
    # a norm written out in ops: Wan's VAE RMS norm (F.normalize), T5's, their fp32 casts
    ("aten::linalg_vector_norm", "aten::linalg_vector_norm", f"{WAN_RES}.norm1", "norm", "decoder", "", "norm"),
    ("aten::div", "aten::div", f"{WAN_RES}.norm1", "elementwise", "decoder", "", "norm"),
    ("aten::pow", "aten::pow", "text_encoder.encoder.block.0.layer.0.layer_norm", "elementwise", "text_encoder", "", "norm"),
    (COPY_GPU, "aten::to", f"{WAN_RES}.norm2", "memory", "decoder", "", "norm"),
    ("aten::mul", "aten::mul", "unet.down_blocks.0.resnets.0.nonlinearity", "elementwise", "denoiser", "", ""),
]


@pytest.mark.parametrize("kernel,aten,module,op_class,stage,shapes,expected", CASES,
                         ids=[f"{c[6] or 'none'}-{c[1]}-{c[2]}" for c in CASES])
def test_rule(kernel, aten, module, op_class, stage, shapes, expected):
    assert sub_class(kernel, aten, module, op_class, stage, shapes) == expected


def test_every_rule_has_a_case():
    """Each rule of the table names some case above, or (a rule on a module set) a table below."""
    hit = {id(rule_for(kernel, aten, module, op_class, stage, shapes))
           for kernel, aten, module, op_class, stage, shapes, _ in CASES}
    untested = [r for r in SUB_RULES if id(r) not in hit and not r.within]
    assert not untested, untested


def _table(rows):
    """A kernel table from (stage, module path, op class, aten op, input dims) rows."""
    df = pd.DataFrame(rows, columns=["stage", "module_path", "op_class", "aten_op", "input_shapes"])
    df["kernel"] = df["aten_op"]
    return df


ATTN = "transformer.blocks.0.attn1"
Q = "[[1, 32760, 12, 64], [1, 32760, 12, 64], [1, 32760, 12, 64]]"


def test_rope_is_the_per_head_arithmetic_of_an_attention_module_that_rotates():
    # Wan's attention processor: x1 * cos - x2 * sin into a fresh tensor's even / odd slots (CPU op names)
    k = _table([
        ("denoiser", ATTN, "attention", "aten::scaled_dot_product_attention", Q),
        ("denoiser", ATTN, "elementwise", "aten::mul", "[[1, 32760, 12, 32], [1, 32760, 1, 32]]"),
        ("denoiser", ATTN, "elementwise", "aten::sub", "[[1, 32760, 12, 32], [1, 32760, 12, 32], []]"),
        ("denoiser", ATTN, "memory", "aten::copy_", "[[1, 32760, 12, 32], [1, 32760, 12, 32], []]"),
        ("denoiser", ATTN, "memory", "aten::empty_like", "[[1, 32760, 12, 64], [], [], [], [], []]"),
        ("denoiser", ATTN, "memory", "aten::type_as", "[[1, 32760, 1536], [1, 32760, 12, 64]]"),  # 3-D: the output's
        ("denoiser", ATTN, "memory", "aten::cat", "[[1, 12, 512, 64], [1, 12, 32760, 64]]"),  # a joint concat
    ])
    assert MODULE_SETS["rotary_attention"](k) == {ATTN}
    assert sub_classes(k).tolist() == ["", "rope", "rope", "rope", "rope", "", ""]


def test_a_4d_residual_of_an_attention_module_that_does_not_rotate_is_not_rope():
    # IF's added-KV attention adds its residual on [B, C, H, W]; a VAE's attention too (and its stage is left out)
    path = "unet.down_blocks.1.attentions.0"
    k = _table([
        ("denoiser", path, "attention", "aten::scaled_dot_product_attention", "[[2, 22, 1024, 64]]"),
        ("denoiser", path, "elementwise", "aten::add", "[[2, 1408, 32, 32], [2, 1408, 32, 32], []]"),
        ("decoder", "vae.decoder.mid_block.attentions.0", "attention", "aten::scaled_dot_product_attention", "[[1, 1, 4096, 512]]"),
        ("decoder", "vae.decoder.mid_block.attentions.0", "elementwise", "aten::mul", "[[1, 512, 64, 64], [1, 512, 1, 1]]"),
        ("decoder", "vae.decoder.mid_block.attentions.0", "elementwise", "aten::add", "[[1, 512, 64, 64], [1, 512, 64, 64], []]"),
    ])
    assert MODULE_SETS["rotary_attention"](k) == {"vae.decoder.mid_block.attentions.0"}
    assert sub_classes(k).tolist() == ["", "", "", "", ""]


def test_the_casts_of_an_upsampling_module_are_upsample():
    path = "vae.decoder.up_blocks.0.upsamplers.0.resample.0"  # Wan's WanUpsample: x.float() -> interpolate -> type_as
    k = _table([("decoder", path, "memory", "aten::to", ""),
                ("decoder", path, "memory", "aten::_upsample_nearest_exact2d", ""),
                ("decoder", path, "memory", "aten::type_as", ""),
                ("decoder", "vae.decoder.conv_in", "memory", "aten::to", "")])
    assert MODULE_SETS["upsample"](k) == {path}
    assert sub_classes(k).tolist() == ["upsample", "upsample", "upsample", ""]


def test_input_dims():
    assert input_dims("[[2, 4096, 64], [], [64]]") == [(2, 4096, 64), (), (64,)]
    assert input_dims("") == []


def test_rules_are_checked_and_the_table_extends():
    with pytest.raises(ValueError, match="sub-class"):
        SubRule("swizzle", aten="x")
    with pytest.raises(ValueError, match="needs"):
        SubRule("pad")
    with pytest.raises(ValueError, match="shape test"):
        SubRule("pad", shape="rank9")
    assert set(r.sub_class for r in SUB_RULES) == set(SUB_CLASSES)
    rule = SubRule("pad", kernel=r"^my_pad_kernel$")
    add_rule(rule, position=0)
    try:
        assert sub_class("my_pad_kernel") == "pad"
    finally:
        remove_rule(rule)
    assert sub_class("my_pad_kernel") == ""
    with pytest.raises(ValueError):
        remove_rule(rule)


def test_a_table_without_the_inputs_or_rows_gets_a_column():
    assert sub_classes(pd.DataFrame({"stage": [], "dur_us": []})).tolist() == []
    assert sub_classes(pd.DataFrame({"op_class": ["conv"], "aten_op": ["aten::conv3d"]})).tolist() == ["conv3d"]


def test_an_older_run_derives_the_column_on_load(tmp_path):
    from mmchar.store import Run, load_run, write_run

    kernels = pd.DataFrame({
        "stage": ["decoder", "decoder", "denoiser"], "step": np.int32([-1, -1, 0]),
        "module_path": [f"{WAN_RES}.conv1", f"{WAN_RES}.conv1", "transformer.blocks.0"],
        "op_class": ["conv", "memory", "elementwise"], "attn_site": "", "aten_op": ["aten::conv3d", "aten::pad", "aten::mul"],
        "launch_op": "", "kernel": "k", "ts_us": 0.0, "dur_us": 1.0,
        "input_shapes": ["", "", "[[2, 4096, 1536], [2, 1, 1536]]"], "flops": np.nan, "bytes": np.nan})
    meta = {"run_id": "w-sdpa-20260101-000000-abcdef", "status": "ok", "workload": "w", "backend": "sdpa"}
    back = load_run(write_run(tmp_path, Run(meta=meta, kernels=kernels)))  # written without phase and sub_class
    assert list(back.kernels.columns) == list(KERNEL_COLUMNS)
    assert back.kernels["sub_class"].astype(str).tolist() == ["conv3d", "pad", "modulation"]


def _run(run_id, kernels, timings):
    from mmchar.store import Run

    meta = {"run_id": run_id, "status": "ok", "workload": "wan2.1-1.3b", "backend": "sdpa", "timings": timings,
            "config": {"params": {}}}
    return Run(meta=meta, kernels=kernels)


def test_decoder_table_splits_the_decoder_by_sub_class():
    from mmchar.analysis import decoder_table

    k = pd.DataFrame({
        "stage": ["decoder"] * 4 + ["denoiser"], "step": np.int32([-1, -1, -1, -1, 0]),
        "module_path": [f"{WAN_RES}.conv1", f"{WAN_RES}.conv1", f"{WAN_RES}.conv1", WAN_RES, "transformer"],
        "op_class": ["conv", "memory", "memory", "elementwise", "gemm"],
        "aten_op": ["aten::conv3d", "aten::pad", "aten::cat", "aten::add", "aten::linear"],
        "kernel": "k", "dur_us": [60.0, 20.0, 10.0, 10.0, 500.0], "input_shapes": ""})
    t = decoder_table([_run("a", k, {"e2e": {"median_ms": 4.0}, "decoder": {"median_ms": 1.0}})])
    assert list(t.columns) == ["run_id", "label", "workload", "backend", "device", "decoder_ms", "e2e_ms",
                               "decoder_share", "sub_class", "op_class", "time_us", "share", "calls"]
    assert t["decoder_share"].tolist() == [0.25] * 3
    got = {(r.sub_class, r.op_class): (r.time_us, r.share, r.calls) for r in t.itertuples()}
    assert got == {("conv3d", "conv"): (60.0, 0.6, 1), ("pad", "memory"): (30.0, 0.3, 2),
                   ("", "elementwise"): (10.0, 0.1, 1)}
    assert decoder_table([]).empty and list(decoder_table([]).columns) == list(t.columns)


# --- end to end on the CPU: Wan 2.1's tiny preset ----------------------------------------------------------

@pytest.fixture(scope="module")
def wan_cpu_run(tmp_path_factory):
    import torch

    from mmchar.cli import main
    from mmchar.store import load_runs

    store = tmp_path_factory.mktemp("wan") / "store"
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared small CPU: see tests/cli/test_cli.py's one_thread
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["profile", "wan2.1-1.3b", "--device", "cpu", "--steps", "2", "--repeat", "1",
                         "--profile-steps", "1", "--no-trace", "--store", str(store)])
    finally:
        torch.set_num_threads(before)
    assert code == 0, err.getvalue()
    (run,) = load_runs([store])
    return run


@pytest.mark.slow
def test_cpu_wan_decoder_and_denoiser_carry_their_sub_classes(wan_cpu_run):
    from mmchar.analysis import decoder_table
    from mmchar.schema import KERNELS_FILE

    stored = pd.read_parquet(Path(wan_cpu_run.path) / KERNELS_FILE)  # written by attribution, not derived on load
    assert list(stored.columns) == list(KERNEL_COLUMNS)
    k = stored.assign(stage=stored["stage"].astype(str), sub_class=stored["sub_class"].astype(str))
    dec = k[k["stage"] == "decoder"]
    by = dec.groupby("sub_class")["op_class"].agg(lambda s: set(s.astype(str)))
    # WanCausalConv3d: nn.Conv3d -> conv3d; F.pad and the cached frames' cat -> pad (memory); WanUpsample -> upsample
    assert by["conv3d"] == {"conv"} and by["pad"] == {"memory"} and by["upsample"] == {"memory"}
    assert "aten::cat" in set(dec.loc[dec["sub_class"] == "pad", "aten_op"].astype(str))
    den = k[k["stage"] == "denoiser"]
    # Wan's attention rotates q and k itself (transformer.blocks.N.attn1); its blocks modulate in fp32
    rope = den[den["sub_class"] == "rope"]
    assert "transformer.rope" in set(rope["module_path"].astype(str))
    assert any(p.endswith(".attn1") for p in rope["module_path"].astype(str))
    assert (den["sub_class"] == "modulation").any()
    assert "condition_embedder.time_proj" in " ".join(den.loc[den["sub_class"] == "modulation", "module_path"].astype(str))
    t = decoder_table([wan_cpu_run])
    assert 0 < t["decoder_share"].iloc[0] <= 1 and t["share"].sum() == pytest.approx(1.0)
    assert {"conv3d", "pad", "upsample"} <= set(t["sub_class"])
