"""WorkerShare (tests/conftest.py): how pytest-xdist workers share one GPU (or the host's cores). Checked with
threads, each with its own open files (flock locks belong to the open file, so two of them in one process exclude
each other as two processes do)."""

from __future__ import annotations

import importlib.util
import os
import threading
import time
from pathlib import Path


def _share_class():
    spec = importlib.util.spec_from_file_location("_mmchar_tests_conftest", Path(__file__).with_name("conftest.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.WorkerShare


def _in_thread(cm, log: list, name: str, hold: threading.Event | None = None) -> threading.Thread:
    def body():
        with cm():
            log.append(f"{name} in")
            if hold is not None:
                hold.wait(5)
            log.append(f"{name} out")
    t = threading.Thread(target=body)
    t.start()
    return t


def test_alone_waits_for_sharers_and_new_sharers_wait_for_alone(tmp_path):
    Share = _share_class()
    log: list[str] = []
    release_first = threading.Event()
    first = _in_thread(Share(tmp_path).shared, log, "sharer", release_first)
    time.sleep(0.2)
    alone = _in_thread(Share(tmp_path).alone, log, "alone")
    time.sleep(0.2)
    late = _in_thread(Share(tmp_path).shared, log, "late sharer")  # arrives while alone waits
    time.sleep(0.2)
    assert log == ["sharer in"]  # alone waits for the running sharer; the late one waits behind alone
    release_first.set()
    for t in (first, alone, late):
        t.join(5)
    assert log == ["sharer in", "sharer out", "alone in", "alone out", "late sharer in", "late sharer out"]


def test_sharers_run_together_and_workers_are_listed(tmp_path):
    Share = _share_class()
    log: list[str] = []
    hold = threading.Event()
    threads = [_in_thread(Share(tmp_path).shared, log, f"s{i}", hold) for i in range(3)]
    time.sleep(0.3)
    assert sorted(log) == ["s0 in", "s1 in", "s2 in"]  # all three hold the card at once
    hold.set()
    for t in threads:
        t.join(5)
    assert Share(tmp_path).workers() == {os.getpid()}
