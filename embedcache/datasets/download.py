"""Opt-in download of the WILDS-hosted paper datasets through the `wilds` package.

Adapters never download; `embedcache datasets download NAME --root DIR` calls `download_wilds`. The
`wilds` package is not a dependency: it is imported here, when a download is asked for.
"""

from __future__ import annotations

from pathlib import Path

from embedcache.errors import ConfigError

#: Adapter name → (WILDS dataset, version): the versions whose folder layout the adapters read.
WILDS_DATASETS = {"waterbirds": ("waterbirds", "1.0"), "iwildcam": ("iwildcam", "2.0"), "amazon": ("amazon", "2.1")}


def download_wilds(name: str, root: str | Path) -> Path:
    """Download (and unpack) dataset `name` under `root`; returns the dataset folder, e.g. root/amazon_v2.1."""
    if name not in WILDS_DATASETS:
        raise ConfigError(f"no download for {name!r}: WILDS hosts {', '.join(WILDS_DATASETS)}; "
                          "see data/README.md for the others")
    try:
        import wilds
    except ImportError:
        raise ConfigError("downloading needs the `wilds` package, which is not installed: pip install wilds") from None
    dataset, version = WILDS_DATASETS[name]
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    wilds.get_dataset(dataset=dataset, version=version, root_dir=str(root), download=True)
    return root / f"{dataset}_v{version}"
