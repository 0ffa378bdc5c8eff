"""Offline model construction shared by every workload: meta-device build, seeded materialisation, tokenizers.

Random initialisation of an 860M-parameter UNet on the CPU takes seconds; building on the ``meta`` device
and initialising directly on the target device takes milliseconds on a GPU. Buffers computed in ``__init__``
(position ids, sinusoidal tables) are built for real and kept, only parameters go to ``meta``.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmchar.errors import WeightsError, first_line


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Within the block, newly registered parameters live on the meta device (buffers stay real)."""
    original = nn.Module.register_parameter

    def register(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        original(module, name, param)
        if param is not None and not param.is_meta:  # a meta parameter registered again is a tie: keep it
            p = module._parameters[name]
            module._parameters[name] = nn.Parameter(p.to("meta"), requires_grad=p.requires_grad)

    nn.Module.register_parameter = register  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = original  # type: ignore[method-assign]


def materialize(model: nn.Module, device: torch.device, dtype: torch.dtype, seed: int) -> nn.Module:
    """Allocate every meta parameter on ``device`` and initialise it, seeded, with the module's own init.

    Modules with ``reset_parameters`` (Linear, Conv, norms, Embedding) use it; other parameters get
    N(0, 0.02) for matrices, ones for norm-like scales and zeros for biases. Returns the model in ``dtype``.
    """
    torch.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed(seed)
    made: dict[int, nn.Parameter] = {}  # meta parameter -> its real one: tied weights stay one tensor
    users: dict[int, int] = {}  # meta parameter -> the modules holding it (a tie: more than one)
    for module in model.modules():
        for p in module._parameters.values():
            if p is not None and p.is_meta:
                users[id(p)] = users.get(id(p), 0) + 1
    for module in model.modules():
        own = [(n, p) for n, p in module._parameters.items() if p is not None]
        if not own or not any(p.is_meta for _, p in own):
            continue
        if all(id(p) in made for _, p in own if p.is_meta):  # every one of them is a tie, initialised already
            for n, p in own:
                module._parameters[n] = made.get(id(p), p)
            continue
        own_only = []  # parameters no other module holds: cast right after their initialisation
        for n, p in own:
            if p.is_meta:
                real = made.get(id(p))
                if real is None:
                    real = made[id(p)] = nn.Parameter(torch.empty_like(p, device=device), requires_grad=False)
                module._parameters[n] = real
                if users.get(id(p)) == 1:
                    own_only.append(real)
        _initialise(module)
        # cast as we go: a 32B transformer initialised whole in fp32 would need 128 GB before its bf16 cast; a tied
        # parameter waits for the final cast (a later holder's init may draw it again, as it did in fp32)
        for p in own_only:
            if p.is_floating_point() and p.dtype != dtype:
                p.data = p.data.to(dtype)
    model.to(device=device, dtype=dtype)
    model.requires_grad_(False)
    return model.eval()


def model_class(spec: str) -> Any:
    """``"diffusers:UNet2DConditionModel"`` / ``"transformers:T5EncoderModel"`` / a model of our own
    (``"mmchar.workloads.phenaki.pipeline:MaskedVideoTransformer"``) -> the class."""
    import importlib

    library, _, name = spec.partition(":")
    if not (library in ("diffusers", "transformers") or library.startswith("mmchar.workloads.")) or not name:
        raise ValueError(f"component spec {spec!r}: write 'diffusers:Class', 'transformers:Class' or "
                         "'mmchar.workloads.<family>.<module>:Class'")
    return getattr(importlib.import_module(library), name)


def _is_transformers_model(cls: Any) -> bool:
    """A transformers model class, or a class of ours derived from one (``LlamaGenTransformer``): it takes its
    Config object. Asked of the class's bases, so that nothing imports transformers to answer."""
    return any(c.__name__ == "PreTrainedModel" and c.__module__.startswith("transformers.")
               for c in getattr(cls, "__mro__", ()))


def _construct(cls: Any, config: Any) -> nn.Module:
    """``cls(**config)`` for diffusers models and models of our own; transformers models (and ours derived from
    one) take their Config object, built from the dict (extra keys become its attributes)."""
    # a copy: transformers' configs write into nested dicts they are given (Qwen2.5-VL fills rope_scaling's
    # rope_theta), which would change the run's recorded configuration, and its hash, after it was planned
    config = copy.deepcopy(config)
    if isinstance(config, dict) and getattr(cls, "config_class", None) is not None and _is_transformers_model(cls):
        config = cls.config_class(**config)
    return cls(config) if hasattr(config, "to_dict") else cls(**config)


def _initialise(module: nn.Module) -> None:
    """The module's own ``reset_parameters`` where it has one, else the N(0, 0.02) / ones / zeros rule."""
    reset = getattr(module, "reset_parameters", None)
    with torch.no_grad():
        if callable(reset):
            reset()
            return
        for n, p in module._parameters.items():
            if p is None:
                continue
            if p.dim() >= 2:
                p.normal_(0.0, 0.02)
            elif n.endswith("bias") or "bias" in n:
                p.zero_()
            elif any(k in n for k in ("weight", "scale", "gamma", "norm")):
                p.fill_(1.0)
            else:
                p.normal_(0.0, 1.0 / math.sqrt(max(p.numel(), 1)))


def build_module(cls: Any, config: Any, device: torch.device, dtype: torch.dtype, seed: int) -> nn.Module:
    """Construct the model (`_construct`) offline with parameters on the meta device, then materialise it, seeded."""
    with parameters_on_meta():
        model = _construct(cls, config)
    return materialize(model, device, dtype, seed)


def count_parameters(cls: Any, config: Any) -> int:
    """Parameters of ``cls`` built from ``config``, counted on the meta device (nothing allocated)."""
    with parameters_on_meta():
        model = _construct(cls, config)
    return sum(p.numel() for p in model.parameters())


# CLIP's byte-level alphabet (GPT-2's bytes_to_unicode), so any prompt tokenizes to known ids with no files.
def _byte_alphabet() -> list[str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def clip_tokenizer(max_length: int = 77) -> Any:
    """A CLIPTokenizer with an in-memory character-level vocabulary (ids < 515): sequence lengths and
    padding behave as with the real 49 408-token vocabulary, which only changes which ids come out."""
    from transformers import CLIPTokenizer

    chars = _byte_alphabet()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": 256 + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length, unk_token="<|endoftext|>",
                         pad_token="<|endoftext|>")


def word_level_tokenizer(specials: dict[str, int], split: str) -> Any:
    """A `tokenizers.Tokenizer` with no files: ``split`` (a model's pre-tokenizer regex) cuts the text into the pieces
    the real tokenizer would, each piece one token of a word-level vocabulary that holds only ``<unk>`` and the
    special tokens: sequence lengths and templates behave as with the real vocabulary, only the ids differ. The
    workloads' own factories wrap it in a transformers tokenizer with their special-token names and lengths."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel(dict(specials), unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(split), behavior="isolated")
    tok.add_special_tokens([s for s in specials if s != "<unk>"])
    return tok


# Llama-3's pre-tokenizer split (the tiktoken-style pattern of meta-llama's Llama-3 / 3.1 tokenizer.json) and the
# special tokens chat templates use (ids 1-5 in ours; every other piece is <unk>, id 0)
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_SPECIALS = ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")


def llama3_tokenizer(encoder: dict[str, Any], eos: str, max_length: int) -> Any:
    """A Llama-3-style fast tokenizer with no files (`word_level_tokenizer` over `LLAMA3_SPLIT`): ``<|begin_of_text|>``
    prepended, ``eos`` as EOS and padding, right padding, the encoder's ``max_position_embeddings`` (else
    ``max_length``) as its length. Ids stay below 6, so tiny text encoders need a vocabulary of at least 6."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, **{s: i + 1 for i, s in enumerate(LLAMA3_SPECIALS)}}
    tok = word_level_tokenizer(vocab, LLAMA3_SPLIT)
    bos = LLAMA3_SPECIALS[0]
    tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A $B",
                                                       special_tokens=[(bos, vocab[bos])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=eos,
                                   unk_token="<unk>", padding_side="right",
                                   model_max_length=encoder.get("max_position_embeddings", max_length))


