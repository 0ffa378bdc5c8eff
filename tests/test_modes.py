"""The runtime modes beside --compile (`mmchar.modes`): `--channels-last` converts the convs and the latents and
says what it converted (and what it could not), `--cuda-graphs` captures the generating model's forward in the
warm-up and replays it (CUDA only: refused in one line elsewhere); both are part of a run's identity.

The CUDA graph plumbing runs here on the CPU with a stand-in graph (it calls the forward on the captured inputs and
writes into the captured outputs, as a replay does); the capture itself is the GPU test at the end."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils._pytree import tree_flatten

from mmchar import modes
from mmchar import sweep as sw
from mmchar.analysis import run_table
from mmchar.analysis.diff import work_differences
from mmchar.analysis.tables import run_labels, work_fields
from mmchar.api import run_config_hash
from mmchar.cli import main
from mmchar.errors import InvalidParameterError
from mmchar.compare import agreement
from mmchar.runner import ProfileOptions, measure_backends, store_outcome
from mmchar.store import load_runs
from mmchar.workloads import get_workload

QUICK = ["--device", "cpu", "--steps", "2", "--repeat", "1", "--profile-steps", "1", "--no-trace"]


def _run(store):
    (run,) = load_runs([store])
    return run


class StandInGraph:
    """What a CUDA graph does, on the CPU: ``capture`` runs the forward once on the static inputs and keeps its
    outputs; ``replay`` runs it again on the same inputs and writes the results into those outputs."""

    made = 0

    def __init__(self):
        type(self).made += 1
        self.replays = 0

    def capture(self, fn, args, kwargs):
        self.fn, self.args, self.kwargs = fn, args, kwargs
        self.out = fn(*args, **kwargs)
        return self.out

    def replay(self):
        self.replays += 1
        new, _ = tree_flatten(self.fn(*self.args, **self.kwargs))
        for old, fresh in zip(tree_flatten(self.out)[0], new):
            if isinstance(old, torch.Tensor):
                old.copy_(fresh)


@pytest.fixture
def stand_in(monkeypatch):
    """CUDA graphs on the CPU: the stand-in graph, and no refusal of the CPU device."""
    StandInGraph.made = 0
    monkeypatch.setattr(modes.StepGraphs, "graph_factory", StandInGraph)
    monkeypatch.setattr(modes, "check_modes", lambda *a, **k: None)
    return StandInGraph


# ------------------------------------------------------------------------------------------------- channels-last

def test_channels_last_image_run_converts_unet_vae_and_latents(tmp_path, capsys):
    assert main(["profile", "sd15", *QUICK, "--store", str(tmp_path / "eager")]) == 0
    assert main(["profile", "sd15", *QUICK, "--channels-last", "--store", str(tmp_path / "cl")]) == 0, \
        capsys.readouterr().err
    eager, cl = _run(tmp_path / "eager"), _run(tmp_path / "cl")
    rec = cl.meta["channels_last"]
    assert cl.meta["options"]["channels_last"] is True and eager.meta["options"]["channels_last"] is False
    assert "channels_last" not in eager.meta
    assert set(rec["converted"]) == {"unet", "vae"} and rec["no_conv"] == ["text_encoder"]
    assert rec["components"]["unet"]["conv2d"] > 10 and rec["components"]["unet"]["formats"] == ["channels_last"]
    # what the converted models were really called with, not what was asked
    assert rec["inputs"] == {"unet": "channels_last", "vae": "channels_last"}
    assert rec["latents"].startswith("4-D latents made channels_last")
    # part of the run's identity: another config hash, another work field, named in labels and run tables
    assert cl.meta["config_hash"] != eager.meta["config_hash"]
    assert work_fields(cl)["channels_last"] is True and work_fields(eager)["channels_last"] is False
    assert "channels_last True vs False" in work_differences(cl, eager)
    labels = run_labels([eager, cl])
    assert labels[cl.run_id] == "sd15 sdpa+channels-last" and labels[eager.run_id] == "sd15 sdpa"  # as +compile
    assert run_table([eager, cl])["channels_last"].tolist() == [False, True]
    # the same maths in another layout: the timed pass ran the same generation
    assert cl.meta["timings"]["denoiser_step"]["n"] == eager.meta["timings"]["denoiser_step"]["n"] == 2


def test_channels_last_video_run_takes_the_3d_formats(tmp_path, capsys):
    assert main(["profile", "modelscope-t2v", *QUICK, "--channels-last", "--store", str(tmp_path)]) == 0, \
        capsys.readouterr().err
    rec = _run(tmp_path).meta["channels_last"]
    unet = rec["components"]["unet"]
    # the UNet3D's spatial convs are 2-D, its temporal convs 3-D: each takes its own format
    assert unet["conv2d"] > 0 and unet["conv3d"] > 0 and unet["formats"] == ["channels_last", "channels_last_3d"]
    assert rec["latents"].startswith("5-D latents [B, C, F, H, W] made channels_last_3d")
    assert rec["inputs"]["unet"] == "channels_last_3d"


def test_channels_last_says_what_a_transformer_lacks():
    w = get_workload("flux-dev")
    target = w.build(w.resolve("tiny", device="cpu", steps=1))
    rec = modes.to_channels_last(target)
    assert "transformer" in rec["no_conv"] and rec["converted"] == ["vae"]  # a pure transformer: no conv, said
    target.run(1)
    assert modes.latents_record(target.pipe).startswith("not applied: prepare_latents makes (")  # packed tokens
    assert modes.to_channels_last(target) == rec  # idempotent: compare's variants convert it again


def test_channels_innermost_finds_the_channel_dim():
    x = torch.randn(1, 4, 3, 8, 8)
    cf, what = modes.channels_innermost(x, {4})
    assert modes.memory_format_of(cf) == "channels_last_3d" and "[B, C, F, H, W]" in what
    ff, what = modes.channels_innermost(torch.randn(1, 3, 4, 8, 8), {4})
    assert modes.memory_format_of(ff) == "frames-first, channels innermost" and "frames-first" in what
    assert modes.memory_format_of(ff.transpose(1, 2)) == "channels_last_3d"  # the VAE's [B, C, F, H, W] view
    same, what = modes.channels_innermost(torch.randn(1, 4, 4, 8, 8), {4}, frames_first=True)  # F = C: by class
    assert modes.memory_format_of(same) == "frames-first, channels innermost"
    kept, what = modes.channels_innermost(x, {16})
    assert kept is x and what.startswith("not applied")
    assert torch.equal(cf, x) and torch.equal(ff.contiguous(), ff)  # a layout, never other values


# --------------------------------------------------------------------------------------------------- CUDA graphs

@pytest.mark.parametrize("command", [["profile", "sd15"], ["compare", "sd15", "--backends", "sdpa,math"],
                                     ["sweep", "sd15", "--vary", "height=64"]])
def test_cuda_graphs_are_refused_on_the_cpu_in_one_line(tmp_path, capsys, command):
    assert main([*command, "--device", "cpu", "--cuda-graphs", "--store", str(tmp_path / "s")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    assert "--cuda-graphs" in err and "device cpu" in err and "--device cuda" in err
    assert not (tmp_path / "s").exists()  # refused before anything was built or written


def test_cuda_graphs_refusals_that_need_no_device():
    with pytest.raises(InvalidParameterError, match="--cuda-graphs and --cpu-offload do not combine"):
        modes.check_modes(True, torch.device("cuda"), {"cpu_offload": True})
    modes.check_modes(False, torch.device("cpu"))  # off: nothing to refuse
    with pytest.raises(InvalidParameterError, match="--cuda-graphs and --sequence-parallel"):
        ProfileOptions(cuda_graphs=True, sequence_parallel=2)
    with pytest.raises(InvalidParameterError, match="cannot replay mlstm"):
        ProfileOptions(backend="mlstm", cuda_graphs=True)
    with pytest.raises(InvalidParameterError, match="--compile runs the model's own attention"):
        ProfileOptions(backend="math", compile=True, cuda_graphs=True)


def test_graphed_forward_warms_captures_then_replays():
    calls = []

    def forward(x, scale=2.0, return_dict=False):
        calls.append(x)
        return (x * scale,)

    g = modes.GraphedForward("unet", forward, torch.device("cpu"), graph_factory=StandInGraph)
    a, b, c = torch.ones(2, 3), torch.full((2, 3), 2.0), torch.full((2, 3), 3.0)
    assert torch.equal(g(a)[0], a * 2) and g.captured == 0 and calls[-1] is a  # eager first
    assert torch.equal(g(b)[0], b * 2) and g.captured == 1  # captured on a static copy, then replayed
    assert calls[-1] is not b
    out = g(c)[0]
    assert torch.equal(out, c * 2) and g.replays == 2
    (graph,) = [e.graph for e in g.graphs.values()]
    assert out.data_ptr() != graph.out[0].data_ptr()  # a copy: the next replay overwrites the graph's own output
    g(a, scale=3.0)  # another Python value: another signature, warmed and captured apart
    g(a, scale=3.0)
    assert g.captured == 2


def test_graphed_forward_refuses_changing_signatures_and_late_ones():
    g = modes.GraphedForward("transformer", lambda x: x + 1, torch.device("cpu"), graph_factory=StandInGraph,
                             max_graphs=2)
    g(torch.ones(1, 4))
    g(torch.ones(1, 5))
    with pytest.raises(modes.CudaGraphsUnsupportedError, match="more than 2 argument signatures") as e:
        g(torch.ones(1, 6))  # a growing KV cache, say
    assert "\n" not in str(e.value) and "transformer" in str(e.value)
    g.freeze()
    with pytest.raises(modes.CudaGraphsUnsupportedError, match="after the warm-up"):
        g(torch.ones(1, 4))  # warmed but never captured: no capture inside a timed pass


def test_a_forward_given_python_state_is_refused_not_replayed_stale():
    class Cache:  # a KV cache whose position advances in Python: a replay would write the same slot every time
        pos = 0

    g = modes.GraphedForward("transformer", lambda x, cache: x, torch.device("cpu"), graph_factory=StandInGraph)
    with pytest.raises(modes.CudaGraphsUnsupportedError, match="takes a Cache, state kept in Python"):
        g(torch.ones(1), cache=Cache())
    assert g(torch.ones(1), cache=None) is not None  # plain values are part of the signature


def test_a_forward_that_cannot_be_captured_is_one_line():
    class Refusing(StandInGraph):
        def capture(self, fn, args, kwargs):
            raise RuntimeError("CUDA error: operation not permitted when stream is capturing\nmore detail")

    g = modes.GraphedForward("unet", lambda x: x, torch.device("cpu"), graph_factory=Refusing)
    g(torch.ones(1))
    with pytest.raises(modes.CudaGraphsUnsupportedError) as e:
        g(torch.ones(1))
    assert str(e.value).startswith("--cuda-graphs: unet's forward cannot be captured") and "\n" not in str(e.value)


def test_out_of_memory_while_capturing_stays_out_of_memory():
    """An OOM during capture is the run's result (status oom), not a claim that the model cannot be captured."""
    class Starved(StandInGraph):
        def capture(self, fn, args, kwargs):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    g = modes.GraphedForward("unet", lambda x: x, torch.device("cpu"), graph_factory=Starved)
    g(torch.ones(1))
    with pytest.raises(torch.OutOfMemoryError):
        g(torch.ones(1))

