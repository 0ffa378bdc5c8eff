"""analysis.diff and `mmchar diff` / `mmchar runs` on hand-made stores with known numbers."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from mmchar.analysis import diff_table, regressions
from mmchar.analysis.diff import pair_runs, unpaired_runs, work_mismatch
from mmchar.cli import main
from mmchar.errors import InvalidParameterError
from mmchar.store import Run, load_runs, write_run

PARAMS = {"height": 512, "width": 512, "frames": None, "steps": 20, "batch": 1, "guidance": 7.5, "seed": 0,
          "prompt": "a cat"}


def run(run_id, *, backend="flash", created="2025-01-01T12:00:00", e2e=1000.0, step=40.0, conv=400.0, attn=100.0,
        profile_steps=2, status="ok", height=512, workload="sd15", dtype="bf16", device="H100", guidance=7.5,
        config_hash="abc123", e2e_range=(0.0, 0.0), conv_steps=None, text_attn=None):
    """A run of known numbers: ``e2e_range`` (below, above) the median gives the timed samples' min and max;
    ``conv_steps`` the conv kernel time of each profiled denoiser step (default: ``conv`` in steps 0 and 1)."""
    meta = {"run_id": run_id, "created": created, "status": status, "error": None, "workload": workload,
            "preset": "full", "backend": backend, "config_hash": config_hash,
            "config": {"params": dict(PARAMS, height=height, guidance=guidance), "dtype": dtype},
            "device": {"type": "cuda", "name": device}, "passes": {"profile_steps": profile_steps},
            "timings": {"e2e": {"median_ms": e2e, "min_ms": e2e - e2e_range[0], "max_ms": e2e + e2e_range[1], "n": 3},
                        "denoiser_step": {"median_ms": step, "min_ms": step, "max_ms": step, "n": 60}}}
    # breakdown time is summed over the profiled steps; the text encoder runs once
    conv_steps = conv_steps or (conv, conv)
    rows = [("denoiser", "conv", "", conv * profile_steps, 0.8, 1, 0.0, 0.0),
            ("denoiser", "attention", "spatial", attn * profile_steps, 0.2, 1, 0.0, 0.0),
            ("text_encoder", "gemm", "", 50.0, 1.0, 1, 0.0, 0.0)]
    if text_attn is not None:
        rows.append(("text_encoder", "attention", "text", text_attn, 0.5, 1, 0.0, 0.0))
    bd = pd.DataFrame(rows, columns=["stage", "op_class", "attn_site", "time_us", "share", "calls", "flops", "bytes"])
    n = len(conv_steps)
    k = pd.DataFrame({"stage": ["denoiser"] * n, "step": pd.array(range(n), dtype="int32"),
                      "module_path": ["unet.mid_block"] * n, "op_class": ["conv"] * n, "attn_site": [""] * n,
                      "aten_op": ["aten::conv2d"] * n, "launch_op": ["x"] * n, "kernel": ["k"] * n,
                      "ts_us": [float(i) for i in range(n)], "dur_us": [float(c) for c in conv_steps],
                      "input_shapes": [""] * n, "flops": [0.0] * n, "bytes": [0.0] * n})
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
    assert "regressed by more than 20%" in err and "class denoiser conv 400 -> 600 us, +50.0%" in err
    write_run(tmp_path / "c", run("c1", height=256))
    assert main(["diff", str(tmp_path / "a"), str(tmp_path / "c"), "--fail-above", "5"]) == 0  # one run vs one run
    write_run(tmp_path / "b", run("b2", backend="math", status="oom"))
    assert main(["runs", str(tmp_path / "b"), "--status", "oom", "--format", "csv"]) == 0
    out = capsys.readouterr().out
    assert "b2" in out and "b1" not in out
    assert main(["runs", str(tmp_path / "b"), "--status", "broken"]) == 1
    capsys.readouterr()
    # a misspelt workload or backend names what the runs hold (it answered "0 runs"); a known one with no run
    # here is an answer
    assert main(["runs", str(tmp_path / "b"), "--backend", "mathh"]) == 1
    assert "valid backends in these runs: flash, math" in capsys.readouterr().err
    assert main(["runs", str(tmp_path / "b"), "--workload", "sdxl", "--format", "csv"]) == 0
    capsys.readouterr()
    assert main(["diff", str(tmp_path / "a"), str(tmp_path / "a")]) == 0
    assert "1 run(s) on both sides (a1) are compared with themselves" in capsys.readouterr().err


def test_stores_pair_only_runs_that_did_the_same_work(tmp_path):
    """An fp32 run never pairs with an fp16 one; every run left out says why, against the closest run of the
    other side with its workload."""
    later = "2025-02-01T00:00:00"
    for r in (run("a-bf16"), run("a-old", created="2024-01-01T00:00:00"), run("a-fp32", dtype="fp32", height=256),
              run("a-sdxl", workload="sdxl"), run("a-cfg", config_hash="def456", created=later)):
        write_run(tmp_path / "a", r)
    for r in (run("b-bf16"), run("b-fp16", dtype="fp16", height=256), run("b-h200", device="H200", created=later),
              run("b-oom", dtype="fp32", height=256, status="oom")):
        write_run(tmp_path / "b", r)
    a, b = load_runs([tmp_path / "a"]), load_runs([tmp_path / "b"])
    assert [(x.run_id, y.run_id) for x, y in pair_runs(a, b)] == [("a-bf16", "b-bf16")]
    assert set(zip(diff_table(a, b)["run_a"], diff_table(a, b)["run_b"])) == {("a-bf16", "b-bf16")}
    left = unpaired_runs(a, b).set_index(["side", "run_id"])
    assert left.loc[("a", "a-fp32"), ["reason", "closest"]].tolist() == ["dtype fp32 vs fp16", "b-fp16"]
    assert left.loc[("a", "a-sdxl"), "reason"] == "no run of workload sdxl on the other side"
    assert left.loc[("a", "a-old"), "reason"] == ("an older run of the same configuration: the newest, a-bf16, "
                                                  "stands for it")
    assert left.loc[("a", "a-cfg"), "reason"] == "config_hash def456 vs abc123 (model configuration or prompt)"
    # b-h200 differs from a-cfg in the device and the hash, from a-bf16 (newer than a-old) in the device alone
    assert left.loc[("b", "b-h200"), ["reason", "closest"]].tolist() == ["device H200 vs H100", "a-bf16"]
    assert left.loc[("b", "b-oom"), "reason"] == "status oom: only ok runs pair"
    assert len(left) == 7 and left["label"].str.startswith(("sd15", "sdxl")).all()


def test_one_run_against_one_run_pairs_and_names_what_else_differs():
    fp32, fp16 = run("a", dtype="fp32", height=256), run("b", dtype="fp16")
    assert [(x.run_id, y.run_id) for x, y in pair_runs([fp32], [fp16])] == [("a", "b")]
    assert work_mismatch(fp32, fp16) == ("the two runs differ in dtype fp32 vs fp16, height 256 vs 512: the changes "
                                         "are not the code's alone")
    assert work_mismatch(run("a"), run("b", workload="sdxl")).startswith("diff of two different workloads (sd15 vs "
                                                                        "sdxl)")
    assert work_mismatch(run("a"), run("b", e2e=2000.0)) == ""
    assert pair_runs([run("a")], [run("b", status="oom")]) == []


def test_diff_rows_carry_their_unit_and_each_runs_spread():
    a = run("a", e2e=1000.0, e2e_range=(50.0, 150.0), conv_steps=(350.0, 450.0), profile_steps=2)
    b = run("b", e2e=1000.0, conv_steps=(400.0, 400.0, 460.0), conv=420.0, profile_steps=3, text_attn=300.0)
    d = diff_table([a], [b]).set_index(["level", "stage", "key"])
    assert d.loc[("latency", "", "e2e"), ["unit", "spread_a", "spread_b"]].tolist() == ["ms", 200.0, 0.0]
    # the range over the profiled steps of the class's time per step; a stage run once has no measured spread
    assert d.loc[("class", "denoiser", "conv"), ["unit", "spread_a", "spread_b"]].tolist() == ["us", 100.0, 60.0]
    assert math.isnan(d.loc[("class", "text_encoder", "attention"), "spread_b"])
    assert d.loc[("module", "denoiser", "unet.mid_block"), ["unit", "spread_a"]].tolist() == ["us", 100.0]


def test_the_gate_needs_a_change_beyond_both_spreads_and_the_floor():
    a = run("a", e2e=1000.0, e2e_range=(100.0, 100.0), step=0.100, conv_steps=(350.0, 450.0), text_attn=286.0)
    b = run("b", e2e=1100.0, e2e_range=(10.0, 10.0), step=0.120, conv=470.0, conv_steps=(420.0, 520.0),
            attn=200.0, text_attn=322.6)
    d = diff_table([a], [b])
    # e2e +10 % within A's 200 ms spread; a step +20 % but 20 µs; conv +17.5 % = 70 µs within 100 µs of step-to-step
    # spread; the text encoder's 286 µs attention +12.8 % = 37 µs: all noise. Attention +100 % = 100 µs is not.
    bad = regressions(d, 5.0)
    assert list(zip(bad["stage"], bad["key"])) == [("denoiser", "attention")]
    assert set(zip(regressions(d, 5.0, min_us=0.0)["stage"], regressions(d, 5.0, min_us=0.0)["key"])) == {
        ("", "denoiser_step"), ("denoiser", "attention"), ("text_encoder", "attention")}
    d2 = diff_table([a], [run("b2", e2e=1300.0)])  # +300 ms: beyond the 200 ms spread
    assert ("latency", "e2e") in set(zip(regressions(d2, 5.0)["level"], regressions(d2, 5.0)["key"]))


def test_the_gate_refuses_negative_thresholds():
    d = diff_table([run("a")], [run("b")])
    with pytest.raises(InvalidParameterError, match=r"--fail-above -1 is out of range; pass a percentage of 0 or more"):
        regressions(d, -1.0)
    with pytest.raises(InvalidParameterError, match=r"--min-us -5 is out of range"):
        regressions(d, 5.0, min_us=-5.0)


def test_one_outlier_does_not_switch_the_gate_off():
    """A: timed samples 100, 101, 150 ms (median 101, one outlier); B: 120, 121, 122 (+19.8 %). A min-max spread
    (50 ms) would hide the regression; the robust spread (1.5 ms, the noise guard's) does not."""
    from mmchar import noise

    def timed(samples: list[float]) -> dict:
        s = sorted(samples)
        return {"median_ms": s[1], "min_ms": s[0], "max_ms": s[-1], "n": 3, "spread": noise.spread(samples)}

    a, b = run("a"), run("b")
    a.meta["timings"]["e2e"], b.meta["timings"]["e2e"] = timed([100.0, 101.0, 150.0]), timed([120.0, 121.0, 122.0])
    d = diff_table([a], [b]).set_index(["level", "key"])
    assert d.loc[("latency", "e2e"), "spread_a"] == pytest.approx(1.4826 * 1.0)
    bad = regressions(d.reset_index(), 5.0)
    assert ("latency", "e2e") in set(zip(bad["level"], bad["key"]))