def load_pipeline(cls: Any, folder: str, dtype: torch.dtype, device: torch.device, **kwargs: Any) -> Any:
    """``cls.from_pretrained(folder)`` for a local folder, with one-line errors for unreadable folders."""
    path = Path(folder)
    if not path.is_dir():
        raise WeightsError(f"pipeline folder {folder!r} does not exist or is not a folder; pass a local diffusers "
                           "pipeline folder (the one holding model_index.json)")
    if not (path / "model_index.json").is_file():
        raise WeightsError(f"{folder!r} holds no model_index.json; pass a diffusers pipeline folder "
                           "(written by save_pretrained)")
    quiet_progress_bars()
    try:
        pipe = cls.from_pretrained(str(path), torch_dtype=dtype, local_files_only=True, **kwargs)
    except Exception as e:  # diffusers raises OSError, ValueError, EnvironmentError, KeyError ...
        raise WeightsError(f"cannot load pipeline from {folder!r}: {first_line(e)}") from e
    return pipe.to(device)


def quiet_progress_bars() -> None:
    """diffusers' and transformers' loading bars would interleave with mmchar's own output."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


def check_steps(scheduler_config: dict[str, Any] | None, steps: int, owner: str) -> None:
    """Refuse a step count the scheduler itself would refuse, before any model is built (a DDIM or DDPM
    scheduler takes at most its ``num_train_timesteps``): the scheduler is made from its config and asked, which
    is what the pipeline will do, in milliseconds. Schedulers that need more than the count to set their steps
    (a flow-matching shift's ``mu``) are not asked."""
    if not scheduler_config or "_class_name" not in scheduler_config:
        return
    import diffusers

    from mmchar.errors import InvalidParameterError

    cfg = dict(scheduler_config)
    cls = getattr(diffusers, cfg.pop("_class_name"), None)
    if cls is None or not hasattr(cls, "set_timesteps"):
        return
    try:
        cls.from_config(cfg).set_timesteps(steps)
    except ValueError as e:
        text = " ".join(str(e).split())
        if "num_inference_steps" in text or str(steps) in text:
            limit = cfg.get("num_train_timesteps")
            hint = f"; use at most {limit}" if limit else ""
            raise InvalidParameterError(f"steps={steps}: {owner}'s {cls.__name__} refuses it ({text}){hint}") from None
    except Exception:  # noqa: BLE001 (a scheduler that needs pipeline inputs to set its steps: not checked here)
        return
