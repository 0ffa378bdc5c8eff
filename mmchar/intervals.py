"""Time covered by kernel intervals, counted once: kernels on several streams overlap, so busy time and
communication hidden behind compute are lengths of an interval union, never sums of durations. One
implementation for the runner (GPU busy per stage) and the analyses (communication overlap); torch-free."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

Interval = tuple[float, float]  # [start, end)


def union(intervals: Iterable[Sequence[float]]) -> list[Interval]:
    """The merged intervals, sorted by start; intervals that touch (one ends where the next starts) merge."""
    out: list[list[float]] = []
    for a, b in sorted(map(tuple, intervals)):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def covered(intervals: Iterable[Sequence[float]]) -> float:
    """Total length of the union of ``intervals``: time something ran, however many ran at once."""
    return sum((b - a for a, b in union(intervals)), 0.0)


def overlap(xs: Sequence[Interval], ys: Sequence[Interval]) -> float:
    """Total length of the intersection of two :func:`union` results (sorted, merged)."""
    i = j = 0
    total = 0.0
    while i < len(xs) and j < len(ys):
        lo, hi = max(xs[i][0], ys[j][0]), min(xs[i][1], ys[j][1])
        total += max(0.0, hi - lo)
        if xs[i][1] < ys[j][1]:
            i += 1
        else:
            j += 1
    return total


def partition(intervals: Iterable[Sequence[float]], labels: Iterable[str]) -> dict[frozenset[str], float]:
    """How long each combination of labels ran together, and nothing else: the time during which exactly the
    labels of a set had an interval open (``{"compute"}`` alone, ``{"compute", "communication"}`` overlapping).
    Holistic Trace Analysis' kernel-type breakdown is this partition over its kernel types; the lengths sum to
    `covered`."""
    edges: list[tuple[float, int, str]] = []
    for (a, b), label in zip(intervals, labels):
        if b > a:
            edges += [(a, 1, label), (b, -1, label)]
    edges.sort(key=lambda e: e[0])
    open_: dict[str, int] = {}
    out: dict[frozenset[str], float] = {}
    last = None
    for t, delta, label in edges:
        if last is not None and t > last:
            on = frozenset(k for k, n in open_.items() if n > 0)
            if on:
                out[on] = out.get(on, 0.0) + (t - last)
        open_[label] = open_.get(label, 0) + delta
        last = t
    return out
