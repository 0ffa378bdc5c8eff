"""The seeds' other sequence mixers as attention backends: mLSTMsig (TFLA), RWKV-7 and Local Linear Attention
(their kernels' specifications: docs/kernels/mlstm.md, docs/kernels/rwkv7.md, docs/kernels/lla.md). Registered in the one registry
(`mmchar.backends`), which imports this module last.

Each replaces a layer's self-attention as ``linear`` and ``wersa`` do (``changes_math``: a speed study with the
model's own q, k, v, not a quality claim; cross attention keeps a softmax backend). The mechanism's own
parameters are per layer, seeded from the module path, and computed from the layer's hidden states inside the
attention call, so their time and FLOPs count as the mixer's:

- mLSTM: per-head input and forget gates, i_t = σ(w_iᵀx_t + b_i), f_t = σ(w_fᵀx_t + b_f) (xLSTM's initialisation:
  forget biases spread over [3, 6], so memories start long);
- RWKV-7: the per-channel decay w = exp(−e^{−1/2}·σ(w₀ + tanh(x·A_w)·B_w)) and in-context learning rate
  a = σ(a₀ + x·A_a·B_a) through low-rank projections, the removal key κ̂ = normalise(k ⊙ ξ) and the replacement
  key k ⊙ (1 + (a − 1) ⊙ α), in the general form S_t = S_{t−1}(diag(w_t) + (−κ̂_t)ᵀ(κ̂_t ⊙ a_t)) + v_tᵀ k̃_t;
- LLA: its ridge λ (a per-layer constant; no projection).

The recurrences (mLSTM, RWKV-7) are causal. At a causal site (a token model, a text encoder under ``--scope all``)
they run forward; at a non-causal one (spatial, temporal, joint) they run the bidirectional form of the vision
adaptations (Vision-LSTM, Vision-RWKV): a forward and a backward scan over the host's token order, summed. LLA is
non-causal natively and takes causal calls as they come. ``notes`` (meta.json ``backend_notes``) records each
layer's form and the gates' source.

Decoding with a KV cache (a token model's decode steps: a few new queries against the whole cache) runs the
recurrence with a carried state. A causal whole-sequence call (the prefill) resets the layer's state; the state
after it, mLSTM's (C, n) and RWKV-7's d × d matrix in fp32, is computed in plain PyTorch from the same gates
(``mlstm_final_state``, ``rwkv7_final_state``); each decode step folds its new tokens into it
(``mlstm_decode``, ``rwkv7_decode``) and reads h_t there: O(d²) per head and token, whatever the cache's length. A
decode call is one whose keys are the tokens already in the state plus its own new ones (Skv = tokens seen + Sq,
same batch): anything else (cross attention, a cache the state does not hold) is refused, so ``--fallback`` takes
it. The backend instance is per layer (the swap makes one per module path), so the state is too. The state pass
costs O(T·d²) once per prefill; a layer pays it at the prefill once it has decoded (every generation after the
warm-up's), and defers it to the first decode step until then, so the causal sites that never decode (text
encoders under ``--scope all``, ``bench-attn``'s causal rows) keep the forward scan alone. ``notes`` records
``"decode": "carried state"`` once a decode step ran so.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from mmchar.backends import AttentionBackend, Constraints, _triton_usable, register_backend
from mmchar.errors import BackendUnsupportedError
from mmchar.kernels.wersa.reference import merge_heads  # the gates' source where the host's states do not cover q

BIDIRECTIONAL = "bidirectional: a forward and a backward scan over the host's token order, summed"
CAUSAL = "causal: a forward scan"
CARRIED = "carried state"  # notes["decode"]: decode steps ran the recurrence from the prefill's state


def _layer_seed(module_path: str, seed: int) -> int:
    return zlib.crc32(module_path.encode()) ^ seed


def _uniform(shape: tuple[int, ...], bound: float, g: torch.Generator) -> nn.Parameter:
    return nn.Parameter(torch.empty(shape).uniform_(-bound, bound, generator=g))


class MlstmGates(nn.Module):
    """mLSTM's input and forget gate pre-activations per head and token from the host's hidden states x [B, T, C]."""

    def __init__(self, channels: int, heads: int, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        bound = 1.0 / math.sqrt(channels)
        self.w = _uniform((channels, 2 * heads), bound, g)  # input gates, then forget gates
        self.b = nn.Parameter(torch.cat([torch.zeros(heads), torch.linspace(3.0, 6.0, heads)]))
        self.heads = heads

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pre = torch.addmm(self.b, x.flatten(0, 1), self.w).unflatten(0, x.shape[:2])  # [B, T, 2H]
        i_pre, f_pre = pre.float().transpose(1, 2).split(self.heads, dim=1)  # [B, H, T] each, fp32 gates
        return i_pre.contiguous(), f_pre.contiguous()


class Rwkv7Params(nn.Module):
    """RWKV-7's per-layer additions (Peng et al. 2025, the time-mix block): low-rank decay and in-context learning
    rate projections, the removal-key scale ξ and the replacement mix α."""

    def __init__(self, channels: int, heads: int, head_dim: int, seed: int, rank: int = 64) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        width, rank = heads * head_dim, min(rank, channels)
        self.heads, self.head_dim = heads, head_dim
        self.w0 = nn.Parameter(torch.linspace(-6.0, -1.0, width))  # decays spread from slow to fast, as RWKV-7's
        self.a0 = nn.Parameter(torch.zeros(width))
        self.w_a, self.w_b = _uniform((channels, rank), 1.0 / math.sqrt(channels), g), _uniform((rank, width), 0.1, g)
        self.a_a, self.a_b = _uniform((channels, rank), 1.0 / math.sqrt(channels), g), _uniform((rank, width), 0.1, g)
        self.xi = nn.Parameter(torch.full((width,), 0.85))
        self.alpha = nn.Parameter(torch.ones(width))

    def forward(self, x: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(log decay w, k̃, a, b) [B, H, T, D] for the general-form update, from x [B, T, C] and k [B, H, T, D]."""
        xs = x.flatten(0, 1)

        def heads(t: torch.Tensor) -> torch.Tensor:  # [B·T, H·D] -> [B, H, T, D]
            return t.unflatten(0, x.shape[:2]).unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)

        w_log = heads(-math.exp(-0.5) * torch.sigmoid(self.w0 + torch.tanh(xs @ self.w_a) @ self.w_b).float())
        lr = heads(torch.sigmoid(self.a0 + (xs @ self.a_a) @ self.a_b))
        xi, alpha = (p.view(self.heads, self.head_dim)[None, :, None].to(k.dtype) for p in (self.xi, self.alpha))
        kappa = F.normalize((k * xi).float(), dim=-1).to(k.dtype)
        k_rep = k * (1 + (lr - 1) * alpha)
        return w_log.to(k.dtype), k_rep, -kappa, kappa * lr


