"""The mechanisms table, the bench-attn crossover table and the fastest-mechanism finding, on hand-made runs and
tables with known answers."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mmchar.analysis import TABLES, crossover_table, findings, load_bench, mechanisms_table
from mmchar.analysis.mechanisms import KINDS, LINEAR, LOCAL_LINEAR, OTHER, RECURRENCE, SOFTMAX, crossover, run_kind
from mmchar.cli import main
from mmchar.errors import MmcharError
from mmchar.store import Run, load_runs, write_run

H100 = {"type": "cuda", "name": "NVIDIA H100 80GB HBM3"}
VIDEO_DIT = {"paradigm": "diffusion", "modality": "video", "task": "text-to-video", "architecture": "dit"}
WAN = {"height": 480, "width": 832, "frames": 81, "steps": 50, "batch": 1}
QUESTION = "Fastest attention mechanism for a 480p, 81-frame video diffusion-transformer denoiser step"
# the registry's class attributes as meta.json holds them
RECORDED = {"cudnn": {"backend_changes_math": False, "backend_mechanism": "softmax"},
            "flash": {"backend_changes_math": False, "backend_mechanism": "softmax"},
            "mlstm": {"backend_changes_math": True, "backend_mechanism": "recurrence"},
            "rwkv7": {"backend_changes_math": True, "backend_mechanism": "recurrence"},
            "lla": {"backend_changes_math": True, "backend_mechanism": "local linear"}}


def bd(stage, attention_us, rest_us):
    """A step stage's breakdown: attention and gemm kernel time (shares within the stage)."""
    total = attention_us + rest_us
    return pd.DataFrame([(stage, "attention", "joint", attention_us, attention_us / total, 1, 0.0, 0.0),
                         (stage, "gemm", "", rest_us, rest_us / total, 1, 0.0, 0.0),
                         ("decoder", "conv", "", 5000.0, 1.0, 1, 0.0, 0.0)],
                        columns=["stage", "op_class", "attn_site", "time_us", "share", "calls", "flops", "bytes"])


def run(run_id, backend, step_ms, attention_us=500.0, rest_us=500.0, group=None, baseline=None, baseline_backend="cudnn",
        workload="wan2.1-1.3b", params=WAN, family=VIDEO_DIT, token=False, device=H100, **extra):
    """One run of a compare group (``baseline``: the group's baseline run id; None: the baseline itself)."""
    step = "generator_step" if token else "denoiser_step"
    meta = {"run_id": run_id, "created": "2025-01-01T12:00:00", "status": "ok", "workload": workload,
            "preset": "full", "backend": backend, "config_hash": "abc",
            "config": {"params": dict(params), "family": family, "dtype": "bf16"}, "device": dict(device),
            "timings": {"e2e": {"median_ms": step_ms * 60}, step: {"median_ms": step_ms}},
            **RECORDED.get(backend, {})}
    if group is not None and baseline is not None:
        meta["compare"] = {"group": group, "baseline_run_id": baseline, "baseline_backend": baseline_backend}
    meta.update(extra)
    return Run(meta=meta, breakdown=bd("generator" if token else "denoiser", attention_us, rest_us))


def wan_group(mlstm_ms=50.0, flash_ms=80.0, prefix="", group="g-wan", **kw):
    """cuDNN (the baseline, 100 ms, attention 60 % of the step), mLSTM (attention 20 %) and flash (50 %)."""
    base = f"{prefix}cudnn"
    return [run(base, "cudnn", 100.0, 600.0, 400.0, **kw),
            run(f"{prefix}mlstm", "mlstm", mlstm_ms, 100.0, 400.0, group=group, baseline=base, **kw),
            run(f"{prefix}flash", "flash", flash_ms, 400.0, 400.0, group=group, baseline=base, **kw)]


def test_mechanisms_is_a_study_table():
    assert TABLES["mechanisms"] is mechanisms_table
    assert list(TABLES).index("mechanisms") == list(TABLES).index("comparison") + 1


