"""The projections table and its finding, on hand-made runs with known answers (a compare group under dense, fp8
and memoryformer, one of which ran out of memory) and on the committed H100 runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mmchar.analysis import TABLES, comparison_table, findings, mechanisms_table, projections_table
from mmchar.analysis.projections import PROJECTION_COLUMNS
from mmchar.store import Run, load_runs, write_run

H100 = {"type": "cuda", "name": "NVIDIA H100 80GB HBM3"}
VIDEO_DIT = {"paradigm": "diffusion", "modality": "video", "task": "text-to-video", "architecture": "dit"}
WAN = {"height": 480, "width": 832, "frames": 81, "steps": 2, "batch": 1}
OP_CLASS = {"dense": "gemm", "fp8": "gemm", "memoryformer": "memory"}
ROOT = Path(__file__).resolve().parents[2]
H100_RUNS = ROOT / "benchmarks" / "results" / "projections" / "h100-2026-12-06" / "runs"


def bd(gemm_us, memory_us, attention_us, rest_us=200.0):
    """The denoiser's breakdown (shares within the stage) and a decoder that must not count."""
    rows = [("denoiser", "gemm", "", gemm_us), ("denoiser", "memory", "", memory_us),
            ("denoiser", "attention", "joint", attention_us), ("denoiser", "elementwise", "", rest_us)]
    total = sum(r[3] for r in rows)
    out = [(s, c, site, t, t / total, 1, 0.0, 0.0) for s, c, site, t in rows if t > 0]
    out.append(("decoder", "gemm", "", 9000.0, 1.0, 1, 0.0, 0.0))
    return pd.DataFrame(out, columns=["stage", "op_class", "attn_site", "time_us", "share", "calls", "flops", "bytes"])


def run(run_id, linear="dense", step_ms=100.0, busy_ms=80.0, gemm_us=400.0, memory_us=100.0, attention_us=300.0,
        backend="cudnn", group="g-wan", baseline="wan-dense", status="ok", layers=(), state_bytes=None,
        compare=True, cosine=None, config_hash=None, params=WAN, workload="wan2.1-1.3b", created="2026-12-06T07:13",
        **extra):
    """One run; ``layers``: layer path -> the backend that ran it (``linear_backend_per_layer``)."""
    meta = {"run_id": run_id, "created": created, "status": status, "workload": workload, "preset": "full",
            "backend": backend, "config_hash": config_hash or run_id[-6:],
            "config": {"params": dict(params), "family": VIDEO_DIT, "dtype": "bf16"}, "device": dict(H100),
            "options": {"backend": backend}, "noise": {"noisy": False, "reasons": []} if status == "ok" else {}}
    if linear is not None:  # None: a run recorded before projection backends
        meta.update(linear_backend=linear, linear_scope="all", linear_op_class=OP_CLASS[linear])
    if status == "ok":
        meta["timings"] = {"e2e": {"median_ms": step_ms * 3}, "denoiser_step": {"median_ms": step_ms}}
        meta["busy"] = {"denoiser_step": {"wall_ms": step_ms, "busy_ms": busy_ms, "busy_frac": busy_ms / step_ms}}
        meta["linear_backend_per_layer"] = dict(layers) or {"blocks.0.ffn": linear or "dense"}
    else:
        meta["error"] = "OutOfMemoryError: CUDA out of memory. Tried to allocate 560.00 MiB."
    if state_bytes is not None:
        meta["linear_state_bytes_total"] = state_bytes
    if compare:
        meta["compare"] = {"group": group, "baseline_run_id": baseline, "baseline_backend": backend,
                           "backends": [backend, f"{backend}+fp8", f"{backend}+memoryformer"],
                           "variant": backend if linear in (None, "dense") else f"{backend}+{linear}"}
        if cosine is not None:
            meta["compare"].update(cosine=cosine, max_abs_diff=1 - cosine, agrees=cosine >= 0.99)
    meta.update(extra)
    return Run(meta=meta, breakdown=bd(gemm_us, memory_us, attention_us) if status == "ok" else pd.DataFrame())


