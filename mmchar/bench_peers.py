"""The peers `mmchar bench-attn` sets beside mmchar's mixer kernels, each called as its own users call it: its
native layout and API, on the same inputs (the layer's gates, the reversed copies of the bidirectional form)
prepared outside the timed call. A peer whose package is missing is a skipped row that says how to install it.

- ``mlstm``: TFLA's own mLSTMsig kernel (``mlstm_kernels`` 2.0.6, ``mmchar[mlstm]``), [B, NH, S, D] with gates
  [B, NH, S], the backend's normalisation setting, chunk 128 (its published setting);
- ``rwkv7``: flash-linear-attention's ``chunk_rwkv7`` (``fla-core`` 0.6.0, ``mmchar[fla]``), [B, T, H, D];
- ``linear``: flash-linear-attention's ``chunk_linear_attn`` on the same ReLU feature maps, [B, T, H, D], with
  its own normalisation on (the maths of ours), and with it off beside our kernel's ``normalize=False`` row
  (fla's fast path: like for like); causal only (fla has no non-causal linear attention).

A builder returns None where the peer has no form for the call (a non-causal shape of a causal-only peer): the
row is skipped with the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

Peer = Callable[[Any, torch.Tensor, torch.Tensor, torch.Tensor, bool, torch.Tensor | None], Callable[[], Any] | None]


def _tfla(backend: Any, q, k, v, causal: bool, host) -> Callable[[], torch.Tensor]:
    from mlstm_kernels.torch.chunkwise.triton_xl_chunk_siging import mlstm_siging_chunkwise__xl_chunk as tfla

    runs = backend.scans(q, k, v, causal=causal, hidden_states=host)

    def call() -> torch.Tensor:
        outs = [tfla(*run, normalize=backend.normalize, chunk_size=128, autocast_kernel_dtype=q.dtype)
                for run in runs]
        return outs[0] if len(outs) == 1 else outs[0] + outs[1].flip(2)

    return call


def _fla_rwkv7(backend: Any, q, k, v, causal: bool, host) -> Callable[[], torch.Tensor]:
    from fla.ops.rwkv7 import chunk_rwkv7

    # fla's layout [B, T, H, D] and argument order (r, w, k, v, a, b), made before the timed call
    runs = [tuple(run[i].transpose(1, 2).contiguous() for i in (0, 3, 1, 2, 4, 5))
            for run in backend.scans(q, k, v, causal=causal, hidden_states=host)]
    scale = q.shape[-1] ** -0.5

    def call() -> torch.Tensor:
        outs = [chunk_rwkv7(*run, scale=scale)[0] for run in runs]
        return outs[0] if len(outs) == 1 else outs[0] + outs[1].flip(1)

    return call


def _fla_linear(backend: Any, q, k, v, causal: bool, host,
                normalize: bool = True) -> Callable[[], torch.Tensor] | None:
    if not causal:
        return None
    from fla.ops.linear_attn import chunk_linear_attn

    from mmchar.kernels.linear_attn.reference import feature_map

    # the feature maps and fla's layout made before the timed call; fla scales q (1.0: the maps carry no scale)
    fq, fk, fv = (t.transpose(1, 2).contiguous() for t in (feature_map(q, backend.feature),
                                                          feature_map(k, backend.feature), v))
    return lambda: chunk_linear_attn(fq, fk, fv, scale=1.0, normalize=normalize)[0]


# backend name -> (row name, the package it needs, how to install it, builder)
PEERS: dict[str, list[tuple[str, str, str, Peer]]] = {
    "mlstm": [("mlstm_kernels TFLA", "mlstm_kernels", "pip install 'mmchar[mlstm]'", _tfla)],
    "rwkv7": [("fla chunk_rwkv7", "fla", "pip install 'mmchar[fla]'", _fla_rwkv7)],
    "linear": [("fla chunk_linear_attn", "fla", "pip install 'mmchar[fla]'", _fla_linear),
               ("fla chunk_linear_attn normalize off", "fla", "pip install 'mmchar[fla]'",
                lambda *a: _fla_linear(*a, normalize=False))],
}
