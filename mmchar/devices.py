"""Device and dtype names as users type them, checked once."""

from __future__ import annotations

import torch

from mmchar.errors import DeviceUnavailableError, InvalidParameterError

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
          "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def resolve_device(name: str | None) -> torch.device:
    """``None`` means CUDA when present, else the CPU; a device that is absent is an error naming those present."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise DeviceUnavailableError(f"unknown device {name!r}; valid devices: {', '.join(available_devices())}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceUnavailableError(f"device {name!r} is not available here (no CUDA device); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceUnavailableError(f"device {name!r} is not available; valid devices: {', '.join(available_devices())}")
    elif dev.type != "cpu":
        raise DeviceUnavailableError(f"device {name!r} is not supported; valid devices: {', '.join(available_devices())}")
    return dev


def available_devices() -> list[str]:
    devs = ["cpu"]
    if torch.cuda.is_available():
        devs += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return devs


def resolve_dtype(name: str | None, device: torch.device) -> torch.dtype:
    """``None`` means bf16 on CUDA and fp32 on the CPU (docs/conventions.md, "Measurement passes")."""
    if name is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        return DTYPES[name.lower()]
    except KeyError:
        raise InvalidParameterError(f"unknown dtype {name!r}; valid dtypes: fp32, fp16, bf16") from None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
