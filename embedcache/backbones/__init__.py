"""Backbone registry: `timm:<model>` (images) and `hf:<name-or-local-path>` (text).

`create_backbone("timm:resnetv2_50x1_bit.goog_in21k", weights="random", seed=0)` builds a feature
extractor whose preprocessing and weights source go into the cache's recipe.
"""

from __future__ import annotations

import inspect

from embedcache.backbones.base import PRETRAINED, RANDOM, Backbone, ImagePreprocess
from embedcache.backbones.hf_backbone import HFTextBackbone
from embedcache.backbones.timm_backbone import TimmBackbone
from embedcache.errors import ConfigError
from embedcache.registry import Registry

BACKBONES: Registry[type[Backbone]] = Registry("backbone kind")
BACKBONES.register("timm")(TimmBackbone)
BACKBONES.register("hf")(HFTextBackbone)

__all__ = ["BACKBONES", "Backbone", "ImagePreprocess", "PRETRAINED", "RANDOM", "create_backbone"]


def create_backbone(spec: str, weights: str = PRETRAINED, seed: int = 0, **options) -> Backbone:
    """Build the backbone that `spec` ("<kind>:<name>") names.

    Options a kind does not take (e.g. `max_length` for an image model) are an error when given
    a value; options left as None are ignored.
    """
    kind, sep, name = spec.partition(":")
    if not sep or not name:
        raise ConfigError(f"--backbone {spec!r}: expected <kind>:<name>, e.g. timm:resnet50 or hf:roberta-large")
    cls = BACKBONES.get(kind)
    accepted = inspect.signature(cls.__init__).parameters
    given = {k: v for k, v in options.items() if v is not None}
    wrong = sorted(k for k in given if k not in accepted)
    if wrong:
        flags = ", ".join("--" + k.replace("_", "-") for k in wrong)
        raise ConfigError(f"{flags} does not apply to {kind}: backbones")
    return cls(name, weights=weights, seed=seed, **given)
