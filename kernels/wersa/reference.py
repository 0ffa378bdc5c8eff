"""The specification of WERSA in plain PyTorch (docs/kernels/wersa.md, steps 1-8), in the input dtype with fp32
accumulation of the linear-attention state. It is both the reference of the fused kernels and the eager baseline.

Step numbers below refer to docs/kernels/wersa.md. Shapes: q, k, v [B, H, n, d]; x [B, n, C] (the host layer's input).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

SQRT1_2 = 1.0 / math.sqrt(2.0)


def _triton_conv(x: torch.Tensor) -> bool:
    """Whether the fused path's gains run their depthwise conv as the Triton pass (`kernel.gain_conv`): on CUDA,
    not under TRITON_INTERPRET=1 (read from the environment, so the CPU path never imports Triton)."""
    return x.is_cuda and os.environ.get("TRITON_INTERPRET", "0") != "1"


class WersaParams(nn.Module):
    """The parameters a drop-in WERSA layer adds to its host (docs/kernels/wersa.md, "New parameters"), seeded.

    Args:
        channels: C, the host's hidden size (the gain generator's input width).
        head_dim: d.
        levels: L, Haar decomposition levels (0 in causal mode: no look-ahead).
        features: m, random features.
        seed: seeds every parameter and the Ω buffers (mmchar seeds it from the module path).
        causal: causal conv (left padding) and L = 0.
        shared_omega: Ω_k = Ω_q.
    """

    def __init__(self, channels: int, head_dim: int, *, levels: int = 2, features: int = 256, seed: int = 0,
                 causal: bool = False, shared_omega: bool = False) -> None:
        super().__init__()
        # normal tensors even when built (or later moved: `_apply`) inside inference mode, as the backend does on
        # its first call: inference tensors have no version counter, which `derived` needs to see in-place changes
        with torch.inference_mode(False):
            g = torch.Generator().manual_seed(seed)
            self.levels = 0 if causal else levels
            self.causal = causal
            self.features = features
            self.conv = nn.Conv1d(channels, channels, 33, groups=channels, padding=0)
            hidden = max(channels // 4, 1)
            self.fc1 = nn.Linear(channels, hidden)
            self.fc2 = nn.Linear(hidden, self.levels + 1)
            for mod in (self.conv, self.fc1, self.fc2):  # seeded re-initialisation, framework defaults' scale
                bound = 1.0 / math.sqrt(mod.weight[0].numel())
                with torch.no_grad():
                    mod.weight.uniform_(-bound, bound, generator=g)
                    mod.bias.uniform_(-bound, bound, generator=g)
            self.s = nn.Parameter(torch.full((self.levels + 1,), 0.5))
            self.lam = nn.Parameter(torch.zeros(()))
            self.norm = nn.LayerNorm(head_dim, eps=1e-5)
            omega_q = torch.randn(head_dim, features, generator=g) / math.sqrt(head_dim)
            omega_k = (omega_q.clone() if shared_omega
                       else torch.randn(head_dim, features, generator=g) / math.sqrt(head_dim))
            self.register_buffer("omega_q", omega_q, persistent=True)
            self.register_buffer("omega_k", omega_k, persistent=True)

    def _apply(self, fn, *args, **kwargs):
        # a copy made inside inference mode (copy.deepcopy, as a backend's fp32 reference makes) holds inference
        # tensors: converting them by assigning to their .data leaves parameters without a version counter that
        # any later view trips on ("Inference tensors do not track version counter": bf16 -> fp32 on the GPU), so
        # such a copy gets new parameters instead
        copied = any(t.is_inference() for t in (*self.parameters(), *self.buffers()))
        if copied:
            convert = fn

            def fn(t: torch.Tensor) -> torch.Tensor:  # a no-op conversion would hand the inference tensor back
                return convert(t.clone() if t.is_inference() else t)
        overwrite = torch.__future__.get_overwrite_module_params_on_conversion()
        torch.__future__.set_overwrite_module_params_on_conversion(overwrite or copied)
        try:
            with torch.inference_mode(False):
                return super()._apply(fn, *args, **kwargs)
        finally:
            torch.__future__.set_overwrite_module_params_on_conversion(overwrite)

    def derived(self, name: str, fn, *tensors: torch.Tensor) -> torch.Tensor:
        """``fn(*tensors)`` (without autograd) kept on the module until one of ``tensors`` changes: another tensor
        object (assigning a new parameter), storage, dtype or device (``.to()``, ``.data =``), or a bump of its
        version counter (any in-place change through the tensor: an optimiser step, load_state_dict's copy,
        fill_ ...). In-place changes made through ``.data`` bypass the version counter and are not seen. An
        inference tensor has no version counter: for those ``fn`` runs on every call (the module's own tensors
        never are: see __init__)."""
        with torch.no_grad():
            try:
                key = tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in tensors)
            except RuntimeError:  # an inference tensor (or a view of one) has no version counter
                return fn(*tensors)
            cache = self.__dict__.setdefault("_derived", {})
            hit = cache.get(name)  # (sources, key, value): holding the sources keeps their memory from reuse
            if hit is None or hit[1] != key or any(a is not b for a, b in zip(hit[0], tensors)):
                hit = cache[name] = (tensors, key, fn(*tensors))
            return hit[2]

    def conv_taps(self) -> torch.Tensor:
        """The conv weight [C, 1, K] with channels contiguous (strides (1, ·, C)), for `kernel.gain_conv`: a tap's
        weights over a block of channels are then one coalesced load, where nn.Conv1d's layout puts them K apart.
        A copy, kept until the weight changes (`derived`)."""
        taps = self.derived("conv_taps", lambda w: w.reshape(w.shape[0], -1).t().contiguous(), self.conv.weight)
        return taps.t().unsqueeze(1)

    @property
    def gain_stride(self) -> int:
        """Every how many tokens the filter reads the gains: the Haar filter reads a token's only where a level-j
        coefficient starts (a multiple of 2^(j+1): even tokens); L = 0 (causal) scales every token by its own."""
        return 1 if self.levels == 0 else 2

    def gains(self, x: torch.Tensor, every: int = 1, *, fused: bool = False) -> torch.Tensor:
        """Step 1: per-token level gains g [B, n, L+1] from the filter source x [B, n, C].

        ``every``: the gains of tokens 0, every, 2·every, ... only ([B, ceil(n / every), L+1]); at `gain_stride`
        (the fused kernels' setting, with `mixing_rows`) a non-causal layer computes half the conv and MLP work.
        The reference and the eager baseline compute every token's, as the specification writes it.

        ``fused`` (what `kernel.wersa` passes): on CUDA the conv runs as one Triton pass over x in place
        (`kernel.gain_conv`, bias included) instead of cuDNN's; elsewhere, and by default, the PyTorch conv below."""
        if self.gain_stride % every:
            raise ValueError(f"this layer's filter (L = {self.levels}{', causal' if self.causal else ''}) reads the "
                             f"gains of every {self.gain_stride} tokens; every={every} skips some")
        if fused and _triton_conv(x):
            from mmchar.kernels.wersa.kernel import gain_conv

            u = gain_conv(x, self.conv_taps(), self.conv.bias, every, 32 if self.causal else 16)
        else:
            # x [B, n, C] is, without a copy, a channels-last [B, C, 1, n] image: the depthwise conv over tokens
            # runs as cuDNN's NHWC depthwise kernel with no transposes. Causal: 32 zero tokens on the left, so
            # token t sees x[t-32 .. t].
            if self.causal:
                x = F.pad(x, (0, 0, 32, 0))
            img = x.transpose(1, 2).unsqueeze(2)
            u = F.conv2d(img, self.conv.weight.unsqueeze(2), self.conv.bias, stride=(1, every),
                         padding=(0, 0 if self.causal else 16), groups=x.shape[-1])
            u = u.squeeze(2).transpose(1, 2)
        f = torch.sigmoid(self.fc2(F.relu(self.fc1(u))))
        return f * self.s


def haar_filter(y: torch.Tensor, gains: torch.Tensor, levels: int) -> torch.Tensor:
    """Steps 3-5 on y [B, H, n, d] with gains [B, n, L+1]: Haar DWT over tokens, each coefficient scaled by the
    gain of its block's first token (broadcast over heads and channels), inverse DWT, crop to n."""
    b, h, n, d = y.shape
    if levels == 0:
        return y * gains[:, None, :, 0:1].to(y.dtype)
    block = 1 << levels
    padded = -(-n // block) * block
    a = F.pad(y, (0, 0, 0, padded - n))
    details = []
    for _ in range(levels):
        even, odd = a[:, :, 0::2], a[:, :, 1::2]
        details.append((even - odd) * SQRT1_2)
        a = (even + odd) * SQRT1_2
    g = gains.to(y.dtype)

    def level_gain(j: int, length: int, stride: int) -> torch.Tensor:
        t0 = (torch.arange(length, device=y.device) * stride).clamp(max=n - 1)
        return g[:, t0, j][:, None, :, None]  # [B, 1, len, 1]

    details = [dj * level_gain(j, dj.shape[2], 1 << (j + 1)) for j, dj in enumerate(details)]
    a = a * level_gain(levels, a.shape[2], block)
    for dj in reversed(details):
        even, odd = (a + dj) * SQRT1_2, (a - dj) * SQRT1_2
        a = torch.stack((even, odd), dim=3).flatten(2, 3)
    return a[:, :, :n]


@dataclass
class _Features:
    tau: torch.Tensor
    m: int


def _phi(y: torch.Tensor, omega: torch.Tensor, tau: torch.Tensor, m: int) -> torch.Tensor:
    """Step 6: ReLU((y/τ) Ω)/√m."""
    return F.relu(torch.matmul(y / tau, omega.to(y.dtype))) / math.sqrt(m)


def wersa_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, params: WersaParams, *,
              x_q: torch.Tensor, x_k: torch.Tensor | None = None, eps: float = 1e-6) -> torch.Tensor:
    """WERSA attention output [B, H, n_q, d] (before the host's head merge and Wo).

    Args:
        q, k, v: [B, H, n, d] projected by the host (v is never filtered).
        params: the layer's WersaParams (its ``causal`` selects prefix sums and L = 0).
        x_q: filter source of q's tokens [B, n_q, C] (the host's hidden states, or q with heads merged).
        x_k: filter source of k's tokens when they are not q's (joint attention); default x_q.
        eps: normaliser ε.
    """
    x_k = x_q if x_k is None else x_k
    g_q = params.gains(x_q)
    g_k = g_q if x_k is x_q else params.gains(x_k)
    qf = haar_filter(F.gelu(q), g_q, params.levels)  # steps 2-5
    kf = haar_filter(F.gelu(k), g_k, params.levels)
    tau = F.softplus(params.lam) + 0.1
    m = params.features
    fq = _phi(qf, params.omega_q, tau.to(q.dtype), m)
    fk = _phi(kf, params.omega_k, tau.to(k.dtype), m)
    if params.causal:  # step 7, prefix sums (fp32 state)
        kv = torch.einsum("bhsm,bhse->bhsme", fk.float(), v.float()).cumsum(2)
        z = fk.float().cumsum(2)
        num = torch.einsum("bhtm,bhtme->bhte", fq.float(), kv)
        den = torch.einsum("bhtm,bhtm->bht", fq.float(), z)
    else:
        u = torch.einsum("bhsm,bhse->bhme", fk.float(), v.float())
        z = fk.float().sum(2)
        num = torch.einsum("bhtm,bhme->bhte", fq.float(), u)
        den = torch.einsum("bhtm,bhm->bht", fq.float(), z)
    out = (num / (den.unsqueeze(-1) + eps)).to(q.dtype)
    return params.norm(out)  # step 8


def wersa_eager(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, params: WersaParams, *,
                x_q: torch.Tensor, x_k: torch.Tensor | None = None, eps: float = 1e-6) -> torch.Tensor:
    """The same maths as `wersa_ref`, in the input dtype, as a PyTorch user would write it: the baseline the fused
    kernels are measured against. Causal prefix sums go chunk by chunk (linear_attn_eager) instead of the
    reference's n × m × d cumsum, which does not fit in memory at real sizes."""
    from mmchar.kernels.linear_attn.reference import linear_attn_eager

    x_k = x_q if x_k is None else x_k
    g_q = params.gains(x_q)
    g_k = g_q if x_k is x_q else params.gains(x_k)
    tau = (F.softplus(params.lam) + 0.1).to(q.dtype)
    fq = _phi(haar_filter(F.gelu(q), g_q, params.levels), params.omega_q, tau, params.features)
    fk = _phi(haar_filter(F.gelu(k), g_k, params.levels), params.omega_k, tau, params.features)
    if params.causal:  # features are ReLU outputs already: relu is the identity on them
        out = linear_attn_eager(fq, fk, v, causal=True, feature="relu", eps=eps)
    else:
        u = torch.einsum("bhsm,bhse->bhme", fk, v)
        num = torch.einsum("bhtm,bhme->bhte", fq, u)
        den = torch.einsum("bhtm,bhm->bht", fq, fk.sum(2))
        out = num / (den.unsqueeze(-1) + eps)
    return params.norm(out)


def merge_heads(t: torch.Tensor) -> torch.Tensor:
    """[B, H, n, d] -> [B, n, H·d]: the filter source when the host cannot supply its hidden states."""
    b, h, n, d = t.shape
    return t.transpose(1, 2).reshape(b, n, h * d)
