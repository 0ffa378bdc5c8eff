"""The `mmchar` command end to end, in-process, on the CPU with the tiny presets.

Module-scoped fixtures run each expensive command once (one `profile` per workload, one `compare`); the
export / dashboard tests read the stores they wrote. Errors must be one line on stderr, exit 1, no traceback,
and nothing written to the store.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
from pathlib import Path

import pandas as pd
import pytest
import torch

import mmchar.api
import mmchar.backends
from mmchar.cli import main
from mmchar.errors import UnknownNameError
from mmchar.schema import (BREAKDOWN_COLUMNS, BREAKDOWN_FILE, COMPARISONS_DIR, KERNEL_COLUMNS, KERNELS_FILE,
                           META_FILE, TRACE_FILE)
from mmchar.store import Run

RUN_FILES = {META_FILE, KERNELS_FILE, BREAKDOWN_FILE, TRACE_FILE}
FAST = ["--steps", "2", "--repeat", "1"]  # tiny preset, 2 steps, one timed generation: about a second each


def cli(args: list) -> tuple[int, str, str]:
    """`main(args)` with stdout and stderr captured (module fixtures cannot use capsys)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def run_dirs(store: Path) -> list[Path]:
    """Run folders of a store (hidden temporaries and comparisons/ excluded)."""
    if not store.is_dir():
        return []
    return sorted(p for p in store.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name != COMPARISONS_DIR)


def meta_of(folder: Path) -> dict:
    return json.loads((folder / META_FILE).read_text())


def shapes(s: str) -> list[list[int]]:
    """input_shapes of an attention row: "[[B, H, S, D], [B, H, Skv, D], [B, H, Skv, Dv]]"."""
    return json.loads(s)


# --- module fixtures: one run per command, reused -----------------------------------------------------------

@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: with every core busy, the profiled passes on a small CPU slow down 3-15x at random
    (a compare took 3 s to 43 s on 2 cores); with one thread it takes 3.3 s every time."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def sd15_profile(tmp_path_factory):
    store = tmp_path_factory.mktemp("sd15") / "store"
    code, out, err = cli(["profile", "sd15", "--preset", "tiny", *FAST, "--store", store])
    return {"store": store, "code": code, "out": out, "err": err}


@pytest.fixture(scope="module")
def t2v_profile(tmp_path_factory):
    store = tmp_path_factory.mktemp("t2v") / "store"
    code, out, err = cli(["profile", "modelscope-t2v", "--backend", "math", "--frames", "3", *FAST, "--store", store])
    return {"store": store, "code": code, "out": out, "err": err}


@pytest.fixture(scope="module")
def t2v_compare(tmp_path_factory):
    store = tmp_path_factory.mktemp("cmp") / "store"
    code, out, err = cli(["compare", "modelscope-t2v", "--backends", "math,flash", "--repeat", "1", "--store", store])
    return {"store": store, "code": code, "out": out, "err": err}


@pytest.fixture(scope="module")
def tiny_pipe():
    from mmchar.workloads import get_workload

    w = get_workload("sd15")
    return w.build(w.resolve("tiny", device="cpu")).pipe


# --- 1. workloads ----------------------------------------------------------------------------------------

def test_workloads_table_lists_workloads_and_presets(capsys):
    assert main(["workloads"]) == 0
    out = capsys.readouterr().out
    for text in ("sd15", "modelscope-t2v", "full, tiny", "text-to-image", "text-to-video"):
        assert text in out


def test_workloads_csv_and_json_parse(capsys):
    assert main(["workloads", "--format", "csv"]) == 0
    csv = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert main(["workloads", "--format", "json"]) == 0
    js = pd.DataFrame(json.loads(capsys.readouterr().out))
    for df in (csv, js):
        rows = df.set_index("name")
        assert {"sd15", "modelscope-t2v"} <= set(rows.index)
        for name in ("sd15", "modelscope-t2v"):
            assert {"tiny", "full"} <= {p.strip() for p in rows.loc[name, "presets"].split(",")}
        assert rows.loc["sd15", "task"] == "text-to-image"
        assert rows.loc["modelscope-t2v", "task"] == "text-to-video"
        assert "temporal" in rows.loc["modelscope-t2v", "attention sites"]
        assert "temporal" not in rows.loc["sd15", "attention sites"]
    assert list(csv.columns) == list(js.columns)


