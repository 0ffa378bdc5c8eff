"""CUDA-path attribution on the CPU, against a real GPU trace with known content (as HTA tests its analyses on
committed traces).

benchmarks/data/sd15-full-flash-h100.trace.json.gz is the full profile of an H100 run: SD 1.5, full preset, 512 px,
batch 1 with guidance (UNet batch 2), bf16, flash attention swapped into the UNet (text encoder and VAE unswapped:
PyTorch's own SDPA choice), two profiled denoising steps. mmchar recorded that run, attributed, in
benchmarks/results/core/runs/sd15-flash-*/ (schema 1: its ``scheduler`` stage is today's ``host``); its
kernels.parquet holds the same 3108 kernels with the same times. The literals below come from that run's
breakdown.csv and meta.json; the tests check them against both the trace and the committed files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mmchar.attribution import attribute
from mmchar.schema import OP_CLASSES
from mmchar.scopes import compile_site_rules
from mmchar.store import load_run
from mmchar.trace import parse_trace

REPO = Path(__file__).resolve().parents[1]
TRACE = REPO / "benchmarks" / "data" / "sd15-full-flash-h100.trace.json.gz"
RUNS = REPO / "benchmarks" / "results" / "core" / "runs"

# the denoiser's op-class shares of GPU busy time (committed breakdown.csv, rounded to 6 places)
DENOISER_SHARES = {"conv": 0.466245, "norm": 0.146159, "attention": 0.137788, "gemm": 0.119044,
                   "elementwise": 0.109290, "memory": 0.021474}
# its attention time by site (spatial 3209.212 µs, cross 396.201 µs over the two steps)
DENOISER_SITES = {"spatial": 0.890109, "cross": 0.109891}
# kernels per stage (the committed meta.json's `busy` counts the same per stage: denoiser 1155 a step)
KERNELS = {"denoiser": 2310, "decoder": 349, "text_encoder": 400, "host": 49}
# SD 1.5's self-attention layers per step by (query tokens, head dim) at 512 px: 64x64 latents, 8 heads
SPATIAL_LAYERS = {(4096, 40): 5, (1024, 80): 5, (256, 160): 5, (64, 160): 1}


@pytest.fixture(scope="module")
def h100():
    if not TRACE.exists():
        pytest.fail(f"{TRACE} is missing: it is committed with the repository")
    trace = parse_trace(TRACE)
    # the rules a profiled sd15 run attributes with (sd15 adds none of its own: the built-in ones)
    att = attribute(trace, compile_site_rules())
    return trace, att


@pytest.fixture(scope="module")
def committed():
    runs = sorted(RUNS.glob("sd15-flash-*"))
    assert len(runs) == 1, f"expected the one committed sd15 flash run under {RUNS}, found {runs}"
    return load_run(runs[0])


def _denoiser(att):
    return att.breakdown[att.breakdown["stage"] == "denoiser"]


def test_the_trace_is_read_as_a_cuda_trace(h100, committed):
    trace, att = h100
    k = att.kernels
    assert trace.on_gpu and trace.n_events == 31482 and len(k) == 3108
    assert k.groupby("stage", observed=True).size().to_dict() == KERNELS
    den = k[k["stage"] == "denoiser"]
    assert den.groupby("step").size().to_dict() == {0: 1155, 1: 1155}
    assert set(k.loc[k["stage"] != "denoiser", "step"]) == {-1}
    busy = committed.meta["busy"]
    assert busy["denoiser_step"]["kernels"] == 1155 and busy["decoder"]["kernels"] == KERNELS["decoder"]
    assert busy["text_encoder"]["kernels"] == KERNELS["text_encoder"]


def test_denoiser_shares_and_attention_split(h100, committed):
    _, att = h100
    for bd in (_denoiser(att), committed.breakdown[committed.breakdown["stage"] == "denoiser"]):
        shares = bd.groupby("op_class")["share"].sum().to_dict()
        assert shares == pytest.approx(DENOISER_SHARES, abs=5e-6)
        attn = bd[bd["op_class"] == "attention"].set_index("attn_site")["time_us"]
        assert (attn / attn.sum()).to_dict() == pytest.approx(DENOISER_SITES, abs=5e-6)
    # the attention time a step, as the run recorded it
    den = att.kernels[(att.kernels["stage"] == "denoiser") & (att.kernels["op_class"] == "attention")]
    per_step = den.groupby("step")["dur_us"].sum()
    assert per_step.mean() == pytest.approx(committed.meta["attention_time_us_per_step"], rel=1e-9)


def test_every_kernel_has_a_class(h100):
    _, att = h100
    classes = set(att.kernels["op_class"].astype(str))
    assert classes <= set(OP_CLASSES) and "other" not in classes and "" not in classes
    assert att.unmatched == []


def test_attention_cores_whatever_kernel_ran_them(h100):
    """An attention-core scope (the swapped UNet) or an SDPA op (the unswapped text encoder and VAE) makes its
    kernels attention, whatever they are called: FlashAttention-2's split-KV kernels, cuDNN's kernel and its
    workspace memset, the memory-efficient kernel."""
    _, att = h100
    k = att.kernels
    a = k[k["op_class"] == "attention"]
    den = a[a["stage"] == "denoiser"]
    assert den["kernel"].astype(str).str.contains("pytorch_flash::flash_fwd").all()
    paths = den["module_path"].astype(str)
    assert set(den.loc[paths.str.endswith(".attn1"), "attn_site"]) == {"spatial"}
    assert set(den.loc[paths.str.endswith(".attn2"), "attn_site"]) == {"cross"}
    assert paths.str.endswith((".attn1", ".attn2")).all() and paths.nunique() == 32  # 16 transformer blocks
    te = a[a["stage"] == "text_encoder"]
    assert len(te) == 48 and set(te["attn_site"]) == {"text"}
    names = te["kernel"].astype(str)
    assert (names == "Memset (Device)").sum() == 24 and names.str.startswith("cudnn_generated_fort_native_sdpa").sum() == 24
    dec = a[a["stage"] == "decoder"]
    assert len(dec) == 1 and dec["kernel"].astype(str).str.startswith("fmha_cutlassF").all()
    assert set(dec["attn_site"]) == {"spatial"}


def test_projections_carry_their_attention_site(h100):
    """The q/k/v/out projections of the UNet's attention modules stay gemm and carry the module's site."""
    _, att = h100
    k = att.kernels
    g = k[(k["stage"] == "denoiser") & (k["op_class"] == "gemm")]
    sited = g[g["attn_site"].astype(str) != ""]
    assert sited.groupby("attn_site", observed=True).size().to_dict() == {"spatial": 128, "cross": 128}  # 16 x 4 x 2
    leaf = sited["module_path"].astype(str).str.rsplit(".", n=1).str[-1]
    assert set(leaf) <= {"to_q", "to_k", "to_v", "0"}  # to_out.0


def test_attention_flops_follow_the_formula(h100):
    """Self-attention FLOPs of the denoiser from the scopes' shapes: 4·B·H·Sq·Skv·D per call (conventions.md),
    B = 2 (guidance), H = 8, over SD 1.5's sixteen self-attention layers, two steps."""
    _, att = h100
    bd = _denoiser(att).set_index(["op_class", "attn_site"])
    expected = 2 * sum(n * 4 * 2 * 8 * s * s * d for (s, d), n in SPATIAL_LAYERS.items())
    assert bd.loc[("attention", "spatial"), "flops"] == pytest.approx(expected, rel=1e-12)


