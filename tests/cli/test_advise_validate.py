"""`mmchar advise --validate`: a tiny CPU run's top opportunities measured for real (channels-last runs on the CPU,
CUDA graphs are refused there with their reason, step caching is listed as not runnable), the validating run doing
the source's work with only the option changed, validation.csv, and the measured column `mmchar advise` reads back;
which opportunities are picked, how an option becomes ProfileOptions fields, and what cannot run, with why."""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
from pathlib import Path

import pandas as pd
import pytest

from mmchar.analysis import advice_table
from mmchar.analysis.advise import ADVICE_COLUMNS, VALIDATION_COLUMNS, read_validation, with_measured
from mmchar.cli import main
from mmchar.store import load_run
from mmchar.validate import (Change, NotRunnable, Opportunity, against_baseline, measure, parse_option, pick,
                             plan_change)


def cli(args: list) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def profiled(store: Path) -> Path:
    """A real tiny CPU run (one timed generation of 2 steps, no trace): what the end-to-end test validates."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as tests/cli/test_cli.py: a busy small CPU slows the profile down at random
    try:
        code, out, err = cli(["profile", "sd15", "--preset", "tiny", "--steps", "2", "--repeat", "1", "--no-trace",
                              "--store", store])
    finally:
        torch.set_num_threads(before)
    assert code == 0, err
    (run,) = [p for p in store.iterdir() if p.is_dir()]
    return run


@pytest.fixture
def cpu_run(tmp_path) -> Path:
    """A stored CPU run of sd15 tiny with its real resolved configuration and options but made-up timings: what
    the planning, refusal and failure tests need, without a profile's seconds in each test worker."""
    from mmchar.api import run_config_hash
    from mmchar.devices import resolve_device
    from mmchar.runner import ProfileOptions, base_meta, new_run_id
    from mmchar.store import Run, write_run
    from mmchar.workloads import get_workload

    config = get_workload("sd15").resolve("tiny", device="cpu", steps=2)
    options = ProfileOptions(repeat=1, keep_trace=False)
    h = run_config_hash(config, options)
    meta = base_meta(config, resolve_device("cpu"), options, new_run_id("sd15", "sdpa", h), h)
    meta.update(timings={"e2e": {"median_ms": 30.0}, "denoiser_step": {"median_ms": 10.0}},
                busy={"denoiser_step": {"wall_ms": 10.0, "busy_ms": 7.0, "kernels": 1600}}, passes={"steps": 2})
    return write_run(tmp_path / "store", Run(meta=meta))


