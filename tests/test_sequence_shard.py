"""A sequence-parallel denoiser (its token sequence split over 2 gloo ranks, self-attention across them) computes
what the one-process denoiser computes: Wan (self-attention, RoPE cut per block) and CogVideoX (joint attention
with the 226 text tokens whole on every rank), an odd token count (uneven chunks), Ulysses and the ring; and
`torchrun -m mmchar profile --sequence-parallel` writes one run whose communication kernels form their class."""

from __future__ import annotations

import json

import pytest
import torch

# each rank's work, as a script torchrun starts (the ranks import only the installed mmchar)
WORKER = """
import sys, torch, torch.distributed as dist
import mmchar.sequence_shard as ss
from mmchar.swap import swap_attention
from mmchar.workloads import get_workload
out_dir = sys.argv[1]
dist.init_process_group("gloo")
rank = dist.get_rank()
torch.use_deterministic_algorithms(True)
CASES = [("wan2.1-1.3b", {}), ("cogvideox-5b", {"height": 48, "width": 80})]  # cogvideox: 45 video tokens
for name, params in CASES:
    w = get_workload(name)
    target = w.build(w.resolve("tiny", device="cpu", **params))
    model = target.pipe.transformer
    outs = []
    model.register_forward_hook(lambda m, a, o: outs.append((o[0] if isinstance(o, tuple) else o.sample).clone()))
    runs = {}
    for label, scheme in (("one", None), ("ulysses", "ulysses"), ("ring", "ring")):
        shard = None if scheme is None else ss.SequenceShard(model, scheme=scheme)  # both, on 2 heads
        outs.clear()
        with swap_attention(target.pipe, ["transformer"], "sdpa", target.device, shard=shard):
            target.run(2)
        runs[label] = [o for o in outs]
        if shard is not None:
            runs[label + "_meta"] = shard.describe()
    torch.save(runs, f"{out_dir}/{name}-r{rank}.pt")
dist.destroy_process_group()
"""


