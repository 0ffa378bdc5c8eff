"""The workload registry: lowercase hyphenated keys -> Workload classes.

A workload is one folder under ``workloads/`` holding ``workload.py`` (docs/adding-a-workload.md): the folders
are found by package discovery, so no list here (nor in pyproject or the tests) names them.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil

from mmchar.errors import MmcharError, UnknownNameError, first_line
from mmchar.workloads.base import Params, Workload, config_hash

_REGISTRY: dict[str, type[Workload]] = {}
_ALIASES: dict[str, str] = {}  # alias -> registered name


class WorkloadImportError(MmcharError):
    """A workload folder whose ``workload.py`` fails to import: every command that lists workloads needs it."""


def register_workload(cls: type[Workload]) -> type[Workload]:
    _REGISTRY[cls.name] = cls
    for alias in cls.aliases:
        if alias in _REGISTRY or _ALIASES.get(alias, cls.name) != cls.name:
            raise ValueError(f"workload alias {alias!r} of {cls.name!r} is taken")
        _ALIASES[alias] = cls.name
    return cls


def _load_builtin() -> None:
    """Import the ``workload`` module of every subpackage that has one (each registers itself); a subpackage
    without one (shared code, data) is not a workload. Found on the package path, so a folder added there is
    found without naming it anywhere. Run lazily, on the first question about workloads: importing diffusers is
    slow, and commands that never ask (analyze, export) must not pay for it."""
    for info in sorted(pkgutil.iter_modules(__path__, prefix=f"{__name__}."), key=lambda i: i.name):
        if not info.ispkg:
            continue
        module = f"{info.name}.workload"
        try:
            if importlib.util.find_spec(module) is not None:
                importlib.import_module(module)
        except Exception as e:  # noqa: BLE001 - any failure of a workload's own code is reported as that workload's
            raise WorkloadImportError(f"workload folder {info.name.rsplit('.', 1)[-1]!r} ({module}) failed to "
                                      f"import: {type(e).__name__}: {first_line(e)}; fix it, or move the folder "
                                      f"out of workloads/") from e


def workload_names() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def get_workload(name: str) -> Workload:
    _load_builtin()
    try:
        return _REGISTRY[_ALIASES.get(name, name)]()
    except KeyError:
        raise UnknownNameError("workload", name, _REGISTRY) from None


__all__ = ["Params", "Workload", "WorkloadImportError", "config_hash", "get_workload", "register_workload",
           "workload_names"]
