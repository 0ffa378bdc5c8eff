"""What to try next on a measured run, and what it should buy: a ranked list of optimisation opportunities, each
with its projected step latency (and end-to-end where it can), the model that projected it, the run's inputs it
read, and the error that model showed against committed measurements (or "unvalidated").

A projection is arithmetic over what the run recorded, never a measurement: the step's wall, GPU-busy and kernel
count (meta.json ``timings`` and ``busy``), the kernel table (op class, kernel name, shapes, FLOPs and bytes), the
calibrated roofs (meta.json ``roofs``), and spec-sheet figures of GPUs (``data/gpus.json``) where the run has none.
Every assumption is a named constant below, stated in the row that uses it and in docs/conventions.md
("Projections"). Pure pandas / numpy: the read side runs without torch.

The one latency model every projection shares (:func:`project_wall`): a step whose GPU is busy less than
``LAUNCH_BOUND_BUSY_FRAC`` of its wall time is host-bound (the host sets its pace, its wall time is the host's),
so a GPU-side saving does not shorten it, and a GPU-side cost shows only once the GPU's work exceeds the host's;
a GPU-bound step keeps its measured idle gaps and moves with its busy time.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mmchar.errors import RunNotFoundError, UnknownNameError, first_line
from mmchar.schema import STEP_STAGES, step_key
from mmchar.taxonomy import classify
from mmchar.store import Run

from .tables import _ids, run_labels, with_kernels

# --- assumptions (each stated in the rows that use it) -----------------------------------------------------------

# below this busy fraction a step is host-bound (report.py calls < 0.6 launch-bound; between the two the host still
# sets most of the pace, and taking it as host-bound never promises a GPU-side saving the host would eat)
LAUNCH_BOUND_BUSY_FRAC = 0.9
# host time per kernel of a GPU-bound step (its own host time is hidden behind the GPU): eager PyTorch's dispatch
# and launch, the floor the step keeps when its kernels get faster
HOST_US_PER_KERNEL = 5.0
# a CUDA graph replay: one launch of the graph, then each kernel node's own scheduling on the GPU
GRAPH_LAUNCH_US = 10.0
GRAPH_NODE_US = 1.0
# torchao's float8 dynamic rowwise activation quantisation in eager mode, as `--linear-backend fp8` runs it: per
# linear call abs, amax, the scale's copy and div, to fp32, div, clamp, cast to e4m3 (the committed H100 fp8 runs
# show 8 kernels more per call). Bytes per activation element over those passes: abs 2+2, amax 2, to 2+4, div 4+4,
# clamp 4+4, cast 4+1.
FP8_QUANT_KERNELS_PER_CALL = 8
FP8_QUANT_BYTES_PER_ELEMENT = 33
# step caching (DeepCache / TeaCache-like): the share of denoising steps whose denoiser call is skipped
STEP_CACHE_SKIP_FRACTION = 0.3
# attention cost model without a bench-attn table: fused kernels reach this fraction of the dense-matmul roof on
# the FLOPs of softmax attention (the median of each backend over the workload shapes of the committed H100
# bench-attn table, benchmarks/results/attention/softmax-workloads.json); the unfused `math` baseline runs its two
# matmuls at MATH_MATMUL_EFFICIENCY of the roof and moves the score matrix MATH_SCORE_PASSES times at the copy roof
ATTENTION_EFFICIENCY = {"cudnn": 0.30, "flash": 0.185, "efficient": 0.097}
MATH_MATMUL_EFFICIENCY = 0.5
MATH_SCORE_PASSES = 4
SOFTMAX_BACKENDS = ("cudnn", "flash", "efficient", "math")
# cuDNN's layout transforms around an NCHW convolution (it computes in NHWC): gone when activations are
# channels-last. Classed `conv` in kernels.parquet (they run inside the conv op), named so in every committed run
TRANSFORM_KERNEL = re.compile(r"nchwToNhwc|nhwcToNchw|nchw2nhwc|nhwc2nchw", re.IGNORECASE)
COMPUTE_CLASSES = frozenset({"gemm", "conv", "attention"})
# torch.compile (Inductor, default mode) fuses the elementwise, norm and memory kernels into fewer, larger ones. Fitted
# on the committed eager/compiled pairs (benchmarks/results/study/compile-h100-2026-11-25: sd15, cogvideox-2b,
# llamagen; tests/analysis/test_advise.py recomputes them): of the step's fusible kernels 69-76 % disappear (0.72),
# the GPU time falls by 0.65 of their time (cogvideox-2b; 0.46-1.36 over the three), and a host-bound step's host
# time by 15.7 us per kernel gone (sd15 16.6, llamagen 14.8: each eager op's Python and dispatch cost)
COMPILE_FUSIBLE = ("elementwise", "norm", "memory")
COMPILE_KERNELS_GONE = 0.72
COMPILE_BUSY_GONE = 0.65
COMPILE_HOST_US_PER_KERNEL = 15.7
# sequence parallelism over N GPUs of one node (Ulysses: N divides the heads), fitted on the committed 2 x H100 runs
# (benchmarks/results/sequence_parallel/h100x2-2026-11-25): each rank sends its share of every self-attention's q, k,
# v and o through all-to-alls at 206 GB/s of send buffer leaving the GPU (measured 205 and 208), and 11 % of the
# one-GPU step is work every rank repeats (fitted: Wan 2.1 1.3B 5.8 %, CogVideoX-2B 15.8 %: its text prefix)
SP_ALL_TO_ALL_GBPS = 206.0
SP_REPLICATED_FRAC = 0.11
SP_RANKS = (2, 4, 8)

# what each projection showed against committed measurements (the checks: tests/analysis/test_advise.py, which
# recomputes them and fails when a number here no longer holds); None: no measured run to check against
VALIDATED_ERROR: dict[str, dict[str, Any]] = {
    "gpu": {"error_pct": 6.0, "checks": "H100 -> H200, wan2.1-1.3b cudnn 480x832x81 (cdb2ca): step projected "
                                        "1148 ms, measured 1210 ms (-5.2 %); e2e 4114 ms vs 4354 ms (-5.5 %)"},
    "fp8": {"error_pct": 54.0, "checks": "host-bound steps under-projected, torchao's per-call host cost exceeding "
                                         "its kernels' launches: sd15 512 px projected 77 ms, measured 129 ms (-40 "
                                         "%), llamagen (fp8 roof recorded) 51 ms vs 110 ms (-54 %); GPU-bound "
                                         "wan2.1-1.3b 81 frames: 1521 ms vs 1573 ms (-3.3 %)"},
    "attention": {"error_pct": 17.0, "checks": "cudnn -> flash / efficient / math, sd15 512 px and modelscope-t2v "
                                               "256 px x 16 (H100 compare groups, both host-bound): step within "
                                               "-9 % .. +17 %, the spread of host time between backends; GPU busy "
                                               "within -24 % .. +16 % (cost model), -12 % .. +2 % (bench-attn)"},
    "cuda-graphs": {"error_pct": 9.0, "checks": "sd15 512 px x 10 steps (H200, launch-bound): step projected 13.27 ms, "
                                                "measured 12.26 ms (+8.2 %); GPU-bound wan2.1-1.3b 81 frames (H100): "
                                                "1262 ms vs 1253 ms (+0.7 %)"},
    "channels-last": {"error_pct": 2.0, "checks": "wan2.1-1.3b 81 frames (H100, GPU-bound): step projected 1262.9 ms, "
                                                  "measured 1253.3 ms (+0.8 %); no launch-bound UNet checked alone"},
    "step-cache": {"error_pct": 2.0, "checks": "wan2.1-1.3b 81 frames x 6 steps (H100), First Block Cache at the "
                                              "assumed 0.3: mean step projected 841 ms, measured 856 ms (-1.7 %: a "
                                              "skipped step still runs the first block); the skip rate is assumed"},
    "compile": {"error_pct": 8.0, "checks": "fitted on the three committed eager / --compile pairs it is checked "
                                            "against (H100, in-sample): sd15 step projected 21.7 ms, measured 20.9 "
                                            "(+3.6 %); llamagen 9.4 vs 10.1 ms per token (-7.2 %); cogvideox-2b "
                                            "531.5 vs 532.5 ms (-0.2 %)"},
    "sequence-parallel": {"error_pct": 5.0, "checks": "fitted on the two committed 2 x H100 Ulysses runs it is checked "
                                                      "against (in-sample): wan2.1-1.3b 480x832x81 step projected 721 "
                                                      "ms, measured 689 (+4.6 %); cogvideox-2b 370 vs 385 ms (-3.9 %); "
                                                      "4 and 8 GPUs not measured"},
    "combined": {"error_pct": 5.0, "checks": "sd15 512 px (H200) channels-last + CUDA graphs: step projected 9.94 ms, "
                                             "measured 10.41 ms (-4.5 %)"},
}

ADVICE_COLUMNS = ("run_id", "label", "workload", "backend", "device", "rank", "kind", "option", "step_key",
                  "step_ms", "projected_step_ms", "saving_ms", "saving_pct", "step_busy_ms", "projected_busy_ms",
                  "e2e_ms", "projected_e2e_ms", "model", "inputs", "error", "measured_step_ms", "validating_run")

# `mmchar advise --validate` (mmchar/validate.py) measures opportunities for real: its table, `validation.csv`, sits
# next to the validating runs, by default in a `validate/` folder of the source run's store, where `advice_table`
# finds it on its own (the measured column); a table elsewhere is passed in (`mmchar advise --validated PATH`)
VALIDATE_DIR = "validate"
VALIDATION_FILE = "validation.csv"
VALIDATION_COLUMNS = ("run_id", "rank", "kind", "option", "step_key", "step_ms", "projected_step_ms",
                      "measured_step_ms", "error_pct", "baseline_step_ms", "ratio_error_pct", "error", "status", "why",
                      "validating_run", "noisy", "created")
# the validation row of the run's own options measured again beside the others (`mmchar advise --validate`): a
# host-bound step moves between processes and machines by more than some options save, so each option's measured
# step is also read against this re-measured baseline (``ratio_error_pct``), not only against the source run's step
BASELINE_KIND, BASELINE_OPTION = "baseline", "(unchanged)"


def error_text(kind: str) -> str:
    """The stated error of a projection kind: ``±N % (checks)``, or ``unvalidated (why)``."""
    v = VALIDATED_ERROR.get(kind) or {"error_pct": None, "checks": "no check"}
    if v["error_pct"] is None:
        return f"unvalidated ({v['checks']})"
    return f"±{v['error_pct']:g} % ({v['checks']})"


# --- GPUs -----------------------------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def load_gpus() -> dict[str, dict[str, Any]]:
    """The spec-sheet GPUs (``data/gpus.json``, installed as package data), key -> figures and their sources."""
    text = resources.files("mmchar.analysis").joinpath("data", "gpus.json").read_text()
    return {k: v for k, v in json.loads(text).items() if not k.startswith("_")}


def gpu_key(device_name: str | None) -> str | None:
    """The ``gpus.json`` key of a CUDA device name (``NVIDIA H100 80GB HBM3`` -> ``h100-sxm``); None if unknown."""
    name = (device_name or "").upper()
    for key, spec in load_gpus().items():
        if any(all(part.upper() in name for part in parts) for parts in spec["match"]):
            return key
    return None


def check_target_gpu(name: str) -> str:
    """``name`` as a ``gpus.json`` key, or an :class:`UnknownNameError` naming the valid ones."""
    if name not in load_gpus():
        raise UnknownNameError("target GPU", name, load_gpus())
    return name


# --- the shared latency model --------------------------------------------------------------------------------

def is_host_bound(wall_ms: float, busy_ms: float) -> bool:
    """A step whose GPU idles more than ``1 - LAUNCH_BOUND_BUSY_FRAC`` of its wall time waits on the host."""
    return busy_ms < LAUNCH_BOUND_BUSY_FRAC * wall_ms


def project_wall(wall_ms: float, busy_ms: float, new_busy_ms: float, *, kernels: float = 0.0,
                 host_extra_ms: float = 0.0) -> float:
    """A stage's wall time when its GPU busy time becomes ``new_busy_ms`` and its host does ``host_extra_ms`` more.

    Host-bound (:func:`is_host_bound`): the host's time is the wall; the stage takes the longer of the host and the
    GPU's new work. GPU-bound: the measured idle gaps stay, the busy time moves, and the host (hidden, estimated as
    ``kernels × HOST_US_PER_KERNEL``, at most the busy time) is the floor. Unchanged inputs give ``wall_ms`` back.
    """
    if is_host_bound(wall_ms, busy_ms):
        host, gap = wall_ms, 0.0
    else:
        host, gap = min(busy_ms, kernels * HOST_US_PER_KERNEL / 1e3), max(wall_ms - busy_ms, 0.0)
    return max(host + host_extra_ms, new_busy_ms + gap)


def graph_wall(eager_ms: float, new_busy_ms: float, kernels: float) -> float:
    """A step replayed as a CUDA graph: its GPU work plus the replay (one launch, ``GRAPH_NODE_US`` per kernel),
    never slower than the same work run eagerly (``eager_ms``: a graph's kernels wait no longer between them than
    eager launches do)."""
    return min(eager_ms, new_busy_ms + (GRAPH_LAUNCH_US + kernels * GRAPH_NODE_US) / 1e3)


def fp8_gemm_ms(gemm_ms: float, bf16_tflops: float, fp8_tflops: float) -> float:
    """A bf16 gemm's time at the FP8 matmul roof: scaled by the roofs' ratio."""
    return gemm_ms * bf16_tflops / fp8_tflops


def quantise_ms(elements: float, copy_gbps: float, bytes_per_element: float = FP8_QUANT_BYTES_PER_ELEMENT) -> float:
    """The memory-bound activation quantisation of FP8 linear layers: its bytes at the copy roof."""
    return elements * bytes_per_element / (copy_gbps * 1e9) * 1e3


def step_cache(step_ms: float, steps: int, skip_fraction: float = STEP_CACHE_SKIP_FRACTION) -> tuple[int, float]:
    """(steps skipped, the mean step over the generation) when ``skip_fraction`` of the steps reuse a cached output
    at no cost: the first step always runs."""
    skipped = min(int(round(skip_fraction * steps)), max(steps - 1, 0))
    return skipped, step_ms * (steps - skipped) / steps if steps else step_ms


def attention_model_ms(b: float, h: float, sq: float, skv: float, d: float, causal: bool, backend: str,
                       roof_tflops: float, copy_gbps: float, elem: int = 2) -> float:
    """One softmax attention call under ``backend`` by the cost model: fused kernels at their assumed share of the
    matmul roof (``ATTENTION_EFFICIENCY``); ``math`` as two matmuls plus its score matrix moved
    ``MATH_SCORE_PASSES`` times at the copy roof. NaN for a backend the model does not know."""
    flops = 4.0 * b * h * sq * skv * d * (0.5 if causal else 1.0)
    if backend in ATTENTION_EFFICIENCY:
        return flops / (ATTENTION_EFFICIENCY[backend] * roof_tflops * 1e12) * 1e3
    if backend == "math":
        scores = b * h * sq * skv * elem * MATH_SCORE_PASSES
        return (flops / (MATH_MATMUL_EFFICIENCY * roof_tflops * 1e12) + scores / (copy_gbps * 1e9)) * 1e3
    return float("nan")


def work_class(k: pd.DataFrame) -> pd.Series:
    """Each kernel's op class by the work it does: a ``routing`` kernel (a MoE layer's gate, dispatch or combine,
    classed by the model's structure) by the kernel-name rules it would otherwise have met: its softmax, gathers and
    scatters fuse and move bytes as any others do, its gate GEMM computes."""
    cls = k["op_class"].astype(str)
    routing = (cls == "routing").to_numpy()
    if routing.any():
        r = k[routing]
        cls = cls.copy()
        cls[routing] = [classify(n, a, lo) for n, a, lo in zip(r["kernel"].astype(str), r["aten_op"].astype(str),
                                                                r["launch_op"].astype(str))]
    return cls


def kernel_scale(k: pd.DataFrame, source: dict[str, Any], target: dict[str, Any]) -> pd.Series:
    """Per kernel, its time's factor on ``target``: compute-bound kernels by the bf16 FLOP/s ratio, memory-bound
    ones by the bandwidth ratio. A kernel carrying FLOPs and bytes is compute-bound when its arithmetic intensity
    reaches the source's ridge point; one without is judged by its op class (gemm, conv, attention compute-bound;
    norm, elementwise, memory, other memory-bound); layout transforms are memory-bound whatever their class."""
    compute = source["bf16_tflops"] / target["bf16_tflops"]
    memory = source["hbm_gbps"] / target["hbm_gbps"]
    ridge = source["bf16_tflops"] * 1e12 / (source["hbm_gbps"] * 1e9)
    cls = work_class(k)
    bound = cls.isin(COMPUTE_CLASSES).to_numpy()
    costed = (k["flops"].notna() & (k["bytes"] > 0)).to_numpy()
    intensity = (k["flops"] / k["bytes"].where(k["bytes"] > 0)).to_numpy()
    bound = np.where(costed, intensity >= ridge, bound)
    bound &= ~k["kernel"].astype(str).str.contains(TRANSFORM_KERNEL).to_numpy()
    # collectives ride the interconnect, which the spec ratios do not describe: kept as measured
    return pd.Series(np.where(cls == "communication", 1.0, np.where(bound, compute, memory)), index=k.index)


# --- what a run recorded, per stage --------------------------------------------------------------------------

@dataclass
class Stage:
    """One stage of a run as the projections read it: one call's wall, busy, kernel count (the light profile
    against the timed pass) and the kernels of one call (the full profile; a step stage's profiled steps
    averaged through ``per``: each kernel row counts 1/per)."""

    key: str
    stage: str
    wall_ms: float
    busy_ms: float
    kernels: float
    calls: float  # calls per generation: the steps for a step stage, 1 otherwise
    k: pd.DataFrame
    per: int

    @property
    def overlap(self) -> float:
        """Busy time per kernel time (at most 1): kernels of concurrent streams (a collective beside compute)
        cover the same busy time, so a change of their summed time moves the busy time by this share."""
        total = self.ms()
        return min(1.0, self.busy_ms / total) if total > 0 and self.busy_ms > 0 else 1.0

    def ms(self, mask: pd.Series | np.ndarray | None = None, scale: pd.Series | None = None) -> float:
        """Kernel time of one call (of the masked kernels; each scaled by ``scale`` when given), ms."""
        d = self.k["dur_us"] if scale is None else self.k["dur_us"] * scale
        if mask is not None:
            d = d[mask]
        return float(d.sum()) / self.per / 1e3


@dataclass
class Profile:
    run: Run
    device_type: str
    step: Stage | None
    stages: list[Stage]
    e2e_ms: float
    steps: int
    roofs: dict[str, Any] = field(default_factory=dict)


def _timing(meta: dict[str, Any], key: str) -> float:
    v = ((meta.get("timings") or {}).get(key) or {}).get("median_ms")
    return float(v) if v is not None else float("nan")


def profile_of(run: Run, kernels: pd.DataFrame) -> Profile:
    """The stages of a run the projections read (see :class:`Stage`)."""
    meta = run.meta
    timings, busy = meta.get("timings") or {}, meta.get("busy") or {}
    skey = step_key(timings)
    params = (meta.get("config") or {}).get("params") or {}
    steps = int((meta.get("passes") or {}).get("steps") or params.get("steps") or 1)
    stages, step = [], None
    for key, b in busy.items():
        if key in ("generator_prefill", "host") or key.endswith("_decode"):
            continue
        stage = key.removesuffix("_step")
        k = kernels[kernels["stage"].astype(str) == stage]
        if stage in STEP_STAGES:
            per = max(int(k["step"].nunique()), 1)
            calls = float(steps)
        else:
            per, calls = 1, 1.0
        wall = b.get("wall_ms")
        wall = _timing(meta, key) if wall is None else float(wall)
        st = Stage(key, stage, wall, float(b.get("busy_ms") or 0.0), float(b.get("kernels") or 0.0), calls, k, per)
        stages.append(st)
        if key == skey:
            step = st
    device = meta.get("device") or {}
    return Profile(run, str(device.get("type") or ("cuda" if device.get("name") else "cpu")), step, stages,
                   _timing(meta, "e2e"), steps, meta.get("roofs") or {})


# --- effects: what an option changes ---------------------------------------------------------------------------

@dataclass
class Effect:
    """What one option changes, per call of each stage it touches: GPU busy (ms), host time (ms), kernels; and
    whether the step replays as a CUDA graph. Effects of compatible options add."""

    kind: str
    option: str
    model: str
    inputs: str
    d_busy: dict[str, float] = field(default_factory=dict)
    d_host: dict[str, float] = field(default_factory=dict)
    d_kernels: dict[str, float] = field(default_factory=dict)
    graphs: bool = False

    def __add__(self, other: Effect) -> Effect:
        add = lambda a, b: {k: a.get(k, 0.0) + b.get(k, 0.0) for k in {*a, *b}}  # noqa: E731
        join = lambda sep, *parts: sep.join(x for x in parts if x)  # noqa: E731
        return Effect("combined", join(" ", self.option, other.option), join("; ", self.model, other.model),
                      join("; ", self.inputs, other.inputs), add(self.d_busy, other.d_busy),
                      add(self.d_host, other.d_host), add(self.d_kernels, other.d_kernels), self.graphs or other.graphs)


def evaluate(p: Profile, e: Effect) -> tuple[float, float]:
    """(projected step ms, projected e2e ms) of an effect: each touched stage through :func:`project_wall` (the step
    through :func:`graph_wall` under CUDA graphs), the e2e moved by each stage's change times its calls."""
    new_step, e2e = float("nan"), p.e2e_ms
    for st in p.stages:
        db, dh, dk = e.d_busy.get(st.key, 0.0) * st.overlap, e.d_host.get(st.key, 0.0), e.d_kernels.get(st.key, 0.0)
        wall = (project_wall(st.wall_ms, st.busy_ms, st.busy_ms + db, kernels=st.kernels + dk, host_extra_ms=dh)
                if db or dh else st.wall_ms)
        if e.graphs and st is p.step:
            wall = graph_wall(wall, st.busy_ms + db, st.kernels + dk)
        if st is p.step:
            new_step = wall
        e2e += (wall - st.wall_ms) * st.calls
    return new_step, e2e


