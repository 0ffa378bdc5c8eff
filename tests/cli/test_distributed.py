"""Sharded sweeps under torchrun (2 processes, gloo, on the CPU): the same points, parameters and op classes as a
one-process sweep, the summary printed once, a re-run resuming; outside torchrun, a one-line error."""

from __future__ import annotations

from pathlib import Path

from mmchar.cli import main
from mmchar.store import load_runs

# two points: one per rank (the shard is by config hash, positions rank, rank + world)
ARGS = ["sweep", "sd15", "--vary", "height=64,96", "--backends", "math", "--device", "cpu", "--repeat", "1",
        "--profile-steps", "1", "--steps", "1", "--no-trace"]


def _points(store: Path) -> dict[str, tuple]:
    out = {}
    for r in load_runs([store]):
        classes = tuple(sorted(set(r.breakdown["op_class"].astype(str))))
        out[r.run_id.rsplit("-", 1)[1]] = (r.status, r.meta["config"]["params"]["height"], classes)
    return out


def test_two_ranks_store_what_one_process_stores(tmp_path, capsys, torchrun, one_thread_points):
    def sharded(store: Path):
        return torchrun(2, "-m", "mmchar", *ARGS, "--store", str(store), "--distributed")

    proc = sharded(tmp_path / "two")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[:3000]
    assert proc.stdout.count("sweep of sd15 (") == 2  # the plan line and the summary title, from rank 0 only
    assert "(rank 0/2)" in proc.stdout and "(rank 1/2)" in proc.stdout  # both ranks ran points
    assert main([*ARGS, "--store", str(tmp_path / "one")]) == 0
    two, one = _points(tmp_path / "two"), _points(tmp_path / "one")
    assert two == one and len(two) == 2 and {s for s, _, _ in two.values()} == {"ok"}
    again = sharded(tmp_path / "two")  # a re-run finds every point and runs none
    assert again.returncode == 0 and "2 already in" in again.stdout and "0 to run" in again.stdout
    assert len(load_runs([tmp_path / "two"])) == 2


def test_distributed_outside_torchrun_is_one_line(tmp_path, capsys, monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert main([*ARGS, "--store", str(tmp_path), "--distributed"]) == 1
    assert "--distributed needs torchrun" in capsys.readouterr().err
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["sweep", "sd15", "--device", "cuda:1", "--store", str(tmp_path), "--distributed"]) == 1
    assert "each rank takes its own GPU" in capsys.readouterr().err


def test_shards_mix_backends_and_cover_every_point_once():
    from mmchar.distributed import Rank

    items = [f"{b}-{h}" for b in ("math", "flash") for h in range(6)]  # a sweep's order: one backend, then the other
    shards = [Rank(r, 2, r).shard(items, key=lambda s: hash(s) % 97) for r in range(2)]
    assert sorted(shards[0] + shards[1]) == sorted(items) and not set(shards[0]) & set(shards[1])
    plain = [Rank(r, 2, r).shard(items) for r in range(2)]
    assert plain[0] == items[0::2]  # without a key: positions rank, rank + world, ...
