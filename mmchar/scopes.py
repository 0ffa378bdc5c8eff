"""Every profiler label mmchar writes into a trace, with its reader, and the attention-site rules: no torch.

The runner's instrumentation writes the labels (stage calls, module forwards, attention-core calls, collectives);
the trace parser and attribution read them back. Writer and reader of each format live here side by side, so a
change to one cannot miss the other, and the read side (trace -> attribution -> store -> analysis -> dashboards)
imports no torch: `mmchar analyze`, `export`, `study` and `dashboard` run where torch is not installed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from mmchar.schema import ATTN_SITES

STAGE_SCOPE_PREFIX = "mmchar.stage::"  # one stage-root call: mmchar.stage::<stage>::<step>::<call>
MODULE_SCOPE_PREFIX = "mmchar.module::"  # one module forward: mmchar.module::<dotted path>
ATTN_SCOPE_PREFIX = "mmchar.attn::"  # one attention-core call (see `attention_label`)
COMM_SCOPE_PREFIX = "mmchar.comm::"  # one collective or send: mmchar.comm::<kind>::<bytes sent>
PROJ_SCOPE_PREFIX = "mmchar.proj::"  # one call of a replaced linear layer (see `projection_label`)


def stage_label(stage: str, step: int, call: int = 0) -> str:
    """``call``: which of the step's calls this one is (a step of two calls for guidance: 0, then 1)."""
    return f"{STAGE_SCOPE_PREFIX}{stage}::{step}::{call}"


def parse_stage_label(label: str) -> tuple[str, int, int]:
    """(stage, step, call) of a stage label; step -1 outside the step stages, call -1 there too and in labels
    written before calls were (``mmchar.stage::<stage>::<step>``)."""
    stage, _, rest = label[len(STAGE_SCOPE_PREFIX):].partition("::")
    step, _, call = rest.partition("::")
    step_i = int(step or -1)
    return stage, step_i, int(call) if call and step_i >= 0 else -1


def module_label(path: str) -> str:
    return MODULE_SCOPE_PREFIX + path


def parse_module_label(label: str) -> str:
    return label[len(MODULE_SCOPE_PREFIX):]


@dataclass(frozen=True)
class AttentionCall:
    """What an attention-core label carries: where the call ran, on which backend, its shapes and dtype size."""

    site: str
    module_path: str
    backend: str
    b: int
    h: int
    sq: int
    skv: int
    d: int
    dv: int
    causal: bool
    elem: int  # bytes per element of q

    def input_dims(self) -> str:
        """q, k, v shapes in the profiler's ``Input Dims`` format."""
        return (f"[[{self.b}, {self.h}, {self.sq}, {self.d}], [{self.b}, {self.h}, {self.skv}, {self.d}], "
                f"[{self.b}, {self.h}, {self.skv}, {self.dv}]]")


def attention_label(site: str, module_path: str, backend: str, q_shape: Sequence[int], skv: int, dv: int,
                    causal: bool, elem: int) -> str:
    """The label of one attention-core call: ``q_shape`` is [B, H, Sq, D]; ``skv`` the keys it attends to (all
    ranks' under a sequence-parallel ring), ``dv`` the value head dim, ``elem`` q's bytes per element."""
    b, h, sq, d = (int(x) for x in q_shape)
    return f"{ATTN_SCOPE_PREFIX}{site}::{module_path}::{backend}::{b},{h},{sq},{skv},{d},{dv}::{int(causal)}::{elem}"


def parse_attention_label(label: str) -> AttentionCall | None:
    """The call an attention-core label describes; None for a label that is not one (or is malformed)."""
    if not label.startswith(ATTN_SCOPE_PREFIX):
        return None
    parts = label[len(ATTN_SCOPE_PREFIX):].split("::")
    try:
        b, h, sq, skv, d, dv = (int(x) for x in parts[3].split(","))
        return AttentionCall(parts[0], parts[1], parts[2], b, h, sq, skv, d, dv, parts[4] == "1", int(parts[5]))
    except (IndexError, ValueError):
        return None


def attention_label_site(label: str) -> tuple[str, str]:
    """(site, module path) of an attention-core label, whatever else it holds."""
    parts = label[len(ATTN_SCOPE_PREFIX):].split("::")
    return parts[0], parts[1] if len(parts) > 1 else ""


@dataclass(frozen=True)
class ProjectionCall:
    """What a projection label carries: the class of the kernels under it, the layer, the backend, and the call's
    FLOPs and bytes by the backend's own cost model (a table lookup is not 2·m·k·n)."""

    op_class: str
    module_path: str
    backend: str
    flops: float
    bytes: float


def projection_label(op_class: str, module_path: str, backend: str, flops: float, nbytes: float) -> str:
    """The label of one call of a linear layer a projection backend replaced (`mmchar.linear_swap`)."""
    return f"{PROJ_SCOPE_PREFIX}{op_class}::{module_path}::{backend}::{flops:.6g}::{nbytes:.6g}"


def parse_projection_label(label: str) -> ProjectionCall | None:
    """The call a projection label describes; None for a label that is not one (or is malformed)."""
    if not label.startswith(PROJ_SCOPE_PREFIX):
        return None
    parts = label[len(PROJ_SCOPE_PREFIX):].split("::")
    try:
        return ProjectionCall(parts[0], parts[1], parts[2], float(parts[3]), float(parts[4]))
    except (IndexError, ValueError):
        return None


def comm_label(kind: str, nbytes: int) -> str:
    return f"{COMM_SCOPE_PREFIX}{kind}::{nbytes}"


def parse_comm_label(label: str) -> float:
    """The payload (bytes) a communication label carries; NaN if it carries none."""
    try:
        return float(label.rsplit("::", 1)[1])
    except (IndexError, ValueError):
        return math.nan


# --- attention sites ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SiteRule:
    """Module paths matching ``pattern`` (re.search) hold attention of ``site``."""

    pattern: str
    site: str

    def __post_init__(self) -> None:
        if self.site not in ATTN_SITES:
            raise ValueError(f"attention site {self.site!r} is not one of {ATTN_SITES}")


# Module-path rules every target gets after its own (where diffusers keeps temporal attention; text encoders).
DEFAULT_SITE_RULES: tuple[SiteRule, ...] = (
    SiteRule(r"(^|\.)(transformer_in|temp_attentions|temporal_transformer_blocks|motion_modules)\.", "temporal"),
    SiteRule(r"(^|\.)text_encoder(_\d+)?\.", "text"),
)


def compile_site_rules(rules: Sequence[SiteRule] = ()) -> list[tuple[re.Pattern[str], str]]:
    """``rules`` then DEFAULT_SITE_RULES, compiled, in the order `attention_site` tries them."""
    return [(re.compile(r.pattern), r.site) for r in (*rules, *DEFAULT_SITE_RULES)]


def attention_site(module_path: str, rules: Sequence[tuple[re.Pattern[str], str]], *, cross: bool) -> str:
    """The attention site of a module: the first module-path rule that matches, else cross or spatial by the call.

    The one place sites are decided, for swapped layers and for attention the profiler sees unswapped (text
    encoders, VAEs): it looks only at the module's path and whether the keys' length differs from the
    queries' (``cross``), so it is identical for every backend.
    """
    for pattern, site in rules:
        if pattern.search(module_path):
            return site
    return "cross" if cross else "spatial"
