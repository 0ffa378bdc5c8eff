"""bench-linear on the CPU: linear shapes from the workloads' own layers, the sweep, rows for dense and
MemoryFormer with agreement, an unsupported layer's row, the CLI's tables and its one-line errors."""

from __future__ import annotations

import json

import pandas as pd
import torch

from mmchar import bench_linear as bl
from mmchar.cli import main
from mmchar.workloads import get_workload


def _by_dims(shapes):
    out: dict[tuple[str, int, int], dict[int, int]] = {}
    for s in shapes:
        out.setdefault((s.role, s.d_in, s.d_out), {})[s.tokens] = s.layers
    return out


def test_wan_shapes_are_its_published_layers_at_its_self_attention_tokens():
    cfg = get_workload("wan2.1-1.3b").preset_config("full")
    model = cfg["models"]["transformer"]
    d, ffn, blocks = model["num_attention_heads"] * model["attention_head_dim"], model["ffn_dim"], model["num_layers"]
    assert (d, ffn, blocks) == (1536, 8960, 30)
    bench = cfg["bench"]["shapes"][0]
    tokens = bench["b"] * bench["sq"]
    plan = bl.workload_linear_plan(["wan2.1-1.3b"])["wan2.1-1.3b"]
    dims = _by_dims(plan.shapes)
    assert dims[("ffn", d, ffn)] == {tokens: blocks} and dims[("ffn", ffn, d)] == {tokens: blocks}
    # self attention's q, k, v, out and cross attention's q and out see the video tokens; cross k / v see the text,
    # whose length no bench call declares: left out and said so
    assert dims[("attn-proj", d, d)] == {tokens: 6 * blocks}
    assert plan.dropped == {"role other (embedders, modulation, patch and output projections)": 6,
                            "cross-attention k/v (no cross call in the bench: context length unknown)": 2 * blocks}
    assert all(s.flops == 2.0 * s.tokens * s.d_in * s.d_out and s.workload == "wan2.1-1.3b" for s in plan.shapes)


