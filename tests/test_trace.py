"""Trace parsing on small hand-written Kineto traces: nesting, correlation, CPU self time, bad files."""

from __future__ import annotations

import gzip
import json

import pandas as pd
import pytest

from mmchar.attribution import attribute
from mmchar.errors import TraceError
from mmchar.trace import parse_trace


def _x(cat, name, ts, dur, tid=1, **args):
    return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur, "pid": 1, "tid": tid, "args": args}


GPU_TRACE = {"traceEvents": [
    _x("user_annotation", "mmchar.stage::denoiser::3", 0, 100),
    _x("user_annotation", "mmchar.module::unet.conv_in", 1, 30),
    _x("cpu_op", "aten::conv2d", 2, 20, **{"Input Dims": [[1, 4, 8, 8], [8, 4, 3, 3], [8], [], [], [], []],
                                            "Concrete Inputs": ["", "", "", "[1, 1]", "[1, 1]", "[1, 1]", "1"],
                                            "Input type": ["float", "float", "float"]}),
    _x("cpu_op", "aten::cudnn_convolution", 3, 10),
    _x("cuda_runtime", "cudaLaunchKernel", 4, 2, correlation=7),
    _x("cuda_runtime", "cudaLaunchKernel", 15, 2, correlation=8),
    _x("user_annotation", "mmchar.attn::cross::unet.attn2::flash::2,8,64,77,40,40::0::2", 40, 20),
    _x("cuda_runtime", "cudaLaunchKernel", 41, 2, correlation=9),
    _x("cuda_runtime", "cudaLaunchKernel", 150, 2, correlation=10),  # outside every stage: host
    _x("kernel", "sm90_xmma_fprop_implicit_gemm_bf16", 10, 5, tid=7, correlation=7),
    _x("kernel", "void at::native::elementwise_kernel<add>", 16, 1, tid=7, correlation=8),
    _x("kernel", "flash_fwd_kernel", 45, 3, tid=7, correlation=9),
    _x("kernel", "void at::native::vectorized_elementwise_kernel<mul>", 155, 1, tid=7, correlation=10),
]}


def test_gpu_kernels_take_the_context_of_their_launch():
    t = parse_trace(GPU_TRACE)
    assert t.on_gpu and t.name[0].startswith("sm90_xmma_fprop")
    a = attribute(t)
    k = a.kernels
    assert k["stage"].tolist() == ["denoiser", "denoiser", "denoiser", "host"]
    assert k["step"].tolist() == [3, 3, 3, -1]
    assert k["module_path"].tolist() == ["unet.conv_in", "unet.conv_in", "", ""]
    assert k["op_class"].tolist() == ["conv", "conv", "attention", "elementwise"]
    assert k["attn_site"].tolist()[2] == "cross"
    assert k["aten_op"].tolist()[:2] == ["aten::conv2d", "aten::conv2d"]
    assert k["launch_op"].tolist()[:2] == ["aten::cudnn_convolution", "aten::conv2d"]  # the innermost op
    # conv FLOPs once (on the op's first kernel): 2·N·Cout·H·W·Cin·k²
    assert k["flops"].iloc[0] == 2 * 1 * 8 * 8 * 8 * 4 * 9
    assert k["flops"].iloc[2] == 4 * 2 * 8 * 64 * 77 * 40
    assert k["input_shapes"].iloc[2] == "[[2, 8, 64, 40], [2, 8, 77, 40], [2, 8, 77, 40]]"
    bd = a.breakdown.set_index(["stage", "op_class", "attn_site"])
    assert bd.loc[("denoiser", "conv", ""), "share"] == pytest.approx(6 / 9)
    assert bd.loc[("denoiser", "attention", "cross"), "time_us"] == 3


def test_cpu_trace_counts_self_time():
    trace = {"traceEvents": [
        _x("user_annotation", "mmchar.stage::decoder::-1", 0, 100),
        _x("cpu_op", "aten::linear", 10, 50),
        _x("cpu_op", "aten::addmm", 20, 30),
        _x("cpu_op", "aten::silu", 70, 10),
    ]}
    k = attribute(parse_trace(trace)).kernels
    assert sorted(zip(k["kernel"], k["dur_us"])) == [("aten::addmm", 30), ("aten::linear", 20), ("aten::silu", 10)]
    assert set(k[k["aten_op"] == "aten::linear"]["op_class"]) == {"gemm"}
    assert set(k["stage"]) == {"decoder"}


