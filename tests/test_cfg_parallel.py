"""CFG parallelism (the conditional and unconditional passes of a guided step on two halves of the gloo ranks)
computes what one process computes: SD 1.5 (guidance batched: half the batch per rank, the output gathered) and Wan
2.1 (two calls: one call per rank, the outputs exchanged) on 2 ranks, Wan on 4 ranks = 2 CFG halves × 2 sequence
ranks (Ulysses, and USP's ring over a mesh made for both halves), and CogVideoX's batched guidance so split too; `torchrun -m mmchar profile --cfg-parallel` writes
one run that records it; the refusals are one line."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

# each rank's work, as a script torchrun starts: a one-process generation, then the same under the CFG split
# (and the sequence split of each half); the combined guidance output every scheduler step receives, and the output
WORKER = """
import functools, sys, torch, torch.distributed as dist
from mmchar.cfg_parallel import CfgParallel, cfg_groups
from mmchar.sequence_shard import SequenceShard
from mmchar.swap import swap_attention
from mmchar.workloads import get_workload
out_dir, cases, schemes = sys.argv[1], eval(sys.argv[2]), eval(sys.argv[3])
dist.init_process_group("gloo")
rank = dist.get_rank()
torch.use_deterministic_algorithms(True)
groups = cfg_groups()
for name, params in cases:
    w = get_workload(name)
    target = w.build(w.resolve("tiny", device="cpu", **params))
    comp = "unet" if hasattr(target.pipe, "unet") else "transformer"
    model, sched = getattr(target.pipe, comp), target.pipe.scheduler
    preds, step = [], sched.step

    @functools.wraps(step)
    def recording(*args, **kwargs):
        preds.append(args[0].clone())
        return step(*args, **kwargs)

    sched.step = recording
    runs = {"one": target.run(2)[0], "one_preds": list(preds)}
    for scheme, degree in schemes:
        preds.clear()
        cfg = CfgParallel(target, [model], groups)
        shard = (SequenceShard(model, group=groups.sp, scheme=scheme, ulysses_degree=degree, siblings=groups.sp_groups)
                 if groups.sp_ranks > 1 else None)
        with swap_attention(target.pipe, [comp], "sdpa", target.device, shard=shard), cfg.hooked():
            out = target.run(2)[0]
        runs[scheme] = {"out": out, "preds": list(preds), "cfg": cfg.describe(), "calls": cfg.calls,
                        "shard": shard.describe() if shard is not None else None}
    torch.save(runs, f"{out_dir}/{name}-r{rank}.pt")
