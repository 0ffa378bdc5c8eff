"""Offline construction: materialising in a low-precision dtype gives the same weights as initialising in fp32 and
casting the whole model at the end, while never holding the whole model in fp32 (the 32B FLUX.2 transformer would
need 128 GB)."""

import torch
from torch import nn

from mmchar.workloads.build import materialize, parameters_on_meta


class _Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.proj = nn.Linear(16, 32)
        self.norm = nn.LayerNorm(32)
        self.scale = nn.Parameter(torch.empty(32))
        self.head = nn.Linear(16, 50)  # its own bias beside a tied weight: its init draws the tie again
        self.head.weight = self.embed.weight  # a tie stays one tensor


def test_low_precision_materialise_matches_fp32_then_cast() -> None:
    with parameters_on_meta():
        a = _Tied()
    with parameters_on_meta():
        b = _Tied()
    ref = materialize(a, torch.device("cpu"), torch.float32, seed=3).to(torch.bfloat16)
    low = materialize(b, torch.device("cpu"), torch.bfloat16, seed=3)
    assert low.head.weight is low.embed.weight
    for (name, p), (_, q) in zip(ref.named_parameters(), low.named_parameters()):
        assert q.dtype == torch.bfloat16, name
        assert torch.equal(p, q), name


def test_peak_is_one_module_in_fp32(monkeypatch) -> None:
    """Each module's parameters are cast right after their initialisation: the fp32 bytes alive at once stay
    those of one module, not the model's."""
    alive: list[int] = []
    real_init = nn.Linear.reset_parameters

    def watch(self: nn.Linear) -> None:
        real_init(self)
        alive.append(sum(p.numel() for m in model.modules() for p in m._parameters.values()
                         if p is not None and not p.is_meta and p.dtype == torch.float32))

    with parameters_on_meta():
        model = nn.Sequential(*[nn.Linear(64, 64) for _ in range(8)])
    monkeypatch.setattr(nn.Linear, "reset_parameters", watch)
    materialize(model, torch.device("cpu"), torch.bfloat16, seed=0)
    assert len(alive) == 8 and max(alive) == 64 * 64 + 64
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