def wan_group(prefix="wan", group="g-wan", **kw):
    """dense (100 ms, busy 80: gemm 40 % of the step's kernels), fp8 (80 ms: gemm 20 %), memoryformer out of memory
    (its tables' bytes not recorded), in compare's run-id order (``+`` sorts before ``-``)."""
    base = f"{prefix}-dense"
    return [
        run(f"{prefix}+fp8", "fp8", 80.0, 72.0, gemm_us=150.0, memory_us=100.0, attention_us=300.0, group=group,
            baseline=base, cosine=0.999, state_bytes=1_500_000_000,
            layers={"blocks.0.ffn": "fp8", "blocks.0.attn": "fp8", "proj_out": "dense"},
            linear_unsupported={"proj_out": "in_features 16 not a multiple of 16"}, **kw),
        run(f"{prefix}+memoryformer", "memoryformer", group=group, baseline=base, status="oom", **kw),
        run(base, "dense", 100.0, 80.0, group=group, baseline=base, cosine=1.0, **kw),
    ]


def test_projections_is_a_study_table():
    assert TABLES["projections"] is projections_table
    assert list(TABLES).index("projections") == list(TABLES).index("mechanisms") + 1


def test_each_projection_backend_against_the_dense_run_with_shares_layers_state_and_an_oom_row(tmp_path):
    sd = [run("sd-dense", "dense", 40.0, 20.0, gemm_us=500.0, memory_us=0.0, attention_us=300.0, group="g-sd",
              baseline="sd-dense", cosine=1.0, workload="sd15", params={"height": 512, "width": 512, "steps": 2}),
          run("sd+memoryformer", "memoryformer", 50.0, 40.0, gemm_us=0.0, memory_us=600.0, attention_us=300.0,
              group="g-sd", baseline="sd-dense", cosine=0.9, state_bytes=17_300_000_000, workload="sd15",
              params={"height": 512, "width": 512, "steps": 2}, layers={"a": "memoryformer", "b": "memoryformer"})]
    for r in [*wan_group(), *sd]:
        write_run(tmp_path / "s", r)
    t = projections_table(load_runs([tmp_path / "s"]))
    assert list(t.columns) == list(PROJECTION_COLUMNS)
    # each group together, its dense run first, then compare's order of the variants
    assert list(t["run_id"]) == ["sd-dense", "sd+memoryformer", "wan-dense", "wan+fp8", "wan+memoryformer"]
    wan = t[t["group"] == "g-wan"].set_index("linear_backend")
    assert list(wan["status"]) == ["ok", "ok", "oom"]
    assert list(wan["variant"]) == ["cudnn", "cudnn+fp8", "cudnn+memoryformer"]
    assert set(wan["backend"]) == {"cudnn"} and set(wan["reference_run_id"]) == {"wan-dense"}
    assert pd.isna(wan.loc["dense", "linear_scope"]) and wan.loc["fp8", "linear_scope"] == "all"
    assert list(wan["linear_op_class"]) == ["gemm", "gemm", "memory"]
    assert wan.loc["fp8", "step_ms"] == 80.0 and wan.loc["fp8", "step_busy_ms"] == 72.0
    assert wan.loc["fp8", "step_speedup"] == 1.25 and wan.loc["fp8", "busy_speedup"] == pytest.approx(80 / 72)
    assert wan.loc["fp8", "busy_frac"] == pytest.approx(0.9)
    # shares of the denoiser's kernel time only (the decoder's 9 ms of gemm do not count)
    assert wan.loc["dense", "gemm_share"] == pytest.approx(0.4) and wan.loc["fp8", "gemm_share"] == pytest.approx(0.2)
    assert wan.loc["fp8", "memory_share"] == pytest.approx(100 / 750)
    assert wan.loc["fp8", "attention_share"] == pytest.approx(0.4) and wan.loc["fp8", "stage"] == "denoiser"
    assert wan.loc["fp8", "layers_replaced"] == 2 and wan.loc["fp8", "layers_unsupported"] == 1
    assert wan.loc["dense", "layers_replaced"] == 0 and wan.loc["dense", "state_gb"] == 0.0
    assert wan.loc["fp8", "state_gb"] == 1.5
    assert wan.loc["fp8", "cosine"] == 0.999 and bool(wan.loc["fp8", "agrees"])
    assert wan.loc["fp8", "agreement_baseline"] == "cudnn"
    # the run that ran out of memory is a row: its status and error, nothing measured, nothing it did not record
    oom = wan.loc["memoryformer"]
    assert oom["status"] == "oom" and "out of memory" in oom["error"]
    assert np.isnan(oom["step_ms"]) and np.isnan(oom["step_speedup"]) and np.isnan(oom["gemm_share"])
    assert pd.isna(oom["layers_replaced"]) and np.isnan(oom["state_gb"]) and pd.isna(oom["agrees"])
    assert oom["reference_run_id"] == "wan-dense"
    sd_mf = t.set_index("run_id").loc["sd+memoryformer"]
    assert sd_mf["step_speedup"] == 0.8 and sd_mf["gemm_share"] == 0.0
    assert sd_mf["memory_share"] == pytest.approx(600 / 1100) and sd_mf["state_gb"] == 17.3
    assert sd_mf["layers_replaced"] == 2 and not sd_mf["agrees"]
    assert t.set_index("run_id").loc["sd-dense", "memory_share"] == 0.0  # a class that did not run: 0, not NaN


