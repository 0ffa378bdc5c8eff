"""Add ``config.family`` (paradigm, modality, task, architecture) to run folders written before runs recorded it,
from the workload registry; measurements and config hashes are untouched (the family is not part of a run's
identity). Usage: python benchmarks/backfill_family.py STORE...
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from mmchar.errors import MmcharError
from mmchar.store import run_folders
from mmchar.workloads import get_workload


def main() -> None:
    for folder in run_folders(sys.argv[1:]):
        path = Path(folder) / "meta.json"
        meta = json.loads(path.read_text())
        config = meta.get("config") or {}
        if "family" in config:
            continue
        try:
            w = get_workload(meta.get("workload", ""))
        except MmcharError:
            continue  # a pipeline folder or an unknown workload: nothing to add
        config["family"] = {"paradigm": w.paradigm, "modality": w.modality, "task": w.task,
                            "architecture": w.architecture}
        meta["config"] = config
        path.write_text(json.dumps(meta, indent=2))  # as the run store writes it
        print(f"{folder.name}: {config['family']}")


if __name__ == "__main__":
    main()
