"""Hand-made runs shared by the dashboard tests: two ok SD 1.5 runs (math, flash with a comparison), an OOM and an
error run, with kernels that carry FLOPs and bytes and a calibrated roof; the factory also makes CPU runs and runs
the noise guard flagged."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mmchar.store import Run, load_runs, write_run

OOM_MESSAGE = "CUDA out of memory. Tried to allocate 20.00 GiB"
H100 = {"type": "cuda", "name": "NVIDIA H100 80GB HBM3"}
CPU = {"type": "cpu", "name": "x86_64", "threads": 2}


def _make_run(run_id, backend, status="ok", compare=None, workload="sd15", height=512, step_ms=40.0, gpus=1,
              device=H100, noise=None):
    """noise: the noise guard's reasons (``[]``: judged clean; None: recorded before the guard)."""
    meta = {"run_id": run_id, "created": "2025-01-01T12:00:00", "status": status,
            "error": None if status == "ok" else (OOM_MESSAGE if status == "oom" else "RuntimeError: <bad> & co"),
            "workload": workload, "preset": "full", "backend": backend, "config_hash": "abc123",
            "config": {"params": {"height": height, "width": 512, "frames": 1, "steps": 20, "batch": 1}},
            "device": dict(device), "versions": {"torch": "2.11"}}
    if noise is not None:
        meta["noise"] = {"noisy": bool(noise), "reasons": list(noise)}
    if status != "ok":
        return Run(meta=meta)
    meta["timings"] = {"e2e": {"median_ms": 1000.0, "min_ms": 990.0, "max_ms": 1010.0, "n": 3},
                       "denoiser": {"median_ms": 800.0, "min_ms": 790.0, "max_ms": 810.0, "n": 3},
                       "denoiser_step": {"median_ms": step_ms, "min_ms": step_ms - 1, "max_ms": step_ms + 1, "n": 3},
                       "decoder": {"median_ms": 150.0, "min_ms": 149.0, "max_ms": 151.0, "n": 3}}
    meta["busy"] = {"denoiser": {"wall_ms": 800.0, "busy_ms": 700.0, "idle_ms": 100.0, "busy_frac": 0.875,
                                 "kernels": 5000},
                    "decoder": {"wall_ms": 150.0, "busy_ms": 149.0, "idle_ms": 1.0, "busy_frac": 149 / 150,
                                "kernels": 300}}
    meta["attention_time_us_per_step"] = 400.0 if backend == "math" else 100.0
    if compare:
        meta["compare"] = compare
    breakdown = pd.DataFrame([
        ("denoiser", "conv", "", 400.0, 0.4, 4), ("denoiser", "gemm", "", 300.0, 0.3, 3),
        ("denoiser", "attention", "spatial", 200.0, 0.2, 2), ("denoiser", "attention", "cross", 100.0, 0.1, 1),
        ("decoder", "conv", "", 90.0, 0.9, 9), ("decoder", "attention", "spatial", 10.0, 0.1, 1),
    ], columns=["stage", "op_class", "attn_site", "time_us", "share", "calls"])
    kernels = pd.DataFrame({
        "stage": ["denoiser"] * 4 + ["decoder"], "step": np.array([0, 0, 1, 1, -1], dtype="int32"),
        "module_path": "unet", "op_class": ["conv", "gemm", "attention", "attention", "conv"],
        "attn_site": ["", "", "spatial", "cross", ""], "aten_op": "aten::x", "launch_op": "aten::x",
        "kernel": ["conv_k", "gemm_k", "fmha_k", "fmha_k", "conv_k"], "ts_us": [0.0, 1.0, 2.0, 3.0, 4.0],
        "dur_us": [400.0, 300.0, 200.0, 100.0, 90.0],
        "input_shapes": ["", "", "[[2, 8, 4096, 40], [2, 8, 4096, 40], [2, 8, 4096, 40]]",
                         "[[2, 8, 4096, 40], [2, 8, 77, 40], [2, 8, 77, 40]]", ""],
        "flops": [1.6e11, 1.2e11, 4e10, 8e8, 3.6e10], "bytes": [4e8, 3e8, 8e7, 6e6, 1e8]})
    if gpus > 1:  # sequence parallel: the step split over GPUs, with its collectives
        meta["options"] = {"sequence_parallel": gpus}
        meta["sequence_parallel"] = {"ranks": gpus, "schemes": {"ulysses": 16}}
        comm = kernels.iloc[[2]].assign(op_class="communication", attn_site="", kernel="ncclDevKernel_AllToAll",
                                        dur_us=50.0, flops=0.0, bytes=1e6)
        kernels = pd.concat([kernels, comm], ignore_index=True)
        breakdown = pd.concat([breakdown, pd.DataFrame([("denoiser", "communication", "", 50.0, 0.05, 1)],
                                                       columns=breakdown.columns)], ignore_index=True)
    meta["roofs"] = {"matmul_tflops": {"bf16": 800.0}, "copy_gbps": 3000.0}
    meta["config"]["dtype"] = "bf16"
    return Run(meta=meta, kernels=kernels, breakdown=breakdown)


@pytest.fixture
def make_run():
    """The run factory itself (tests that build their own sets of runs)."""
    return _make_run


