"""Small builders shared by tests (importable because pytest puts tests/ on sys.path)."""

from __future__ import annotations

import numpy as np

from embedcache.metadata import Metadata

RECIPE = {"spec": "test:features", "architecture": {"test": "gaussian"}, "weights": {"source": "random", "seed": 0},
          "features": {"layer": "none"}, "preprocess": {}, "amp": None, "dtype": "float32"}


def make_metadata(n: int, seed: int = 0, splits=("train", "val")) -> Metadata:
    rng = np.random.default_rng(seed)
    return Metadata.from_values(
        ids=[f"id{i:05d}" for i in range(n)],
        labels=rng.integers(0, 3, n).tolist(),
        splits=[splits[i % len(splits)] for i in range(n)],
        groups={"place": rng.choice(["land", "water"], n).tolist(), "user": rng.integers(0, 12, n).tolist()},
        label_names=["a", "b", "c"],
    )


def recipe(**changes) -> dict:
    return {**RECIPE, **changes}
