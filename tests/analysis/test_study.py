"""analysis.study on hand-made runs with known numbers: roofline rates, launch-bound figures, prefill/decode
phases and fitted scaling exponents."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from mmchar.analysis import launch_table, phase_table, roofline_table, scaling_table
from mmchar.store import Run

ROOFS = {"matmul_tflops": {"bf16": 800.0, "fp32": 50.0}, "copy_gbps": 3000.0}


def kernels(rows):
    """rows: (stage, step, op_class, dur_us, flops, bytes)."""
    df = pd.DataFrame(rows, columns=["stage", "step", "op_class", "dur_us", "flops", "bytes"])
    df["step"] = df["step"].astype("int32")
    for c in ("module_path", "attn_site", "aten_op", "launch_op", "kernel", "input_shapes"):
        df[c] = ""
    df["ts_us"] = 0.0
    return df


def run(run_id, k=None, *, timings=None, busy=None, height=512, workload="sd15", backend="flash", steps=20):
    params = {"height": height, "width": 512, "frames": None, "steps": steps, "batch": 1}
    meta = {"run_id": run_id, "status": "ok", "workload": workload, "preset": "full", "backend": backend,
            "config": {"params": params, "dtype": "bf16"}, "device": {"name": "H100"}, "roofs": ROOFS,
            "timings": timings or {"e2e": {"median_ms": 100.0}, "denoiser_step": {"median_ms": 5.0}},
            "busy": busy or {}}
    return Run(meta=meta, kernels=k if k is not None else kernels([]))


def test_roofline_rates_intensity_and_attainable():
    # gemm: 4e12 FLOP over 10 ms = 400 TFLOP/s, 4e9 B -> intensity 1000 (compute-bound: attainable = 800)
    # elementwise: 3e9 B over 2 ms = 1500 GB/s, 3e9 FLOP -> intensity 1 (memory-bound: attainable 3 TFLOP/s)
    r = run("r", kernels([("denoiser", 0, "gemm", 4000.0, 2e12, 2e9), ("denoiser", 1, "gemm", 6000.0, 2e12, 2e9),
                          ("denoiser", 0, "elementwise", 2000.0, 3e9, 3e9),
                          ("denoiser", 0, "other", 5.0, float("nan"), float("nan"))]))
    t = roofline_table([r]).set_index("op_class")
    assert set(t.index) == {"gemm", "elementwise"}  # no FLOPs, no bytes: left out
    assert t.loc["gemm", "tflops"] == pytest.approx(400.0) and t.loc["gemm", "intensity"] == pytest.approx(1000.0)
    assert t.loc["gemm", "attainable_tflops"] == pytest.approx(800.0)
    assert t.loc["gemm", "pct_of_attainable"] == pytest.approx(50.0)
    assert t.loc["elementwise", "gbps"] == pytest.approx(1500.0)
    assert t.loc["elementwise", "attainable_tflops"] == pytest.approx(3.0)
    assert t.loc["elementwise", "pct_of_attainable"] == pytest.approx(50.0)


def test_roofline_counts_every_kernel_of_a_costed_op():
    """An op's FLOPs sit on its first kernel: its other kernels' time counts too (a conv's weight transform,
    an attention scope's softmax), or the rate would come out above the device's peak."""
    k = kernels([("denoiser", 0, "conv", 1000.0, 8e11, 1e9), ("denoiser", 0, "conv", 1000.0, float("nan"), float("nan")),
                 ("denoiser", 0, "attention", 500.0, 4e11, 1e8),
                 ("denoiser", 0, "attention", 1500.0, float("nan"), float("nan")),
                 ("denoiser", 0, "elementwise", 50.0, float("nan"), float("nan"))])
    k["aten_op"] = ["aten::convolution", "aten::convolution", "", "", "aten::add"]
    t = roofline_table([run("r", k)]).set_index("op_class")
    assert set(t.index) == {"conv", "attention"}
    assert t.loc["conv", "time_us"] == 2000.0 and t.loc["conv", "tflops"] == pytest.approx(400.0)
    assert t.loc["attention", "time_us"] == 2000.0 and t.loc["attention", "tflops"] == pytest.approx(200.0)


def test_launch_table_joins_busy_and_kernel_lengths():
    busy = {"denoiser_step": {"wall_ms": 10.0, "busy_ms": 4.0, "idle_ms": 6.0, "busy_frac": 0.4, "kernels": 500}}
    r = run("r", kernels([("denoiser", 0, "gemm", d, 0.0, 0.0) for d in (2.0, 4.0, 30.0, 50.0)]), busy=busy)
    (row,) = launch_table([r]).to_dict("records")
    assert row["stage"] == "denoiser_step" and row["busy_frac"] == 0.4 and row["kernels_per_call"] == 500
    assert row["median_kernel_us"] == 17.0 and row["short_kernel_share"] == 0.5


def test_phases_split_prefill_from_decode_and_leave_diffusion_steps_whole():
    ar = run("ar", kernels([("generator", 0, "gemm", 1000.0, 1e12, 1e9), ("generator", 1, "gemm", 100.0, 1e9, 1e9),
                            ("generator", 2, "gemm", 100.0, 1e9, 1e9), ("generator", 1, "attention", 10.0, 1e6, 1e7),
                            ("decoder", -1, "gemm", 50.0, 1e9, 1e6)]),
             timings={"e2e": {"median_ms": 1.0}, "generator_step": {"median_ms": 0.1},
                      "generator_prefill": {"median_ms": 1.0}, "generator_decode": {"median_ms": 0.1}},
             workload="llamagen")
    diff = run("dm", kernels([("denoiser", 0, "gemm", 100.0, 1e11, 1e8), ("denoiser", 1, "gemm", 100.0, 1e11, 1e8)]))
    t = phase_table([ar, diff]).set_index(["run_id", "phase", "op_class"])
    assert t.loc[("ar", "prefill", "gemm"), "intensity"] == pytest.approx(1000.0)
    assert t.loc[("ar", "decode", "gemm"), ["time_us", "intensity"]].tolist() == [200.0, pytest.approx(1.0)]
    assert t.loc[("ar", "decode", "attention"), "intensity"] == pytest.approx(0.1)
    assert t.loc[("dm", "step", "gemm"), "tflops"] == pytest.approx(1000.0)  # 2e11 FLOP in 200 µs
    assert ("ar", "once", "gemm") not in t.index  # the decoder is not a phase of generation


def test_scaling_exponents_from_runs_that_differ_in_one_parameter():
    def lat(h):  # e2e ∝ h^2, step ∝ h^1.5
        return {"e2e": {"median_ms": 1e-3 * h ** 2}, "denoiser_step": {"median_ms": 1e-2 * h ** 1.5}}

    runs = [run(f"h{h}", timings=lat(h), height=h) for h in (256, 512, 1024)]
    runs.append(run("other-backend", timings=lat(512), height=512, backend="math"))  # one point: no fit
    t = scaling_table(runs).set_index(["param", "metric"])
    assert t.loc[("height", "e2e"), "exponent"] == pytest.approx(2.0)
    assert t.loc[("height", "denoiser_step"), "exponent"] == pytest.approx(1.5)
    assert t.loc[("height", "e2e"), "n_points"] == 3 and t.loc[("height", "e2e"), "values"] == "256,512,1024"
    assert math.isclose(t.loc[("height", "e2e"), "r2"], 1.0)
    assert set(scaling_table(runs)["backend"]) == {"flash"}


def test_sequence_table_one_row_per_attention_call_with_its_level():
    from mmchar.analysis import sequence_table

    k = kernels([("denoiser", 0, "attention", 10.0, 1e9, 1e6), ("denoiser", 0, "attention", 5.0, float("nan"), 0.0),
                 ("denoiser", 0, "attention", 10.0, 1e9, 1e6), ("denoiser", 0, "gemm", 10.0, 1e9, 1e6)])
    k["module_path"] = ["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1"] * 2 + \
        ["unet.mid_block.attentions.0.transformer_blocks.0.attn2", "unet.down_blocks.0.attentions.0.proj_in"]
    k["attn_site"] = ["spatial", "spatial", "cross", ""]
    k["input_shapes"] = ["[[2, 8, 4096, 40], [2, 8, 4096, 40], [2, 8, 4096, 40]]"] * 2 + \
        ["[[2, 8, 64, 160], [2, 8, 77, 160], [2, 8, 77, 160], [], []]", ""]
    t = sequence_table([run("r", k)])
    assert len(t) == 2  # the second kernel of the first call (no FLOPs) and the gemm are not calls
    first, mid = t.to_dict("records")
    assert (first["level"], first["q_len"], first["kv_len"], first["head_dim"]) == ("down.0", 4096, 4096, 40)
    assert first["score_bytes"] == 2 * 8 * 4096 * 4096 * 2  # bf16
    assert (mid["level"], mid["attn_site"], mid["q_len"], mid["kv_len"]) == ("mid", "cross", 64, 77)


def test_module_tree_rolls_step_time_up_the_hierarchy():
    from mmchar.analysis import module_tree

    k = kernels([("denoiser", 0, "conv", 100.0, 0.0, 0.0), ("denoiser", 0, "attention", 50.0, 0.0, 0.0),
                 ("denoiser", 0, "elementwise", 10.0, 0.0, 0.0), ("text_encoder", -1, "gemm", 999.0, 0.0, 0.0)])
    k["module_path"] = ["unet.down_blocks.0.resnets.0", "unet.down_blocks.0.attentions.0", "", "text_encoder.x"]
    t = module_tree([run("r", k)]).set_index("id")
    assert t.loc["denoiser", "time_us"] == 160.0 and t.loc["denoiser", "parent"] == ""  # the step stage only
    assert t.loc["denoiser/unet", "time_us"] == 150.0 and t.loc["denoiser/unet", "parent"] == "denoiser"
    row = t.loc["denoiser/unet.down_blocks.0"]
    assert row["time_us"] == 150.0 and row["label"] == "down_blocks.0" and row["parent"] == "denoiser/unet.down_blocks"
    assert t.loc["denoiser/unet.down_blocks.0.resnets.0", "share"] == pytest.approx(100 / 160)
    assert not any(i.startswith("denoiser/text_encoder") for i in t.index)


def test_step_timeline_is_the_first_profiled_step_in_launch_order():
    from mmchar.analysis import step_timeline

    k = kernels([("denoiser", 1, "conv", 100.0, 0.0, 0.0), ("denoiser", 0, "gemm", 50.0, 0.0, 0.0),
                 ("denoiser", 0, "conv", 20.0, 0.0, 0.0), ("decoder", -1, "conv", 999.0, 0.0, 0.0)])
    k["ts_us"] = [5000.0, 1300.0, 1000.0, 9000.0]
    t = step_timeline([run("r", k)])
    assert list(t["op_class"]) == ["conv", "gemm"] and list(t["start_ms"]) == [0.0, 0.3]  # step 0, by start
    assert list(t["dur_ms"]) == [0.02, 0.05] and set(t["stage"]) == {"denoiser"}
    assert step_timeline([run(f"r{i}", k) for i in range(20)], max_runs=3)["run_id"].nunique() == 3


def test_communication_time_payload_and_overlap_with_compute():
    from mmchar.analysis import communication_table

    # an all-to-all from 0 to 100 us while a GEMM runs 50..150 on another stream: 50 of its 100 us hidden
    k = kernels([("denoiser", 0, "communication", 100.0, 0.0, 4e6), ("denoiser", 0, "gemm", 100.0, 1e9, 1e6),
                 ("denoiser", 0, "communication", 20.0, 0.0, 1e6), ("decoder", -1, "conv", 10.0, 0.0, 0.0)])
    k["ts_us"] = [0.0, 50.0, 200.0, 300.0]
    (row,) = communication_table([run("r", k)]).to_dict("records")
    assert row["stage"] == "denoiser" and row["comm_us"] == 120.0 and row["comm_kernels"] == 2
    assert row["payload_bytes"] == 5e6 and row["compute_us"] == 100.0
    assert row["overlap_us"] == 50.0 and row["overlap_share"] == pytest.approx(50 / 120)
    assert communication_table([run("q", kernels([("denoiser", 0, "gemm", 1.0, 0.0, 0.0)]))]).empty


def test_scaling_fits_each_series_of_a_two_dimensional_sweep_apart():
    """latency ∝ height · width over a height × width sweep: one height series per width, each with k = 1."""
    runs = [run(f"h{h}w{w}", timings={"e2e": {"median_ms": 1e-3 * h * w}, "denoiser_step": {"median_ms": 1e-4 * h * w}},
                height=h) for h, w in ((256, 256), (512, 256), (512, 1024), (1024, 1024))]
    for r, (_, w) in zip(runs, ((256, 256), (512, 256), (512, 1024), (1024, 1024))):
        r.meta["config"]["params"]["width"] = w
    t = scaling_table(runs)
    h = t[(t["param"] == "height") & (t["metric"] == "e2e")]
    assert len(h) == 2 and list(h["exponent"]) == pytest.approx([1.0, 1.0])
    assert {s.split("width=")[1].split(",")[0] for s in h["series"]} == {"256", "1024"}


def test_sequence_parallel_table_speedup_efficiency_and_communication():
    from mmchar.analysis import sequence_parallel_table

    one = run("one", timings={"e2e": {"median_ms": 100.0}, "denoiser_step": {"median_ms": 10.0}})
    k = kernels([("denoiser", 0, "communication", 1000.0, float("nan"), 4e6), ("denoiser", 0, "gemm", 3000.0, 1e9, 1e6),
                 ("denoiser", 1, "communication", 1000.0, float("nan"), 4e6)])
    k["ts_us"] = [0.0, 500.0, 10000.0]  # the first collective runs half beside the gemm, the second alone
    two = run("two", k, timings={"e2e": {"median_ms": 80.0}, "denoiser_step": {"median_ms": 6.0}})
    two.meta.update(options={"sequence_parallel": 2}, passes={"profile_steps": 2},
                    sequence_parallel={"ranks": 2, "schemes": {"ulysses": 30}})
    alone = run("alone", timings={"e2e": {"median_ms": 1.0}, "denoiser_step": {"median_ms": 1.0}}, height=1024)
    t = sequence_parallel_table([one, two, alone]).set_index("gpus")
    assert list(t.index) == [1, 2]  # the 1024 px run has no sequence-parallel sibling: left out
    assert t.loc[1, "scheme"] == "one device" and t.loc[1, "speedup"] == pytest.approx(1.0)
    assert t.loc[2, "scheme"] == "ulysses"
    assert t.loc[2, "speedup"] == pytest.approx(10 / 6) and t.loc[2, "efficiency"] == pytest.approx(10 / 12)
    assert t.loc[2, "comm_ms_per_step"] == pytest.approx(1.0) and t.loc[2, "comm_share"] == pytest.approx(1 / 6)
    assert t.loc[2, "payload_mb_per_step"] == pytest.approx(4.0)
    assert t.loc[2, "overlap_share"] == pytest.approx(0.25)  # 500 of 2000 µs of communication hidden


def test_gpus_is_a_scaling_parameter():
    runs = [run(f"g{g}", timings={"e2e": {"median_ms": 100.0 / g}, "denoiser_step": {"median_ms": 10.0 / g}})
            for g in (1, 2, 4)]
    for r, g in zip(runs, (1, 2, 4)):
        r.meta["options"] = {"sequence_parallel": g}
    t = scaling_table(runs).set_index(["param", "metric"])
    assert t.loc[("gpus", "denoiser_step"), "exponent"] == pytest.approx(-1.0)
    assert list(t.index.get_level_values("param").unique()) == ["gpus"]
