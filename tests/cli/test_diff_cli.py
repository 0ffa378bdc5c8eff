"""`mmchar diff` in-process on hand-made stores: which runs pair, what the gate lets through, what the user reads."""

from __future__ import annotations

import pandas as pd

from mmchar.cli import main
from mmchar.store import Run, write_run

PARAMS = {"height": 512, "width": 512, "frames": None, "steps": 20, "batch": 1, "guidance": 7.5, "seed": 0}
EARLY, LATE = "2025-01-01T12:00:00", "2025-02-01T12:00:00"


def run(run_id, *, workload="sd15", dtype="bf16", height=512, created=EARLY, e2e=1000.0, conv=400.0,
        text_attn=286.0):
    """A run whose two profiled denoiser steps took ``conv`` µs of conv each (no step-to-step spread) and whose
    text encoder (called once: no measured spread) took ``text_attn`` µs of attention."""
    meta = {"run_id": run_id, "created": created, "status": "ok", "error": None, "workload": workload,
            "preset": "full", "backend": "flash", "config_hash": f"{dtype}{height}",
            "config": {"params": dict(PARAMS, height=height), "dtype": dtype},
            "device": {"type": "cuda", "name": "NVIDIA H100 80GB HBM3"}, "passes": {"profile_steps": 2},
            "timings": {"e2e": {"median_ms": e2e, "min_ms": e2e, "max_ms": e2e, "n": 3, "cv": 0.0}}}
    bd = pd.DataFrame([("denoiser", "conv", "", 2 * conv, 0.9, 2, 0.0, 0.0),
                       ("text_encoder", "attention", "text", text_attn, 1.0, 1, 0.0, 0.0)],
                      columns=["stage", "op_class", "attn_site", "time_us", "share", "calls", "flops", "bytes"])
    k = pd.DataFrame({"stage": ["denoiser", "denoiser", "text_encoder"], "step": pd.array([0, 1, -1], dtype="int32"),
                      "module_path": ["unet.mid_block", "unet.mid_block", "text_encoder"],
                      "op_class": ["conv", "conv", "attention"], "attn_site": ["", "", "text"],
                      "aten_op": ["aten::conv2d"] * 3, "launch_op": ["x"] * 3, "kernel": ["k"] * 3,
                      "ts_us": [0.0, 1.0, 2.0], "dur_us": [conv, conv, text_attn], "input_shapes": [""] * 3,
                      "flops": [0.0] * 3, "bytes": [0.0] * 3})
    return Run(meta=meta, breakdown=bd, kernels=k)


def store(path, *runs):
    for r in runs:
        write_run(path, r)
    return str(path)


def test_stores_diff_only_runs_of_one_dtype_and_list_the_rest(tmp_path, capsys):
    """The fp32-against-fp16 +293 % never reaches the gate: the fp16 and fp32 runs stay unpaired, and say why."""
    a = store(tmp_path / "a", run("a-bf16"), run("a-fp16", dtype="fp16", created=LATE))
    b = store(tmp_path / "b", run("b-bf16"), run("b-fp32", dtype="fp32", created=LATE, e2e=3930.0))
    assert main(["diff", a, b, "--fail-above", "5"]) == 0
    out = capsys.readouterr().out
    assert "a-bf16 -> b-bf16" in out and "a-fp16 ->" not in out
    assert "2 runs left unpaired" in out
    assert "dtype fp16 vs fp32" in out and "dtype fp32 vs fp16" in out
    assert "no latency or class time regressed" in out


def test_when_nothing_pairs_the_error_says_why(tmp_path, capsys):
    a = store(tmp_path / "a", run("a-512", dtype="fp32"), run("a-256", dtype="fp32", height=256))
    b = store(tmp_path / "b", run("b-512", dtype="fp16"), run("b-256", dtype="fp16", height=256))
    assert main(["diff", a, b]) == 1
    err = capsys.readouterr().err
    assert "a-256: dtype fp32 vs fp16" in err and "diff runs of one configuration" in err
    assert len(err.strip().splitlines()) == 1


def test_run_against_run_warns_what_besides_the_code_differs(tmp_path, capsys):
    a = store(tmp_path / "a", run("a1", dtype="fp32"))
    assert main(["diff", a, store(tmp_path / "b", run("b1", dtype="fp16"))]) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and "differ in dtype fp32 vs fp16" in err and len(err.strip().splitlines()) == 1
    assert main(["diff", a, store(tmp_path / "c", run("c1", workload="sdxl", dtype="fp32"))]) == 0
    assert "diff of two different workloads (sd15 vs sdxl)" in capsys.readouterr().err
    assert main(["diff", a, store(tmp_path / "d", run("d1", dtype="fp32", e2e=1001.0))]) == 0
    assert "warning" not in capsys.readouterr().err


def test_the_table_shows_units_and_spreads(tmp_path, capsys):
    a, b = store(tmp_path / "a", run("a1")), store(tmp_path / "b", run("b1", conv=410.0))
    assert main(["diff", a, b]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if "change pct" in line)
    assert all(col in header for col in ("unit", "spread a", "spread b"))
    rows = {line.split()[2] if line.startswith("class") else line.split()[1]: line for line in out.splitlines()
            if line.startswith(("latency ", "class "))}
    assert " ms " in rows["e2e"] and " us " in rows["conv"]


def test_fail_above_gates_on_changes_beyond_the_noise_and_names_the_worst_with_units(tmp_path, capsys):
    """Two back-to-back runs: the text encoder's 286 µs attention +12.8 % (37 µs, under the 50 µs floor) is no
    regression; conv +50 % (200 µs a step) is, and the message says so in µs."""
    a = store(tmp_path / "a", run("a1"))
    b = store(tmp_path / "b", run("b1", text_attn=322.6))
    assert main(["diff", a, b, "--fail-above", "5"]) == 0
    assert "no latency or class time regressed by more than 5% beyond both runs' spread and 50 us" in \
        capsys.readouterr().out
    assert main(["diff", a, b, "--fail-above", "5", "--min-us", "10"]) == 1
    assert "class text_encoder attention 286 -> 322.6 us, +12.8%" in capsys.readouterr().err
    c = store(tmp_path / "c", run("c1", conv=600.0, text_attn=322.6))
    assert main(["diff", a, c, "--fail-above", "5"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: 1 latencies or class times regressed") and \
        "(worst: class denoiser conv 400 -> 600 us, +50.0%, a1 -> c1)" in err


def test_negative_gate_thresholds_are_one_line_errors(tmp_path, capsys):
    a, b = store(tmp_path / "a", run("a1")), store(tmp_path / "b", run("b1"))
    assert main(["diff", a, b, "--fail-above", "-5"]) == 1
    err = capsys.readouterr().err
    assert "--fail-above -5 is out of range; pass a percentage of 0 or more" in err and len(err.splitlines()) == 1
    assert main(["diff", a, b, "--fail-above", "5", "--min-us", "-1"]) == 1
    err = capsys.readouterr().err
    assert "--min-us -1 is out of range; pass a floor in µs of 0 or more" in err and len(err.splitlines()) == 1
