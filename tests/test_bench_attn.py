"""bench-attn on the CPU: it times agreeing backends, refuses a disagreeing one, writes its tables."""

from __future__ import annotations

import json

import torch

from mmchar import bench_attn
from mmchar.backends import _REGISTRY, AttentionBackend, register_backend
from mmchar.cli import main


def test_times_agreeing_backends_and_refuses_a_wrong_one(tmp_path, capsys):
    @register_backend
    class Wrong(AttentionBackend):
        name = "wrong-test"
        description = "returns v unchanged"

        def __call__(self, q, k, v, **kw):
            return v[:, :, : q.shape[2]].clone()

    try:
        shapes = [bench_attn.Shape("tiny", 2, 2, 24, 24, 16), bench_attn.Shape("tiny causal", 1, 2, 24, 24, 16, True)]
        rows = {(r["name"], r["backend"]): r for r in bench_attn.run(shapes, ["math", "flash", "wrong-test", "cudnn"],
                                                                     torch.device("cpu"), torch.float32)}
    finally:
        _REGISTRY.pop("wrong-test")
    for name in ("tiny", "tiny causal"):
        for b in ("math", "flash"):
            r = rows[(name, b)]
            assert r["ms"] > 0 and r["tflops"] > 0 and r["rel_err"] < 1e-5, r
        assert rows[(name, "wrong-test")]["note"].startswith("refused") and rows[(name, "wrong-test")]["ms"] is None
        assert rows[(name, "cudnn")]["note"].startswith("skipped") or torch.cuda.is_available()
    assert shapes[0].flops == 4 * 2 * 2 * 24 * 24 * 16 and shapes[1].flops == 4 * 1 * 2 * 24 * 24 * 16 / 2


def test_cli_writes_tables(tmp_path, capsys):
    out = tmp_path / "ba"
    code = main(["bench-attn", "--device", "cpu", "--only", "workloads", "--backends", "math,flash",
                 "--max-seq", "20", "-o", str(out)])
    assert code == 0
    data = json.loads((out / "attention.json").read_text())
    names = {r["name"] for r in data["rows"]}
    assert names == {"unet3d temporal"}  # the only workload shape with sequences <= 20
    assert {r["backend"] for r in data["rows"]} == {"math", "flash"}
    assert "vs_flash" in (out / "attention.md").read_text()
    assert main(["bench-attn", "--only", "nothing", "--device", "cpu"]) == 1


def test_linear_is_checked_against_its_own_maths_and_timed_beside_eager():
    shapes = [bench_attn.Shape("tiny", 1, 2, 40, 40, 16), bench_attn.Shape("tiny causal", 1, 2, 40, 40, 16, True)]
    rows = {(r["name"], r["backend"]): r for r in bench_attn.run(shapes, ["linear", "wersa"], torch.device("cpu"),
                                                                 torch.float32)}
    for name in ("tiny", "tiny causal"):
        lin, eager = rows[(name, "linear")], rows[(name, "linear (eager)")]
        assert lin["rel_err"] < 1e-5 and lin["ms"] > 0 and lin["gbps"] > 0
        assert eager["ms"] > 0 and eager["note"] == "plain PyTorch, same dtype"
        assert rows[(name, "wersa")]["rel_err"] < 1e-4 and rows[(name, "wersa (eager)")]["ms"] > 0


def test_crossover_is_the_start_of_the_final_run_of_wins():
    import pandas as pd

    rows = []
    for causal in (False, True):
        for s, lin in ((1024, 0.5), (2048, 2.0), (4096, 1.0), (8192, 1.0)):  # a lucky win at 1k, then from 4k
            for backend, ms in (("cudnn", 1.5 if s < 4096 else 2.0), ("linear", lin if not causal else 9.0)):
                rows.append({"name": f"sweep d64 S{s}", "sq": s, "d": 64, "causal": causal, "backend": backend,
                             "ms": ms})
    assert bench_attn.crossover(pd.DataFrame(rows), "linear") == {"d=64": 4096, "d=64 causal": None}


