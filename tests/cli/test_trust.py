"""A user gets right data or a clear line, never wrong data silently: outputs, store paths, damaged runs, Ctrl-C,
inputs, labels, the host stage, commits, permissions, sweep identity and retries, the checkout's `-m mmchar`."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest

from mmchar.cli import main
from mmchar.schema import BREAKDOWN_FILE, COMPARISONS_DIR, KERNELS_FILE, META_FILE, SCHEMA_VERSION, TRACE_FILE

FAST = ["--steps", "2", "--repeat", "1"]
REPO = Path(__file__).resolve().parents[2]


def cli(args: list) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def one_line_error(code: int, err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and "unexpected" not in lines[0]
    return lines[0]


def runs_of(store: Path) -> list[Path]:
    return sorted(p for p in store.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name != COMPARISONS_DIR)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Two sd15 runs (math and flash, one compare) and a modelscope run, written with a umask of 022."""
    path = tmp_path_factory.mktemp("trust") / "store"
    old = os.umask(0o022)
    try:
        code, out, err = cli(["compare", "sd15", "--backends", "math,flash", *FAST, "--store", path])
        assert code == 0, err
        code, out, err = cli(["profile", "modelscope-t2v", "--frames", "2", *FAST, "--store", path])
        assert code == 0, err
    finally:
        os.umask(old)
    return path


# --- outputs: an existing folder as -o, a file as --store -----------------------------------------------

@pytest.mark.parametrize("command", ["export", "dashboard"])
def test_an_existing_folder_as_output_file_is_one_line(store, tmp_path, command):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    line = one_line_error(*cli([command, store, "-o", out_dir])[::2])
    assert f"-o '{out_dir}' is a folder" in line
    assert list(out_dir.iterdir()) == []  # no hidden temporary left inside


def test_study_refuses_a_file_as_its_folder(store, tmp_path):
    f = tmp_path / "study.txt"
    f.write_text("x")
    assert "is a file" in one_line_error(*cli(["study", store, "-o", f])[::2])