# --- the projections ---------------------------------------------------------------------------------------------

def _busy_line(st: Stage) -> str:
    return (f"meta busy.{st.key} (wall {st.wall_ms:.2f} ms, GPU busy {st.busy_ms:.2f} ms, {st.kernels:.0f} kernels: "
            f"{'host' if is_host_bound(st.wall_ms, st.busy_ms) else 'GPU'}-bound)")


def cuda_graphs(p: Profile) -> Effect:
    st = p.step
    return Effect("cuda-graphs", "--cuda-graphs",
                  f"the step's host gaps removed: GPU busy + replay ({GRAPH_LAUNCH_US:g} us + {GRAPH_NODE_US:g} us per "
                  "kernel, assumed), never above the eager step", _busy_line(st), graphs=True)


def channels_last(p: Profile) -> Effect | None:
    d_busy, found = {}, []
    for st in p.stages:
        mask = st.k["kernel"].astype(str).str.contains(TRANSFORM_KERNEL)
        ms = st.ms(mask)
        if ms > 0:
            d_busy[st.key] = -ms
            found.append(f"{st.key} {ms:.2f} ms ({int(mask.sum() / st.per)} kernels)")
    if not found:
        return None
    return Effect("channels-last", "--channels-last",
                  "cuDNN's nchwToNhwc / nhwcToNchw layout transforms removed from every stage's GPU work (host "
                  "time and the convolutions kept; other kernels' change under NHWC not modelled)",
                  "kernels.parquet transform kernels per call: " + ", ".join(found) + "; " + _busy_line(p.step),
                  d_busy=d_busy)


