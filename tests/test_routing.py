"""Op class ``routing``: a mixture-of-experts layer's gate, dispatch and combine, found from the model's structure
(`mmchar.routing`), while the experts' own compute keeps its class."""

from __future__ import annotations

import torch
from torch import nn

import mmchar
from mmchar.routing import RoutingScope, moe_scopes, routing_mask


class FusedExperts(nn.Module):
    """transformers 5's layout: the experts' weights stacked in one module that gathers and scatters tokens."""

    def __init__(self, n: int, d: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(n, d, d))
        self.act_fn = nn.SiLU()


class FusedMoE(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gate = nn.Linear(8, 4, bias=False)
        self.experts = FusedExperts(4, 8)


class LlamaMLP(nn.Module):  # a gated FFN, not a mixture: gate_proj but no experts
    def __init__(self) -> None:
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = nn.Linear(8, 16), nn.Linear(8, 16), nn.Linear(16, 8)


class DecoderLayerWithMoE(nn.Module):
    """Gemma 4's layout: router and experts beside attention, a dense MLP and norms in one decoder layer."""

    def __init__(self) -> None:
        super().__init__()
        self.self_attn, self.mlp, self.post_norm = nn.Linear(8, 8), LlamaMLP(), nn.LayerNorm(8)
        self.router, self.experts = nn.Linear(8, 4), FusedExperts(4, 8)


class MoEWithSharedMLP(nn.Module):
    """HunYuan-MoE's layout: the shared expert named ``shared_mlp``, not for an expert."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = nn.Linear(8, 4)
        self.experts = nn.ModuleList([LlamaMLP() for _ in range(4)])
        self.shared_mlp = LlamaMLP()


def _hidream_moe(dim: int = 32) -> nn.Module:
    from diffusers.models.transformers.transformer_hidream_image import MOEFeedForwardSwiGLU

    return MOEFeedForwardSwiGLU(dim, 64, num_routed_experts=4, num_activated_experts=2)


def test_moe_layers_are_found_by_structure_and_nothing_else_is():
    model = nn.ModuleDict({"ff": _hidream_moe(), "mlp": LlamaMLP(), "fused": FusedMoE(),
                           "no_gate": nn.ModuleDict({"experts": nn.ModuleList([nn.Linear(8, 8)] * 2)}),
                           "layer": DecoderLayerWithMoE(), "hunyuan": MoEWithSharedMLP()})
    scopes = {s.path: s for s in moe_scopes(model, "transformer", "denoiser")}
    assert set(scopes) == {"transformer.ff", "transformer.fused", "transformer.layer", "transformer.hunyuan"}
    ff = scopes["transformer.ff"]
    assert ff.stage == "denoiser" and ff.gates == ("gate",) and ff.pure
    assert set(ff.experts) == {"shared_experts", "experts"} and ff.containers == {"experts": "list"}
    assert scopes["transformer.fused"].containers == {"experts": "fused"} and scopes["transformer.fused"].pure
    assert not scopes["transformer.layer"].pure and scopes["transformer.layer"].gates == ("router",)
    hunyuan = scopes["transformer.hunyuan"]  # its shared expert is named shared_mlp: an expert, so the layer is pure
    assert hunyuan.pure and hunyuan.experts == ("experts", "shared_mlp") and hunyuan.gates == ("gate",)


def test_what_a_scope_holds():
    s = RoutingScope("t.ff", "denoiser", ("gate",), ("shared_experts", "experts"), {"experts": "list"}, pure=True)
    assert s.holds("t.ff", "memory") and s.holds("t.ff", "elementwise")  # dispatch and combine in its forward
    assert s.holds("t.ff.gate", "gemm") and s.holds("t.ff.gate", "elementwise")  # the gate's logits and top-k
    assert not s.holds("t.ff.experts.2.w1", "gemm") and not s.holds("t.ff.experts.2", "memory")
    assert not s.holds("t.ff.shared_experts.w2", "gemm") and not s.holds("t.ff.shared_experts", "memory")
    assert not s.holds("t.ff.experts", "memory")  # a list of experts has no forward of its own
    assert not s.holds("t.ff2", "memory") and not s.holds("t", "memory") and not s.holds("", "memory")
    fused = RoutingScope("t.moe", "denoiser", ("gate",), ("experts",), {"experts": "fused"}, pure=True)
    assert fused.holds("t.moe.experts", "memory") and not fused.holds("t.moe.experts", "gemm")  # its copies only
    assert not fused.holds("t.moe.experts.act_fn", "elementwise")
    # a decoder layer holding a MoE: its router is routing; its own forward, attention, MLP and norms are not
    layer = RoutingScope("t.l", "text_encoder", ("router",), ("experts",), {"experts": "fused"}, pure=False)
    assert layer.holds("t.l.router", "gemm") and not layer.holds("t.l", "elementwise")
    assert not any(layer.holds(f"t.l.{c}", "gemm") for c in ("self_attn", "mlp.gate_proj", "post_norm"))
    assert routing_mask(["t.ff.gate", "t.ff.experts.0", "", "t.ff"], ["gemm"] * 4, [s]) == [True, False, False, True]
    assert routing_mask(["t.ff"], ["gemm"], []) == [False]


def test_a_profiled_moe_layer_splits_routing_from_its_experts(tmp_path):
    """HiDream-I1's routed FFN in place of one SD 1.5 UNet feed-forward, profiled on the CPU through the API: the
    gate's linear, softmax and top-k and the layer's sort, count, gathers and scatter are routing; every expert's
    linear stays gemm; the run records the layer."""
    from mmchar.workloads import get_workload

    w = get_workload("sd15")
    pipe = w.build(w.resolve("tiny", device="cpu")).pipe
    block = pipe.unet.down_blocks[0].attentions[0].transformer_blocks[0]
    block.ff = _hidream_moe(block.ff.net[-1].out_features).eval()
    path = "unet.down_blocks.0.attentions.0.transformer_blocks.0.ff"
    run = mmchar.profile(pipe, prompt="a cat", num_inference_steps=2, store=tmp_path, repeat=1, height=64, width=64)
    assert run.status == "ok"
    assert run.meta["moe_layers"] == {"count": 1, "paths": [path], "stages": ["denoiser"], "gates": ["gate"],
                                      "experts": ["experts", "shared_experts"],
                                      "containers": {"denoiser": {"experts": "list"}}}
    k = run.kernels
    mine = k[k["module_path"].astype(str).str.startswith(path + ".") | (k["module_path"].astype(str) == path)]
    routing = mine[mine["op_class"].astype(str) == "routing"]
    ops = set(routing["aten_op"].astype(str))
    assert {"aten::linear", "aten::topk", "aten::argsort", "aten::bincount", "aten::scatter_reduce_"} <= ops, ops
    assert (routing["stage"].astype(str) == "denoiser").all()
    experts = mine[mine["module_path"].astype(str).str.contains(r"\.(?:shared_)?experts\b")]
    assert not experts.empty and (experts["op_class"].astype(str) != "routing").all()
    assert set(experts.loc[experts["aten_op"].astype(str) == "aten::linear", "op_class"].astype(str)) == {"gemm"}
    assert (k.loc[~k.index.isin(mine.index), "op_class"].astype(str) != "routing").all()  # nothing else
    assert "routing" in set(run.breakdown["op_class"].astype(str))

    from mmchar.analysis import TABLES

    table = TABLES["experts"]([run])
    parts = list(table["part"])
    assert parts[0] == "routing" and parts[-1] == "shared" and set(parts[1:-1]) <= {f"expert {i}" for i in range(4)}
    assert len(parts) >= 4  # top-2 of 4 experts over a 64-token image: at least two routed experts ran
    assert abs(table["share"].sum() - 1) < 1e-9 and (table["moe_layers"] == 1).all()
    routed = table[table["part"].str.startswith("expert ")]
    assert abs(routed["load_vs_mean"].mean() - 1) < 1e-9
    assert table.loc[table["part"] == "routing", "load_vs_mean"].isna().all()
    assert abs(table["time_us"].sum() - mine.loc[mine["stage"].astype(str) == "denoiser", "dur_us"].sum()) < 1e-6
    assert TABLES["experts"]([mmchar.load_run(run.path)]).equals(table)  # the stored run gives the same table
