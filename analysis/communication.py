"""Communication: what a sequence-parallel step spends in collectives, how much of it compute hides (kernels
on other streams at the same moment), and what splitting the sequence over more GPUs buys."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from mmchar.intervals import overlap, union
from mmchar.schema import STEP_STAGES, step_key
from mmchar.store import Run

from .scaling import series_names
from .tables import _ids, profiled_steps, with_kernels, work_key


def communication_table(runs: Sequence[Run]) -> pd.DataFrame:
    """Per run × stage: time in communication kernels, their payload bytes (collective inputs, read once), and how
    much of that time compute kernels ran at the same moment (other streams): communication hidden behind work.

    Returns:
        Columns ``run_id, workload, backend, device, stage, comm_us, comm_kernels, payload_bytes, compute_us,
        overlap_us, overlap_share``; runs with no communication kernels are left out.
    """
    cols = ["run_id", "workload", "backend", "device", "stage", "comm_us", "comm_kernels", "payload_bytes",
            "compute_us", "overlap_us", "overlap_share"]
    rows = []
    for run, k in with_kernels(runs):
        comm = k["op_class"].astype(str) == "communication"
        if not comm.any():
            continue
        ids = _ids(run)
        for stage, g in k.groupby(k["stage"].astype(str), sort=False):
            c = comm.loc[g.index]
            if not c.any():
                continue
            spans = np.stack([g["ts_us"].to_numpy(float), (g["ts_us"] + g["dur_us"]).to_numpy(float)], axis=1)
            comm_u, work_u = union(spans[c.to_numpy()]), union(spans[~c.to_numpy()])
            comm_us = float(g.loc[c, "dur_us"].sum())
            hidden = overlap(comm_u, work_u)
            union_us = sum(b - a for a, b in comm_u)
            rows.append({"run_id": ids["run_id"], "workload": ids["workload"], "backend": ids["backend"],
                         "device": ids["device"], "stage": stage, "comm_us": comm_us, "comm_kernels": int(c.sum()),
                         "payload_bytes": float(g.loc[c, "bytes"].sum(min_count=1)),
                         "compute_us": float(g.loc[~c, "dur_us"].sum()), "overlap_us": hidden,
                         "overlap_share": hidden / union_us if union_us > 0 else np.nan})
    return pd.DataFrame(rows, columns=cols)


def sequence_parallel_table(runs: Sequence[Run]) -> pd.DataFrame:
    """Denoiser step latency over 1, 2, 4 ... GPUs: runs of one configuration (``work_key``: same device, dtype ...)
    that differ only in the ranks their sequence was split over (and the scheme), with the speedup and parallel
    efficiency against the one-GPU run of the same configuration (when present) and what each step spent in
    communication kernels (time, payload, share of the step, hidden behind compute) from the full profile.

    Returns:
        Columns ``workload, backend, device, series, gpus, scheme, step_ms, speedup, efficiency, comm_ms_per_step,
        comm_share, payload_mb_per_step, overlap_share, run_id``; configurations without a sequence-parallel run
        are left out.
    """
    cols = ["workload", "backend", "device", "series", "gpus", "scheme", "step_ms", "speedup", "efficiency",
            "comm_ms_per_step", "comm_share", "payload_mb_per_step", "overlap_share", "run_id"]
    comm = communication_table(runs)
    comm = comm[comm["stage"].isin(STEP_STAGES)].groupby("run_id")[["comm_us", "payload_bytes", "overlap_us"]].sum()
    groups: dict[tuple, list[tuple[Run, dict]]] = {}
    for run in runs:
        t = run.meta.get("timings") or {}
        if run.status != "ok" or not t:
            continue
        # one configuration but for its ranks and scheme: never a bf16 run's speedup over an fp32 run's step
        groups.setdefault(work_key(run, without=("gpus", "sp_scheme", "config_hash")), []).append((run, _ids(run)))
    groups = {key: m for key, m in groups.items() if any(ids["gpus"] > 1 for _, ids in m)}
    names = series_names({key: [r for r, _ in m] for key, m in groups.items()}, "gpus")
    rows = []
    for key, members in groups.items():
        f, held = dict(key), names[key]
        step = {r.run_id: (r.meta["timings"].get(step_key(r.meta["timings"])) or {}).get("median_ms")
                for r, _ in members}
        ones = [step[r.run_id] for r, ids in members if ids["gpus"] == 1 and step[r.run_id]]
        base = min(ones) if ones else None
        for r, ids in sorted(members, key=lambda m: m[1]["gpus"]):
            ms, gpus = step[r.run_id], ids["gpus"]
            psteps = profiled_steps(r)
            c = comm.loc[r.run_id] if r.run_id in comm.index else None
            comm_ms = float(c["comm_us"]) / 1e3 / psteps if c is not None else 0.0
            scheme = "+".join(sorted((r.meta.get("sequence_parallel") or {}).get("schemes") or {}))
            rows.append({"workload": f["workload"], "backend": f["backend"], "device": f["device"], "series": held,
                         "gpus": gpus, "scheme": scheme or ("one device" if gpus == 1 else ""),
                         "step_ms": ms, "speedup": base / ms if base and ms else np.nan,
                         "efficiency": base / ms / gpus if base and ms else np.nan, "comm_ms_per_step": comm_ms,
                         "comm_share": comm_ms / ms if ms else np.nan,
                         "payload_mb_per_step": float(c["payload_bytes"]) / 1e6 / psteps if c is not None else 0.0,
                         "overlap_share": float(c["overlap_us"]) / float(c["comm_us"])
                         if c is not None and c["comm_us"] > 0 else np.nan, "run_id": r.run_id})
    return pd.DataFrame(rows, columns=cols)