def test_resume_measures_only_what_is_missing(tmp_path, monkeypatch):
    out = tmp_path / "ba"
    args = ["bench-attn", "--device", "cpu", "--only", "workloads", "--max-seq", "20", "-o", str(out)]
    assert main(args + ["--backends", "math"]) == 0
    calls = []
    real_run = bench_attn.run
    monkeypatch.setattr(bench_attn, "run", lambda shapes, backends, *a, **k: calls.append(backends) or
                        real_run(shapes, backends, *a, **k))
    assert main(args + ["--backends", "math,linear", "--resume"]) == 0
    assert calls == [["linear"]]  # math was measured already
    rows = json.loads((out / "attention.json").read_text())["rows"]
    assert sorted(r["backend"] for r in rows) == ["linear", "linear (eager)", "math"]
    assert main(args + ["--backends", "math,linear", "--resume"]) == 0 and calls == [["linear"]]
    assert main(args[:-2] + ["--match", "no-such-shape"]) == 1


def test_resume_tries_failed_rows_again(tmp_path):
    out = tmp_path / "ba"
    args = ["bench-attn", "--device", "cpu", "--only", "workloads", "--max-seq", "20", "-o", str(out)]
    assert main(args + ["--backends", "math"]) == 0
    data = json.loads((out / "attention.json").read_text())
    data["rows"][0].update(ms=None, note="failed: OutOfResources: shared memory")  # as a kernel that failed there
    (out / "attention.json").write_text(json.dumps(data))
    assert main(args + ["--backends", "math", "--resume"]) == 0
    (row,) = json.loads((out / "attention.json").read_text())["rows"]
    assert row["ms"] > 0 and row["note"] == ""


def test_a_backend_that_breaks_the_cuda_context_is_recorded_and_resume_goes_on(tmp_path, capsys):
    """An illegal memory access poisons the process: the row is recorded as crashed, the tables so far written,
    and a --resume re-run measures the rest without trying the crashed row again."""
    calls = []

    @register_backend
    class Crashing(AttentionBackend):
        name = "crash-test"
        description = "an illegal memory access at 16 tokens"

        def __call__(self, q, k, v, causal=False, scale=None, **kw):
            calls.append(q.shape[2])
            if q.shape[2] == 16:
                raise RuntimeError("CUDA error: an illegal memory access was encountered")
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)

    out = tmp_path / "ba"
    args = ["bench-attn", "--device", "cpu", "--only", "workloads", "--max-seq", "30", "--backends", "math,crash-test",
            "-o", str(out)]
    try:
        assert main(args) == 1
        err = capsys.readouterr().err
        assert "crash-test broke the CUDA context at unet3d temporal" in err and "--resume" in err
        rows = json.loads((out / "attention.json").read_text())["rows"]
        crashed = [r for r in rows if r["backend"] == "crash-test"]
        assert len(crashed) == 1 and crashed[0]["note"].startswith("crashed: RuntimeError")
        assert [r["backend"] for r in rows if r["name"] == "unet3d temporal"] == ["math", "crash-test"]
        calls.clear()
        assert main(args + ["--resume"]) == 0
        assert 16 not in calls and 25 in calls  # the crashed row is kept, the next shape measured
        rows = json.loads((out / "attention.json").read_text())["rows"]
        assert {(r["name"], r["backend"]) for r in rows} == {(n, b) for n in ("unet3d temporal", "svd temporal")
                                                             for b in ("math", "crash-test")}
    finally:
        _REGISTRY.pop("crash-test")


def test_workload_shapes_are_what_the_workloads_declare_in_their_order(monkeypatch):
    from mmchar.workloads import get_workload, workload_names

    names = [s.name for s in bench_attn.workload_shapes()]
    declared = [s["name"] for n in workload_names() for s in get_workload(n).preset_config("full").get("bench", {})
                .get("shapes", [])]
    assert sorted(names) == sorted(declared) and len(set(names)) == len(names) >= 17
    assert names[0] == "sd15-512 spatial L0" and names[-1] == "svd temporal"  # ascending "order"
    sd15 = type(get_workload("sd15"))
    real = sd15.preset_config
    monkeypatch.setattr(sd15, "preset_config", lambda self, preset: {
        **real(self, preset), "bench": {**real(self, preset)["bench"], "order": 10**6}})
    assert [s.name for s in bench_attn.workload_shapes()] == names[4:] + names[:4]  # sd15's four move last



