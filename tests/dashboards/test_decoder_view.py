"""The decoder and step-structure views on hand-made runs: a video run whose VAE decode is 3D convolutions, causal
padding, up-sampling and group norms beside an image run, and a two-expert Wan 2.2 run with two guidance calls a
step beside a one-UNet run with batched guidance; runs without decoder (or step) kernels leave the view off, and
the figure alone says so."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from mmchar.analysis import decoder_table, step_structure_table
from mmchar.dashboards import build_figures
from mmchar.dashboards import decoder as decoder_view
from mmchar.dashboards import step_structure as step_view
from mmchar.dashboards.registry import VIEWS
from mmchar.store import Run


def kernels(rows):
    """rows: (stage, step, module_path, op_class, sub_class, dur_us)."""
    df = pd.DataFrame(rows, columns=["stage", "step", "module_path", "op_class", "sub_class", "dur_us"])
    df["step"] = df["step"].astype("int32")
    for c in ("attn_site", "aten_op", "launch_op", "kernel", "input_shapes", "phase"):
        df[c] = ""
    df["ts_us"], df["flops"], df["bytes"] = 0.0, float("nan"), float("nan")
    return df


def run(run_id, workload, k, decoder_ms=None, e2e_ms=None, **meta):
    base = {"run_id": run_id, "created": "2025-01-01T12:00:00", "status": "ok", "workload": workload,
            "preset": "full", "backend": "sdpa", "device": {"type": "cuda", "name": "NVIDIA H100 80GB HBM3"},
            "config": {"params": {"steps": 3, "height": 480, "width": 832, "frames": 1, "batch": 1},
                       "dtype": "bf16"}}
    if e2e_ms is not None:
        base["timings"] = {"e2e": {"median_ms": e2e_ms}, "decoder": {"median_ms": decoder_ms}}
    return Run(meta={**base, **meta}, kernels=k)


def video_run(run_id="wan-video"):
    """A video generation: 10 s end to end, 2.5 s of VAE decode (conv3d 6 ms, pad 2, upsample 1, group norm 0.5,
    and 0.5 ms of elementwise kernels no sub-class rule names)."""
    return run(run_id, "wan2.1-1.3b", kernels([
        ("denoiser", 0, "transformer.blocks.0.attn1", "attention", "", 900.0),
        ("decoder", -1, "vae.decoder.up.0.conv1", "conv", "conv3d", 4000.0),
        ("decoder", -1, "vae.decoder.up.1.conv1", "conv", "conv3d", 2000.0),
        ("decoder", -1, "vae.decoder.up.0.conv1", "memory", "pad", 2000.0),
        ("decoder", -1, "vae.decoder.up.0.upsampler", "memory", "upsample", 1000.0),
        ("decoder", -1, "vae.decoder.up.0.norm1", "norm", "group_norm", 500.0),
        ("decoder", -1, "vae.decoder.up.0", "elementwise", "", 500.0),
    ]), decoder_ms=2500.0, e2e_ms=10000.0)


def image_run(run_id="sd-image"):
    """An image generation: 1 s end to end, 0.1 s of decode, all of it 2D convolutions."""
    return run(run_id, "sd15", kernels([
        ("denoiser", 0, "unet.down_blocks.0", "conv", "conv2d", 300.0),
        ("decoder", -1, "vae.decoder.conv_in", "conv", "conv2d", 1000.0),
    ]), decoder_ms=100.0, e2e_ms=1000.0)


def test_decoder_share_of_e2e_and_its_kernel_time_stacked_by_sub_class():
    video, image = video_run(), image_run()
    fig = build_figures([video, image])["decoder"]
    share = fig.data[0]
    assert share.name == "decoder share of e2e" and share.orientation == "h"
    labels = list(share.y)
    assert len(labels) == 2 and "wan-video" not in labels  # the runs' short labels; the ids are in the hover
    assert list(share.x) == pytest.approx([0.25, 0.1]) and list(share.text) == ["25%", "10%"]
    assert [c[0] for c in share.customdata] == ["wan-video", "sd-image"]
    split = {t.name: t for t in fig.data[1:]}
    # most time first across the runs; the elementwise kernels no rule names go by their op class
    assert list(split) == ["conv3d", "pad", "upsample", "conv2d", "elementwise", "group_norm"]  # ties: table order
    assert all(t.orientation == "h" for t in split.values()) and fig.layout.barmode == "stack"
    assert list(split["conv3d"].y) == [labels[0]] and list(split["conv3d"].x) == pytest.approx([6.0])
    assert list(split["conv2d"].y) == [labels[1]] and list(split["conv2d"].x) == pytest.approx([1.0])
    assert split["conv3d"].customdata[0][0] == pytest.approx(0.6)  # of the decoder's 10 ms kernel time
    assert split["conv3d"].customdata[0][1] == 2 and split["conv3d"].customdata[0][2] == "wan-video"
    assert split["elementwise"].x[0] == pytest.approx(0.5)
    assert split["elementwise"].marker.color == "#54a24b"  # the op class's own colour (palette)
    assert split["conv3d"].marker.color != split["conv2d"].marker.color
    # the button shows the split as shares of each run's decoder kernel time
    ms, shares = fig.layout.updatemenus[0].buttons
    assert ms.label == "ms" and shares.label == "share of decoder"
    assert list(shares.args[2]) == list(range(1, len(fig.data)))  # the split's traces only, not the share of e2e
    assert shares.args[0]["x"][0] == pytest.approx([0.6]) and shares.args[0]["x"][3] == pytest.approx([1.0])


def test_a_sub_class_two_op_classes_hold_is_told_apart():
    k = kernels([("decoder", -1, "vae.decoder.a", "memory", "pad", 300.0),
                 ("decoder", -1, "vae.decoder.b", "elementwise", "pad", 100.0),
                 ("decoder", -1, "vae.decoder.c", "norm", "", 50.0),
                 ("decoder", -1, "vae.decoder.d", "norm", "norm", 50.0)])
    fig = decoder_view.decoder_figure(decoder_table([run("r", "w", k, decoder_ms=1.0, e2e_ms=2.0)]))
    assert sorted(t.name for t in fig.data[1:]) == ["norm (no sub-class)", "norm (norm)", "pad (elementwise)",
                                                   "pad (memory)"]
    # the hover names the op class once: "pad (memory)", not "pad (memory) (memory)"
    assert all(f"{t.name}:" in t.hovertemplate and ") (" not in t.hovertemplate for t in fig.data[1:])


def test_a_run_without_timings_has_no_share_but_keeps_its_split():
    r = video_run()
    del r.meta["timings"]
    fig = build_figures([r])["decoder"]
    assert fig.data[0].x[0] != fig.data[0].x[0] and list(fig.data[0].text) == ["not timed"]
    assert fig.data[1].name == "conv3d" and fig.data[1].x[0] == pytest.approx(6.0)


def test_noisy_runs_share_of_e2e_is_hatched():
    video, image = video_run(), image_run()
    video.meta["noise"] = {"noisy": True, "reasons": ["e2e varied 35%"]}
    fig = build_figures([video, image])["decoder"]
    assert list(fig.data[0].marker.pattern.shape) == ["/", ""] and "noisy" in fig.layout.title.text
    assert "e2e varied 35%" in fig.data[0].customdata[0][3]


def test_no_decoder_kernels_leaves_the_view_off_and_the_figure_says_so():
    steps_only = run("steps-only", "sd15", kernels([("denoiser", 0, "unet.a", "conv", "conv2d", 10.0)]),
                     decoder_ms=1.0, e2e_ms=10.0)
    failed = Run(meta={"run_id": "oom", "status": "oom", "workload": "sd15", "backend": "sdpa"})
    figures = build_figures([steps_only, failed])
    assert "decoder" not in figures and "step_structure" in figures
    empty = decoder_view.decoder_figure(decoder_table([steps_only, failed]))
    assert decoder_view.NO_RUNS in json.dumps(empty.to_plotly_json()["layout"]["annotations"]) and not empty.data


def wan22_run(run_id="wan22-a14b"):
    """Wan 2.2 A14B: step 0 and 1 on `transformer` (1 ms of kernels each), step 2 on `transformer_2` (2 ms), of 40
    timed steps 25 + 15, with guidance as two calls a step."""
    return run(run_id, "wan2.2-t2v-a14b", kernels([
        ("denoiser", 0, "transformer.blocks.0.attn1", "attention", "", 600.0),
        ("denoiser", 0, "transformer.blocks.0.ffn", "gemm", "", 400.0),
        ("denoiser", 1, "transformer.blocks.0.attn1", "attention", "", 600.0),
        ("denoiser", 1, "transformer.blocks.0.ffn", "gemm", "", 400.0),
        ("denoiser", 2, "transformer_2.blocks.0.attn1", "attention", "", 1500.0),
        ("denoiser", 2, "transformer_2.blocks.0.ffn", "gemm", "", 500.0),
        ("denoiser", 2, "", "elementwise", "", 30.0),  # the guidance arithmetic, outside any module
        ("decoder", -1, "vae.decoder.conv_in", "conv", "conv3d", 5000.0),
    ]), step_components={"counts": {"transformer": 25, "transformer_2": 15}},
        guidance={"scale": 4.0, "mode": "two calls", "denoiser_calls_per_step": 2, "denoiser_batch": 1})


def unet_run(run_id="sd-unet"):
    """A one-UNet run (3 steps, 0.5 ms of kernels a step) whose guidance ran as one batch of 2."""
    return run(run_id, "sd15", kernels([("denoiser", 0, "unet.down_blocks.0", "conv", "conv2d", 500.0),
                                        ("denoiser", 1, "unet.down_blocks.0", "conv", "conv2d", 500.0)]),
               guidance={"scale": 7.5, "mode": "batched", "denoiser_calls_per_step": 1, "denoiser_batch": 2})


def test_step_structure_groups_each_runs_components_with_its_guidance():
    fig = build_figures([wan22_run(), unet_run()])["step_structure"]
    assert fig.layout.barmode == "group"
    bars = {t.name: t for t in fig.data}
    assert list(bars) == ["transformer", "transformer_2", "unet", "(outside modules)"]  # outside modules last
    wan, sd = fig.layout.xaxis.categoryarray
    assert "wan22-a14b" not in wan  # short labels on the axis, the id in the hover
    assert list(bars["transformer"].x) == [wan] and bars["transformer"].y[0] == pytest.approx(1.0)
    assert list(bars["transformer_2"].x) == [wan] and bars["transformer_2"].y[0] == pytest.approx(2.0)
    assert list(bars["unet"].x) == [sd] and bars["unet"].y[0] == pytest.approx(0.5)
    assert bars["(outside modules)"].y[0] == pytest.approx(0.03) and bars["(outside modules)"].marker.color == \
        step_view.FALLBACK_COLOR
    # the hover: the run id, its guidance, the steps each expert ran and its shares
    run_id, guidance, steps, attention, gemm, _ = bars["transformer_2"].customdata[0]
    assert run_id == "wan22-a14b" and guidance == "CFG: two calls a step (2 calls/step, batch 1)"
    assert steps == "15 steps in the timed generation, 1 profiled" and (attention, gemm) == ("75%", "25%")
    assert bars["unet"].customdata[0][1] == "CFG: one batched call (1 call/step, batch 2)"
    # the axis names each run's guidance under its label
    assert list(fig.layout.xaxis.ticktext) == [f"{wan}<br>CFG: two calls a step (2 calls/step, batch 1)",
                                              f"{sd}<br>CFG: one batched call (1 call/step, batch 2)"]
    # per generation: each component's ms per step times the steps it ran (the UNet's 3 from its config)
    per_step, per_generation = fig.layout.updatemenus[0].buttons
    assert per_step.label == "per step" and per_generation.label == "per generation"
    assert per_generation.args[0]["y"][:3] == [pytest.approx([25.0]), pytest.approx([30.0]), pytest.approx([1.5])]
    # the kernels outside the models run in every step: per generation, times the run's 25 + 15 steps
    assert per_generation.args[0]["y"][3] == [pytest.approx(40 * 0.03)]


def test_runs_without_a_guidance_record_say_so_once():
    r = unet_run()
    del r.meta["guidance"]
    fig = build_figures([r])["step_structure"]
    assert fig.layout.xaxis.ticktext is None and fig.layout.xaxis.title.text == "run (guidance not recorded)"
    assert fig.data[0].customdata[0][1] == "guidance not recorded"
    assert step_view.guidance_text("none", 1, 1) == "no CFG (1 call/step, batch 1)"


def test_no_step_kernels_leaves_the_view_off_and_the_figure_says_so():
    decode_only = run("decode-only", "sd15", kernels([("decoder", -1, "vae.decoder.a", "conv", "conv2d", 10.0)]),
                      decoder_ms=1.0, e2e_ms=10.0)
    failed = Run(meta={"run_id": "err", "status": "error", "workload": "sd15", "backend": "sdpa"})
    figures = build_figures([decode_only, failed])
    assert "step_structure" not in figures and "decoder" in figures
    empty = step_view.step_structure_figure(step_structure_table([decode_only, failed]))
    assert step_view.NO_RUNS in json.dumps(empty.to_plotly_json()["layout"]["annotations"]) and not empty.data
    assert build_figures([failed]) == {}


def test_both_views_are_registered_after_the_module_tree():
    keys = [v.key for v in VIEWS]
    assert keys.index("modules") + 1 == keys.index("step_structure") == keys.index("decoder") - 1
    assert decoder_view.VIEW.table == "decoder" and decoder_view.VIEW.marked  # hatches noisy runs' share of e2e
    assert step_view.VIEW.table == "step_structure"
