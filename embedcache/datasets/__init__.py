"""Dataset adapter registry. `create_dataset("manifest", "data/x.csv")` → a `DatasetAdapter`.

Each adapter module registers itself with `@register_dataset`; importing this package imports them all.
"""

from __future__ import annotations

import inspect
from pathlib import Path

from embedcache.datasets import (amazon, imagefolder, iwildcam, jsonl, manifest, treeperson,  # noqa: F401
                                 waterbirds, waterbirds_variant)  # (registration)
from embedcache.datasets.base import DATASETS, DatasetAdapter, register_dataset
from embedcache.errors import ConfigError

__all__ = ["DATASETS", "DatasetAdapter", "create_dataset", "register_dataset"]


def create_dataset(name: str, root: str | Path, **options) -> DatasetAdapter:
    """The adapter `name` over `root`; `options` are the adapter's keyword options (CLI: -o key=value)."""
    cls = DATASETS.get(name)
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "root")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        takes = ", ".join(accepted) if accepted else "no options"
        raise ConfigError(f"dataset {name!r} does not take option(s) {unknown}; it takes: {takes}")
    return cls(root, **options)
