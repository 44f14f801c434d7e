"""Versions of the libraries that shape the numbers: recorded in every cache and every run header."""

from __future__ import annotations

import embedcache


def library_versions() -> dict:
    """Versions of the libraries that shape the numbers, recorded in every cache and run."""
    import importlib.metadata as md

    versions = {"embedcache": embedcache.__version__}
    for name in ("torch", "torchvision", "timm", "transformers", "numpy", "h5py"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return versions
