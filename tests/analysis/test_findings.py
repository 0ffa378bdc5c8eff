"""The findings summary and `mmchar study` on hand-made runs with known answers."""

from __future__ import annotations

import pandas as pd

from mmchar.analysis import findings, findings_markdown
from mmchar.cli import main
from mmchar.store import Run, load_runs, write_run

FAMILY = {"paradigm": "diffusion", "modality": "image", "task": "text-to-image", "architecture": "unet"}


def bd(rows):
    return pd.DataFrame(rows, columns=["stage", "op_class", "attn_site", "time_us", "share", "calls", "flops", "bytes"])


def run(run_id, backend, family, breakdown, step_ms=10.0, compare=None, busy_frac=None, workload="w", **extra):
    meta = {"run_id": run_id, "created": "2025-01-01", "status": "ok", "workload": workload, "preset": "full",
            "backend": backend, "config": {"params": {"height": 512}, "family": family},
            "timings": {"e2e": {"median_ms": 100.0}, "denoiser_step": {"median_ms": step_ms}}}
    if busy_frac is not None:  # a GPU run (a CPU run's busy share says nothing)
        meta["device"] = {"type": "cuda", "name": "H100"}
        meta["busy"] = {"denoiser_step": {"wall_ms": step_ms, "busy_ms": step_ms * busy_frac,
                                          "idle_ms": step_ms * (1 - busy_frac), "busy_frac": busy_frac}}
    if compare:
        meta["compare"] = compare
    meta.update(extra)
    return Run(meta=meta, breakdown=breakdown)


def on(device, dtype, height=512):
    """The meta of a run on ``device`` (a CUDA device's full name) in ``dtype`` at ``height``."""
    return {"device": {"type": "cuda", "name": device},
            "config": {"params": {"height": height}, "family": FAMILY, "dtype": dtype}}


def test_a_swept_workload_counts_once(tmp_path):
    """Three points of one workload's sweep and one run of another: the answer is the median over the two
    workloads (the sweep's own median, 30 %, and 90 %), not over the four runs (35 %)."""
    den = bd([("denoiser", "conv", "", 600.0, 0.6, 1, 0, 0)])
    runs = [run(f"a{i}", "flash", FAMILY, den, busy_frac=b, workload="a") for i, b in enumerate((0.2, 0.3, 0.4))]
    runs.append(run("b", "flash", FAMILY, den, busy_frac=0.9, workload="b"))
    f = findings(runs).set_index("question")
    busy = f.loc["GPU busy share of a denoiser step or generated token's wall time"]
    assert busy["value"] == 0.6 and busy["answer"] == "60% (median of 2 workloads: 30% to 90%), from 4 runs"
    assert busy["runs"] == "a0, a1, a2, b"


def test_findings_answer_what_the_runs_cover_and_say_what_they_do_not(tmp_path):
    den = bd([("denoiser", "conv", "", 600.0, 0.6, 1, 0, 0), ("denoiser", "attention", "spatial", 400.0, 0.4, 1, 0, 0)])
    video = dict(FAMILY, modality="video", task="text-to-video")
    vid = bd([("denoiser", "attention", "temporal", 300.0, 0.3, 1, 0, 0),
              ("denoiser", "attention", "spatial", 100.0, 0.1, 1, 0, 0),
              ("denoiser", "conv", "", 600.0, 0.6, 1, 0, 0)])
    cmp = {"group": "g", "baseline_run_id": "m", "baseline_backend": "math"}
    dit = dict(FAMILY, architecture="dit")
    dit_bd = bd([("denoiser", "conv", "", 10.0, 0.01, 1, 0, 0), ("denoiser", "attention", "joint", 540.0, 0.54, 1, 0, 0),
                 ("denoiser", "gemm", "", 450.0, 0.45, 1, 0, 0)])
    runs = [run("m", "math", FAMILY, den, step_ms=30.0), run("f", "flash", FAMILY, den, step_ms=10.0, compare=cmp,
                                                             busy_frac=0.3),
            run("v", "flash", video, vid, busy_frac=0.9, workload="wv"), run("d", "cudnn", dit, dit_bd),
            run("dv", "sdpa", dict(video, architecture="dit"), dit_bd)]
    for r in runs:
        write_run(tmp_path / "s", r)
    f = findings(load_runs([tmp_path / "s"])).set_index("question")
    conv = f.loc["Share of conv in a UNet text-to-image denoiser step after flash attention"]
    assert conv["answer"] == "60.0%" and conv["runs"] == "f"  # the math run is not "after flash attention"
    dit_conv = f.loc["Share of conv in a diffusion-transformer (DiT) text-to-image denoiser step after flash attention"]
    assert dit_conv["answer"] == "1.0%" and dit_conv["runs"] == "d"  # DiTs are asked apart from UNets
    assert f.loc["Share of attention in a video diffusion-transformer denoiser step", "runs"] == "dv"
    busy = f.loc["GPU busy share of a denoiser step or generated token's wall time"]
    assert busy["answer"] == "60% (median of 2 workloads: 30% to 90%)" and busy["runs"] == "f, v"
    speed = f.loc["Step speedup of flash attention over unfused attention, diffusion models"]
    assert speed["value"] == 3.0 and speed["runs"] == "f"
    assert f.loc["Share of temporal attention in a video denoiser's attention time", "value"] == 0.75
    assert f.loc["Share of gemm (linear layers) in a transformer text-to-image generation step",
                 "answer"] == "not covered by these runs"
    assert f.loc["Step speedup of flash attention over unfused attention, transformer models",
                 "answer"] == "not covered by these runs"

    out = tmp_path / "study"
    assert main(["study", str(tmp_path / "s"), "-o", str(out)]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"findings.md", "dashboard.html", "breakdown.csv", "roofline.csv", "scaling.csv", "sequence.csv"} <= names
    assert "| Share of temporal attention" in (out / "findings.md").read_text()
    assert len(pd.read_csv(out / "runs.csv")) == 5


