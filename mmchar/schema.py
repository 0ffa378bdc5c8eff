"""The vocabulary and table layouts every stage of mmchar shares (docs/conventions.md, "Vocabulary";
docs/run-schema.md).

One place holds each decision: the stage names, op classes and attention sites, the columns of
``kernels.parquet`` and ``breakdown.csv``, the run-store file names and the schema version.
"""

from __future__ import annotations

# 2: ``scheduler`` is the scheduler's own step calls and ``host`` the rest outside every stage (tokenising, latent
# preparation, guidance arithmetic, Python); version 1 called that residual ``scheduler`` (store.py upgrades it)
SCHEMA_VERSION = 2

# ``host``: kernels and time outside every stage root's calls (not a stage root itself)
STAGES = ("text_encoder", "image_encoder", "denoiser", "generator", "decoder", "scheduler", "host")
OUTSIDE_STAGES = "host"
# Stages whose calls are steps (one row per step): a diffusion model's denoiser, a token model's generator.
STEP_STAGES = ("denoiser", "generator")
# Phases of the generator: an autoregressive model's prefill (first call) and decode calls; a masked model's steps.
PHASES = ("prefill", "decode", "step")
# kernels.parquet "phase": the work of a backward pass (a training step's trace, `mmchar analyze`); "" otherwise
BACKWARD_PHASE = "backward"
OP_CLASSES = ("conv", "gemm", "attention", "norm", "elementwise", "memory", "communication", "routing", "other")
# kernels.parquet "sub_class": what a kernel's time is for within its op class (mmchar/sub_classes.py), "" where no
# rule names it
SUB_CLASSES = ("conv3d", "conv2d", "conv1d", "pad", "upsample", "group_norm", "layer_norm", "rms_norm", "norm", "rope",
               "modulation")
ATTN_SITES = ("spatial", "temporal", "joint", "cross", "causal", "text")

RUN_STATUSES = ("ok", "oom", "error")  # meta.json "status"
# meta.json "linear_backend" of a run whose linear layers are the model's own (and of runs recorded before it)
DEFAULT_LINEAR_BACKEND = "dense"

META_FILE = "meta.json"
KERNELS_FILE = "kernels.parquet"
BREAKDOWN_FILE = "breakdown.csv"
TRACE_FILE = "trace.pt.trace.json.gz"
COMPARISONS_DIR = "comparisons"

# kernels.parquet: one row per GPU kernel / memcpy / memset (per op with self time on a CPU run).
KERNEL_COLUMNS = {
    "stage": "category",  # a STAGES name ("" when the kernel ran outside every stage)
    "step": "int32",  # denoising / generation step (-1 outside the denoiser and the generator)
    # which of its step's calls of the step stage (0 first; guidance as two calls: 0 and 1, the conditional pass
    # first in diffusers' pipelines); -1 outside the step stages and in runs written before it was recorded
    "call": "int16",
    "module_path": "category",  # innermost module, dotted from the pipeline root ("unet.down_blocks.0...")
    "op_class": "category",
    "sub_class": "category",  # a SUB_CLASSES name (conv3d, pad, rope, modulation ...), "" where no rule names one
    "phase": "category",  # BACKWARD_PHASE for backward-pass work (classed by the forward op it differentiates), ""
    "attn_site": "category",  # set for attention, and for the q/k/v/out projections of attention modules
    "aten_op": "category",  # the top-level aten op that launched the kernel
    "launch_op": "category",  # the innermost aten op (the one that called the launch)
    "kernel": "category",
    "ts_us": "float64",
    "dur_us": "float64",
    "input_shapes": "string",  # the top-level op's input dims, as recorded by the profiler
    "flops": "float64",  # NaN where unknown; a multi-kernel op's FLOPs sit on its first kernel
    "bytes": "float64",
}

# breakdown.csv: tidy, steps aggregated.
BREAKDOWN_COLUMNS = ("stage", "op_class", "attn_site", "time_us", "share", "calls", "flops", "bytes")

# meta.json "timings" keys: median/min/max over the timed pass (ms).
TIMING_KEYS = ("e2e", "text_encoder", "image_encoder", "denoiser", "denoiser_step", "generator", "generator_step",
               "generator_prefill", "generator_decode", "decoder", "scheduler", "host")


def step_key(timings: dict) -> str:
    """The timing key of one step of a run: ``denoiser_step``, or ``generator_step`` for token models."""
    return "generator_step" if "generator_step" in timings else "denoiser_step"