def test_breakdown_and_kernels_match_the_committed_run(h100, committed):
    """Today's attribution of the trace is, row for row, what mmchar recorded for the run. A change to the
    taxonomy or the site rules that moves any kernel of this trace fails here: if it is meant, the committed run is
    re-attributed with it and the literals above are updated from its breakdown.csv."""
    _, att = h100
    key = ["stage", "op_class", "attn_site"]
    ours = att.breakdown.astype({c: str for c in key}).set_index(key).sort_index()
    theirs = committed.breakdown.astype({c: str for c in key}).set_index(key).sort_index()
    assert ours.index.tolist() == theirs.index.tolist()
    assert (ours["calls"] == theirs["calls"]).all()
    for col in ("time_us", "share", "flops", "bytes"):
        a, b = (pd.to_numeric(t[col], errors="coerce").to_numpy(float) for t in (ours, theirs))
        np.testing.assert_allclose(a, b, rtol=1e-9, equal_nan=True, err_msg=col)
    cols = ["stage", "step", "module_path", "op_class", "attn_site", "aten_op", "kernel"]
    mine = att.kernels.sort_values(["ts_us", "kernel"], kind="stable").reset_index(drop=True)
    rec = committed.kernels.sort_values(["ts_us", "kernel"], kind="stable").reset_index(drop=True)
    assert len(mine) == len(rec)
    np.testing.assert_allclose(mine["dur_us"], rec["dur_us"], rtol=0, atol=0)
    for c in cols:
        differ = mine[c].astype(str) != rec[c].astype(str)
        assert not differ.any(), (c, mine.loc[differ, cols].head(3).to_dict("records"),
                                  rec.loc[differ, cols].head(3).to_dict("records"))
    np.testing.assert_allclose(mine["flops"], rec["flops"], rtol=1e-9, equal_nan=True)
