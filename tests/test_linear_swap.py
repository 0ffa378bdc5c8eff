"""Projection backends (mmchar.projections) and their swap (mmchar.linear_swap): registry, layer roles and scopes,
routing and restoration, refused layers, attribution of the replaced layers' kernels, the CLI edge."""

from __future__ import annotations

import json
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmchar.errors import BackendUnavailableError, BackendUnsupportedError, InvalidParameterError, UnknownNameError
from mmchar.linear_swap import LinearSwap, linear_role
from mmchar.projections import (_REGISTRY, LINEAR_SCOPES, LinearConstraints, ProjectionBackend,
                                describe_projection_backends, get_projection_backend, register_projection_backend,
                                require_projection_backend)
from mmchar.runner import ProfileOptions, run_and_store
from mmchar.scopes import parse_projection_label, projection_label
from mmchar.target import StageRoot, Target

CPU = torch.device("cpu")


class Attention(nn.Module):  # named like transformers' attention modules
    def __init__(self, d: int) -> None:
        super().__init__()
        self.q_proj, self.o_proj = nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, x):
        return self.o_proj(torch.softmax(self.q_proj(x) @ x.transpose(-1, -2), -1) @ x)


class Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.attn = Attention(d)
        self.ff = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, x):
        x = x + self.attn(x)
        return x + self.ff(x)


class Model(nn.Module):
    def __init__(self, d: int = 32) -> None:
        super().__init__()
        self.embed = nn.Linear(d, d)
        self.blocks = nn.ModuleList([Block(d), Block(d)])

    def forward(self, x):
        x = self.embed(x)
        for b in self.blocks:
            x = b(x)
        return x


@pytest.fixture
def recording():
    """A projection backend that computes the layer in fp64 and records its calls; its kernels are 'memory'."""
    calls: list[str] = []

    @register_projection_backend
    class Recording(ProjectionBackend):
        name = "recording-test"
        description = "records calls"
        op_class = "memory"

        def __call__(self, x):
            calls.append(self.module_path)
            w, b = self.layer.weight.double(), self.layer.bias.double()
            return F.linear(x.double(), w, b).to(x.dtype)

        def cost(self, x):
            return 7.0, 11.0

    yield calls
    _REGISTRY.pop("recording-test")


def test_registry_lists_dense_and_names_the_valid_choices():
    assert get_projection_backend("dense").name == "dense"
    rows = {r["name"]: r for r in describe_projection_backends(CPU)}
    assert rows["dense"]["available"] and rows["dense"]["op_class"] == "gemm"
    with pytest.raises(UnknownNameError, match=r"unknown projection backend 'nope'.*valid.*dense"):
        get_projection_backend("nope")
    with pytest.raises(UnknownNameError, match=r"unknown linear scope 'ffns'.*attn-proj, ffn"):
        ProfileOptions(linear_scope="ffns")


def test_a_backend_that_cannot_run_here_says_why():
    class GpuOnly(ProjectionBackend):
        name = "gpu-only-test"
        description = "cuda only"
        constraints = LinearConstraints(devices=("cuda",))

    register_projection_backend(GpuOnly)
    try:
        with pytest.raises(BackendUnavailableError, match=r"'gpu-only-test' is not available on cpu.*cuda only"
                                                          r".*available here: dense"):
            require_projection_backend("gpu-only-test", CPU)
    finally:
        _REGISTRY.pop("gpu-only-test")
    with pytest.raises(ValueError, match="op class 'lookup'"):
        register_projection_backend(type("Bad", (ProjectionBackend,), {"name": "bad", "op_class": "lookup"}))
    with pytest.raises(ValueError, match="may not contain '::'"):
        register_projection_backend(type("Bad", (ProjectionBackend,), {"name": "a::b"}))


def test_roles_follow_the_nearest_attention_or_feed_forward_module():
    model = Model()
    modules = dict(model.named_modules())
    roles = {p: linear_role(p, modules) for p, m in modules.items() if isinstance(m, nn.Linear)}
    assert roles == {"embed": "other",
                     **{f"blocks.{i}.attn.{n}": "attn-proj" for i in (0, 1) for n in ("q_proj", "o_proj")},
                     **{f"blocks.{i}.ff.{j}": "ffn" for i in (0, 1) for j in (0, 2)}}


