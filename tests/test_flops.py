"""FLOPs and bytes from recorded shapes (docs/conventions.md, "FLOPs and bytes")."""

from __future__ import annotations

import math

import pytest

from mmchar.flops import attention_cost, attention_label_cost, op_cost


def test_linear_and_matmul():
    f, b = op_cost("aten::linear", [[2, 10, 64], [32, 64], [32]], None, ["c10::BFloat16"] * 3)
    assert f == 2 * 20 * 64 * 32 and b == (20 * 64 + 32 * 64 + 20 * 32) * 2
    assert op_cost("aten::bmm", [[4, 8, 16], [4, 16, 5]], None, ["float"])[0] == 2 * 4 * 8 * 16 * 5
    assert op_cost("aten::addmm", [[5], [8, 16], [16, 5]], None, ["float"])[0] == 2 * 8 * 16 * 5


def test_conv_strided_padded_grouped():
    # 3x3, stride 2, padding 1, 64x64 -> 32x32
    f, _ = op_cost("aten::conv2d", [[1, 8, 64, 64], [16, 8, 3, 3], [16]], ["", "", "", "[2, 2]", "[1, 1]", "[1, 1]", "1"], ["float"])
    assert f == 2 * 16 * 32 * 32 * 8 * 9
    f, _ = op_cost("aten::conv2d", [[1, 8, 10, 10], [8, 1, 3, 3]], ["", "", "", "[1, 1]", "'same'", "[1, 1]", "8"], ["float"])
    assert f == 2 * 8 * 100 * 1 * 9
    f, _ = op_cost("aten::convolution", [[2, 4, 6, 6], [4, 4, 1, 1]],
                   ["", "", "", "[1, 1]", "[0, 0]", "[1, 1]", "False", "[0, 0]", "1"], ["float"])
    assert f == 2 * 2 * 4 * 36 * 4


def test_attention_formula_and_label():
    assert attention_cost([2, 8, 64, 40], [2, 8, 77, 40], [2, 8, 77, 40], False, 2)[0] == 4 * 2 * 8 * 64 * 77 * 40
    assert attention_cost([1, 1, 16, 8], [1, 1, 16, 8], [1, 1, 16, 8], True, 2)[0] == 2 * 16 * 16 * 8
    assert attention_label_cost("mmchar.attn::spatial::m::flash::2,8,64,77,40,40::0::2")[0] == 4 * 2 * 8 * 64 * 77 * 40
    sdpa = op_cost("aten::scaled_dot_product_attention", [[1, 2, 8, 4]] * 3, ["", "", "", "", "0.", "True", "", "False"], ["float"])
    assert sdpa[0] == 2 * 2 * 8 * 8 * 4  # causal: half of 4·B·H·S²·d


def test_unknown_is_nan():
    assert all(math.isnan(x) for x in op_cost("aten::silu", [[2, 3]], None, ["float"]))
    assert all(math.isnan(x) for x in op_cost("aten::linear", [], None, None))
    assert math.isnan(attention_label_cost("mmchar.attn::bad")[0])


@pytest.mark.parametrize("dtype,size", [("float", 4), ("c10::Half", 2), ("c10::BFloat16", 2)])
def test_bytes_follow_dtype(dtype, size):
    _, b = op_cost("aten::mm", [[4, 4], [4, 4]], None, [dtype, dtype])
    assert b == 3 * 16 * size


def test_linear_attention_cost():
    from mmchar.flops import linear_attention_cost

    f, b = linear_attention_cost(1, 2, 10, 20, 4, 8, 2)
    # state 2·Skv·d·dv + Σφ(K) Skv·d, output 2·Sq·d·dv + normaliser 2·Sq·d, feature maps (Sq + Skv)·d
    assert f == 2 * (2 * 20 * 4 * 8 + 20 * 4 + 2 * 10 * 4 * 8 + 2 * 10 * 4 + 30 * 4)
    assert b == 2 * (10 * 4 + 20 * 4 + 20 * 8 + 10 * 8) * 2


def test_wersa_cost_is_linear_in_tokens():
    from mmchar.flops import wersa_cost

    f1, _ = wersa_cost(1, 4, 1000, 1000, 64, 256, 256, 2, 2)
    f2, _ = wersa_cost(1, 4, 2000, 2000, 64, 256, 256, 2, 2)
    assert f2 == pytest.approx(2 * f1)
    per_token_head = f1 / (4 * 1000)
    assert 8 * 64 * 256 <= per_token_head < 12 * 64 * 256  # ≈ 8·d·m (docs/kernels/wersa.md, "Cost"), plus gains and norms


def test_collectives_cost_their_payload_and_no_flops():
    from mmchar.flops import op_cost

    assert op_cost("c10d::allreduce_", [[1024, 1024]], None, ["c10::BFloat16"]) == (0.0, 2.0 * 1024 * 1024)
    assert op_cost("_c10d_functional::all_to_all_single", [[8, 64], [], []], None, ["float"]) == (0.0, 4.0 * 8 * 64)


def test_every_attention_kind_moves_q_k_v_and_out_once():
    from mmchar.flops import linear_attention_cost, wersa_cost

    b, h, sq, skv, d, dv, elem, c = 2, 4, 64, 77, 40, 24, 2, 320
    qkvo = b * h * (sq * d + skv * d + skv * dv + sq * dv) * elem
    assert attention_cost([b, h, sq, d], [b, h, skv, d], [b, h, skv, dv], False, elem)[1] == qkvo
    assert attention_label_cost(f"mmchar.attn::cross::m::flash::{b},{h},{sq},{skv},{d},{dv}::0::{elem}")[1] == qkvo
    assert linear_attention_cost(b, h, sq, skv, d, dv, elem)[1] == qkvo
    # WERSA's values keep d; its filter reads the hidden states of both token sets once more
    assert wersa_cost(b, h, sq, skv, d, 256, c, 2, elem)[1] == (b * h * 2 * (sq + skv) * d + b * (sq + skv) * c) * elem
