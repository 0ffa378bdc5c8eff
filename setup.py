"""The package list, found rather than written: every folder with an ``__init__.py`` under a folder that
pyproject.toml's ``package-dir`` maps ships as a subpackage of the mapped name, so a new workload folder (or
kernel) installs without a list to edit. setuptools' declarative ``packages.find`` cannot do this: it names a
package after its folder (``workloads.sd15``), not after the mapping (``mmchar.workloads.sd15``)."""

from __future__ import annotations

import tomllib
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent


def packages(root: Path = ROOT) -> list[str]:
    """Every package of the mapped folders under its installed name (the mapping itself is pyproject's)."""
    mapping = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    found = set()
    for package, folder in mapping.items():
        found |= {package, *(f"{package}.{sub}" for sub in find_packages(str(root / folder)))}
    return sorted(found)


if __name__ == "__main__":  # as pip's build backend runs it; the tests import `packages` alone
    setup(packages=packages())
