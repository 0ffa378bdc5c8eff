"""Every source folder ships: a subpackage missing from pyproject's explicit list installs silently without it."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_listed():
    if not (ROOT / "pyproject.toml").exists():
        pytest.skip("not run from a source checkout")
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    folders = {"mmchar": "mmchar", **{v: k for k, v in cfg["package-dir"].items()}}
    found = set()
    for folder, package in folders.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join((package, *rel.parts)) if rel.parts else package)
    assert found <= listed, f"add to pyproject's packages: {sorted(found - listed)}"
