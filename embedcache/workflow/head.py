"""A fitted linear head on disk: weights, label map and the recipe fingerprint of the features it reads.

`embedcache predict --save-head head.safetensors` writes one; `--head` loads it to predict on any
cache of the same recipe (the same backbone, weights, layer and preprocessing), e.g. new data
extracted later. A cache of another recipe is refused, naming both fingerprints: its features mean
something else.

File: safetensors with tensors `weight` [D, C] and `bias` [C] (float32; softmax(x @ weight + bias)
gives the probabilities of `classes`, the classes present when it was fitted, on raw cached
features), and string metadata: `format` (= "embedcache-head"), `format_version`, `classes` and
`label_names` (JSON lists; a name outside `classes` is predicted with probability 0),
`recipe_fingerprint`, `recipe` (JSON), `n_labels`, `embedcache_version`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

import embedcache
from embedcache.errors import CacheError, ConfigError
from embedcache.recipe import canonical_json, recipe_difference

FORMAT = "embedcache-head"
FORMAT_VERSION = "1"


@dataclasses.dataclass
class Head:
    weight: np.ndarray  # [D, C] float32
    bias: np.ndarray  # [C] float32
    classes: list[str]  # the columns of weight
    label_names: list[str]  # every class name, in key order
    fingerprint: str
    recipe: dict
    n_labels: int
    source: str = "the fitted head"  # where it was loaded from, for messages

    @classmethod
    def from_learner(cls, learner, label_names: list[str], fingerprint: str, recipe: dict, n_labels: int) -> "Head":
        """From a fitted LinearLearner's `coef_` [D, C'] and `intercept_` [C'] on raw features (a binary
        head σ(z) is the softmax of [0, z]; a one-class head predicts its class with certainty)."""
        coef = learner.coef_.detach().cpu().numpy().astype(np.float32)
        intercept = learner.intercept_.detach().cpu().numpy().astype(np.float32)
        fitted = [label_names[c] for c in np.asarray(learner.classes_).tolist()]
        if coef.shape[1] == 0:
            coef, intercept = np.zeros((coef.shape[0], 1), np.float32), np.zeros(1, np.float32)
        elif coef.shape[1] == 1:
            coef = np.concatenate([np.zeros_like(coef), coef], axis=1)
            intercept = np.concatenate([np.zeros_like(intercept), intercept])
        return cls(np.ascontiguousarray(coef), intercept, fitted, list(label_names), fingerprint, recipe, int(n_labels))

    @property
    def dim(self) -> int:
        return int(self.weight.shape[0])

    def predict_proba(self, features) -> np.ndarray:
        """[n, len(label_names)] float32 probabilities of a block of raw features [n, D]."""
        from embedcache.kernels import predict_proba

        out = np.zeros((len(features), len(self.label_names)), dtype=np.float32)
        columns = [self.label_names.index(c) for c in self.classes]
        out[:, columns] = predict_proba(np.asarray(features), self.weight, self.bias)
        return out

    def check_cache(self, cache_path: str | Path, fingerprint: str, recipe: dict, dim: int) -> None:
        """ConfigError, naming both, unless the cache holds features of this head's recipe."""
        if fingerprint != self.fingerprint:
            diff = "; ".join(recipe_difference(self.recipe, recipe or {})) or "the recipes differ"
            raise ConfigError(f"{self.source} was fitted on features of recipe {self.fingerprint[:12]}, but "
                              f"{cache_path} holds recipe {fingerprint[:12]} ({diff}); a head only applies to caches "
                              "of the same recipe")
        if dim != self.dim:
            raise ConfigError(f"{self.source} reads {self.dim} features, {cache_path} has {dim}")

    # ------------------------------------------------------------------ disk
    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write (through a temporary file, renamed when complete); refuses an existing file unless `overwrite`."""
        from safetensors.numpy import save_file

        from embedcache.workflow.output import check_out

        files = check_out(path, overwrite, (".safetensors",), param="save_head")
        metadata = {"format": FORMAT, "format_version": FORMAT_VERSION, "classes": json.dumps(self.classes),
                    "label_names": json.dumps(self.label_names), "recipe_fingerprint": self.fingerprint,
                    "recipe": canonical_json(self.recipe or {}), "n_labels": str(self.n_labels),
                    "embedcache_version": embedcache.__version__}
        with files.writing() as (partial,):
            save_file({"weight": self.weight, "bias": self.bias}, str(partial), metadata=metadata)
        return files.paths[0]

    @classmethod
    def load(cls, path: str | Path) -> "Head":
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        if not path.is_file():
            raise CacheError(f"{path}: no such file", param="head_path")
        try:
            with safe_open(str(path), framework="numpy") as f:
                metadata = f.metadata() or {}
                if metadata.get("format") != FORMAT:
                    raise CacheError(f"{path} is not an embedcache head (no format={FORMAT} in its metadata)")
                if metadata.get("format_version") != FORMAT_VERSION:
                    raise CacheError(f"{path} has head format {metadata.get('format_version')}; this "
                                     f"embedcache reads {FORMAT_VERSION}")
                weight, bias = f.get_tensor("weight"), f.get_tensor("bias")
        except (SafetensorError, OSError) as e:
            raise CacheError(f"{path}: cannot read as safetensors ({e})") from None
        return cls(weight.astype(np.float32), bias.astype(np.float32), json.loads(metadata["classes"]),
                   json.loads(metadata["label_names"]), metadata["recipe_fingerprint"], json.loads(metadata["recipe"]),
                   int(metadata["n_labels"]), source=str(path))
