"""mmchar sweep on the CPU: every point in its own process, a re-run resumes, a dead point is recorded."""

from __future__ import annotations

import shutil
import sys

import pytest

from mmchar import sweep as sw
from mmchar.cli import main
from mmchar.errors import InvalidParameterError, UnknownNameError
from mmchar.store import load_runs

ARGS = ["--steps", "1", "--repeat", "1", "--profile-steps", "1", "--no-trace"]


def test_sweep_runs_each_point_once_and_resumes(tmp_path, capsys, one_thread_points):
    store = tmp_path / "store"
    cmd = ["sweep", "sd15", "--vary", "height=64,32", "--backends", "math", "--store", str(store), *ARGS]
    assert main(cmd) == 0
    out = capsys.readouterr().out
    assert "2 points, 0 already" in out
    runs = load_runs([store], kernels=False)
    assert sorted(r.meta["config"]["params"]["height"] for r in runs) == [32, 64]
    assert all(r.status == "ok" and r.backend == "math" for r in runs)

    assert main(cmd) == 0  # nothing left to do
    assert "2 points, 2 already" in capsys.readouterr().out
    assert len(load_runs([store], kernels=False)) == 2

    gone = next(r for r in runs if r.meta["config"]["params"]["height"] == 32)
    shutil.rmtree(gone.path)  # as if interrupted before that point finished
    assert main(cmd) == 0
    assert "1 already in" in capsys.readouterr().out
    again = load_runs([store], kernels=False)
    assert sorted(r.meta["config"]["params"]["height"] for r in again) == [32, 64]
    assert {r.run_id for r in again} > {r.run_id for r in runs if r.run_id != gone.run_id}


def test_a_point_whose_process_dies_is_stored_as_failed_and_the_sweep_goes_on(tmp_path, one_thread_points):
    store = tmp_path / "store"
    opts = {"repeat": 1, "profile_steps": 1, "keep_trace": False}
    plan = sw.plan("sd15", {"height": [64, 32]}, ["math"], store, fixed={"steps": 1}, options=opts)

    def dies(_plan, point, _store):
        if point.params["height"] == 64:
            return [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"]  # as the OOM killer
        return sw.child_command(_plan, point, _store)

    folders = [sw.run_point(plan, p, store, command=dies) for p in plan.todo]
    rows = [sw.summary_row(p, f) for p, f in zip(plan.todo, folders)]
    assert [r["status"] for r in rows] == ["oom", "ok"]
    error = load_runs([folders[0]], kernels=False)[0].meta["error"]
    assert "exited with code -9" in error and "SIGKILL" in error
    assert sw.plan("sd15", {"height": [64, 32]}, ["math"], store, fixed={"steps": 1},
                   options=opts).todo == []  # recorded: not re-run


def test_bad_sweeps_fail_before_anything_runs(tmp_path):
    with pytest.raises(UnknownNameError, match="sweep parameter"):
        sw.parse_vary(["colour=red"])
    with pytest.raises(InvalidParameterError, match="NAME=V1"):
        sw.parse_vary(["height"])
    with pytest.raises(InvalidParameterError, match="int"):
        sw.parse_vary(["height=big"])
    assert sw.parse_vary(["height=64, 32,64", "guidance=1.5"]) == {"height": [64, 32], "guidance": [1.5]}
    store = tmp_path / "s"
    assert main(["sweep", "sd15", "--vary", "height=64,36", "--store", str(store)]) == 1  # 36: not a multiple of 8
    assert main(["sweep", "sd15", "--vary", "height=64", "--height", "64", "--store", str(store)]) == 1
    assert main(["sweep", "sd15", "--backends", "nope", "--store", str(store)]) == 1
    assert main(["sweep", "no-such-workload", "--store", str(store)]) == 1
    assert not store.exists()


def test_a_points_hash_is_read_by_its_place_in_the_run_id():
    """A config hash may be all digits (about 6 % are): the run id's shape, not the characters, tells it apart
    from the time, also behind a second-in-a-second suffix."""
    assert sw._hash_of("sd15-sdpa-20261204-101500-427246") == "427246"
    assert sw._hash_of("sd15-sdpa-20261204-101500-427246-2") == "427246"
    assert sw._hash_of("wan2.1-1.3b-flash-20261204-101500-a1b2c3") == "a1b2c3"
    assert sw._hash_of("comparisons") is None and sw._hash_of(".tmp-x") is None
