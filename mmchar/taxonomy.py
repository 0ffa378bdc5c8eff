"""The one rule table that puts kernels (and CPU ops) into op classes.

Rules are tried in order, first match wins. A rule names an op class and up to two regular expressions
(case-insensitive ``re.search``): one on the top-level aten op that launched the kernel, one on the kernel
name; a rule with both matches only when both do. Attention cores are decided before this table (an
attention-core scope or an enclosing ``aten::scaled_dot_product_attention``), so what runs inside an
attention call is ``attention`` whichever backend ran it. Kernels no rule matches are ``other`` and listed.

Extend it with `add_rule` (``position=0`` puts a rule first) and take a rule out with `remove_rule`: both keep
`classify`'s cache in step with the table (an edit of `RULES` by hand goes unseen once anything has been
classified). Each rule has a test with a real kernel name in tests/test_taxonomy.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from mmchar.schema import OP_CLASSES


@dataclass(frozen=True)
class Rule:
    op_class: str
    aten: str | None = None  # pattern on the top-level aten op ("aten::conv2d")
    kernel: str | None = None  # pattern on the kernel name (GPU) or op name (CPU)
    note: str = ""

    def __post_init__(self) -> None:
        if self.op_class not in OP_CLASSES:
            raise ValueError(f"op class {self.op_class!r} is not one of {OP_CLASSES}")
        if self.aten is None and self.kernel is None:
            raise ValueError("a rule needs an aten or a kernel pattern")


_MEMORY_OPS = (r"copy_|contiguous|clone|cat|stack|_to_copy|to|permute|transpose|pad|constant_pad_nd|reflection_pad\w*|"
               r"replication_pad\w*|upsample\w*|_upsample\w*|interpolate|fill_|zero_|zeros\w*|ones\w*|full\w*|empty\w*|"
               r"new_\w+|index\w*|gather|scatter\w*|repeat\w*|repeat_interleave|expand\w*|narrow|slice|split\w*|chunk|"
               r"as_strided\w*|view\w*|reshape|flatten|unflatten|unsqueeze|squeeze|_unsafe_view|t|select|unbind|roll|"
               r"flip|embedding|embedding_bag|masked_select|nonzero|is_nonzero|item|equal|detach_|_local_scalar_dense|resize_|set_|detach|alias|lift_fresh|pin_memory|"
               r"concat|concatenate|resolve_conj|resolve_neg|type_as|broadcast_to|view_as|expand_as|reshape_as|"
               r"pixel_shuffle|pixel_unshuffle|channel_shuffle|movedim|moveaxis|nonzero_numpy|scalar_tensor|"
               r"broadcast_tensors|is_same_size")

RULES: list[Rule] = [
    # communication first: collectives launched from any op.
    Rule("communication", kernel=r"nccl|ncclDevKernel|all_?reduce|all_?gather|reduce_?scatter|all_?to_?all|sendrecv|"
                                 r"^c10d::|^gloo:"),
    Rule("communication", aten=r"^(c10d|_c10d_functional)::|nccl|::(all_reduce|all_gather|reduce_scatter|all_to_all)"),
    # the user-level call decides for the heavy ops: everything a convolution launches (layout transforms, bias
    # add) is conv time, everything a linear launches is gemm time.
    Rule("attention", aten=r"scaled_dot_product|_flash_attention|_efficient_attention|_cudnn_attention|flash_attn|flex_attention"),
    Rule("conv", aten=r"conv(olution)?(_transpose)?[123]?d?\b|_convolution|cudnn_convolution|mkldnn_convolution|slow_conv|miopen_conv"),
    Rule("gemm", aten=r"^aten::(linear|mm|addmm|bmm|baddbmm|addbmm|matmul|einsum|dot|vdot|mv|addmv|_addmm_activation|"
                      r"_int_mm|_scaled_mm|tensordot|bilinear|inner|outer)$"),
    Rule("norm", aten=r"^aten::(layer_norm|group_norm|batch_norm|instance_norm|rms_norm|native_layer_norm|native_group_norm|"
                      r"native_batch_norm|_native_batch_norm_legit\w*|_fused_rms_norm|cudnn_batch_norm|norm|local_response_norm)$"),
    # generic aten ops next: what they launch is theirs whatever the kernel is called.
    Rule("memory", aten=rf"^aten::({_MEMORY_OPS})$"),
    Rule("elementwise", aten=r"^aten::(add|sub|mul|div|rsub|true_divide|floor_divide|pow|sqrt|rsqrt|exp|log|sin|cos|tanh|"
                             r"sigmoid|silu|gelu|relu|leaky_relu|elu|mish|hardswish|softplus|softmax|_softmax|log_softmax|"
                             r"_log_softmax|neg|abs|clamp\w*|where|lerp|addcmul|addcdiv|mean|sum|prod|max|min|amax|amin|"
                             r"argmax|argmin|cumsum|var|std|var_mean|exp_|mul_|add_|sub_|div_|arange|linspace|randn\w*|"
                             r"rand\w*|normal_|uniform_|bernoulli_|dropout|eq|ne|lt|le|gt|ge|logical_\w+|bitwise_\w+|"
                             r"ceil|floor|round|sign|reciprocal|erf|erfinv|baddbmm_|fmod|remainder|square|cumprod|"
                             r"topk|sort|all|any|isnan|isinf|nan_to_num|sigmoid_|silu_|gelu_|relu_|tril|triu|"
                             r"masked_fill\w*|one_hot|searchsorted|bucketize|_softmax_backward_data|"
                             # token sampling (autoregressive and masked-token generators)
                             r"multinomial|clip|aminmax|__and__|__or__|__xor__|__invert__|isin|unique\w*|"
                             # pooling (IF's resnet downsampling averages) and order statistics (IF's dynamic
                             # thresholding takes a quantile of every sample each step): reductions, as sum and
                             # sort above
                             r"avg_pool\w*|max_pool\w*|adaptive_\w*pool\w*|quantile|nanquantile|median|nanmedian|"
                             r"kthvalue)_?$"),
    # a CPU trace of a torch.compile'd model: the compiled region's own time is Inductor's fused C++ kernels
    # (pointwise and reduction fusions; convolutions and matmuls run as the aten ops inside it, recorded apart),
    # as the Triton kernels of a GPU trace are (triton_poi/red/per below)
    Rule("elementwise", kernel=r"^Torch-Compiled Region"),
    # kernel names, for kernels whose launching op is generic (or absent: Triton, custom extensions).
    Rule("attention", kernel=r"flash_?(attn|fwd|bwd)|fmha|attention|_attn_fwd|sdpa|mha_fwd|cudnn_generated_fort_native_sdpa"),
    Rule("conv", kernel=r"conv|fprop|dgrad|wgrad|winograd|implicit_?gemm|precomputed_convolve|depthwise"),
    Rule("gemm", kernel=r"gemm|cublas|cutlass|nvjet|xmma|matmul|_mm_|splitk|gemv|dot_kernel|wmma|mma_"),
    Rule("norm", kernel=r"norm|welford|rmsnorm|RowwiseMoments|ComputeFusedParams|GroupNorm|batch_norm|moments"),
    Rule("memory", kernel=r"^memcpy|^memset|copy|catarray|cat_|transpose|permute|pad|fill|gather|scatter|index|"
                          r"upsample|interpolate|nearest|bilinear2d|repeat|flip|roll|tensor_to|_to_copy"),
    Rule("elementwise", kernel=r"elementwise|vectorized|unrolled|reduce_kernel|softmax|activation|gelu|silu|sigmoid|"
                               r"tanh|exp|mul|add|div|sub|where|pow|sqrt|rsqrt|clamp|sin|cos|neg|abs|sum|mean|"
                               r"triton_(poi|red|per)_"),
]


def add_rule(rule: Rule, position: int | None = None) -> None:
    """Add a rule (``position=0``: before every built-in rule). Clears the classification cache."""
    RULES.insert(len(RULES) if position is None else position, rule)
    _rules_changed()


def remove_rule(rule: Rule) -> None:
    """Take ``rule`` (the first rule equal to it) out of the table. Clears the classification cache.

    Raises:
        ValueError: ``rule`` is not in the table.
    """
    try:
        RULES.remove(rule)
    except ValueError:
        raise ValueError(f"{rule!r} is not in the op-class rule table") from None
    _rules_changed()


def _rules_changed() -> None:
    _compiled.cache_clear()
    classify.cache_clear()


@lru_cache(maxsize=1)
def _compiled() -> tuple[tuple[str, re.Pattern[str] | None, re.Pattern[str] | None], ...]:
    return tuple((r.op_class, re.compile(r.aten, re.I) if r.aten else None, re.compile(r.kernel, re.I) if r.kernel else None)
                 for r in RULES)


@lru_cache(maxsize=65536)
def classify(kernel: str, aten_op: str = "") -> str:
    """The op class of a kernel launched by ``aten_op`` (``""`` when no aten op launched it), or ``other``."""
    for op_class, aten_re, kernel_re in _compiled():
        if aten_re is not None and not (aten_op and aten_re.search(aten_op)):
            continue
        if kernel_re is not None and not kernel_re.search(kernel):
            continue
        return op_class
    return "other"


def is_attention_op(aten_op: str) -> bool:
    """Whether an aten op is an attention core (every kernel under it is attention, whatever its name)."""
    return classify("", aten_op) == "attention" if aten_op else False