def test_a_cpu_run_validates_channels_last_and_lists_what_cannot_run(tmp_path, one_thread_points):
    cpu_run = profiled(tmp_path / "store")
    code, out, err = cli(["advise", "--validate", cpu_run, "--top", "3", "--format", "json",
                          "-o", tmp_path / "advice.json"])
    assert code == 0, err
    assert "Traceback" not in err
    rows = {r["kind"]: r for r in json.loads(out)}
    # the unchanged work first (measured again beside the options), then rank 1, then options the CPU may run
    assert list(rows) == ["baseline", "step-cache", "channels-last", "cuda-graphs"]
    base = rows["baseline"]
    assert base["status"] == "measured" and base["option"] == "(unchanged)" and base["measured_step_ms"] > 0
    # its "projection" is the source's step: the error is the drift (the JSON rounds each number to 10 decimals)
    assert math.isclose(base["error_pct"], (base["step_ms"] - base["measured_step_ms"]) / base["measured_step_ms"]
                        * 100, rel_tol=1e-6, abs_tol=1e-6)
    assert load_run(cpu_run.parent / "validate" / base["validating_run"], kernels=False).meta["options"] == \
        load_run(cpu_run, kernels=False).meta["options"]
    cache = rows["step-cache"]
    assert cache["status"] == "not runnable" and "DeepCache" in cache["why"] and cache["rank"] == 1
    assert cache["projected_step_ms"] < cache["step_ms"] and cache["measured_step_ms"] is None
    graphs = rows["cuda-graphs"]
    assert graphs["status"] == "refused" and "device cpu launches none" in graphs["why"]
    assert "\n" not in graphs["why"] and graphs["validating_run"] is None
    cl = rows["channels-last"]
    assert cl["status"] == "measured" and cl["measured_step_ms"] > 0 and cl["projected_step_ms"] is None
    assert cl["baseline_step_ms"] == base["measured_step_ms"] and cl["ratio_error_pct"] is None  # nothing projected

    # the validating run: in the store's validate/ folder, the source's work with only channels-last changed
    source = load_run(cpu_run, kernels=False).meta
    folder = cpu_run.parent / "validate" / cl["validating_run"]
    meta = load_run(folder, kernels=False).meta
    assert meta["status"] == "ok" and not meta.get("sweep")
    assert meta["options"] == {**source["options"], "channels_last": True}
    drop = lambda c: {k: v for k, v in c.items() if k not in ("family", "sources")}  # noqa: E731
    assert drop(meta["config"]) == drop(source["config"])
    assert meta["config"]["params"]["seed"] == source["config"]["params"]["seed"]
    assert meta["channels_last"]["converted"] == ["vae", "unet"]
    assert math.isclose(meta["timings"]["denoiser_step"]["median_ms"], cl["measured_step_ms"])

    table = pd.read_csv(cpu_run.parent / "validate" / "validation.csv")
    assert list(table.columns) == list(VALIDATION_COLUMNS)
    assert list(table["kind"]) == ["baseline", "step-cache", "channels-last", "cuda-graphs"]
    assert set(table["run_id"]) == {source["run_id"]}
    written = pd.read_json(tmp_path / "advice.json").set_index("option")  # -o: the advice, measured column too
    assert math.isclose(written.loc["--channels-last", "measured_step_ms"], cl["measured_step_ms"])
    assert written["measured_step_ms"].notna().sum() == 1

    # `mmchar advise` on the store finds the table in its validate/ folder: the measured column
    code, out, err = cli(["advise", cpu_run.parent, "--format", "json"])
    assert code == 0, err
    advice = {r["option"]: r for r in json.loads(out)}
    assert math.isclose(advice["--channels-last"]["measured_step_ms"], cl["measured_step_ms"])
    assert advice["--channels-last"]["validating_run"] == cl["validating_run"]
    assert all(r["measured_step_ms"] is None for o, r in advice.items() if o != "--channels-last")
    code, out, err = cli(["advise", cpu_run.parent])
    # the header may wrap ("measured" / "step ms") where a noisy run's longer cells widen the table
    numbers = [float(t) for t in re.findall(r"(?<![\w.])\d+\.\d+(?![\w.])", out)]  # the table prints 10.0, not 10.00
    assert code == 0 and "measured" in out and any(abs(x - cl["measured_step_ms"]) < 0.006 for x in numbers)


def test_options_become_profile_options_fields():
    assert parse_option("--channels-last --cuda-graphs").fields == {"channels_last": True, "cuda_graphs": True}
    assert parse_option("--backend flash --cuda-graphs").fields == {"backend": "flash", "cuda_graphs": True}
    assert parse_option("--linear-backend fp8").fields == {"linear_backend": "fp8"}
    assert parse_option("--target-gpu h200") == Change({}, "h200")
    for option, kind, why in (("cache 3 of 10 steps", "step-cache", "DeepCache"),
                              ("--backend", "attention", "without a value"),
                              ("--target-gpu", "gpu", "without a value"),
                              ("--warp-speed", "combined", "no option"), ("", "none", "names no option")):
        with pytest.raises(NotRunnable, match=why):
            parse_option(option, kind)