def torch_compile(p: Profile) -> tuple[Effect | None, str]:
    """torch.compile of the step's model: a fitted share of its elementwise / norm / memory kernels fused away (their
    GPU time and their launches' host time), the GEMMs, convolutions and attention kept."""
    st, meta = p.step, p.run.meta
    opts = meta.get("options") or {}
    if opts.get("compile"):
        return None, "the run was compiled already"
    if meta.get("backend") not in ("sdpa", None) or (meta.get("linear_backend") or "dense") != "dense":
        return None, ("--compile runs the model's own attention and linear layers: compare the compiled sdpa run "
                      "against this backend's instead")
    fusible = work_class(st.k).isin(COMPILE_FUSIBLE)  # a MoE layer's routing by what each kernel does
    ms, n = st.ms(fusible), float(fusible.sum()) / st.per
    if n == 0:
        return None, "no elementwise, norm or memory kernel in the step to fuse"
    gone = COMPILE_KERNELS_GONE * n
    return Effect("compile", "--compile",
                  f"Inductor fusion, fitted on committed compiled runs: {COMPILE_KERNELS_GONE:.0%} of the step's "
                  f"elementwise / norm / memory kernels gone, the GPU time less {COMPILE_BUSY_GONE:g} x their time, a "
                  f"host-bound step's host less {COMPILE_HOST_US_PER_KERNEL:g} us per kernel gone; the compile time "
                  "itself (paid once, in the warm-up) not counted",
                  f"kernels.parquet fusible kernels per step: {n:.0f}, {ms:.2f} ms; " + _busy_line(st),
                  d_busy={st.key: -COMPILE_BUSY_GONE * ms}, d_host={st.key: -gone * COMPILE_HOST_US_PER_KERNEL / 1e3},
                  d_kernels={st.key: -gone}), ""


