"""`mmchar analyze`: a PyTorch profiler trace that mmchar did not record, attributed into a run folder.

The same parse and attribution as a profiled run, so export, study, diff and the dashboard read it like any other
run. What a foreign trace lacks is said in its meta.json rather than guessed: no uninstrumented timing pass (the
latencies are the profiled ones), no workload configuration, and module paths made of the profiler's
``nn.Module: Class_i`` names (present only when the trace was recorded with ``with_stack=True,
with_modules=True``); attention sites come from the shapes alone (cross where query and key lengths differ).
``device`` names the hardware the trace was recorded on and ``rows`` what the table's time is (``device
kernels``, or ``host ops`` where the trace holds no kernels mmchar can attribute: a CPU run, an MTIA trace, a
CUPTI range-profiler trace); ``unattributed`` lists what the breakdown leaves out and why. A training trace's
backward work is in the kernels' ``phase`` column, its total in ``backward_us``.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import shutil
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

from mmchar.attribution import attribute
from mmchar.errors import InvalidParameterError, TraceError
from mmchar.schema import BACKWARD_PHASE, STAGES
from mmchar.store import Run, unique_run_id, write_run
from mmchar.trace import UNATTRIBUTED_DEVICE_CATS, Trace, load_events, parse_trace


def _slug(text: str) -> str:
    """A workload name fit for a run id (a folder name): lowercase letters, digits and dots, hyphen-joined."""
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-") or "trace"


def _name_from(path: Path) -> str:
    return _slug(path.name.removesuffix(".gz").removesuffix(".json").removesuffix(".pt.trace"))


def _device(data: dict[str, Any], trace: Trace) -> dict[str, Any]:
    """The device the trace was recorded on: its kernels' GPU, or the accelerator a host-op trace names (MTIA's
    device events, a CUPTI range-profiler trace's GPU), else the CPU."""
    props = data.get("deviceProperties") or []
    kinds = {UNATTRIBUTED_DEVICE_CATS[c][0] for c in trace.device_events}
    kind = "cuda" if trace.on_gpu else next(iter(sorted(kinds)), "cpu")
    if kind == "cpu":
        return {"type": "cpu", "name": "cpu"}
    if not props:
        return {"type": kind, "name": ""}
    p = props[0]
    device = {"type": kind, "name": p.get("name", ""), "count": len(props)}
    if "totalGlobalMem" in p:
        device["memory_bytes"] = p["totalGlobalMem"]
    if "computeMajor" in p:
        device["capability"] = f"{p.get('computeMajor', '')}.{p.get('computeMinor', '')}"
    return device


def _unattributed(trace: Trace) -> list[dict[str, Any]]:
    """What the trace holds that its breakdown does not place: device events of no launch or no timing, and
    device kernels whose launch the trace lacks (their stage is the foreign stage, their op unknown)."""
    out: list[dict[str, Any]] = []
    for cat, n in sorted(trace.device_events.items()):
        out.append({"events": cat, "count": n,
                    "reason": UNATTRIBUTED_DEVICE_CATS[cat][1] + "; the breakdown is host-op self time"})
    if trace.unlaunched:
        out.append({"events": "kernels without a launch", "count": trace.unlaunched, "time_us": trace.unlaunched_us,
                    "reason": "their runtime call is not in the trace: no op, module or step"})
    return out


def analyze_trace(path: str | os.PathLike[str], store: str | os.PathLike[str], *, stage: str = "denoiser",
                  name: str | None = None) -> Run:
    """Attribute the trace at ``path`` and write it as a run into ``store``.

    Args:
        path: a Chrome/Kineto trace (``.json`` or ``.json.gz``) from ``torch.profiler``.
        store: the run store to add the run to.
        stage: the stage the traced code stands for (mmchar's step views read ``denoiser`` / ``generator``).
        name: the run's workload name (default: from the file name).

    Raises:
        InvalidParameterError: an unknown stage. TraceError: a missing, truncated or non-profiler file.
    """
    if stage not in STAGES:
        raise InvalidParameterError(f"unknown stage {stage!r}; valid stages: {', '.join(STAGES)}")
    path = Path(path)
    data = load_events(path)
    try:
        trace = parse_trace(data, foreign_stage=stage)
    except (KeyError, TypeError, ValueError) as e:  # an event without a start time, a non-numeric field ...
        raise TraceError(f"{path} is not a well-formed profiler trace ({type(e).__name__}: {e})") from None
    if not trace.name:
        raise TraceError(f"{path} holds no CPU ops or GPU kernels to attribute (an empty or unfinished profile?)")
    att = attribute(trace)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:6]
    workload = _slug(name) if name else _name_from(path)
    run_id = unique_run_id(store, f"{workload}-foreign-{datetime.now().strftime('%Y%m%d-%H%M%S')}-{digest}")
    steps = sorted({int(s) for s in att.kernels["step"].unique()} - {-1}) if len(att.kernels) else []
    device = _device(data, trace)
    unattributed = _unattributed(trace)
    notes = ["foreign trace: no uninstrumented timing pass (profiled durations only), no workload config; "
             "module paths are the profiler's nn.Module class-instance names where recorded"]
    if not trace.on_gpu and device["type"] != "cpu":
        notes.append(f"a {device['type']} trace without device kernels mmchar can attribute: its rows are host ops "
                     "(self time), not device time; see unattributed")
    backward = float(att.kernels.loc[att.kernels["phase"].astype(str) == BACKWARD_PHASE, "dur_us"].sum())
    meta = {
        "run_id": run_id, "created": datetime.now().astimezone().isoformat(timespec="seconds"), "status": "ok",
        "error": None, "workload": workload, "preset": None, "backend": "foreign", "config_hash": digest,
        "config": {"workload": workload, "params": {}, "source": "foreign trace"},
        "device": device, "rows": "device kernels" if trace.on_gpu else "host ops",
        "versions": {"trace_schema": data.get("schemaVersion")},
        "source_trace": str(path.resolve()), "foreign_stage": stage, "profiled_steps": steps,
        "timings": {},  # a foreign trace has no uninstrumented pass: its latencies are the profiled ones
        "notes": notes, "unattributed": unattributed, "backward_us": backward,
        "unmatched_kernels": att.unmatched, "n_events": trace.n_events,
        "has_module_events": bool(len(att.kernels) and (att.kernels["module_path"].astype(str) != "").any()),
    }
    run = Run(meta=meta, kernels=att.kernels, breakdown=att.breakdown)
    with tempfile.TemporaryDirectory(prefix="mmchar-analyze-") as tmp:
        gz = Path(tmp) / "trace.json.gz"  # the run folder keeps a gzip copy: Perfetto / TensorBoard open it
        if path.suffix == ".gz":
            shutil.copyfile(path, gz)
        else:
            with open(path, "rb") as src, gzip.open(gz, "wb") as dst:
                shutil.copyfileobj(src, dst)
        write_run(store, run, trace_file=gz)
    return run
