"""A workload is one folder: a package dropped on the workloads path is discovered, listed, benchmarked and run
with no other file touched; every folder of the source tree with a workload.py is registered; a folder without
one is not a workload; a workload.py that fails to import is named in one line."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import mmchar.workloads as registry
from mmchar.cli import main
from mmchar.errors import UnknownNameError
from mmchar.workloads import WorkloadImportError, get_workload, workload_names

SD15_CONFIGS = Path(registry.__file__).parent / "sd15" / "configs"
NEW_SHAPE = {"name": "one-folder self", "b": 1, "h": 2, "sq": 16, "skv": 16, "d": 8}

WORKLOAD_PY = '''
from mmchar.workloads import register_workload
from mmchar.workloads.sd15.workload import SD15


@register_workload
class OneFolder(SD15):
    name = "one-folder-test"
    aliases = ("one-folder-alias",)
    description = "SD 1.5 under another name, from a folder outside the source tree"
'''


@pytest.fixture
def workloads_path(tmp_path, monkeypatch):
    """A second folder on the workloads package path; whatever its packages register is dropped afterwards."""
    from mmchar.environment import cache_dir

    workload_names()  # the built-in ones stay loaded: only what the test adds is dropped
    folder = tmp_path / "extra_workloads"
    folder.mkdir()
    counted = cache_dir() / "parameters.json"  # the built-in workloads' counts, so listing them stays fast
    (tmp_path / "cache").mkdir()
    if counted.is_file():
        (tmp_path / "cache" / "parameters.json").write_text(counted.read_text())
    monkeypatch.setenv("MMCHAR_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(registry, "__path__", [*registry.__path__, str(folder)])
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_ALIASES", dict(registry._ALIASES))
    before = set(sys.modules)
    yield folder
    for name in set(sys.modules) - before:
        if name.startswith(f"{registry.__name__}."):
            del sys.modules[name]


def _package(folder: Path, name: str, files: dict[str, str]) -> Path:
    pkg = folder / name
    for rel, text in {"__init__.py": "", **files}.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    return pkg


def _one_folder_workload(folder: Path) -> None:
    """SD 1.5's presets under a new name: its own published size and bench shape, and a third preset that only
    this folder has (so presets read from any other folder show)."""
    full = json.loads((SD15_CONFIGS / "full.json").read_text())
    full["bench"] = {"shapes": [NEW_SHAPE]}  # no order: after the ordered workloads
    tiny = (SD15_CONFIGS / "tiny.json").read_text()
    _package(folder, "one_folder_wl", {"workload.py": WORKLOAD_PY, "configs/full.json": json.dumps(full),
                                       "configs/tiny.json": tiny, "configs/extra.json": tiny})


def test_a_new_folder_is_a_new_workload(workloads_path, tmp_path, capsys):
    from mmchar import bench_attn

    builtin = workload_names()
    _one_folder_workload(workloads_path)
    _package(workloads_path, "not_a_workload", {"helpers.py": "VALUE = 1\n"})  # shared code: no workload.py
    (workloads_path / "stray_module.py").write_text("raise RuntimeError('a module, not a folder: never imported')\n")

    assert workload_names() == sorted([*builtin, "one-folder-test"])
    w = get_workload("one-folder-alias")
    assert w.name == "one-folder-test" and w.presets() == ["extra", "full", "tiny"]  # its own folder's presets
    assert w.resolve("tiny", device="cpu")["params"]["height"] == 64
    assert w.preset_config("full")["published"]["component"] == "unet"
    shapes = bench_attn.workload_shapes()
    assert bench_attn.Shape(**NEW_SHAPE) == shapes[-1] and shapes[0].name == "sd15-512 spatial L0"

    assert main(["workloads", "--format", "csv"]) == 0
    assert "one-folder-test" in capsys.readouterr().out
    store = tmp_path / "runs"
    code = main(["profile", "one-folder-test", "--steps", "1", "--repeat", "1", "--profile-steps", "1", "--no-trace",
                 "--store", str(store)])
    assert code == 0, capsys.readouterr().err
    (run,) = [p for p in store.iterdir() if p.is_dir() and not p.name.startswith(".")]
    meta = json.loads((run / "meta.json").read_text())
    assert meta["status"] == "ok" and meta["workload"] == "one-folder-test"


def test_a_workload_that_fails_to_import_is_named(workloads_path, capsys):
    _package(workloads_path, "broken_wl", {"workload.py": "import mmchar_no_such_module_xyz\n"})
    with pytest.raises(WorkloadImportError, match=r"'broken_wl' .*ModuleNotFoundError.*mmchar_no_such_module_xyz"):
        workload_names()
    assert main(["workloads"]) == 1
    err = capsys.readouterr().err
    assert "broken_wl" in err and len(err.strip().splitlines()) == 1


def test_every_source_folder_with_a_workload_py_is_registered(tmp_path):
    """In a fresh interpreter (nothing imported beforehand), discovery alone must register every folder."""
    script = textwrap.dedent("""
        import json, sys
        from mmchar.workloads import _REGISTRY, workload_names
        workload_names()
        print(json.dumps({n: c.__module__ for n, c in _REGISTRY.items()}))
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, check=True)
    modules = json.loads(out.stdout)
    source = Path(registry.__file__).parent
    folders = {p.parent.name for p in source.glob("*/workload.py")}
    assert len(folders) >= 15
    registered = {m.split(".")[-2] for m in modules.values()}
    assert registered == folders, f"not registered: {sorted(folders - registered)}"
    assert all(m == f"{registry.__name__}.{m.split('.')[-2]}.workload" for m in modules.values())
    assert set(modules) == set(workload_names())


def test_tokenizer_kinds_are_one_table():
    from mmchar.workloads.pipeline import TOKENIZERS

    used = {kind for n in workload_names() for kind in getattr(get_workload(n), "tokenizers", {}).values()}
    assert used and used <= set(TOKENIZERS)
    with pytest.raises(UnknownNameError, match="valid tokenizer kinds: ") as e:
        get_workload("sd15")._tokenizer("sentencepiece", "tokenizer", {})
    # every kind of the table is named, those a workload folder added included (its workload.py registers them)
    assert set(str(e.value).split("valid tokenizer kinds: ")[1].split(";")[0].strip(" .").split(", ")) == \
        set(TOKENIZERS)
