"""Small unlabelled pools for the workflow tests: a manifest CSV (texts or images) and its cache."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import numpy as np
from helpers import recipe

from embedcache.cache import EmbeddingCache
from embedcache.datasets import create_dataset

CLASSES = ("negative", "positive")


def write_pool(folder: Path, n: int = 60, dim: int = 8, seed: int = 0, texts: Sequence[str] | None = None,
               images: bool = False, recipe_changes: dict | None = None, name: str = "cache.h5") -> tuple[Path, dict]:
    """A manifest of n unlabelled examples (80 % train, 20 % val, a `topic` group) and a float32 cache whose
    first coordinate separates the hidden classes. Returns (cache path, id → hidden class name)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 2, n)
    topics = rng.choice(["books", "kitchen"], n)
    ids = [f"doc{i:03d}" for i in range(n)]
    rows = []
    for i in range(n):
        row = {"id": ids[i], "topic": topics[i], "split": "train" if i < 0.8 * n else "val"}
        if images:
            from PIL import Image

            (folder / "images").mkdir(exist_ok=True)
            Image.new("RGB", (8, 8), (200 * int(truth[i]), 80, 120)).save(folder / "images" / f"{ids[i]}.png")
            row["path"] = f"images/{ids[i]}.png"
        else:
            row["text"] = texts[i] if texts is not None else f"review {i} of a {topics[i]} product"
        rows.append(row)
    manifest = folder / "manifest.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    x[:, 0] += 2.5 * (2 * truth - 1)
    dataset = create_dataset("manifest", manifest, unlabelled=True)
    cache = EmbeddingCache.write(folder / name, x, dataset.metadata, recipe=recipe(**(recipe_changes or {})),
                                 dataset=dataset.describe())
    return cache, {ids[i]: CLASSES[truth[i]] for i in range(n)}
