"""The specification of MemoryFormer's Memory Layer, in fp32 PyTorch, its eager form, and its cost.

MemoryFormer (Ding et al., "MemoryFormer: Minimize Transformer Computation by Removing Fully-Connected Layers",
NeurIPS 2024, arXiv 2411.12992), Section 3, "Memory Layer": a fully-connected layer y = xW is replaced by hash
tables. The step each function below takes, in the paper's terms (equations named by what they say; the closed
form of step 3 checked against the authors' code, C0-Design/MemoryFormer, whose comment gives it as the paper's):

1. Split. The input x ∈ R^d is cut into K = d / τ non-overlapping chunks z_k ∈ R^τ (no projection first: the
   paper hashes the input itself, so the layer does no matrix multiply at all).
2. Hash. h(z_k) = integer(sign(z_k)): the τ sign bits of the chunk read as a binary number, one of 2^τ buckets of
   the chunk's own table T_k ∈ R^{2^τ × d_out} (the paper's sign-bit LSH, its Fig. 2). Here dimension i of the chunk
   is bit i (bit 0 the chunk's first dimension) and a zero counts as positive (sign(0) := +1).
3. Weight. The retrieved vector is weighted by the probability of its bucket, a softmax over all 2^τ sign vectors
   s ∈ {−1, +1}^τ with temperature t (the paper's bucket probability):

       p(h(z_k) | z_k) = exp(⟨sign(z_k), z_k⟩ / t) / Σ_s exp(⟨s, z_k⟩ / t).

   The sum over the 2^τ sign vectors factorises over the τ dimensions (Σ_s Π_i e^{s_i z_i / t} = Π_i (e^{z_i/t} +
   e^{−z_i/t})), and ⟨sign(z), z⟩ = ‖z‖₁, which is the paper's closed form:

       p = exp(‖z_k‖₁ / t) / Π_i (exp(z_{k,i}/t) + exp(−z_{k,i}/t)) = Π_i σ(2|z_{k,i}| / t),

   a product of τ sigmoids (each in [½, 1), so p ∈ [2^−τ, 1): it never underflows), computable per token in
   registers. We evaluate it as exp(−Σ_i softplus(−2|z_{k,i}|/t)). This is the weighting the paper trains and
   infers with (the authors' code trains a variant scaled by ‖z_k‖₁; we follow the paper).
4. Sum. y = Σ_k p(h(z_k) | z_k) · T_k[h(z_k)], the weighted form of the plain sum Σ_k T_k[h(z_k)], plus the
   layer's bias.

The Memory Block (Section 3, "Architecture of MemoryFormer", Fig. 3 right) replaces the FFN by two Memory Layers with a normalisation between
them and no activation (the hashing is the non-linearity): ML₁ (d → K·(τ+2)), LayerNorm, ML₂, whose chunks then
have τ+2 bits (tables of 2^(τ+2) rows: the paper's "expanding bits", 2 by default). ``memory_block_norm`` is that
normalisation, applied to ML₂'s input before hashing (``normalize=True`` below); its affine part is left out (at
initialisation it is the identity, and our tables are random anyway). The projection backend keeps τ bits for ML₂
too (`mmchar.projections.MemoryFormerBackend` says why).

Defaults: τ = 8 (the paper's models and its ablation of τ and K, Table 3; the authors' configs), t = 1 (the
authors' code).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

TAU = 8  # bits per chunk (the paper's default)
TEMPERATURE = 1.0
NORM_EPS = 1e-5  # LayerNorm's default


def memory_block_norm(x: torch.Tensor, eps: float = NORM_EPS) -> torch.Tensor:
    """The Memory Block's normalisation between its two Memory Layers: LayerNorm over the features, no affine."""
    return F.layer_norm(x, (x.shape[-1],), eps=eps)


def _check(x: torch.Tensor, tables: torch.Tensor, tau: int) -> tuple[int, int]:
    if tables.dim() != 3:
        raise ValueError(f"memory layer: tables must be [K, 2^tau, d_out], got {tuple(tables.shape)}")
    k, nb, d_out = tables.shape
    if nb != 1 << tau:
        raise ValueError(f"memory layer: tables have {nb} buckets per table, tau = {tau} needs {1 << tau}")
    if x.shape[-1] != k * tau:
        raise ValueError(f"memory layer: input width {x.shape[-1]} is not K·tau = {k}·{tau}")
    return k, d_out


