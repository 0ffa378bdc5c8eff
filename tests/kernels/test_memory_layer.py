"""MemoryFormer's Memory Layer: the fp32 reference against a case worked by hand and against the paper's softmax,
the eager form and embedding_bag peer, the Triton kernel (under TRITON_INTERPRET=1 on the CPU; bf16 at real shapes
on the GPU), and the `memoryformer` projection backend: seeded tables, refusals, state bytes, routing."""

from __future__ import annotations

import itertools
import math
import os
import types

import pytest
import torch
from torch import nn

triton = pytest.importorskip("triton")

from mmchar.kernels.memory_layer.reference import (hash_chunks, memory_block_norm, memory_layer_cost,  # noqa: E402
                                                   memory_layer_eager, memory_layer_embedding_bag, memory_layer_ref)
from mmchar.linear_swap import LinearSwap  # noqa: E402
from mmchar.projections import DenseBackend, MemoryFormerBackend, get_projection_backend  # noqa: E402

INTERPRET = not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") == "1"
CPU = torch.device("cpu")


def _rel(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


def _sig(v):
    return 1.0 / (1.0 + math.exp(-v))


def _case(n, k, tau, d_out, dt, seed=0, lead=()):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*lead, n, k * tau, generator=g).to(dt)
    tables = (torch.randn(k, 1 << tau, d_out, generator=g) / k**0.5).to(dt)
    return x, tables, torch.randn(d_out, generator=g).to(dt)


def test_reference_on_a_case_worked_by_hand():
    """τ = 2, K = 2. Chunk 1 (0.5, −1.0): bits (1, 0) -> bucket 1, weight σ(1)·σ(2); chunk 2 (−0.25, 2.0): bits
    (0, 1) -> bucket 2, weight σ(0.5)·σ(4) (t = 1). Bit i is the chunk's dimension i; zero counts as positive."""
    x = torch.tensor([[0.5, -1.0, -0.25, 2.0]])
    tables = torch.arange(2 * 4 * 3, dtype=torch.float32).view(2, 4, 3)
    bias = torch.tensor([0.1, 0.2, 0.3])
    idx, w = hash_chunks(x, 2)
    assert idx.tolist() == [[1, 2]]
    w1, w2 = _sig(1.0) * _sig(2.0), _sig(0.5) * _sig(4.0)
    torch.testing.assert_close(w, torch.tensor([[w1, w2]]))
    want = torch.tensor([w1 * (3 + j) + w2 * (18 + j) + b for j, b in enumerate([0.1, 0.2, 0.3])])
    torch.testing.assert_close(memory_layer_ref(x, tables, bias, tau=2)[0], want)
    assert hash_chunks(torch.zeros(1, 3), 3)[0].item() == 7  # sign(0) := +1
    # temperature t = 2: each factor σ(2|z|/t) = σ(|z|)
    torch.testing.assert_close(hash_chunks(x, 2, temperature=2.0)[1],
                               torch.tensor([[_sig(0.5) * _sig(1.0), _sig(0.25) * _sig(2.0)]]))


@pytest.mark.parametrize("t", [1.0, 0.5])
def test_weight_is_the_softmax_over_every_sign_vector(t):
    """The closed form Π σ(2|z_i|/t) is the paper's bucket probability, exp(⟨sign z, z⟩/t) / Σ_s exp(⟨s, z⟩/t) over
    all 2^τ sign vectors s; the hashed bucket is the argmax of that softmax."""
    tau = 4
    z = torch.randn(5, tau, dtype=torch.float64)
    signs = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=tau)), dtype=torch.float64)  # [16, τ]
    soft = torch.softmax(z @ signs.T / t, dim=-1)
    idx, w = hash_chunks(z, tau, temperature=t)
    bucket_of = ((signs > 0).long() * (1 << torch.arange(tau))).sum(-1)  # the bucket of each sign vector
    picked = soft.gather(1, torch.argsort(bucket_of)[idx])  # the softmax entry of the hashed bucket
    torch.testing.assert_close(w[:, 0], picked[:, 0])
    assert torch.equal(bucket_of[soft.argmax(-1)], idx[:, 0])


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("dt", [torch.float32, torch.bfloat16])
def test_eager_and_embedding_bag_match_the_reference(normalize, dt):
    x, tables, bias = _case(29, 5, 8, 24, dt, lead=(2,))
    ref = memory_layer_ref(x, tables, bias, normalize=normalize)
    tol = 1e-5 if dt == torch.float32 else 2e-2
    for fn in (memory_layer_eager, memory_layer_embedding_bag):
        out = fn(x, tables, bias, normalize=normalize)
        assert out.shape == (2, 29, 24) and out.dtype == dt
        assert _rel(out, ref) < tol, fn.__name__