@pytest.mark.parametrize("scope", LINEAR_SCOPES)
def test_scope_picks_the_layers_and_the_swap_restores_them(recording, scope):
    torch.manual_seed(0)
    model = Model()
    x = torch.randn(2, 5, 32)
    want = model(x)
    pipe = types.SimpleNamespace(model=model)
    swap = LinearSwap(pipe, ["model"], "recording-test", CPU, scope=scope)
    expect = {p for p, r in swap.state.layer_role.items() if scope == "all" or r == scope}
    assert not swap.state.layer_backend  # what ran a layer is known once it has run
    assert len(swap.state.layer_role) == 9  # every linear layer is recorded, in scope or not
    for _ in range(2):  # re-entered per pass, as the runner does
        with swap:
            got = model(x)
    torch.testing.assert_close(got, want)
    assert set(recording) == expect and len(recording) == 2 * len(expect)
    assert swap.state.layer_backend == dict.fromkeys(expect, "recording-test")
    assert not any("forward" in vars(m) for m in model.modules())  # the class's own forward again
    recording.clear()
    model(x)
    assert not recording


def test_a_refused_entry_or_an_error_inside_leaves_the_model_as_it_was(recording):
    model = Model()
    model.blocks[1].ff[2].forward = lambda x: x  # someone else's replacement, on the last layer in scope
    swap = LinearSwap(types.SimpleNamespace(model=model), ["model"], "recording-test", CPU, scope="ffn")
    with pytest.raises(BackendUnsupportedError, match=r"model\.blocks\.1\.ff\.2: its forward is already replaced"):
        swap.__enter__()
    assert [p for p, m in model.named_modules() if "forward" in vars(m)] == ["blocks.1.ff.2"]
    del model.blocks[1].ff[2].forward
    with pytest.raises(ZeroDivisionError), swap, swap:  # nested entry (depth 2), then an error inside
        1 / 0
    assert not any("forward" in vars(m) for m in model.modules())


def test_a_model_reachable_twice_is_swapped_once(recording):
    model = Model()
    pipe = types.SimpleNamespace(transformer=model, transformer_2=model)  # a pipeline's alias of one model
    with LinearSwap(pipe, ["transformer", "transformer_2"], "recording-test", CPU, scope="ffn") as state:
        model(torch.randn(1, 3, 32))
    assert set(state.layer_role) == {p for p in state.layer_role if p.startswith("transformer.")}
    assert len(recording) == 4


def test_a_scope_with_no_layers_is_refused(recording):
    model = nn.Sequential(nn.Linear(8, 8))
    with pytest.raises(InvalidParameterError, match=r"--linear-scope ffn covers no linear layer of model "
                                                    r"\(roles there: other\)"):
        LinearSwap(types.SimpleNamespace(model=model), ["model"], "recording-test", CPU, scope="ffn")
    LinearSwap(types.SimpleNamespace(model=model), ["model"], "dense", CPU, scope="ffn")  # dense replaces nothing


def test_roles_in_a_real_diffusers_block():
    from diffusers.models.attention import BasicTransformerBlock

    block = BasicTransformerBlock(32, 2, 16, cross_attention_dim=24)
    modules = dict(block.named_modules())
    roles = {p: linear_role(p, modules) for p, m in modules.items() if isinstance(m, nn.Linear)}
    assert {p for p, r in roles.items() if r == "ffn"} == {"ff.net.0.proj", "ff.net.2"}
    assert {p for p, r in roles.items() if r == "attn-proj"} == {f"attn{i}.{n}" for i in (1, 2)
                                                                 for n in ("to_q", "to_k", "to_v", "to_out.0")}
    flux_like = {"single.proj_mlp": "ffn", "single.proj_out": "other", "t_embedder.mlp.0": "other",
                 "time_embedding.linear_1": "other"}
    assert {p: linear_role(p, {}) for p in flux_like} == flux_like


def test_dense_replaces_nothing():
    model = Model()
    swap = LinearSwap(types.SimpleNamespace(model=model), ["model"], "dense", CPU, scope="ffn")
    with swap as state:
        assert not any("forward" in vars(m) for m in model.modules())  # no per-call cost under the default
    assert set(state.layer_backend.values()) == {"dense"} and len(state.layer_backend) == 4