def sequence_parallel(p: Profile) -> tuple[list[tuple[int, float, str, str]], str]:
    """The step over N GPUs of one node by Ulysses sequence parallelism, for each N of ``SP_RANKS`` that divides
    the self-attention's heads: (N, projected step ms, model, inputs); or why none applies."""
    st, meta = p.step, p.run.meta
    opts = meta.get("options") or {}
    if int(opts.get("sequence_parallel") or 1) > 1 or opts.get("cfg_parallel"):
        return [], "the run is sequence- or CFG-parallel already"
    if st.stage != "denoiser":
        return [], "sequence parallelism splits a denoiser's token sequence"
    if ((meta.get("config") or {}).get("family") or {}).get("architecture") != "dit":
        return [], ("sequence parallelism splits a DiT's token sequence block by block; a UNet's convolutions would "
                    "need halo exchanges (not modelled)")
    if is_host_bound(st.wall_ms, st.busy_ms):
        return [], "a host-bound step: its host time does not divide over GPUs"
    calls = [c for c in attention_calls(st) if c.sq == c.skv and c.sq >= 1024]  # self-attention over the tokens
    if not calls:
        return [], "the step has no self-attention call over a long sequence with recorded shapes"
    heads = int(min(c.h for c in calls))
    elem = 2 if str(meta.get("config", {}).get("dtype") or "bf16") in ("bf16", "fp16") else 4
    qkvo = sum(4.0 * c.b * c.h * c.sq * c.d * elem for c in calls) / st.per  # bytes per step, the whole sequence
    out = []
    for n in SP_RANKS:
        if heads % n:
            continue
        replicated = SP_REPLICATED_FRAC * st.wall_ms
        comm = qkvo / n * (n - 1) / n / (SP_ALL_TO_ALL_GBPS * 1e9) * 1e3
        step = (st.wall_ms - replicated) / n + replicated + comm
        out.append((n, step,
                    f"Ulysses over {n} GPUs of one node: the step's work divided by {n} but a fitted "
                    f"{SP_REPLICATED_FRAC:.0%} every rank repeats, plus the all-to-alls of q, k, v, o ({comm:.1f} ms: "
                    f"{qkvo / n / 1e6:.0f} MB per rank at {SP_ALL_TO_ALL_GBPS:g} GB/s, fitted on 2 x H100 NVLink); the "
                    "decoder and text encoder stay on one GPU; mmchar runs it where it has a shard plan (Wan, "
                    "CogVideoX)",
                    f"kernels.parquet self-attention shapes ({len(calls) / st.per:.0f} calls per step, {heads} "
                    f"heads); " + _busy_line(st)))
    if not out:
        return [], f"no GPU count of {SP_RANKS} divides the {heads} heads (ring / USP are not modelled)"
    return out, ""


