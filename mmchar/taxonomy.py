"""The one rule table that puts kernels (and CPU ops) into op classes.

Rules are tried in order, first match wins. A rule names an op class and up to two regular expressions
(case-insensitive ``re.search``): one on the top-level aten op that launched the kernel, one on the kernel
name; a rule with both matches only when both do. Attention cores are decided before this table (an
attention-core scope or an enclosing ``aten::scaled_dot_product_attention``), so what runs inside an
attention call is ``attention`` whichever backend ran it; a mixture-of-experts layer's gate, dispatch and combine
are ``routing``, found from the model's structure after this table (`mmchar.routing`: no kernel name tells a
router's softmax or gather from any other). Kernels no rule matches are ``other`` and listed.

Backward work is classed by the forward op it differentiates (`forward_op`): the autograd node
``autograd::engine::evaluate_function: CudnnBatchNormBackward0`` and the op ``aten::cudnn_batch_norm_backward``
are both ``aten::cudnn_batch_norm``'s, so norm; `is_backward` marks such work for the ``phase`` column. Where no
op rule knows the top-level op (a wrapper of a framework of its own, a custom autograd function), the innermost op
that launched the kernel decides instead (`classify`'s ``launch_op``).

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
               r"broadcast_tensors|is_same_size|record_stream")

RULES: list[Rule] = [
    # communication first: collectives launched from any op.
    # record_param_comms: c10d's record of a collective call (its host time on a CPU trace); All2All_*: torchrec's
    Rule("communication", kernel=r"nccl|ncclDevKernel|all_?reduce|all_?gather|reduce_?scatter|all_?(to|2)_?all|"
                                 r"sendrecv|^c10d::|^gloo:|^record_param_comms$"),
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
                             r"masked_fill\w*|one_hot|searchsorted|bucketize|"
                             # token sampling (autoregressive and masked-token generators)
                             r"multinomial|clip|aminmax|__and__|__or__|__xor__|__invert__|isin|unique\w*|"
                             # pooling (IF's resnet downsampling averages) and order statistics (IF's dynamic
                             # thresholding takes a quantile of every sample each step): reductions, as sum and
                             # sort above
                             r"avg_pool\w*|max_pool\w*|adaptive_\w*pool\w*|quantile|nanquantile|median|nanmedian|"
                             r"kthvalue|"
                             # losses (a pointwise map and a reduction) and relu's backward (threshold_backward)
                             r"\w*_loss|binary_cross_entropy\w*|cross_entropy|threshold|diff|log2|log10|log1p|"
                             r"exp2|expm1)_?$"),
    # a CPU trace of a torch.compile'd model: the compiled region's own time is Inductor's fused C++ kernels
    # (pointwise and reduction fusions; convolutions and matmuls run as the aten ops inside it, recorded apart),
    # as the Triton kernels of a GPU trace are (triton_poi/red/per below)
    Rule("elementwise", kernel=r"^Torch-Compiled Region"),
    # kernel names, for kernels whose launching op is generic (or absent: Triton, custom extensions).
    Rule("attention", kernel=r"flash_?(attn|fwd|bwd)|fmha|attention|_attn_fwd|sdpa|mha_fwd|cudnn_generated_fort_native_sdpa"),
    Rule("conv", kernel=r"conv|fprop|dgrad|wgrad|winograd|implicit_?gemm|precomputed_convolve|depthwise"),
    # Cijk_*: the Tensile GEMMs of rocBLAS / hipBLASLt (AMD); fbgemm:: is a library's namespace (sparse and
    # embedding ops), not a GEMM
    Rule("gemm", kernel=r"(?<!fb)gemm|cublas|cutlass|nvjet|xmma|matmul|_mm_|splitk|gemv|dot_kernel|wmma|mma_|^Cijk_"),
    # GammaBeta: layer norm's weight and bias gradients
    Rule("norm", kernel=r"norm|welford|rmsnorm|RowwiseMoments|ComputeFusedParams|GroupNorm|batch_norm|moments|GammaBeta"),
    Rule("memory", kernel=r"^memcpy|^memset|copy|catarray|cat_|transpose|permute|pad|fill|gather|scatter|index|"
                          r"upsample|interpolate|nearest|bilinear2d|repeat|flip|roll|tensor_to|_to_copy|"
                          # embedding-table lookups and their sparse updates (FBGEMM's split_embedding_*): gathers
                          r"embedding"),
    Rule("elementwise", kernel=r"elementwise|vectorized|unrolled|reduce_kernel|softmax|activation|gelu|silu|sigmoid|"
                               r"tanh|exp|mul|add|div|sub|where|pow|sqrt|rsqrt|clamp|sin|cos|neg|abs|sum|mean|"
                               # Inductor's fused pointwise / reduction kernels; before PyTorch 2.1 they were
                               # named by their argument signature alone (triton__0d1d2d3)
                               r"triton_(poi|red|per)_|^triton__\d|"
                               # CUB's sorts, scans and compactions (under aten::sort, cumsum, unique: elementwise too)
                               r"cub::Device(Radix|Segmented|Scan|Select|Compact|Reduce)|"
                               # (de)quantisation: FBGEMM's FP8 rowwise casts around a quantised all-to-all
                               r"quantiz|rowwise_to_float"),
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
    forward_op.cache_clear()
    is_backward.cache_clear()


@lru_cache(maxsize=1)
def _compiled() -> tuple[tuple[str, re.Pattern[str] | None, re.Pattern[str] | None], ...]:
    return tuple((r.op_class, re.compile(r.aten, re.I) if r.aten else None, re.compile(r.kernel, re.I) if r.kernel else None)
                 for r in RULES)


AUTOGRAD_PREFIX = "autograd::engine::evaluate_function:"
# an autograd node (``AddmmBackward0``, ``torch::autograd::AccumulateGrad`` is one too but names no forward op)
_NODE = re.compile(r"^(?:torch::autograd::)?([A-Z]\w*?)Backward\d*$")
# an op that computes a gradient: aten::convolution_backward, aten::_softmax_backward_data,
# aten::embedding_dense_backward, aten::cudnn_convolution_backward_input, aten::convolution_backward_overrideable
_BACKWARD_OP = re.compile(r"^(\w+::\w+?)(?:_dense)?_backward(?:_data|_input|_weight|_overrideable|_impl)?$")
_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Z0-9])(?=[A-Z][a-z])")  # MaxPool2DWithIndices -> max_pool2d_with_indices


def _knows(op: str) -> bool:
    """Whether some op rule matches ``op``."""
    return any(aten_re is not None and aten_re.search(op) for _, aten_re, _ in _compiled())


def _forward_candidates(name: str) -> tuple[str, ...]:
    """The names the forward op of backward work ``name`` may go by (none for forward work): an autograd node
    names it in CamelCase, a gradient op by a suffix; either with or without a private op's leading underscore."""
    node = _NODE.match(name)
    if node:
        op = "aten::" + _CAMEL.sub("_", node.group(1)).lower()
    else:
        grad = _BACKWARD_OP.match(name)
        if not grad:
            return ()
        op = grad.group(1)
    namespace, _, base = op.partition("::")
    return (op, f"{namespace}::_{base}") if not base.startswith("_") else (op, f"{namespace}::{base[1:]}")