def test_a_combination_sets_both_options_in_the_validating_command(cpu_run, tmp_path):
    from mmchar.validate import profile_command

    run = load_run(cpu_run, kernels=False)
    plan, point = plan_change(run, parse_option("--channels-last --backend math"), tmp_path)
    cmd = profile_command(plan, point, tmp_path)
    assert cmd[cmd.index("--backend") + 1] == "math" and "--channels-last" in cmd and "--sweep-point" not in cmd
    assert cmd[cmd.index("--seed") + 1] == "0" and cmd[cmd.index("--steps") + 1] == "2"
    assert cmd[cmd.index("--prompt") + 1] == run.meta["config"]["params"]["prompt"]
    assert point.config == run.meta["config"]  # the source's resolved configuration, nothing else changed
    assert cmd[cmd.index("--repeat") + 1] == "1" and "--no-trace" in cmd
    # and a combination the device refuses is refused as a whole, with the refusing option's reason
    with pytest.raises(Exception, match="--cuda-graphs"):
        plan_change(run, parse_option("--channels-last --cuda-graphs"), tmp_path)


def advice(rows: list[dict]) -> pd.DataFrame:
    base = {"run_id": "r", "step_key": "denoiser_step", "step_ms": 10.0, "error": "unvalidated (x)"}
    t = pd.DataFrame([{**base, **r} for r in rows], columns=list(ADVICE_COLUMNS))
    t["rank"] = pd.array([r.get("rank") for r in rows], dtype="Int64")
    return t


def test_the_top_opportunities_are_the_ranked_ones_then_what_the_run_can_measure():
    t = advice([{"rank": 2, "kind": "fp8", "option": "--linear-backend fp8", "projected_step_ms": 9.0},
                {"rank": 1, "kind": "combined", "option": "--channels-last --cuda-graphs", "projected_step_ms": 5.0},
                {"rank": 3, "kind": "step-cache", "option": "cache 3 of 10 steps", "projected_step_ms": 7.0},
                {"rank": None, "kind": "channels-last", "option": "--channels-last"},  # ran it already
                {"rank": None, "kind": "attention", "option": "--backend"},  # names no backend
                {"rank": None, "kind": "cuda-graphs", "option": "--cuda-graphs"}])
    picked = pick(t, {"channels_last": True}, top=5)
    assert [o.row["option"] for o in picked] == ["--channels-last --cuda-graphs", "--linear-backend fp8",
                                                 "cache 3 of 10 steps", "--cuda-graphs"]
    assert picked[2].change is None and "DeepCache" in picked[2].why
    assert [o.row["option"] for o in pick(t, {}, top=2)] == ["--channels-last --cuda-graphs", "--linear-backend fp8"]


def test_another_gpu_is_measured_only_on_that_gpu(cpu_run, tmp_path):
    run = load_run(cpu_run, kernels=False)
    cuda = type(run)(meta={**run.meta, "device": {"type": "cuda", "name": "NVIDIA H100 80GB HBM3"}}, path=run.path)
    opp = Opportunity({"kind": "gpu", "option": "--target-gpu h200", "projected_step_ms": 8.0, "step_ms": 10.0},
                      parse_option("--target-gpu h200"))
    ran = []
    row = measure(cuda, opp, tmp_path, here=lambda: "NVIDIA H100 80GB HBM3", runner=lambda *a, **k: ran.append(a))
    assert row["status"] == "not runnable" and "needs the other GPU" in row["why"] and "H200" in row["why"]
    assert "NVIDIA H100" in row["why"] and not ran
    row = measure(run, opp, tmp_path, here=lambda: None, runner=lambda *a, **k: ran.append(a))
    assert row["status"] == "not runnable" and "CPU run" in row["why"] and not ran


def test_a_failed_validating_run_is_a_row_of_its_status_and_fails_the_command(cpu_run, tmp_path, monkeypatch):
    from mmchar import sweep

    def killed(plan, point, store, command=None):
        return sweep.record_dead_child(plan, point, store, -9, "Killed", oom=True)

    monkeypatch.setattr(sweep, "run_point", killed)
    code, out, err = cli(["advise", "--validate", cpu_run, "--top", "2", "--store", tmp_path / "v", "--format", "csv"])
    assert code == 1 and "Traceback" not in err
    rows = pd.read_csv(io.StringIO(out))
    cl = rows[rows["kind"] == "channels-last"].iloc[0]
    assert cl["status"] == "oom" and "exited with code -9" in cl["why"] and math.isnan(cl["measured_step_ms"])
    assert (tmp_path / "v" / cl["validating_run"]).is_dir() and (tmp_path / "v" / "validation.csv").is_file()
    # a table in another store is read when named; the default places do not hold it
    code, out, err = cli(["advise", cpu_run, "--validated", tmp_path / "v", "--format", "json"])
    assert code == 0, err


