"""The mixer backends (mmchar/mixers.py): mLSTM, RWKV-7 and LLA routed into real workloads on the CPU (their plain
PyTorch paths; the Triton kernels have their own tests in tests/kernels/), each layer's form recorded, the
mechanism's gates computed from the layer's hidden states, the backends' maths against their references, and the
recurrences' KV-cache decode steps continuing the state their prefill left."""

from __future__ import annotations

import json

import pytest
import torch

from mmchar.backends import get_backend
from mmchar.cli import main
from mmchar.errors import BackendUnsupportedError
from mmchar.mixers import BIDIRECTIONAL, CARRIED, CAUSAL

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


def test_a_causal_site_runs_the_forward_scan_and_decode_steps_carry_the_state(tmp_path, capsys):
    """llamagen with a growing KV cache under both recurrences: the prefill is the forward scan and every decode
    step continues the layer's state, so none of the layers' later calls goes to the fallback."""
    code = main(["compare", "llamagen", "--backends", "math,mlstm,rwkv7", "--fallback", "math", "--kv-cache",
                 "dynamic", *FAST, "--store", str(tmp_path)])
    assert code == 0, capsys.readouterr().err
    metas = {m["backend"]: m for m in (json.loads((p / "meta.json").read_text()) for p in tmp_path.iterdir()
                                       if (p / "meta.json").is_file())}
    assert set(metas) == {"math", "mlstm", "rwkv7"}
    for name in ("mlstm", "rwkv7"):
        meta = metas[name]
        causal = [m for m, s in meta["attention_layers"].items() if s == "causal"]
        assert causal and {meta["backend_per_layer"][m] for m in causal} == {name}
        assert not meta.get("backend_later_calls"), meta.get("backend_later_calls")  # the decode steps stayed
        notes = meta["backend_notes"]
        assert all(notes[m]["form"] == CAUSAL and notes[m]["decode"] == CARRIED for m in causal)


def _sequence(b=2, h=2, t=14, d=16, channels=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, t, d, generator=g) for _ in range(3))
    return q, k, v, torch.randn(b, t, channels, generator=g)


def _decode_from(mixer, q, k, v, x, n, *, hidden=True):
    """A prefill on tokens [0, n), then tokens n, n+1, ... one by one against the growing cache, as a KV-cache
    decode loop calls a layer: the outputs [B, H, T − n, Dv] of the decode steps."""
    hs = (lambda sl: x[:, sl]) if hidden else (lambda sl: None)
    mixer(q[:, :, :n], k[:, :, :n], v[:, :, :n], causal=True, hidden_states=hs(slice(0, n)))
    outs = []
    for t in range(n, q.shape[2]):
        cache_k, cache_v = k[:, :, :t + 1], v[:, :, :t + 1]
        assert mixer.unsupported(q[:, :, t:t + 1], cache_k, cache_v, causal=False, mask=None) is None
        outs.append(mixer(q[:, :, t:t + 1], cache_k, cache_v, causal=False, hidden_states=hs(slice(t, t + 1))))
    return torch.cat(outs, 2)


@pytest.mark.parametrize("name,normalize", [("mlstm", False), ("mlstm", True), ("rwkv7", None)])
@pytest.mark.parametrize("hidden", [True, False], ids=["hidden_states", "q-merged"])
def test_decode_steps_continue_the_prefills_state(name, normalize, hidden):
    """Prefill [0, n), decode n, n+1, n+2: the causal call on the whole [0, n + 3) at those positions (fp32). Twice:
    the first generation builds the state at its first decode step, the next (the layer has decoded) at the
    prefill; the second prefill, shorter, resets the state."""
    q, k, v, x = _sequence()
    mixer = get_backend(name)("transformer.layers.0.attn", 0)
    if normalize is not None:
        mixer.normalize = normalize
    hs = x if hidden else None
    for n in (11, 6):
        full = mixer(q[:, :, :n + 3], k[:, :, :n + 3], v[:, :, :n + 3], causal=True,
                     hidden_states=None if hs is None else hs[:, :n + 3])
        dec = _decode_from(mixer, q[:, :, :n + 3], k[:, :, :n + 3], v[:, :, :n + 3], x[:, :n + 3], n, hidden=hidden)
        assert dec.dtype == q.dtype and dec.shape == (2, 2, 3, 16)
        torch.testing.assert_close(dec, full[:, :, n:], rtol=1e-5, atol=1e-5)
        assert mixer.notes["decode"] == CARRIED and mixer.notes["form"] == CAUSAL
    assert mixer._carried.state is not None and mixer._carried.tokens == 9


