"""The decoder's own structure: what share of a generation the VAE (or VQ) decode takes, and what its time goes
to by sub-class (3D and 2D convolutions, causal padding, up-sampling, norms: `mmchar.sub_classes`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from mmchar.shares import share_of, shares_within
from mmchar.store import Run

from .tables import _ids, run_labels, with_kernels

DECODER = "decoder"


def _median_ms(run: Run, key: str) -> float:
    value = ((run.meta.get("timings") or {}).get(key) or {}).get("median_ms")
    return float(value) if value is not None else np.nan


def decoder_table(runs: Sequence[Run]) -> pd.DataFrame:
    """Per run, the decoder's share of end-to-end time and its kernel time split by sub-class.

    The share of e2e is the timed pass's (median decoder latency / median e2e latency: wall time, idle included);
    the split is of the decoder's kernel time in the full profile (on a CPU run its ops' self time), one row per
    sub-class × op class, most time first. Kernels no sub-class rule names (``sub_class`` empty) stay as rows of
    their op class, so the rows of a run add up to its decoder's kernel time.

    Returns:
        Columns ``run_id, label, workload, backend, device, decoder_ms, e2e_ms, decoder_share, sub_class,
        op_class, time_us, share, calls``; ``share`` is of the decoder's kernel time. Runs without decoder kernels
        (no decoder stage, failed runs) have no rows.
    """
    cols = ["run_id", "label", "workload", "backend", "device", "decoder_ms", "e2e_ms", "decoder_share",
            "sub_class", "op_class", "time_us", "share", "calls"]
    labels = run_labels(runs)
    parts = []
    for run, k in with_kernels(runs):
        k = k[k["stage"].astype(str) == DECODER]
        if k.empty:
            continue
        frame = pd.DataFrame({"sub_class": k["sub_class"].astype(str), "op_class": k["op_class"].astype(str),
                              "time_us": k["dur_us"].astype(float)})
        split = frame.groupby(["sub_class", "op_class"], sort=False).agg(
            time_us=("time_us", "sum"), calls=("time_us", "size")).reset_index()
        split["share"] = shares_within(split)
        split = split.sort_values(["time_us", "sub_class", "op_class"], ascending=[False, True, True], kind="stable")
        ids = _ids(run, labels[run.run_id])
        decoder_ms, e2e_ms = _median_ms(run, DECODER), _median_ms(run, "e2e")
        for c in ("run_id", "label", "workload", "backend", "device"):
            split[c] = ids[c]
        split["decoder_ms"], split["e2e_ms"] = decoder_ms, e2e_ms
        split["decoder_share"] = float(share_of(decoder_ms, e2e_ms)) if not np.isnan(decoder_ms) else np.nan
        parts.append(split[cols])
    out = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=cols)
    return out.reset_index(drop=True)