@dataclass
class _Carried:
    """One layer's recurrent state across calls: what the last causal prefill and the decode steps since folded in.

    ``tokens``: the tokens in the state (the prefill's, then + Sq per decode step): a decode call's cache must hold
    exactly these plus its new ones. ``state``: fp32 tensors (mLSTM (C, n), RWKV-7 h), or None while deferred;
    then ``source`` holds the prefill's gate source (x [B, T, C]), from which the first decode step builds it with
    the cache's first ``tokens`` keys and values (the prefill's own)."""

    tokens: int
    batch: int
    heads: int
    host: bool  # the gates came from the host's hidden states (else from q with heads merged)
    state: tuple[torch.Tensor, ...] | None = None
    source: torch.Tensor | None = None


class _RecurrentMixer(AttentionBackend):
    """A causal recurrence with per-layer gates from the host's hidden states: forward at causal sites, both ways
    at the others. Subclasses give the gates (`_gates`) and the causal scan (`_scan`, on the kernel or eagerly)."""

    constraints = Constraints(max_head_dim=256, mask=False)
    changes_math = True
    reads_hidden_states = True
    whole_sequence = True
    mechanism = "recurrence"
    routes_by_state = True  # a decode step is taken only when the carried state holds the cache's tokens

    def __init__(self, module_path: str = "", seed: int = 0) -> None:
        super().__init__(module_path, seed)
        self.params: nn.Module | None = None
        self.notes: dict[str, Any] = {}
        self._carried: _Carried | None = None  # the state the next decode step continues (None: no prefill)
        self._decoded = False  # a decode step has run here: later prefills build the state at once

    def unsupported(self, q, k, v, *, causal, mask):
        if q.shape[-2] != k.shape[-2]:
            why = self._not_a_decode(q, k, causal)
            if why is not None:
                return (f"a recurrence replaces self-attention over one sequence; this call has {q.shape[-2]} "
                        f"queries against {k.shape[-2]} keys and is no decode step of the carried state ({why}): "
                        "cross attention, or a KV-cache the state does not hold")
        return super().unsupported(q, k, v, causal=causal, mask=mask)

    def _not_a_decode(self, q: torch.Tensor, k: torch.Tensor, causal: bool) -> str | None:
        """Why a call with fewer queries than keys is not a decode step continuing this layer's state, or None. A
        decode step's keys are the state's tokens followed by its own Sq new ones (their queries). Cheap, and
        reads the state only (the swap asks before routing a call)."""
        c, sq, skv = self._carried, q.shape[-2], k.shape[-2]
        if sq >= skv:
            return "no more keys than queries"
        if sq > 1 and not causal:
            return "several new tokens, not causal among themselves"
        if c is None:
            return "no causal prefill has run on this layer"
        if (q.shape[0], q.shape[1]) != (c.batch, c.heads):
            return f"batch × heads {q.shape[0]} × {q.shape[1]}, the state's {c.batch} × {c.heads}"
        if skv != c.tokens + sq:
            return f"{skv} keys, the state holds {c.tokens} tokens and a decode step adds its {sq}"
        return None

    @staticmethod
    def _covers(q: torch.Tensor, x: torch.Tensor | None) -> bool:
        """The host's hidden states hold one row per query token (the gates' source then)."""
        return x is not None and x.dim() == 3 and x.shape[0] == q.shape[0] and x.shape[1] == q.shape[2]

    def _source(self, q: torch.Tensor, hidden_states: torch.Tensor | None) -> torch.Tensor:
        """The gates' source: the host's hidden states where they cover the tokens, else q with heads merged."""
        x = hidden_states
        host = self._covers(q, x)
        if "gate_source" not in self.notes:
            self.notes["gate_source"] = "hidden_states" if host else "q with heads merged"
        return x.to(q.dtype) if host else merge_heads(q)

    def _gates(self, q, k, x) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        raise NotImplementedError

    def _scan(self, q, k, v, *gates, fused: bool) -> torch.Tensor:
        raise NotImplementedError

    def _final_state(self, k, v, *gates) -> tuple[torch.Tensor, ...]:
        """The fp32 state after the tokens of k, v (their gates: `_gates`'), from a zero state."""
        raise NotImplementedError

    def _step(self, q, k, v, *gates, state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """The recurrence over a decode call's new tokens from ``state``: (h fp32, the state after them)."""
        raise NotImplementedError

    def _run(self, q, k, v, causal: bool, hidden_states: torch.Tensor | None, fused: bool,
             carry: bool = False) -> torch.Tensor:
        x = self._source(q, hidden_states)
        gates, k = self._gates(q, k, x)
        self.notes.setdefault("form", CAUSAL if causal else BIDIRECTIONAL)
        out = self._scan(q, k, v, *gates, fused=fused)
        if not causal:
            back = self._scan(*(t.flip(2) for t in (q, k, v, *gates)), fused=fused)
            out = out + back.flip(2)
        elif carry:  # a prefill: the state a decode step continues, now or (deferred) at the first decode step
            c = _Carried(q.shape[2], q.shape[0], q.shape[1], self._covers(q, hidden_states))
            if self._decoded:
                c.state = self._final_state(k, v, *gates)
            else:
                c.source = x
            self._carried = c
        return out

    def _decode(self, q, k, v, causal: bool, hidden_states: torch.Tensor | None) -> torch.Tensor:
        """A decode step: the new tokens (the cache's last Sq keys and values, gates from their hidden states or
        q) folded into the carried state, h_t read from it; plain PyTorch in fp32, cast to q's dtype."""
        why = self._not_a_decode(q, k, causal)
        if why is not None:  # the swap routes a kind of call once: a later call of it may not continue the state
            where = self.module_path or "a layer"
            raise BackendUnsupportedError(f"backend {self.name!r} cannot take a call of {where} with {q.shape[-2]} "
                                          f"queries against {k.shape[-2]} keys: it is no decode step of the carried "
                                          f"state ({why})")
        c, sq = self._carried, q.shape[-2]
        if self._covers(q, hidden_states) != c.host:
            raise BackendUnsupportedError(f"backend {self.name!r}: the gates of {self.module_path or 'a layer'}'s "
                                          "decode step and of its prefill come from different sources (hidden "
                                          "states, q)")
        if c.state is None:  # deferred at the prefill: built from its gate source and its keys and values
            gates, k_pre = self._gates(q, k[:, :, :c.tokens], c.source)
            c.state, c.source = self._final_state(k_pre, v[:, :, :c.tokens], *gates), None
        gates, k_new = self._gates(q, k[:, :, -sq:], self._source(q, hidden_states))
        out, c.state = self._step(q, k_new, v[:, :, -sq:], *gates, state=c.state)
        c.tokens += sq
        self._decoded = True
        self.notes.setdefault("decode", CARRIED)
        return out.to(q.dtype)

    def __call__(self, q, k, v, *, causal=False, scale=None, mask=None, hidden_states=None):
        if q.shape[-2] != k.shape[-2]:
            return self._decode(q, k, v, causal, hidden_states)
        if not causal:
            self._carried = None  # another sequence: the state no longer continues this layer's last one
        return self._run(q, k, v, causal, hidden_states, fused=_triton_usable(q), carry=causal)

    def scans(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool,
              hidden_states: torch.Tensor | None = None) -> list[tuple[torch.Tensor, ...]]:
        """The inputs of each scan, prepared: (q, k, v, *gates) forward, and at a non-causal site the same reversed
        in time (contiguous copies). A peer's benchmark row runs on these, as its users would hand them over."""
        gates, k = self._gates(q, k, self._source(q, hidden_states))
        forward = (q, k, v, *gates)
        return [forward] if causal else [forward, tuple(t.flip(2).contiguous() for t in forward)]

    def variants(self, q, k, v, *, causal, hidden_states=None):
        return [("kernel", "the kernel alone, gates and reversed copies prepared outside the call",
                 partial(self.prepared, q, k, v, causal=causal, hidden_states=hidden_states))]

    def prepared(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool,
                 hidden_states: torch.Tensor | None = None) -> Callable[[], torch.Tensor]:
        """The kernel alone on inputs prepared outside the call (`scans`): the row a peer is set beside; the
        backend's own row minus this one is the adapter's cost (the gates' projections, the reversed copies)."""
        runs = self.scans(q, k, v, causal=causal, hidden_states=hidden_states)

        def call() -> torch.Tensor:
            out = self._scan(*runs[0], fused=True)
            return out if len(runs) == 1 else out + self._scan(*runs[1], fused=True).flip(2)

        return call

    def eager(self) -> Callable[..., torch.Tensor]:
        def run(q, k, v, *, causal=False, hidden_states=None):
            return self._run(q, k, v, causal, hidden_states, fused=False)

        return run


@register_backend
class MlstmBackend(_RecurrentMixer):
    name = "mlstm"
    description = ("mLSTM with sigmoid input gate (xLSTM's mLSTMsig), TFLA's two-level chunked Triton kernel on "
                   "CUDA; gates from the layer's hidden states; bidirectional at non-causal sites")
    normalize: ClassVar[bool] = False  # as TFLA's speed runs (its "n-False" setting)

    def _gates(self, q, k, x):
        if self.params is None:
            self.params = MlstmGates(x.shape[-1], q.shape[1], _layer_seed(self.module_path, self.seed)).to(
                device=q.device, dtype=q.dtype).eval().requires_grad_(False)
            self.notes.update({"normalize": self.normalize})
        return self.params(x), k

    def _scan(self, q, k, v, i_pre, f_pre, *, fused):
        if fused:
            from mmchar.kernels.mlstm.kernel import mlstm

            return mlstm(q, k, v, i_pre, f_pre, normalize=self.normalize)
        from mmchar.kernels.mlstm.reference import mlstm_eager

        return mlstm_eager(q, k, v, i_pre, f_pre, normalize=self.normalize)

    def _final_state(self, k, v, i_pre, f_pre):
        from mmchar.kernels.mlstm.reference import mlstm_final_state

        return mlstm_final_state(k, v, i_pre, f_pre)

    def _step(self, q, k, v, i_pre, f_pre, *, state):
        from mmchar.kernels.mlstm.reference import mlstm_decode

        return mlstm_decode(q, k, v, i_pre, f_pre, state, normalize=self.normalize)

    def reference(self, q, k, v, *, causal=False):
        from mmchar.kernels.mlstm.reference import mlstm_recurrent_ref

        (i_pre, f_pre), _ = self._gates(q, k, merge_heads(q))
        ref = mlstm_recurrent_ref(q, k, v, i_pre, f_pre, normalize=self.normalize)
        if not causal:
            flip = [t.flip(2) for t in (q, k, v, i_pre, f_pre)]
            ref = ref + mlstm_recurrent_ref(*flip, normalize=self.normalize).flip(2)
        return ref

    def cost(self, q, k, v, *, causal):
        from mmchar.flops import mlstm_cost

        b, h, t, d = q.shape
        return mlstm_cost(b, h, t, d, v.shape[-1], self._channels(q), 1 if causal else 2, q.element_size())

    def _channels(self, q: torch.Tensor) -> int:
        return self.params.w.shape[0] if self.params is not None else q.shape[1] * q.shape[-1]


@register_backend
class Rwkv7Backend(_RecurrentMixer):
    name = "rwkv7"
    description = ("RWKV-7's generalized delta rule (vector-valued decay, in-context learning rate), chunked Triton "
                   "kernel on CUDA; decay and rate from the layer's hidden states; bidirectional at non-causal sites")
    constraints = Constraints(max_head_dim=128, mask=False)

    def unsupported(self, q, k, v, *, causal, mask):
        if v.shape[-1] != q.shape[-1]:
            return f"value head dim {v.shape[-1]} differs from the query's {q.shape[-1]} (RWKV-7's state is d × d)"
        return super().unsupported(q, k, v, causal=causal, mask=mask)

    def _gates(self, q, k, x):
        if self.params is None:
            self.params = Rwkv7Params(x.shape[-1], q.shape[1], q.shape[-1],
                                      _layer_seed(self.module_path, self.seed)).to(device=q.device, dtype=q.dtype).eval()
            self.params.requires_grad_(False)
        w_log, k_rep, a, b = self.params(x, k)
        return (w_log, a, b), k_rep

    def _scan(self, q, k, v, w_log, a, b, *, fused):
        if fused:
            from mmchar.kernels.rwkv7.kernel import rwkv7

            return rwkv7(q, w_log, k, v, a, b, scale=q.shape[-1] ** -0.5)
        from mmchar.kernels.rwkv7.reference import rwkv7_eager

        return rwkv7_eager(q, w_log, k, v, a, b, scale=q.shape[-1] ** -0.5)

    def _final_state(self, k, v, w_log, a, b):
        from mmchar.kernels.rwkv7.reference import rwkv7_final_state

        return (rwkv7_final_state(w_log, k, v, a, b),)

    def _step(self, q, k, v, w_log, a, b, *, state):
        from mmchar.kernels.rwkv7.reference import rwkv7_decode

        out, h = rwkv7_decode(q, w_log, k, v, a, b, state[0], scale=q.shape[-1] ** -0.5)
        return out, (h,)

    def reference(self, q, k, v, *, causal=False):
        from mmchar.kernels.rwkv7.reference import rwkv7_recurrent_ref

        (w_log, a, b), k_rep = self._gates(q, k, merge_heads(q))
        args = (q, w_log, k_rep, v, a, b)
        ref = rwkv7_recurrent_ref(*args, scale=q.shape[-1] ** -0.5)
        if not causal:
            ref = ref + rwkv7_recurrent_ref(*(t.flip(2) for t in args), scale=q.shape[-1] ** -0.5).flip(2)
        return ref

    def cost(self, q, k, v, *, causal):
        from mmchar.flops import rwkv7_cost

        b, h, t, d = q.shape
        c = self.params.w_a.shape[0] if self.params is not None else h * d
        rank = self.params.w_a.shape[1] if self.params is not None else min(64, c)
        return rwkv7_cost(b, h, t, d, c, rank, 1 if causal else 2, q.element_size())


@register_backend
class LlaBackend(AttentionBackend):
    name = "lla"
    description = ("Local Linear Attention: a local linear regression around each query (softmax attention plus a "
                   "ridge-regularised correction), FlashLLA-style Triton kernel with a conjugate-gradient solve on "
                   "CUDA")
    constraints = Constraints(max_head_dim=128, mask=False)
    changes_math = True
    mechanism = "local linear"
    ridge_lambda: ClassVar[float | None] = None  # None: the kernel's default (the paper's)
    cg_iters: ClassVar[int | None] = None

    def __init__(self, module_path: str = "", seed: int = 0) -> None:
        super().__init__(module_path, seed)
        self.notes: dict[str, Any] = {}

    def _options(self) -> dict[str, Any]:
        from mmchar.kernels.lla import reference as ref

        opts = {"ridge_lambda": self.ridge_lambda if self.ridge_lambda is not None else ref.DEFAULT_RIDGE_LAMBDA,
                "cg_iters": self.cg_iters if self.cg_iters is not None else ref.DEFAULT_CG_ITERS}
        if not self.notes:
            self.notes.update(opts)
        return opts

    def unsupported(self, q, k, v, *, causal, mask):
        if v.shape[-1] != q.shape[-1]:
            return f"value head dim {v.shape[-1]} differs from the query's {q.shape[-1]}"
        if causal and q.shape[-2] != k.shape[-2]:
            return "causal LLA needs as many queries as keys"
        return super().unsupported(q, k, v, causal=causal, mask=mask)

    def __call__(self, q, k, v, *, causal=False, scale=None, mask=None, hidden_states=None):
        opts = self._options()
        self.notes.setdefault("form", "causal" if causal else "non-causal")
        if _triton_usable(q):
            from mmchar.kernels.lla.kernel import lla

            return lla(q, k, v, causal=causal, scale=scale, **opts)
        from mmchar.kernels.lla.reference import lla_eager

        return lla_eager(q, k, v, causal=causal, scale=scale, **opts)

    def reference(self, q, k, v, *, causal=False):
        from mmchar.kernels.lla.reference import lla_cg_ref

        return lla_cg_ref(q.float(), k.float(), v.float(), causal=causal, **self._options())

    def eager(self):
        from mmchar.kernels.lla.reference import lla_eager

        def run(q, k, v, *, causal=False, hidden_states=None):
            return lla_eager(q, k, v, causal=causal, **self._options())

        return run

    def cost(self, q, k, v, *, causal):
        from mmchar.flops import lla_cost

        b, h, sq, d = q.shape
        return lla_cost(b, h, sq, k.shape[-2], d, self._options()["cg_iters"], causal, q.element_size())