def test_normalize_is_a_layer_norm_before_hashing():
    x, tables, _ = _case(11, 3, 6, 8, torch.float32, seed=4)
    x = 3.0 * x + 1.5  # a shift and scale the norm removes: the hash alone would see them
    torch.testing.assert_close(memory_layer_ref(x, tables, tau=6, normalize=True),
                               memory_layer_ref(memory_block_norm(x), tables, tau=6))
    assert _rel(memory_layer_ref(x, tables, tau=6), memory_layer_ref(x, tables, tau=6, normalize=True)) > 0.1


def test_shape_errors():
    x, tables, _ = _case(4, 3, 8, 8, torch.float32)
    with pytest.raises(ValueError, match="input width 24 is not K·tau = 3·4"):
        memory_layer_ref(x, tables[:, :16], tau=4)
    with pytest.raises(ValueError, match="256 buckets per table, tau = 4 needs 16"):
        memory_layer_eager(x[..., :12], tables, tau=4)


def test_cost_counts_the_lookups_not_a_matrix_multiply():
    flops, nbytes = memory_layer_cost(100, 64, 32, 8, 2)
    assert flops == 100 * (8 * (16 + 64) + 32)
    assert nbytes == 100 * (64 + 32) * 2 + 8 * 256 * 32 * 2 + 32 * 2


# (tokens, K, τ, d_out, normalize, bias, dtype): token counts and widths off the interpreter's 16-wide blocks; τ = 10
# (the Memory Block's second layer) pads its chunk to 16 lanes
KERNEL_CASES = [
    (37, 4, 8, 40, False, True, torch.float32),
    (37, 3, 10, 24, True, True, torch.float32),
    (16, 2, 8, 16, False, False, torch.float32),
    (21, 3, 8, 40, False, True, torch.float16),
    (21, 3, 10, 33, True, False, torch.float16),
    (37, 4, 8, 40, False, True, torch.bfloat16),
    (19, 2, 10, 24, True, True, torch.bfloat16),
    (5, 6, 4, 8, True, True, torch.float32),
]


@pytest.mark.skipif(not INTERPRET, reason="interpreter run: the CPU without CUDA, with TRITON_INTERPRET=1")
@pytest.mark.parametrize("case", KERNEL_CASES, ids=lambda c: f"N{c[0]}-K{c[1]}-tau{c[2]}-out{c[3]}-"
                                                             f"{'norm' if c[4] else 'plain'}-{str(c[6])[6:]}")
def test_triton_matches_reference(case):
    from mmchar.kernels.memory_layer.kernel import memory_layer

    n, k, tau, d_out, normalize, has_bias, dt = case
    x, tables, bias = _case(n, k, tau, d_out, dt, lead=(2,))
    bias = bias if has_bias else None
    out = memory_layer(x, tables, bias, tau=tau, normalize=normalize)
    assert out.shape == (2, n, d_out) and out.dtype == dt
    # bf16: the interpreter truncates on the fp32 -> bf16 store (a GPU rounds), up to one bf16 step per element
    tol = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 1.5e-2}[dt]
    assert _rel(out, memory_layer_ref(x, tables, bias, tau=tau, normalize=normalize)) < tol


@pytest.mark.skipif(not INTERPRET, reason="interpreter run: the CPU without CUDA, with TRITON_INTERPRET=1")
def test_triton_strided_input_and_no_tokens():
    from mmchar.kernels.memory_layer.kernel import memory_layer

    x, tables, bias = _case(18, 2, 8, 16, torch.float32)
    wide = torch.cat([x, x], dim=-1)[:, :16]  # a row stride of 32
    assert _rel(memory_layer(wide, tables, bias), memory_layer_ref(wide, tables, bias)) < 1e-5
    assert memory_layer(x[:0], tables, bias).shape == (0, 16)


# ---- the projection backend


