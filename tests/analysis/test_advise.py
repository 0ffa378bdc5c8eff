"""`mmchar advise`'s projections: each one's arithmetic on hand-made runs with known answers, and the committed GPU
runs as the checks behind the stated errors (``VALIDATED_ERROR``: a number there that a committed run no longer
bears out fails here)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mmchar.analysis import TABLES, advice_table
from mmchar.analysis import advise as adv
from mmchar.analysis.mechanisms import load_bench
from mmchar.errors import UnknownNameError
from mmchar.store import Run, load_runs

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
PROJ = RESULTS / "projections" / "h100-2026-12-06" / "runs"
H200_WAN = RESULTS / "attention" / "mixers-h200-2026-12-05" / "runs" / "wan2.1-1.3b-cudnn-20261205-151512-cdb2ca"
CORE = RESULTS / "core" / "runs"
BENCH = RESULTS / "attention" / "softmax-workloads.json"
H100 = "NVIDIA H100 80GB HBM3"
TRANSFORM = "void cudnn::engines_precompiled::nchwToNhwcKernel<__nv_bfloat16>"


def kernels(rows: list[dict]) -> pd.DataFrame:
    """A kernel table from short rows (defaults for what a row leaves out)."""
    base = {"stage": "denoiser", "step": 0, "module_path": "m", "op_class": "elementwise", "phase": "",
            "attn_site": "", "aten_op": "", "launch_op": "", "kernel": "k", "ts_us": 0.0, "dur_us": 0.0,
            "input_shapes": "", "flops": np.nan, "bytes": np.nan}
    return pd.DataFrame([{**base, **r} for r in rows])


def run(rows: list[dict], *, wall: float = 100.0, busy: float = 95.0, n_kernels: float = 1000, steps: int = 10,
        device: dict | None = None, roofs: dict | None = None, backend: str = "cudnn", dtype: str = "bf16",
        decoder: tuple[float, float] | None = None, run_id: str = "r-000001") -> Run:
    """An ok run whose denoiser step took ``wall`` ms, ``busy`` of them on the GPU, over ``steps`` steps; e2e is
    the steps plus 50 ms (plus a decoder of (wall, busy) when given)."""
    b = {"denoiser_step": {"wall_ms": wall, "busy_ms": busy, "kernels": n_kernels}}
    timings = {"denoiser_step": {"median_ms": wall}, "e2e": {"median_ms": wall * steps + 50.0}}
    if decoder:
        b["decoder"] = {"wall_ms": decoder[0], "busy_ms": decoder[1], "kernels": 10}
        timings["decoder"] = {"median_ms": decoder[0]}
        timings["e2e"]["median_ms"] += decoder[0]
    meta = {"run_id": run_id, "status": "ok", "workload": "sd15", "backend": backend, "preset": "full",
            "config": {"dtype": dtype, "params": {"steps": steps}}, "passes": {"steps": steps},
            "device": device or {"type": "cuda", "name": H100}, "roofs": roofs, "timings": timings, "busy": b,
            "noise": {"noisy": False}}
    return Run(meta=meta, kernels=kernels(rows))


def row(table: pd.DataFrame, option: str) -> pd.Series:
    hit = table[table["option"] == option]
    assert len(hit) == 1, (option, list(table["option"]))
    return hit.iloc[0]


# --- the shared latency model ----------------------------------------------------------------------------------

def test_unchanged_work_gives_the_measured_wall_back():
    for wall, busy in ((100.0, 95.0), (100.0, 30.0)):
        assert adv.project_wall(wall, busy, busy, kernels=500) == pytest.approx(wall)


def test_a_host_bound_step_keeps_its_host_time_and_shows_only_extra_gpu_work():
    assert adv.is_host_bound(100.0, 30.0) and not adv.is_host_bound(100.0, 95.0)
    assert adv.project_wall(100.0, 30.0, 10.0) == pytest.approx(100.0)  # faster kernels: the host still sets it
    assert adv.project_wall(100.0, 30.0, 130.0) == pytest.approx(130.0)  # more GPU work than host time: it shows
    assert adv.project_wall(100.0, 30.0, 30.0, host_extra_ms=7.0) == pytest.approx(107.0)


def test_a_gpu_bound_step_moves_with_its_busy_time_and_keeps_its_gaps():
    assert adv.project_wall(100.0, 95.0, 75.0, kernels=10) == pytest.approx(80.0)  # 5 ms of gaps kept
    # its hidden host (kernels x HOST_US_PER_KERNEL) is the floor
    floor = 4000 * adv.HOST_US_PER_KERNEL / 1e3
    assert adv.project_wall(100.0, 95.0, 1.0, kernels=4000) == pytest.approx(max(floor, 6.0))


def test_cuda_graphs_replay_busy_time_plus_a_replay_cost_never_above_eager():
    t = advice_table([run([], wall=40.0, busy=12.0, n_kernels=1200)])
    g = row(t, "--cuda-graphs")
    assert g["projected_step_ms"] == pytest.approx(12.0 + (adv.GRAPH_LAUNCH_US + 1200 * adv.GRAPH_NODE_US) / 1e3)
    assert g["projected_e2e_ms"] == pytest.approx(g["e2e_ms"] - 10 * (40.0 - g["projected_step_ms"]))
    # a GPU-bound step: the graph saves at most its gaps, never costs
    t = advice_table([run([], wall=100.0, busy=99.9, n_kernels=5000)])
    assert row(t, "--cuda-graphs")["projected_step_ms"] == pytest.approx(100.0)


# --- channels-last -------------------------------------------------------------------------------------------

def transforms(stage="denoiser", us=1000.0, n=2, step=0):
    return [{"stage": stage, "step": step, "op_class": "conv", "kernel": TRANSFORM, "dur_us": us} for _ in range(n)]


def test_channels_last_removes_the_layout_transforms_of_every_stage():
    rows = [*transforms(us=1000.0, n=2, step=0), *transforms(us=1000.0, n=2, step=1),
            {"stage": "denoiser", "op_class": "conv", "kernel": "sm90_xmma_fprop_nhwc", "dur_us": 5000.0},
            *transforms("decoder", us=3000.0, n=1, step=-1)]
    r = run(rows, wall=100.0, busy=95.0, decoder=(40.0, 39.0))
    cl = row(advice_table([r]), "--channels-last")
    assert cl["saving_ms"] == pytest.approx(2.0)  # 2 profiled steps: 2 ms of transforms per step
    assert cl["projected_e2e_ms"] == pytest.approx(cl["e2e_ms"] - 10 * 2.0 - 3.0)  # the decoder's too
    # host-bound: the step keeps its wall alone, and gains with CUDA graphs
    r = run(rows, wall=100.0, busy=30.0, decoder=(40.0, 39.0))
    t = advice_table([r])
    assert row(t, "--channels-last")["saving_ms"] == pytest.approx(0.0)
    both = row(t, "--channels-last --cuda-graphs")
    assert both["projected_step_ms"] == pytest.approx(row(t, "--cuda-graphs")["projected_step_ms"] - 2.0)
    assert both["rank"] == 1 and both["kind"] == "combined"


def test_a_run_that_ran_a_mode_already_is_not_advised_it_again():
    rows = [*transforms(), *gemms()]
    r = run(rows, wall=40.0, busy=39.0, n_kernels=100)
    r.meta["options"] = {"cuda_graphs": True, "channels_last": True}
    t = advice_table([r])
    assert "CUDA graph already" in row(t, "--cuda-graphs")["model"]
    assert "channels-last already" in row(t, "--channels-last")["model"]
    assert not t["option"].str.contains("--cuda-graphs ").any() and (t["kind"] != "combined").all()


def test_no_transform_kernels_no_channels_last():
    t = advice_table([run([{"op_class": "conv", "kernel": "sm90_xmma_fprop_nhwc", "dur_us": 10.0}])])
    cl = row(t, "--channels-last")
    assert np.isnan(cl["projected_step_ms"]) and "no cuDNN layout transform" in cl["model"] and pd.isna(cl["rank"])


# --- fp8 -------------------------------------------------------------------------------------------------------

def gemms(m=4096, k=1280, n=1280, us=500.0, calls=4):
    flops = 2.0 * m * k * n
    return [{"op_class": "gemm", "aten_op": "aten::linear", "kernel": "nvjet_tst", "dur_us": us,
             "input_shapes": json.dumps([[1, m, k], [n, k], [n]]), "flops": flops,
             "bytes": 2.0 * (m * k + k * n + m * n)} for _ in range(calls)]


def test_fp8_scales_gemm_by_the_roof_ratio_and_adds_quantisation():
    roofs = {"matmul_tflops": {"bf16": 800.0, "fp8": 1600.0}, "copy_gbps": 3000.0}
    r = run(gemms(), wall=100.0, busy=99.0, roofs=roofs)
    f = row(advice_table([r]), "--linear-backend fp8")
    gemm_ms = 4 * 0.5
    quant = 4 * 4096 * 1280 * adv.FP8_QUANT_BYTES_PER_ELEMENT / 3000e9 * 1e3
    assert f["projected_busy_ms"] - f["step_busy_ms"] == pytest.approx(gemm_ms * (800 / 1600 - 1) + quant)
    assert f["projected_step_ms"] == pytest.approx(100.0 + gemm_ms * -0.5 + quant)
    assert "calibrated bf16 and fp8" in f["inputs"] and "run's copy roof" in f["inputs"]


def test_fp8_without_an_fp8_roof_falls_back_to_the_spec_sheet_and_says_so():
    r = run(gemms(), wall=100.0, busy=99.0, roofs={"matmul_tflops": {"bf16": 800.0}})
    f = row(advice_table([r]), "--linear-backend fp8")
    spec = adv.load_gpus()["h100-sxm"]
    quant = 4 * 4096 * 1280 * adv.FP8_QUANT_BYTES_PER_ELEMENT / (spec["hbm_gbps"] * 1e9) * 1e3
    d = 2.0 * (spec["bf16_tflops"] / spec["fp8_tflops"] - 1) + quant
    assert f["projected_busy_ms"] - f["step_busy_ms"] == pytest.approx(d)
    assert "spec-sheet bf16 / fp8 of h100-sxm" in f["inputs"]


def test_fp8_on_a_host_bound_step_pays_the_quantisation_kernels_on_the_host():
    r = run(gemms(calls=4), wall=40.0, busy=10.0, n_kernels=400)
    f = row(advice_table([r]), "--linear-backend fp8")
    assert f["projected_step_ms"] == pytest.approx(40.0 + 4 * adv.FP8_QUANT_KERNELS_PER_CALL * 40.0 / 400)
    assert f["saving_ms"] < 0


def test_fp8_does_not_apply_without_fp8_tensor_cores_or_to_fp16():
    a100 = {"type": "cuda", "name": "NVIDIA A100-SXM4-80GB"}
    assert "no FP8" in row(advice_table([run(gemms(), device=a100)]), "--linear-backend fp8")["model"]
    assert "bf16" in row(advice_table([run(gemms(), dtype="fp16")]), "--linear-backend fp8")["model"]
    odd = gemms(k=1000, n=1000)  # torchao takes features in multiples of 16 ... 1000 is one; 1001 is not
    odd[0]["input_shapes"] = json.dumps([[1, 64, 1001], [1001, 1001], [1001]])
    f = row(advice_table([run(odd[:1])]), "--linear-backend fp8")
    assert "multiples of 16" in f["model"]


# --- attention -------------------------------------------------------------------------------------------------

def attention_call(b=2, h=8, s=4096, skv=4096, d=64, us=2000.0):
    shapes = json.dumps([[b, h, s, d], [b, h, skv, d], [b, h, skv, d]])
    return [{"op_class": "attention", "module_path": "attn1", "kernel": "cudnn_sdpa", "dur_us": us * 0.9,
             "input_shapes": shapes, "flops": 4.0 * b * h * s * skv * d, "bytes": 1.0},
            {"op_class": "attention", "module_path": "attn1", "kernel": "Memset (Device)", "dur_us": us * 0.1}]


def test_attention_cost_model_is_a_ratio_of_the_backends_model_times():
    roofs = {"matmul_tflops": {"bf16": 800.0}, "copy_gbps": 3000.0}
    t = advice_table([run(attention_call(), wall=100.0, busy=99.0, roofs=roofs)])
    f = row(t, "--backend flash")
    want = 2.0 * adv.ATTENTION_EFFICIENCY["cudnn"] / adv.ATTENTION_EFFICIENCY["flash"]
    assert f["projected_busy_ms"] - f["step_busy_ms"] == pytest.approx(want - 2.0)
    m = row(t, "--backend math")
    cur = adv.attention_model_ms(2, 8, 4096, 4096, 64, False, "cudnn", 800.0, 3000.0)
    new = adv.attention_model_ms(2, 8, 4096, 4096, 64, False, "math", 800.0, 3000.0)
    assert m["projected_busy_ms"] - m["step_busy_ms"] == pytest.approx(2.0 * new / cur - 2.0)
    assert "--backend cudnn" not in set(t["option"])


def test_attention_from_a_bench_table_scales_by_batch_and_heads():
    bench = pd.DataFrame([
        {"device": H100, "name": "x", "b": 1, "h": 8, "sq": 4096, "skv": 4096, "d": 64, "causal": False,
         "backend": "cudnn", "ms": 1.0},
        {"device": H100, "name": "x", "b": 1, "h": 8, "sq": 4096, "skv": 4096, "d": 64, "causal": False,
         "backend": "flash", "ms": 1.5},
        {"device": H100, "name": "x", "b": 1, "h": 8, "sq": 4096, "skv": 4096, "d": 64, "causal": False,
         "backend": "sage", "ms": 0.5}])
    t = advice_table([run(attention_call(), wall=100.0, busy=99.0)], bench=bench)
    # ratio to the run's own backend at the shape: 2 ms x 1.5
    assert row(t, "--backend flash")["projected_busy_ms"] - 99.0 == pytest.approx(1.0)
    assert row(t, "--backend sage")["projected_step_ms"] == pytest.approx(99.0)  # 2 ms x 0.5 / 1: saves 1 ms
    assert "1 of 1 calls per step from the bench-attn table" in row(t, "--backend sage")["model"]


# --- another GPU -----------------------------------------------------------------------------------------------

def test_kernel_scale_by_class_intensity_and_transforms():
    gpus = adv.load_gpus()
    src, tgt = gpus["h100-sxm"], gpus["b200"]
    k = kernels([{"op_class": "gemm", "dur_us": 1.0}, {"op_class": "norm", "dur_us": 1.0},
                 {"op_class": "conv", "kernel": TRANSFORM, "dur_us": 1.0},
                 {"op_class": "gemm", "dur_us": 1.0, "flops": 2e6, "bytes": 2e6},  # intensity 1: memory-bound
                 {"op_class": "elementwise", "dur_us": 1.0, "flops": 1e9, "bytes": 1e3}])  # far above the ridge
    compute, memory = src["bf16_tflops"] / tgt["bf16_tflops"], src["hbm_gbps"] / tgt["hbm_gbps"]
    assert list(adv.kernel_scale(k, src, tgt)) == pytest.approx([compute, memory, memory, memory, compute])


def test_routing_kernels_are_judged_by_the_work_they_do():
    """A MoE layer's routing (classed by structure): its gate GEMM is compute, its softmax and gather memory-bound
    and fusible by torch.compile, as they would be outside a MoE layer."""
    gpus = adv.load_gpus()
    src, tgt = gpus["h100-sxm"], gpus["b200"]
    k = kernels([{"op_class": "routing", "aten_op": "aten::linear", "kernel": "nvjet_tst_64x8", "dur_us": 1.0},
                 {"op_class": "routing", "aten_op": "aten::softmax", "kernel": "softmax_warp_forward", "dur_us": 1.0},
                 {"op_class": "routing", "aten_op": "aten::index", "kernel": "index_elementwise_kernel",
                  "dur_us": 1.0}])
    assert list(adv.work_class(k)) == ["gemm", "elementwise", "memory"]
    compute, memory = src["bf16_tflops"] / tgt["bf16_tflops"], src["hbm_gbps"] / tgt["hbm_gbps"]
    assert list(adv.kernel_scale(k, src, tgt)) == pytest.approx([compute, memory, memory])
    t = advice_table([run([{"op_class": "routing", "aten_op": "aten::softmax", "kernel": "softmax_warp_forward",
                            "dur_us": 500.0}, {"op_class": "gemm", "dur_us": 500.0}], backend="sdpa")])
    assert "fusible kernels per step: 1," in row(t, "--compile")["inputs"]  # the softmax, not the GEMM


def test_gpu_move_keeps_a_host_bound_step_host_bound():
    rows = [{"op_class": "gemm", "dur_us": 8000.0}, {"op_class": "norm", "dur_us": 2000.0}]
    t = advice_table([run(rows, wall=40.0, busy=10.0)], targets=["b200"])
    assert row(t, "--target-gpu b200")["projected_step_ms"] == pytest.approx(40.0)
    t = advice_table([run(rows, wall=10.5, busy=10.0, n_kernels=10)], targets=["b200"])
    g, gpus = row(t, "--target-gpu b200"), adv.load_gpus()
    want = 8.0 * 989.4 / gpus["b200"]["bf16_tflops"] + 2.0 * 3350 / gpus["b200"]["hbm_gbps"] + 0.5
    assert g["projected_step_ms"] == pytest.approx(want)


def test_an_unknown_target_gpu_is_refused_with_the_valid_names():
    with pytest.raises(UnknownNameError) as e:
        advice_table([run([])], targets=["h300"])
    assert "h300" in str(e.value) and all(k in str(e.value) for k in adv.load_gpus())


def test_every_gpu_figure_has_a_source_and_the_committed_devices_are_known():
    for key, spec in adv.load_gpus().items():
        for field in ("bf16_tflops", "fp8_tflops", "hbm_gbps", "l2_mb", "sms"):
            assert field in spec and spec["sources"].get(field), (key, field)
        assert spec["bf16_tflops"] > 0 and spec["hbm_gbps"] > 0
    assert adv.gpu_key(H100) == "h100-sxm" and adv.gpu_key("NVIDIA H200") == "h200"
    assert adv.gpu_key("NVIDIA A100-SXM4-80GB") == "a100-80gb" and adv.gpu_key("NVIDIA GeForce RTX 4090") is None


# --- step caching, CPU runs, the table --------------------------------------------------------------------------

def test_step_cache_is_steps_skipped_times_step_cost():
    assert adv.step_cache(30.0, 50, 0.3) == (15, pytest.approx(30.0 * 35 / 50))
    assert adv.step_cache(30.0, 1, 0.9) == (0, 30.0)
    t = advice_table([run([], wall=30.0, busy=29.0, steps=50)], skip_fraction=0.4)
    c = row(t, "cache 20 of 50 steps")
    assert c["projected_e2e_ms"] == pytest.approx(c["e2e_ms"] - 20 * 30.0)
    # sd15: no cache hook runs on a UNet here, so the DiT's ±2 % check does not carry over to it
    assert "assumed" in c["model"] and c["error"].startswith("unvalidated (no step cache runs on this denoiser")
    dit = run([], wall=30.0, busy=29.0, steps=50)
    dit.meta["step_cache_support"] = "ok"
    d = row(advice_table([dit], skip_fraction=0.4), "--cache first-block --cache-schedule 0.4")
    assert d["error"].startswith("±2 % (wan2.1-1.3b")


def test_a_cpu_run_says_which_projections_do_not_apply():
    cpu = run([{"op_class": "gemm", "dur_us": 100.0}], device={"type": "cpu", "name": "x86_64"}, steps=4)
    t = advice_table([cpu])
    na = t[t["projected_step_ms"].isna()]
    assert set(na["kind"]) == {"cuda-graphs", "channels-last", "fp8", "attention", "gpu", "sequence-parallel"}
    assert all("CPU run" in m for m in na["model"])
    assert list(t.loc[t["rank"].notna(), "kind"]) == ["step-cache"]


def test_every_shown_projection_states_its_error_and_the_table_is_ranked():
    rows = [*transforms(), *gemms(), *attention_call()]
    t = advice_table([run(rows, wall=40.0, busy=20.0, n_kernels=500)], targets=["h200"])
    shown = t[t["projected_step_ms"].notna()]
    assert shown["error"].str.match(r"^(±[\d.]+ %|unvalidated) \(").all()
    assert shown["model"].str.len().gt(20).all() and shown["inputs"].str.len().gt(20).all()
    assert list(shown["saving_ms"]) == sorted(shown["saving_ms"], reverse=True)
    assert list(shown["rank"]) == list(range(1, len(shown) + 1))
    assert list(t.columns) == list(adv.ADVICE_COLUMNS)


def test_advice_is_a_study_table():
    assert TABLES["advice"] is advice_table
    assert list(advice_table([]).columns) == list(adv.ADVICE_COLUMNS)


# --- the checks against committed runs (the numbers behind VALIDATED_ERROR) ------------------------------------

needs_runs = pytest.mark.skipif(not PROJ.is_dir() or not H200_WAN.is_dir() or not CORE.is_dir(),
                                reason="needs the repository's committed GPU runs")


def within(kind: str, projected: float, measured: float) -> float:
    err = (projected / measured - 1) * 100
    bound = adv.VALIDATED_ERROR[kind]["error_pct"]
    assert bound is not None and abs(err) <= bound, (kind, err, bound)
    return err


@needs_runs
def test_h100_to_h200_against_the_measured_h200_run():
    (h100,) = load_runs([PROJ / "wan2.1-1.3b-cudnn-20261206-071300-cdb2ca"])
    (h200,) = load_runs([H200_WAN])
    assert h100.meta["config_hash"] == h200.meta["config_hash"]  # the same configuration
    g = row(advice_table([h100], targets=["h200"]), "--target-gpu h200")
    err = within("gpu", g["projected_step_ms"], h200.meta["timings"]["denoiser_step"]["median_ms"])
    assert err < 0  # memory-bound kernels do not reach HBM3e's full bandwidth: the projection is optimistic
    within("gpu", g["projected_e2e_ms"], h200.meta["timings"]["e2e"]["median_ms"])


PROJ_B = RESULTS / "projections" / "h100-2026-12-06-b" / "runs"  # llamagen, with the fp8 roof recorded


@needs_runs
@pytest.mark.parametrize("store,workload", [(PROJ, "sd15"), (PROJ, "wan2.1-1.3b"), (PROJ_B, "llamagen")])
def test_fp8_against_the_committed_fp8_runs(store, workload):
    if not store.is_dir():
        pytest.skip(f"needs {store}")
    runs = {r.meta.get("linear_backend"): r for r in load_runs([store]) if r.workload == workload and r.status == "ok"}
    f = row(advice_table([runs["dense"]]), "--linear-backend fp8")
    measured = runs["fp8"].meta["timings"][f["step_key"]]["median_ms"]
    assert f["saving_ms"] < 0 and measured > f["step_ms"]  # both say fp8 as torchao runs it eagerly is slower
    within("fp8", f["projected_step_ms"], measured)
    fp8_roof = (runs["dense"].meta.get("roofs") or {}).get("matmul_tflops", {}).get("fp8")
    assert ("calibrated bf16 and fp8" if fp8_roof else "spec-sheet bf16 / fp8") in f["inputs"]


@needs_runs
@pytest.mark.parametrize("workload", ["sd15", "modelscope-t2v"])
@pytest.mark.parametrize("target", ["flash", "efficient", "math"])
def test_attention_swap_against_the_committed_compare_groups(workload, target):
    runs = {r.backend: r for r in load_runs([CORE]) if r.workload == workload}
    for bench in (None, load_bench([BENCH])):
        a = row(advice_table([runs["cudnn"]], bench=bench), f"--backend {target}")
        within("attention", a["projected_step_ms"], runs[target].meta["timings"]["denoiser_step"]["median_ms"])


@needs_runs
def test_the_committed_runs_get_advice_end_to_end():
    t = advice_table(load_runs([PROJ]), targets=["b200"])
    dense_sd15 = t[t["run_id"] == "sd15-cudnn-20261206-070847-d49cf9"]
    # SD 1.5 at 512 px is host-bound (GPU busy 12.5 of 34.3 ms): CUDA graphs rank first or in the first combination
    assert "--cuda-graphs" in dense_sd15.iloc[0]["option"]
    assert not t["run_id"].str.contains("memoryformer-20261206-071300").any()  # the OOM run has no advice


def test_cuda_graphs_are_not_advised_where_profile_refuses_them():
    from mmchar.analysis.advise import _graphs_refused

    assert _graphs_refused({"options": {}, "config": {}, "timings": {"denoiser_step": {}}}) is None
    assert "sequence-parallel" in _graphs_refused({"options": {"sequence_parallel": 2}})
    assert "cpu-offload" in _graphs_refused({"config": {"memory": {"cpu_offload": True}}})
    assert "KV cache" in _graphs_refused({"timings": {"generator_step": {}, "generator_decode": {}}})


ADVICE_H200 = RESULTS / "advice" / "h200-2026-12-06" / "runs"  # sd15: CUDA graphs, + channels-last
ADVICE_H100 = RESULTS / "advice" / "h100-2026-12-06" / "runs"  # wan2.1-1.3b: step cache, graphs, channels-last


@pytest.mark.parametrize("store,workload,option,kind", [
    (ADVICE_H200, "sd15", "--cuda-graphs", "cuda-graphs"),
    (ADVICE_H200, "sd15", "--channels-last --cuda-graphs", "combined"),
    (ADVICE_H100, "wan2.1-1.3b", "--cuda-graphs", "cuda-graphs"),
    (ADVICE_H100, "wan2.1-1.3b", "--channels-last", "channels-last"),
    (ADVICE_H100, "wan2.1-1.3b", "--cache first-block --cache-schedule 0.3", "step-cache"),
])
def test_runtime_modes_against_their_committed_validating_runs(store, workload, option, kind):
    """The projection recomputed from the committed source run, against the committed run of that option (a step
    cache's step is the mean over the generation: computed and skipped steps)."""
    if not store.is_dir():
        pytest.skip(f"needs {store}")
    (source,) = [r for r in load_runs([store]) if r.workload == workload]
    validation = pd.read_csv(store / "validate" / "validation.csv")
    measured_id = validation[(validation["run_id"] == source.run_id) & (validation["option"] == option)]
    (validating,) = load_runs([store / "validate" / measured_id["validating_run"].iloc[0]])
    r = row(advice_table([source]), option)
    assert r["kind"] == kind
    stat = "mean_ms" if kind == "step-cache" else "median_ms"
    within(kind, r["projected_step_ms"], validating.meta["timings"][r["step_key"]][stat])


COMPILED = RESULTS / "study" / "compile-h100-2026-11-25" / "runs"  # eager and --compile pairs


@pytest.mark.parametrize("workload", ["sd15", "cogvideox-2b", "llamagen"])
def test_compile_against_the_committed_compiled_runs(workload):
    """The fitted fusion model (COMPILE_*) from each eager run, against its compiled run; the constants were fitted
    on these same pairs, so the stated error is in-sample and says so."""
    if not COMPILED.is_dir():
        pytest.skip(f"needs {COMPILED}")
    runs = {bool(r.meta["options"].get("compile")): r for r in load_runs([COMPILED])
            if r.workload == workload and r.status == "ok"}
    c = row(advice_table([runs[False]]), "--compile")
    assert c["kind"] == "compile" and "fitted" in c["model"] and "in-sample" in c["error"]
    within("compile", c["projected_step_ms"], runs[True].meta["timings"][c["step_key"]]["median_ms"])
    # a compiled run is not offered it again, and a run under another backend is told why not
    assert "compiled already" in row(advice_table([runs[True]]), "--compile")["model"]


def test_compile_is_not_offered_beside_a_swapped_backend():
    t = advice_table([run([{"op_class": "elementwise", "dur_us": 500.0}], backend="cudnn",
                          device={"type": "cuda", "name": H100})])
    c = row(t, "--compile")
    assert pd.isna(c["rank"]) and "model's own attention" in c["model"]


SP = RESULTS / "sequence_parallel" / "h100x2-2026-11-25" / "runs"  # 1 and 2 x H100, Ulysses and ring


@pytest.mark.parametrize("workload", ["wan2.1-1.3b", "cogvideox-2b"])
def test_sequence_parallel_against_the_committed_two_gpu_runs(workload):
    """The one-GPU run projected over 2 GPUs (Ulysses), against the committed 2-GPU Ulysses run of the same work;
    the GPU counts that do not divide the heads are left out (CogVideoX-2B's 30 heads: 2 only)."""
    if not SP.is_dir():
        pytest.skip(f"needs {SP}")
    runs = [r for r in load_runs([SP]) if r.workload == workload and r.status == "ok"]
    one = next(r for r in runs if int(r.meta["options"].get("sequence_parallel") or 1) == 1)
    two = next(r for r in runs if r.meta["options"].get("sequence_parallel") == 2
               and r.meta["options"].get("sp_scheme", "auto") == "auto")
    t = advice_table([one])
    s = row(t, "--sequence-parallel x2")
    assert s["kind"] == "sequence-parallel" and "in-sample" in s["error"]
    within("sequence-parallel", s["projected_step_ms"], two.meta["timings"]["denoiser_step"]["median_ms"])
    options = set(t.loc[t["kind"] == "sequence-parallel", "option"])
    assert options == ({"--sequence-parallel x2", "--sequence-parallel x4"} if workload == "wan2.1-1.3b"
                       else {"--sequence-parallel x2"})
    assert "already" in row(advice_table([two]), "--sequence-parallel")["model"]


def test_sequence_parallel_is_projected_for_dits_only():
    if not SP.is_dir():
        pytest.skip(f"needs {SP}")
    (wan,) = [r for r in load_runs([SP]) if r.workload == "wan2.1-1.3b"
              and int(r.meta["options"].get("sequence_parallel") or 1) == 1]
    unet = Run(meta={**wan.meta, "config": {**wan.meta["config"], "family": {"architecture": "unet"}}},
               kernels=wan.kernels, path=None)
    assert "halo" in row(advice_table([unet]), "--sequence-parallel")["model"]
