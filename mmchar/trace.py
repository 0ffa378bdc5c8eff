"""Parse a PyTorch profiler (Kineto) trace once into flat columns, with each event's enclosing context.

CPU-side events (aten ops, mmchar's stage / module / attention-core ranges, CUDA runtime calls) are nested
per thread by a single stack sweep over events sorted by (start, -duration); every event inherits its
parent's context (stage, step, module, attention scope, top-level op) and overrides what it is itself. GPU
activities (kernels, memcpy, memset) take the context of the runtime call that launched them
(``args.correlation``). On a CPU-only trace the "kernels" are the aten ops themselves, weighted by self time.

A foreign trace (one mmchar did not record: `mmchar analyze`) has none of mmchar's ranges; there the profiler's
own structure stands in: ``ProfilerStep#N`` ranges give the step, and the ``nn.Module: Class_i`` events that
``with_stack=True, with_modules=True`` records give a module path of class-instance names. A thread that runs
outside every step range of its own (autograd's backward thread, a data loader) takes the step whose range holds
an event's start, as Holistic Trace Analysis assigns iterations. Event categories are matched case-insensitively
(older Kineto wrote ``Kernel``, ``Runtime``, ``Memcpy``, ``Operator``); device activity recorded without a
launch mmchar can follow (MTIA's device events, CUPTI range-profiler counter ranges) is counted, not attributed.
"""

from __future__ import annotations