def _eager_and_graphed(target, cfg, store):
    """An eager session and a --cuda-graphs one of ``target``, timed passes interleaved (as compare runs them): the
    graphed run stored, both outcomes returned."""
    eager = ProfileOptions(repeat=2, profile_steps=1, keep_trace=False)
    graphed = ProfileOptions(repeat=2, profile_steps=1, keep_trace=False, cuda_graphs=True)
    outcomes = measure_backends(target, [eager, graphed])
    assert not [o for o in outcomes if isinstance(o, BaseException)], outcomes
    run = store_outcome(target, graphed, outcomes[1], store, run_config_hash(cfg, graphed))
    assert run_config_hash(cfg, graphed) != run_config_hash(cfg, eager)
    return outcomes, run


def test_cuda_graph_plumbing_of_a_run(tmp_path, stand_in):
    """The runner with the stand-in graph: captured in the warm-up, replayed by every later step while an eager
    session of the same target interleaves, recorded, the model's forward restored afterwards."""
    w = get_workload("sd15")
    cfg = w.resolve("tiny", device="cpu", steps=3)
    target = w.build(cfg)
    (eager, graphed), run = _eager_and_graphed(target, cfg, tmp_path)
    assert run.status == "ok", run.meta.get("error")
    rec = run.meta["cuda_graphs"]
    assert rec["components"] == ["unet"] and rec["graphs"] == {"unet": 1} and "partial" in rec["attribution"]
    assert run.meta["options"]["cuda_graphs"] is True and stand_in.made == 1
    assert agreement(eager.latents, graphed.latents)["agrees"]  # replayed steps compute the eager generation
    assert "forward" not in vars(target.pipe.unet)  # the instance attribute is gone with the session
    # warm-up: 2 steps (eager, capture) and the untimed generation of 3; then 2 timed generations, light, full (1)
    assert run.meta["timings"]["denoiser_step"]["n"] == 6
    # the backend names the mode (as sdpa+compile), even where nothing else varies: never read as a plain eager run
    assert work_fields(run)["cuda_graphs"] is True and run_labels([run])[run.run_id] == "sd15 sdpa+cuda-graphs"


