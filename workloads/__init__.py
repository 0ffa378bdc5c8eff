"""The workload registry: lowercase hyphenated keys -> Workload classes."""

from __future__ import annotations

from mmchar.errors import UnknownNameError
from mmchar.workloads.base import Params, Workload, config_hash

_REGISTRY: dict[str, type[Workload]] = {}
_ALIASES: dict[str, str] = {}  # alias -> registered name


def register_workload(cls: type[Workload]) -> type[Workload]:
    _REGISTRY[cls.name] = cls
    for alias in cls.aliases:
        if alias in _REGISTRY or _ALIASES.get(alias, cls.name) != cls.name:
            raise ValueError(f"workload alias {alias!r} of {cls.name!r} is taken")
        _ALIASES[alias] = cls.name
    return cls


def _load_builtin() -> None:
    # Imported lazily: each module registers itself; importing diffusers is slow.
    from mmchar.workloads.modelscope_t2v import workload as _m  # noqa: F401
    from mmchar.workloads.sd15 import workload as _s  # noqa: F401
    from mmchar.workloads.sdxl import workload as _sdxl  # noqa: F401
    from mmchar.workloads.if_stage1 import workload as _if  # noqa: F401
    from mmchar.workloads.pixart_sigma import workload as _pixart  # noqa: F401
    from mmchar.workloads.sana import workload as _sana  # noqa: F401
    from mmchar.workloads.cogvideox import workload as _cogvideox  # noqa: F401
    from mmchar.workloads.wan import workload as _wan  # noqa: F401
    from mmchar.workloads.sd3 import workload as _sd3  # noqa: F401
    from mmchar.workloads.flux import workload as _flux  # noqa: F401
    from mmchar.workloads.svd import workload as _svd  # noqa: F401
    from mmchar.workloads.animatediff import workload as _animatediff  # noqa: F401
    from mmchar.workloads.amused import workload as _amused  # noqa: F401
    from mmchar.workloads.llamagen import workload as _llamagen  # noqa: F401
    from mmchar.workloads.phenaki import workload as _phenaki  # noqa: F401


def workload_names() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def get_workload(name: str) -> Workload:
    _load_builtin()
    try:
        return _REGISTRY[_ALIASES.get(name, name)]()
    except KeyError:
        raise UnknownNameError("workload", name, _REGISTRY) from None


__all__ = ["Params", "Workload", "config_hash", "get_workload", "register_workload", "workload_names"]