def test_refused_layers_run_as_the_models_own_and_are_named(recording):
    class Sixteen(ProjectionBackend):
        name = "sixteen-test"
        description = "features in multiples of 16"
        constraints = LinearConstraints(features_multiple=16)

        def __call__(self, x):
            recording.append(self.module_path)
            return F.linear(x, self.layer.weight, self.layer.bias)

    register_projection_backend(Sixteen)
    try:
        model = nn.Sequential(nn.Linear(32, 48), nn.Linear(48, 20))
        x = torch.randn(3, 32)
        want = model(x)
        with LinearSwap(types.SimpleNamespace(model=model), ["model"], "sixteen-test", CPU) as state:
            torch.testing.assert_close(model(x), want)
            model(x)
        assert recording == ["model.0", "model.0"]
        assert state.unsupported == {"model.1": "features 48 -> 20 are not multiples of 16"}
        assert state.layer_backend == {"model.0": "sixteen-test", "model.1": "dense"}
        with pytest.raises(BackendUnsupportedError, match=r"model\.0: a linear layer called with more than its input"):
            with LinearSwap(types.SimpleNamespace(model=model), ["model"], "sixteen-test", CPU):
                model[0](x, 2.0)
    finally:
        _REGISTRY.pop("sixteen-test")


def test_label_round_trip():
    label = projection_label("memory", "transformer.blocks.0.ff.net.2", "diffusers:x", 1e12, 3.5e9)
    call = parse_projection_label(label)
    assert (call.op_class, call.module_path, call.backend, call.flops, call.bytes) == (
        "memory", "transformer.blocks.0.ff.net.2", "diffusers:x", 1e12, 3.5e9)
    assert parse_projection_label("mmchar.proj::gemm::x") is None


def _target(model: nn.Module) -> Target:
    def run(steps: int):
        with torch.inference_mode():
            for _ in range(steps):
                model(torch.randn(2, 5, 32))

    return Target(name="hand", pipe=types.SimpleNamespace(model=model), run=run,
                  stage_roots=[StageRoot("denoiser", "model")], steps=2,
                  config={"workload": "hand", "params": {"seed": 0}}, device=CPU, dtype=torch.float32)


def test_replaced_layers_take_the_backends_class_and_cost(recording, tmp_path):
    opts = ProfileOptions(repeat=1, profile_steps=2, linear_backend="recording-test", linear_scope="ffn")
    run = run_and_store(_target(Model()), opts, tmp_path, "000000")
    assert run.status == "ok", run.meta.get("error")
    assert run.meta["linear_backend"] == "recording-test" and run.meta["linear_scope"] == "ffn"
    assert run.meta["linear_op_class"] == "memory" and "+recording-test-" in run.run_id
    assert run.meta["linear_layers"]["model.embed"] == "other"
    assert set(run.meta["linear_backend_per_layer"]) == {f"model.blocks.{i}.ff.{j}" for i in (0, 1) for j in (0, 2)}
    k = run.kernels[run.kernels["stage"] == "denoiser"]
    ff = k["module_path"].str.contains(r"\.ff\.[02]$")  # the GELU between them is not a linear layer
    assert ff.any() and set(k.loc[ff, "op_class"]) == {"memory"}  # every op under a replaced layer
    proj = k["module_path"].str.contains(r"\.attn\.(q|o)_proj$")
    assert proj.any() and set(k.loc[proj, "op_class"]) == {"gemm"}  # out of scope: the model's own layers
    assert k.loc[ff, "flops"].sum() == pytest.approx(2 * 4 * 7.0)  # the backend's cost, once per call
    assert k.loc[ff, "bytes"].sum() == pytest.approx(2 * 4 * 11.0)


def test_default_run_records_the_layers_and_keeps_its_hash(tmp_path):
    from mmchar.api import run_config_hash

    run = run_and_store(_target(Model()), ProfileOptions(repeat=1, profile_steps=1), tmp_path, "000000")
    assert run.meta["linear_backend"] == "dense" and set(run.meta["linear_backend_per_layer"].values()) == {"dense"}
    assert "+" not in run.run_id
    base = run_config_hash({"workload": "w"}, ProfileOptions())
    assert run_config_hash({"workload": "w"}, ProfileOptions(linear_scope="ffn")) == base  # dense: scope is moot
    assert run_config_hash({"workload": "w"}, ProfileOptions(linear_backend="dense")) == base


