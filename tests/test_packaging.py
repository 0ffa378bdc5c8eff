"""Every source folder ships, found rather than listed: setup.py derives the packages from pyproject's package-dir
mapping, and a wheel built from the tree holds every package, module and workload preset of it. A subpackage
or a preset left out installs silently without it, so these look at what is built and installed."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _source_checkout() -> dict[str, str]:
    """package -> folder of pyproject's mapping (skips outside a source checkout)."""
    if not (ROOT / "pyproject.toml").exists() or not (ROOT / "setup.py").exists():
        pytest.skip("not run from a source checkout")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]


def _shipped_files(root: Path, mapping: dict[str, str]) -> set[str]:
    """Every file a tree must install, by its path in the wheel: modules of every package and workload presets."""
    want = set()
    for package, folder in mapping.items():
        base = Path(*package.split("."))
        for init in (root / folder).rglob("__init__.py"):
            for f in init.parent.glob("*.py"):
                want.add((base / f.relative_to(root / folder)).as_posix())
    for preset in (root / mapping["mmchar.workloads"]).glob("*/configs/**/*.json"):
        want.add(("mmchar/workloads" / preset.relative_to(root / mapping["mmchar.workloads"])).as_posix())
    for data in (root / mapping["mmchar.analysis"] / "data").glob("*.json"):  # gpus.json: `mmchar advise`'s GPUs
        want.add(("mmchar/analysis" / data.relative_to(root / mapping["mmchar.analysis"])).as_posix())
    return want


def test_setup_finds_every_package_folder():
    mapping = _source_checkout()
    spec = importlib.util.spec_from_file_location("mmchar_setup", ROOT / "setup.py")
    setup = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(setup)  # not __main__: only defines packages()
    found = set()
    for package, folder in mapping.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join((package, *rel.parts)))
    assert set(setup.packages()) == found
    source = ROOT / mapping["mmchar.workloads"]
    workloads = {f"mmchar.workloads.{p.parent.name}" for p in source.glob("*/workload.py")}
    assert len(workloads) >= 15 and workloads <= set(setup.packages())


def test_a_wheel_of_the_tree_ships_every_module_and_preset(tmp_path):
    """Built from a copy of the tree (setup.py and pyproject as they are), without network or build isolation."""
    pytest.importorskip("setuptools")
    mapping = _source_checkout()
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for folder in set(mapping.values()):
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    # -P: the copy's own kernels/ folder must not shadow Hugging Face's `kernels` while setuptools imports
    build = subprocess.run([sys.executable, "-P", "-c", "import sys; from setuptools import build_meta as b; "
                            "print(b.build_wheel(sys.argv[1]))", str(tmp_path / "dist")],
                           cwd=src, capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = tmp_path / "dist" / build.stdout.strip().splitlines()[-1]
    names = {n for n in zipfile.ZipFile(wheel).namelist() if not n.startswith("mmchar-")}
    want = _shipped_files(src, mapping)  # the copy's: the tree may change meanwhile
    assert any(n.endswith("workloads/sd15/configs/full.json") for n in want)
    assert "mmchar/analysis/data/gpus.json" in want
    assert want <= names, f"missing from the wheel: {sorted(want - names)[:10]}"
    assert {n.split("/")[0] for n in names} == {"mmchar"}  # nothing installs as a top-level package
    for folder in (src / mapping["mmchar.workloads"]).glob("*/workload.py"):
        assert f"mmchar/workloads/{folder.parent.name}/workload.py" in names


def test_the_installed_package_has_every_workload_folder():
    """What this interpreter imports (a regular install under `make test`, the tree itself when editable)."""
    import mmchar.workloads

    mapping = _source_checkout()
    installed = [Path(p) for p in mmchar.workloads.__path__]
    for wl in (ROOT / mapping["mmchar.workloads"]).glob("*/workload.py"):
        presets = {p.relative_to(wl.parent).as_posix() for p in wl.parent.glob("configs/**/*.json")}
        assert presets, f"{wl.parent.name} has no presets"
        homes = [p / wl.parent.name for p in installed if (p / wl.parent.name / "workload.py").is_file()]
        assert homes, f"workload folder {wl.parent.name} is not installed"
        assert all((homes[0] / rel).is_file() for rel in presets), f"{wl.parent.name}: presets not installed"