def test_an_oom_that_recorded_its_state_keeps_it():
    runs = wan_group()
    runs[1].meta.update(linear_state_bytes_total=30_000_000_000, linear_state_bytes_planned=92_000_000_000)
    t = projections_table(runs).set_index("run_id")
    oom = t.loc["wan+memoryformer"]
    assert oom["state_gb"] == 30.0 and oom["state_needed_gb"] == 92.0 and oom["status"] == "oom"
    assert np.isnan(t.loc["wan+fp8", "state_needed_gb"]) and t.loc["wan-dense", "state_needed_gb"] == 0.0


def test_groups_of_dense_runs_only_give_no_rows_and_the_columns_stay():
    dense_only = [run("a-dense", group="g-a", baseline="a-dense"),
                  run("a-flash", backend="flash", group="g-a", baseline="a-dense"),
                  run("old", None, compare=False)]  # recorded before projection backends: dense
    t = projections_table(dense_only)
    assert t.empty and list(t.columns) == list(PROJECTION_COLUMNS)
    assert list(projections_table([]).columns) == list(PROJECTION_COLUMNS)
    # a group with one non-dense variant brings its dense runs with it
    assert len(projections_table([*dense_only, *wan_group()])) == 3


def test_each_attention_backend_is_measured_against_its_own_dense_run():
    runs = [run("c-dense", group="g", baseline="c-dense", step_ms=100.0),
            run("c+fp8", "fp8", 50.0, 40.0, group="g", baseline="c-dense"),
            run("f-dense", backend="flash", group="g", baseline="c-dense", step_ms=90.0),
            run("f+fp8", "fp8", 60.0, 40.0, backend="flash", group="g", baseline="c-dense")]
    t = projections_table(runs)
    assert list(t["run_id"]) == ["c-dense", "c+fp8", "f-dense", "f+fp8"]
    t = t.set_index("run_id")
    assert t.loc["f+fp8", "reference_run_id"] == "f-dense" and t.loc["f+fp8", "step_speedup"] == 1.5
    assert t.loc["c+fp8", "reference_run_id"] == "c-dense" and t.loc["c+fp8", "step_speedup"] == 2.0
    assert list(t["variant"]) == ["cudnn", "cudnn+fp8", "flash", "flash+fp8"]


def test_a_baseline_that_names_no_group_joins_the_group_that_names_it():
    """As comparison_table reads them: a baseline run whose own meta has no compare entry."""
    fp8, oom, dense = wan_group()
    del dense.meta["compare"]
    t = projections_table([dense, fp8, oom])
    assert list(t["run_id"]) == ["wan-dense", "wan+fp8", "wan+memoryformer"] and set(t["group"]) == {"g-wan"}
    assert t["step_speedup"].iloc[1] == 1.25


