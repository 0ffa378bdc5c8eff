"""The read side needs no torch: trace -> attribution -> store -> analysis -> dashboards import none, and
`mmchar analyze` / `export` / `study` / `dashboard` run where torch cannot be imported (a laptop reading a GPU
machine's stores). Every profiler label's writer and reader live in `mmchar.scopes`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TRACE = REPO / "benchmarks" / "data" / "sd15-full-flash-h100.trace.json.gz"


@pytest.fixture(scope="module")
def no_torch(tmp_path_factory):
    """An environment where ``import torch`` fails: a package of that name first on the path that refuses."""
    root = tmp_path_factory.mktemp("no-torch")
    (root / "torch").mkdir()
    (root / "torch" / "__init__.py").write_text('raise ImportError("torch is not installed here")\n')

    def mmchar(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-P", "-m", "mmchar", *map(str, args)], capture_output=True, text=True,
                              env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin", "HOME": str(root)})

    return mmchar


def test_the_read_side_imports_no_torch():
    code = ("import sys\nimport mmchar.trace, mmchar.attribution, mmchar.analyze, mmchar.store, mmchar.analysis, "
            "mmchar.dashboards, mmchar.cli.commands\nprint('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr


@pytest.mark.skipif(not TRACE.exists(), reason="needs the committed H100 trace")
def test_analyze_study_export_and_dashboard_run_without_torch(no_torch, tmp_path):
    store = tmp_path / "store"
    done = no_torch("analyze", TRACE, "--store", store)
    assert done.returncode == 0, done.stderr
    assert "attention" in done.stdout and "conv" in done.stdout
    for args in (["export", store, "-o", tmp_path / "b.csv"], ["dashboard", store, "-o", tmp_path / "r.html"],
                 ["study", store, "-o", tmp_path / "study"], ["advise", store, "--target-gpu", "h200"],
                 ["runs", store, "--workload", "sd16"]):  # a name no run holds: the registries import torch
        done = no_torch(*args)
        assert done.returncode == 0, (args, done.stderr)
    assert (tmp_path / "b.csv").stat().st_size and (tmp_path / "study" / "findings.md").is_file()
    # and the measuring side says what it lacks in one line, not a traceback
    done = no_torch("profile", "sd15", "--store", tmp_path / "s")
    assert done.returncode == 1 and "Traceback" not in done.stderr and "torch is not installed here" in done.stderr


def test_each_label_reads_back_what_was_written():
    from mmchar import scopes

    label = scopes.attention_label("cross", "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2", "flash",
                                   (2, 8, 4096, 40), 77, 40, False, 2)
    call = scopes.parse_attention_label(label)
    assert (call.site, call.backend, call.b, call.h, call.sq, call.skv, call.d, call.dv, call.causal, call.elem) == (
        "cross", "flash", 2, 8, 4096, 77, 40, 40, False, 2)
    assert call.module_path.endswith("attn2") and call.input_dims() == "[[2, 8, 4096, 40], [2, 8, 77, 40], [2, 8, 77, 40]]"
    assert scopes.attention_label_site(label) == ("cross", call.module_path)
    assert scopes.parse_attention_label("mmchar.attn::cross::m::flash::2,8") is None
    assert scopes.parse_stage_label(scopes.stage_label("denoiser", 0, 1)) == ("denoiser", 0, 1)
    assert scopes.parse_stage_label(scopes.stage_label("decoder", -1, -1)) == ("decoder", -1, -1)
    assert scopes.parse_stage_label("mmchar.stage::denoiser::3") == ("denoiser", 3, -1)  # written before calls
    assert scopes.parse_module_label(scopes.module_label("unet.mid_block")) == "unet.mid_block"
    assert scopes.parse_comm_label(scopes.comm_label("all_to_all", 4096)) == 4096.0