def test_a_replaced_projection_is_other_work(recording):
    from mmchar.analysis.tables import backend_label, work_fields
    from mmchar.api import run_config_hash
    from mmchar.store import Run

    hashes = {run_config_hash({"workload": "w"}, ProfileOptions(linear_backend=b, linear_scope=sc))
              for b, sc in [("dense", "all"), ("recording-test", "all"), ("recording-test", "ffn")]}
    assert len(hashes) == 3
    meta = {"backend": "cudnn", "linear_backend": "recording-test", "linear_scope": "ffn", "options": {}}
    assert backend_label(meta) == "cudnn+recording-test"
    assert work_fields(Run(meta=meta))["linear_scope"] == "ffn"
    assert work_fields(Run(meta={**meta, "linear_backend": "dense"}))["linear_scope"] is None
    assert backend_label({"backend": "cudnn", "options": {}}) == "cudnn"  # runs from before the projection swap
    with pytest.raises(InvalidParameterError, match="--compile runs the model's own linear layers"):
        ProfileOptions(compile=True, linear_backend="recording-test")


def test_compare_runs_each_projection_backend_beside_the_dense_baseline(recording, tmp_path):
    from mmchar.compare import compare

    variants = [ProfileOptions(repeat=1, profile_steps=1, keep_trace=False, linear_backend=b)
                for b in ("dense", "recording-test")]
    result = compare(_target(Model()), variants, tmp_path, lambda o: "000000")
    t = result.table.set_index("backend")
    assert list(t.index) == ["sdpa", "sdpa+recording-test"] and set(t["status"]) == {"ok"}
    assert t.loc["sdpa+recording-test", "baseline_backend"] == "sdpa"
    runs = {r.meta["compare"]["variant"]: r for r in result.runs}
    assert runs["sdpa+recording-test"].meta["linear_backend"] == "recording-test"
    assert set(runs["sdpa"].meta["linear_backend_per_layer"].values()) == {"dense"}
    assert recording  # the replaced layers ran through the backend
    with pytest.raises(InvalidParameterError, match="variant sdpa given more than once"):
        compare(_target(Model()), variants[:1] * 2, tmp_path, lambda o: "000000")


def test_one_projection_backend_per_run_outside_compare():
    from mmchar.cli.run_options import RunOptions

    fields = {f: None for f in RunOptions.__dataclass_fields__}
    opts = RunOptions(**{**fields, "preset": "tiny", "scope": "denoiser", "linear_backend": "dense, fp8",
                         "linear_scope": "all", "repeat": 1, "no_trace": True, "vae_tiling": False,
                         "vae_slicing": False, "cpu_offload": False, "compile": False, "cache": "none", "store": "runs"})
    assert opts.linear_backends() == ["dense", "fp8"]
    assert opts.profile_options("sdpa", linear_backend="dense").linear_backend == "dense"
    with pytest.raises(InvalidParameterError, match="`mmchar compare` takes several"):
        opts.profile_options("sdpa")


def test_sweep_children_get_the_projection_flags():
    from mmchar.sweep import Point, SweepPlan, child_command

    plan = SweepPlan("sd15", "tiny", [], {}, {"linear_backend": "fp-test", "linear_scope": "ffn"}, None, None, None,
                     {}, {})
    cmd = child_command(plan, Point({}, "sdpa", "abcdef", {}), "runs")
    assert cmd[cmd.index("--linear-backend") + 1] == "fp-test" and cmd[cmd.index("--linear-scope") + 1] == "ffn"


def test_cli_refuses_unknown_names_in_one_line(tmp_path):
    import contextlib
    import io

    from mmchar.cli import main

    def cli(*args: str) -> tuple[int, str]:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(args))
        return code, out.getvalue() + err.getvalue()

    code, text = cli("profile", "sd15", "--linear-backend", "nope", "--store", str(tmp_path))
    assert code == 1 and "valid projection backends: dense" in text and "Traceback" not in text
    code, text = cli("profile", "sd15", "--linear-scope", "mlp", "--store", str(tmp_path))
    assert code == 1 and "valid linear scopes: all, attn-proj, ffn" in text
    code, text = cli("backends", "--kind", "projection", "--format", "json")
    assert code == 0 and "dense" in {row["name"] for row in json.loads(text)}
    code, text = cli("backends", "--kind", "linear")
    assert code == 1 and "valid backend kinds: attention, projection" in text
    assert not list(tmp_path.iterdir())  # nothing written for a refused command