def test_each_backend_of_a_group_with_its_step_attention_share_kind_and_speedup_over_cudnn(tmp_path):
    # a second group whose baseline is flash and that has no cuDNN run: its baseline is the reference
    other = [run("a-flash", "flash", 40.0, workload="a"),
             run("a-lla", "lla", 20.0, 100.0, 300.0, group="g-a", baseline="a-flash", baseline_backend="flash",
                 workload="a")]
    for r in [*wan_group(), *other]:
        write_run(tmp_path / "s", r)
    t = mechanisms_table(load_runs([tmp_path / "s"]))
    assert sorted(t["run_id"]) == ["a-flash", "a-lla", "cudnn", "flash", "mlstm"]
    assert list(t.loc[t["group"] == "g-wan", "run_id"])[0] == "cudnn"  # each group together, its reference first
    assert list(t.loc[t["group"] == "g-a", "run_id"]) == ["a-flash", "a-lla"]
    wan = t[t["group"] == "g-wan"].set_index("backend").loc[["cudnn", "mlstm", "flash"]]
    assert list(wan["step_ms"]) == [100.0, 50.0, 80.0]
    assert wan.loc["mlstm", "step_speedup"] == 2.0 and wan.loc["flash", "step_speedup"] == 1.25
    assert wan.loc["cudnn", "step_speedup"] == 1.0
    assert wan["attention_share"].tolist() == pytest.approx([0.6, 0.2, 0.5])  # of the denoiser stage only
    assert list(wan["kind"]) == [SOFTMAX, RECURRENCE, SOFTMAX]
    assert set(wan["reference_run_id"]) == {"cudnn"} and set(wan["reference_backend"]) == {"cudnn"}
    assert set(wan["stage"]) == {"denoiser"} and set(wan["device"]) == {"NVIDIA H100 80GB HBM3"}
    assert (wan["height"] == 480).all() and (wan["frames"] == 81).all()
    a = t[t["group"] == "g-a"].set_index("backend")
    assert a.loc["lla", "step_speedup"] == 2.0 and a.loc["lla", "reference_backend"] == "flash"
    assert a.loc["lla", "kind"] == LOCAL_LINEAR and a.loc["lla", "attention_share"] == pytest.approx(0.25)


def test_untrusted_runs_take_no_part_and_a_group_without_its_reference_has_no_speedup():
    cudnn, mlstm, flash = wan_group()
    noisy = run("noisy", "rwkv7", 10.0, group="g-wan", baseline="cudnn", noise={"noisy": True, "reasons": ["x"]})
    compiled = run("compiled", "rwkv7", 10.0, group="g-wan", baseline="cudnn", options={"compile": True})
    split = run("split", "rwkv7", 10.0, group="g-wan", baseline="cudnn", options={"sequence_parallel": 2})
    failed = run("failed", "rwkv7", 10.0, group="g-wan", baseline="cudnn", status="oom")
    t = mechanisms_table([cudnn, mlstm, flash, noisy, compiled, split, failed])
    assert list(t["run_id"]) == ["cudnn", "mlstm", "flash"]
    cudnn.meta["noise"] = {"noisy": True, "reasons": ["load"]}  # the reference itself flagged: no speedup
    t = mechanisms_table([cudnn, mlstm, flash])
    assert list(t["run_id"]) == ["mlstm", "flash"] and t["step_speedup"].isna().all()
    assert t["reference_run_id"].isna().all()


def test_a_token_model_is_measured_by_its_generator_step():
    base = run("lg-cudnn", "cudnn", 30.0, 100.0, 900.0, workload="llamagen", token=True)
    lg = run("lg-flash", "flash", 24.0, 50.0, 900.0, group="g-lg", baseline="lg-cudnn", workload="llamagen",
             token=True)
    t = mechanisms_table([base, lg]).set_index("run_id")
    assert t.loc["lg-flash", "step_ms"] == 24.0 and t.loc["lg-flash", "step_speedup"] == 1.25
    assert t.loc["lg-flash", "stage"] == "generator"
    assert t.loc["lg-cudnn", "attention_share"] == pytest.approx(0.1)


def test_no_comparison_gives_the_columns_and_no_rows():
    t = mechanisms_table([run("alone", "cudnn", 10.0)])
    assert t.empty and "kind" in t.columns and "step_speedup" in t.columns
    assert mechanisms_table([]).columns.tolist() == t.columns.tolist()


def test_kind_is_the_mechanism_the_run_recorded():
    assert run_kind({"backend_changes_math": True, "backend_mechanism": "recurrence"}) == RECURRENCE
    assert run_kind({"backend_changes_math": True, "backend_mechanism": "linear attention"}) == LINEAR
    # runs from before the field: softmax unless the maths changed
    assert run_kind({"backend_changes_math": False}) == SOFTMAX
    assert run_kind({"backend_changes_math": True}) == OTHER
    # a softmax backend in place of SANA's own linear attention: the run says the maths changed, the backend is softmax
    assert run_kind({"backend_changes_math": True, "math_changed_layers": {"blocks.0.attn1": "..."}}) == SOFTMAX
    assert run_kind({}) == SOFTMAX  # schema 1 recorded neither attribute


