"""analysis.tables on hand-made run stores with known numbers: exact shares, orders and speedups."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from mmchar.analysis import (attention_site_table, breakdown_table, comparison_table, run_table, stage_table,
                             top_kernels_table)
from mmchar.store import Run, load_runs, write_run

H100 = {"type": "cuda", "name": "NVIDIA H100 80GB HBM3"}
PARAMS = {"height": 512, "width": 512, "frames": 1, "steps": 20, "batch": 1, "guidance": 7.5, "seed": 0,
          "prompt": "a cat"}


def meta(run_id, backend, status="ok", **extra):
    m = {"run_id": run_id, "created": "2025-01-01T12:00:00", "status": status, "error": None,
         "workload": "sd15", "preset": "full", "backend": backend, "config_hash": "abc123",
         "config": {"params": PARAMS}, "device": H100, "versions": {"torch": "2.11"}}
    m.update(extra)
    return m


def timings(e2e, step):
    return {"e2e": {"median_ms": e2e, "min_ms": e2e - 10, "max_ms": e2e + 10, "n": 3},
            "text_encoder": {"median_ms": 20.0, "min_ms": 19.0, "max_ms": 21.0, "n": 3},
            "denoiser_step": {"median_ms": step, "min_ms": step, "max_ms": step, "n": 3}}


BREAKDOWN_A = pd.DataFrame([
    # stage, op_class, attn_site, time_us, share, calls, flops, bytes
    ("denoiser", "conv", "", 400.0, 0.40, 4, 1e9, 1e6),
    ("denoiser", "gemm", "", 300.0, 0.30, 3, 1e9, 1e6),
    ("denoiser", "attention", "spatial", 150.0, 0.15, 1, 1e8, 1e5),
    ("denoiser", "attention", "cross", 50.0, 0.05, 1, 1e7, 1e5),
    ("denoiser", "norm", "", 100.0, 0.10, 1, np.nan, 1e5),
    ("text_encoder", "gemm", "", 60.0, 0.60, 1, 1e7, 1e4),
    ("text_encoder", "attention", "text", 40.0, 0.40, 1, 1e6, 1e4),
], columns=["stage", "op_class", "attn_site", "time_us", "share", "calls", "flops", "bytes"])


def kernel_rows(rows):
    """rows: (stage, step, op_class, attn_site, kernel, dur_us)."""
    df = pd.DataFrame(rows, columns=["stage", "step", "op_class", "attn_site", "kernel", "dur_us"])
    df["module_path"] = "unet"
    df["aten_op"] = df["launch_op"] = "aten::x"
    df["ts_us"] = np.arange(len(df), dtype=float) * 1000
    df["input_shapes"] = ""
    df["flops"] = df["bytes"] = np.nan
    df["step"] = df["step"].astype("int32")
    return df


KERNELS_A = kernel_rows(
    [("denoiser", s, "conv", "", "conv_k", 100.0) for s in (0, 0, 1, 1)]
    + [("denoiser", s, "gemm", "", "gemm_k", 100.0) for s in (0, 1, 1)]
    + [("text_encoder", -1, "gemm", "", "gemm_k", 60.0)]
    + [("denoiser", 0, "attention", "spatial", "fmha_k", 150.0), ("denoiser", 1, "attention", "cross", "fmha_k", 50.0),
       ("text_encoder", -1, "attention", "text", "fmha_k", 40.0)]
    + [("denoiser", 0, "norm", "", "norm_k", 100.0)]
    # one name under two classes: 15 us as attention beats 5 us as gemm
    + [("denoiser", 0, "gemm", "", "bmm_k", 5.0), ("denoiser", 1, "attention", "spatial", "bmm_k", 15.0)]
)  # total 1120 us


@pytest.fixture
def runs(tmp_path):
    store = tmp_path / "runs"
    busy = {"denoiser": {"wall_ms": 800.0, "busy_ms": 700.0, "idle_ms": 100.0, "busy_frac": 0.875, "kernels": 5000}}
    write_run(store, Run(meta=meta("a-math", "math", timings=timings(1000.0, 40.0), busy=busy,
                                   attention_time_us_per_step=400.0),
                         kernels=KERNELS_A, breakdown=BREAKDOWN_A))
    cmp = {"group": "g1", "baseline_run_id": "a-math", "baseline_backend": "math", "max_abs_diff": 0.01,
           "cosine": 0.9999, "agrees": True}
    write_run(store, Run(meta=meta("b-flash", "flash", timings=timings(800.0, 20.0), compare=cmp,
                                   attention_time_us_per_step=100.0),
                         kernels=KERNELS_A, breakdown=BREAKDOWN_A))
    write_run(store, Run(meta=meta("c-oom", "math", status="oom", error="CUDA out of memory. Tried to allocate 2 GiB")))
    return load_runs([store])


def test_breakdown_table_prepends_ids_and_keeps_failed_runs(runs):
    bd = breakdown_table(runs)
    assert list(bd.columns) == ["run_id", "label", "workload", "preset", "backend", "device", "dtype", "status",
                                "noisy", "height", "width", "frames", "steps", "batch", "gpus", "guidance", "compile",
                                "channels_last", "cuda_graphs", "stage", "op_class", "attn_site", "time_us", "share", "calls", "flops", "bytes"]
    assert len(bd) == 7 + 7 + 1
    a = bd[bd["run_id"] == "a-math"]
    assert set(a["device"]) == {"NVIDIA H100 80GB HBM3"} and set(a["height"]) == {512} and set(a["steps"]) == {20}
    assert a.groupby("stage")["share"].sum().round(9).to_dict() == {"denoiser": 1.0, "text_encoder": 1.0}
    assert a.loc[a["op_class"] == "conv", "time_us"].item() == 400.0
    assert a.loc[a["op_class"] == "norm", "attn_site"].item() == ""
    failed = bd[bd["run_id"] == "c-oom"]
    assert len(failed) == 1 and failed["status"].item() == "oom"
    assert failed[["time_us", "share", "calls", "flops", "bytes"]].isna().all(axis=None)


def test_stage_table_joins_timings_and_busy(runs):
    st = stage_table(runs)
    a = st[st["run_id"] == "a-math"].set_index("stage")
    assert list(a.index) == ["e2e", "text_encoder", "denoiser", "denoiser_step"]  # schema.TIMING_KEYS order
    assert a.loc["e2e", ["median_ms", "min_ms", "max_ms", "n"]].tolist() == [1000.0, 990.0, 1010.0, 3.0]
    assert a.loc["denoiser", ["busy_ms", "idle_ms", "busy_frac", "kernels"]].tolist() == [700.0, 100.0, 0.875, 5000.0]
    assert math.isnan(a.loc["denoiser", "median_ms"])  # busy-only stage: no timed latency
    assert math.isnan(a.loc["e2e", "busy_ms"])
    assert "c-oom" not in set(st["run_id"])


def test_attention_site_table_shares_of_attention(runs):
    at = attention_site_table(runs)
    a = at[at["run_id"] == "a-math"].set_index(["stage", "attn_site"])
    assert a["time_us"].to_dict() == {("denoiser", "spatial"): 150.0, ("denoiser", "cross"): 50.0,
                                      ("text_encoder", "text"): 40.0}
    assert a.loc[("denoiser", "spatial"), "attn_share"] == pytest.approx(0.75)
    assert a.loc[("denoiser", "cross"), "attn_share"] == pytest.approx(0.25)
    assert a.loc[("text_encoder", "text"), "attn_share"] == pytest.approx(1.0)
    assert a.loc[("denoiser", "spatial"), "stage_share"] == pytest.approx(0.15)
    assert len(at) == 6


def test_top_kernels_table_order_share_and_dominant_class(runs):
    top = top_kernels_table(runs, n=5)
    a = top[top["run_id"] == "a-math"]
    assert a["kernel"].tolist() == ["conv_k", "gemm_k", "fmha_k", "norm_k", "bmm_k"]
    assert a["rank"].tolist() == [1, 2, 3, 4, 5]
    assert a["calls"].tolist() == [4, 4, 3, 1, 2]
    assert a["time_us"].tolist() == [400.0, 360.0, 240.0, 100.0, 20.0]
    assert a["share"].tolist() == pytest.approx([400 / 1120, 360 / 1120, 240 / 1120, 100 / 1120, 20 / 1120])
    assert a["op_class"].tolist() == ["conv", "gemm", "attention", "norm", "attention"]
    assert top_kernels_table(runs, n=2)["kernel"].tolist() == ["conv_k", "gemm_k"] * 2


def test_comparison_table_speedups_vs_baseline(runs):
    cmp = comparison_table(runs)
    assert cmp["run_id"].tolist() == ["a-math", "b-flash"]  # baseline first
    base, flash = cmp.iloc[0], cmp.iloc[1]
    assert bool(base["is_baseline"]) and base["e2e_speedup"] == 1.0 and base["attention_speedup"] == 1.0
    assert flash["e2e_ms"] == 800.0 and flash["denoiser_step_ms"] == 20.0
    assert flash["e2e_speedup"] == pytest.approx(1.25)
    assert flash["step_speedup"] == pytest.approx(2.0)
    assert flash["attention_speedup"] == pytest.approx(4.0)
    assert flash["max_abs_diff"] == 0.01 and flash["cosine"] == 0.9999
    assert bool(flash["agrees"]) is True and pd.isna(base["agrees"])
    assert flash["group"] == "g1" and flash["baseline_backend"] == "math"


def test_comparison_without_baseline_derives_attention_per_step_from_kernels():
    cmp = {"group": "g2", "baseline_run_id": "missing", "baseline_backend": "math", "max_abs_diff": 0.5,
           "cosine": 0.9, "agrees": False}
    run = Run(meta=meta("d-lin", "linear", timings=timings(500.0, 10.0), compare=cmp), kernels=KERNELS_A)
    row = comparison_table([run]).iloc[0]
    # denoiser attention kernels over the 2 profiled steps: (150 + 50 + 15) / 2
    assert row["attention_us_per_step"] == pytest.approx(107.5)
    assert math.isnan(row["e2e_speedup"]) and bool(row["agrees"]) is False and not row["is_baseline"]


def test_run_table_and_empty_inputs(runs):
    rt = run_table(runs)
    assert rt["status"].tolist() == ["ok", "ok", "oom"]
    assert rt.loc[2, "error"].startswith("CUDA out of memory")
    for fn in (breakdown_table, stage_table, attention_site_table, top_kernels_table, comparison_table, run_table):
        assert fn([]).empty
    assert comparison_table(runs[:1]).empty


def test_runtime_modes_are_named_by_the_backend_as_compile_is():
    """A run under channels-last or CUDA graphs is its own configuration: the backend says so (as ``sdpa+compile``),
    in every table and once in a label (the backend, not a separate word)."""
    from mmchar.analysis.tables import RUNTIME_MODES, backend_label, run_labels, runtime_modes, work_fields

    def moded(run_id, **options):
        return Run(meta=meta(run_id, "sdpa", timings=timings(100.0, 5.0), options=options))

    eager = moded("eager")
    old = Run(meta=meta("old", "sdpa", timings=timings(100.0, 5.0)))  # no options at all: from before the modes
    cl, graphs = moded("cl", channels_last=True), moded("graphs", cuda_graphs=True)
    both = moded("both", compile=True, cuda_graphs=True)
    assert runtime_modes(eager.meta) == runtime_modes(old.meta) == ()
    assert runtime_modes(both.meta) == ("compile", "cuda-graphs") and set(RUNTIME_MODES) == {
        "compile", "channels_last", "cuda_graphs"}
    assert [backend_label(r.meta) for r in (eager, cl, graphs, both)] == [
        "sdpa", "sdpa+channels-last", "sdpa+cuda-graphs", "sdpa+compile+cuda-graphs"]
    assert backend_label({"backend": "cudnn", "linear_backend": "fp8", "options": {"channels_last": True}}) == \
        "cudnn+fp8+channels-last"
    assert work_fields(cl)["backend"] == "sdpa+channels-last" and work_fields(cl)["channels_last"] is True
    labels = run_labels([eager, cl, graphs, both])
    assert labels == {"eager": "sd15 sdpa", "cl": "sd15 sdpa+channels-last", "graphs": "sd15 sdpa+cuda-graphs",
                      "both": "sd15 sdpa+compile+cuda-graphs"}
    assert run_labels([graphs])["graphs"] == "sd15 sdpa+cuda-graphs"  # named even where nothing else varies
    rt = run_table([eager, cl, graphs])
    assert rt["backend"].tolist() == ["sdpa", "sdpa+channels-last", "sdpa+cuda-graphs"]
    assert rt["channels_last"].tolist() == [False, True, False] and rt["cuda_graphs"].tolist() == [False, False, True]
