"""`mmchar advise` end to end: on a CPU tiny run (what applies to a CPU run and what does not), on a committed GPU
run (a ranked table of projections, each with its stated error), its outputs, and its refusals."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pandas as pd
import pytest

from mmchar.cli import main

ROOT = Path(__file__).resolve().parents[2]
SD15_H100 = ROOT / "benchmarks" / "results" / "projections" / "h100-2026-12-06" / "runs" / "sd15-cudnn-20261206-070847-d49cf9"


def cli(args: list) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def cpu_store(tmp_path_factory):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as tests/cli/test_cli.py: a busy small CPU slows the profile down at random
    try:
        store = tmp_path_factory.mktemp("advise") / "store"
        code, out, err = cli(["profile", "sd15", "--preset", "tiny", "--steps", "3", "--repeat", "1", "--store", store])
    finally:
        torch.set_num_threads(before)
    assert code == 0, err
    return store


def test_a_cpu_run_is_advised_on_what_applies_to_it(cpu_store, tmp_path):
    code, out, err = cli(["advise", cpu_store, "--format", "json", "-o", tmp_path / "a.json"])
    assert code == 0, err
    rows = json.loads(out)
    kinds = {r["kind"]: r for r in rows}
    for kind in ("cuda-graphs", "channels-last", "fp8", "attention", "gpu"):
        assert kinds[kind]["projected_step_ms"] is None and "CPU run" in kinds[kind]["model"], kind
    cache = kinds["step-cache"]
    assert cache["rank"] == 1 and cache["projected_step_ms"] < cache["step_ms"]
    # sd15 is a UNet: no cache hook runs on it here, and the ±2 % check was a DiT's First Block Cache
    assert cache["error"].startswith("unvalidated (no step cache runs on this denoiser")
    assert json.loads((tmp_path / "a.json").read_text()) == rows
    code, out, err = cli(["advise", cpu_store])
    assert code == 0 and "CPU run" not in err and "projections, not measurements" in out and "step-cache" in out


@pytest.mark.skipif(not SD15_H100.is_dir(), reason="needs the committed H100 runs")
def test_a_committed_gpu_run_gets_a_ranked_table_with_stated_errors(tmp_path):
    code, out, err = cli(["advise", SD15_H100, "--target-gpu", "h200", "-o", tmp_path / "a.csv"])
    assert code == 0, err
    lines = out.splitlines()
    assert "sd15 cudnn" in lines[0] and "denoiser_step 34.29 ms" in lines[0]
    first = next(line for line in lines if line.strip().startswith("1 "))
    assert "--cuda-graphs" in first  # host-bound: the graph (alone or combined) is the first thing to try
    table = pd.read_csv(tmp_path / "a.csv")
    shown = table[table["projected_step_ms"].notna()]
    assert shown["error"].str.match(r"^(±[\d.]+ %|unvalidated)").all()
    assert (table["kind"] == "gpu").sum() == 1 and table["inputs"].notna().any()


def test_an_unknown_target_gpu_is_one_line_naming_the_valid_ones(cpu_store):
    code, out, err = cli(["advise", cpu_store, "--target-gpu", "h300"])
    assert code == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "h300" in err and "h100-sxm" in err and "b200" in err and not out


def test_bad_values_are_refused_before_reading(cpu_store, tmp_path):
    code, _, err = cli(["advise", cpu_store, "--skip-fraction", "1.5"])
    assert code == 1 and "--skip-fraction" in err
    code, _, err = cli(["advise", cpu_store, "--bench", tmp_path / "nothing"])
    assert code == 1 and "bench-attn" in err
    code, _, err = cli(["advise", cpu_store, "--format", "xml"])
    assert code == 1 and "xml" in err