def _device_spec(p: Profile) -> tuple[str | None, dict[str, Any] | None]:
    key = gpu_key((p.run.meta.get("device") or {}).get("name"))
    return key, (load_gpus().get(key) if key else None)


def fp8(p: Profile) -> tuple[Effect | None, str]:
    """FP8 linear layers (torchao's dynamic rowwise scaling, eager): the step's gemm calls at the FP8 roof, plus
    the quantisation of each call's activation (memory-bound, at the copy roof) and its kernels' host cost."""
    st = p.step
    dtype = (p.run.meta.get("config") or {}).get("dtype")
    if (p.run.meta.get("linear_backend") or "dense") != "dense":
        return None, f"the run's linear layers already ran under {p.run.meta.get('linear_backend')}"
    if dtype != "bf16":
        return None, f"fp8 takes bf16 linear layers; this run is {dtype}"
    key, spec = _device_spec(p)
    mm = (p.roofs.get("matmul_tflops") or {})
    if mm.get("bf16") and mm.get("fp8"):
        bf, f8, roof_src = float(mm["bf16"]), float(mm["fp8"]), "the run's calibrated bf16 and fp8 matmul roofs"
    elif spec is not None and spec.get("fp8_tflops"):
        bf, f8 = spec["bf16_tflops"], spec["fp8_tflops"]
        roof_src = f"spec-sheet bf16 / fp8 of {key} (gpus.json: the run recorded no fp8 roof)"
    elif spec is not None:
        return None, f"{spec['name']} has no FP8 tensor cores"
    else:
        return None, "no fp8 roof recorded and the device is not in gpus.json"
    copy = p.roofs.get("copy_gbps")
    copy_src = "the run's copy roof" if copy else f"spec-sheet bandwidth of {key}"
    copy = float(copy) if copy else float((spec or {}).get("hbm_gbps") or float("nan"))
    k = st.k
    gemm = k["op_class"].astype(str) == "gemm"
    calls = k[gemm & k["flops"].notna() & (k["aten_op"].astype(str) == "aten::linear")]
    elements, n_calls, taken_flops = 0.0, 0, 0.0
    for shapes, flops in zip(calls["input_shapes"], calls["flops"]):
        try:
            dims = json.loads(str(shapes))
            x, w = dims[0], dims[1]
        except (ValueError, TypeError, IndexError):
            continue
        if len(w) != 2 or w[0] % 16 or w[1] % 16:  # torchao's fp8 takes features in multiples of 16
            continue
        elements += float(np.prod(x))
        n_calls += 1
        taken_flops += float(flops)
    if not n_calls:
        return None, "no linear call of the step takes fp8 (features not multiples of 16, or none recorded)"
    all_flops = float(calls["flops"].sum()) or 1.0
    gemm_ms = st.ms(gemm) * taken_flops / all_flops
    d_gemm = fp8_gemm_ms(gemm_ms, bf, f8) - gemm_ms
    quant = quantise_ms(elements / st.per, copy)
    calls_per_step = n_calls / st.per
    extra_kernels = calls_per_step * FP8_QUANT_KERNELS_PER_CALL
    # host: a host-bound step's own host time per kernel; a GPU-bound one's hidden host, the assumed floor
    host_bound = is_host_bound(st.wall_ms, st.busy_ms)
    per_kernel = st.wall_ms / st.kernels if st.kernels and host_bound else HOST_US_PER_KERNEL / 1e3
    # a GPU-bound step's host floor already counts the added kernels (`project_wall`: kernels × the assumed
    # host time each, through d_kernels): adding them again as host time would count them twice
    d_host = extra_kernels * per_kernel if host_bound else 0.0
    return Effect("fp8", "--linear-backend fp8",
                  f"gemm time x bf16/fp8 roof ({bf:.0f}/{f8:.0f} TFLOP/s), + activation quantisation "
                  f"{FP8_QUANT_BYTES_PER_ELEMENT} B/element at {copy:.0f} GB/s ({quant:.2f} ms), + "
                  f"{FP8_QUANT_KERNELS_PER_CALL} kernels per call on the host at {per_kernel * 1e3:.1f} us each "
                  f"(torchao eager; caveat: its Python dispatch costs more than its launches)",
                  f"{calls_per_step:.0f} linear calls per step, {gemm_ms:.2f} ms gemm, {elements / st.per:.3g} "
                  f"activation elements (kernels.parquet input_shapes); {roof_src}; {copy_src}; " + _busy_line(st),
                  d_busy={st.key: d_gemm + quant}, d_host={st.key: d_host},
                  d_kernels={st.key: extra_kernels}), ""


@dataclass
class _Call:
    b: int
    h: int
    sq: int
    skv: int
    d: int
    causal: bool
    ms: float  # measured time of this call's kernels


def attention_calls(st: Stage) -> list[_Call]:
    """Each attention call of one step with its shape and its measured kernel time: the kernels of a module's
    attention in a profiled step, split between its calls by their FLOPs."""
    k = st.k[st.k["op_class"].astype(str) == "attention"]
    out = []
    for _, g in k.groupby([k["step"], k["module_path"].astype(str)], sort=False):
        costed = g[g["flops"].notna() & (g["flops"] > 0)]
        total_ms = float(g["dur_us"].sum()) / 1e3 / st.per
        flops_sum = float(costed["flops"].sum())
        for shapes, flops in zip(costed["input_shapes"], costed["flops"]):
            try:
                dims = json.loads(str(shapes))
                (b, h, sq, d), (_, _, skv, _) = dims[0][:4], dims[1][:4]
            except (ValueError, TypeError, IndexError):
                continue
            full = 4.0 * b * h * sq * skv * d
            out.append(_Call(b, h, sq, skv, d, bool(flops < 0.75 * full), total_ms * float(flops) / flops_sum))
    return out


