"""Which torch device an option names: the one rule extraction and finetuning share."""

from __future__ import annotations

import torch

from embedcache.errors import ConfigError


def resolve_device(device: str) -> torch.device:
    """The device `device` names (auto | cpu | cuda | cuda:N; auto = CUDA when present), checked to exist here."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"--device {device!r}: expected auto, cpu, cuda or cuda:N") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available on this machine")
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise ConfigError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return resolved
