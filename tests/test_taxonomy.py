"""One test per rule of the taxonomy table, with real kernel / op names (H100 traces and CPU traces)."""

from __future__ import annotations

import contextlib

import pytest

from mmchar.taxonomy import RULES, Rule, add_rule, classify, forward_op, is_attention_op, is_backward, remove_rule

CASES = [
    # (kernel or CPU op name, top-level aten op, expected class)
    ("ncclDevKernel_AllReduce_Sum_bf16_RING_LL(ncclDevComm*, unsigned long, ncclWork*)", "", "communication"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>>", "c10d::allreduce_", "communication"),
    ("c10d::send", "c10d::send", "communication"), ("gloo:recv", "", "communication"),  # a ring's P2P on the CPU
    ("aten::as_strided", "aten::pixel_shuffle", "memory"), ("aten::movedim", "aten::movedim", "memory"),  # DC-AE
    ("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128, 64, 4, false, false, cutlass::bfloat16_t>>",
     "aten::_scaled_dot_product_flash_attention", "attention"),
    ("aten::_scaled_dot_product_flash_attention_for_cpu", "aten::scaled_dot_product_attention", "attention"),
    ("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc_tilesize128x128x64_warpgroupsize1x1x1", "aten::conv2d", "conv"),
    ("void at::native::elementwise_kernel<128, 4, at::native::add_kernel>", "aten::conv2d", "conv"),  # conv bias add
    ("aten::mkldnn_convolution", "aten::conv2d", "conv"),
    ("nvjet_tst_128x256_64x4_2x1_v_bz_coopA_TNN", "aten::linear", "gemm"),
    ("aten::addmm", "aten::linear", "gemm"),
    ("void at::native::(anonymous namespace)::RowwiseMomentsCUDAKernel<c10::BFloat16, float>", "aten::group_norm", "norm"),
    ("aten::native_layer_norm", "aten::layer_norm", "norm"),
    ("void at::native::elementwise_kernel<128, 2, direct_copy_kernel_cuda>", "aten::contiguous", "memory"),
    ("aten::cat", "aten::cat", "memory"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::silu_kernel>", "aten::silu", "elementwise"),
    ("aten::mul", "aten::mul", "elementwise"),
    ("aten::aminmax", "aten::multinomial", "elementwise"),  # a token generator's sampling
    ("aten::cat", "aten::concat", "memory"),
    # IF stage I: average-pool downsampling and the dynamic thresholding's per-sample quantile (a sort inside)
    ("void at::native::(anonymous namespace)::avg_pool2d_out_cuda_frame<c10::BFloat16, float>", "aten::avg_pool2d", "elementwise"),
    ("aten::sort", "aten::quantile", "elementwise"),
    ("aten::max_pool2d_with_indices", "aten::max_pool2d", "elementwise"),
    ("aten::adaptive_avg_pool2d", "aten::adaptive_avg_pool2d", "elementwise"),
    ("aten::kthvalue", "aten::median", "elementwise"),
    ("aten::nonzero", "aten::nonzero_numpy", "memory"),
    ("aten::scalar_tensor", "aten::scalar_tensor", "memory"),
    ("aten::broadcast_tensors", "aten::broadcast_tensors", "memory"),
    # kernel-name rules, for kernels no aten op launched (Triton, custom extensions)
    ("_attn_fwd", "", "attention"),
    ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_3_64x64x128_4x1x1_kernel0_0", "", "attention"),
    ("sm80_xmma_fprop_implicit_gemm_indexed_wo_smem_f16f16_f16f32_f32_nhwckrsc_nhwc", "", "conv"),
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1_execute_segment_k_off", "", "gemm"),
    ("triton_red_fused_native_layer_norm_0", "", "norm"),
    ("Memcpy HtoD (Pageable -> Device)", "", "memory"),
    ("Memset (Device)", "", "memory"),
    ("void at::native::(anonymous namespace)::CatArrayBatchedCopy<float, unsigned int, 4, 64, 64>", "", "memory"),
    ("triton_poi_fused_add_mul_0", "", "elementwise"),
    ("Torch-Compiled Region: 0/0", "", "elementwise"),  # a CPU trace's compiled graph: Inductor's fused C++ kernels
    ("void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, at::native::MeanOps<float, float>>>", "", "elementwise"),
    # kernels whose names no kernel rule gives the class their aten op does (the committed H100 trace,
    # benchmarks/data/sd15-full-flash-h100.trace.json.gz): cuDNN attention's workspace memset in the unswapped
    # text encoder, and the VAE's group norm copying its input
    ("Memset (Device)", "aten::scaled_dot_product_attention", "attention"),
    ("void at::native::elementwise_kernel<128, 4, at::native::gpu_kernel_impl_nocast<at::native::direct_copy_kernel_cuda"
     "(at::TensorIteratorBase&)::{lambda()#3}::operator()() const::{lambda()#12}::operator()() const::"
     "{lambda(c10::BFloat16)#1}>>", "aten::group_norm", "norm"),
    # foreign traces (HTA's test data, tests/data/hta/): backward work by the forward op it differentiates,
    # AMD's Tensile GEMMs, Inductor's old kernel names, CUB's sorts, embedding tables, CPU-side collectives
    ("void cudnn::bn_bw_1C11_kernel_new<float, float, float2, 128, true, 1>(float, float, float, float, "
     "cudnnTensorStruct)", "autograd::engine::evaluate_function: CudnnBatchNormBackward0", "norm"),
    ("void cudnn::ops::nchwToNhwcKernel<float, float, float, false, true, (cudnnKernelDataType_t)2>",
     "autograd::engine::evaluate_function: ConvolutionBackward0", "conv"),
    ("aten::convolution_backward", "aten::convolution_backward", "conv"),
    ("aten::cudnn_batch_norm_backward", "aten::cudnn_batch_norm_backward", "norm"),
    ("aten::native_layer_norm_backward", "aten::native_layer_norm_backward", "norm"),
    ("void at::native::(anonymous namespace)::max_pool_backward_nchw<float, float>",
     "autograd::engine::evaluate_function: MaxPool2DWithIndicesBackward0", "elementwise"),
    ("aten::threshold_backward", "autograd::engine::evaluate_function: ReluBackward0", "elementwise"),
    ("aten::binary_cross_entropy_with_logits", "aten::binary_cross_entropy_with_logits", "elementwise"),
    ("aten::diff", "aten::diff", "elementwise"),
    ("aten::record_stream", "aten::record_stream", "memory"),
    ("Cijk_Ailk_Bjlk_SB_Bias_AS_SAV_UserArgs_MT64x16x16_MI16x16x1_SN_LDSB0_AFC1_AFEM1_AFEM1_ASEM1_CLR1_CADS0", "",
     "gemm"),
    ("void at::native::(anonymous namespace)::GammaBetaBackwardCUDAKernel<float, float>(long, long, float const*)",
     "", "norm"),
    ("void split_embedding_codegen_forward_unweighted_kernel<float, float, float, long, 2ul>", "", "memory"),
    ("triton__0d1d2d3d4d5d6d", "", "elementwise"),
    ("void cub::DeviceRadixSortOnesweepKernel<cub::DeviceRadixSortPolicy<long, int, int>::Policy800, false, long>",
     "", "elementwise"),
    ("void fbgemm_gpu::(anonymous namespace)::_compute_FP8_quantize_cuda_kernel<float>(float const*, int)",
     "autograd::engine::evaluate_function: All2All_Pooled_WaitBackward", "elementwise"),
    ("fbgemm::permute_2D_sparse_data", "fbgemm::permute_2D_sparse_data", "memory"),  # fbgemm: a namespace
    ("record_param_comms", "record_param_comms", "communication"),
    ("All2All_Pooled_Req", "All2All_Pooled_Req", "communication"),
    ("some_unknown_vendor_kernel", "", "other"),
    ("aten::_nonsense_op", "aten::_nonsense_op", "other"),
]


@pytest.mark.parametrize("kernel,aten,expected", CASES, ids=[f"{c[2]}-{i}" for i, c in enumerate(CASES)])
def test_rule(kernel, aten, expected):
    assert classify(kernel, aten) == expected


@contextlib.contextmanager
def _without(rule: Rule):
    """The table without ``rule`` for the block (`remove_rule`), then with it back in its place (`add_rule`)."""
    position = RULES.index(rule)
    remove_rule(rule)
    try:
        yield
    finally:
        add_rule(rule, position=position)


@pytest.mark.parametrize("index", range(len(RULES)), ids=lambda i: f"rule{i}-{RULES[i].op_class}")
def test_every_rule_decides_a_case(index):
    """No dead rule: taking each rule out of the table changes what `classify` says of at least one case above,
    and putting it back restores every case."""
    rule = RULES[index]
    before = [classify(kernel, aten) for kernel, aten, _ in CASES]
    with _without(rule):
        without = [classify(kernel, aten) for kernel, aten, _ in CASES]
    changed = [(c[0], b, w) for c, b, w in zip(CASES, before, without) if b != w]
    assert changed, f"no case depends on {rule}"
    assert all(b == rule.op_class for _, b, _ in changed), changed  # what it decided was its own class
    assert RULES[index] is rule and [classify(kernel, aten) for kernel, aten, _ in CASES] == before


def test_attention_ops():
    assert is_attention_op("aten::scaled_dot_product_attention")
    assert not is_attention_op("aten::softmax") and not is_attention_op("")
    # the backward of an attention core is attention too (a training trace's flash-attention backward)
    assert is_attention_op("autograd::engine::evaluate_function: ScaledDotProductFlashAttentionBackward0")
    assert is_attention_op("aten::_scaled_dot_product_efficient_attention_backward")


@pytest.mark.parametrize("op,forward", [
    ("autograd::engine::evaluate_function: ConvolutionBackward0", "aten::convolution"),
    ("autograd::engine::evaluate_function: CudnnBatchNormBackward0", "aten::cudnn_batch_norm"),
    ("autograd::engine::evaluate_function: MaxPool2DWithIndicesBackward0", "aten::max_pool2d_with_indices"),
    ("autograd::engine::evaluate_function: ToCopyBackward0", "aten::_to_copy"),  # the private op a rule knows
    ("AddmmBackward0", "aten::addmm"), ("MeanBackward1", "aten::mean"),
    ("aten::convolution_backward", "aten::convolution"), ("aten::_softmax_backward_data", "aten::_softmax"),
    ("aten::embedding_dense_backward", "aten::embedding"),
    ("aten::cudnn_convolution_backward_input", "aten::cudnn_convolution"),
])
def test_backward_work_reads_as_the_forward_op_it_differentiates(op, forward):
    assert forward_op(op) == forward and is_backward(op)


def test_forward_ops_are_not_backward():
    for op in ("aten::conv2d", "aten::mm", "aten::linear", "ProfilerStep#4", "fb::to_dense_representation"):
        assert forward_op(op) == op and not is_backward(op)
    assert is_backward("autograd::engine::evaluate_function: torch::autograd::AccumulateGrad")  # names no op


def test_the_innermost_op_decides_where_no_rule_knows_the_top_level_one():
    """A wrapper of a framework of its own (fb::, a custom autograd function) around aten::mm: the mm decides."""
    assert classify("aten::mm", "fb::sparse_arch_forward", "aten::mm") == "gemm"
    assert classify("aten::mm", "fb::sparse_arch_forward") == "other"
    # a known top-level op keeps deciding: a convolution's bias add is conv time, whatever launched it
    assert classify("void at::native::elementwise_kernel<add_kernel>", "aten::conv2d", "aten::add_") == "conv"


def test_add_and_remove_rule_take_effect_on_names_already_classified():
    """`classify` caches its answers; adding or removing a rule is seen at once, for names it has answered."""
    name, rule = "some_unknown_vendor_kernel", Rule("gemm", kernel=r"^some_unknown_vendor_kernel$")
    n = len(RULES)
    assert classify(name, "") == "other"  # cached
    add_rule(rule, position=0)
    try:
        assert RULES[0] is rule and classify(name, "") == "gemm"
        assert classify("aten::cat", "aten::cat") == "memory"  # the other rules still decide their names
    finally:
        remove_rule(rule)
    assert len(RULES) == n and rule not in RULES and classify(name, "") == "other"
    add_rule(rule)  # appended: the built-in rules still come first
    try:
        assert RULES[-1] is rule and classify(name, "") == "gemm" and classify("aten::mul", "aten::mul") == "elementwise"
    finally:
        remove_rule(rule)
    assert classify(name, "") == "other"
    with pytest.raises(ValueError, match="not in the op-class rule table"):
        remove_rule(rule)


def test_bad_rule_is_refused():
    with pytest.raises(ValueError):
        Rule("matmul", kernel="x")
    with pytest.raises(ValueError):
        Rule("gemm")