def test_truncated_and_foreign_files(tmp_path):
    good = tmp_path / "t.json.gz"
    blob = gzip.compress(json.dumps(GPU_TRACE).encode())
    good.write_bytes(blob)
    assert parse_trace(good).n_events == len(GPU_TRACE["traceEvents"])
    cut = tmp_path / "cut.json.gz"
    cut.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(TraceError, match="truncated"):
        parse_trace(cut)
    half = tmp_path / "half.json"
    half.write_text(json.dumps(GPU_TRACE)[:200])
    with pytest.raises(TraceError, match="truncated or not JSON"):
        parse_trace(half)
    other = tmp_path / "other.json"
    other.write_text("{}")
    with pytest.raises(TraceError, match="not a PyTorch profiler trace"):
        parse_trace(other)
    with pytest.raises(TraceError, match="does not exist"):
        parse_trace(tmp_path / "missing.json")


def test_a_ring_send_inside_an_attention_scope_is_communication_with_its_scopes_payload():
    """A coalesced NCCL P2P batch launches with no enclosing aten op and tensor lists record no dtype: the
    communication scope mmchar opens around each collective carries the class and the payload."""
    trace = {"traceEvents": [
        _x("user_annotation", "mmchar.stage::denoiser::0", 0, 100),
        _x("user_annotation", "mmchar.module::transformer.blocks.0.attn1", 1, 90),
        _x("user_annotation", "mmchar.attn::joint::transformer.blocks.0.attn1::sdpa::1,2,8,16,4,4::0::2", 2, 80),
        _x("user_annotation", "mmchar.comm::sendrecv::4096", 3, 5),
        _x("cuda_runtime", "cudaLaunchKernelExC", 4, 1, correlation=1),
        _x("cuda_runtime", "cudaLaunchKernel", 10, 1, correlation=2),
        _x("user_annotation", "mmchar.comm::sendrecv::4096", 20, 5),  # the next step's send: its own payload
        _x("cuda_runtime", "cudaLaunchKernelExC", 21, 1, correlation=3),
        _x("kernel", "ncclDevKernel_SendRecv(ncclDevKernelArgsStorage<4096ul>)", 5, 30, tid=7, correlation=1),
        _x("kernel", "pytorch_flash::flash_fwd_kernel", 12, 10, tid=8, correlation=2),
        _x("kernel", "ncclDevKernel_SendRecv(ncclDevKernelArgsStorage<4096ul>)", 40, 3, tid=7, correlation=3),
    ]}
    k = attribute(parse_trace(trace)).kernels.sort_values("ts_us")
    assert k["op_class"].tolist() == ["communication", "attention", "communication"]
    assert k["bytes"].tolist()[0::2] == [4096.0, 4096.0]
    assert k["attn_site"].tolist() == ["", "joint", ""]


def test_a_thread_outside_every_step_range_takes_the_step_whose_range_holds_its_events():
    """Autograd's backward thread (tid 2) runs its nodes while the main thread (tid 1) is inside ProfilerStep#4 or
    #5: its kernels belong to that step, as HTA's iterations have them. A node after the last step stays step -1;
    a kernel whose launch the trace lacks is counted as unlaunched."""
    trace = {"traceEvents": [
        _x("user_annotation", "ProfilerStep#4", 0, 100),
        _x("user_annotation", "ProfilerStep#5", 100, 100),
        _x("cpu_op", "aten::linear", 10, 20),
        _x("cuda_runtime", "cudaLaunchKernel", 12, 2, correlation=1),
        _x("cpu_op", "autograd::engine::evaluate_function: AddmmBackward0", 50, 20, tid=2),
        _x("cpu_op", "aten::mm", 52, 10, tid=2),
        _x("cuda_runtime", "cudaLaunchKernel", 53, 2, correlation=2, tid=2),
        _x("cpu_op", "autograd::engine::evaluate_function: CudnnBatchNormBackward0", 150, 20, tid=2),
        _x("cuda_runtime", "cudaLaunchKernel", 151, 2, correlation=3, tid=2),
        _x("cpu_op", "autograd::engine::evaluate_function: torch::autograd::AccumulateGrad", 250, 20, tid=2),
        _x("cuda_runtime", "cudaLaunchKernel", 251, 2, correlation=4, tid=2),
        _x("kernel", "sm80_xmma_gemm_f32f32_f32f32_f32_nn", 20, 5, tid=7, correlation=1),
        _x("kernel", "sm80_xmma_gemm_f32f32_f32f32_f32_tn", 60, 5, tid=7, correlation=2),
        _x("kernel", "void cudnn::bn_bw_1C11_kernel_new<float>", 160, 5, tid=7, correlation=3),
        _x("kernel", "void at::native::vectorized_elementwise_kernel<4, AddFunctor<float>>", 260, 1, tid=7,
           correlation=4),
        _x("kernel", "void at::native::vectorized_elementwise_kernel<4, FillFunctor<float>>", 270, 1, tid=7,
           correlation=99),
    ]}
    t = parse_trace(trace, foreign_stage="denoiser")
    k = attribute(t).kernels
    assert k["step"].tolist() == [4, 4, 5, -1, -1]
    assert k["phase"].tolist() == ["", "backward", "backward", "backward", ""]
    assert k["op_class"].tolist() == ["gemm", "gemm", "norm", "elementwise", "memory"]
    assert t.unlaunched == 1 and t.unlaunched_us == 1
    # mmchar's own traces keep their steps from its stage scopes: no time windows there
    assert parse_trace(trace).ctx[1].step == -1


