"""Run store: round trip, atomic writes, schema check, store/run-folder discovery."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from mmchar.errors import RunNotFoundError, SchemaMismatchError
from mmchar.schema import BREAKDOWN_COLUMNS, KERNEL_COLUMNS, SCHEMA_VERSION
from mmchar.store import Run, load_run, load_runs, run_folders, write_run


def _run(run_id: str = "w-math-20260101-000000-abcdef", status: str = "ok") -> Run:
    kernels = pd.DataFrame({"stage": ["denoiser", "denoiser"], "step": [0, 1], "module_path": ["unet.a", "unet.b"],
                            "op_class": ["conv", "attention"], "attn_site": ["", "spatial"], "aten_op": ["aten::conv2d", ""],
                            "launch_op": ["", ""], "kernel": ["k1", "k2"], "ts_us": [0.0, 5.0], "dur_us": [3.0, 1.0],
                            "input_shapes": ["", ""], "flops": [10.0, float("nan")], "bytes": [4.0, float("nan")]})
    bd = pd.DataFrame({"stage": ["denoiser"] * 2, "op_class": ["attention", "conv"], "attn_site": ["spatial", ""],
                       "time_us": [1.0, 3.0], "share": [0.25, 0.75], "calls": [1, 1], "flops": [float("nan"), 10.0],
                       "bytes": [float("nan"), 4.0]})
    meta = {"run_id": run_id, "status": status, "workload": "w", "backend": "math", "timings": {"e2e": {"median_ms": 1.0}}}
    return Run(meta=meta, kernels=kernels, breakdown=bd)


def test_round_trip(tmp_path):
    r = _run()
    folder = write_run(tmp_path, r)
    back = load_run(folder)
    assert back.meta["schema_version"] == SCHEMA_VERSION and back.meta["timings"] == r.meta["timings"]
    # the table was written without the phase, sub_class and call columns (as runs before them were): it reads back
    # with them, phase empty, the sub-classes derived from the stored columns, the call unknown (-1)
    assert list(back.kernels.columns) == list(KERNEL_COLUMNS) and back.kernels["phase"].tolist() == ["", ""]
    assert back.kernels["sub_class"].tolist() == ["conv2d", ""] and back.kernels["call"].tolist() == [-1, -1]
    pd.testing.assert_frame_equal(back.kernels.drop(columns=["phase", "sub_class", "call"]).reset_index(drop=True),
                                  r.kernels, check_dtype=False, check_categorical=False)
    assert list(back.breakdown.columns) == list(BREAKDOWN_COLUMNS)
    assert back.breakdown["share"].tolist() == [0.25, 0.75]
    assert back.breakdown["attn_site"].tolist() == ["spatial", ""]  # empty sites stay empty strings, not NaN


def test_write_is_atomic(tmp_path, monkeypatch):
    r = _run()

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(pd.DataFrame, "to_csv", boom)
    with pytest.raises(KeyboardInterrupt):
        write_run(tmp_path, r)
    assert list(tmp_path.iterdir()) == []  # no half-written run, no temporary folder left


def test_failed_run_has_empty_tables(tmp_path):
    folder = write_run(tmp_path, Run(meta={"run_id": "x-oom", "status": "oom", "error": "CUDA out of memory",
                                           "workload": "w", "backend": "b"}))
    back = load_run(folder)
    assert back.status == "oom" and back.kernels.empty and back.breakdown.empty


def test_schema_mismatch_says_what_to_do(tmp_path):
    folder = write_run(tmp_path, _run())
    meta = json.loads((folder / "meta.json").read_text())
    meta["schema_version"] = 999
    (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(SchemaMismatchError, match="re-run"):
        load_run(folder)


def test_stores_and_run_folders_mixed(tmp_path):
    a = write_run(tmp_path / "s1", _run("a"))
    write_run(tmp_path / "s1", _run("b"))
    c = write_run(tmp_path / "s2", _run("c"))
    (tmp_path / "s1" / ".tmp-d-xyz").mkdir()  # an interrupted write is not a run
    folders = run_folders([tmp_path / "s1", c, a])
    assert [f.name for f in folders] == ["a", "b", "c"]
    assert len(load_runs([tmp_path / "s1"])) == 2
    with pytest.raises(RunNotFoundError):
        run_folders([tmp_path / "nothing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunNotFoundError, match="holds no runs"):
        run_folders([tmp_path / "empty"])


def test_two_writers_of_one_run_id_both_keep_their_run(tmp_path):
    """Same configuration, same second: the later writer takes the next free id (never `-2-2`), and a compare
    baseline's pointer to itself follows its new id."""
    from mmchar.store import Run, load_run, write_run

    def meta():
        return {"run_id": "sd15-math-20260101-120000-abc123", "status": "ok", "workload": "sd15", "backend": "math",
                "created": "2026-01-01T12:00:00",
                "compare": {"group": "g", "baseline_run_id": "sd15-math-20260101-120000-abc123"}}

    paths = [write_run(tmp_path, Run(meta=meta())) for _ in range(3)]
    assert [p.name for p in paths] == ["sd15-math-20260101-120000-abc123", "sd15-math-20260101-120000-abc123-2",
                                       "sd15-math-20260101-120000-abc123-3"]
    for p in paths:
        m = load_run(p).meta
        assert m["run_id"] == p.name and m["compare"]["baseline_run_id"] == p.name
