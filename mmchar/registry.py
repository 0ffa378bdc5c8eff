"""The one mechanism behind mmchar's open registries of backend classes: attention backends (`mmchar.backends`)
and projection backends (`mmchar.projections`). Registration, the entry-point group third-party packages add
theirs through (a plugin that fails to import is listed with why, never breaks mmchar), lookup with one-line
errors naming the valid choices, and the listing `mmchar backends` prints.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import torch

from mmchar.errors import BackendUnavailableError, UnknownNameError

T = TypeVar("T")


def unavailable_reason(requires: tuple[str, ...], install_hint: str | None, devices: tuple[str, ...],
                       min_capability: tuple[int, int] | None, device: torch.device) -> str | None:
    """Why a backend cannot run on ``device`` here, or None: a package it needs is missing, the device type is not
    one of its own, or the GPU is too old."""
    for mod in requires:
        try:
            importlib.import_module(mod)
        except ImportError:
            return f"needs the Python package {mod!r} ({install_hint or 'pip install ' + mod.replace('_', '-')})"
    if device.type not in devices:
        return f"runs on {'/'.join(devices)} only, not {device.type}"
    if device.type == "cuda" and min_capability:
        cap = torch.cuda.get_device_capability(device)
        if cap < min_capability:
            return f"needs compute capability {min_capability[0]}.{min_capability[1]}+, this GPU has {cap[0]}.{cap[1]}"
    return None


class ClassRegistry(Generic[T]):
    """Backend classes of one kind by name (``cls.name``); each class answers ``unavailable_reason(device)``.

    ``check`` vets a class before it is registered (from mmchar or from a plugin) and raises ValueError."""

    def __init__(self, kind: str, group: str, base: type[T], check: Callable[[type[T]], None] | None = None) -> None:
        self.kind, self.group, self.base, self.check = kind, group, base, check
        self.classes: dict[str, type[T]] = {}
        self.broken: dict[str, str] = {}  # entry points that failed to load: name -> why
        self.loaded = False  # the entry-point group was read

    def register(self, cls: type[T]) -> type[T]:
        if self.check is not None:
            self.check(cls)
        self.classes[cls.name] = cls  # type: ignore[attr-defined]
        return cls

    def _load(self) -> None:
        if self.loaded:
            return
        self.loaded = True
        for ep in importlib.metadata.entry_points(group=self.group):
            try:
                cls = ep.load()
                if isinstance(cls, type) and issubclass(cls, self.base):
                    self.register(cls)
            except Exception as e:  # a broken plugin must not break mmchar
                self.broken[ep.name] = f"entry point {ep.value} failed to load: {e}"

    def names(self) -> list[str]:
        self._load()
        return list(self.classes)

    def get(self, name: str) -> type[T]:
        self._load()
        if name in self.broken:
            raise BackendUnavailableError(f"{self.kind} {name!r}: {self.broken[name]}")
        try:
            return self.classes[name]
        except KeyError:
            raise UnknownNameError(self.kind, name, self.classes) from None

    def require(self, name: str, device: torch.device) -> type[T]:
        """The class, or an error saying why it cannot run on ``device`` and which can."""
        cls = self.get(name)
        reason = cls.unavailable_reason(device)  # type: ignore[attr-defined]
        if reason:
            usable = [n for n, c in self.classes.items() if c.unavailable_reason(device) is None]  # type: ignore[attr-defined]
            raise BackendUnavailableError(f"{self.kind} {name!r} is not available on {device.type}: {reason}; "
                                          f"available here: {', '.join(usable)}")
        return cls

    def describe(self, device: torch.device, columns: Callable[[type[T]], dict[str, Any]]) -> list[dict[str, Any]]:
        """One row per class (name, description, constraints, ``columns(cls)``, availability on ``device`` and why)
        and one per plugin that failed to load."""
        rows = []
        for name in self.names():
            cls: Any = self.classes[name]
            reason = cls.unavailable_reason(device)
            rows.append({"name": name, "description": cls.description, "constraints": cls.constraints.describe(),
                         **columns(cls), "available": reason is None, "why_not": reason or ""})
        blank = {k: ("" if isinstance(v, str) else False) for k, v in rows[0].items()} if rows else {}
        for name, why in self.broken.items():
            rows.append({**blank, "name": name, "description": "(plugin failed to load)", "available": False,
                         "why_not": why})
        return rows