def test_a_store_that_is_a_file_fails_before_the_model_is_built(tmp_path):
    f = tmp_path / "store"
    f.write_text("not a folder")
    code, out, err = cli(["profile", "sd15", *FAST, "--store", f])
    assert "is not a folder" in one_line_error(code, err)
    assert "profiling" not in out  # refused before anything was measured
    code, out, err = cli(["sweep", "sd15", "--vary", "height=64", *FAST, "--store", f / "sub"])
    assert "is a file" in one_line_error(code, err)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_store_fails_before_the_model_is_built(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        code, out, err = cli(["profile", "sd15", *FAST, "--store", ro / "store"])
        assert "cannot be written" in one_line_error(code, err) and "profiling" not in out
    finally:
        ro.chmod(0o700)


def _files(folder: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted(folder.iterdir())}


@pytest.mark.parametrize("command, target", [
    (["export"], "meta.json"), (["dashboard"], KERNELS_FILE), (["study"], ""), (["diff"], "diff.csv"),
    (["advise", "--format", "csv"], "advice.csv")])
def test_no_output_goes_into_a_run_folder(store, command, target):
    """An export over a run's meta.json left the run unreadable, a study over its folder replaced its
    breakdown.csv with five runs' rows (read back as one run's, silently): a run folder takes no output."""
    run = runs_of(store)[0]
    before = _files(run)
    out = run / target if target else run
    args = [*command[:1], store, *([store] if command[0] == "diff" else []), *command[1:], "-o", out]
    line = one_line_error(*cli(args)[::2])
    assert f"-o '{out}' is" in line and "run folder" in line and "outside it" in line
    assert _files(run) == before


def test_a_store_inside_a_run_folder_is_refused_before_the_model_is_built(store):
    """A run written into a run folder was hidden from every reader of the store."""
    run = runs_of(store)[0]
    before = _files(run)
    code, out, err = cli(["profile", "sd15", *FAST, "--store", run])
    assert f"is a run folder, not a store; pass its store: --store {store}" in one_line_error(code, err)
    code, out, err = cli(["sweep", "sd15", "--vary", "height=64", *FAST, "--store", run / "sub"])
    assert f"is inside the run folder {run}" in one_line_error(code, err)
    assert "profiling" not in out and _files(run) == before


# --- damaged runs: one warning line, the rest analysed ------------------------------------------------------

def test_damaged_runs_are_skipped_with_one_warning_each(store, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(store, copy)
    runs = runs_of(copy)
    truncated, corrupted = runs[0], runs[1]
    data = (truncated / KERNELS_FILE).read_bytes()
    (truncated / KERNELS_FILE).write_bytes(data[: len(data) // 2])
    (corrupted / META_FILE).write_text('{"schema_version": 2, "run_id": ')
    for command in (["dashboard", copy, "-o", tmp_path / "r.html"], ["study", copy, "-o", tmp_path / "study"]):
        code, out, err = cli(command)
        assert code == 0, err
        warnings = [ln for ln in err.splitlines() if "skipped damaged run" in ln]
        assert len(warnings) == 2 and any(str(truncated) in w for w in warnings) and any(str(corrupted) in w
                                                                                          for w in warnings)
    assert (tmp_path / "study" / "findings.md").is_file()


def test_a_run_missing_a_table_is_damaged_not_a_run_without_kernels(store, tmp_path):
    """A run folder without kernels.parquet was read as a run without kernels, with no warning: `diff` dropped its
    per-module rows silently. Every run is written with both tables, so a missing one is damage."""
    copy = tmp_path / "copy"
    shutil.copytree(store, copy)
    no_kernels, no_breakdown, whole = runs_of(copy)
    (no_kernels / KERNELS_FILE).unlink()
    (no_breakdown / BREAKDOWN_FILE).unlink()
    code, out, err = cli(["study", copy, "-o", tmp_path / "study"])
    assert code == 0, err
    warnings = [ln for ln in err.splitlines() if "skipped damaged run" in ln]
    assert len(warnings) == 2 and "RunNotFoundError" not in err, err
    assert f"{no_kernels / KERNELS_FILE} is missing" in err and f"{no_breakdown / BREAKDOWN_FILE} is missing" in err
    code, out, err = cli(["diff", no_kernels, whole])
    assert code == 1 and f"{no_kernels / KERNELS_FILE} is missing" in err, err
    # a reader of the summaries alone needs no kernel table
    code, out, err = cli(["runs", no_kernels])
    assert code == 0 and out.startswith("1 run "), err


# --- Ctrl-C: the promised line, no temporary traces -----------------------------------------------------

def test_ctrl_c_prints_the_promised_line(monkeypatch, tmp_path):
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr("mmchar.runner.measure_backends", interrupted)
    code, out, err = cli(["profile", "sd15", *FAST, "--store", tmp_path])
    assert code == 130
    assert "interrupted; runs that finished are in the store (a re-run of a sweep measures only the rest)" in err


def test_an_interrupted_compare_leaves_no_temporary_trace(monkeypatch, tmp_path):
    """Ctrl-C while the second backend is profiled: the first one's trace, already in the temp folder, goes."""
    import mmchar.runner as runner

    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    real, seen = runner.attribute, []

    def attribute(*a, **k):
        seen.append(1)
        if len(seen) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(runner, "attribute", attribute)
    code, out, err = cli(["compare", "sd15", "--backends", "math,flash", *FAST, "--store", tmp_path / "s"])
    assert code == 130 and "interrupted" in err
    # (torch's own inductor cache dir lands there too when this test runs first: not a file of ours)
    assert [p for p in temp.iterdir() if not p.name.startswith("torchinductor_")] == []


def test_an_interrupted_sweep_prints_what_it_finished(monkeypatch, tmp_path):
    from mmchar import sweep as sw

    real = sw.run_point

    def run_point(plan, point, store, **kw):
        if point.params["height"] == 32:
            raise KeyboardInterrupt
        return real(plan, point, store, **kw)

    monkeypatch.setattr(sw, "run_point", run_point)
    code, out, err = cli(["sweep", "sd15", "--vary", "height=64,32", "--backends", "math", "--steps", "1",
                          "--repeat", "1", "--no-trace", "--store", tmp_path])
    assert code == 130 and "interrupted; runs that finished are in the store" in err
    assert "1 of 2 points done" in out and "64" in out


def test_a_point_finished_after_the_interrupt_is_in_the_summary(monkeypatch, tmp_path):
    """Ctrl-C to the sweep alone: its point's process finishes and writes its run while the sweep waits for it;
    the partial summary lists that point too (it said 1 of 2 with 2 in the store)."""
    from mmchar import sweep as sw

    real = sw.run_point

    def run_point(plan, point, store, **kw):
        folder = real(plan, point, store, **kw)
        if point.params["height"] == 32:
            raise KeyboardInterrupt  # its run was written before the interrupt reached the sweep
        return folder

    monkeypatch.setattr(sw, "run_point", run_point)
    code, out, err = cli(["sweep", "sd15", "--vary", "height=64,32", "--backends", "math", "--steps", "1",
                          "--repeat", "1", "--no-trace", "--store", tmp_path])
    assert code == 130 and "2 of 2 points done" in out, out + err


def _processes_naming(text: str) -> list[int]:
    """Pids whose command line holds ``text`` (Linux's /proc)."""
    found = []
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and text in (d / "cmdline").read_bytes().replace(b"\0", b" ").decode():
                found.append(int(d.name))
        except OSError:
            continue
    return found


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="reads /proc")
def test_sigterm_is_handled_as_ctrl_c_and_reaches_a_sweeps_point(tmp_path):
    """A scheduler's SIGTERM ended the process outright: no line, temporary traces left, and a sweep's running
    point orphaned. Now it says so, exits 143 and the sweep passes it on to its point (which exits too)."""
    import signal
    import time

    store = tmp_path / "store"
    env = {**os.environ, "TMPDIR": str(tmp_path), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-P", "-m", "mmchar", "sweep", "sd15", "--vary", "height=32,64", "--backends", "math",
           "--steps", "2", "--repeat", "3", "--store", str(store)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while not [p for p in _processes_naming(str(store)) if p != proc.pid] and time.monotonic() < deadline:
            time.sleep(0.2)  # until the first point's process runs
        time.sleep(2.0)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert "terminated (SIGTERM); runs that finished are in the store" in err, err
    assert _processes_naming(str(store)) == []  # the point's process went with it
    assert not list(tmp_path.glob("mmchar-trace-*"))


# --- inputs accepted silently before ---------------------------------------------------------------------

def test_inputs_that_were_accepted_silently(tmp_path):
    store = tmp_path / "s"
    code, out, err = cli(["profile", "sd15", "--guidance", "-3", "--store", store])
    assert "guidance=-3 must be at least 0" in one_line_error(code, err)
    code, out, err = cli(["profile", "sd15", "--steps", "100000", "--store", store])
    line = one_line_error(code, err)
    assert "steps=100000" in line and "at most 1000" in line and "profiling" not in out
    assert not store.exists()
    code, out, err = cli(["profile", "sd15", "--dtype", "fp16", "--device", "cpu", "--profile-steps", "10", *FAST,
                          "--no-trace", "--store", store])
    assert code == 0, err
    assert "--dtype fp16 on the CPU" in err and "unrepresentative" in err
    assert "--profile-steps 10 is more than the 2 steps of a generation: profiling 2" in err
    assert json.loads((runs_of(store)[0] / META_FILE).read_text())["passes"]["profile_steps"] == 2


def test_a_cache_that_cannot_be_written_is_one_line_before_measuring(tmp_path, monkeypatch):
    (tmp_path / "f").write_text("")
    monkeypatch.setenv("MMCHAR_CACHE", str(tmp_path / "f"))
    code, out, err = cli(["calibrate", "--device", "cpu"])
    assert code == 1 and "MMCHAR_CACHE" in err and "is not a folder" in err, err
    assert "unexpected" not in err


def test_roofs_measured_under_load_are_not_cached(tmp_path, monkeypatch):
    """Every run records the cached roofs: one measured while other processes held the CPU is reported, not kept."""
    from mmchar import calibrate, noise

    monkeypatch.setenv("MMCHAR_CACHE", str(tmp_path))
    monkeypatch.setattr(calibrate, "measure_roofs", lambda device: {"device": "cpu", "matmul_tflops": {"fp32": 0.08},
                                                                    "copy_gbps": 16.9, "measured": "2026-12-08T00:00"})
    monkeypatch.setattr(noise, "verdict", lambda *a, **k: {"noisy": True, "reasons": ["other processes used 1.00 of "
                                                                                      "2 CPU cores"]})
    code, out, err = cli(["calibrate", "--device", "cpu", "--force"])
    assert code == 0 and "measured under load, so not cached" in err and "other processes used 1.00" in err, err
    assert not (tmp_path / "roofs.json").exists() and "cached in" not in out
    # (the fake measurement takes microseconds: a real verdict over it would count any tick of another process)
    monkeypatch.setattr(noise, "verdict", lambda *a, **k: {"noisy": False, "reasons": []})
    code, out, err = cli(["calibrate", "--device", "cpu", "--force"])
    assert code == 0 and (tmp_path / "roofs.json").is_file() and "cached in" in out, err


def test_an_allocation_the_cpu_cannot_make_is_recorded_as_oom():
    from mmchar.runner import is_oom

    msg = ("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried to "
           "allocate 35184372088832 bytes. Error code 12 (Cannot allocate memory)")
    assert is_oom(RuntimeError(msg)) and is_oom(MemoryError()) and not is_oom(RuntimeError("shape mismatch"))


# --- the host stage: the scheduler's own calls apart from everything else ----------------------------------

def test_scheduler_is_its_own_calls_and_host_the_rest(store):
    from mmchar.store import load_runs

    for run in load_runs([store]):
        t = run.meta["timings"]
        assert t["scheduler"]["n"] == 1 and t["scheduler"]["median_ms"] > 0  # scheduler.step, timed
        assert "host" in t and t["host"]["median_ms"] >= 0
        stages = set(run.breakdown["stage"])
        assert "scheduler" in stages  # the kernels of the scheduler's step
        assert set(run.kernels["stage"].astype(str)) <= {"text_encoder", "denoiser", "decoder", "scheduler", "host"}


def test_a_version_1_run_reads_its_residual_as_host(store, tmp_path):
    from mmchar.store import load_run

    old = tmp_path / "old"
    shutil.copytree(runs_of(store)[0], old)
    meta = json.loads((old / META_FILE).read_text())
    meta["schema_version"] = 1
    meta["timings"]["scheduler"] = meta["timings"].pop("host")
    meta["busy"]["scheduler"] = meta["busy"].pop("host", {"busy_ms": 0.0})
    (old / META_FILE).write_text(json.dumps(meta))
    bd = pd.read_csv(old / BREAKDOWN_FILE, keep_default_na=False)
    bd = bd[bd["stage"] != "scheduler"].replace({"stage": {"host": "scheduler"}})
    bd.to_csv(old / BREAKDOWN_FILE, index=False)
    run = load_run(old)
    assert run.meta["upgraded_from"] == 1 and run.meta["schema_version"] == SCHEMA_VERSION
    assert "host" in run.meta["timings"] and "scheduler" not in run.meta["timings"]
    assert "scheduler" not in set(run.breakdown["stage"]) and "host" in set(run.breakdown["stage"])


# --- labels a person can read ------------------------------------------------------------------------------

def _table_rows(out: str, n: int) -> list[str]:
    """The ``n`` lines under a table's header rule."""
    lines = out.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.strip() and set(ln.strip()) == {"─"})
    return lines[start + 1:start + 1 + n]


@pytest.fixture
def narrow(monkeypatch):
    """The CLI's tables as a 100-column terminal gets them."""
    from mmchar.cli import output

    monkeypatch.setattr(output.console, "width", 100)


def test_runs_at_100_columns_keep_each_run_on_one_line(store, narrow):
    out = cli(["runs", store])[1]
    rows = _table_rows(out, 3)  # one line per run: nothing folded
    assert all(len(ln) <= 100 for ln in out.splitlines())
    for label in ("sd15 math", "sd15 flash", "modelscope-t2v sdpa"):
        assert sum(ln.startswith(label + " ") for ln in rows) == 1, out
    assert "sd15-math-" not in out  # ids are for csv / json
    table = pd.read_csv(io.StringIO(cli(["runs", store, "--format", "csv"])[1]))
    assert {"run_id", "label", "dtype", "device", "guidance", "compile", "gpus", "noisy", "noise"} <= set(table.columns)


def test_compare_at_100_columns_keeps_a_backend_per_line(tmp_path, narrow):
    out = cli(["compare", "sd15", "--backends", "math,flash", *FAST, "--no-trace", "--store", tmp_path])[1]
    assert all(len(ln) <= 100 for ln in out.splitlines()), out
    rows = _table_rows(out, 2)
    assert rows[0].startswith("math ") and rows[1].startswith("flash "), out
    assert all(" ok " in r and "yes 1.0" in r for r in rows), out


def test_csv_and_json_on_stdout_parse_as_they_are(tmp_path, one_thread_points):
    """`compare --format json` and `sweep --format csv` write only the table to stdout: their status lines
    ("comparing ...", "sweep of ...", the runs' paths) go to stderr, and no field is cut short."""
    code, out, err = cli(["compare", "sd15", "--backends", "math,flash", *FAST, "--no-trace", "--format", "json",
                          "--store", tmp_path / "c"])
    assert code == 0, err
    assert {row["backend"] for row in json.loads(out)} == {"math", "flash"}
    assert "comparing math, flash" in err and "runs: " in err
    code, out, err = cli(["sweep", "sd15", "--vary", "height=32", "--backends", "math", "--steps", "1", "--repeat", "1",
                          "--no-trace", "--format", "csv", "--store", tmp_path / "s"])
    assert code == 0, err
    table = pd.read_csv(io.StringIO(out))
    assert list(table["status"]) == ["ok"] and "1 to run" in err


@pytest.mark.parametrize("width", [200, 80, 40])
def test_a_table_never_folds_a_number_or_a_name(monkeypatch, capsys, width):
    """At 80 columns (CI's terminal, 2026-12-07) the advice table folded every column to three characters:
    its numbers could not be read back. The words of a cell stay whole; a terminal narrower than the words gets
    lines it wraps itself."""
    from mmchar.cli import output

    monkeypatch.setattr(output.console, "width", width)
    frame = pd.DataFrame({"rank": pd.array([1, None], dtype="Int64"), "kind": ["step-cache", "sequence-parallel"],
                          "option": ["cache 1 of 2 steps", "--linear-backend fp8"],
                          "projected_step_ms": [4.05, None], "measured_step_ms": [None, 7.2621],
                          "model": ["steps skipped x step cost: one long sentence", "not applicable: a CPU run"]})
    output.print_frame(frame, truncate=("model",))
    out = capsys.readouterr().out
    words = set(out.split())
    assert {"4.05", "7.26", "step-cache", "sequence-parallel", "--linear-backend", "rank", "projected"} <= words, out
    assert "<NA>" not in out, out
    widest = max(map(len, out.splitlines()))
    assert widest <= width if width >= 80 else widest > width, out
    rows = _table_rows(out, 4)
    assert rows[0].startswith("1 ") and any(r.startswith("- ") for r in rows), out


def test_a_narrow_terminal_folds_only_long_identifiers(monkeypatch, capsys):
    """Where whole words overflow the terminal, a 40-character backend name folds (it is 20 wide), its numbers
    do not, and the table fits the terminal."""
    from mmchar.cli import output

    monkeypatch.setattr(output.console, "width", 60)
    name = "diffusers:_sage_qk_int8_pv_fp8_cuda_sm90"
    output.print_frame(pd.DataFrame({"name": [name, "sdpa"], "description": ["a long description " * 3] * 2,
                                     "attention_ms": [12.345, 0.5]}))
    out = capsys.readouterr().out
    assert all(len(ln) <= 60 for ln in out.splitlines()), out
    assert name not in out and name[:20] in out and {"12.35", "0.5"} <= set(out.split()), out


def test_backends_keeps_text_in_square_brackets():
    code, out, err = cli(["backends", "--device", "cpu"])
    assert code == 0 and "mmchar[fla]" in out


def test_diff_of_stores_as_csv_or_json_is_one_table(store):
    """Each pair printed a table of its own: four csv headers, four json arrays in one stdout."""
    code, out, err = cli(["diff", store, store, "--format", "json"])
    rows = json.loads(out)
    assert code == 0 and len({r["pair"] for r in rows}) == 3 and {"run_a", "run_b", "level"} <= set(rows[0]), err
    code, out, err = cli(["diff", store, store, "--format", "csv"])
    assert set(pd.read_csv(io.StringIO(out))["pair"]) == {r["pair"] for r in rows}


def test_export_shows_what_tells_runs_apart(store, tmp_path):
    code, out, err = cli(["export", store, "-o", tmp_path / "b.csv"])
    assert code == 0, err
    table = pd.read_csv(tmp_path / "b.csv")
    assert {"label", "dtype", "device", "guidance", "compile", "gpus", "noisy"} <= set(table.columns)
    assert set(table["dtype"]) == {"fp32"}


# --- what a run records of itself ------------------------------------------------------------------------

def test_runs_record_mmchars_own_version_and_commit_only_from_a_checkout(store):
    from mmchar import environment

    meta = json.loads((runs_of(store)[0] / META_FILE).read_text())
    assert meta["mmchar_version"] == environment.mmchar_version()
    checkout = environment.source_checkout()
    if checkout is None:  # an installed copy: never the commit of a repository that happens to enclose it
        assert meta["git_commit"] is None
    else:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=checkout, capture_output=True, text=True).stdout
        assert meta["git_commit"].removesuffix("-dirty") == head.strip()


def test_run_folders_follow_the_umask(store):
    run = runs_of(store)[0]
    assert stat.S_IMODE(run.stat().st_mode) == 0o755
    assert stat.S_IMODE((run / TRACE_FILE).stat().st_mode) == 0o644


# --- sweep: identity, retries -------------------------------------------------------------------------

SWEEP = ["sweep", "sd15", "--vary", "height=64", "--backends", "math", "--steps", "1", "--no-trace"]


def test_sweep_identity_and_retries(tmp_path, monkeypatch, one_thread_points):
    """A failed point stays failed until --retry-failed; how a point is measured is not its identity (and the
    re-run says so); a noisy one is measured again with --retry-noisy, and stands as stored without it."""
    from mmchar import sweep as sw

    store = tmp_path / "s"
    plan = sw.plan("sd15", {"height": [32]}, ["math"], store, fixed={"steps": 1},
                   options={"repeat": 1, "keep_trace": False})
    (point,) = plan.points
    sw.record_dead_child(plan, point, store, 1, "boom", oom=False)
    cmd = ["sweep", "sd15", "--vary", "height=32", "--backends", "math", "--steps", "1", "--no-trace", "--store", store]
    code, out, err = cli([*cmd, "--repeat", "1"])
    assert "0 to run" in out and code == 1  # its only point failed
    code, out, err = cli([*cmd, "--repeat", "1", "--retry-failed"])
    assert code == 0 and "1 to run" in out, err
    assert sw.summary_row(point, sw.stored_points(store, {point.config_hash})[point.config_hash])["status"] == "ok"
    # the point now has the run a sweep measured with --repeat 1: asked with 3, it is kept, and the sweep says why
    code, out, err = cli([*cmd, "--repeat", "3"])
    assert "1 already in" in out and "repeat 1 (asked 3)" in err and "not part of its identity" in err

    monkeypatch.setenv("MMCHAR_NOISE_SPREAD", "0")  # every spread is too much: every point is noisy
    noisy = [*SWEEP, "--vary", "batch=2", "--repeat", "3", "--store", store]
    code, out, err = cli([*noisy, "--retry-noisy", "1"])
    assert code == 0, err
    assert "measuring again (1 of 1)" in out and "points were measured under noise" in err
    assert len([r for r in runs_of(store) if json.loads((r / META_FILE).read_text())["config"]["params"]["batch"]
                == 2]) == 2  # the point measured twice
    code, out, err = cli(noisy)
    assert "1 already in" in out and "0 to run" in out  # without --retry-noisy a stored point stands
    assert "must be 0 or more" in one_line_error(*cli([*noisy, "--retry-noisy", "-1"])[::2])


@pytest.mark.parametrize("table", [BREAKDOWN_FILE, KERNELS_FILE])
def test_a_damaged_point_is_measured_again(tmp_path, table):
    """A stored point whose run lost a table is what every reader skips as damaged: it stands for nothing, so a
    re-run of the sweep measures it (it was counted as done and listed with its old numbers)."""
    from mmchar import sweep as sw

    store = tmp_path / "s"
    plan = sw.plan("sd15", {"height": [32]}, ["math"], store, fixed={"steps": 1},
                   options={"repeat": 1, "keep_trace": False})
    (point,) = plan.points
    sw.record_dead_child(plan, point, store, 1, "boom", oom=False)
    (run,) = runs_of(store)
    assert sw.stored_points(store, {point.config_hash}) == {point.config_hash: run}
    (run / table).unlink()
    assert sw.stored_points(store, {point.config_hash}) == {}
    again = sw.plan("sd15", {"height": [32]}, ["math"], store, fixed={"steps": 1},
                    options={"repeat": 1, "keep_trace": False})
    assert [p.config_hash for p in again.todo] == [point.config_hash]


def test_a_point_terminated_alone_failed_and_the_sweep_goes_on(tmp_path):
    """A hung point killed by hand (SIGTERM to it, not to the sweep) is a failed point, like one the OOM killer
    took: --retry-failed measures it again; it is not an interruption of the whole sweep."""
    from mmchar import sweep as sw

    store = tmp_path / "s"
    store.mkdir()
    plan = sw.plan("sd15", {"height": [32]}, ["math"], store, fixed={"steps": 1}, options={"repeat": 1})
    (point,) = plan.points
    folder = sw.run_point(plan, point, store, command=lambda *a: [sys.executable, "-c",
                                                                  "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"])
    meta = json.loads((folder / META_FILE).read_text())
    assert meta["status"] != "ok" and "terminated by SIGTERM" in meta["error"]


def test_an_imported_trace_of_a_run_diffs_as_that_run(store, tmp_path):
    """`analyze` of a run's own trace: the same kernels, so `diff` finds no change in any class per profiled step
    (it read the imported two steps as one and reported every class +100 %)."""
    from mmchar.analysis.tables import profiled_steps
    from mmchar.store import load_run

    run = next(r for r in runs_of(store) if r.name.startswith("modelscope-t2v-"))
    code, out, err = cli(["analyze", run / TRACE_FILE, "--store", tmp_path / "a", "--stage", "denoiser"])
    assert code == 0, err
    (imported,) = runs_of(tmp_path / "a")
    assert profiled_steps(load_run(imported, kernels=False)) == profiled_steps(load_run(run, kernels=False)) == 2
    code, out, err = cli(["diff", run, imported, "--fail-above", "10"])
    assert code == 0, out + err
    assert "+100%" not in out


# --- the checkout's own `python -m mmchar` ---------------------------------------------------------------

def test_python_m_mmchar_works_from_a_source_checkout():
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSAFEPATH"}
    proc = subprocess.run([sys.executable, "-m", "mmchar", "workloads", "--format", "csv"], cwd=REPO, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "sd15" in proc.stdout


# --- the README's promises --------------------------------------------------------------------------------

def test_readme_and_make_demo_tell_a_newcomer_what_they_need():
    readme = (REPO / "README.md").read_text()
    assert "../shared" not in readme and (REPO / "docs" / "conventions.md").is_file()
    assert ". .venv/bin/activate" in readme and "chromium" in readme.lower()
    assert ". .venv/bin/activate" in (REPO / "Makefile").read_text()
    for heading in ("## The noise guard", "## Pairing runs"):
        assert heading in readme