def test_mechanisms_of_the_registered_backends():
    """The registry's values are the table's kinds, and a run of each backend records its own."""
    from mmchar.backends import MECHANISMS, backend_names, get_backend

    assert set(MECHANISMS) == set(KINDS) - {OTHER}
    assert {get_backend(n).mechanism for n in backend_names()} <= set(MECHANISMS)
    kinds = {name: get_backend(name).mechanism for name in ("math", "flash", "cudnn", "mlstm", "rwkv7", "lla",
                                                             "linear", "wersa")}
    assert kinds == {"math": SOFTMAX, "flash": SOFTMAX, "cudnn": SOFTMAX, "mlstm": RECURRENCE, "rwkv7": RECURRENCE,
                     "lla": LOCAL_LINEAR, "linear": LINEAR, "wersa": LINEAR}


# --- the finding ------------------------------------------------------------------------------------------------

def test_the_fastest_mechanism_of_a_480p_81_frame_video_dit_step(tmp_path):
    runs = wan_group()
    # another shape of the same model, where flash wins: not 480p / 81 frames, so not asked
    runs += wan_group(mlstm_ms=500.0, prefix="f17-", group="g-17", params=dict(WAN, frames=17))
    # an image DiT at 480 px: not video
    runs += wan_group(mlstm_ms=10.0, prefix="img-", group="g-img", family=dict(VIDEO_DIT, modality="image"),
                      workload="pixart")
    for r in runs:
        write_run(tmp_path / "s", r)
    row = findings(load_runs([tmp_path / "s"])).set_index("question").loc[QUESTION]
    assert row["answer"] == "mlstm: 2.00x over cudnn (wan2.1-1.3b)"
    assert row["value"] == 2.0 and row["runs"] == "mlstm, cudnn"


def test_the_fastest_mechanism_per_model_and_against_the_baseline_without_cudnn():
    runs = wan_group(mlstm_ms=40.0)
    big = [run("14b-flash", "flash", 900.0, workload="wan2.1-14b"),
           run("14b-rwkv7", "rwkv7", 600.0, group="g-14b", baseline="14b-flash", baseline_backend="flash",
               workload="wan2.1-14b")]
    row = findings(runs + big).set_index("question").loc[QUESTION]
    assert row["answer"] == "mlstm: 2.50x over cudnn (wan2.1-1.3b); rwkv7: 1.50x over flash (wan2.1-14b)"
    assert row["value"] == 2.0  # the median over the two workloads
    assert row["runs"] == "mlstm, cudnn, 14b-rwkv7, 14b-flash"


def test_cudnn_itself_can_be_the_fastest_and_no_runs_is_not_covered():
    slow = wan_group(mlstm_ms=150.0, flash_ms=101.0)
    row = findings(slow).set_index("question").loc[QUESTION]
    assert row["answer"] == "cudnn: 1.00x over cudnn (wan2.1-1.3b)" and row["runs"] == "cudnn"
    lone = findings([slow[0]]).set_index("question").loc[QUESTION]  # one backend compares nothing
    assert lone["answer"] == "not covered by these runs" and lone["runs"] == ""


# --- bench-attn crossover ---------------------------------------------------------------------------------------

def _bench_rows(mixer_ms):
    """Sweep rows at d = 64 (non-causal and causal): cuDNN at 1 ms per 1k tokens squared, the mixer as given."""
    rows = []
    for causal in (False, True):
        for s, ms in zip((1024, 2048, 4096, 8192), mixer_ms[causal]):
            for backend, t in (("cudnn", (s / 1024) ** 2 * 0.1), ("mlstm", ms)):
                rows.append({"name": f"sweep{' causal' if causal else ''} d64 S{s // 1024}k", "b": 1, "h": 32,
                             "sq": s, "skv": s, "d": 64, "causal": causal, "backend": backend, "ms": t,
                             "tflops": None, "note": ""})
    rows.append({"name": "wan2.1-1.3b self", "b": 1, "h": 12, "sq": 32760, "skv": 32760, "d": 128, "causal": False,
                 "backend": "mlstm", "ms": 1.0, "tflops": None, "note": ""})
    return rows


def _write_bench(path, device, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"device": {"type": "cuda", "name": device}, "rows": rows}))