def test_each_compare_variant_replays_its_own_graphs(tmp_path, capsys, stand_in):
    assert main(["compare", "sd15", *QUICK, "--backends", "sdpa,math", "--cuda-graphs",
                 "--store", str(tmp_path)]) == 0, capsys.readouterr().err
    runs = load_runs([tmp_path])
    assert stand_in.made == 2  # captured under each backend's swap, not the first's replayed for both
    assert all(r.meta["cuda_graphs"]["graphs"] == {"unet": 1} for r in runs)
    assert all(r.meta["compare"].get("agrees") for r in runs)


# ------------------------------------------------------------------------------------------------------- identity

def test_modes_are_part_of_the_config_hash_and_off_hashes_as_before():
    from mmchar.workloads.base import config_hash

    cfg = get_workload("sd15").resolve("tiny", device="cpu")
    before = config_hash({"config": {k: v for k, v in cfg.items() if k != "family"}, "backend": "sdpa",
                          "fallback": None, "scope": "denoiser"})
    assert run_config_hash(cfg, ProfileOptions()) == before  # runs stored before the modes keep their hash
    hashes = {run_config_hash(cfg, ProfileOptions(**m)) for m in
              ({}, {"channels_last": True}, {"cuda_graphs": True}, {"channels_last": True, "cuda_graphs": True})}
    assert len(hashes) == 4