def _backend(n_in, n_out, path="m.layer", seed=0, role="other", dtype=torch.float32):
    torch.manual_seed(0)
    return MemoryFormerBackend(nn.Linear(n_in, n_out).to(dtype), path, seed, role=role)


def test_backend_is_registered_as_a_memory_lookup():
    cls = get_projection_backend("memoryformer")
    assert cls is MemoryFormerBackend and cls.op_class == "memory" and cls.changes_math
    assert cls.unavailable_reason(CPU) is None


def test_tables_are_seeded_by_run_seed_and_module_path():
    a, b = _backend(32, 24), _backend(32, 24)
    assert a.tables.shape == (4, 256, 24) and torch.equal(a.tables, b.tables)
    assert not torch.equal(a.tables, _backend(32, 24, path="m.other").tables)
    assert not torch.equal(a.tables, _backend(32, 24, seed=1).tables)
    assert abs(float(a.tables.std()) - 0.5) < 0.02  # std 1/√K
    assert _backend(32, 24, dtype=torch.bfloat16).tables.dtype == torch.bfloat16  # the layer's dtype


def test_state_bytes_are_the_tables():
    assert _backend(32, 24).state_bytes == 4 * 256 * 24 * 4
    assert _backend(32, 24, dtype=torch.bfloat16).state_bytes == 4 * 256 * 24 * 2
    assert DenseBackend(nn.Linear(4, 4)).state_bytes == 0


def test_unsupported_layers_say_why_and_hold_no_tables():
    x = torch.randn(3, 30)
    odd = _backend(30, 16)
    assert odd.unsupported(x) == ("in_features 30 is not a multiple of 8 (the Memory Layer hashes tau = 8 bits per "
                                  "chunk)")
    assert odd.tables is None and odd.state_bytes == 0
    second = _backend(64, 32, role="ffn")  # the FFN's contraction: τ = 8 bits per chunk too
    assert second.block_second and second.unsupported(torch.randn(3, 64)) is None


def test_backend_calls_follow_the_paper_arrangement():
    x = torch.randn(2, 5, 32)
    plain = _backend(32, 48, role="ffn")  # the FFN's first layer (expands): a plain Memory Layer
    assert not plain.block_second and plain.chunk == 8
    torch.testing.assert_close(plain(x), memory_layer_ref(x, plain.tables, plain.layer.bias))
    second = _backend(80, 32, role="ffn")  # the FFN's second layer: normalised input, τ bits
    assert second.block_second and second.tables.shape == (10, 256, 32)
    h = torch.randn(2, 5, 80)
    with torch.no_grad():
        torch.testing.assert_close(second(h), memory_layer_ref(h, second.tables, second.layer.bias, tau=8,
                                                               normalize=True))
    flops, nbytes = second.cost(h)
    assert (flops, nbytes) == memory_layer_cost(10, 80, 32, 8, 4, 4, normalize=True)


class Attention(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.q_proj, self.o_proj = nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, x):
        return self.o_proj(torch.softmax(self.q_proj(x) @ x.transpose(-1, -2), -1) @ x)


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.attn = Attention(d)
        self.ff = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, x):
        x = x + self.attn(x)
        return x + self.ff(x)


class Model(nn.Module):
    """d = 40: attention and FFN layers (the FFN's 80 wide contraction too) fit τ = 8; the 36-wide
    input projection does not."""

    def __init__(self, d=40):
        super().__init__()
        self.proj_in = nn.Linear(36, d)
        self.blocks = nn.ModuleList([Block(d), Block(d)])

    def forward(self, x):
        x = self.proj_in(x)
        for b in self.blocks:
            x = b(x)
        return x