def test_crossover_table_per_device_backend_and_head_dim(tmp_path):
    # H100: mLSTM wins from 4k on (a lucky win at 1k does not count), never causal; H200: from 2k
    _write_bench(tmp_path / "h100" / "attention.json", "H100",
                 _bench_rows({False: (0.05, 0.5, 1.0, 2.0), True: (9.0, 9.0, 9.0, 9.0)}))
    _write_bench(tmp_path / "h200.json", "H200",
                 _bench_rows({False: (0.5, 0.3, 1.0, 2.0), True: (9.0, 9.0, 9.0, None)}))
    bench = load_bench([tmp_path / "h100", tmp_path / "h200.json"])  # a folder holding one, and a file
    assert list(bench.columns) == ["device", "name", "b", "h", "sq", "skv", "d", "causal", "backend", "ms"]
    assert set(bench["device"]) == {"H100", "H200"} and bench["ms"].isna().sum() == 1
    t = crossover_table(bench)
    assert list(t.columns) == ["device", "backend", "d", "causal", "crossover_s"]
    got = {(dev, bool(c)): (None if pd.isna(s) else int(s)) for dev, c, s in zip(t["device"], t["causal"],
                                                                                t["crossover_s"])}
    assert got == {("H100", False): 4096, ("H100", True): None, ("H200", False): 2048, ("H200", True): None}
    assert set(t["backend"]) == {"mlstm"} and set(t["d"]) == {64}  # not cuDNN against itself; sweep rows only
    assert crossover(bench[bench["device"] == "H100"], "mlstm") == {"d=64": 4096, "d=64 causal": None}


def test_bench_attn_prints_the_same_crossover():
    from mmchar import bench_attn
    from mmchar.analysis import mechanisms

    assert bench_attn.crossover is mechanisms.crossover  # one definition


def test_load_bench_refuses_what_is_not_a_bench_table(tmp_path):
    with pytest.raises(MmcharError, match="no bench-attn table"):
        load_bench([tmp_path])
    (tmp_path / "x.json").write_text(json.dumps({"rows": [{"name": "sweep d64 S1k"}]}))
    with pytest.raises(MmcharError, match="not a bench-attn table"):
        load_bench([tmp_path / "x.json"])
    assert load_bench([]).empty


def test_study_writes_crossover_csv_only_with_bench(tmp_path):
    for r in wan_group():
        write_run(tmp_path / "s", r)
    _write_bench(tmp_path / "b" / "attention.json", "H100",
                 _bench_rows({False: (0.5, 0.5, 1.0, 2.0), True: (9.0, 9.0, 9.0, 9.0)}))
    assert main(["study", str(tmp_path / "s"), "-o", str(tmp_path / "plain")]) == 0
    assert not (tmp_path / "plain" / "crossover.csv").exists()
    mech = pd.read_csv(tmp_path / "plain" / "mechanisms.csv")
    assert mech.set_index("backend")["step_speedup"].to_dict() == {"cudnn": 1.0, "mlstm": 2.0, "flash": 1.25}
    assert mech["backend"].iloc[0] == "cudnn"
    assert main(["study", str(tmp_path / "s"), "-o", str(tmp_path / "out"), "--bench", str(tmp_path / "b")]) == 0
    cross = pd.read_csv(tmp_path / "out" / "crossover.csv")
    assert cross.to_dict("records")[0] == {"device": "H100", "backend": "mlstm", "d": 64, "causal": False,
                                           "crossover_s": 4096}
    assert np.isnan(cross["crossover_s"].iloc[1])  # causal: never
    assert "mlstm: 2.00x over cudnn (wan2.1-1.3b)" in (tmp_path / "out" / "findings.md").read_text()
    assert main(["study", str(tmp_path / "s"), "-o", str(tmp_path / "bad"), "--bench", str(tmp_path / "nope")]) == 1
    assert not (tmp_path / "bad").exists()  # refused before anything is written


def test_share_questions_ask_about_the_model_not_a_swapped_mixer():
    """A mixer run's "attention" is the mixer: the video DiT's attention share and the busy share come from the
    softmax runs alone, while the fastest-mechanism question still sees every backend."""
    table = findings(wan_group()).set_index("question")
    share = table.loc["Share of attention in a video diffusion-transformer denoiser step"]
    assert share["runs"] == "cudnn, flash"  # not mlstm's 20 %
    assert share["value"] == pytest.approx(0.55)  # the median of cudnn's 60 % and flash's 50 %
    assert table.loc[QUESTION, "runs"] == "mlstm, cudnn"


def test_runs_under_channels_last_or_cuda_graphs_take_no_part():
    """`sdpa+cuda-graphs` is a host saving, not an attention mechanism: runs under a runtime mode are left out as
    compiled ones are."""
    cudnn, mlstm, flash = wan_group()
    graphs = run("graphs", "rwkv7", 10.0, group="g-wan", baseline="cudnn", options={"cuda_graphs": True})
    cl = run("cl", "rwkv7", 10.0, group="g-wan", baseline="cudnn", options={"channels_last": True})
    eager = run("eager", "rwkv7", 10.0, group="g-wan", baseline="cudnn", options={"channels_last": False})
    t = mechanisms_table([cudnn, mlstm, flash, graphs, cl, eager])
    assert list(t["run_id"]) == ["cudnn", "mlstm", "flash", "eager"]
