"""The step-structure table on hand-made runs: a two-expert denoiser (Wan 2.2 A14B's steps split between
`transformer` and `transformer_2`), the guidance record, and a one-model run without either record."""

from __future__ import annotations

import pandas as pd
import pytest

from mmchar.analysis import step_structure_table
from mmchar.store import Run


def kernels(rows):
    """rows: (stage, step, module_path, op_class, dur_us)."""
    df = pd.DataFrame(rows, columns=["stage", "step", "module_path", "op_class", "dur_us"])
    df["step"] = df["step"].astype("int32")
    for c in ("attn_site", "aten_op", "launch_op", "kernel", "input_shapes", "sub_class", "phase"):
        df[c] = ""
    df["ts_us"], df["flops"], df["bytes"] = 0.0, float("nan"), float("nan")
    return df


def run(run_id, k, **meta):
    base = {"run_id": run_id, "status": "ok", "workload": "wan2.2-t2v-a14b", "preset": "full", "backend": "sdpa",
            "config": {"params": {"steps": 3, "height": 720, "width": 1280, "frames": 81, "batch": 1},
                       "dtype": "bf16"}, "device": {"name": "NVIDIA H200"}}
    return Run(meta={**base, **meta}, kernels=k)


def test_two_experts_split_by_module_root_with_guidance():
    k = kernels([("denoiser", 0, "transformer.blocks.0.attn1", "attention", 600.0),
                 ("denoiser", 0, "transformer.blocks.0.ffn", "gemm", 400.0),
                 ("denoiser", 1, "transformer.blocks.0.attn1", "attention", 600.0),
                 ("denoiser", 1, "transformer.blocks.0.ffn", "gemm", 400.0),
                 ("denoiser", 2, "transformer_2.blocks.0.attn1", "attention", 700.0),
                 ("denoiser", 2, "transformer_2.blocks.0.ffn", "gemm", 300.0),
                 ("denoiser", 2, "", "elementwise", 10.0),                       # guidance arithmetic
                 ("decoder", -1, "vae.decoder.conv_in", "conv", 5000.0)])       # not a step
    r = run("w22", k, step_components={"counts": {"transformer": 2, "transformer_2": 1},
                                       "per_step": ["transformer", "transformer", "transformer_2"]},
            guidance={"scale": 4.0, "mode": "two calls", "denoiser_calls_per_step": 2, "denoiser_batch": 1,
                      "prompts": 1})
    t = step_structure_table([r]).set_index("component")
    assert list(t.index) == ["transformer", "transformer_2", "(outside modules)"]
    assert t.loc["transformer", "steps"] == 2 and t.loc["transformer_2", "steps"] == 1
    assert t.loc["transformer", "profiled_steps"] == 2 and t.loc["transformer_2", "profiled_steps"] == 1
    assert t.loc["transformer", "kernel_ms_per_step"] == pytest.approx(1.0)
    assert t.loc["transformer_2", "attention_share"] == pytest.approx(0.7)
    assert t.loc["transformer", "gemm_share"] == pytest.approx(0.4)
    assert (t["guidance_mode"] == "two calls").all() and (t["calls_per_step"] == 2).all()
    assert pd.isna(t.loc["(outside modules)", "steps"])  # its kernels run in every step, between the calls


def test_an_expert_that_ran_but_was_not_profiled_keeps_its_row():
    k = kernels([("denoiser", 0, "transformer.blocks.0.attn1", "attention", 600.0)])
    r = run("w22", k, step_components={"counts": {"transformer": 1, "transformer_2": 1},
                                       "per_step": ["transformer", "transformer_2"]})
    t = step_structure_table([r]).set_index("component")
    assert t.loc["transformer_2", "steps"] == 1 and t.loc["transformer_2", "profiled_steps"] == 0
    assert pd.isna(t.loc["transformer_2", "kernel_ms_per_step"])


def test_one_model_run_without_records():
    k = kernels([("denoiser", 0, "unet.down_blocks.0", "conv", 300.0),
                 ("denoiser", 1, "unet.down_blocks.0", "conv", 100.0)])
    r = run("sd", k, workload="sd15")
    t = step_structure_table([r])
    assert len(t) == 1 and t.loc[0, "component"] == "unet"
    assert t.loc[0, "steps"] == 3 and t.loc[0, "kernel_ms_per_step"] == pytest.approx(0.2)
    assert pd.isna(t.loc[0, "guidance_mode"])


def test_failed_and_kernel_less_runs_have_no_rows():
    r = run("bad", kernels([("denoiser", 0, "unet.x", "conv", 1.0)]))
    r.meta["status"] = "oom"
    assert step_structure_table([r, run("empty", kernels([]))]).empty


def test_graph_replay_is_named_as_such():
    """A --cuda-graphs run replays its step's kernels with no module range open: they are the replay's, not
    kernels outside the model."""
    r = run("g", kernels([("denoiser", 0, "", "conv", 300.0), ("denoiser", 1, "", "conv", 300.0)]),
            workload="sd15", options={"cuda_graphs": True})
    t = step_structure_table([r])
    assert list(t["component"]) == ["(CUDA graph replay)"] and t.loc[0, "kernel_ms_per_step"] == pytest.approx(0.3)


def test_two_calls_a_step_show_each_call_and_a_batched_step_does_not():
    """The kernels' ``call`` column: Qwen-Image-like true CFG whose unconditional call (a shorter negative prompt)
    costs less; a table without the column (a run written before it) and one call a step get no split."""
    rows = [("denoiser", s, "transformer.blocks.0.attn1", "attention", us) for s in (0, 1) for us in (600.0, 400.0)]
    k = kernels(rows)
    k["call"] = pd.Series([0, 1, 0, 1], dtype="int16")
    t = step_structure_table([run("q", k)])
    assert t.loc[0, "kernel_ms_per_step"] == pytest.approx(1.0) and t.loc[0, "kernel_ms_per_call"] == "0.6 / 0.4"
    one = kernels(rows)
    one["call"] = pd.Series([0, 0, 0, 0], dtype="int16")
    assert pd.isna(step_structure_table([run("b", one)]).loc[0, "kernel_ms_per_call"])
    assert pd.isna(step_structure_table([run("old", kernels(rows))]).loc[0, "kernel_ms_per_call"])