def test_compiled_and_sequence_parallel_runs_answer_their_own_questions():
    """Shares come from one-device eager runs only; a compiled run pairs with the eager sdpa run of the same
    configuration, a sequence-parallel run with the one-GPU run."""
    video_dit = dict(FAMILY, modality="video", task="text-to-video", architecture="dit")
    den = bd([("denoiser", "attention", "joint", 500.0, 0.5, 1, 0, 0), ("denoiser", "gemm", "", 500.0, 0.5, 1, 0, 0)])
    skewed = bd([("denoiser", "attention", "joint", 100.0, 0.1, 1, 0, 0),
                 ("denoiser", "communication", "", 900.0, 0.9, 1, 0, 0)])
    eager = run("eager", "sdpa", video_dit, den, step_ms=12.0, busy_frac=0.5)
    eager.meta["busy"]["denoiser_step"]["kernels"] = 1500
    compiled = run("compiled", "sdpa", video_dit, skewed, step_ms=10.0, busy_frac=0.99)
    compiled.meta.update(options={"compile": True})
    compiled.meta["busy"]["denoiser_step"]["kernels"] = 750
    split = run("split", "sdpa", video_dit, skewed, step_ms=8.0, busy_frac=0.99)
    split.meta.update(options={"sequence_parallel": 2}, sequence_parallel={"ranks": 2, "schemes": {"ulysses": 30}})
    for r in (eager, compiled, split):
        r.meta["device"]["name"] = "H100"
    f = findings([eager, compiled, split]).set_index("question")
    assert f.loc["Share of attention in a video diffusion-transformer denoiser step", "runs"] == "eager"
    assert f.loc["GPU busy share of a denoiser step or generated token's wall time", "runs"] == "eager"
    comp = f.loc["Step speedup of torch.compile over the eager model (default SDPA)"]
    assert comp["value"] == 1.2 and comp["runs"] == "compiled" and "2.00x fewer kernels per step" in comp["answer"]
    sp = f.loc["Denoiser step speedup of sequence parallelism over one GPU (best scheme)"]
    assert sp["value"] == 1.5 and sp["runs"] == "split" and "at 2 GPUs (ulysses; efficiency 75%)" in sp["answer"]


def test_compile_pairs_with_the_eager_run_of_its_session_whatever_the_order_of_the_stores():
    """Two eager runs of the same work, weeks apart: the compiled run is measured against the one created nearest
    it (its own session's). The first one listed was taken, so the answer moved with the order of the stores
    (2.32x or 2.24x over the committed H100 runs)."""
    video_dit = dict(FAMILY, modality="video", task="text-to-video", architecture="dit")
    den = bd([("denoiser", "gemm", "", 500.0, 1.0, 1, 0, 0)])
    old = run("old", "sdpa", video_dit, den, step_ms=15.0, created="2026-11-01T10:00:00+00:00")
    same_session = run("eager", "sdpa", video_dit, den, step_ms=12.0, created="2026-11-25T21:40:00+00:00")
    compiled = run("compiled", "sdpa", video_dit, den, step_ms=10.0, created="2026-11-25T21:46:00+00:00",
                   options={"compile": True})
    question = "Step speedup of torch.compile over the eager model (default SDPA)"
    for order in ([old, same_session, compiled], [compiled, same_session, old]):
        assert findings(order).set_index("question").loc[question, "value"] == 1.2


