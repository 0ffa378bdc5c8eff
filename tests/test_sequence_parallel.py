"""Sequence-parallel attention on 2 gloo processes equals single-process attention: Ulysses (heads divisible by
the ranks) and ring (any heads), causal and not, cross-checked against F.scaled_dot_product_attention."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

CASES = [(4, False), (4, True), (3, False), (3, True)]  # heads, causal: 4 -> Ulysses, 3 -> ring on 2 ranks


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# each rank's work, as a script torchrun starts (no pickled test functions: the ranks import only mmchar)
WORKER = """
import sys, torch, torch.distributed as dist
from mmchar.errors import InvalidParameterError
from mmchar.sequence_parallel import ring_attention, sequence_parallel_attention, ulysses_attention
out_dir, cases = sys.argv[1], eval(sys.argv[2])
dist.init_process_group("gloo")
rank = dist.get_rank()
for heads, causal in cases:
    g = torch.Generator().manual_seed(heads * 10 + causal)
    q, k, v = (torch.randn(2, heads, 24, 16, generator=g) for _ in range(3))  # the full sequence, everywhere
    c = slice(rank * 12, (rank + 1) * 12)
    out, scheme = sequence_parallel_attention(q[:, :, c], k[:, :, c], v[:, :, c], causal=causal)
    ring = ring_attention(q[:, :, c], k[:, :, c], v[:, :, c], causal=causal)
    try:
        ulysses_attention(q[:, :, c], k[:, :, c], v[:, :, c], causal=causal)
        refused = ""
    except InvalidParameterError as e:  # raised before any communication: every rank refuses alike
        refused = str(e)
    torch.save({"out": out, "ring": ring, "scheme": scheme, "refused": refused},
               f"{out_dir}/r{rank}-h{heads}-c{int(causal)}.pt")
# uneven chunks (25 tokens: 13 + 12) after a replicated prefix of 7 tokens (joint text+video attention)
sizes = [13, 12]
for heads in (4, 3):
    g = torch.Generator().manual_seed(heads)
    q, k, v = (torch.randn(2, heads, 7 + 25, 16, generator=g) for _ in range(3))
    start = 7 + sum(sizes[:rank])
    pick = lambda t: torch.cat([t[:, :, :7], t[:, :, start:start + sizes[rank]]], dim=2)
    out, scheme = sequence_parallel_attention(pick(q), pick(k), pick(v), sizes=sizes, prefix=7)
    ring = ring_attention(pick(q), pick(k), pick(v), sizes=sizes, prefix=7)
    torch.save({"out": out, "ring": ring, "scheme": scheme}, f"{out_dir}/r{rank}-h{heads}-prefix.pt")
dist.destroy_process_group()
"""


@pytest.fixture(scope="module")
def results(tmp_path_factory, torchrun):
    out = tmp_path_factory.mktemp("sp")
    (out / "worker.py").write_text(WORKER)
    proc = torchrun(2, str(out / "worker.py"), str(out), repr(CASES), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.mark.parametrize("heads,causal", CASES)
def test_sequence_parallel_equals_one_process(results, heads, causal):
    g = torch.Generator().manual_seed(heads * 10 + causal)
    q, k, v = (torch.randn(2, heads, 24, 16, generator=g) for _ in range(3))
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    parts = [torch.load(results / f"r{r}-h{heads}-c{int(causal)}.pt") for r in range(2)]
    assert {p["scheme"] for p in parts} == {"ulysses" if heads % 2 == 0 else "ring"}
    for key in ("out", "ring"):  # the chosen scheme, and the ring on every case
        got = torch.cat([p[key] for p in parts], dim=2)
        assert torch.allclose(got, ref, atol=1e-5, rtol=1e-4), (key, (got - ref).abs().max())


@pytest.mark.parametrize("heads", [4, 3])
def test_uneven_chunks_after_a_replicated_prefix(results, heads):
    """Every rank returns the whole prefix's rows (gathered over heads) and its own chunk's rows, exact."""
    g = torch.Generator().manual_seed(heads)
    q, k, v = (torch.randn(2, heads, 7 + 25, 16, generator=g) for _ in range(3))
    ref = F.scaled_dot_product_attention(q, k, v)
    parts = [torch.load(results / f"r{r}-h{heads}-prefix.pt") for r in range(2)]
    assert {p["scheme"] for p in parts} == {"ulysses" if heads % 2 == 0 else "ring"}
    for key in ("out", "ring"):
        for p in parts:
            assert torch.allclose(p[key][:, :, :7], ref[:, :, :7], atol=1e-5, rtol=1e-4)
        assert torch.equal(parts[0][key][:, :, :7], parts[1][key][:, :, :7])  # the same text rows on every rank
        got = torch.cat([p[key][:, :, 7:] for p in parts], dim=2)
        assert got.shape[2] == 25
        assert torch.allclose(got, ref[:, :, 7:], atol=1e-5, rtol=1e-4), (key, (got - ref[:, :, 7:]).abs().max())


def test_ulysses_refuses_heads_the_ranks_do_not_divide(results):
    part = torch.load(results / "r0-h3-c0.pt")
    assert "head count (3) divisible by the ranks (2)" in part["refused"]
    assert torch.load(results / "r0-h4-c0.pt")["refused"] == ""


@pytest.mark.gpu
def test_gpu_ring_chunks_use_flash_with_its_log_sum_exp():
    """One rank on the GPU: the ring's chunk attention takes the flash kernel's output and log-sum-exp (bf16)."""
    from mmchar.sequence_parallel import ring_attention

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        g = torch.Generator(device="cuda").manual_seed(0)
        q, k, v = (torch.randn(1, 12, 4096, 128, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3))
        for causal in (False, True):
            ref = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
            out = ring_attention(q, k, v, causal=causal)
            assert ((out.float() - ref.float()).norm() / ref.float().norm()).item() < 1e-2
    finally:
        dist.destroy_process_group()