import bisect
import contextlib
import gc
import gzip
import itertools
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmchar.errors import TraceError
from mmchar.scopes import (ATTN_SCOPE_PREFIX, COMM_SCOPE_PREFIX, MODULE_SCOPE_PREFIX, PROJ_SCOPE_PREFIX,
                           STAGE_SCOPE_PREFIX, parse_module_label, parse_stage_label)


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """A 1M-event trace makes millions of dicts and lists; the cyclic collector, triggered again and again
    while they are built, would take 80% of the parse time (23 s instead of 4.5 s for json.loads alone)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()

# event categories, lowercased (older Kineto capitalised them: Kernel, Runtime, Memcpy, Memset, Operator)
_GPU_CATS = {"kernel", "gpu_memcpy", "gpu_memset", "memcpy", "memset"}
_RUNTIME_CATS = {"cuda_runtime", "cuda_driver", "runtime", "driver"}
_OP_CATS = {"cpu_op", "operator"}
# device activity with no launch correlation to follow (MTIA's device events) or no timings (CUPTI's range
# profiler replays each kernel for its counters): counted per category, with the device kind it comes from and why
# it is left out
UNATTRIBUTED_DEVICE_CATS = {
    "mtia_ccp_events": ("mtia", "MTIA device events carry no correlation to the host ops that queued them"),
    "cuda_profiler_range": ("cuda", "CUPTI range-profiler ranges replay each kernel for its counters: no timing, "
                                    "no launch"),
}
_OP, _ANNOT, _RUNTIME = 0, 1, 2
PROFILER_STEP_PREFIX = "ProfilerStep#"
# torch.compile's runtime wraps a compiled graph in op-like events; the aten ops inside are the real ones, so
# these never become an event's top-level op (their own host time still counts, on CPU traces)
COMPILE_WRAPPERS = ("Torch-Compiled Region", "TorchDynamo Cache Lookup", "CompiledFunction", "Pregraph bytecode",
                    "AOTDispatcher")
PY_MODULE_PREFIX = "nn.Module: "


@dataclass
class Context:
    """What encloses an event on the CPU side (built positionally in the parser's hot loop: a field added here
    is passed on in every constructor there)."""

    stage: str = ""
    step: int = -1
    module: str = ""
    attn: str = ""  # the attention-core scope label, "" outside one
    attn_id: int = -1  # which attention-core call (one id per scope instance)
    top_op: int = -1  # index (into Trace.ops) of the outermost enclosing aten op
    leaf_op: int = -1  # index of the innermost enclosing aten op
    comm: str = ""  # the communication scope label (mmchar.sequence_parallel.comm_scope), "" outside one
    comm_id: int = -1  # which collective call
    proj: str = ""  # the projection scope label (a linear layer a projection backend replaced), "" outside one
    proj_id: int = -1  # which projection call
    call: int = -1  # which call of its step the stage root's call is (0, 1 for guidance's two calls); -1 outside


@dataclass
class Trace:
    """Flat columns of one trace. ``ops`` are aten ops (name, dims, concrete inputs, input types)."""

    ops: list[tuple[str, Any, Any, Any]] = field(default_factory=list)
    # rows: one per GPU activity (GPU trace) or per aten op with self time (CPU trace)
    name: list[str] = field(default_factory=list)
    ts: list[float] = field(default_factory=list)
    dur: list[float] = field(default_factory=list)
    ctx: list[Context] = field(default_factory=list)
    on_gpu: bool = False
    n_events: int = 0
    # events of UNATTRIBUTED_DEVICE_CATS per category; GPU activities whose launch is not in the trace, and their time
    device_events: dict[str, int] = field(default_factory=dict)
    unlaunched: int = 0
    unlaunched_us: float = 0.0


def check_trace_path(path: str | os.PathLike[str]) -> Path:
    """``path`` as a Path when it can be read as a trace (a file or a pipe; a folder read as one said "truncated or
    not gzip ([Errno 21] ...)").

    Raises:
        TraceError: a missing path or a folder.
    """
    path = Path(path)
    if path.is_dir():
        raise TraceError(f"trace {path} is a folder; pass the .json or .json.gz file the profiler wrote")
    if not path.exists():
        raise TraceError(f"trace {path} does not exist")
    return path


def load_events(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The trace JSON (``.json`` or ``.json.gz``) as a dict; a clear error for missing or truncated files."""
    path = check_trace_path(path)
    try:
        raw = gzip.open(path, "rb").read() if path.suffix == ".gz" else path.read_bytes()
    except FileNotFoundError:
        raise TraceError(f"trace {path} does not exist") from None
    except (OSError, EOFError) as e:
        raise TraceError(f"trace {path} is truncated or not gzip ({e}); re-run the profile") from None
    try:
        with gc_paused():
            data = json.loads(raw)
    except ValueError as e:
        raise TraceError(f"trace {path} is truncated or not JSON ({str(e)[:80]}); re-run the profile") from None
    if not isinstance(data, dict) or "traceEvents" not in data:
        raise TraceError(f"{path} is not a PyTorch profiler trace (no traceEvents)")
    return data


def parse_trace(data: dict[str, Any] | str | os.PathLike[str], foreign_stage: str | None = None) -> Trace:
    """Parse a trace (dict or path) into a `Trace`; see the module docstring.

    Args:
        data: the trace dict, or a ``.json`` / ``.json.gz`` path.
        foreign_stage: for traces mmchar did not record: the stage every event belongs to, with steps from
            ``ProfilerStep#N`` and modules from ``nn.Module:`` events.
    """
    if not isinstance(data, dict):
        data = load_events(data)
    with gc_paused():
        return _parse(data, foreign_stage)


def _parse(data: dict[str, Any], foreign_stage: str | None = None) -> Trace:
    events = data["traceEvents"]
    trace = Trace(n_events=len(events))

    cpu: dict[Any, list[tuple[float, float, int, int]]] = {}  # tid -> (ts, -dur, kind, index)
    cpu_name: list[str] = []
    cpu_corr: list[int] = []
    cpu_ts: list[float] = []
    cpu_dur: list[float] = []
    gpu: list[tuple[str, float, float, int]] = []
    # foreign: (start, end, step) of the ProfilerStep ranges, of every process id (a trace is one process; a
    # container can record its main thread under another pid than its other threads)
    windows: list[tuple[float, float, int]] = []
    for e in events:
        if e.get("ph") != "X":
            continue
        cat = str(e.get("cat", "")).lower()
        if cat in _GPU_CATS:
            args = e.get("args") or {}
            gpu.append((e.get("name", ""), float(e["ts"]), float(e.get("dur", 0.0)), args.get("correlation", -1)))
            continue
        name = e.get("name", "")
        step = _profiler_step(name)  # a step range, whatever its category (PyTorch 1.8 wrote it as an Operator)
        if step is not None or cat == "user_annotation" or (foreign_stage is not None and cat == "python_function"
                                                            and name.startswith(PY_MODULE_PREFIX)):
            kind = _ANNOT
            if step is not None and foreign_stage is not None:
                windows.append((float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0.0)), step))
        elif cat in _OP_CATS:
            kind = _OP
        elif cat in _RUNTIME_CATS:
            kind = _RUNTIME
        else:
            if cat in UNATTRIBUTED_DEVICE_CATS:
                trace.device_events[cat] = trace.device_events.get(cat, 0) + 1
            continue
        args = e.get("args") or {}
        i = len(cpu_name)
        ts, dur = float(e["ts"]), float(e.get("dur", 0.0))
        cpu_name.append(name)
        cpu_ts.append(ts)
        cpu_dur.append(dur)
        if kind == _OP:
            cpu_corr.append(len(trace.ops))
            trace.ops.append((name, args.get("Input Dims"), args.get("Concrete Inputs"), args.get("Input type")))
        elif kind == _RUNTIME:
            cpu_corr.append(args.get("correlation", -1))
        else:
            cpu_corr.append(-1)
        cpu.setdefault((e.get("pid"), e.get("tid")), []).append((ts, -dur, kind, i))

    trace.on_gpu = bool(gpu)
    launch_ctx: dict[int, Context] = {}
    op_rows: list[tuple[int, Context, float]] = []  # CPU trace: (cpu index, context, self time)
    if foreign_stage is None:
        empty = Context()
    else:  # outside every ProfilerStep range (where the trace has them): no step, not step 0
        stepped = any(cpu_name[i].startswith(PROFILER_STEP_PREFIX) for i in range(len(cpu_name)))
        empty = Context(stage=foreign_stage, step=-1 if stepped else 0)
    root = _window_roots(windows, empty)
    for items in cpu.values():
        items.sort()
        stack: list[tuple[float, Context, int]] = []  # (end, context of the event, cpu index if op else -1)
        child_time: dict[int, float] = {}
        for ts, neg_dur, kind, i in items:
            end = ts - neg_dur
            while stack and stack[-1][0] <= ts:
                stack.pop()
            parent = stack[-1][1] if stack else root(ts)
            if kind == _RUNTIME:
                launch_ctx[cpu_corr[i]] = parent
                continue
            if kind == _OP:
                op = cpu_corr[i]
                if cpu_name[i].startswith(COMPILE_WRAPPERS):
                    ctx = parent
                else:
                    ctx = Context(parent.stage, parent.step, parent.module, parent.attn, parent.attn_id,
                                  parent.top_op if parent.top_op >= 0 else op, op, parent.comm, parent.comm_id,
                                  parent.proj, parent.proj_id, parent.call)
                if not trace.on_gpu:
                    for s in reversed(stack):  # charge this op's time to its nearest enclosing op
                        if s[2] >= 0:
                            child_time[s[2]] = child_time.get(s[2], 0.0) + (end - ts)
                            break
                    op_rows.append((i, ctx, end - ts))
                stack.append((end, ctx, i))
                continue
            name = cpu_name[i]
            if name.startswith(STAGE_SCOPE_PREFIX):
                stage, step, call = parse_stage_label(name)
                ctx = Context(stage, step, parent.module, parent.attn, parent.attn_id, parent.top_op,
                              parent.leaf_op, parent.comm, parent.comm_id, parent.proj, parent.proj_id, call)
            elif name.startswith(MODULE_SCOPE_PREFIX):
                ctx = Context(parent.stage, parent.step, parse_module_label(name), parent.attn,
                              parent.attn_id, parent.top_op, parent.leaf_op, parent.comm, parent.comm_id,
                              parent.proj, parent.proj_id, parent.call)
            elif name.startswith(ATTN_SCOPE_PREFIX):
                ctx = Context(parent.stage, parent.step, parent.module, name, i, parent.top_op, parent.leaf_op,
                              parent.comm, parent.comm_id, parent.proj, parent.proj_id, parent.call)
            elif name.startswith(COMM_SCOPE_PREFIX):
                ctx = Context(parent.stage, parent.step, parent.module, parent.attn, parent.attn_id, parent.top_op,
                              parent.leaf_op, name, i, parent.proj, parent.proj_id, parent.call)
            elif name.startswith(PROJ_SCOPE_PREFIX):
                ctx = Context(parent.stage, parent.step, parent.module, parent.attn, parent.attn_id, parent.top_op,
                              parent.leaf_op, parent.comm, parent.comm_id, name, i, parent.call)
            elif foreign_stage is not None and name.startswith(PY_MODULE_PREFIX):
                inst = name[len(PY_MODULE_PREFIX):]
                ctx = Context(parent.stage, parent.step, f"{parent.module}.{inst}" if parent.module else inst,
                              parent.attn, parent.attn_id, parent.top_op, parent.leaf_op, parent.comm,
                              parent.comm_id, parent.proj, parent.proj_id, parent.call)
            elif foreign_stage is not None and name.startswith(PROFILER_STEP_PREFIX):
                step = _profiler_step(name)
                ctx = Context(parent.stage, parent.step if step is None else step, parent.module, parent.attn,
                              parent.attn_id, parent.top_op, parent.leaf_op, parent.comm, parent.comm_id,
                              parent.proj, parent.proj_id, parent.call)
            else:
                ctx = parent
            stack.append((end, ctx, -1))
        if not trace.on_gpu:
            for i, ctx, total in op_rows:
                self_us = total - child_time.get(i, 0.0)
                if self_us > 0:
                    trace.name.append(cpu_name[i])
                    trace.ts.append(cpu_ts[i])
                    trace.dur.append(self_us)
                    trace.ctx.append(ctx)
            op_rows.clear()

    if trace.on_gpu:
        gpu.sort(key=lambda g: g[1])
        for name, ts, dur, corr in gpu:
            trace.name.append(name)
            trace.ts.append(ts)
            trace.dur.append(dur)
            ctx = launch_ctx.get(corr)
            if ctx is None:
                trace.unlaunched += 1
                trace.unlaunched_us += dur
                ctx = empty
            trace.ctx.append(ctx)
    return trace


