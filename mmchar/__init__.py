"""mmchar: where the time goes in text-to-image and text-to-video generation.

``mmchar.profile(pipe, prompt=..., num_inference_steps=...)`` profiles any diffusers pipeline object and
writes the run to a store (see `mmchar.api.profile`). Importing mmchar imports no torch: the CLI stays fast
for commands that only read run stores.
"""

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "profile":
        from mmchar.api import profile

        return profile
    if name in ("load_run", "load_runs"):
        from mmchar import store

        return getattr(store, name)
    raise AttributeError(f"module 'mmchar' has no attribute {name!r}")


__all__ = ["__version__", "load_run", "load_runs", "profile"]