def test_runs_the_noise_guard_flagged_answer_nothing_and_are_named():
    den = bd([("denoiser", "conv", "", 600.0, 0.6, 1, 0, 0)])
    runs = [run("x", "flash", FAMILY, den, busy_frac=0.3),
            run("y", "flash", FAMILY, den, busy_frac=0.9, noise={"noisy": True, "reasons": ["e2e cv 0.4 > 0.1"]}),
            run("z", "flash", FAMILY, den, busy_frac=0.5, noise={"noisy": False, "reasons": []}),
            run("v", "flash", FAMILY, bd([("denoiser", "conv", "", 100.0, 0.1, 1, 0, 0)]), busy_frac=0.1,
                noise={"noisy": True, "reasons": ["2.0 other cores busy"]})]
    f = findings(runs)
    busy = f.set_index("question").loc["GPU busy share of a denoiser step or generated token's wall time"]
    assert busy["value"] == 0.4 and busy["runs"] == "x, z"
    conv = f.set_index("question").loc["Share of conv in a UNet text-to-image denoiser step after flash attention"]
    assert conv["value"] == 0.6 and "v" not in conv["runs"].split(", ")
    last = f.iloc[-1]
    assert last["answer"] == "2 noisy runs left out: y, v" and last["value"] == 2
    assert "2 noisy runs left out: y, v" in findings_markdown(f)
    assert len(findings(runs[:1])) == len(f) - 1  # nothing flagged: no such row


def test_an_answer_says_which_devices_and_dtypes_its_runs_mix():
    den = bd([("denoiser", "conv", "", 600.0, 0.6, 1, 0, 0)])
    runs = [run("h100", "flash", FAMILY, den, busy_frac=0.3, workload="a", **on("NVIDIA H100 80GB HBM3", "bf16")),
            run("h200", "flash", FAMILY, den, busy_frac=0.5, workload="b", **on("NVIDIA H200", "fp32"))]
    f = findings(runs).set_index("question")
    busy = f.loc["GPU busy share of a denoiser step or generated token's wall time", "answer"]
    assert busy == "40% (median of 2 workloads: 30% to 50%) (mixes devices H100, H200; dtypes bf16, fp32)"
    one = findings(runs[:1]).set_index("question")
    assert "mixes" not in one.loc["GPU busy share of a denoiser step or generated token's wall time", "answer"]

    # torch.compile's speedup pairs a compiled run only with an eager run of the same dtype
    eager = run("eager", "sdpa", FAMILY, den, step_ms=12.0, **on("H100", "fp32"))
    compiled = run("compiled", "sdpa", FAMILY, den, step_ms=10.0, options={"compile": True}, **on("H100", "bf16"))
    assert findings([eager, compiled]).set_index("question").loc[
        "Step speedup of torch.compile over the eager model (default SDPA)", "answer"] == "not covered by these runs"


def test_a_sweep_over_math_and_flash_answers_the_flash_question():
    """`mmchar sweep --backends math,flash` at two heights, plus one `mmchar compare`: three speedups (3x, 4x, 2x),
    each run once; a flash point with no math point of its configuration (another dtype) answers nothing."""
    den = bd([("denoiser", "conv", "", 600.0, 0.6, 1, 0, 0)])
    sw = {"sweep": True}
    runs = [run("m512", "math", FAMILY, den, step_ms=30.0, **sw, **on("H100", "bf16")),
            run("f512", "flash", FAMILY, den, step_ms=10.0, **sw, **on("H100", "bf16")),
            run("f512-fp32", "flash", FAMILY, den, step_ms=1.0, **sw, **on("H100", "fp32")),
            run("m1024", "math", FAMILY, den, step_ms=80.0, **sw, **on("H100", "bf16", 1024)),
            run("f1024", "flash", FAMILY, den, step_ms=20.0, **sw, **on("H100", "bf16", 1024)),
            # two lone profiles of one configuration (not a sweep's points): no group of theirs
            run("lone-m", "math", FAMILY, den, step_ms=90.0, **on("H100", "bf16", 2048)),
            run("lone-f", "flash", FAMILY, den, step_ms=10.0, **on("H100", "bf16", 2048))]
    cmp = {"group": "g", "baseline_run_id": "cm", "baseline_backend": "math"}
    runs += [run("cm", "math", FAMILY, den, step_ms=40.0, compare=cmp, **on("H100", "bf16")),
             run("cf", "flash", FAMILY, den, step_ms=20.0, compare=cmp, **on("H100", "bf16"))]
    f = findings(runs).set_index("question")
    speed = f.loc["Step speedup of flash attention over unfused attention, diffusion models"]
    assert speed["value"] == 3.0 and sorted(speed["runs"].split(", ")) == ["cf", "f1024", "f512"]
    assert speed["answer"] == "3.00x, from 3 runs"