def test_hidream_routed_experts_see_top_k_of_experts_of_the_tokens():
    """HiDream-I1's MoE FFNs: 4 routed experts, top-2, so each expert's layers see half of the block's rows (an even
    load); the shared expert (half the width) sees them all."""
    cfg = get_workload("hidream-i1").preset_config("full")
    model = cfg["models"]["transformer"]
    d = model["num_attention_heads"] * model["attention_head_dim"]
    blocks = model["num_layers"] + model["num_single_layers"]
    tokens = 2 * 4480  # bench: true CFG as a batch of 2, 4096 image + 384 text tokens in every block
    assert (d, model["num_routed_experts"], model["num_activated_experts"]) == (2560, 4, 2)
    dims = _by_dims(bl.workload_linear_plan(["hidream-i1"])["hidream-i1"].shapes)
    up = [k for k in dims if k[0] == "ffn" and k[1] == d]
    routed, shared = max(up, key=lambda k: k[2]), min(up, key=lambda k: k[2])
    assert routed[2] > shared[2]  # the shared expert: half the hidden width before SwiGLU's rounding
    # w1 and w3 of each of the 4 routed experts per block at half the rows; the dual-stream blocks' dense text FFN
    # (same width) at every row (the joint count: an upper bound, as for every stream's own layers)
    assert dims[routed] == {tokens // 2: 2 * 4 * blocks, tokens: 2 * model["num_layers"]}
    assert dims[shared] == {tokens: 2 * blocks}  # the shared expert's w1 and w3: every row
    assert dims[("ffn", routed[2], d)] == {tokens // 2: 4 * blocks, tokens: model["num_layers"]}  # w2


def test_routed_shares_at_the_root_nested_and_without_a_top_k():
    from torch import nn

    class Expert(nn.Module):
        def __init__(self, inner=None):
            super().__init__()
            self.w1 = nn.Linear(4, 8)
            if inner is not None:
                self.inner = inner

    class MoE(nn.Module):
        def __init__(self, n, k, inner=None):
            super().__init__()
            self.gate = nn.Identity()
            self.gate.top_k = k
            self.experts = nn.ModuleList([Expert(inner if i == 0 else None) for i in range(n)])

    root = MoE(4, 2, inner=MoE(8, 1))
    assert bl._routed_shares(root) == {"experts.": 0.5, "experts.0.inner.experts.": 0.125}
    # the outer experts' layers see half the rows; the inner experts' (inside outer expert 0) an eighth of that
    assert sorted(e.routed for e in bl.model_layers(root)) == [0.5 * 0.125] * 8 + [0.5] * 4
    root.gate.top_k = True  # not a count
    assert bl._routed_shares(root) == {"experts.0.inner.experts.": 0.125}


def test_sd15_shapes_follow_the_unet_levels():
    dims = _by_dims(bl.workload_linear_shapes(["sd15"]))
    b = 2  # classifier-free guidance
    assert dims[("attn-proj", 320, 320)] == {4096 * b: 30}  # level 0: 2 down + 3 up blocks x (4 self + 2 cross)
    assert dims[("attn-proj", 640, 640)] == {1024 * b: 30}
    # level 2 (down block 2, up block 1) and the mid block (level 3, 8 x 8 latents: scaled from level 2)
    assert dims[("attn-proj", 1280, 1280)] == {256 * b: 30, 64 * b: 6}
    assert dims[("ffn", 320, 2560)] == {4096 * b: 5} and dims[("ffn", 5120, 1280)] == {256 * b: 5, 64 * b: 1}
    assert dims[("attn-proj", 768, 320)] == {77 * b: 10}  # cross attention's k / v see the 77 text tokens


def test_sweep_covers_both_widths_three_kinds_and_1k_to_64k():
    shapes = bl.sweep_linear_shapes()
    assert len(shapes) == 2 * 3 * 7 and len({s.name for s in shapes}) == len(shapes)
    assert {s.tokens for s in shapes} == {1024 << i for i in range(7)}
    assert {(s.role, s.d_in, s.d_out) for s in shapes if s.tokens == 1024} == {
        (r, i, o) for d in (1536, 3072) for r, i, o in (("attn-proj", d, d), ("ffn", d, 4 * d), ("ffn", 4 * d, d))}


def test_run_times_dense_and_memoryformer_and_says_why_a_layer_is_refused():
    shapes = [bl.LinearShape("up", "t", "ffn", 48, 32, 64), bl.LinearShape("down", "t", "ffn", 48, 64, 32),
              bl.LinearShape("odd", "t", "attn-proj", 16, 36, 40)]
    rows = {(r["name"], r["backend"]): r for r in bl.run(shapes, ["dense", "memoryformer"], torch.device("cpu"),
                                                         torch.float32)}
    for name in ("up", "down"):
        for backend in ("cublas", "dense", "memoryformer"):
            r = rows[(name, backend)]
            assert r["status"] == "ok" and r["ms"] > 0 and r["gbps"] > 0 and r["cosine"] > 0.9999, r
            assert r["tflops"] == shapes[0].flops / (r["ms"] * 1e-3) / 1e12  # the dense equivalent, every backend
    assert rows[("up", "memoryformer")]["state_bytes"] == 32 // 8 * 256 * 64 * 4
    odd = rows[("odd", "memoryformer")]
    assert odd["status"] == "unsupported" and "not a multiple of 8" in odd["note"] and odd["ms"] is None
    assert rows[("odd", "cublas")]["status"] == "ok"


def test_a_disagreeing_backend_is_refused_and_an_oom_is_a_row(monkeypatch):
    from mmchar.projections import _REGISTRY, ProjectionBackend, register_projection_backend

    @register_projection_backend
    class Wrong(ProjectionBackend):
        name = "wrong-test"
        description = "returns zeros plus noise"

        def __call__(self, x):
            return torch.randn(x.shape[0], self.layer.out_features)

    @register_projection_backend
    class Huge(ProjectionBackend):
        name = "oom-test"
        description = "runs out of memory drawing its state"

        def prepare(self, x):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9 GiB")

    try:
        rows = {r["backend"]: r for r in bl.run([bl.LinearShape("s", "t", "ffn", 16, 32, 32)],
                                                ["wrong-test", "oom-test"], torch.device("cpu"), torch.float32)}
    finally:
        _REGISTRY.pop("wrong-test")
        _REGISTRY.pop("oom-test")
    assert rows["wrong-test"]["status"] == "refused" and rows["wrong-test"]["ms"] is None
    assert rows["oom-test"]["status"] == "OOM" and "out of memory" in rows["oom-test"]["note"]
    assert rows["cublas"]["status"] == "ok"


def test_crossover_per_kind_and_width():
    rows = []
    for t, mine in ((1024, 0.5), (2048, 2.0), (4096, 1.0), (8192, 1.0)):  # a lucky win at 1k, then from 4k on
        for backend, ms in (("cublas", 1.5), ("memoryformer", mine)):
            rows += [{"name": f"sweep ffn up d1536 T{t}", "workload": "sweep", "role": "ffn", "tokens": t,
                      "d_in": 1536, "d_out": 6144, "backend": backend, "ms": ms},
                     {"name": f"sweep attn-proj d1536 T{t}", "workload": "sweep", "role": "attn-proj", "tokens": t,
                      "d_in": 1536, "d_out": 1536, "backend": backend, "ms": 9.0 if backend != "cublas" else ms}]
    assert bl.linear_crossovers(pd.DataFrame(rows), "memoryformer") == {"ffn up d=1536": 4096,
                                                                        "attn-proj d=1536": None}


def test_a_tie_within_timing_noise_is_no_crossover():
    """`dense` is F.linear through the swap: 0.1-0.9 % faster than cuBLAS at one count is noise, not a win."""
    rows = [{"name": f"sweep ffn up d1536 T{t}", "workload": "sweep", "role": "ffn", "tokens": t, "d_in": 1536,
             "d_out": 6144, "backend": backend, "ms": ms}
            for t in (512, 1024) for backend, ms in (("cublas", 1.0), ("dense", 0.995), ("fast", 0.9))]
    frame = pd.DataFrame(rows)
    assert bl.linear_crossovers(frame, "dense") == {"ffn up d=1536": None}
    assert bl.linear_crossovers(frame, "fast") == {"ffn up d=1536": 512}


def test_cli_writes_tables_and_refuses_unknown_names(tmp_path, monkeypatch, capsys):
    real = bl.workload_linear_plan
    monkeypatch.setattr(bl, "workload_linear_plan", lambda names=None: real(["sd15"]))  # one model to build
    out = tmp_path / "bl"
    code = main(["bench-linear", "--device", "cpu", "--only", "workloads", "--backends", "memoryformer",
                 "--match", "attn-proj 768x320", "--max-tokens", "200", "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    data = json.loads((out / "linear.json").read_text())
    assert {(r["name"], r["backend"], r["status"]) for r in data["rows"]} == {
        ("sd15 attn-proj 768x320 T154", b, "ok") for b in ("cublas", "memoryformer")}
    assert data["device"]["type"] == "cpu" and data["versions"]["torch"] and data["roofs"]["matmul_tflops"]["fp32"]
    md = (out / "linear.md").read_text()
    assert "vs_cublas" in md and "pct_of_matmul_roof" in md and "sd15: left out" in md
    assert "tables:" in capsys.readouterr().out
    assert main(["bench-linear", "--device", "cpu", "--backends", "dense,nope", "-o", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert "unknown projection backend 'nope'" in err and "dense, fp8, memoryformer" in err
    assert len(err.splitlines()) == 1
