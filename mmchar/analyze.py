"""`mmchar analyze`: a PyTorch profiler trace that mmchar did not record, attributed into a run folder.

The same parse and attribution as a profiled run, so export, study, diff and the dashboard read it like any other
run. What a foreign trace lacks is said in its meta.json rather than guessed: no uninstrumented timing pass (the
latencies are the profiled ones), no workload configuration, and module paths made of the profiler's
``nn.Module: Class_i`` names (present only when the trace was recorded with ``with_stack=True,
with_modules=True``); attention sites come from the shapes alone (cross where query and key lengths differ).
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
from mmchar.schema import STAGES
from mmchar.store import Run, unique_run_id, write_run
from mmchar.trace import load_events, parse_trace


def _slug(text: str) -> str:
    """A workload name fit for a run id (a folder name): lowercase letters, digits and dots, hyphen-joined."""
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-") or "trace"


def _name_from(path: Path) -> str:
    return _slug(path.name.removesuffix(".gz").removesuffix(".json").removesuffix(".pt.trace"))


def _device(data: dict[str, Any], on_gpu: bool) -> dict[str, Any]:
    props = data.get("deviceProperties") or []
    if on_gpu and props:
        p = props[0]
        return {"type": "cuda", "name": p.get("name", ""), "memory_bytes": p.get("totalGlobalMem"),
                "capability": f"{p.get('computeMajor', '')}.{p.get('computeMinor', '')}", "count": len(props)}
    return {"type": "cuda" if on_gpu else "cpu", "name": "" if on_gpu else "cpu"}


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
    steps = sorted({int(s) for s in att.kernels["step"].unique()}) if len(att.kernels) else []
    meta = {
        "run_id": run_id, "created": datetime.now().astimezone().isoformat(timespec="seconds"), "status": "ok",
        "error": None, "workload": workload, "preset": None, "backend": "foreign", "config_hash": digest,
        "config": {"workload": workload, "params": {}, "source": "foreign trace"},
        "device": _device(data, trace.on_gpu), "versions": {"trace_schema": data.get("schemaVersion")},
        "source_trace": str(path.resolve()), "foreign_stage": stage, "profiled_steps": steps,
        "timings": {},  # a foreign trace has no uninstrumented pass: its latencies are the profiled ones
        "notes": ["foreign trace: no uninstrumented timing pass (profiled durations only), no workload config; "
                  "module paths are the profiler's nn.Module class-instance names where recorded"],
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
