"""The study's topic analyses (analysis/roofline.py, launch.py, phases.py, scaling.py ...) on hand-made runs with
known numbers: roofline rates, launch-bound figures, prefill/decode phases, fitted scaling exponents (one point per
configuration, never across devices or dtypes) and the short labels that name runs."""

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
    # an imported training trace: its backward pass is a phase of its own (the kernels' phase column)
    train = kernels([("denoiser", 0, "gemm", 100.0, 1e11, 1e8), ("denoiser", 0, "gemm", 300.0, 2e11, 2e8)])
    train["phase"] = pd.Categorical(["", "backward"])
    t = phase_table([run("train", train)]).set_index(["phase", "op_class"])
    assert t.loc[("step", "gemm"), "time_us"] == 100.0 and t.loc[("backward", "gemm"), "time_us"] == 300.0


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
    sweep = ((256, 256), (512, 256), (1024, 256), (256, 1024), (512, 1024), (1024, 1024))
    runs = [run(f"h{h}w{w}", timings={"e2e": {"median_ms": 1e-3 * h * w}, "denoiser_step": {"median_ms": 1e-4 * h * w}},
                height=h) for h, w in sweep]
    for r, (_, w) in zip(runs, sweep):
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


def _lat(h, k=2.0):
    """Timings of a run whose latency grows as height^k (e2e 10x the step)."""
    return {"e2e": {"median_ms": 1e-3 * h ** k}, "denoiser_step": {"median_ms": 1e-4 * h ** k}}


def test_scaling_needs_three_distinct_values_for_an_exponent():
    """Two points always lie on a line (r² = 1): the series stays, with n_points, but has no exponent."""
    two = [run(f"h{h}", timings=_lat(h), height=h) for h in (512, 1024)]
    t = scaling_table(two)
    assert len(t) == 2 and list(t["n_points"]) == [2, 2] and list(t["values"]) == ["512,1024"] * 2
    assert t["exponent"].isna().all() and t["r2"].isna().all()
    # the same point measured twice is one value, not two: still no exponent
    t = scaling_table([*two, run("h1024-again", timings=_lat(1024), height=1024)])
    assert list(t["n_points"]) == [2, 2] and t["exponent"].isna().all()
    three = scaling_table([*two, run("h256", timings=_lat(256), height=256)])
    assert list(three["exponent"]) == pytest.approx([2.0, 2.0]) and list(three["r2"]) == pytest.approx([1.0, 1.0])


def noisy(r, *reasons):
    r.meta["noise"] = {"noisy": bool(reasons), "reasons": list(reasons)}
    return r


def test_scaling_one_point_per_configuration_preferring_clean_runs():
    from mmchar.analysis import scaling_points

    def step(ms):
        return {"e2e": {"median_ms": 10 * ms}, "denoiser_step": {"median_ms": ms}}

    runs = [noisy(run("a256", timings=step(1.0), height=256)),
            # 512 measured three times clean (median 4.0) and once while something competed: left out
            noisy(run("a512", timings=step(3.0))), noisy(run("b512", timings=step(4.0))),
            run("c512", timings=step(5.0)),  # recorded before the guard: not flagged
            noisy(run("d512", timings=step(90.0)), "other processes used 3 cores"),
            # 1024 measured only while disturbed: kept (the median of the noisy runs) and flagged
            noisy(run("a1024", timings=step(20.0), height=1024), "e2e varied 30%"),
            noisy(run("b1024", timings=step(40.0), height=1024), "e2e varied 40%")]
    runs.append(runs[1])  # a run loaded from two stores counts once
    pts = scaling_points(runs)
    pts = pts[pts["metric"] == "denoiser_step"].set_index("value")
    assert list(pts.index) == [256.0, 512.0, 1024.0]  # one point each: no zig-zag
    assert list(pts["median_ms"]) == [1.0, 4.0, 30.0]
    assert list(pts["n_runs"]) == [1, 3, 2] and list(pts["n_left_out"]) == [0, 1, 0]
    assert list(pts["noisy"]) == [False, False, True]
    assert pts.loc[1024.0, "noise"] == "e2e varied 30%; e2e varied 40%" and pts.loc[512.0, "noise"] == ""
    assert pts.loc[512.0, "run_id"] == "a512, b512, c512" and "d512" not in pts.loc[512.0, "run_id"]