def test_profile_runs_outside_a_compare_group_pair_on_their_work():
    """`mmchar profile --linear-backend fp8` beside a plain profile of the same configuration (another config
    hash); a dense run of another shape, or a noisy run, is not their group's reference or is marked."""
    dense = run("p-dense", compare=False, created="2026-12-06T07:00")
    newer = run("p-dense-2", compare=False, created="2026-12-06T08:00", step_ms=90.0)
    fp8 = run("p+fp8", "fp8", 60.0, 50.0, compare=False)
    other = run("q-dense", compare=False, params=dict(WAN, frames=17))
    noisy = run("p+memoryformer", "memoryformer", 120.0, compare=False, noise={"noisy": True, "reasons": ["load"]})
    t = projections_table([dense, fp8, other, newer, noisy])
    assert set(t["run_id"]) == {"p-dense", "p-dense-2", "p+fp8", "p+memoryformer"}
    assert len(set(t["group"])) == 1 and t["group"].iloc[0].startswith("runs-")
    t = t.set_index("run_id")
    assert t.loc["p+fp8", "reference_run_id"] == "p-dense-2"  # the newest dense run
    assert t.loc["p+fp8", "step_speedup"] == 1.5
    assert bool(t.loc["p+memoryformer", "noisy"]) and t.loc["p+memoryformer", "step_speedup"] == 0.75
    assert np.isnan(t.loc["p+fp8", "cosine"]) and pd.isna(t.loc["p+fp8", "agreement_baseline"])


def test_the_other_tables_see_projection_variants_apart():
    """comparison names a variant by both backends, so a dense and an fp8 run never read as one; mechanisms
    compares attention mechanisms, and leaves the projection backends' runs to this table."""
    runs = wan_group()
    assert list(comparison_table(runs)["backend"]) == ["cudnn", "cudnn+fp8", "cudnn+memoryformer"]
    assert list(mechanisms_table(runs)["backend"]) == ["cudnn"]


# --- the finding ------------------------------------------------------------------------------------------------

def _projection_findings(runs):
    f = findings(runs)
    return f[f["question"].str.contains("projection backend")].set_index("question")


def test_the_finding_per_backend_with_speedup_share_change_and_ooms():
    sd = [run("sd-dense", "dense", 40.0, 20.0, group="g-sd", baseline="sd-dense", workload="sd15",
              params={"height": 512, "width": 512, "steps": 2}),
          run("sd+memoryformer", "memoryformer", 50.0, 40.0, gemm_us=0.0, memory_us=600.0, group="g-sd",
              baseline="sd-dense", state_bytes=17_300_000_000, workload="sd15",
              params={"height": 512, "width": 512, "steps": 2})]
    f = _projection_findings([*wan_group(), *sd])
    assert len(f) == 2
    fp8 = f.loc[next(q for q in f.index if "fp8" in q)]
    assert "(gemm kernels)" in fp8.name and "what limits it" in fp8.name
    assert fp8["value"] == 1.25
    assert fp8["answer"] == ("wan2.1-1.3b 480×832, 81 frames (H100, cudnn): 1.25x (100.0 → 80.0 ms): gemm 40.0% → "
                             "20.0% and memory 10.0% → 13.3% of the step's kernel time, GPU busy 80% → 90% of its "
                             "wall time, 1.50 GB of state")
    assert fp8["runs"] == "wan+fp8, wan-dense"
    mf = f.loc[next(q for q in f.index if "memoryformer" in q)]
    assert "(memory kernels)" in mf.name
    assert mf["value"] == 0.8  # the workloads that ran: sd15 only
    assert mf["answer"].startswith("wan2.1-1.3b 480×832, 81 frames (H100, cudnn): out of memory (the state it needed "
                                   "was not recorded); sd15 512×512 (H100, cudnn): 0.80x (40.0 → 50.0 ms): gemm ")
    assert "17.30 GB of state" in mf["answer"]


def test_a_variant_whose_output_was_not_finite_answers_no_speed():
    """Wan's first fp8 run produced NaN latents (zero rows quantised as 0 / 0): its step time is not the same work's,
    so it is named and left out of the speedup."""
    runs = wan_group()
    runs[0].meta["compare"].update(cosine=0.0, max_abs_diff=float("nan"), agrees=False)
    fp8 = _projection_findings(runs).loc[lambda f: f.index.str.contains("fp8")].iloc[0]
    assert fp8["answer"].endswith("its output was not finite (NaN or inf against dense), left out of the speedup")
    assert pd.isna(fp8["value"])
    runs[0].meta["compare"].update(cosine=float("nan"), max_abs_diff=float("inf"))  # an inf output
    fp8 = _projection_findings(runs).loc[lambda f: f.index.str.contains("fp8")].iloc[0]
    assert "not finite" in fp8["answer"] and pd.isna(fp8["value"])
    # a token model's agreement is a token match (no cosine, no difference): its speed stands
    runs[0].meta["compare"]["max_abs_diff"] = float("nan")
    runs[0].meta["compare"].update(cosine=float("nan"), token_match=0.998)
    fp8 = _projection_findings(runs).loc[lambda f: f.index.str.contains("fp8")].iloc[0]
    assert fp8["value"] == 1.25 and "not finite" not in fp8["answer"]