def hash_chunks(x: torch.Tensor, tau: int, temperature: float = TEMPERATURE) -> tuple[torch.Tensor, torch.Tensor]:
    """Bucket index (int64) and weight p(h(z_k)|z_k) of each chunk: [..., K] each, the weight in x's dtype
    (steps 2 and 3 of the module docstring)."""
    z = x.unflatten(-1, (x.shape[-1] // tau, tau))
    bits = (z >= 0).to(torch.int64)
    pow2 = torch.ones(tau, dtype=torch.int64, device=x.device) << torch.arange(tau, device=x.device)
    idx = (bits * pow2).sum(-1)
    weight = torch.exp(-F.softplus(-2.0 * z.abs() / temperature).sum(-1))  # Π_i σ(2|z_i|/t)
    return idx, weight


def memory_layer_ref(x: torch.Tensor, tables: torch.Tensor, bias: torch.Tensor | None = None, *, tau: int = TAU,
                     temperature: float = TEMPERATURE, normalize: bool = False) -> torch.Tensor:
    """One Memory Layer in fp32: x [..., K·τ], tables [K, 2^τ, d_out] -> [..., d_out] in x's dtype. ``normalize``:
    `memory_block_norm` first (the Memory Block's second layer). The whole [..., K, d_out] gather is materialised:
    small shapes only (the tests')."""
    k, d_out = _check(x, tables, tau)
    xf = x.float()
    if normalize:
        xf = memory_block_norm(xf)
    idx, w = hash_chunks(xf, tau, temperature)
    rows = tables.float()[torch.arange(k, device=x.device), idx]  # [..., K, d_out]
    y = (w.unsqueeze(-1) * rows).sum(-2)
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


def _hashed_rows(x: torch.Tensor, tables: torch.Tensor, tau: int, temperature: float,
                 normalize: bool) -> tuple[int, int, torch.Size, torch.Tensor, torch.Tensor]:
    """What the PyTorch forms share: K, d_out, the leading shape, and each token row's bucket indices and weights
    (after the Memory Block's norm when ``normalize``)."""
    k, d_out = _check(x, tables, tau)
    x2 = x.reshape(-1, x.shape[-1])
    if normalize:
        x2 = memory_block_norm(x2)
    return (k, d_out, x.shape[:-1], *hash_chunks(x2, tau, temperature))


def memory_layer_eager(x: torch.Tensor, tables: torch.Tensor, bias: torch.Tensor | None = None, *, tau: int = TAU,
                       temperature: float = TEMPERATURE, normalize: bool = False) -> torch.Tensor:
    """The same maths as the PyTorch a user would write, in x's dtype: the hash and weights of all chunks at once
    (a [..., K, τ] view: cheap), then a loop over the K tables, each step one gather of [tokens, d_out] rows, a scale
    and an add. The loop is the fair eager form: the vectorised alternative (one gather of [tokens, K, d_out], as
    `memory_layer_ref` does) materialises K times the output, 38 GB at 16k tokens, K = 192, d_out = 6144 in bf16,
    so no one can run it at real shapes; the loop's K·3 launches and K round trips of a [tokens, d_out] buffer are
    what the fused kernel removes. This is also the backend's CPU path."""
    k, d_out, lead, idx, w = _hashed_rows(x, tables, tau, temperature, normalize)
    y = torch.zeros(idx.shape[0], d_out, dtype=x.dtype, device=x.device)
    for j in range(k):
        y += w[:, j:j + 1].to(x.dtype) * tables[j][idx[:, j]].to(x.dtype)
    if bias is not None:
        y += bias.to(x.dtype)
    return y.reshape(*lead, d_out)


def memory_layer_embedding_bag(x: torch.Tensor, tables: torch.Tensor, bias: torch.Tensor | None = None, *,
                               tau: int = TAU, temperature: float = TEMPERATURE,
                               normalize: bool = False) -> torch.Tensor:
    """A fused PyTorch peer for the benchmark: ``F.embedding_bag(mode="sum", per_sample_weights=...)`` over the
    tables seen as one [K·2^τ, d_out] embedding (each token one bag of K rows, chunk k's row offset by k·2^τ). One
    kernel for the gather and weighted sum; the hash and weights stay separate PyTorch ops. Computes in the
    tables' dtype (embedding_bag wants the weights in it); returns x's dtype."""
    k, d_out, lead, idx, w = _hashed_rows(x, tables, tau, temperature, normalize)
    flat = idx + torch.arange(k, device=x.device) * (1 << tau)
    y = F.embedding_bag(flat, tables.reshape(k << tau, d_out), mode="sum", per_sample_weights=w.to(tables.dtype))
    if bias is not None:
        y = y + bias.to(y.dtype)
    return y.to(x.dtype).reshape(*lead, d_out)


def memory_layer_cost(tokens: int, d_in: int, d_out: int, tau: int, elem: int, table_elem: int | None = None, *,
                      normalize: bool = False, bias: bool = True) -> tuple[float, float]:
    """(FLOPs, unique bytes) of one Memory Layer call on ``tokens`` rows.

    FLOPs are the adds and multiplies the kernel does: per token and chunk, τ scalings of |z| and τ adds of the
    softplus sum (the bits' shifts and ors, the exponentials and logarithms are not FLOPs), then one multiply-add
    per output column (2·d_out); the bias (d_out adds per token); under ``normalize`` the norm's mean and variance
    and the centring and scaling of each input read (about 5 per input element). There is no matrix multiply:
    2·tokens·K·d_out against a dense layer's 2·tokens·K·τ·d_out.

    Unique bytes: the input and output once, the bias, and the whole tables (K·2^τ·d_out elements; at real token
    counts nearly every bucket is hit). That is the copy-roof yardstick, not what limits the kernel: each token
    gathers K rows of d_out, so the tables are re-read tokens·K·d_out elements in all (tokens / 2^τ times each, 64×
    at 16k tokens and τ = 8), from L2 at best; that gather traffic, not the unique bytes, is the likely roof.
    """
    k = d_in // tau
    table_elem = elem if table_elem is None else table_elem
    flops = tokens * (k * (2.0 * tau + 2.0 * d_out) + (d_out if bias else 0) + (5.0 * d_in if normalize else 0))
    moved = tokens * (d_in + d_out) * elem + k * (1 << tau) * d_out * table_elem + (d_out * elem if bias else 0)
    return float(flops), float(moved)


def memory_layer_gather_bytes(tokens: int, d_in: int, d_out: int, tau: int, table_elem: int) -> float:
    """Table bytes the gathers read in all (tokens·K·d_out elements): the traffic that likely limits the kernel,
    served from L2 (or L1) where the unique bytes come from HBM."""
    return float(tokens * (d_in // tau) * d_out * table_elem)
