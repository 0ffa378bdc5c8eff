"""The mixer backends (mmchar/mixers.py): mLSTM, RWKV-7 and LLA routed into real workloads on the CPU (their plain
PyTorch paths; the Triton kernels have their own tests in tests/kernels/), each layer's form recorded, the
mechanism's gates computed from the layer's hidden states, and the backends' maths against their references."""

from __future__ import annotations

import json

import pytest
import torch

from mmchar.backends import get_backend
from mmchar.cli import main
from mmchar.mixers import BIDIRECTIONAL, CAUSAL

MIXERS = ("mlstm", "rwkv7", "lla")
FAST = ["--steps", "2", "--repeat", "1", "--profile-steps", "1", "--no-trace"]


def _only_meta(store):
    (run,) = [p for p in store.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return json.loads((run / "meta.json").read_text())


@pytest.mark.parametrize("name", MIXERS)
def test_a_mixer_replaces_self_attention_and_cross_attention_keeps_softmax(name, tmp_path, capsys):
    assert main(["profile", "sd15", "--backend", name, *FAST, "--store", str(tmp_path)]) == 0, capsys.readouterr().err
    meta = _only_meta(tmp_path)
    sites, backends = meta["attention_layers"], meta["backend_per_layer"]
    spatial = [m for m, s in sites.items() if s == "spatial"]
    cross = [m for m, s in sites.items() if s == "cross"]
    assert spatial and cross and {backends[m] for m in spatial} == {name}
    assert name not in {backends[m] for m in cross}  # cross attention keeps a softmax backend
    notes = meta["backend_notes"]
    assert all(notes[m]["form"] == (BIDIRECTIONAL if name != "lla" else "non-causal") for m in spatial)
    if name != "lla":
        assert all(notes[m]["gate_source"] == "hidden_states" for m in spatial)
    assert meta["backend_changes_math"] and "speed study" in capsys.readouterr().err


def test_a_causal_site_runs_the_forward_scan_and_decode_steps_go_to_the_fallback(tmp_path, capsys):
    code = main(["profile", "llamagen", "--backend", "rwkv7", "--fallback", "sdpa", "--kv-cache", "dynamic", *FAST,
                 "--store", str(tmp_path)])
    assert code == 0, capsys.readouterr().err
    meta = _only_meta(tmp_path)
    causal = [m for m, s in meta["attention_layers"].items() if s == "causal"]
    assert causal and all(meta["backend_notes"][m]["form"] == CAUSAL for m in causal)
    assert all("sdpa" in meta["backend_later_calls"][m] for m in causal)  # the KV-cache decode calls


@pytest.mark.parametrize("name", ["mlstm", "rwkv7"])
def test_bidirectional_form_is_a_forward_and_a_backward_scan_summed(name):
    torch.manual_seed(0)
    b, h, t, d = 1, 2, 24, 16
    q, k, v = (torch.randn(b, h, t, d) for _ in range(3))
    x = torch.randn(b, t, 32)
    mixer = get_backend(name)("unet.mid.attn1", 0)
    both = mixer(q, k, v, causal=False, hidden_states=x)
    fwd = mixer(q, k, v, causal=True, hidden_states=x)
    rev = mixer(q.flip(2), k.flip(2), v.flip(2), causal=True, hidden_states=x.flip(1)).flip(2)
    torch.testing.assert_close(both, fwd + rev, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(fwd, rev)  # the two directions differ: the sum is not one scan doubled


@pytest.mark.parametrize("name", MIXERS)
def test_the_cpu_path_is_the_fp32_reference(name):
    torch.manual_seed(1)
    q, k, v = (torch.randn(1, 2, 20, 16) for _ in range(3))
    mixer = get_backend(name)("transformer.blocks.0.attn1", 0)
    for causal in (False, True):
        out = mixer.eager()(q, k, v, causal=causal)
        torch.testing.assert_close(out, mixer.reference(q, k, v, causal=causal), rtol=2e-3, atol=2e-3)


def test_gates_are_the_layers_own_seeded_parameters():
    x = torch.randn(1, 10, 32)
    q = k = torch.randn(1, 2, 10, 16)
    one, same, other = (get_backend("mlstm")(p, 0) for p in ("a.attn1", "a.attn1", "b.attn1"))
    g1, g2, g3 = (m._gates(q, k, x)[0][1] for m in (one, same, other))
    torch.testing.assert_close(g1, g2)
    assert not torch.allclose(g1, g3)
    assert torch.sigmoid(g1).mean() > 0.9  # xLSTM's forget-gate initialisation: long memories


@pytest.mark.parametrize("name", MIXERS)
def test_cost_counts_the_mechanism_and_both_directions(name):
    q = k = v = torch.randn(1, 2, 64, 16)
    mixer = get_backend(name)("a.attn1", 0)
    flops_causal, _ = mixer.cost(q, k, v, causal=True)
    flops_full, moved = mixer.cost(q, k, v, causal=False)
    assert flops_causal > 0 and moved > 0
    if name != "lla":
        assert flops_full == pytest.approx(2 * flops_causal)  # a forward and a backward scan
    else:
        assert flops_full > flops_causal  # every key against every query


def test_cross_attention_and_masks_are_refused_by_the_recurrences():
    q = torch.randn(1, 2, 8, 16)
    kv = torch.randn(1, 2, 5, 16)
    for name in ("mlstm", "rwkv7"):
        mixer = get_backend(name)("a.attn2", 0)
        assert "queries against" in mixer.unsupported(q, kv, kv, causal=False, mask=None)
        assert "mask" in mixer.unsupported(q, q, q, causal=False, mask=torch.ones(8, 8, dtype=torch.bool))