def test_an_oom_with_recorded_state_and_all_backends_out_of_memory():
    runs = [r for r in wan_group() if r.run_id != "wan+fp8"]
    runs[0].meta.update(linear_state_bytes_total=61_000_000_000, linear_state_bytes_planned=92_100_000_000)
    f = _projection_findings(runs)
    (question, row), = f.iterrows()
    assert row["answer"].endswith("out of memory drawing 92.1 GB of state (61.0 GB drawn when it ran out)")
    assert pd.isna(row["value"])


def test_the_share_questions_ask_the_model_with_its_own_linear_layers():
    """A video DiT's attention share comes from the dense run alone: fp8's step (attention 40 % of its kernels
    against dense's 30 %) is another model's."""
    f = findings(wan_group()).set_index("question")
    row = f.loc["Share of attention in a video diffusion-transformer denoiser step"]
    assert row["answer"] == "30.0%" and row["runs"] == "wan-dense"


def test_no_projection_finding_without_projection_variants_and_noisy_runs_answer_none():
    dense_only = [run("a-dense", group="g-a", baseline="a-dense"),
                  run("a-flash", backend="flash", group="g-a", baseline="a-dense")]
    assert _projection_findings(dense_only).empty
    runs = wan_group()
    runs[0].meta["noise"] = {"noisy": True, "reasons": ["load"]}  # the fp8 run: left out, the OOM stays
    f = _projection_findings(runs)
    assert len(f) == 1 and "memoryformer" in f.index[0]


# --- the committed H100 runs --------------------------------------------------------------------------------------

@pytest.mark.skipif(not H100_RUNS.is_dir(), reason="needs the repository's committed projection runs")
def test_the_committed_h100_projection_runs():
    runs = load_runs([H100_RUNS])
    t = projections_table(runs)
    assert list(t["variant"]) == ["cudnn", "cudnn+fp8", "cudnn+memoryformer"] * 2
    assert list(t["workload"]) == ["sd15"] * 3 + ["wan2.1-1.3b"] * 3
    assert list(t["status"]) == ["ok"] * 5 + ["oom"]
    t = t.set_index(["workload", "linear_backend"])
    # the same step latency and speedups as compare's own tables (runs/comparisons/*.csv)
    cmp = pd.concat([pd.read_csv(p) for p in sorted((H100_RUNS / "comparisons").glob("*.csv"))])
    for _, c in cmp[cmp["status"] == "ok"].iterrows():
        row = t[t["run_id"] == c["run_id"]].iloc[0]
        assert row["step_ms"] == pytest.approx(c["denoiser_step_ms"])
        assert row["step_speedup"] == pytest.approx(c["step_speedup"])
    assert t.loc[("sd15", "fp8"), "step_speedup"] == pytest.approx(0.2655, abs=1e-4)
    assert t.loc[("wan2.1-1.3b", "fp8"), "step_speedup"] == pytest.approx(0.7927, abs=1e-4)
    assert t.loc[("sd15", "memoryformer"), "state_gb"] == pytest.approx(17.283, abs=1e-3)
    assert t.loc[("sd15", "memoryformer"), "layers_replaced"] == 184
    # the Memory Layer's lookups are memory kernels: the step's gemm share goes, its memory share grows
    assert t.loc[("sd15", "memoryformer"), "memory_share"] > 0.5 > t.loc[("sd15", "dense"), "memory_share"]
    oom = t.loc[("wan2.1-1.3b", "memoryformer")]
    assert oom["status"] == "oom" and np.isnan(oom["step_ms"]) and "out of memory" in oom["error"]
    f = _projection_findings(runs)
    assert len(f) == 2
    assert "wan2.1-1.3b 480×832, 81 frames (H100, cudnn): out of memory" in \
        f.loc[next(q for q in f.index if "memoryformer" in q), "answer"]
    assert "sd15 512×512 (H100, cudnn): 0.27x" in f.loc[next(q for q in f.index if "fp8" in q), "answer"]
