"""`timm:<model>`: image backbones from timm, features taken before the classifier (num_classes=0)."""

from __future__ import annotations

import difflib
from pathlib import Path

import torch

from embedcache.backbones.base import (
    PRETRAINED,
    RANDOM,
    Backbone,
    ImagePreprocess,
    file_weights_entry,
    load_matching,
    read_state_dict,
    seeded,
    weights_file,
)
from embedcache.errors import BackboneError


class TimmBackbone(Backbone):
    """A timm model with its classifier removed; `features` returns the pooled pre-logits."""

    modality = "image"

    def __init__(self, name: str, weights: str = PRETRAINED, seed: int = 0, resolution: int | None = None):
        import timm

        architecture, _, tag = name.partition(".")
        if not timm.is_model(architecture):
            close = difflib.get_close_matches(architecture, timm.list_models(), n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise BackboneError(f"unknown timm model {name!r}.{hint}")
        path = weights_file(weights)
        self.spec = f"timm:{name}"
        if weights == PRETRAINED:
            try:
                model = timm.create_model(name, pretrained=True, num_classes=0)
            except Exception as e:  # hub/network failures surface as many exception types
                raise BackboneError(
                    f"cannot fetch pretrained weights for {self.spec} ({type(e).__name__}: {e}). "
                    "Without network, pass `weights` with a local checkpoint file."
                ) from None
            self.weights = {"source": PRETRAINED, "hub": model.pretrained_cfg.get("hf_hub_id") or name}
        else:
            with seeded(seed):
                model = timm.create_model(architecture, pretrained=False, num_classes=0)
            self.weights = {"source": RANDOM, "seed": int(seed)}
            if path is not None:
                self._load_file(model, path)
                self.weights = file_weights_entry(path)
        self.model = model.eval()
        self.num_features = int(model.num_features)
        self.architecture = {"timm": architecture}
        pool = getattr(getattr(model, "global_pool", None), "pool_type", None)
        self.features_info = {"layer": "pre_logits", "pool": pool or type(model).__name__}
        config = timm.data.resolve_data_config({}, model=model)
        self.image_preprocess = ImagePreprocess.from_timm(config, resolution)
        self._transform = self.image_preprocess.transform()

    def _load_file(self, model: torch.nn.Module, path: Path) -> None:
        if path.suffix.lower() == ".npz":
            if not hasattr(model, "load_pretrained"):
                raise BackboneError(f"{path}: {self.spec} cannot read .npz checkpoints (only BiT/ViT-style models can)")
            try:
                with torch.no_grad():
                    model.load_pretrained(str(path))
            except Exception as e:  # KeyError (missing arrays), RuntimeError (shapes), ValueError
                raise BackboneError(f"{path} does not fit {self.spec}: {type(e).__name__}: {e}") from None
            return
        classifier = model.pretrained_cfg.get("classifier") or "head"
        prefixes = classifier if isinstance(classifier, (list, tuple)) else (classifier,)
        load_matching(model, read_state_dict(path), path, self.spec, ignore=tuple(f"{p}." for p in prefixes))

    def transform(self, item):
        return self._transform(item)

    def collate(self, items: list) -> torch.Tensor:
        return torch.stack(items)

    def features(self, batch: torch.Tensor) -> torch.Tensor:
        return self.model(batch)

    def preprocess(self) -> dict:
        return self.image_preprocess.to_dict()
