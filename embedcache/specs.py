"""Which dataset and which network, as small values: what a command line names, a worker receives
and a sweep plan writes down. `create()` builds the adapter or the backbone where it is needed (their
modules are imported then, so naming one costs nothing)."""

from __future__ import annotations

import dataclasses
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """A dataset adapter (`name`, as registered) reading the files under `root`, with its `options`."""

    name: str
    root: Path
    options: dict = dataclasses.field(default_factory=dict)

    def create(self):
        from embedcache.datasets import create_dataset

        return create_dataset(self.name, self.root, **self.options)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A backbone (`spec` such as timm:resnet50 or hf:<name>) with its weights (pretrained, random with
    `init_seed`, or a file), text length and pooling."""

    spec: str
    weights: str = "pretrained"
    init_seed: int = 0
    max_length: int | None = None
    pooling: str | None = None

    def create(self, **options):
        from embedcache.backbones import create_backbone

        return create_backbone(self.spec, weights=self.weights, seed=self.init_seed, max_length=self.max_length,
                               pooling=self.pooling, **options)
