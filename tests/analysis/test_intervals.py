"""The one interval union (mmchar/intervals.py): GPU busy per stage and communication hidden behind compute are
both lengths of merged kernel intervals, so its edge cases decide both numbers."""

from __future__ import annotations

import numpy as np
import pytest

from mmchar.intervals import covered, overlap, partition, union


def test_union_sorts_and_merges_overlapping_nested_and_touching_intervals():
    assert union([(5.0, 6.0), (0.0, 2.0), (1.0, 3.0), (1.5, 1.8), (3.0, 4.0), (7.0, 7.5)]) == [
        (0.0, 4.0), (5.0, 6.0), (7.0, 7.5)]  # (1, 3) overlaps, (1.5, 1.8) nests, (3, 4) touches: one interval


def test_union_of_nothing_is_nothing_and_a_gap_is_kept():
    assert union([]) == [] and covered([]) == 0.0
    assert union([(0.0, 1.0), (1.5, 2.0)]) == [(0.0, 1.0), (1.5, 2.0)]


def test_union_takes_a_numpy_array_of_spans():
    spans = np.array([[2.0, 3.0], [0.0, 2.5]])
    assert union(spans) == [(0.0, 3.0)]


def test_covered_counts_parallel_streams_once():
    streams = [(0.0, 10.0), (2.0, 4.0), (8.0, 12.0), (20.0, 21.0)]  # a long kernel with two beside it, then one
    assert covered(streams) == pytest.approx(13.0)  # not the 17 µs the durations sum to
    assert covered([(3.0, 3.0)]) == 0.0  # a zero-length kernel adds no time


def test_overlap_of_partial_nested_and_disjoint_unions():
    comm = union([(0.0, 4.0), (10.0, 12.0), (20.0, 22.0)])
    work = union([(2.0, 11.0), (30.0, 31.0)])
    assert overlap(comm, work) == pytest.approx(2.0 + 1.0)  # [2, 4) and [10, 11); [20, 22) runs alone
    assert overlap(work, comm) == overlap(comm, work)
    assert overlap(union([(0.0, 10.0)]), union([(2.0, 3.0), (5.0, 6.0)])) == pytest.approx(2.0)
    assert overlap(comm, []) == 0.0 and overlap(union([(0.0, 1.0)]), union([(1.0, 2.0)])) == 0.0


def test_partition_splits_covered_time_by_which_labels_ran_together():
    spans = [(0.0, 10.0), (5.0, 15.0), (20.0, 30.0), (22.0, 24.0), (30.0, 31.0), (40.0, 40.0)]
    labels = ["comp", "comm", "comp", "comp", "mem", "comm"]  # nested comp, touching mem, an empty comm
    parts = partition(spans, labels)
    assert parts == {frozenset({"comp"}): pytest.approx(15.0), frozenset({"comp", "comm"}): pytest.approx(5.0),
                     frozenset({"comm"}): pytest.approx(5.0), frozenset({"mem"}): pytest.approx(1.0)}
    assert sum(parts.values()) == pytest.approx(covered(spans))
    assert partition([], []) == {}