def test_the_measured_column_is_nan_where_no_run_measured_the_option():
    t = advice([{"rank": 1, "kind": "cuda-graphs", "option": "--cuda-graphs", "projected_step_ms": 5.0},
                {"rank": 2, "kind": "fp8", "option": "--linear-backend fp8", "projected_step_ms": 9.0}])
    v = pd.DataFrame([{"run_id": "r", "option": "--cuda-graphs", "measured_step_ms": 6.5, "validating_run": "a"},
                      {"run_id": "r", "option": "--cuda-graphs", "measured_step_ms": 6.0, "validating_run": "b"},
                      {"run_id": "other", "option": "--linear-backend fp8", "measured_step_ms": 1.0}])
    out = with_measured(t, v)
    assert out["measured_step_ms"].iloc[0] == 6.0 and out["validating_run"].iloc[0] == "b"  # the latest stands
    assert math.isnan(out["measured_step_ms"].iloc[1]) and pd.isna(out["validating_run"].iloc[1])
    assert "measured_step_ms" in advice_table([]).columns


def test_validate_refusals_are_one_line_errors(cpu_run, tmp_path):
    import shutil

    for name in ("a", "b"):
        shutil.copytree(cpu_run, tmp_path / "two" / name)
    for args, why in ((["advise", cpu_run, "--top", "2"], "--top applies with --validate"),
                      (["advise", cpu_run, "--store", tmp_path], "--store applies with --validate"),
                      (["advise", "--validate", cpu_run, "--top", "0"], "at least one"),
                      (["advise", "--validate", tmp_path / "two"], "holds 2 runs"),
                      (["advise", cpu_run, "--validated", tmp_path / "none.csv"], "holds no validation.csv")):
        code, out, err = cli(args)
        assert code == 1 and why in err and "Traceback" not in err, (args, err)
    with pytest.raises(Exception, match="not a validation table"):
        (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
        read_validation([tmp_path / "bad.csv"], strict=True)


ROOT = Path(__file__).resolve().parents[2]
SD15_H100 = ROOT / "benchmarks" / "results" / "projections" / "h100-2026-12-06" / "runs" / "sd15-cudnn-20261206-070847-d49cf9"


@pytest.mark.skipif(not SD15_H100.is_dir(), reason="needs the committed H100 runs")
def test_a_gpu_run_on_a_machine_without_its_gpu_lists_every_opportunity_with_why(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the opportunities would run")
    code, out, err = cli(["advise", "--validate", SD15_H100, "--top", "4", "--target-gpu", "h200",
                          "--store", tmp_path, "--format", "json"])
    assert code == 0 and "Traceback" not in err, err
    base, *rows = json.loads(out)
    assert base["kind"] == "baseline" and base["status"] == "not runnable" and "H100" in base["why"]
    assert len(rows) == 4 and [r["rank"] for r in rows] == [1, 2, 3, 4]
    assert all(r["status"] == "not runnable" and r["why"] for r in rows)
    assert all(r["measured_step_ms"] is None and r["validating_run"] is None for r in rows)
    assert not [p for p in tmp_path.iterdir() if p.is_dir()]  # nothing ran
    why = {r["kind"]: r["why"] for r in rows}
    assert "measured on an NVIDIA H100 80GB HBM3; this machine has no CUDA device" in why["cuda-graphs"]
    assert "DeepCache" in why["step-cache"]


def test_a_later_attempt_without_a_measurement_loses_no_result(tmp_path):
    """Re-validating on a machine that refuses the option (or a one-off OOM) must not replace a measured row."""
    from mmchar.validate import write_validation

    def row(measured, status, run="v1"):
        return {c: None for c in VALIDATION_COLUMNS} | {
            "run_id": "src", "kind": "channels-last", "option": "--channels-last", "status": status,
            "measured_step_ms": measured, "validating_run": run if measured is not None else None}

    write_validation(tmp_path, pd.DataFrame([row(8.5, "measured")]))
    write_validation(tmp_path, pd.DataFrame([row(None, "refused")]))
    table = read_validation([tmp_path])
    assert list(table["status"]) == ["measured"] and table["measured_step_ms"].iloc[0] == 8.5
    write_validation(tmp_path, pd.DataFrame([row(7.5, "measured", "v2")]))  # a new measurement does replace it
    table = read_validation([tmp_path])
    assert list(table["validating_run"]) == ["v2"]
    advice = pd.DataFrame([{c: None for c in ADVICE_COLUMNS} | {"run_id": "src", "option": "--channels-last"}])
    both = pd.concat([table, pd.DataFrame([row(None, "error")])], ignore_index=True)  # a later failure elsewhere
    assert with_measured(advice, both)["measured_step_ms"].iloc[0] == 7.5
    (tmp_path / "validation.csv").write_text("not, a\n\x00table")
    with pytest.raises(Exception):
        write_validation(tmp_path, pd.DataFrame([row(None, "refused")]))


def test_each_option_is_read_against_the_baseline_measured_again():
    """A drift both measurements share cancels in the ratio: the source ran at 20 ms, the unchanged work measures
    25 ms now, the option 12.5 ms; projected 10 ms is -20 % against the option's step, exact as a ratio."""
    def row(kind, projected, measured, status="measured"):
        return {"kind": kind, "step_ms": 20.0, "projected_step_ms": projected, "measured_step_ms": measured,
                "status": status, "baseline_step_ms": float("nan"), "ratio_error_pct": float("nan")}

    rows = against_baseline([row("baseline", 20.0, 25.0), row("cuda-graphs", 10.0, 12.5),
                             row("channels-last", float("nan"), 11.0), row("fp8", 9.0, float("nan"), "oom")])
    assert [r["baseline_step_ms"] for r in rows] == [25.0] * 4
    assert math.isnan(rows[0]["ratio_error_pct"])  # the baseline against itself says nothing
    assert math.isclose(rows[1]["ratio_error_pct"], 0.0, abs_tol=1e-9)
    assert math.isnan(rows[2]["ratio_error_pct"]) and math.isnan(rows[3]["ratio_error_pct"])
    # a projection 20 % too optimistic as a ratio says so whatever the drift
    (b, o) = against_baseline([row("baseline", 20.0, 30.0), row("fp8", 8.0, 15.0)])
    assert math.isclose(o["ratio_error_pct"], (0.4 / 0.5 - 1) * 100)
    # without a measured baseline nothing is read against one
    (b, o) = against_baseline([row("baseline", 20.0, float("nan"), "oom"), row("fp8", 8.0, 15.0)])
    assert math.isnan(o["baseline_step_ms"]) and math.isnan(o["ratio_error_pct"])


def test_a_caches_mean_step_is_read_against_the_baselines_mean():
    """A step cache is measured by its mean step: its ratio divides by the baseline's mean, not its median."""
    base = {"kind": "baseline", "step_ms": 20.0, "projected_step_ms": 20.0, "measured_step_ms": 20.0,
            "status": "measured", "_stats": {"median_ms": 20.0, "mean_ms": 24.0}}
    cache = {"kind": "step-cache", "step_ms": 20.0, "projected_step_ms": 14.0, "measured_step_ms": 16.8,
             "status": "measured"}
    graphs = {"kind": "cuda-graphs", "step_ms": 20.0, "projected_step_ms": 10.0, "measured_step_ms": 10.0,
              "status": "measured"}
    _, c, g = against_baseline([base, cache, graphs])
    assert c["baseline_step_ms"] == 24.0 and math.isclose(c["ratio_error_pct"], ((14 / 20) / (16.8 / 24) - 1) * 100)
    assert g["baseline_step_ms"] == 20.0 and math.isclose(g["ratio_error_pct"], 0.0, abs_tol=1e-9)