def test_fp8_needs_a_cuda_device_and_bf16_layers_of_16_multiples():
    from mmchar.projections import Fp8Backend

    assert Fp8Backend.unavailable_reason(CPU)  # torchao absent, or the CPU named
    backend = Fp8Backend(nn.Linear(32, 24).bfloat16())
    assert backend.unsupported(torch.randn(2, 32, dtype=torch.bfloat16)) == \
        "features 32 -> 24 are not multiples of 16"
    assert backend.unsupported(torch.randn(2, 32)) == "dtype float32 (takes bfloat16)"
    assert backend.state_bytes == 0  # nothing quantised before the first call


@pytest.mark.gpu
def test_fp8_agrees_with_the_dense_layer_on_the_gpu():
    pytest.importorskip("torchao")
    from mmchar.projections import Fp8Backend

    dev = torch.device("cuda")
    layer = nn.Linear(1024, 768).to(dev, torch.bfloat16)
    x = torch.randn(4, 256, 1024, device=dev, dtype=torch.bfloat16)
    backend = Fp8Backend(layer, "ff.0")
    assert backend.unsupported(x) is None
    backend.prepare(x)
    ref = F.linear(x.float(), layer.weight.float(), layer.bias.float())
    out = backend(x)
    assert out.dtype == torch.bfloat16 and out.shape == ref.shape
    assert ((out.float() - ref).norm() / ref.norm()).item() < 0.08  # e4m3 rounding of activations and weights
    assert backend.state_bytes == 1024 * 768 + 4 * 768
    x[0, :8] = 0  # zero rows (padded text tokens) stay finite: their scale has a floor
    assert torch.isfinite(backend(x)).all()
    assert layer.weight.dtype == torch.bfloat16  # the model's own layer is untouched


def test_a_recorded_oom_lets_go_of_the_failed_runs_state_and_records_its_size(tmp_path):
    """An OOM is a result and the other runs go on: the failed run's state (tables drawn before the OOM) must not
    live on in the recorded exception's frames, and the run records the state it had drawn and would have needed
    (MemoryFormer's tables out of memory is a finding only with their size)."""
    import gc
    import weakref

    from mmchar.runner import measure_backends

    held: list[weakref.ref] = []
    built: list[int] = []

    @register_projection_backend
    class Hungry(ProjectionBackend):
        name = "hungry-test"
        description = "draws a table per layer, and runs out of memory at the second"

        @classmethod
        def planned_state_bytes(cls, layer, role="other"):
            return 4 * layer.in_features * layer.out_features

        @property
        def state_bytes(self):
            return 4 * self.layer.in_features * self.layer.out_features

        def prepare(self, x):
            table = torch.zeros(1000)
            held.append(weakref.ref(table))
            built.append(1)
            if len(built) % 2 == 0:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 TiB")
            self.table = table

        def __call__(self, x):
            return F.linear(x, self.layer.weight, self.layer.bias)

    try:
        opts = [ProfileOptions(repeat=1, profile_steps=1, keep_trace=False, linear_backend=b)
                for b in ("dense", "hungry-test")]
        outcomes = measure_backends(_target(Model()), opts)
        gc.collect()
        assert isinstance(outcomes[1], torch.OutOfMemoryError) and outcomes[1].__traceback__ is None
        assert held and all(ref() is None for ref in held)
        model = Model()
        run = run_and_store(_target(model), opts[1], tmp_path, "000000")
        assert run.status == "oom" and run.meta["traceback"]  # the frames' text is kept for the record
        layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
        assert run.meta["linear_state_bytes_planned"] == sum(4 * m.in_features * m.out_features for m in layers)
        # one layer drawn before the second ran out
        assert run.meta["linear_state_bytes_total"] == 4 * 32 * 32 and len(run.meta["linear_state_bytes"]) == 1
    finally:
        _REGISTRY.pop("hungry-test")
