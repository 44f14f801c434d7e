"""Which torch device and autocast precision an option names: the rules extraction and finetuning share."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from embedcache.errors import ConfigError


def resolve_device(device: str) -> torch.device:
    """The device `device` names (auto | cpu | cuda | cuda:N; auto = CUDA when present), checked to exist here."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"{device!r}: expected auto, cpu, cuda or cuda:N", param="device") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{device}: CUDA is not available on this machine", param="device")
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise ConfigError(f"{device}: this machine has {torch.cuda.device_count()} CUDA device(s)", param="device")
    return resolved


#: Autocast choices: auto (bf16 where the device supports it), bf16, fp16, none.
AMP_CHOICES = ("auto", "bf16", "fp16", "none")


def resolve_amp(amp: str | None, device: torch.device) -> str | None:
    """The autocast precision the recipe records: "bf16", "fp16" or None. "auto" is bf16 on a CUDA device
    that supports it and None elsewhere; "none" and None are None."""
    if amp is not None and amp not in AMP_CHOICES:
        raise ConfigError(f"{amp!r}: expected one of {', '.join(AMP_CHOICES)}", param="amp")
    if amp == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    return None if amp in (None, "none") else amp


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """torch's intra-op threads set to `count` inside the block, restored after it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
