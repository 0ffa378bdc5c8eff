"""analysis.diff and `mmchar diff` / `mmchar runs` on hand-made stores with known numbers."""

from __future__ import annotations

import pandas as pd
import pytest

from mmchar.analysis import diff_table, regressions
from mmchar.cli import main
from mmchar.store import Run, load_runs, write_run

PARAMS = {"height": 512, "width": 512, "frames": None, "steps": 20, "batch": 1, "guidance": 7.5, "seed": 0,
          "prompt": "a cat"}


def run(run_id, *, backend="flash", created="2025-01-01T12:00:00", e2e=1000.0, step=40.0, conv=400.0, attn=100.0,
        profile_steps=2, status="ok", height=512):
    meta = {"run_id": run_id, "created": created, "status": status, "error": None, "workload": "sd15",
            "preset": "full", "backend": backend, "config_hash": "abc123",
            "config": {"params": dict(PARAMS, height=height)}, "device": {"type": "cuda", "name": "H100"},
            "passes": {"profile_steps": profile_steps},
            "timings": {"e2e": {"median_ms": e2e, "min_ms": e2e, "max_ms": e2e, "n": 3},
                        "denoiser_step": {"median_ms": step, "min_ms": step, "max_ms": step, "n": 60}}}
    # breakdown time is summed over the profiled steps; the text encoder runs once
    bd = pd.DataFrame([("denoiser", "conv", "", conv * profile_steps, 0.8, 1, 0.0, 0.0),
                       ("denoiser", "attention", "spatial", attn * profile_steps, 0.2, 1, 0.0, 0.0),
                       ("text_encoder", "gemm", "", 50.0, 1.0, 1, 0.0, 0.0)],
                      columns=["stage", "op_class", "attn_site", "time_us", "share", "calls", "flops", "bytes"])
    k = pd.DataFrame({"stage": ["denoiser", "denoiser"], "step": pd.array([0, 1], dtype="int32"),
                      "module_path": ["unet.mid_block", "unet.mid_block"], "op_class": ["conv", "conv"],
                      "attn_site": ["", ""], "aten_op": ["aten::conv2d"] * 2, "launch_op": ["x"] * 2,
                      "kernel": ["k"] * 2, "ts_us": [0.0, 1.0], "dur_us": [conv, conv], "input_shapes": ["", ""],
                      "flops": [0.0, 0.0], "bytes": [0.0, 0.0]})
    return Run(meta=meta, breakdown=bd if status == "ok" else pd.DataFrame(), kernels=k) if status == "ok" \
        else Run(meta=dict(meta, status=status))


def test_two_runs_diff_by_latency_class_and_module(tmp_path):
    write_run(tmp_path / "a", run("a1"))
    write_run(tmp_path / "b", run("b1", e2e=1100.0, step=40.0, conv=500.0, profile_steps=4))
    d = diff_table(load_runs([tmp_path / "a"]), load_runs([tmp_path / "b"])).set_index(["level", "stage", "key"])
    assert d.loc[("latency", "", "e2e"), "change_pct"] == pytest.approx(10.0)
    assert d.loc[("latency", "", "denoiser_step"), "change_pct"] == pytest.approx(0.0)
    # per profiled step: 400 -> 500 µs although B profiled 4 steps and A 2
    assert d.loc[("class", "denoiser", "conv"), ["a", "b"]].tolist() == [400.0, 500.0]
    assert d.loc[("class", "denoiser", "attention"), "change_pct"] == pytest.approx(0.0)
    assert d.loc[("class", "text_encoder", "gemm"), "a"] == 50.0  # once per generation, not per step
    assert d.loc[("module", "denoiser", "unet.mid_block"), ["a", "b"]].tolist() == [400.0, 250.0]
    bad = regressions(d.reset_index(), 20.0)
    assert list(bad["key"]) == ["conv"]  # +25 %; e2e's +10 % stays under
    assert regressions(d.reset_index(), 30.0).empty


def test_stores_pair_runs_that_ran_the_same_thing(tmp_path):
    for r in (run("a-flash", backend="flash"), run("a-math", backend="math"), run("a-256", height=256),
              run("a-old", backend="flash", created="2024-01-01T00:00:00", e2e=5.0)):
        write_run(tmp_path / "a", r)
    for r in (run("b-flash", backend="flash", e2e=900.0), run("b-math", backend="math"), run("b-oom", height=256,
                                                                                           status="oom")):
        write_run(tmp_path / "b", r)
    d = diff_table(load_runs([tmp_path / "a"]), load_runs([tmp_path / "b"]))
    pairs = set(zip(d["run_a"], d["run_b"]))
    assert pairs == {("a-flash", "b-flash"), ("a-math", "b-math")}  # newest of a side; the oom run pairs with none


def test_cli_diff_gates_and_runs_filters(tmp_path, capsys):
    write_run(tmp_path / "a", run("a1"))
    write_run(tmp_path / "b", run("b1", conv=600.0))
    assert main(["diff", str(tmp_path / "a"), str(tmp_path / "b"), "--fail-above", "60", "-o",
                 str(tmp_path / "d.csv")]) == 0
    assert "no latency or class time regressed" in capsys.readouterr().out
    assert len(pd.read_csv(tmp_path / "d.csv")) > 0
    assert main(["diff", str(tmp_path / "a"), str(tmp_path / "b"), "--fail-above", "20"]) == 1
    err = capsys.readouterr().err
    assert "regressed by more than 20%" in err and "conv +50.0%" in err
    write_run(tmp_path / "c", run("c1", height=256))
    assert main(["diff", str(tmp_path / "a"), str(tmp_path / "c"), "--fail-above", "5"]) == 0  # one run vs one run
    write_run(tmp_path / "b", run("b2", backend="math", status="oom"))
    assert main(["runs", str(tmp_path / "b"), "--status", "oom", "--format", "csv"]) == 0
    out = capsys.readouterr().out
    assert "b2" in out and "b1" not in out
    assert main(["runs", str(tmp_path / "b"), "--status", "broken"]) == 1
