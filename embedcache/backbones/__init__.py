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

__all__ = ["BACKBONES", "Backbone", "ImagePreprocess", "PRETRAINED", "RANDOM", "create_backbone",
           "parse_backbone_spec"]


def parse_backbone_spec(spec: str) -> tuple[type[Backbone], str]:
    """The backbone class and model name that `spec` ("<kind>:<name>") names; ConfigError for another form or an
    unknown kind (listing the known ones)."""
    kind, sep, name = spec.partition(":")
    if not sep or not name:
        raise ConfigError(f"{spec!r}: expected <kind>:<name>, e.g. timm:resnet50 or hf:roberta-large", param="backbone")
    return BACKBONES.get(kind), name


def create_backbone(spec: str, weights: str = PRETRAINED, seed: int = 0, **options) -> Backbone:
    """Build the backbone that `spec` ("<kind>:<name>") names.

    Options a kind does not take (e.g. `max_length` for an image model) are an error when given
    a value; options left as None are ignored.
    """
    cls, name = parse_backbone_spec(spec)
    accepted = inspect.signature(cls.__init__).parameters
    given = {k: v for k, v in options.items() if v is not None}
    wrong = sorted(k for k in given if k not in accepted)
    if wrong:
        others = f" (nor do {', '.join(f'`{k}`' for k in wrong[1:])})" if len(wrong) > 1 else ""
        raise ConfigError(f"does not apply to {spec.partition(':')[0]}: backbones{others}", param=wrong[0])
    return cls(name, weights=weights, seed=seed, **given)
