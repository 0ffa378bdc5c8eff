"""The module tree: one step's kernel time rolled up the model's module hierarchy (a sunburst's or treemap's
input), each module with the op class that holds most of its time."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from mmchar.shares import share_of
from mmchar.store import Run

from .steps import step_stage
from .tables import run_labels, with_kernels


def module_tree(runs: Sequence[Run], max_depth: int = 6) -> pd.DataFrame:
    """Kernel time of the step stage (the denoiser, or a token model's generator; else every stage) rolled up the
    module hierarchy, per run: one row per module-path prefix down to ``max_depth`` levels, with its inclusive
    time and its parent, as a sunburst or treemap takes it.

    Returns:
        Columns ``run_id, run_label, stage, id, parent, label, time_us, share, top_class``; ``run_label`` is the
        run's short name (``label`` already names the sector), ``id`` the path prefix (the stage name at the root),
        ``share`` its part of the stage's kernel time, ``top_class`` the op class with most time under it. Kernels
        outside every module count at the root.
    """
    cols = ["run_id", "run_label", "stage", "id", "parent", "label", "time_us", "share", "top_class"]
    labels = run_labels(runs)
    parts = []
    for run, k in with_kernels(runs):
        step = step_stage(k)
        k = k[k["stage"].astype(str) == step] if step else k
        root = step or "all stages"
        total = float(k["dur_us"].sum())
        times: dict[str, float] = {root: total}
        by_class: dict[str, dict[str, float]] = {root: {}}
        grouped = k.groupby([k["module_path"].astype(str), k["op_class"].astype(str)], observed=True)["dur_us"].sum()
        for (path, op_class), t in grouped.items():
            segs = [p for p in str(path).split(".") if p][:max_depth]
            for key in [root] + [root + "/" + ".".join(segs[:i]) for i in range(1, len(segs) + 1)]:
                if key != root:
                    times[key] = times.get(key, 0.0) + float(t)
                cls = by_class.setdefault(key, {})
                cls[op_class] = cls.get(op_class, 0.0) + float(t)
        rows = []
        for key, t in times.items():
            parent = "" if key == root else (key.rsplit(".", 1)[0] if "." in key.split("/", 1)[1] else root)
            segs = key.split("/", 1)[-1].split(".")
            label = root if key == root else (".".join(segs[-2:]) if segs[-1].isdigit() else segs[-1])  # up_blocks.3
            cls = by_class.get(key) or {"": 0.0}
            rows.append({"run_id": run.run_id, "run_label": labels[run.run_id], "stage": root, "id": key,
                         "parent": parent, "label": label, "time_us": t, "top_class": max(cls, key=cls.get)})
        tree = pd.DataFrame(rows, columns=cols)
        tree["share"] = share_of(tree["time_us"], total)  # inclusive times nest: the whole is the root's, not their sum
        parts.append(tree)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=cols)