# --- 2. backends -----------------------------------------------------------------------------------------

def test_backends_on_cpu(capsys):
    assert main(["backends", "--device", "cpu", "--format", "json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    for name in ("math", "flash", "sdpa"):
        assert rows[name]["available"] == "yes", rows[name]
        assert rows[name]["why_not"] == ""
    for name in ("cudnn", "efficient"):
        assert rows[name]["available"] == "no", rows[name]
        assert "cuda" in rows[name]["why_not"]
    assert main(["backends", "--device", "cpu"]) == 0
    table = capsys.readouterr().out
    assert "attention backends on cpu" in table
    assert "runs on cuda only, not cpu" in table


# --- 3. profile sd15 -------------------------------------------------------------------------------------

def test_profile_sd15_writes_one_complete_run(sd15_profile):
    assert sd15_profile["code"] == 0, sd15_profile["err"]
    assert "Traceback" not in sd15_profile["out"] + sd15_profile["err"]
    store = sd15_profile["store"]
    assert [p.name for p in store.iterdir()] == [p.name for p in run_dirs(store)]  # no leftover temporaries
    (run,) = run_dirs(store)
    assert run.name.startswith("sd15-sdpa-")
    assert RUN_FILES <= {p.name for p in run.iterdir()}
    meta = meta_of(run)
    assert meta["status"] == "ok" and meta["error"] is None
    assert meta["run_id"] == run.name
    assert meta["workload"] == "sd15" and meta["preset"] == "tiny" and meta["backend"] == "sdpa"
    assert meta["config"]["params"]["steps"] == 2 and meta["passes"]["repeat"] == 1
    # classifier-free guidance as SD runs it: one denoiser call per step on the prompt and its negative, batched
    assert meta["guidance"] == {"scale": 7.5, "mode": "batched", "denoiser_calls_per_step": 1, "denoiser_batch": 2,
                                "prompts": 1}
    for key in ("e2e", "denoiser_step"):
        t = meta["timings"][key]
        assert 0 < t["min_ms"] <= t["median_ms"] <= t["max_ms"]
    assert meta["timings"]["e2e"]["median_ms"] > meta["timings"]["denoiser_step"]["median_ms"]
    # the printed output: the stage table and the run folder
    assert f"run folder: {run}" in sd15_profile["out"]
    assert "denoiser op-class shares:" in sd15_profile["out"]


def test_profile_sd15_tables(sd15_profile):
    (run,) = run_dirs(sd15_profile["store"])
    bd = pd.read_csv(run / BREAKDOWN_FILE)
    assert list(bd.columns) == list(BREAKDOWN_COLUMNS)
    assert {"text_encoder", "denoiser", "decoder"} <= set(bd["stage"])
    for stage, total in bd.groupby("stage")["share"].sum().items():
        assert total == pytest.approx(1.0, abs=1e-6), stage
    den = bd[bd["stage"] == "denoiser"]
    assert {"conv", "gemm", "attention"} <= set(den["op_class"])
    assert set(den.loc[den["op_class"] == "attention", "attn_site"]) == {"spatial", "cross"}
    assert (bd["time_us"] >= 0).all() and (bd["calls"] > 0).all()

    k = pd.read_parquet(run / KERNELS_FILE)
    assert list(k.columns) == list(KERNEL_COLUMNS)
    assert len(k) > 0
    assert set(k.loc[k["stage"] == "denoiser", "step"]) == {0, 1}
    # the breakdown aggregates the kernel table
    den_k = k[k["stage"] == "denoiser"]
    assert den_k["dur_us"].sum() == pytest.approx(den["time_us"].sum(), rel=1e-6)

    with gzip.open(run / TRACE_FILE, "rt") as f:
        trace = json.load(f)
    assert len(trace["traceEvents"]) > 100


# --- 4. profile modelscope-t2v: attention sites and shapes ----------------------------------------------

def test_profile_t2v_attention_sites_and_shapes(t2v_profile):
    assert t2v_profile["code"] == 0, t2v_profile["err"]
    (run,) = run_dirs(t2v_profile["store"])
    meta = meta_of(run)
    assert meta["status"] == "ok"
    assert meta["config"]["params"]["frames"] == 3
    assert set(meta["backend_per_layer"].values()) == {"math"}
    assert "temporal" in t2v_profile["out"]  # "denoiser attention by site: ..."

    k = pd.read_parquet(run / KERNELS_FILE)
    att = k[(k["stage"] == "denoiser") & (k["op_class"] == "attention")]
    assert {"temporal", "spatial", "cross"} <= set(att["attn_site"].astype(str))

    frames, h, w = 3, 64, 64
    temporal = att[att["attn_site"] == "temporal"]
    assert temporal["input_shapes"].notna().all()
    for s in set(temporal["input_shapes"]):
        q, kk, v = shapes(s)
        assert q[2] == kk[2] == v[2] == frames, s

    spatial = att[att["attn_site"] == "spatial"]
    assert spatial["input_shapes"].notna().all()
    first_level = spatial[spatial["module_path"].astype(str).str.startswith("unet.down_blocks.0.")]
    assert len(first_level) > 0
    tokens = (h // 8) * (w // 8)
    for s in set(first_level["input_shapes"]):
        q, kk, _ = shapes(s)
        assert q[2] == kk[2] == tokens, s
        assert q[0] == 2 * frames  # CFG doubles the batch; spatial attention batches over frames
    assert max(shapes(s)[0][2] for s in set(spatial["input_shapes"])) == tokens

    cross = att[att["attn_site"] == "cross"]
    for s in set(cross["input_shapes"]):
        q, kk, _ = shapes(s)
        assert kk[2] == 77 and q[2] != kk[2], s  # keys from the 77-token prompt

    bd = pd.read_csv(run / BREAKDOWN_FILE)
    sites = set(bd.loc[(bd["stage"] == "denoiser") & (bd["op_class"] == "attention"), "attn_site"])
    assert sites == {"temporal", "spatial", "cross"}


# --- 5. compare ------------------------------------------------------------------------------------------

def test_compare_math_flash(t2v_compare):
    assert t2v_compare["code"] == 0, t2v_compare["err"]
    store = t2v_compare["store"]
    runs = run_dirs(store)
    assert len(runs) == 2
    metas = {meta_of(r)["backend"]: meta_of(r) for r in runs}
    assert set(metas) == {"math", "flash"}
    groups = {m["compare"]["group"] for m in metas.values()}
    assert len(groups) == 1
    for m in metas.values():
        assert m["status"] == "ok"
        c = m["compare"]
        assert c["agrees"] is True and c["cosine"] > 0.99
        assert c["baseline_backend"] == "math" and c["baseline_run_id"] == metas["math"]["run_id"]
    assert metas["math"]["compare"]["max_abs_diff"] == 0.0
    tables = list((store / COMPARISONS_DIR).glob("*.csv"))
    assert len(tables) == 1 and tables[0].stem == groups.pop()
    table = pd.read_csv(tables[0])
    assert set(table["backend"]) == {"math", "flash"}
    assert (table["status"] == "ok").all()
    assert table.set_index("backend").loc["math", "e2e_speedup"] == pytest.approx(1.0)
    assert str(tables[0]) in t2v_compare["out"]


# --- 6. export / dashboard -------------------------------------------------------------------------------

def test_export_covers_every_run(sd15_profile, t2v_profile, t2v_compare, tmp_path, capsys):
    stores = [sd15_profile["store"], t2v_profile["store"], t2v_compare["store"]]
    expected = {r.name for s in stores for r in run_dirs(s)}
    assert len(expected) == 4
    out = tmp_path / "out.csv"
    assert main(["export", *map(str, stores), "-o", str(out)]) == 0
    assert f"from {len(expected)} runs" in capsys.readouterr().out
    table = pd.read_csv(out, keep_default_na=False)
    assert set(table["run_id"]) == expected
    assert {"stage", "op_class", "attn_site", "time_us", "share", "backend", "workload"} <= set(table.columns)
    shares = table.groupby(["run_id", "stage"])["share"].sum()
    assert ((shares - 1.0).abs() < 1e-6).all()
    # a single run folder is accepted too
    one = run_dirs(sd15_profile["store"])[0]
    out1 = tmp_path / "one.csv"
    assert main(["export", str(one), "-o", str(out1)]) == 0
    assert set(pd.read_csv(out1)["run_id"]) == {one.name}


def test_dashboard_embeds_plotly_once(sd15_profile, t2v_profile, t2v_compare, tmp_path, capsys):
    from plotly.offline import get_plotlyjs

    stores = [sd15_profile["store"], t2v_profile["store"], t2v_compare["store"]]
    out = tmp_path / "r.html"
    assert main(["dashboard", *map(str, stores), "-o", str(out)]) == 0
    assert "dashboard of 4 runs" in capsys.readouterr().out
    page = out.read_text()
    assert page.lstrip().lower().startswith("<!doctype html") or page.lstrip().lower().startswith("<html")
    assert page.count(get_plotlyjs()) == 1
    for r in (r for s in stores for r in run_dirs(s)):
        assert r.name in page
    assert not list(tmp_path.glob(".*.tmp"))


# --- 7. Python API and pipeline folders ------------------------------------------------------------------

def test_api_profile_and_pipeline_folder(tiny_pipe, tmp_path, capsys):
    store = tmp_path / "api"
    run = mmchar.api.profile(tiny_pipe, prompt="a cat", num_inference_steps=2, store=store, repeat=1,
                             height=64, width=64)
    assert isinstance(run, Run)
    assert run.status == "ok" and run.workload == "pipeline"
    assert isinstance(run.breakdown, pd.DataFrame) and len(run.breakdown) > 0
    assert {"denoiser", "text_encoder", "decoder"} <= set(run.breakdown["stage"])
    assert isinstance(run.kernels, pd.DataFrame) and len(run.kernels) > 0
    assert run.path is not None and run.path.is_dir() and run.path.parent == store
    assert RUN_FILES <= {p.name for p in run.path.iterdir()}
    assert meta_of(run.path)["config"]["params"]["prompt"] == "a cat"
    api_layers = run.meta["attention_layers"]

    folder = tmp_path / "pipe"
    tiny_pipe.save_pretrained(folder)
    assert (folder / "model_index.json").is_file()
    size = ["--height", "64", "--width", "64"]

    s2 = tmp_path / "s2"
    code = main(["profile", "--pipeline", str(folder), *FAST, *size, "--store", str(s2)])
    out, err = capsys.readouterr()
    assert code == 0, err
    (r2,) = run_dirs(s2)
    m2 = meta_of(r2)
    assert m2["workload"] == "pipeline" and m2["status"] == "ok"
    assert m2["config"]["pipeline_dir"] == str(folder.resolve())
    assert r2.name.startswith("pipeline-sdpa-")
    assert m2["attention_layers"] == api_layers
    assert f"run folder: {r2}" in out

    s3 = tmp_path / "s3"
    code = main(["profile", "sd15", "--weights", str(folder), *FAST, *size, "--store", str(s3)])
    out, err = capsys.readouterr()
    assert code == 0, err
    (r3,) = run_dirs(s3)
    m3 = meta_of(r3)
    assert m3["workload"] == "sd15" and m3["status"] == "ok"
    assert m3["config"]["weights"] == str(folder)
    assert m3["attention_layers"] == api_layers


# --- 8. bad input: one line, exit 1, nothing written -----------------------------------------------------

BAD = {
    "unknown workload": (["profile", "nosuch"], ["valid workloads", "sd15", "modelscope-t2v"]),
    "unknown backend": (["profile", "sd15", "--backend", "nosuch"],
                        ["valid backends", "math", "flash", "sdpa", "cudnn", "efficient"]),
    "unknown preset": (["profile", "sd15", "--preset", "nosuch"], ["nosuch", "full", "tiny"]),
    "unavailable backend": (["profile", "sd15", "--backend", "cudnn", "--device", "cpu"],
                            ["cudnn", "not available on cpu", "available here", "math", "sdpa"]),
    "height not /8": (["profile", "sd15", "--height", "65"], ["height=65", "multiple of 8", "64"]),
    "frames < 1": (["profile", "modelscope-t2v", "--frames", "0"], ["frames=0", "at least 1"]),
    "frames to an image model": (["profile", "sd15", "--frames", "3"], ["--frames", "sd15"]),
    "missing weights": (["profile", "sd15", "--weights", "/nonexistent"], ["/nonexistent", "pipeline folder"]),
    "pipeline without model_index": (["profile", "--pipeline", "{empty}"], ["model_index.json", "save_pretrained"]),
    "cuda on cpu": (["profile", "sd15", "--device", "cuda"], ["cuda", "--device cpu"]),
    "unknown format (workloads)": (["workloads", "--format", "xml"], ["xml", "csv", "json", "table"]),
    "unknown format (compare)": (["compare", "sd15", "--format", "xml"], ["xml", "csv", "json", "table"]),
    "export of no runs": (["export", "{empty}", "-o", "{out}"], ["holds no runs", "mmchar profile"]),
    "export of a missing path": (["export", "{missing}", "-o", "{out}"], ["does not exist", "mmchar profile"]),
    "export of a file": (["export", "{empty}/README.txt", "-o", "{out}"], ["is a file, not a store", "mmchar profile"]),
    "missing pipeline": (["profile", "--pipeline", "{missing}"], ["pipeline folder", "does not exist"]),
    "bad dtype": (["profile", "sd15", "--dtype", "fp64"], ["fp64", "fp32", "fp16", "bf16"]),
    "compare of one backend": (["compare", "sd15", "--backends", "math,"], ["one variant", "--backends math,flash"]),
    "compare naming a projection backend twice": (["compare", "sd15", "--backends", "math,sdpa", "--linear-backend",
                                                   "dense,dense"], ["--linear-backend dense,dense names dense more"]),
    "cross attention under linear attention": (["profile", "sd15", "--backend", "linear", "--cross-backend", "linear"],
                                                ["--cross-backend linear is not softmax attention", "cudnn"]),
    "cache on a transformer without cache hooks": (["profile", "pixart-sigma", "--cache", "pab"],
                                                   ["--cache pab: the denoiser", "no diffusers cache hooks"]),
    "cache on a UNet": (["profile", "sd15", "--cache", "pab"], ["--cache pab: sd15 is a UNet", "DeepCache"]),
    "sweep with a cache on a UNet": (["sweep", "sd15", "--vary", "height=32", "--backends", "math", "--cache", "pab",
                                      "--store", "{missing}"], ["--cache pab: sd15 is a UNet"]),
    "compare naming a backend twice": (["compare", "sd15", "--backends", "math,flash,math"],
                                       ["--backends math,flash,math names math more than once"]),
    "bad compare backend": (["compare", "modelscope-t2v", "--backends", "math,nosuch"], ["nosuch", "valid backends"]),
    "pipeline steps 0": (["profile", "--pipeline", "{saved}", "--steps", "0"], ["steps=0", "at least 1"]),
    "pipeline height not /8": (["profile", "--pipeline", "{saved}", "--height", "60"], ["height=60", "multiple of 8"]),
    "frames to an image pipeline": (["profile", "--pipeline", "{saved}", "--frames", "3"], ["--frames does not apply"]),
    "preset with a pipeline": (["profile", "--pipeline", "{saved}", "--preset", "full"], ["--preset", "--pipeline"]),
}


@pytest.fixture(scope="module")
def saved_pipeline(tiny_pipe, tmp_path_factory):
    from mmchar.workloads.build import quiet_progress_bars

    quiet_progress_bars()
    folder = tmp_path_factory.mktemp("saved") / "tiny-sd15"
    tiny_pipe.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line(case, tmp_path, capsys, request):
    if case == "cuda on cpu" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    args, expected = BAD[case]
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "README.txt").write_text("not a pipeline, not a store")
    store, out_file = tmp_path / "store", tmp_path / "out.csv"
    saved = request.getfixturevalue("saved_pipeline") if any("{saved}" in a for a in args) else None
    args = [a.format(empty=empty, out=out_file, missing=tmp_path / "missing", saved=saved) for a in args]
    if args[0] in ("profile", "compare"):
        args += ["--store", str(store)]
    code = main(args)
    out, err = capsys.readouterr()
    assert code == 1
    assert "Traceback" not in out + err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and err.strip() == lines[0], err
    assert lines[0].startswith("error: ")
    assert "unexpected" not in lines[0]  # an MmcharError, not the catch-all
    for text in expected:
        assert text in lines[0], (text, lines[0])
    assert not store.exists() or not any(store.iterdir())
    assert not out_file.exists()


# --- 9. a failing backend does not stop compare ----------------------------------------------------------

class OOMBackend(mmchar.backends.AttentionBackend):
    name = "test-oom"
    description = "test backend: every call runs out of memory"

    def __call__(self, q, k, v, *, causal=False, scale=None, mask=None, hidden_states=None):
        raise torch.OutOfMemoryError("CUDA out of memory. simulated")


@contextlib.contextmanager
def registered(cls):
    """``cls`` in the backend registry for the block, added as a plugin adds one (`register_backend`), and out of
    it after (mmchar.backends has no public way to take a backend out)."""
    assert cls.name not in mmchar.backends.backend_names()
    mmchar.backends.register_backend(cls)
    try:
        yield cls.name
    finally:
        mmchar.backends._REGISTRY.pop(cls.name, None)


@pytest.fixture
def oom_backend():
    with registered(OOMBackend) as name:
        yield name


def test_compare_survives_a_failing_backend(oom_backend, tmp_path, capsys):
    store = tmp_path / "store"
    code = main(["compare", "modelscope-t2v", "--backends", f"math,{oom_backend}", "--repeat", "1",
                 "--store", str(store)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "Traceback" not in out + err
    runs = run_dirs(store)
    assert len(runs) == 2
    metas = {meta_of(r)["backend"]: meta_of(r) for r in runs}
    assert metas["math"]["status"] == "ok"
    oom = metas[oom_backend]
    assert oom["status"] == "oom"
    assert "CUDA out of memory. simulated" in oom["error"]
    assert oom["compare"]["baseline_backend"] == "math"
    oom_dir = next(r for r in runs if r.name.startswith(f"modelscope-t2v-{oom_backend}-"))
    assert len(pd.read_parquet(oom_dir / KERNELS_FILE)) == 0
    assert len(pd.read_parquet(store / metas["math"]["run_id"] / KERNELS_FILE)) > 0
    assert f"{oom_backend}: oom" in err  # the warning names the failed backend
    (table,) = (store / COMPARISONS_DIR).glob("*.csv")
    status = pd.read_csv(table).set_index("backend")["status"]
    assert status.to_dict() == {"math": "ok", oom_backend: "oom"}
    code = main(["runs", str(store)])  # an ok run beside a failed one: the failed one's error is its note
    out, err = capsys.readouterr()
    assert code == 0, err
    assert {ln.split()[2] for ln in out.splitlines() if ln.startswith("modelscope-t2v ")} == {"ok", "oom"}, out
    assert "OutOfMemoryError" in out, out


def test_a_backend_taken_out_of_the_registry_is_unknown_everywhere(tmp_path):
    """What `oom_backend` leaves behind: while registered, the backend is listed by `mmchar backends` and taken by
    `get_backend`; once out of the registry, no listing shows it (nothing keeps a stale copy of the registry) and
    naming it is the one-line unknown-backend error that names every valid backend."""
    def listed() -> set[str]:
        code, out, err = cli(["backends", "--device", "cpu", "--format", "json"])
        assert code == 0, err
        return {row["name"] for row in json.loads(out)}

    with registered(OOMBackend) as name:
        assert name in listed() and mmchar.backends.get_backend(name) is OOMBackend
    valid = listed()
    assert name not in valid and {"math", "sdpa", "flash"} <= valid
    with pytest.raises(UnknownNameError) as e:
        mmchar.backends.get_backend(name)
    assert name not in e.value.valid and set(e.value.valid) <= valid
    code, out, err = cli(["profile", "sd15", "--backend", name, "--store", tmp_path / "store"])
    assert code == 1 and "Traceback" not in out + err
    (line,) = [ln for ln in err.splitlines() if ln.strip()]
    assert f"unknown backend {name!r}" in line and "valid backends: " in line, line
    assert all(n in line for n in e.value.valid), line
    assert not (tmp_path / "store").exists()


# --- regressions of bugs found by these tests ----------------------------------------------------------

def test_two_runs_in_the_same_second(tiny_pipe, tmp_path, monkeypatch):
    import datetime as dt

    import mmchar.runner

    class Frozen(dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(2026, 1, 1, 12, 0, 0, tzinfo=tz)

    monkeypatch.setattr(mmchar.runner, "datetime", Frozen)
    kw = dict(prompt="a cat", num_inference_steps=1, profile_steps=1, repeat=1, height=64, width=64,
              store=tmp_path / "s")
    a = mmchar.api.profile(tiny_pipe, **kw)
    b = mmchar.api.profile(tiny_pipe, **kw)
    assert a.run_id != b.run_id and len(run_dirs(tmp_path / "s")) == 2


@pytest.mark.parametrize("args", [["profile", "sd15", "--nosuchopt"], ["profile", "sd15", "--steps", "abc"],
                                  ["nosuchcommand"]])
def test_usage_errors_are_plain_one_liners(args, capsys):
    code = main(args)
    err = capsys.readouterr().err
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "unexpected" not in err and "see mmchar --help" in err


@pytest.mark.parametrize("weights", ["/nonexistent/[bold]x", "/nonexistent/a[/b]"])
def test_error_messages_are_not_markup(weights, capsys):
    code = main(["profile", "sd15", "--weights", weights])
    err = capsys.readouterr().err
    assert code == 1 and weights in err


def test_agreement_of_latents_and_of_tokens():
    from mmchar.compare import agreement

    x = torch.randn(2, 4, 8, 8)
    same = agreement(x, x.clone())
    assert same["agrees"] and same["cosine"] == pytest.approx(1.0) and same["max_abs_diff"] == 0.0
    assert not agreement(x, -x)["agrees"]
    ids = torch.arange(16).reshape(1, 16)
    flipped = ids.clone()
    flipped[0, 12:] += 1  # a flip at position 12 and every later token changed
    tok = agreement(ids, flipped)
    assert tok["token_match"] == pytest.approx(0.75) and tok["agrees"] is False
    assert tok["cosine"] != tok["cosine"]  # NaN: ids have no meaningful distance
    assert agreement(ids, ids.clone())["agrees"] is True


def test_token_agreement_is_not_rounded_to_a_match(capsys):
    """A 99.8 % token match printed as "NO 100%" reads as a match: one decimal unless exactly 0 or 1."""
    from types import SimpleNamespace

    from mmchar.cli.measure import _print_comparison, share_text

    assert [share_text(x) for x in (1.0, 0.0, 0.998, 0.002, 0.75, 0.99996, 0.00004)] == [
        "100%", "0%", "99.8%", "0.2%", "75.0%", ">99.9%", "<0.1%"]
    nan = float("nan")
    table = pd.DataFrame({"backend": ["math", "flash", "cudnn"], "status": "ok", "e2e_ms": 10.0,
                          "denoiser_step_ms": 1.0, "denoiser_busy_ms": 1.0, "attention_us_per_step": 1.0,
                          "e2e_speedup": 1.0, "step_speedup": 1.0, "busy_speedup": 1.0, "attention_speedup": 1.0,
                          "max_abs_diff": nan, "cosine": nan, "token_match": [nan, 0.998, 1.0],
                          "agrees": pd.array([pd.NA, False, True], dtype="boolean")})
    _print_comparison(SimpleNamespace(table=table, group="llamagen-tiny"), "math", "cpu", "table")
    out = capsys.readouterr().out
    assert "NO 99.8%" in out and "yes 100%" in out and "NO 100%" not in out


def test_compare_of_a_token_model_reports_token_match(tmp_path):
    code, out, err = cli(["compare", "llamagen", "--backends", "math,flash", "--preset", "tiny", "--steps", "4",
                          "--repeat", "1", "--no-trace", "--store", tmp_path])
    assert code == 0, err
    table = pd.read_csv(next((tmp_path / COMPARISONS_DIR).glob("*.csv")))
    assert table["token_match"].between(0, 1).all() and table["cosine"].isna().all()
    assert "agrees: share of equal tokens" in out


def test_compare_warns_when_latents_diverge(tmp_path, monkeypatch):
    """A latent model whose outputs fall under the cosine bar is warned about, not crashed on (a bar above 1
    flags every backend, the baseline too)."""
    monkeypatch.setattr("mmchar.compare.COSINE_MIN", 2.0)
    code, out, err = cli(["compare", "sd15", "--backends", "math,flash", "--preset", "tiny", *FAST, "--no-trace",
                          "--store", tmp_path])
    assert code == 0, err
    assert "final latents DIVERGE from math's" in err + out


def test_compare_checks_a_model_without_a_decoder(tmp_path):
    """IF stage I denoises pixels (no decoder stage): its denoiser's last output is what the backends must agree on."""
    code, out, err = cli(["compare", "if-stage1", "--backends", "math,flash", "--preset", "tiny", *FAST,
                          "--no-trace", "--store", tmp_path])
    assert code == 0, err
    table = pd.read_csv(next((tmp_path / COMPARISONS_DIR).glob("*.csv")))
    assert table["agrees"].all() and (table["cosine"] > 0.99).all()