def current_attention_backend(run: Run, st: Stage) -> str | None:
    """The softmax backend whose kernels ran the step's attention: the run's backend, or for ``sdpa`` (PyTorch's
    choice) the one its kernel names show; None for a backend the models do not cover."""
    if run.backend in SOFTMAX_BACKENDS:
        return run.backend
    if run.backend != "sdpa":
        return None
    names = " ".join(st.k.loc[st.k["op_class"].astype(str) == "attention", "kernel"].astype(str).unique()).lower()
    for needle, backend in (("cudnn", "cudnn"), ("flash", "flash"), ("fmha", "efficient"), ("softmax", "math")):
        if needle in names:
            return backend
    return None


def _bench_ms(bench: pd.DataFrame, c: _Call, backend: str) -> float:
    """A bench-attn row's time for this call's shape under ``backend``: the same S, head dim and causality,
    scaled by batch x heads where those differ; NaN when the table lacks it."""
    rows = bench[(bench["backend"] == backend) & (bench["sq"] == c.sq) & (bench["skv"] == c.skv)
                 & (bench["d"] == c.d) & (bench["causal"] == c.causal) & bench["ms"].notna()]
    if rows.empty:
        return float("nan")
    exact = rows[(rows["b"] == c.b) & (rows["h"] == c.h)]
    r = (exact if len(exact) else rows).iloc[0]
    return float(r["ms"]) * (c.b * c.h) / (float(r["b"]) * float(r["h"]))


def attention_swaps(p: Profile, bench: pd.DataFrame | None = None) -> tuple[list[Effect], str]:
    """One effect per other attention backend: each call of the step at that backend's time for its shape (from a
    bench-attn table when given, as a ratio to the run's own backend at the shape where the table has it; else the
    cost model of :func:`attention_model_ms`, as the ratio of the two backends' model times to the measured call)."""
    st = p.step
    calls = attention_calls(st)
    if not calls:
        return [], "the step has no attention call with recorded shapes"
    current = current_attention_backend(p.run, st)
    key, spec = _device_spec(p)
    mm = (p.roofs.get("matmul_tflops") or {}).get("bf16")
    roof = float(mm) if mm else float((spec or {}).get("bf16_tflops") or float("nan"))
    copy = p.roofs.get("copy_gbps") or (spec or {}).get("hbm_gbps") or float("nan")
    roof_src = "the run's calibrated roofs" if mm else f"spec-sheet roofs of {key}"
    elem = {"fp32": 4}.get((p.run.meta.get("config") or {}).get("dtype"), 2)
    candidates = set(SOFTMAX_BACKENDS) if current else set()
    if bench is not None:
        candidates |= set(bench["backend"].astype(str))
    candidates.discard(current or "")
    candidates.discard(p.run.backend)
    effects = []
    measured = sum(c.ms for c in calls)
    for backend in sorted(candidates):
        new, from_bench, ok = 0.0, 0, True
        for c in calls:
            t = float("nan")
            if bench is not None:
                tgt = _bench_ms(bench, c, backend)
                cur = _bench_ms(bench, c, current) if current else float("nan")
                t = c.ms * tgt / cur if cur == cur and cur > 0 else tgt
                from_bench += t == t
            if t != t and current and math.isfinite(roof):
                cur_m = attention_model_ms(c.b, c.h, c.sq, c.skv, c.d, c.causal, current, roof, copy, elem)
                tgt_m = attention_model_ms(c.b, c.h, c.sq, c.skv, c.d, c.causal, backend, roof, copy, elem)
                t = c.ms * tgt_m / cur_m if cur_m > 0 else float("nan")
            if t != t:
                ok = False
                break
            new += t
        if not ok:
            continue
        eff = ", ".join(f"{b} {ATTENTION_EFFICIENCY[b]:.0%}" for b in (current, backend) if b in ATTENTION_EFFICIENCY)
        model = (f"each attention call at {backend}'s time for its shape: "
                 + (f"{from_bench / st.per:.0f} of {len(calls) / st.per:.0f} calls per step from the bench-attn "
                    "table, the rest " if bench is not None
                    else "")
                 + f"cost model (FLOPs at an assumed share of the matmul roof: {eff or 'math: matmuls + scores'}; "
                 "applied as a ratio to the measured call)")
        effects.append(Effect("attention", f"--backend {backend}", model,
                              f"{len(calls) / st.per:.0f} attention calls per step, {measured:.2f} ms under "
                              f"{current or p.run.backend} "
                              f"(kernels.parquet shapes); {roof_src}; " + _busy_line(st),
                              d_busy={st.key: new - measured}))
    return effects, ("" if effects else f"no backend to compare with {p.run.backend} (no cost model or bench row)")


def gpu_move(p: Profile, target: str) -> tuple[Effect | None, str]:
    """Every stage's kernels moved to ``target`` (:func:`kernel_scale`); host-bound stages stay host-bound."""
    key, src = _device_spec(p)
    if src is None:
        return None, f"the run's GPU ({(p.run.meta.get('device') or {}).get('name')}) is not in gpus.json"
    if key == target:
        return None, f"the run is on {target} already"
    tgt = load_gpus()[target]
    d_busy = {}
    for st in p.stages:
        if len(st.k):
            d_busy[st.key] = st.ms(scale=kernel_scale(st.k, src, tgt)) - st.ms()
    return Effect("gpu", f"--target-gpu {target}",
                  f"{key} -> {target}: compute-bound kernels x {src['bf16_tflops']:g}/{tgt['bf16_tflops']:g} "
                  f"TFLOP/s, memory-bound x {src['hbm_gbps']:g}/{tgt['hbm_gbps']:g} GB/s (spec sheets; by "
                  "intensity vs the ridge where FLOPs and bytes are recorded, else by op class; collectives kept); "
                  "host-bound stages keep their host time",
                  f"kernels.parquet of every stage; gpus.json {key}, {target}; " + _busy_line(p.step),
                  d_busy=d_busy), ""


# --- the table -------------------------------------------------------------------------------------------------

def _row(p: Profile, ids: dict[str, Any], kind: str, option: str, step_ms: float, e2e_ms: float, model: str,
         inputs: str, error: str, d_busy_ms: float = 0.0) -> dict[str, Any]:
    st = p.step
    base = st.wall_ms if st is not None else float("nan")
    busy = st.busy_ms if st is not None else float("nan")
    saving = base - step_ms
    return {**{c: ids[c] for c in ("run_id", "label", "workload", "backend", "device")}, "kind": kind,
            "option": option, "step_key": st.key if st is not None else None, "step_ms": base,
            "projected_step_ms": step_ms, "saving_ms": saving,
            "saving_pct": saving / base * 100 if base == base and base > 0 else float("nan"),
            "step_busy_ms": busy, "projected_busy_ms": busy + d_busy_ms if step_ms == step_ms else float("nan"),
            "e2e_ms": p.e2e_ms, "projected_e2e_ms": e2e_ms, "model": model, "inputs": inputs, "error": error}


def _not_applicable(p: Profile, ids: dict[str, Any], kind: str, option: str, why: str) -> dict[str, Any]:
    return _row(p, ids, kind, option, float("nan"), float("nan"), f"not applicable: {why}", "", "")