dist.destroy_process_group()
"""


COG = ("cogvideox-5b", {"height": 48, "width": 80})  # 45 video tokens (uneven chunks), 226 text tokens


def _launch(tmp_path_factory, torchrun, ranks, cases, schemes):
    out = tmp_path_factory.mktemp(f"cfg{ranks}")
    (out / "worker.py").write_text(WORKER)
    proc = torchrun(ranks, str(out / "worker.py"), str(out), repr(cases), repr(schemes), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory, torchrun):
    return _launch(tmp_path_factory, torchrun, 2, [("sd15", {}), ("wan2.1-1.3b", {})], [("auto", None)])


@pytest.fixture(scope="module")
def four_ranks(tmp_path_factory, torchrun):
    return _launch(tmp_path_factory, torchrun, 4, [("wan2.1-1.3b", {}), COG], [("auto", None), ("usp", 1)])


def _same(got, ref):
    assert got.shape == ref.shape
    assert torch.allclose(got, ref, atol=1e-4, rtol=1e-4), (got - ref).abs().max()


@pytest.mark.parametrize("name,mode,calls", [("sd15", "batched", 2), ("wan2.1-1.3b", "two calls", 4)])
def test_two_cfg_ranks_equal_one_process(two_ranks, name, mode, calls):
    for rank in range(2):
        runs = torch.load(two_ranks / f"{name}-r{rank}.pt")
        got = runs["auto"]
        assert got["cfg"] == {"ranks": 2, "mode": mode, "sp_ranks": 1} and got["shard"] is None
        assert got["calls"] == calls  # 2 steps: one batched call each, or the two calls of each
        assert len(got["preds"]) == len(runs["one_preds"]) == 2
        for pred, ref in zip(got["preds"], runs["one_preds"]):  # guidance's mix of both passes, every step
            _same(pred, ref)
        _same(got["out"], runs["one"])


@pytest.mark.parametrize("name,mode,chunks", [("wan2.1-1.3b", "two calls", [24, 24]),
                                              ("cogvideox-5b", "batched", [23, 22])])
@pytest.mark.parametrize("scheme,mesh", [("auto", None), ("usp", {"ulysses_degree": 1, "ring_degree": 2})])
def test_two_cfg_halves_of_two_sequence_ranks_equal_one_process(four_ranks, name, mode, chunks, scheme, mesh):
    for rank in range(4):
        runs = torch.load(four_ranks / f"{name}-r{rank}.pt")
        got = runs[scheme]
        assert got["cfg"] == {"ranks": 2, "mode": mode, "sp_ranks": 2}
        shard = got["shard"]
        assert shard["ranks"] == 2 and shard["stored_rank"] == rank % 2 and shard["chunk_tokens"] == chunks
        assert shard["mesh"] == mesh and shard["schemes"] == {"ulysses" if scheme == "auto" else "usp": 2}
        for pred, ref in zip(got["preds"], runs["one_preds"]):
            _same(pred, ref)
        _same(got["out"], runs["one"])


def test_profile_cfg_parallel_writes_one_run_that_records_it(tmp_path, torchrun):
    store = tmp_path / "runs"
    proc = torchrun(2, "-m", "mmchar", "profile", "wan2.1-1.3b", "--cfg-parallel", "--device", "cpu", "--store",
                    str(store), "--repeat", "1", "--profile-steps", "1", "--no-trace", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (folder,) = [p for p in store.iterdir() if p.is_dir()]
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["status"] == "ok"
    assert meta["cfg_parallel"] == {"ranks": 2, "mode": "two calls", "sp_ranks": 1}
    assert meta["options"]["cfg_parallel"] is True and meta["options"]["sequence_parallel"] == 1
    assert "sequence_parallel" not in meta  # one rank per half: no sequence split
    assert meta["guidance"]["mode"] == "two calls"  # both calls still reach the denoiser's hooks
    from mmchar.api import run_config_hash
    from mmchar.runner import ProfileOptions

    options = ProfileOptions(**meta["options"])
    assert meta["config_hash"] == run_config_hash(meta["config"], options)
    assert meta["config_hash"] != run_config_hash(meta["config"], ProfileOptions(**{**meta["options"],
                                                                                   "cfg_parallel": False}))
    from mmchar.analysis import communication_table
    from mmchar.store import load_runs

    comm = communication_table(load_runs([store]))
    den = comm[comm["stage"] == "denoiser"]  # the exchange lies inside the denoiser step
    assert len(den) == 1 and den["comm_kernels"].iloc[0] > 0 and den["payload_bytes"].iloc[0] > 0


def _refused(capsys, args, message, tmp_path):
    from mmchar.cli import main

    assert main(["profile", *args, "--store", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not list(tmp_path.iterdir())


def test_refusals_are_one_line(tmp_path, capsys, monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    _refused(capsys, ["sd15", "--cfg-parallel"], "--cfg-parallel needs torchrun's RANK and WORLD_SIZE", tmp_path)
    _refused(capsys, ["sd15", "--cfg-parallel", "--guidance", "1"], "guidance is off (scale 1 <= 1", tmp_path)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "3")
    _refused(capsys, ["wan2.1-1.3b", "--cfg-parallel", "--sequence-parallel"], "it needs an even number of ranks "
             "(2, 4, 8 ...); 3 joined", tmp_path)


def test_a_preset_without_guidance_or_with_it_distilled_is_refused():
    from mmchar.cfg_parallel import CfgParallel, cfg_mode
    from mmchar.errors import InvalidParameterError
    from mmchar.target import StageRoot

    def target(guidance, calls=1):
        return SimpleNamespace(config={"workload": "w", "params": {"guidance": guidance, "batch": 1}},
                               stage_roots=[StageRoot("denoiser", "transformer", calls_per_step=calls)])

    with pytest.raises(InvalidParameterError, match=r"guidance is off \(scale 0 <= 1: w runs no unconditional"):
        cfg_mode(target(0.0))
    assert cfg_mode(target(5.0)) == "batched" and cfg_mode(target(5.0, 2)) == "two calls"
    # guidance embedded in the model (FLUX): one sample per prompt reaches the denoiser, refused at its first call
    cfg = CfgParallel(target(3.5), [torch.nn.Linear(2, 2)], SimpleNamespace(cfg_rank=0, sp_ranks=1))
    with pytest.raises(InvalidParameterError, match="runs on 1 sample.s. a call for 1 prompt.s.: guidance distilled"):
        cfg._batched(lambda x: x, torch.zeros(1, 4))


def test_modes_that_bypass_the_eager_forward_are_refused():
    from mmchar.errors import InvalidParameterError
    from mmchar.runner import ProfileOptions

    for kwargs in ({"compile": True}, {"cuda_graphs": True}, {"cache": "pab"}):
        with pytest.raises(InvalidParameterError, match="--cfg-parallel"):
            ProfileOptions(cfg_parallel=True, **kwargs)
