"""The run store: ``STORE/<run_id>/`` folders written atomically, read back with a schema check.

A run folder holds ``meta.json``, ``kernels.parquet``, ``breakdown.csv`` and ``trace.pt.trace.json.gz``
(conventions.md, "Run store"). It is written to a hidden temporary sibling and renamed when complete, so a
reader never sees half a run and an interrupted run leaves nothing that looks finished.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from mmchar.errors import RunNotFoundError, SchemaMismatchError
from mmchar.schema import (BREAKDOWN_COLUMNS, BREAKDOWN_FILE, KERNEL_COLUMNS, KERNELS_FILE, META_FILE,
                           SCHEMA_VERSION, TRACE_FILE)

TMP_PREFIX = ".tmp-"


@dataclass
class Run:
    """One run folder loaded: its metadata and its two tables (empty for failed runs)."""

    meta: dict[str, Any]
    kernels: pd.DataFrame = field(default_factory=lambda: empty_kernels())
    breakdown: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(BREAKDOWN_COLUMNS)))
    path: Path | None = None

    @property
    def run_id(self) -> str:
        return self.meta["run_id"]

    @property
    def status(self) -> str:
        return self.meta["status"]

    @property
    def workload(self) -> str:
        return self.meta["workload"]

    @property
    def backend(self) -> str:
        return self.meta["backend"]

    @property
    def trace_path(self) -> Path | None:
        if self.path is None:
            return None
        p = self.path / TRACE_FILE
        return p if p.exists() else None


def empty_kernels() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in KERNEL_COLUMNS.items()})


def write_run(store: str | os.PathLike[str], run: Run, trace_file: str | os.PathLike[str] | None = None) -> Path:
    """Write ``run`` as ``store/<run_id>/`` atomically and return the folder. ``trace_file`` (gzip JSON) is moved in."""
    store = Path(store)
    store.mkdir(parents=True, exist_ok=True)
    final = store / run.run_id
    if final.exists():
        raise FileExistsError(f"run folder {final} already exists")
    tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX + run.run_id + "-", dir=store))
    try:
        meta = dict(run.meta, schema_version=SCHEMA_VERSION)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=False, default=_json_default))
        kernels = run.kernels if len(run.kernels.columns) else empty_kernels()
        kernels.to_parquet(tmp / KERNELS_FILE, index=False)
        run.breakdown.reindex(columns=list(BREAKDOWN_COLUMNS)).to_csv(tmp / BREAKDOWN_FILE, index=False)
        if trace_file is not None and Path(trace_file).exists():
            shutil.move(str(trace_file), tmp / TRACE_FILE)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    run.path = final
    return final


def unique_run_id(store: str | os.PathLike[str], run_id: str) -> str:
    """``run_id``, or ``run_id-2``, ``-3`` ... when the store has it already (the same configuration twice in
    one second: `profile` always adds a run)."""
    store, candidate, n = Path(store), run_id, 1
    while (store / candidate).exists():
        n += 1
        candidate = f"{run_id}-{n}"
    return candidate


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)


def read_meta(folder: str | os.PathLike[str]) -> dict[str, Any]:
    folder = Path(folder)
    try:
        meta = json.loads((folder / META_FILE).read_text())
    except FileNotFoundError:
        raise RunNotFoundError(f"{folder} is not a run folder (no {META_FILE})") from None
    except json.JSONDecodeError as e:
        raise RunNotFoundError(f"{folder / META_FILE} is not valid JSON ({e.msg}); delete the folder and re-run") from None
    version = meta.get("schema_version")
    if version != SCHEMA_VERSION:
        raise SchemaMismatchError(f"run {folder} has schema_version {version}, this mmchar reads {SCHEMA_VERSION}; "
                                  "re-run it with this version, or read it with the mmchar that wrote it")
    return meta


def load_run(folder: str | os.PathLike[str], *, kernels: bool = True) -> Run:
    """Load one run folder (``kernels=False`` skips the per-kernel table, the one large file)."""
    folder = Path(folder)
    meta = read_meta(folder)
    run = Run(meta=meta, path=folder)
    bd = folder / BREAKDOWN_FILE
    if bd.exists() and bd.stat().st_size:
        run.breakdown = pd.read_csv(bd, keep_default_na=False, na_values={"time_us": [""], "share": [""]})
    if kernels and (folder / KERNELS_FILE).exists():
        run.kernels = pd.read_parquet(folder / KERNELS_FILE)
    return run


def is_run_folder(path: Path) -> bool:
    return path.is_dir() and not path.name.startswith(TMP_PREFIX) and (path / META_FILE).is_file()


def run_folders(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Run folders named by ``paths``: each a run folder or a store (a folder of run folders), mixed."""
    found: list[Path] = []
    for p in map(Path, paths):
        if is_run_folder(p):
            found.append(p)
        elif p.is_dir():
            subs = sorted(q for q in p.iterdir() if is_run_folder(q))
            if not subs:
                raise RunNotFoundError(f"{p} holds no runs; pass a store written by `mmchar profile` or a run folder")
            found += subs
        else:
            raise RunNotFoundError(f"{p} does not exist; pass a store written by `mmchar profile` or a run folder")
    return list(dict.fromkeys(found))


def load_runs(paths: Iterable[str | os.PathLike[str]], *, kernels: bool = True) -> list[Run]:
    return [load_run(f, kernels=kernels) for f in run_folders(paths)]