def test_sweep_takes_the_modes_like_compile(tmp_path):
    opts = {"channels_last": True, "cuda_graphs": True, "compile": True}
    with pytest.raises(InvalidParameterError, match="--cuda-graphs captures"):
        sw.plan("sd15", {"height": [64]}, ["sdpa"], tmp_path, device="cpu", options=opts)
    plan = sw.plan("sd15", {"height": [64]}, ["sdpa"], tmp_path, device="cpu", options={"channels_last": True})
    cmd = sw.child_command(plan, plan.points[0], tmp_path)
    assert "--channels-last" in cmd and "--cuda-graphs" not in cmd
    eager = sw.plan("sd15", {"height": [64]}, ["sdpa"], tmp_path, device="cpu")
    assert plan.points[0].config_hash != eager.points[0].config_hash
    json.dumps(plan.options)


@pytest.mark.gpu
def test_cuda_graphs_run_on_the_gpu(tmp_path):
    """A tiny sd15 run with --cuda-graphs completes on CUDA, captured in the warm-up and replayed, and records
    the mode; its final latents agree with those of an eager session interleaved with it."""
    w = get_workload("sd15")
    cfg = w.resolve("tiny", device="cuda", steps=3)
    target = w.build(cfg)
    (eager, graphed), run = _eager_and_graphed(target, cfg, tmp_path)
    assert run.status == "ok", run.meta.get("error")
    assert run.meta["options"]["cuda_graphs"] is True
    assert run.meta["cuda_graphs"]["graphs"] == {"unet": 1} and run.meta["cuda_graphs"]["mechanism"] == \
        "torch.cuda.CUDAGraph"
    assert agreement(eager.latents, graphed.latents)["agrees"]
    assert run.meta["busy"]["denoiser_step"]["kernels"] > 10  # replayed kernels are seen by the profiler
    assert "forward" not in vars(target.pipe.unet)


@pytest.mark.gpu
def test_cuda_graphs_from_the_cli_on_the_gpu(tmp_path, capsys):
    assert main(["profile", "sd15", "--device", "cuda", "--steps", "3", "--repeat", "2", "--profile-steps", "1",
                 "--no-trace", "--cuda-graphs", "--store", str(tmp_path)]) == 0, capsys.readouterr().err
    run = _run(tmp_path)
    assert run.meta["options"]["cuda_graphs"] is True and run.meta["cuda_graphs"]["graphs"] == {"unet": 1}