def _standard_runs() -> list[Run]:
    cmp = {"group": "sd15-512", "baseline_run_id": "sd15-math", "baseline_backend": "math", "max_abs_diff": 0.02,
           "cosine": 0.9999, "agrees": True}
    return [_make_run("sd15-math", "math"), _make_run("sd15-flash", "flash", compare=cmp),
            _make_run("sd15-oom", "math", status="oom"), _make_run("sd15-err", "flash", status="error"),
            _make_run("sd15-flash-1024", "flash", height=1024, step_ms=160.0)]


@pytest.fixture
def runs(tmp_path):
    store = tmp_path / "runs"
    for run in _standard_runs():
        write_run(store, run)
    return load_runs([store])


def _projection_run(run_id="sd15-math+fp8", linear="fp8", step_ms=50.0, status="ok", baseline="sd15-math",
                    group="sd15-512"):
    """A run of the math backend's compare group whose linear layers a projection backend computed (fp8: gemm
    kernels; memoryformer: memory kernels), with the layers it replaced and the state it held."""
    compare = {"group": group, "baseline_run_id": baseline, "baseline_backend": "math", "variant": f"math+{linear}"}
    r = _make_run(run_id, "math", status=status, step_ms=step_ms)
    r.meta.update(compare=compare, linear_backend=linear, linear_scope="all", linear_changes_math=True,
                  linear_op_class="memory" if linear == "memoryformer" else "gemm")
    if status == "ok":
        compare.update(cosine=0.999, max_abs_diff=0.1, agrees=True)
        r.meta.update(linear_backend_per_layer={"unet.a": linear, "unet.b": linear, "unet.c": "dense"},
                      linear_unsupported={"unet.c": "in_features not a multiple of 16"},
                      linear_state_bytes={"unet.a": 2e9, "unet.b": 1e9}, linear_state_bytes_total=3_000_000_000)
    return r


def _advised_run(run_id="sd15-flash-advised", backend="flash", step_ms=40.0, busy_ms=30.0, **kw):
    """A run `mmchar advise` projects from: the factory's run with the light profile's record of one step (wall,
    GPU-busy, kernels; 30 of 40 ms busy: host-bound, so CUDA graphs save) and its step count."""
    r = _make_run(run_id, backend, step_ms=step_ms, **kw)
    if r.status == "ok":
        r.meta["busy"]["denoiser_step"] = {"wall_ms": step_ms, "busy_ms": busy_ms, "idle_ms": step_ms - busy_ms,
                                           "busy_frac": busy_ms / step_ms, "kernels": 250}
        r.meta["passes"] = {"steps": 20}
    return r


def _moe_run(run_id="hidream-flash", step_ms=60.0):
    """A run with routed mixture-of-experts layers (two layers of two routed experts and a shared one): its
    step-stage kernels under the layers carry routing, expert and shared parts."""
    r = _make_run(run_id, "flash", workload="hidream-i1", step_ms=step_ms)
    layers = ["transformer.blocks.0.ff", "transformer.blocks.1.ff"]
    r.meta["moe_layers"] = {"count": 2, "paths": layers, "stages": ["denoiser"] * 2, "gates": ["gate"],
                            "experts": ["experts", "shared_experts"], "containers": {"denoiser": {"experts": "list"}}}
    rows = [(f"{p}{sub}", cls, dur) for p in layers
            for sub, cls, dur in ((".gate", "routing", 5.0), ("", "routing", 7.0), (".experts.0.w1", "gemm", 40.0),
                                  (".experts.1.w1", "gemm", 30.0), (".shared_experts.w1", "gemm", 20.0))]
    moe = pd.DataFrame({
        "stage": "denoiser", "step": np.zeros(len(rows), dtype="int32"), "module_path": [m for m, _, _ in rows],
        "op_class": [c for _, c, _ in rows], "attn_site": "", "aten_op": "aten::linear", "launch_op": "aten::linear",
        "kernel": "k", "ts_us": np.arange(len(rows), dtype=float) + 10, "dur_us": [d for _, _, d in rows],
        "input_shapes": "", "flops": 1e9, "bytes": 1e6})
    r.kernels = pd.concat([r.kernels, moe], ignore_index=True)
    r.breakdown = pd.concat([r.breakdown, pd.DataFrame([("denoiser", "routing", "", 24.0, 0.02, 4)],
                                                       columns=r.breakdown.columns)], ignore_index=True)
    return r


@pytest.fixture
def moe_run():
    """The factory of runs with MoE layers (`_moe_run`)."""
    return _moe_run


@pytest.fixture
def advised_run():
    """The factory of runs with a step record the advice projects from (`_advised_run`)."""
    return _advised_run


@pytest.fixture
def every_view_runs(tmp_path):
    """The standard runs plus a sequence-parallel one (2 GPUs), a projection backend's run (fp8), a run with a
    recorded step (the advice) and one with MoE layers: a set for which every dashboard view has data."""
    store = tmp_path / "every-view"
    for run in [*_standard_runs(), _make_run("sd15-flash-2gpu", "flash", step_ms=25.0, gpus=2), _projection_run(),
                _advised_run(height=768), _moe_run()]:
        write_run(store, run)
    return load_runs([store])


@pytest.fixture
def projection_run():
    """The factory of projection backends' runs (`_projection_run`)."""
    return _projection_run
