"""`mmchar bench-attn`: every available attention backend (softmax, linear, WERSA, the mixers) on the attention shapes of
real workloads and on a sequence-length sweep, in one run, against cuDNN and flash SDPA measured in the same run; a
mixer's kernel alone and its peers (`mmchar.bench_peers`) beside it.

A backend whose output disagrees with the fp32 reference (checked on a slice of query rows) is not timed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

import torch

from mmchar import environment
from mmchar.analysis.mechanisms import crossover  # one definition: `mmchar study --bench` tabulates it too
from mmchar.backends import backend_names, get_backend
# the helpers bench-linear shares (`benchmarks/tune_flash.py` imports `_markdown` from here)
from mmchar.bench_common import (BenchmarkCrashed, ContextLost, _failed, _markdown, _timed_row, previous_rows,
                                 write_text_atomic)
from mmchar.bench_peers import PEERS
from mmchar.flops import attention_cost


@dataclass(frozen=True)
class Shape:
    name: str
    b: int
    h: int
    sq: int
    skv: int
    d: int
    causal: bool = False

    @property
    def flops(self) -> float:
        q, kv = [self.b, self.h, self.sq, self.d], [self.b, self.h, self.skv, self.d]
        return attention_cost(q, kv, kv, self.causal, elem=2)[0]  # the one softmax formula; elem moves bytes only


def benched_workloads() -> list[tuple[str, dict[str, Any]]]:
    """(workload, its full preset's ``"bench"`` entry) of every workload that declares one, in their ``order`` (lower
    first: a run cut short by its time slot has measured the first), unordered ones last by name. bench-linear
    takes its token counts from the same entries."""
    from mmchar.workloads import get_workload, workload_names

    benches = []
    for name in workload_names():
        w = get_workload(name)
        bench = w.preset_config("full").get("bench") if "full" in w.presets() else None
        if bench:
            benches.append((bench.get("order", float("inf")), name, bench))
    return [(name, bench) for _, name, bench in sorted(benches, key=lambda b: b[:2])]


def workload_shapes() -> list[Shape]:
    """The attention calls each workload declares in its full preset (``"bench"``: token counts from latent size /
    patch, d = head dim), collected from the registry so a new workload folder brings its own: workloads in
    `benched_workloads` order, each one's shapes as it lists them."""
    return [Shape(**s) for _, bench in benched_workloads() for s in bench["shapes"]]