def test_tables_with_peer_and_kernel_rows_name_each_crossover(tmp_path):
    """A mixer's peer rows ("mlstm_kernels TFLA (peer)") name no registered backend: the tables are still written
    (a GPU run once lost its rows to the lookup) and the peer's crossover is reported like the mixer's."""
    rows = []
    for s, mine, peer in ((4096, 3.0, 4.0), (16384, 1.0, 2.0), (65536, 1.0, 1.5)):
        for backend, ms in (("cudnn", 2.0), ("mlstm", mine), ("mlstm (kernel)", mine), ("mlstm_kernels TFLA (peer)", peer)):
            rows.append({"name": f"sweep causal d128 S{s // 1024}k", "b": 1, "h": 16, "sq": s, "skv": s, "d": 128,
                         "causal": True, "backend": backend, "ms": ms, "tflops": 1.0, "gbps": 1.0, "gpu_ms": ms,
                         "rel_err": None, "note": ""})
    text = bench_attn._write_tables(rows, torch.device("cpu"), torch.float32, tmp_path)
    assert "mlstm: {'d=128 causal': 16384}" in text and "mlstm_kernels TFLA (peer): {'d=128 causal': 65536}" in text
    saved = json.loads((tmp_path / "attention.json").read_text())["rows"]
    assert {r["backend"] for r in saved} == {"cudnn", "mlstm", "mlstm (kernel)", "mlstm_kernels TFLA (peer)"}


def test_peer_rows_time_the_peer_skip_what_it_cannot_take_and_name_a_missing_package(monkeypatch):
    """`_kernel_and_peer_rows` on the CPU with stand-in peers: a builder's callable is timed as its row, a builder
    that returns None (a causal-only peer at a non-causal shape) is a skipped row, a missing package says how to
    install it; a backend without an adapter (`linear`) has no `(kernel)` row, and its `variants` are rows."""
    from mmchar.backends import get_backend

    calls = []
    peers = {"linear": [("stand-in", "torch", "-", lambda b, q, k, v, causal, host: (lambda: calls.append(1))
                         if causal else None),
                        ("absent", "no_such_package_xyz", "pip install absent", lambda *a: None)]}
    monkeypatch.setattr(bench_attn, "PEERS", peers)
    q = k = v = torch.randn(1, 2, 16, 8)
    row = {"name": "s", "backend": "linear", "ms": 1.0}
    backend = get_backend("linear")("bench.s")
    for causal in (True, False):
        rows = bench_attn._kernel_and_peer_rows("linear", backend, row, q, k, v, causal, None, 1e6, 1e3,
                                                torch.device("cpu"))
        by = {r["backend"]: r for r in rows}
        # causal: our kernel without its normaliser too (fla's normalize=False beside it); Triton off the GPU
        # without the interpreter cannot run it here, which its row records
        assert set(by) == {"stand-in (peer)", "absent (peer)"} | ({"linear (normalize off)"} if causal else set())
        assert by["absent (peer)"]["note"].startswith("skipped: needs no_such_package_xyz (pip install absent)")
        if causal:
            assert by["stand-in (peer)"]["ms"] > 0 and calls
        else:
            assert by["stand-in (peer)"]["ms"] is None and "no form for this call" in by["stand-in (peer)"]["note"]


def test_linear_offers_its_unnormalised_kernel_beside_fla_at_causal_shapes_only():
    from mmchar.backends import get_backend
    from mmchar.bench_peers import PEERS

    q = k = v = torch.randn(1, 2, 16, 8)
    linear = get_backend("linear")("bench.s")
    (label, note, fn), = linear.variants(q, k, v, causal=True)
    assert label == "normalize off" and "normalize=False" in note and callable(fn)
    assert linear.variants(q, k, v, causal=False) == []
    assert get_backend("fla")("bench.s").variants(q, k, v, causal=True) == []  # fla is itself the peer
    assert [p[0] for p in PEERS["linear"]] == ["fla chunk_linear_attn", "fla chunk_linear_attn normalize off"]
