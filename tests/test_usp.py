"""USP (Ulysses within rows of a U × R mesh, the ring over its columns) on 4 gloo processes equals single-process
attention: heads the 4 ranks do not divide but share a factor with (6: U = 2, R = 2), a forced degree on heads they
divide (4 at U = 2), causal and not, odd token counts (uneven chunks) and a replicated text prefix; the automatic
choice of scheme and degree; the refusals."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from mmchar.errors import InvalidParameterError
from mmchar.sequence_parallel import scheme_for, ulysses_degree_for

RANKS = 4
SIZES = [7, 6, 6, 6]  # 25 tokens: torch.tensor_split's chunks over 4 ranks
CASES = [(6, 2, False, 0), (6, 2, True, 0), (4, 2, False, 0), (6, 2, False, 5), (12, 4, False, 5)]  # heads, U, causal, prefix

WORKER = """
import sys, torch, torch.distributed as dist
from mmchar.sequence_parallel import sequence_parallel_attention, usp_attention, usp_mesh
out_dir, cases, sizes = sys.argv[1], eval(sys.argv[2]), eval(sys.argv[3])
dist.init_process_group("gloo")
rank = dist.get_rank()
meshes = {u: usp_mesh(u) for u in sorted({c[1] for c in cases})}  # every rank makes every subgroup, in one order
for heads, u, causal, prefix in cases:
    g = torch.Generator().manual_seed(heads * 100 + u * 10 + causal + prefix)
    q, k, v = (torch.randn(2, heads, prefix + sum(sizes), 8, generator=g) for _ in range(3))
    start = prefix + sum(sizes[:rank])
    pick = lambda t: torch.cat([t[:, :, :prefix], t[:, :, start:start + sizes[rank]]], dim=2)
    out = usp_attention(pick(q), pick(k), pick(v), meshes[u], causal=causal, sizes=sizes, prefix=prefix)
    auto, scheme = sequence_parallel_attention(pick(q), pick(k), pick(v), causal=causal, sizes=sizes, prefix=prefix,
                                               mesh=meshes[u])
    torch.save({"out": out, "auto": auto, "scheme": scheme}, f"{out_dir}/r{rank}-{heads}-{u}-{int(causal)}-{prefix}.pt")
dist.destroy_process_group()
"""


@pytest.fixture(scope="module")
def results(tmp_path_factory, torchrun):
    out = tmp_path_factory.mktemp("usp")
    (out / "worker.py").write_text(WORKER)
    proc = torchrun(RANKS, str(out / "worker.py"), str(out), repr(CASES), repr(SIZES), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.mark.parametrize("heads,u,causal,prefix", CASES)
def test_usp_equals_one_process(results, heads, u, causal, prefix):
    g = torch.Generator().manual_seed(heads * 100 + u * 10 + causal + prefix)
    q, k, v = (torch.randn(2, heads, prefix + sum(SIZES), 8, generator=g) for _ in range(3))
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    parts = [torch.load(results / f"r{r}-{heads}-{u}-{int(causal)}-{prefix}.pt") for r in range(RANKS)]
    for p in parts:  # every rank holds the whole prefix's rows, the same on each
        assert torch.allclose(p["out"][:, :, :prefix], ref[:, :, :prefix], atol=1e-5, rtol=1e-4)
        assert torch.equal(p["out"][:, :, :prefix], parts[0]["out"][:, :, :prefix])
    got = torch.cat([p["out"][:, :, prefix:] for p in parts], dim=2)
    assert got.shape[2] == sum(SIZES)
    assert torch.allclose(got, ref[:, :, prefix:], atol=1e-5, rtol=1e-4), (got - ref[:, :, prefix:]).abs().max()
    # the automatic choice: Ulysses where 4 ranks divide the heads, else USP on the mesh given
    assert {p["scheme"] for p in parts} == {scheme_for(heads, RANKS)}
    auto = torch.cat([p["auto"][:, :, prefix:] for p in parts], dim=2)
    assert torch.allclose(auto, ref[:, :, prefix:], atol=1e-5, rtol=1e-4)


def test_the_degree_and_scheme_follow_heads_and_ranks():
    assert [ulysses_degree_for(h, 8) for h in (12, 30, 40, 7, 24)] == [4, 2, 8, 1, 8]
    assert scheme_for(12, 8) == "usp" and scheme_for(40, 8) == "ulysses" and scheme_for(7, 8) == "ring"
    assert scheme_for(12, 2) == "ulysses" and scheme_for(3, 2) == "ring"


def test_a_degree_that_does_not_divide_the_ranks_is_refused():
    import torch.distributed as dist

    from mmchar.sequence_parallel import usp_mesh

    if dist.is_initialized():
        pytest.skip("a process group is up")
    import os
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        with pytest.raises(InvalidParameterError, match="must divide the 1 ranks"):
            usp_mesh(2)
    finally:
        dist.destroy_process_group()


SHARD_WORKER = """
import sys, torch, torch.distributed as dist
import mmchar.sequence_shard as ss
from mmchar.swap import swap_attention
from mmchar.workloads import get_workload
out_dir = sys.argv[1]
dist.init_process_group("gloo")
rank = dist.get_rank()
torch.use_deterministic_algorithms(True)
for name, params in (("wan2.1-1.3b", {}), ("cogvideox-5b", {"height": 48, "width": 80})):
    w = get_workload(name)
    target = w.build(w.resolve("tiny", device="cpu", **params))
    model = target.pipe.transformer
    outs = []
    model.register_forward_hook(lambda m, a, o: outs.append((o[0] if isinstance(o, tuple) else o.sample).clone()))
    runs = {}
    for label, scheme in (("one", None), ("auto", "auto")):
        shard = None if scheme is None else ss.SequenceShard(model, scheme=scheme)
        outs.clear()
        with swap_attention(target.pipe, ["transformer"], "sdpa", target.device, shard=shard):
            target.run(2)
        runs[label] = list(outs)
        if shard is not None:
            runs["meta"] = shard.describe()
    torch.save(runs, f"{out_dir}/{name}-r{rank}.pt")