def test_scaling_series_never_mix_devices_or_dtypes():
    """An H100 bf16 sweep (k = 2), a CPU sweep (k = 1) and an H100 fp32 sweep (k = 1.5) of one workload and backend:
    three series, each named by what sets it apart."""
    def sweep(prefix, device, dtype, k):
        out = [run(f"{prefix}{h}", timings=_lat(h, k), height=h) for h in (256, 512, 1024)]
        for r in out:
            r.meta["device"], r.meta["config"]["dtype"] = device, dtype
        return out

    h100 = {"type": "cuda", "name": "NVIDIA H100 80GB HBM3"}
    runs = [*sweep("g", h100, "bf16", 2.0), *sweep("c", {"type": "cpu", "name": "x86_64"}, "bf16", 1.0),
            *sweep("f", h100, "fp32", 1.5)]
    t = scaling_table(runs)
    t = t[t["metric"] == "e2e"].set_index("series")["exponent"]
    assert t.to_dict() == pytest.approx({"full, width=512, steps=20, batch=1, H100, bf16": 2.0,
                                         "full, width=512, steps=20, batch=1, cpu, bf16": 1.0,
                                         "full, width=512, steps=20, batch=1, H100, fp32": 1.5})


def test_study_tables_name_runs_by_short_labels():
    from mmchar.analysis import module_tree, sequence_table, step_timeline
    from mmchar.analysis.tables import run_labels

    k = kernels([("denoiser", 0, "attention", 10.0, 1e9, 1e6), ("denoiser", 0, "gemm", 10.0, 1e9, 1e6)])
    k["module_path"] = "unet.mid_block.attentions.0.transformer_blocks.0.attn1"
    k["input_shapes"] = ["[[2, 8, 64, 40], [2, 8, 64, 40], [2, 8, 64, 40]]", ""]
    busy = {"denoiser_step": {"wall_ms": 10.0, "busy_ms": 4.0, "idle_ms": 6.0, "busy_frac": 0.4, "kernels": 2}}
    runs = [run(f"sd15-flash-{h}-20261204-101500-a1b2c3", k, height=h, busy=busy) for h in (512, 1024)]
    labels = run_labels(runs)
    assert sorted(labels.values()) == ["sd15 flash h=1024", "sd15 flash h=512"]
    for table, column in ((roofline_table(runs), "label"), (launch_table(runs), "label"),
                          (sequence_table(runs), "label"), (step_timeline(runs), "label"),
                          (module_tree(runs), "run_label")):
        assert list(table.columns[:2]) == ["run_id", column]
        assert len(table) and all(labels[i] == lab for i, lab in zip(table["run_id"], table[column]))


def test_sequence_parallel_speedup_against_the_one_gpu_run_of_the_same_dtype():
    from mmchar.analysis import sequence_parallel_table

    def step(ms, dtype, gpus=1):
        r = run(f"{dtype}-{gpus}", timings={"e2e": {"median_ms": 10 * ms}, "denoiser_step": {"median_ms": ms}})
        r.meta["config"]["dtype"], r.meta["options"] = dtype, {"sequence_parallel": gpus}
        return r

    # an fp32 one-GPU step faster than the bf16 one (a made-up number) must not become the bf16 split's baseline
    t = sequence_parallel_table([step(10.0, "bf16"), step(5.0, "fp32"), step(6.0, "bf16", gpus=2)])
    assert list(t["run_id"]) == ["bf16-1", "bf16-2"]  # fp32 has no split run: left out
    assert t.set_index("gpus").loc[2, "speedup"] == pytest.approx(10 / 6)


def test_scaling_series_keep_runtime_modes_apart():
    """An eager height sweep (k = 2) and the same sweep under CUDA graphs (k = 1) of one workload and backend: two
    series, the graphs' under ``flash+cuda-graphs`` and named by the mode, never one line mixing them."""
    eager = [run(f"e{h}", timings=_lat(h, 2.0), height=h) for h in (256, 512, 1024)]
    graphs = [run(f"g{h}", timings=_lat(h, 1.0), height=h) for h in (256, 512, 1024)]
    for r in graphs:
        r.meta["options"] = {"cuda_graphs": True}
    cl = [run(f"c{h}", timings=_lat(h, 1.5), height=h) for h in (256, 512, 1024)]
    for r in cl:
        r.meta["options"] = {"channels_last": True}
    t = scaling_table([*eager, *graphs, *cl])
    t = t[(t["metric"] == "e2e") & (t["param"] == "height")].set_index("backend")
    assert t["exponent"].to_dict() == pytest.approx({"flash": 2.0, "flash+cuda-graphs": 1.0,
                                                     "flash+channels-last": 1.5})
    assert t.loc["flash+cuda-graphs", "series"].endswith(", cuda-graphs")
    assert t.loc["flash+channels-last", "series"].endswith(", channels-last")
    assert "graphs" not in t.loc["flash", "series"] and "True" not in "".join(t["series"])