def sweep_shapes() -> list[Shape]:
    """S = 1k ... 64k at d = 64 and 128, H·d = 2048, B·S = 16 384 (B = 1 beyond 16k); non-causal (diffusion
    models) and causal (autoregressive token models: where linear meets FLA's chunk kernel)."""
    out = []
    for causal in (False, True):
        for d in (64, 128):
            for s in (1024, 2048, 4096, 8192, 16384, 32768, 65536):
                out.append(Shape(f"sweep{' causal' if causal else ''} d{d} S{s // 1024}k", max(16384 // s, 1),
                                 2048 // d, s, s, d, causal))
    return out


def _inputs(shape: Shape, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """Inference tensors, like every tensor the checks and timed calls make (compiled backends see one kind)."""
    g = torch.Generator(device=device).manual_seed(0)
    with torch.inference_mode():
        return tuple(torch.randn(shape.b, shape.h, s, shape.d, device=device, dtype=dtype, generator=g)
                     for s in (shape.sq, shape.skv, shape.skv))


def _check(backend: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, rows: int) -> float | None:
    """Worst relative error, per query row, of the backend against its own fp32 reference on the first ``rows``
    queries (their keys: all, or the first ``rows`` when causal) of the first and the last batch entries, and,
    non-causal, on the last ``rows`` queries too (the last, partial tile); None when it is its own reference."""
    worst = 0.0
    picks = [slice(0, rows)] + ([slice(max(q.shape[2] - rows, 0), q.shape[2])] if not causal else [])
    for bi in sorted({0, q.shape[0] - 1}):
        for sl in picks:
            qs = q[bi:bi + 1, :, sl]
            ks, vs = k[bi:bi + 1], v[bi:bi + 1]
            if causal or backend.whole_sequence:  # a recurrence: the sequence's first tokens, whole
                ks, vs = ks[:, :, sl], vs[:, :, sl]
            ref = backend.reference(qs, ks, vs, causal=causal)
            if ref is None:
                return None
            got = backend(qs.contiguous(), ks.contiguous(), vs.contiguous(), causal=causal).float()
            err = (got - ref.float()).norm(dim=-1) / ref.float().norm(dim=-1).clamp_min(1e-6)
            worst = max(worst, float(err.max()))
    return worst


def run(shapes: list[Shape], backends: list[str], device: torch.device, dtype: torch.dtype,
        memory_budget_bytes: float = 16e9) -> list[dict[str, Any]]:
    """One row per shape × backend (plus an ``<name> (eager)`` row for backends that change the maths): ms,
    TFLOP/s and GB/s by the backend's own cost model, its error against its own reference, or why not timed."""
    rows: list[dict[str, Any]] = []
    for shape in shapes:
        q, k, v = _inputs(shape, device, dtype)
        # a self-attention layer hands its backend the host's hidden states (WERSA filters by them: one gain
        # generator for q and k, as in a model); the reference checks run on query slices without them
        host = None
        if shape.sq == shape.skv:
            with torch.inference_mode():
                g = torch.Generator(device=device).manual_seed(1)
                host = torch.randn(shape.b, shape.sq, shape.h * shape.d, device=device, dtype=dtype, generator=g)
        for name in backends:
            row: dict[str, Any] = {**asdict(shape), "backend": name, "ms": None, "tflops": None, "gbps": None,
                                   "gpu_ms": None, "rel_err": None, "note": ""}
            cls = get_backend(name)
            why = cls.unavailable_reason(device)
            backend = cls(f"bench.{shape.name}") if why is None else None
            if why is None:
                why = backend.unsupported(q, k, v, causal=shape.causal, mask=None)
            if why is None and name == "math" and 2.0 * shape.b * shape.h * shape.sq * shape.skv * q.element_size() > memory_budget_bytes:
                why = "score matrix exceeds the memory budget"
            if why is not None:
                row["note"] = f"skipped: {why}"
                rows.append(row)
                continue
            flops, nbytes = backend.cost(q, k, v, causal=shape.causal)
            with torch.inference_mode():
                try:
                    rel = _check(backend, q, k, v, shape.causal, 128)
                    row["rel_err"] = rel
                    if rel is not None and not rel < cls.check_tolerance:
                        row["note"] = "refused: output disagrees with the reference"
                    else:
                        row["note"] = "its own reference (not checked)" if rel is None else ""
                        _timed_row(row, lambda: backend(q, k, v, causal=shape.causal, hidden_states=host), flops,
                                   nbytes, device)
                except Exception as e:  # noqa: BLE001 - out of memory, a kernel out of resources: noted, sweep goes on
                    if _failed(row, e, device):
                        raise ContextLost([*rows, row]) from None
                rows.append(row)
                eager = backend.eager() if row["ms"] else None
                if eager is not None:
                    erow = dict(row, backend=f"{name} (eager)", rel_err=None, note="plain PyTorch, same dtype")
                    try:
                        _timed_row(erow, lambda: eager(q, k, v, causal=shape.causal, hidden_states=host), flops,
                                   nbytes, device)
                    except Exception as e:  # noqa: BLE001
                        erow.update(ms=None, tflops=None, gbps=None, gpu_ms=None)
                        if _failed(erow, e, device):
                            raise ContextLost([*rows, erow]) from None
                    rows.append(erow)
                if row["ms"] and device.type == "cuda":
                    try:
                        rows += _kernel_and_peer_rows(name, backend, row, q, k, v, shape.causal, host, flops,
                                                      nbytes, device)
                    except ContextLost as lost:
                        raise ContextLost([*rows, *lost.rows]) from None
    return rows


def _kernel_and_peer_rows(name: str, backend: Any, row: dict[str, Any], q, k, v, causal: bool, host, flops: float,
                          nbytes: float, device: torch.device) -> list[dict[str, Any]]:
    """A backend's own extra rows (`AttentionBackend.variants`: its kernel without the adapter, whose row the
    backend's minus it is the adapter's cost; its kernel in a peer's setting) and its peers on the same inputs in their own layout and API (`mmchar.bench_peers`); a
    missing peer package, or a shape the peer has no form for, is a skipped row."""
    import importlib.util

    out = []
    runs = [(f"{name} ({label})", note, build)
            for label, note, build in backend.variants(q, k, v, causal=causal, hidden_states=host)]
    for peer, package, hint, build in PEERS.get(name, ()):
        if importlib.util.find_spec(package) is None:
            out.append(dict(row, backend=f"{peer} (peer)", ms=None, tflops=None, gbps=None, gpu_ms=None,
                            rel_err=None, note=f"skipped: needs {package} ({hint})"))
            continue
        runs.append((f"{peer} (peer)", "its own layout and API, same inputs", lambda b=build: b(backend, q, k, v,
                                                                                                 causal, host)))
    for label, note, make in runs:
        prow = dict(row, backend=label, rel_err=None, note=note)
        try:
            with torch.inference_mode():
                fn = make()
                if fn is None:
                    prow.update(ms=None, tflops=None, gbps=None, gpu_ms=None,
                                note="skipped: the peer has no form for this call (causal only)")
                    out.append(prow)
                    continue
                _timed_row(prow, fn, flops, nbytes, device)
        except Exception as e:  # noqa: BLE001 - a peer's own failure is its row's note
            prow.update(ms=None, tflops=None, gbps=None, gpu_ms=None)
            if _failed(prow, e, device):
                raise ContextLost([*out, prow]) from None
        out.append(prow)
    return out


def available_backends(device: torch.device) -> list[str]:
    """Every registered backend that runs on ``device`` and is benched by default (``sdpa`` and diffusers'
    dispatcher backends are not: they reach kernels the others time; ``--backends`` names them)."""
    return [n for n in backend_names() if get_backend(n).benched_by_default
            and get_backend(n).unavailable_reason(device) is None]


def benchmark(device: torch.device, only: str | None, backends: list[str] | None, max_seq: int, out: Path,
              progress: Any = None, match: str | None = None, resume: bool = False) -> str:
    """Run the benchmark shape by shape, rewriting ``out/attention.{md,json}`` after each (an interrupted run
    keeps what it measured), and return the printed table. ``resume``: keep the rows already in
    ``out/attention.json`` (same device) and measure only the shapes that lack one of the backends."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    shapes = ([] if only == "sweep" else workload_shapes()) + ([] if only == "workloads" else sweep_shapes())
    shapes = [s for s in shapes if max(s.sq, s.skv) <= max_seq and (match is None or match in s.name)]
    if not shapes:
        raise ValueError(f"no shape of {only or 'workloads and sweep'} matches {match!r} up to {max_seq} tokens")
    backends = backends or available_backends(device)
    rows: list[dict[str, Any]] = _previous_rows(Path(out), device) if resume else []
    # measured rows are kept, and crashed ones (they would break the context again); failed, refused and skipped
    # ones are tried again (a fixed kernel, a new package)
    done = {(r["name"], r["backend"]) for r in rows
            if (r.get("ms") is not None and r["ms"] == r["ms"]) or str(r.get("note", "")).startswith("crashed:")}
    for i, shape in enumerate(shapes):
        todo = [b for b in backends if (shape.name, b) not in done]
        if not todo:
            continue
        rows = [r for r in rows if r["name"] != shape.name or r["backend"].split(" (")[0] not in todo]
        try:
            new = run([shape], todo, device, dtype)
        except ContextLost as lost:  # record it, keep every row so far, and say how to go on
            rows += lost.rows
            _write_tables(rows, device, dtype, Path(out))
            raise BenchmarkCrashed(f"{lost.rows[-1]['backend']} broke the CUDA context at {shape.name} "
                                   f"({lost.rows[-1]['note'].removeprefix('crashed: ')}); its row is recorded in "
                                   f"{Path(out) / 'attention.json'}: re-run with --resume to measure the rest") from None
        rows += new
        _write_tables(rows, device, dtype, Path(out))
        if progress is not None:
            progress(f"[{i + 1}/{len(shapes)}] {shape.name}: " + ", ".join(
                f"{r['backend']} {r['ms']:.3g} ms" if r["ms"] else f"{r['backend']} -" for r in new))
    return _write_tables(rows, device, dtype, Path(out)) if rows else ""


def _previous_rows(out: Path, device: torch.device) -> list[dict[str, Any]]:
    """Measured rows of an earlier run into the same folder on the same device (derived columns dropped)."""
    keep = set(asdict(Shape("", 0, 0, 0, 0, 0))) | {"backend", "ms", "tflops", "gbps", "gpu_ms", "rel_err", "note"}
    return previous_rows(out / "attention.json", device, keep)


def _write_tables(rows: list[dict[str, Any]], device: torch.device, dtype: torch.dtype, out: Path) -> str:
    df = pd.DataFrame(rows)
    if "gpu_ms" not in df:  # rows of a run before the column existed
        df["gpu_ms"] = None
    for col, prefix in (("ms", "vs_"), ("gpu_ms", "gpu_vs_")):
        for base in ("cudnn", "flash"):
            ref = df[df["backend"] == base].set_index("name")[col]
            df[f"{prefix}{base}"] = [ref.get(n) / ms if ms and ref.get(n) else None
                                     for n, ms in zip(df["name"], df[col])]
    dev = environment.device_info(device)
    roofs = environment.roofs(dev)
    if roofs:
        peak = roofs["matmul_tflops"].get("bf16" if dtype == torch.bfloat16 else "fp32")
        df["pct_of_matmul_roof"] = df["tflops"] / peak * 100 if peak else None
        df["pct_of_copy_roof"] = df["gbps"] / roofs["copy_gbps"] * 100
    stamp = datetime.now(timezone.utc)
    out.mkdir(parents=True, exist_ok=True)
    v = environment.versions()
    head = (f"# Attention backends on {dev['name']} ({stamp:%Y-%m-%d}), {str(dtype).removeprefix('torch.')} forward\n\n"
            f"torch {v['torch']}, triton {v['triton']}, cuDNN {v['cudnn']}. ms = median (triton.testing.do_bench: one "
            f"call at a time, so a call shorter than its launch measures the host); gpu_ms = median GPU time with the "
            f"launches queued ahead (the call inside a model whose host runs ahead), L2 flushed before each in both; "
            f"TFLOP/s and GB/s by each backend's cost model (softmax 4·B·H·Sq·Skv·d, half for causal; linear and "
            f"WERSA: feature maps, state and output passes; mmchar/flops.py); vs_X = X's ms / this backend's ms "
            f"(> 1: faster), gpu_vs_X the same of gpu_ms (gpu_vs_cudnn in attention.json); rows kept by --resume "
            f"from a run before gpu_ms existed have none; self-attention shapes hand the backends the host layer's hidden states [B, S, H·d] "
            f"as a model does (WERSA's filter source, one gain generator for q and k), "
            f"measured in this run. Roofs: {roofs and roofs['matmul_tflops']} TFLOP/s matmul, "
            f"{roofs and round(roofs['copy_gbps'])} GB/s copy.\n\n")
    registered = set(backend_names())

    def competes(label: str) -> bool:  # peers' rows ("mlstm_kernels TFLA (peer)") name no backend: they compete too
        base = label.split(" (")[0]
        return label.endswith("(peer)") or (base in registered and get_backend(base).changes_math)

    cross = {b: crossover(df, b) for b in df["backend"].unique() if competes(b)}
    if any(cross.values()):
        head += "Sequence length from which a backend beats SDPA cuDNN (per head dim): " + "; ".join(
            f"{b}: {c}" for b, c in cross.items() if c) + "\n\n"
    cols = [c for c in ["name", "b", "h", "sq", "skv", "d", "causal", "backend", "ms", "tflops", "gbps", "vs_cudnn",
                        "vs_flash", "gpu_ms", "gpu_vs_flash", "pct_of_matmul_roof", "pct_of_copy_roof", "rel_err",
                        "note"] if c in df.columns]
    write_text_atomic(out / "attention.md", head + _markdown(df[cols]) + "\n")
    write_text_atomic(out / "attention.json", json.dumps({"device": dev, "versions": v, "roofs": roofs,
                                                          "date": stamp.isoformat(), "rows": df.to_dict("records")},
                                                         indent=1, default=str))
    return head + df[cols].to_string(index=False)