dist.destroy_process_group()
"""


@pytest.fixture(scope="module")
def sharded(tmp_path_factory, torchrun):
    out = tmp_path_factory.mktemp("usp-shard")
    (out / "worker.py").write_text(SHARD_WORKER)
    proc = torchrun(RANKS, str(out / "worker.py"), str(out), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.mark.parametrize("name,tokens,prefix", [("wan2.1-1.3b", 48, 0), ("cogvideox-5b", 45, 226)])
def test_a_denoiser_over_a_2x2_mesh_equals_one_process(sharded, name, tokens, prefix):
    """The tiny presets' 2 heads on 4 ranks: auto picks USP (U = 2, R = 2); CogVideoX's 45 video tokens make
    uneven chunks after its 226 replicated text tokens."""
    for rank in range(RANKS):
        runs = torch.load(sharded / f"{name}-r{rank}.pt")
        meta = runs["meta"]
        assert meta["schemes"] == {"usp": 2} and meta["mesh"] == {"ulysses_degree": 2, "ring_degree": 2}
        assert meta["tokens"] == tokens and meta["text_prefix_tokens"] == prefix and sum(meta["chunk_tokens"]) == tokens
        assert len(runs["auto"]) == len(runs["one"]) > 0
        for got, ref in zip(runs["auto"], runs["one"]):
            assert torch.allclose(got, ref, atol=1e-4, rtol=1e-4), (got - ref).abs().max()


def test_profile_over_four_ranks_records_the_mesh(tmp_path, torchrun):
    store = tmp_path / "runs"
    proc = torchrun(RANKS, "-m", "mmchar", "profile", "wan2.1-1.3b", "--sequence-parallel", "--sp-scheme", "usp",
                    "--ulysses-degree", "2", "--device", "cpu", "--store", str(store), "--repeat", "1",
                    "--profile-steps", "1", "--no-trace", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (folder,) = [p for p in store.iterdir() if p.is_dir()]
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["options"]["sp_scheme"] == "usp" and meta["options"]["ulysses_degree"] == 2
    assert meta["sequence_parallel"]["mesh"] == {"ulysses_degree": 2, "ring_degree": 2}
    assert meta["sequence_parallel"]["schemes"] == {"usp": 2}


def test_a_degree_without_usp_is_refused_in_one_line():
    from mmchar.runner import ProfileOptions

    with pytest.raises(InvalidParameterError, match="takes --sp-scheme usp"):
        ProfileOptions(sp_scheme="ring", ulysses_degree=2)
    with pytest.raises(Exception, match="usp"):
        ProfileOptions(sp_scheme="2d")
