"""Fixtures of the CLI tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def one_thread_points(monkeypatch):
    """The profiling processes a test starts (a sweep's points, advise --validate's runs: they inherit the
    environment, see `mmchar.sweep.run_point`) use one intra-op thread, as the torchrun fixture's ranks and the
    in-process profiles of these tests do: on a small CPU shared with other test workers a second thread per
    process only contends. The tests using it check what is run and stored, not the figures."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
