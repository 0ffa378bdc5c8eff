"""mmchar sweep over a suite of workloads (``sd15,amused``, ``all``) on the CPU: every workload's points in one
store, a re-run resuming, bad names and refused values failing in one line before anything runs, and the points
of all workloads sharded as one list under torchrun."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from mmchar import sweep as sw
from mmchar.cli import main
from mmchar.errors import InvalidParameterError, UnknownNameError
from mmchar.store import load_runs

FAST = ["--backends", "math", "--steps", "1", "--repeat", "1", "--profile-steps", "1", "--no-trace"]


def _stored(store: Path) -> list[tuple[str, str]]:
    """(workload, config hash) of every run in ``store``, sorted."""
    return sorted((r.meta["config"]["workload"], r.meta["config_hash"]) for r in load_runs([store], kernels=False))


def test_a_suite_runs_every_workload_into_one_store_and_resumes(tmp_path, capsys, one_thread_points):
    store = tmp_path / "store"
    cmd = ["sweep", "sd15,amused", "--vary", "height=64", *FAST, "--store", str(store)]
    assert main(cmd) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "sweep of sd15, amused (tiny): 2 points, 0 already" in out
    assert "workload=sd15 height=64 backend=math: ok" in out and "workload=amused height=64 backend=math: ok" in out
    runs = load_runs([store], kernels=False)
    assert sorted(r.meta["config"]["workload"] for r in runs) == ["amused", "sd15"]
    assert all(r.status == "ok" and r.meta["config"]["params"]["height"] == 64 for r in runs)

    assert main([*cmd, "--format", "csv"]) == 0  # nothing left to do; the summary leads with the workload
    out, err = capsys.readouterr()
    assert "2 points, 2 already in" in err and "0 to run" in err  # stdout is the csv alone
    assert out.startswith("workload,")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["workload"] for r in rows] == ["sd15", "amused"]  # the order given
    assert {r["run"] for r in rows} == {r.path.name for r in runs}
    assert len(load_runs([store], kernels=False)) == 2


def test_names_unknown_or_refused_fail_in_one_line_before_anything_runs(tmp_path, capsys):
    store = tmp_path / "s"
    assert main(["sweep", "sd15,no-such-workload", "--store", str(store)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown workload 'no-such-workload'" in err and "amused" in err
    assert main(["sweep", "sd15,amused", "--vary", "height=40", "--store", str(store)]) == 1  # sd15 takes 40
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "amused" in err and "height=40" in err
    assert main(["sweep", "sd15,amused", "--steps", "0", "--store", str(store)]) == 1
    err = capsys.readouterr().err.strip()  # a check whose message does not name the workload: the suite does
    assert len(err.splitlines()) == 1 and err.startswith("error: sd15: ")
    assert main(["sweep", "sd15,amused", "--vary", "frames=2", "--store", str(store)]) == 1
    assert "sd15 generates images" in capsys.readouterr().err
    assert not store.exists()


def test_all_is_the_registry_and_names_are_swept_once():
    from mmchar.workloads import workload_names

    assert sw.suite_names("all") == workload_names()
    assert sw.suite_names("sd15, all") == ["sd15"] + [n for n in workload_names() if n != "sd15"]
    assert sw.suite_names("amused,sd15,amused") == ["amused", "sd15"]
    assert sw.suite_names("sana,sana-1.6b") == ["sana"]  # an alias and its name: one workload
    assert sw.suite_names("sd15") == ["sd15"]
    with pytest.raises(UnknownNameError, match="unknown workload 'nope'"):
        sw.suite_names("sd15,nope")
    with pytest.raises(InvalidParameterError, match="names no workload"):
        sw.suite_names(" , ")


def test_a_suite_is_its_plans_and_one_workload_is_planned_as_before(tmp_path):
    args = dict(fixed={"steps": 1}, options={"repeat": 1, "keep_trace": False})
    one = sw.plan("sd15", {"height": [64, 32]}, ["math"], tmp_path, **args)
    alone = sw.plan_suite(["sd15"], {"height": [64, 32]}, ["math"], tmp_path, **args)
    assert not alone.several and alone.name == "sd15" and alone.points == one.points and alone.todo == one.todo
    assert alone.label(one.points[0]) == one.points[0].label()
    suite = sw.plan_suite(["sd15", "amused"], {"height": [64, 32]}, ["math"], tmp_path, **args)
    assert suite.several and suite.workloads == ["sd15", "amused"] and len(suite.points) == 4
    assert suite.points[:2] == one.points  # each workload planned exactly as alone
    assert [suite.plan_of(p).workload for p in suite.points] == ["sd15", "sd15", "amused", "amused"]
    assert suite.label(suite.points[2]) == "workload=amused height=64 backend=math"
    cut = suite.only({suite.points[0].config_hash, suite.points[3].config_hash})
    assert [len(p.points) for p in cut.plans] == [1, 1]
    with pytest.raises(InvalidParameterError, match="same configuration"):
        sw.plan_suite(["sd15", "sd15"], {}, ["math"], tmp_path, **args)


def test_two_ranks_share_the_points_of_every_workload(tmp_path, torchrun):
    store = tmp_path / "two"
    cmd = ["-m", "mmchar", "sweep", "sd15,amused", "--vary", "height=64", *FAST, "--device", "cpu",
           "--store", str(store), "--distributed"]
    proc = torchrun(2, *cmd)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[:3000]
    assert proc.stdout.count("sweep of sd15, amused (") == 2  # the plan line and the summary title, rank 0 only
    assert "(rank 0/2)" in proc.stdout and "(rank 1/2)" in proc.stdout  # the two points went to both ranks
    stored = _stored(store)
    assert [w for w, _ in stored] == ["amused", "sd15"] and len({h for _, h in stored}) == 2  # each point once
    again = torchrun(2, *cmd)  # a re-run finds every point and runs none
    assert again.returncode == 0 and "2 already in" in again.stdout and "0 to run" in again.stdout
    assert _stored(store) == stored
