"""What several command groups do alike: read runs (skipping damaged ones), check an output path before the
work, write a file so that an interruption leaves none half-written, check a --format."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mmchar.cli.output import FORMATS, warn
from mmchar.errors import MmcharError, UnknownNameError


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise UnknownNameError("format", fmt, FORMATS)


def read_runs(paths: list[Path], kernels: bool = True) -> list[Any]:
    """Runs for a reading command: a damaged run folder is skipped with one warning line naming it, the rest
    are read (one truncated table must not take a whole store's dashboard down)."""
    from mmchar.errors import RunNotFoundError
    from mmchar.store import load_runs

    loaded = load_runs(paths, kernels=kernels,
                       on_damaged=lambda folder, why: warn(f"skipped damaged run {folder}: {why}"))
    if not loaded:
        raise RunNotFoundError(f"no readable run in {', '.join(map(str, paths))}; the damaged ones are listed above")
    return loaded


def say_noisy(loaded: list[Any]) -> None:
    """Runs measured under noise feed every table like clean ones: the reader is told which."""
    from mmchar.analysis.tables import is_noisy

    noisy = [r.run_id for r in loaded if is_noisy(r.meta)]
    if noisy:
        warn(f"{len(noisy)} of {len(loaded)} runs were measured under noise (column 'noisy'; `mmchar runs` says "
             f"why): {', '.join(noisy[:3])}" + (" ..." if len(noisy) > 3 else ""))


def check_output_file(path: Path, example: str) -> None:
    """``-o`` names a file: an existing folder there is an error now, not a hidden temporary file inside it."""
    from mmchar.store import StorePathError, check_outside_runs, check_writable

    check_outside_runs(path, "-o")  # named as typed, not by its folder
    if path.is_dir():
        raise StorePathError(f"-o {str(path)!r} is a folder; name the file to write, e.g. -o {path / example}")
    check_writable(path.parent, "-o")


def check_output_folder(path: Path, flag: str = "-o") -> None:
    """A folder to write into: a file in its place is an error before the work, not after it."""
    from mmchar.store import StorePathError, check_writable

    if path.exists() and not path.is_dir():
        raise StorePathError(f"{flag} {str(path)!r} is a file; this command writes a folder there, pass a folder path")
    check_writable(path, flag)


def write_atomic(path: Path, write: Callable[[Path], Any]) -> None:
    """Write through a temporary sibling so an interrupted export leaves no half file."""
    if path.is_dir():
        raise MmcharError(f"{path} is a folder; name a file to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        shutil.move(str(tmp), path)
    finally:
        if tmp.exists():
            tmp.unlink()