def _profiler_step(name: str) -> int | None:
    """N of a ``ProfilerStep#N`` range, None for any other name."""
    if not name.startswith(PROFILER_STEP_PREFIX):
        return None
    step = name[len(PROFILER_STEP_PREFIX):]
    return int(step) if step.isdigit() else None


def _window_roots(windows: list[tuple[float, float, int]], empty: Context) -> Callable[[float], Context]:
    """The context of an event no range of its own thread encloses: ``empty``, with the step whose
    ``ProfilerStep`` range holds the event's start where one does (a backward thread's ops, launched while the
    main thread is inside a step); of nested ranges, the innermost (the latest to start)."""
    if not windows:
        return lambda ts: empty
    windows = sorted(windows)
    starts = [w[0] for w in windows]
    reach = list(itertools.accumulate((w[1] for w in windows), max))  # the latest end among windows[:i + 1]
    contexts: dict[int, Context] = {}

    def root(ts: float) -> Context:
        i = bisect.bisect_right(starts, ts) - 1
        while i >= 0 and reach[i] > ts and windows[i][1] <= ts:  # an earlier, longer range may still hold ts
            i -= 1
        if i < 0 or windows[i][1] <= ts:
            return empty
        step = windows[i][2]
        ctx = contexts.get(step)
        if ctx is None:
            ctx = contexts[step] = Context(empty.stage, step)
        return ctx

    return root