def test_routed_through_the_linear_swap():
    torch.manual_seed(0)
    model = Model()
    x = torch.randn(2, 7, 36)
    with torch.no_grad():
        dense = model(x)
        swap = LinearSwap(types.SimpleNamespace(model=model), ["model"], "memoryformer", CPU, scope="all", seed=3)
        with swap as state:
            got = model(x)
        again = LinearSwap(types.SimpleNamespace(model=model), ["model"], "memoryformer", CPU, seed=3)
        with again:
            repeat = model(x)
    assert got.shape == dense.shape and torch.isfinite(got).all()
    assert _rel(got, dense) > 0.1  # the maths changed (random tables)
    torch.testing.assert_close(repeat, got, rtol=0, atol=0)  # the same tables for the same seed and paths
    assert not any("forward" in vars(m) for m in model.modules())  # restored on exit
    torch.testing.assert_close(model(x), dense)
    assert state.unsupported == {"model.proj_in": "in_features 36 is not a multiple of 8 (the Memory Layer hashes "
                                                  "tau = 8 bits per chunk)"}
    taken = {p for p, b in state.layer_backend.items() if b == "memoryformer"}
    assert len(taken) == 8 and state.layer_backend["model.proj_in"] == "dense"
    assert set(state.layer_state_bytes) == taken
    assert state.layer_state_bytes["model.blocks.0.attn.q_proj"] == 5 * 256 * 40 * 4
    assert state.layer_state_bytes["model.blocks.0.ff.0"] == 5 * 256 * 80 * 4
    assert state.layer_state_bytes["model.blocks.1.ff.2"] == 10 * 256 * 40 * 4  # the block's second layer
    assert state.state_bytes_total == sum(state.layer_state_bytes.values())


def test_an_error_while_building_propagates_and_is_tried_again(monkeypatch):
    """A CUDA OOM drawing the tables reaches the runner (which records OOM); the layer is not quietly run dense."""
    calls = []

    def boom(*args, **kwargs):
        calls.append(1)
        raise torch.OutOfMemoryError("CUDA out of memory (test)")

    model = Model()
    swap = LinearSwap(types.SimpleNamespace(model=model), ["model"], "memoryformer", CPU, scope="attn-proj")
    monkeypatch.setattr(MemoryFormerBackend, "__init__", boom)
    with swap:
        for _ in range(2):
            with pytest.raises(torch.OutOfMemoryError):
                model(torch.randn(1, 3, 36))
    assert len(calls) == 2 and not swap.state.layer_backend


# ---- GPU: the kernel at real shapes


def _ref_in_slices(x, tables, bias, tau, normalize, rows=512):
    """The fp32 reference a slice of tokens at a time (its [tokens, K, d_out] gather would not fit at once)."""
    return torch.cat([memory_layer_ref(x[i:i + rows], tables, bias, tau=tau, normalize=normalize)
                      for i in range(0, x.shape[0], rows)])


@pytest.mark.gpu
@pytest.mark.parametrize("n,d_in,d_out,tau,normalize", [
    (4096, 1536, 6144, 8, False), (2048, 3072, 3072, 8, False),
    pytest.param(3001, 8960, 1536, 8, True, marks=pytest.mark.gpu_alone)])  # 2.2 GB tables + ref slices
def test_gpu_bf16(n, d_in, d_out, tau, normalize):
    from mmchar.kernels.memory_layer.kernel import memory_layer

    g = torch.Generator(device="cuda").manual_seed(0)
    k = d_in // tau
    x = torch.randn(n, d_in, device="cuda", dtype=torch.bfloat16, generator=g)
    tables = (torch.randn(k, 1 << tau, d_out, device="cuda", generator=g) / k**0.5).bfloat16()
    bias = torch.randn(d_out, device="cuda", dtype=torch.bfloat16, generator=g)
    ref = _ref_in_slices(x, tables, bias, tau, normalize)
    assert _rel(memory_layer(x, tables, bias, tau=tau, normalize=normalize), ref) < 1e-2
    assert _rel(memory_layer_embedding_bag(x, tables, bias, tau=tau, normalize=normalize), ref) < 2e-2
    assert _rel(memory_layer_eager(x[:512], tables, bias, tau=tau, normalize=normalize), ref[:512]) < 3e-2


@pytest.mark.gpu
def test_gpu_backend_uses_the_kernel():
    layer = nn.Linear(1536, 6144, device="cuda", dtype=torch.bfloat16)
    backend = MemoryFormerBackend(layer, "m.ff.0", 0, role="ffn")
    x = torch.randn(2, 1000, 1536, device="cuda", dtype=torch.bfloat16)
    out = backend(x)
    assert out.shape == (2, 1000, 6144) and out.dtype == torch.bfloat16
    ref = _ref_in_slices(x.reshape(-1, 1536), backend.tables, layer.bias, 8, False).reshape(out.shape)
    assert _rel(out, ref) < 1e-2
    assert backend.state_bytes == 192 * 256 * 6144 * 2
