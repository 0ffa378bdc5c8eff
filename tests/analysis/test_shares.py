"""The one definition of a share (mmchar/shares.py): a group's time over the time of the whole it belongs to,
never over idle time, with the value an empty whole gets chosen by the caller."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from mmchar.shares import share_line, share_of, shares_within, time_shares

KERNELS = pd.DataFrame({
    "stage": ["denoiser", "denoiser", "decoder", "denoiser", "decoder", "text_encoder"],
    "op_class": ["gemm", "attention", "conv", "gemm", "attention", "gemm"],
    "time_us": [30.0, 50.0, 90.0, 20.0, 10.0, 0.0],
})


def test_shares_within_their_stage_sum_to_one_in_first_seen_order():
    s = time_shares(KERNELS, ["stage", "op_class"], ["stage"])
    assert list(zip(s["stage"], s["op_class"])) == [("denoiser", "gemm"), ("denoiser", "attention"),
                                                   ("decoder", "conv"), ("decoder", "attention"),
                                                   ("text_encoder", "gemm")]
    assert s["time_us"].tolist() == [50.0, 50.0, 90.0, 10.0, 0.0]  # the two denoiser gemm rows summed
    assert s["share"].iloc[:4].tolist() == pytest.approx([0.5, 0.5, 0.9, 0.1])


def test_a_whole_with_no_time_gets_the_callers_empty_value():
    assert math.isnan(time_shares(KERNELS, ["stage", "op_class"], ["stage"])["share"].iloc[-1])
    assert time_shares(KERNELS, ["stage", "op_class"], ["stage"], empty=0.0)["share"].iloc[-1] == 0.0


def test_without_within_the_whole_is_the_frame():
    s = time_shares(KERNELS, ["op_class"])
    assert dict(zip(s["op_class"], s["share"])) == pytest.approx({"gemm": 0.25, "attention": 0.3, "conv": 0.45})


def test_within_must_be_among_the_groups():
    with pytest.raises(ValueError, match="within"):
        time_shares(KERNELS, ["op_class"], ["stage"])


def test_shares_within_keeps_rows_that_are_groups_already_and_either_group_order_gives_the_share():
    rows = time_shares(KERNELS, ["stage", "op_class"]).drop(columns="share")
    for sort in (False, True):
        got = shares_within(rows, ["stage"], sort=sort)
        assert got[:4].tolist() == pytest.approx([0.5, 0.5, 0.9, 0.1]) and math.isnan(got[4])


def test_share_of_guards_a_zero_or_negative_total():
    assert share_of(pd.Series([1.0, 3.0]), 4.0).tolist() == [0.25, 0.75]
    assert np.isnan(share_of(pd.Series([1.0]), 0.0)).all()
    assert share_of(np.array([1.0, 2.0]), np.array([2.0, 0.0]), empty=0.0).tolist() == [0.5, 0.0]


def test_share_line_lists_largest_first_and_drops_the_small():
    s = time_shares(KERNELS, ["op_class"])
    assert share_line(s, "op_class") == "conv 45.0%, attention 30.0%, gemm 25.0%"
    assert share_line(s, "op_class", floor=0.26) == "conv 45.0%, attention 30.0%"