@pytest.mark.parametrize("name", ["mlstm", "rwkv7"])
def test_a_decode_the_state_does_not_hold_is_refused(name):
    """`unsupported` names why a call with fewer queries than keys is no decode step (no prefill yet, a cache
    longer or shorter than the state's tokens + 1, another batch, a non-causal call) and changes nothing; the
    call itself refuses it too; a new prefill resets the state, a bidirectional call drops it."""
    q, k, v, x = _sequence()
    mixer = get_backend(name)("transformer.layers.0.attn", 0)
    step = lambda t, kv=None, b=2: (q[:b, :, t:t + 1], k[:b, :, :kv or t + 1], v[:b, :, :kv or t + 1])  # noqa: E731
    assert "no causal prefill" in mixer.unsupported(*step(8), causal=False, mask=None)
    mixer(q[:, :, :8], k[:, :, :8], v[:, :, :8], causal=True, hidden_states=x[:, :8])
    for args, why in [(step(8, kv=10), "10 keys, the state holds 8 tokens"), (step(8, kv=5), "5 keys"),
                      (step(8, b=1), "batch × heads 1 × 2")]:
        reason = mixer.unsupported(*args, causal=False, mask=None)
        assert "queries against" in reason and why in reason, reason
        with pytest.raises(BackendUnsupportedError, match="no decode step"):
            mixer(*args, causal=False)
    several = (q[:, :, 8:10], k[:, :, :10], v[:, :, :10])
    assert "not causal" in mixer.unsupported(*several, causal=False, mask=None)
    assert mixer.unsupported(*several, causal=True, mask=None) is None  # two new tokens, causal among themselves
    assert mixer._carried.tokens == 8 and mixer._carried.state is None  # asking changed nothing
    mixer(*step(8), causal=False, hidden_states=x[:, 8:9])
    assert mixer.unsupported(*step(9), causal=False, mask=None) is None
    with pytest.raises(BackendUnsupportedError, match="different sources"):  # prefill from hidden states, not q
        mixer(*step(9), causal=False)
    mixer(q[:, :, :5], k[:, :, :5], v[:, :, :5], causal=True, hidden_states=x[:, :5])  # a new generation
    assert mixer.unsupported(*step(9), causal=False, mask=None) is not None
    assert mixer.unsupported(*step(5), causal=False, mask=None) is None
    mixer(q, k, v, causal=False, hidden_states=x)  # a bidirectional call: another sequence, the state dropped
    assert "no causal prefill" in mixer.unsupported(*step(5), causal=False, mask=None)


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


def test_the_swap_asks_a_stateful_mixer_about_every_decode_step():
    """A decode step the carried state does not hold goes to --fallback (recorded), and the next one that it holds
    comes back to the mixer: the swap does not cache the first answer for decode calls of a stateful backend."""
    from mmchar.swap import LayerRoute, SwapState

    q, k, v, _ = _sequence()
    route = LayerRoute("model.layers.0.self_attn", SwapState("mlstm", "math"), get_backend("mlstm"),
                       get_backend("math"), [], 0)
    route.attend(q[:, :, :8], k[:, :, :8], v[:, :, :8], None, True, None)  # the prefill binds the mixer
    mixer = route.backend
    assert mixer.name == "mlstm" and mixer.routes_by_state and not get_backend("math").routes_by_state
    step = lambda t, kv: (q[:, :, t:t + 1], k[:, :, :kv], v[:, :, :kv])  # noqa: E731
    route.attend(*step(8, 9), None, False, None)
    assert mixer._carried.tokens == 9 and not route.state.later_fallback
    off = route.attend(*step(9, 11), None, False, None)  # a cache one token too long: not the state's
    assert "model.layers.0.self_attn" in route.state.later_fallback and mixer._carried.tokens == 9
    torch.testing.assert_close(off, get_backend("math")()(*step(9, 11), causal=False))
    route.attend(*step(9, 10), None, False, None)  # the state's own next token: the mixer again
    assert mixer._carried.tokens == 10
    assert (True, True, True) in route.routes and (True, False, False) not in route.routes