def _graphs_refused(meta: dict[str, Any]) -> str | None:
    """Why `mmchar profile --cuda-graphs` would refuse this run's work (its refusals, `mmchar.modes` and
    `ProfileOptions`, read from what the run recorded), None where it would capture: advice never ranks an option
    the tool refuses."""
    opts = meta.get("options") or {}
    if int(opts.get("sequence_parallel") or 1) > 1 or opts.get("cfg_parallel"):
        return ("--cuda-graphs does not combine with --sequence-parallel or --cfg-parallel (their collectives run "
                "outside a graph)")
    if ((meta.get("config") or {}).get("memory") or {}).get("cpu_offload"):
        return "--cuda-graphs does not combine with --cpu-offload (weights move at every call)"
    if "generator_decode" in (meta.get("timings") or {}):
        return ("a token model's decode carries its KV cache in Python, which a replayed graph would not advance "
                "(mmchar.modes refuses it)")
    return None


def advise_run(run: Run, kernels: pd.DataFrame, *, label: str | None = None, bench: pd.DataFrame | None = None,
               targets: Iterable[str] = (), skip_fraction: float = STEP_CACHE_SKIP_FRACTION) -> pd.DataFrame:
    """The ranked opportunities of one ok run (see :func:`advice_table`)."""
    p = profile_of(run, kernels)
    ids = _ids(run, label)
    rows: list[dict[str, Any]] = []
    st = p.step
    if st is None or not (st.wall_ms == st.wall_ms):
        return pd.DataFrame([_not_applicable(p, ids, "none", "", "the run has no timed step (denoiser or generator)")],
                            columns=list(ADVICE_COLUMNS))
    effects: list[Effect] = []
    if p.device_type != "cuda":
        why = f"a {p.device_type.upper()} run: it has no GPU kernels, roofs or CUDA streams to project"
        # (--compile has no row here: its fitted model is of GPU runs, and a CPU compile is no step to validate it by)
        for kind, option in (("cuda-graphs", "--cuda-graphs"), ("channels-last", "--channels-last"),
                             ("fp8", "--linear-backend fp8"), ("attention", "--backend"), ("gpu", "--target-gpu"),
                             ("sequence-parallel", "--sequence-parallel")):
            rows.append(_not_applicable(p, ids, kind, option, why))
    else:
        opts = run.meta.get("options") or {}  # the runtime modes a run already ran with (`--cuda-graphs` ...)
        graphs = cuda_graphs(p)
        refused = _graphs_refused(run.meta)
        if opts.get("cuda_graphs"):
            rows.append(_not_applicable(p, ids, "cuda-graphs", "--cuda-graphs", "the run replayed its step as a "
                                        "CUDA graph already"))
        elif refused:
            rows.append(_not_applicable(p, ids, "cuda-graphs", "--cuda-graphs", refused))
        else:
            effects.append(graphs)
        cl = channels_last(p)
        if cl is not None and not opts.get("channels_last"):
            effects.append(cl)
        else:
            rows.append(_not_applicable(p, ids, "channels-last", "--channels-last",
                                        "the run ran channels-last already" if opts.get("channels_last")
                                        else "no cuDNN layout transform in the run's kernels"))
        tc, why = torch_compile(p)
        if tc is not None:
            effects.append(tc)
        else:
            rows.append(_not_applicable(p, ids, "compile", "--compile", why))
        f8, why = fp8(p)
        if f8 is not None:
            effects.append(f8)
        else:
            rows.append(_not_applicable(p, ids, "fp8", "--linear-backend fp8", why))
        swaps, why = attention_swaps(p, bench)
        if swaps:
            effects.extend(swaps)
        else:
            rows.append(_not_applicable(p, ids, "attention", "--backend", why))
        sp, why = sequence_parallel(p)
        for n, s, model, inputs in sp:
            rows.append(_row(p, ids, "sequence-parallel", f"--sequence-parallel x{n}", s,
                             p.e2e_ms - (st.wall_ms - s) * st.calls, model, inputs, error_text("sequence-parallel")))
        if not sp:
            rows.append(_not_applicable(p, ids, "sequence-parallel", "--sequence-parallel", why))
        for target in targets:
            mv, why = gpu_move(p, check_target_gpu(target))
            if mv is not None:
                s, e = evaluate(p, mv)
                rows.append(_row(p, ids, "gpu", mv.option, s, e, mv.model, mv.inputs, error_text("gpu"),
                                 mv.d_busy.get(st.key, 0.0) * st.overlap))
            else:
                rows.append(_not_applicable(p, ids, "gpu", f"--target-gpu {target}", why))
        if opts.get("cuda_graphs") or refused:  # a graph already, or none possible: the options stand alone
            graphs = Effect("cuda-graphs", "", "", "")
        # combinations: each GPU-side option with CUDA graphs (a host-bound step keeps a GPU saving only once its
        # host gaps are gone), and every option that saves on its own together
        gpu_side = [e for e in effects if e.kind != "cuda-graphs"]
        best_attn = min((e for e in gpu_side if e.kind == "attention"), default=None,
                        key=lambda e: evaluate(p, e + graphs)[0])
        singles = [e for e in gpu_side if e.kind != "attention" or e is best_attn]
        # a combination is shown where it beats each of its options alone (CUDA graphs add nothing to a GPU-bound
        # step; an option that costs GPU time loses against the graph alone)
        alone = evaluate(p, graphs)[0]
        combos = [e + graphs for e in singles if evaluate(p, e + graphs)[0] < min(evaluate(p, e)[0], alone) - 1e-9]
        # --compile takes the model's own attention and linear layers: it joins no swap (with graphs it is
        # compile's reduce-overhead mode, a combination above)
        saving = [e for e in singles if e.kind != "compile" and evaluate(p, e + graphs)[0] < evaluate(p, graphs)[0]]
        if len(saving) > 1:
            total = graphs
            for e in saving:
                total = total + e
            combos.append(total)
        effects.extend(combos)
    for e in effects:
        s, e2e = evaluate(p, e)
        rows.append(_row(p, ids, e.kind, e.option, s, e2e, e.model, e.inputs, error_text(e.kind),
                         e.d_busy.get(st.key, 0.0) * st.overlap))
    if st.stage == "denoiser" and p.steps > 1:
        skipped, mean = step_cache(st.wall_ms, p.steps, skip_fraction)
        # a DiT's runs measure it (`--cache first-block`, driven by the same assumed share); a UNet has no cache
        # hook in diffusers, so its row only describes the saving
        # (`step_cache_support`: what the run found; a run before it is judged by its architecture)
        support = p.run.meta.get("step_cache_support")
        dit = ((p.run.meta.get("config") or {}).get("family") or {}).get("architecture") == "dit"
        runnable = support == "ok" or (support is None and dit)
        option = (f"--cache first-block --cache-schedule {skip_fraction:g}" if runnable
                  else f"cache {skipped} of {p.steps} steps")
        # the stated error was checked on a DiT's First Block Cache: it says nothing of a UNet's caching
        error = error_text("step-cache") if runnable else ("unvalidated (no step cache runs on this denoiser here, "
                                                           "e.g. a UNet's DeepCache; the ±2 % check is a DiT's "
                                                           "First Block Cache)")
        rows.append(_row(p, ids, "step-cache", option, mean,
                         p.e2e_ms - skipped * st.wall_ms,
                         f"steps skipped x step cost: {skipped} of {p.steps} denoiser calls reuse a cached output at "
                         f"no cost (skip fraction {skip_fraction:g}, assumed); the projected step is the mean over "
                         "the generation; output quality not modelled",
                         f"meta timings.{st.key} {st.wall_ms:.2f} ms, passes.steps {p.steps}, timings.e2e",
                         error, -st.busy_ms * skipped / p.steps))
    else:
        rows.append(_not_applicable(p, ids, "step-cache", "", "only diffusion runs of more than one denoising step"))
    out = pd.DataFrame(rows, columns=list(ADVICE_COLUMNS))
    out = out.sort_values(["saving_ms", "kind"], ascending=[False, True], na_position="last", kind="stable")
    out["rank"] = pd.array([i + 1 if v == v else None for i, v in enumerate(out["saving_ms"])], dtype="Int64")
    return out.reset_index(drop=True)


