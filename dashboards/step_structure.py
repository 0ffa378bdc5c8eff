"""Step-structure view: which model ran each denoising step, and how classifier-free guidance reached it.

Per run (named by its short label, with how guidance reached the denoiser under it: two calls a step, one batch of
2, none; the run id is in the hover), one bar per step-stage component (the module tree's root: ``unet``,
``transformer``, or Wan 2.2 A14B's two experts ``transformer`` and ``transformer_2``), grouped: its kernel time per
step it ran (full profile). The hover gives the steps it ran in the timed generation and in the profile, and its
attention and gemm shares; a button multiplies by the steps it ran, so an expert split reads as what each expert
cost the generation.

Traces are one per component, not per run, so a page of 100 runs stays a few traces.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative

from mmchar.analysis.step_structure import OUTSIDE, REPLAY

from .palette import FALLBACK_COLOR, MENU_POSITION, style
from .view import View

NO_RUNS = "no run profiled denoising steps (no step-stage kernels)"
MODES = {"two calls": "CFG: two calls a step", "batched": "CFG: one batched call", "none": "no CFG"}


def _number(value: object) -> int | None:
    return None if value is None or pd.isna(value) else int(value)


def guidance_text(mode: object, calls: object, batch: object) -> str:
    """How guidance reached the denoiser, in a few words: the mode, then the calls a step and their batch."""
    if mode is None or pd.isna(mode):
        return "guidance not recorded"
    text = MODES.get(str(mode), f"guidance: {mode}")
    calls, batch = _number(calls), _number(batch)
    detail = [f"{calls} call{'s' if calls != 1 else ''}/step"] if calls is not None else []
    detail += [f"batch {batch}"] if batch is not None else []
    return f"{text} ({', '.join(detail)})" if detail else text


def _share(value: object) -> str:
    return "-" if value is None or pd.isna(value) else f"{float(value):.0%}"


def _steps(steps: object, profiled: object) -> str:
    ran = _number(steps)
    return (f"{ran} steps in the timed generation" if ran is not None else "timed steps not recorded") + \
        f", {_number(profiled)} profiled"


def step_structure_figure(ss: pd.DataFrame) -> go.Figure:
    """Kernel ms per step per step-stage component, grouped by run.

    Args:
        ss: ``analysis.step_structure.step_structure_table`` output.

    Returns:
        A figure with one bar trace per component on a run axis whose tick labels add the run's guidance mode, and
        buttons for ms per step and ms per generation (× the steps it ran); without rows, an empty figure that says
        no run profiled denoising steps.
    """
    fig = go.Figure()
    if ss.empty:
        fig.add_annotation(text=NO_RUNS, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5)
        return style(fig, "Step structure: " + NO_RUNS)
    runs = list(dict.fromkeys(ss["label"]))
    first = ss.drop_duplicates("label").set_index("label").reindex(runs)
    guidance = {r: guidance_text(m, c, b) for r, m, c, b in zip(runs, first["guidance_mode"], first["calls_per_step"],
                                                               first["denoiser_batch"])}
    components = list(dict.fromkeys(ss["component"].astype(str)))
    unnamed = (OUTSIDE, REPLAY)  # kernels no model's module range encloses: grey, last
    components = [c for c in components if c not in unnamed] + [c for c in components if c in unnamed]
    colors = qualitative.Plotly
    # the unnamed rows' kernels run in every step: per generation they count the run's steps, every model's
    named_rows = ss[~ss["component"].astype(str).isin(unnamed)]
    total = pd.to_numeric(named_rows["steps"], errors="coerce").groupby(named_rows["label"]).sum(min_count=1)
    per_step: list[list[float]] = []
    per_generation: list[list[float | None]] = []
    for i, component in enumerate(components):
        part = ss[ss["component"].astype(str) == component]
        y = part["kernel_ms_per_step"].astype(float)
        steps = pd.to_numeric(part["steps"], errors="coerce")
        if component in unnamed:
            steps = pd.Series([total.get(label, float("nan")) for label in part["label"]], index=part.index)
        per_step.append([float(v) for v in y])
        per_generation.append([None if s != s else float(v * s) for v, s in zip(y, steps)])
        custom = list(zip(part["run_id"], [guidance[r] for r in part["label"]],
                          [_steps(s, p) for s, p in zip(part["steps"], part["profiled_steps"])],
                          map(_share, part["attention_share"]), map(_share, part["gemm_share"]),
                          [float(v * s) if s == s else None for v, s in zip(y, steps)]))
        fig.add_trace(go.Bar(
            x=list(part["label"]), y=y, name=component,
            marker_color=FALLBACK_COLOR if component in unnamed else colors[i % len(colors)], customdata=custom,
            hovertemplate=f"%{{x}} · {component}<br>%{{y:.2f}} ms of kernels per step it ran<br>%{{customdata[2]}}"
                          "<br>attention %{customdata[3]}, gemm %{customdata[4]} of its kernel time"
                          "<br>%{customdata[1]}<br>%{customdata[0]}<extra></extra>"))
    titles = {"per step": "kernel ms per step it ran (full profile)",
              "per generation": "kernel ms over the steps it ran (timed generation's step count)"}
    buttons = [{"label": label, "method": "update", "args": [{"y": ys}, {"yaxis.title.text": titles[label]}]}
               for label, ys in (("per step", per_step), ("per generation", per_generation))]
    recorded = first["guidance_mode"].notna().any()  # runs made before the record: plain labels, said once
    xaxis = ({"title": "run (guidance under it)", "tickmode": "array", "tickvals": runs,
              "ticktext": [f"{r}<br>{guidance[r]}" for r in runs]} if recorded
             else {"title": "run (guidance not recorded)"})
    return style(fig, "Step structure: kernel time per step of each model that ran steps, and how guidance "
                      "reached it", barmode="group", yaxis={"title": titles["per step"], "rangemode": "tozero"},
                 xaxis={**xaxis, "categoryorder": "array", "categoryarray": runs},
                 updatemenus=[{"type": "buttons", "direction": "right", "buttons": buttons, **MENU_POSITION,
                               "active": 0}])


VIEW = View("step_structure", "Step structure",
            "Which model ran each denoising step (a UNet or transformer; Wan 2.2 A14B's two experts) with its kernel "
            "time per step (full profile), and how classifier-free guidance reached the denoiser (under each run: "
            "two calls a step, one batched call, none).",
            table="step_structure", figure=step_structure_figure)