def _strip_autograd(op: str) -> str:
    return op[len(AUTOGRAD_PREFIX):].strip() if op.startswith(AUTOGRAD_PREFIX) else op


@lru_cache(maxsize=65536)
def forward_op(op: str) -> str:
    """The forward op that backward work differentiates (``aten::convolution`` for both
    ``autograd::engine::evaluate_function: ConvolutionBackward0`` and ``aten::convolution_backward``), the one of
    its names a rule knows (``ToCopyBackward0``: ``aten::_to_copy``); any other op, and backward work whose forward
    op no rule knows (a custom autograd function: its kernels' own names decide), as it is."""
    return next((c for c in _forward_candidates(_strip_autograd(op)) if _knows(c)), op)


@lru_cache(maxsize=65536)
def is_backward(op: str) -> bool:
    """Whether ``op`` is backward work: an autograd engine's node evaluation, a node itself, or a gradient op."""
    return (op.startswith(AUTOGRAD_PREFIX) or op.endswith("AccumulateGrad")
            or bool(_forward_candidates(_strip_autograd(op))))


@lru_cache(maxsize=65536)
def classify(kernel: str, aten_op: str = "", launch_op: str = "") -> str:
    """The op class of a kernel launched by ``aten_op`` (``""`` when no aten op launched it), or ``other``.

    ``aten_op`` is read as the forward op it differentiates (`forward_op`); where no op rule knows it, the
    innermost op ``launch_op`` (also read as its forward op) stands in for it."""
    op = forward_op(aten_op) if aten_op else ""
    if launch_op and not (op and _knows(op)):
        op = forward_op(launch_op)
    for op_class, aten_re, kernel_re in _compiled():
        if aten_re is not None and not (op and aten_re.search(op)):
            continue
        if kernel_re is not None and not kernel_re.search(kernel):
            continue
        return op_class
    return "other"


def is_attention_op(aten_op: str) -> bool:
    """Whether an aten op (or the backward of one) is an attention core: every kernel under it is attention,
    whatever its name."""
    return classify("", aten_op) == "attention" if aten_op else False
