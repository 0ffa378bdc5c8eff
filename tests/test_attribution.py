"""Attribution on hand-built models with known content, profiled end to end by the runner on the CPU."""

from __future__ import annotations

import types

import pytest
import torch
from torch import nn

from mmchar.runner import ProfileOptions, run_and_store
from mmchar.target import StageRoot, Target


def _target(model: nn.Module, make_input, name: str = "hand") -> Target:
    pipe = types.SimpleNamespace(model=model)

    def run(steps: int):
        x = make_input()
        with torch.inference_mode():
            for _ in range(steps):
                out = model(x)
        return out

    return Target(name=name, pipe=pipe, run=run, stage_roots=[StageRoot("denoiser", "model")], steps=2,
                  config={"workload": name, "params": {"seed": 0}}, device=torch.device("cpu"), dtype=torch.float32)


def _profile(target: Target, tmp_path, backend: str = "sdpa"):
    run = run_and_store(target, ProfileOptions(backend=backend, repeat=1, profile_steps=2), tmp_path, "000000")
    assert run.status == "ok", run.meta.get("error")
    return run


def _shares(run) -> dict[str, float]:
    den = run.breakdown[run.breakdown["stage"] == "denoiser"]
    return den.groupby("op_class")["share"].sum().to_dict()


def test_one_conv_is_all_conv(tmp_path):
    run = _profile(_target(nn.Conv2d(8, 16, 3, padding=1), lambda: torch.randn(2, 8, 32, 32)), tmp_path)
    assert _shares(run) == pytest.approx({"conv": 1.0})
    k = run.kernels[run.kernels["stage"] == "denoiser"]
    assert set(k["module_path"]) == {"model"}
    assert set(k["step"]) == {0, 1}
    # FLOPs of the conv, once per call: 2 * N * Cout * H * W * Cin * 3 * 3
    assert k["flops"].sum() == pytest.approx(2 * 2 * (2 * 16 * 32 * 32 * 8 * 9))


def test_linear_only_is_all_gemm(tmp_path):
    model = nn.Sequential(nn.Linear(64, 128), nn.Linear(128, 32))
    run = _profile(_target(model, lambda: torch.randn(4, 10, 64)), tmp_path)
    assert _shares(run) == pytest.approx({"gemm": 1.0})
    k = run.kernels
    assert {"model.0", "model.1"} <= set(k["module_path"])
    assert k["flops"].sum() == pytest.approx(2 * (2 * 40 * 64 * 128 + 2 * 40 * 128 * 32))


class _SDPA(nn.Module):
    def forward(self, x):
        return torch.nn.functional.scaled_dot_product_attention(x, x, x)


def test_sdpa_call_is_attention(tmp_path):
    run = _profile(_target(_SDPA(), lambda: torch.randn(2, 4, 64, 16)), tmp_path)
    assert _shares(run) == pytest.approx({"attention": 1.0})
    att = run.kernels[run.kernels["op_class"] == "attention"]
    assert att["flops"].sum() == pytest.approx(2 * 4 * 2 * 4 * 64 * 64 * 16)  # 4·B·H·S²·d per call, 2 calls


def _diffusers_attention() -> nn.Module:
    from diffusers.models.attention_processor import Attention

    torch.manual_seed(0)
    return Attention(query_dim=32, heads=2, dim_head=16)


@pytest.mark.parametrize("backend", ["math", "flash", "sdpa"])
def test_attention_core_is_attention_for_every_backend(tmp_path, backend):
    """The unfused math backend's matmul + softmax counts as attention, like the fused kernels."""
    run = _profile(_target(_diffusers_attention(), lambda: torch.randn(2, 64, 32)), tmp_path, backend)
    k = run.kernels
    core = k[k["op_class"] == "attention"]
    assert len(core) > 0 and set(core["attn_site"]) == {"spatial"}
    if backend == "math":
        assert {"aten::matmul", "aten::softmax"} <= set(core["aten_op"])
    # the projections stay gemm but carry the site of their attention module
    proj = k[k["module_path"].astype(str).str.contains(r"to_q|to_k|to_v|to_out\.0")]
    assert set(proj["op_class"]) == {"gemm"} and set(proj["attn_site"]) == {"spatial"}
    # FLOPs of the core: 4·B·H·S²·d, counted once per call whatever the backend launched
    assert core["flops"].sum() == pytest.approx(2 * 4 * 2 * 2 * 64 * 64 * 16)
    assert run.meta["backend_per_layer"] == {"model": backend}


def test_shares_sum_to_one_per_stage_on_a_real_pipeline(tmp_path):
    from mmchar.api import run_config_hash
    from mmchar.workloads import get_workload

    w = get_workload("modelscope-t2v")
    cfg = w.resolve("tiny", device="cpu", frames=3)
    opts = ProfileOptions(backend="flash", repeat=1)
    run = run_and_store(w.build(cfg), opts, tmp_path, run_config_hash(cfg, opts))
    sums = run.breakdown.groupby("stage")["share"].sum()
    assert set(sums.index) >= {"text_encoder", "denoiser", "decoder", "scheduler", "host"}
    assert sums.to_numpy() == pytest.approx(1.0)
    # every kernel is counted: the breakdown's time is the kernels' time
    assert run.breakdown["time_us"].sum() == pytest.approx(run.kernels["dur_us"].sum())
    k = run.kernels
    att = k[(k["op_class"] == "attention") & (k["stage"] == "denoiser")]
    assert {"spatial", "temporal", "cross"} <= set(att["attn_site"])
    temporal = att[att["attn_site"] == "temporal"]["input_shapes"].unique()
    for shapes in temporal:  # temporal attention: sequence = frames, batch = B·h·w
        q, kk, _ = eval(shapes)
        assert q[2] == 3 and kk[2] == 3
    assert all(v == "temporal" for p, v in run.meta["attention_layers"].items() if "temp_attentions" in p or "transformer_in" in p)
    text = k[(k["stage"] == "text_encoder") & (k["op_class"] == "attention")]
    assert set(text["attn_site"]) == {"text"}


def test_breakdown_shares_are_of_their_stage_and_an_idle_stage_gets_zero():
    import numpy as np
    import pandas as pd

    from mmchar.attribution import breakdown
    from mmchar.schema import BREAKDOWN_COLUMNS, KERNEL_COLUMNS

    kernels = pd.DataFrame({
        "stage": ["denoiser", "denoiser", "denoiser", "decoder", "host"], "step": np.int32([0, 0, 1, -1, -1]),
        "call": np.int16([0, 0, 0, -1, -1]),
        "module_path": "m", "op_class": ["gemm", "attention", "attention", "conv", "memory"], "sub_class": "", "phase": "",
        "attn_site": ["spatial", "spatial", "cross", "", ""], "aten_op": "aten::x", "launch_op": "aten::x",
        "kernel": "k", "ts_us": [0.0, 1.0, 2.0, 3.0, 4.0], "dur_us": [30.0, 50.0, 20.0, 9.0, 0.0],
        "input_shapes": "", "flops": np.nan, "bytes": np.nan}).astype(KERNEL_COLUMNS)
    bd = breakdown(kernels)
    assert list(bd.columns) == list(BREAKDOWN_COLUMNS)
    share = {(r.stage, r.op_class, r.attn_site): r.share for r in bd.itertuples()}
    assert share == pytest.approx({("decoder", "conv", ""): 1.0, ("denoiser", "attention", "cross"): 0.2,
                                   ("denoiser", "attention", "spatial"): 0.5, ("denoiser", "gemm", ""): 0.3,
                                   ("host", "memory", ""): 0.0})  # a projection's site stays off the gemm row