def advice_table(runs: Sequence[Run], bench: pd.DataFrame | None = None, targets: Iterable[str] = (),
                 skip_fraction: float = STEP_CACHE_SKIP_FRACTION,
                 validation: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per ok run, its optimisation opportunities ranked by projected step saving: CUDA graphs, channels-last, FP8
    linear layers, each other attention backend, step caching, their compatible combinations, and (``targets``,
    ``gpus.json`` keys) the run moved to another GPU; each with the model that projected it, the inputs it read and
    its stated error (:data:`VALIDATED_ERROR`). A projection that does not apply (a CPU run's GPU options, fp8 on a
    GPU without it) is a row saying why, ranked last.

    Args:
        runs: loaded runs; failed runs are left out, runs without kernels project from their timings alone.
        bench: rows of `mmchar bench-attn` tables (:func:`~mmchar.analysis.mechanisms.load_bench`) for the
            attention backend swap; without them its cost model.
        targets: GPUs to project the run onto (``gpus.json`` keys); an unknown one raises UnknownNameError.
        skip_fraction: the share of denoising steps step caching skips (assumed).
        validation: rows of ``validation.csv`` tables (:func:`read_validation`) besides those found on their own:
            the ``validation.csv`` of each run's store or of its ``validate/`` folder (`mmchar advise --validate`
            writes it there by default). Given rows win over found ones for the same run and option.

    Returns:
        Columns ``run_id, label, workload, backend, device, rank, kind, option, step_key, step_ms,
        projected_step_ms, saving_ms, saving_pct, e2e_ms, projected_e2e_ms, model, inputs, error,
        measured_step_ms, validating_run``; ``rank`` 1 is the largest step saving (NA for rows that do not apply);
        ``measured_step_ms`` the step a validating run measured with the option, NaN where none did.
    """
    targets = [check_target_gpu(t) for t in targets]
    labels = run_labels(runs)
    with_k = {r.run_id: k for r, k in with_kernels(runs)}
    frames = []
    for run in runs:
        if run.status != "ok":
            continue
        k = with_k.get(run.run_id)
        if k is None:
            from mmchar.store import empty_kernels
            k = empty_kernels()
        frames.append(advise_run(run, k, label=labels[run.run_id], bench=bench, targets=targets,
                                 skip_fraction=skip_fraction))
    if not frames:
        return pd.DataFrame(columns=list(ADVICE_COLUMNS))
    found = read_validation(validation_files(runs))
    if validation is not None and len(validation):
        found = pd.concat([found, validation], ignore_index=True) if len(found) else validation
    return with_measured(pd.concat(frames, ignore_index=True), found)


# --- measured: what `mmchar advise --validate` ran (mmchar/validate.py) ---------------------------------------

def validation_files(runs: Iterable[Run]) -> list[Path]:
    """The ``validation.csv`` tables that may hold measurements of these runs' opportunities: in each run's store,
    or in its ``validate/`` folder (where `mmchar advise --validate` writes by default); those that exist."""
    out: list[Path] = []
    for run in runs:
        if run.path is None:
            continue
        store = Path(run.path).parent
        out += [f for f in (store / VALIDATION_FILE, store / VALIDATE_DIR / VALIDATION_FILE) if f.is_file()]
    return list(dict.fromkeys(out))


def read_validation(paths: Iterable[str | Path], *, strict: bool = False) -> pd.DataFrame:
    """The rows of ``validation.csv`` tables, each path the file or a folder holding one, stacked in the order
    given (a later row of the same run and option wins in :func:`with_measured`). ``strict`` (a path a user
    named): a path without such a table raises :class:`RunNotFoundError`; otherwise it is passed over (a table is
    measured data to show where present, its absence is no error)."""
    frames = []
    for p in map(Path, paths):
        f = p / VALIDATION_FILE if p.is_dir() else p
        if not f.is_file():
            if strict:
                raise RunNotFoundError(f"{p} holds no {VALIDATION_FILE}; pass the table `mmchar advise --validate` "
                                       "wrote, or the folder it wrote it in")
            continue
        try:
            t = pd.read_csv(f)
        except (ValueError, OSError) as e:  # pandas' parser errors are ValueErrors
            if strict:
                raise RunNotFoundError(f"{f} is not a readable validation table ({first_line(e)})") from None
            continue
        missing = {"run_id", "option", "measured_step_ms"} - set(t.columns)
        if missing:
            if strict:
                raise RunNotFoundError(f"{f} is not a validation table (no {', '.join(sorted(missing))} column)")
            continue
        frames.append(t.reindex(columns=list(VALIDATION_COLUMNS)))
    if not frames:
        return pd.DataFrame(columns=list(VALIDATION_COLUMNS))
    return pd.concat(frames, ignore_index=True)


def with_measured(table: pd.DataFrame, validation: pd.DataFrame) -> pd.DataFrame:
    """``table`` (advice) with ``measured_step_ms`` and ``validating_run`` filled from validation rows of the same
    run and option (the last measured row wins: a later refused or failed attempt hides no measurement); missing
    (NaN) where no validating run measured the option."""
    out = table.copy()
    out["measured_step_ms"] = float("nan")
    out["validating_run"] = None
    if validation is None or validation.empty or out.empty:
        return out
    v = validation[pd.to_numeric(validation["measured_step_ms"], errors="coerce").notna()]
    v = v.drop_duplicates(["run_id", "option"], keep="last").set_index(["run_id", "option"])
    keys = list(zip(out["run_id"], out["option"]))
    measured = pd.to_numeric(v["measured_step_ms"], errors="coerce")
    out["measured_step_ms"] = [float(measured.get(k, float("nan"))) for k in keys]
    by = v["validating_run"].where(v["validating_run"].notna(), None)
    out["validating_run"] = [by.get(k) if m == m else None for k, m in zip(keys, out["measured_step_ms"])]
    return out