def test_event_categories_match_whatever_their_case():
    """Older Kineto wrote Kernel, Runtime, Operator, Memcpy: the same trace in those names parses the same."""
    upper = {"Kernel": "kernel", "Runtime": "cuda_runtime", "Operator": "cpu_op", "Memcpy": "gpu_memcpy"}
    old = {"traceEvents": [_x("Operator", "aten::conv2d", 2, 20), _x("Runtime", "cudaLaunchKernel", 4, 2, correlation=7),
                           _x("Runtime", "cudaMemcpyAsync", 30, 2, correlation=8),
                           _x("Kernel", "sm90_xmma_fprop_implicit_gemm_bf16", 10, 5, tid=7, correlation=7),
                           _x("Memcpy", "Memcpy HtoD (Pageable -> Device)", 33, 1, tid=7, correlation=8)]}
    new = {"traceEvents": [{**e, "cat": upper[e["cat"]]} for e in old["traceEvents"]]}
    a, b = attribute(parse_trace(old, foreign_stage="denoiser")).kernels, attribute(parse_trace(new, foreign_stage="denoiser")).kernels
    assert len(a) == 2 and a["op_class"].tolist() == ["conv", "memory"]
    pd.testing.assert_frame_equal(a, b)


def test_device_events_without_a_launch_to_follow_are_counted_by_category():
    trace = {"traceEvents": [_x("cpu_op", "aten::mm", 0, 10),
                             _x("mtia_ccp_events", "pe_exe", 2, 5, tid=9), _x("mtia_ccp_events", "dma_request", 8, 1, tid=9),
                             _x("cuda_profiler_range", "void gemm_kernel", 0, 120, tid=9)]}
    t = parse_trace(trace, foreign_stage="denoiser")
    assert not t.on_gpu and t.name == ["aten::mm"]
    assert t.device_events == {"mtia_ccp_events": 2, "cuda_profiler_range": 1}


def test_a_step_range_recorded_as_an_operator_is_still_a_step():
    """PyTorch 1.8's profiler wrote ProfilerStep#N in the Operator category: it is the step, not an aten op that
    launched the kernels (nor, on a CPU trace, a row of host time)."""
    trace = {"traceEvents": [
        _x("Operator", "ProfilerStep#1", 0, 100),
        _x("Operator", "aten::mm", 10, 20),
        _x("Runtime", "cudaLaunchKernel", 12, 2, correlation=1),
        _x("Operator", "autograd::engine::evaluate_function: MmBackward0", 50, 20, tid=2),
        _x("Runtime", "cudaLaunchKernel", 52, 2, tid=2, correlation=2),
        _x("Kernel", "sm80_xmma_gemm_f32f32_f32f32_f32_nn", 20, 5, tid=7, correlation=1),
        _x("Kernel", "sm80_xmma_gemm_f32f32_f32f32_f32_tn", 60, 5, tid=7, correlation=2),
    ]}
    k = attribute(parse_trace(trace, foreign_stage="denoiser")).kernels
    assert k["step"].tolist() == [1, 1] and k["aten_op"].tolist()[0] == "aten::mm"
    assert k["phase"].tolist() == ["", "backward"] and k["op_class"].tolist() == ["gemm", "gemm"]
    cpu = {"traceEvents": [e for e in trace["traceEvents"] if e["cat"] == "Operator"]}
    assert "ProfilerStep#1" not in attribute(parse_trace(cpu, foreign_stage="denoiser")).kernels["kernel"].tolist()


def test_of_nested_step_ranges_the_innermost_holds_an_event():
    trace = {"traceEvents": [
        _x("user_annotation", "ProfilerStep#1", 0, 1000),
        _x("user_annotation", "ProfilerStep#7", 100, 100, tid=3),
        _x("cpu_op", "autograd::engine::evaluate_function: MmBackward0", 150, 10, tid=2),
        _x("cpu_op", "autograd::engine::evaluate_function: MmBackward0", 500, 10, tid=2),
        _x("cpu_op", "autograd::engine::evaluate_function: MmBackward0", 1500, 10, tid=2),
    ]}
    t = parse_trace(trace, foreign_stage="denoiser")
    assert [c.step for c in t.ctx] == [7, 1, -1]