@pytest.fixture(scope="module")
def results(tmp_path_factory, torchrun):
    out = tmp_path_factory.mktemp("shard")
    (out / "worker.py").write_text(WORKER)
    proc = torchrun(2, str(out / "worker.py"), str(out), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.mark.parametrize("name,tokens,prefix", [("wan2.1-1.3b", 48, 0), ("cogvideox-5b", 45, 226)])
@pytest.mark.parametrize("scheme", ["ulysses", "ring"])
def test_sharded_denoiser_equals_one_process(results, name, tokens, prefix, scheme):
    for rank in range(2):
        runs = torch.load(results / f"{name}-r{rank}.pt")
        meta = runs[f"{scheme}_meta"]
        assert meta["tokens"] == tokens and meta["text_prefix_tokens"] == prefix
        assert meta["chunk_tokens"] == [(tokens + 1) // 2, tokens // 2]
        assert meta["schemes"] == {scheme: 2}  # both layers' self-attention went across the ranks
        assert len(runs[scheme]) == len(runs["one"]) > 0  # every denoiser call (CFG, steps)
        for got, ref in zip(runs[scheme], runs["one"]):
            assert got.shape == ref.shape  # the whole sequence again after the output norm's gather
            assert torch.allclose(got, ref, atol=1e-4, rtol=1e-4), (got - ref).abs().max()


@pytest.mark.parametrize("scheme", ["auto", "ring"])
def test_profile_sequence_parallel_writes_one_run_with_communication(tmp_path, torchrun, scheme):
    """One run folder; its all-to-alls (Ulysses) or sends inside the ring's attention scope are communication,
    with their payload."""
    store = tmp_path / "runs"
    proc = torchrun(2, "-m", "mmchar", "profile", "wan2.1-1.3b", "--sequence-parallel", "--sp-scheme", scheme,
                    "--device", "cpu", "--store", str(store), "--repeat", "1", "--profile-steps", "1", "--no-trace",
                    timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    folders = [p for p in store.iterdir() if p.is_dir()]
    assert len(folders) == 1  # rank 0 writes; the other rank measured in lockstep
    assert proc.stdout.count("run folder:") == 1
    meta = json.loads((folders[0] / "meta.json").read_text())
    assert meta["options"]["sequence_parallel"] == 2
    assert meta["sequence_parallel"]["ranks"] == 2
    assert meta["sequence_parallel"]["schemes"] == {"ulysses" if scheme == "auto" else "ring": 2}
    from mmchar.analysis import communication_table

    from mmchar.store import load_runs

    comm = communication_table(load_runs([store]))
    den = comm[comm["stage"] == "denoiser"]
    assert len(den) == 1 and den["comm_kernels"].iloc[0] > 0 and den["payload_bytes"].iloc[0] > 0


def test_profile_sequence_parallel_bad_launch_is_one_line(tmp_path, capsys, monkeypatch):
    from mmchar.cli import main

    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert main(["profile", "wan2.1-1.3b", "--sequence-parallel", "--store", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "--sequence-parallel needs torchrun's RANK and WORLD_SIZE" in err and "Traceback" not in err
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["profile", "wan2.1-1.3b", "--sequence-parallel", "--device", "cuda:1", "--store", str(tmp_path)]) == 1
    assert "each rank takes GPU LOCAL_RANK" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_models_without_a_plan_are_refused_by_name():
    from mmchar.errors import UnknownNameError
    from mmchar.sequence_shard import SequenceShard

    with pytest.raises(UnknownNameError, match="WanTransformer3DModel"):
        SequenceShard(torch.nn.Linear(2, 2))


FAILING_WORKER = """
import sys
from mmchar import distributed as dd
from mmchar.api import run_config_hash
from mmchar.runner import ProfileOptions, measure_backends, store_outcome
from mmchar.workloads import get_workload
rank = dd.init_sequence_parallel("cpu", timeout_s=15)
w = get_workload("wan2.1-1.3b")
target = w.build(w.resolve("tiny", device="cpu"))
if rank.rank == 1:  # fails on its own; rank 0 then waits in its first all-to-all until the group's timeout
    def boom(steps):
        raise RuntimeError("injected failure on rank 1")
    target.run = boom
options = ProfileOptions(repeat=1, profile_steps=1, keep_trace=False, sequence_parallel=2)
outcome = dd.agree_on_outcome(measure_backends(target, [options])[0], rank)
if rank.leader:
    store_outcome(target, options, outcome, sys.argv[1], run_config_hash(target.config, options))
dd.leader_done(rank)
dd.finish()
"""


def test_a_rank_that_fails_is_recorded_by_rank_0_with_its_own_error(tmp_path, torchrun):
    (tmp_path / "worker.py").write_text(FAILING_WORKER)
    proc = torchrun(2, str(tmp_path / "worker.py"), str(tmp_path / "runs"), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (folder,) = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["status"] == "error"
    assert meta["error"] == "rank 1: RuntimeError: injected failure on rank 1"  # the cause, not rank 0's timeout


def test_a_cross_attention_as_long_as_the_chunk_is_not_taken_for_self_attention():
    from types import SimpleNamespace

    from mmchar.sequence_shard import SequenceShard

    shard = SimpleNamespace(full=48, sizes=[24, 24], rank=0)
    chunk, text = torch.zeros(1, 2, 24, 8), torch.zeros(1, 2, 24, 8)  # 24 text tokens against a 24-token chunk
    joint = torch.zeros(1, 2, 24 + 7, 8)
    assert SequenceShard.takes(shard, chunk, chunk, False)  # self-attention of the chunk
    assert not SequenceShard.takes(shard, chunk, text, True)  # cross attention (the processor got encoder states)
    assert SequenceShard.takes(shard, joint, joint, True)  # joint: text prefix + chunk
    assert not SequenceShard.takes(SimpleNamespace(full=None, sizes=[], rank=0), chunk, chunk, False)  # not sharded


def test_backends_that_read_the_whole_sequences_hidden_states_are_refused_up_front():
    from mmchar.errors import InvalidParameterError
    from mmchar.runner import ProfileOptions

    with pytest.raises(InvalidParameterError, match="wersa filters q and k by each layer's hidden states"):
        ProfileOptions(backend="wersa", sequence_parallel=2)
    assert ProfileOptions(backend="linear", sequence_parallel=2).sequence_parallel == 2


def test_only_rank_0_keeps_a_trace(tmp_path, torchrun, monkeypatch):
    """The other ranks profile in lockstep but keep nothing: no trace file is left in the temporary folder."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    store = tmp_path / "runs"
    proc = torchrun(2, "-m", "mmchar", "profile", "wan2.1-1.3b", "--sequence-parallel", "--device", "cpu",
                    "--store", str(store), "--repeat", "1", "--profile-steps", "1", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (folder,) = [p for p in store.iterdir() if p.is_dir()]
    assert (folder / "trace.pt.trace.json.gz").is_file()
    assert not list(scratch.glob("mmchar-trace-*")), list(scratch.iterdir())