def test_runs_under_channels_last_or_cuda_graphs_are_not_eager_runs():
    """The share questions use runs under no runtime mode; compile's speedup pairs a run compiled alone with an
    eager run under no mode (a compile + CUDA graphs run would credit compile with the graphs' saving)."""
    video_dit = dict(FAMILY, modality="video", task="text-to-video", architecture="dit")
    den = bd([("denoiser", "attention", "joint", 500.0, 0.5, 1, 0, 0), ("denoiser", "gemm", "", 500.0, 0.5, 1, 0, 0)])
    other = bd([("denoiser", "attention", "joint", 100.0, 0.1, 1, 0, 0), ("denoiser", "gemm", "", 900.0, 0.9, 1, 0, 0)])
    eager = run("eager", "sdpa", video_dit, den, step_ms=12.0, busy_frac=0.5)
    graphs = run("graphs", "sdpa", video_dit, other, step_ms=6.0, busy_frac=0.99, options={"cuda_graphs": True})
    cl = run("cl", "sdpa", video_dit, other, step_ms=11.0, busy_frac=0.6, options={"channels_last": True})
    compiled = run("compiled", "sdpa", video_dit, other, step_ms=10.0, busy_frac=0.9, options={"compile": True})
    both = run("both", "sdpa", video_dit, other, step_ms=4.0, busy_frac=0.99,
               options={"compile": True, "cuda_graphs": True})
    for r in (eager, graphs, cl, compiled, both):
        r.meta["device"]["name"] = "H100"
    f = findings([graphs, cl, both, compiled, eager]).set_index("question")
    assert f.loc["Share of attention in a video diffusion-transformer denoiser step", "runs"] == "eager"
    assert f.loc["GPU busy share of a denoiser step or generated token's wall time", "runs"] == "eager"
    comp = f.loc["Step speedup of torch.compile over the eager model (default SDPA)"]
    assert comp["value"] == 1.2 and comp["runs"] == "compiled"
    # with only moded runs, the share questions are not covered
    f = findings([graphs, cl, both]).set_index("question")
    share = f.loc["Share of attention in a video diffusion-transformer denoiser step"]
    assert share["answer"] == "not covered by these runs" and share["runs"] == ""
    assert f.loc["Step speedup of torch.compile over the eager model (default SDPA)", "runs"] == ""


def test_the_routing_share_of_a_moe_denoiser_is_asked_of_runs_with_moe_layers(tmp_path):
    """Only runs that record mixture-of-experts layers answer it; the share is of the step stage's kernel time."""
    dit = dict(FAMILY, architecture="dit")
    moe = bd([("denoiser", "gemm", "", 700.0, 0.7, 1, 0, 0), ("denoiser", "routing", "", 100.0, 0.1, 1, 0, 0),
              ("denoiser", "attention", "joint", 200.0, 0.2, 1, 0, 0), ("decoder", "conv", "", 900.0, 1.0, 1, 0, 0)])
    dense = bd([("denoiser", "gemm", "", 800.0, 0.8, 1, 0, 0), ("denoiser", "attention", "joint", 200.0, 0.2, 1, 0, 0)])
    question = ("Share of a routed mixture-of-experts denoiser's step in routing (gate, top-k, token dispatch and "
                "combine; random weights route as an untrained gate)")
    write_run(tmp_path / "s", run("d", "cudnn", dit, dense))
    assert findings(load_runs([tmp_path / "s"])).set_index("question").loc[question, "answer"] == \
        "not covered by these runs"
    write_run(tmp_path / "s", run("m", "cudnn", dit, moe, workload="hidream-i1",
                                  moe_layers={"count": 2, "paths": ["transformer.a.ff", "transformer.b.ff"],
                                              "stages": ["denoiser", "denoiser"], "gates": ["gate"],
                                              "experts": ["experts", "shared_experts"],
                                              "containers": {"denoiser": {"experts": "list"}}}))
    # MoE layers only in a text encoder: the step stage's routing is not asked of that run
    write_run(tmp_path / "t", run("te", "cudnn", dit, moe, workload="moe-text",
                                  moe_layers={"count": 1, "paths": ["text_encoder.l.mlp"], "stages": ["text_encoder"],
                                              "gates": ["gate"], "experts": ["experts"],
                                              "containers": {"text_encoder": {"experts": "fused"}}}))
    assert findings(load_runs([tmp_path / "t"])).set_index("question").loc[question, "answer"] == \
        "not covered by these runs"
    row = findings(load_runs([tmp_path / "s"])).set_index("question").loc[question]
    assert row["answer"] == "10.0%" and row["runs"] == "m"
