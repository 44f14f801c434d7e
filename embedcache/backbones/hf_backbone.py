"""`hf:<name-or-local-path>`: Hugging Face text encoders, features pooled from the last hidden state."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from embedcache.backbones.base import (
    PRETRAINED,
    RANDOM,
    Backbone,
    file_weights_entry,
    load_matching,
    read_state_dict,
    seeded,
    weights_file,
)
from embedcache.errors import BackboneError, ConfigError
from embedcache.recipe import sha256_files, sha256_json

POOLINGS = ("mean", "cls")
#: Config keys that name or date a model rather than shape its numbers.
_VOLATILE_CONFIG_KEYS = ("_name_or_path", "transformers_version", "architectures", "torch_dtype", "dtype",
                         "_commit_hash", "_attn_implementation", "_attn_implementation_autoset")


def _default_max_length(name: str, config, tokenizer) -> int:
    """sentence-transformers' max_seq_length when the folder has one, else the model's limit (at most 512)."""
    st_config = Path(name) / "sentence_bert_config.json"
    if st_config.is_file():
        length = json.loads(st_config.read_text()).get("max_seq_length")
        if length:
            return int(length)
    return min(getattr(config, "max_position_embeddings", 512) or 512, tokenizer.model_max_length or 512, 512)


class HFTextBackbone(Backbone):
    """A transformers encoder; features are the masked mean of the last hidden state, or its [CLS] row."""

    modality = "text"

    def __init__(self, name: str, weights: str = PRETRAINED, seed: int = 0,
                 max_length: int | None = None, pooling: str | None = None):
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        pooling = pooling or "mean"
        if pooling not in POOLINGS:
            raise ConfigError(f"must be one of {POOLINGS}, got {pooling!r}", param="pooling")
        path = weights_file(weights)
        local = Path(name).is_dir()
        self.spec = f"hf:{Path(name).resolve() if local else name}"
        try:
            config = AutoConfig.from_pretrained(name)
            self.tokenizer = AutoTokenizer.from_pretrained(name)
        except (OSError, ValueError) as e:
            raise BackboneError(
                f"cannot load {self.spec}: not a local model folder and not reachable on the hub ({e})"
            ) from None
        if weights == PRETRAINED:
            try:
                model = AutoModel.from_pretrained(name)
            except (OSError, ValueError) as e:
                raise BackboneError(f"cannot load pretrained weights for {self.spec} ({e})") from None
            if local:
                files = sorted(p for p in Path(name).iterdir() if p.suffix in (".safetensors", ".bin"))
                self.weights = {"source": PRETRAINED, "sha256": sha256_files(files)}
            else:
                self.weights = {"source": PRETRAINED, "hub": name, "revision": getattr(config, "_commit_hash", None)}
        else:
            with seeded(seed):
                model = AutoModel.from_config(config)
            self.weights = {"source": RANDOM, "seed": int(seed)}
            if path is not None:
                load_matching(model, read_state_dict(path), path, self.spec)
                self.weights = file_weights_entry(path)
        self.model = model.eval()
        self.num_features = int(config.hidden_size)
        self.max_length = int(max_length or _default_max_length(name, config, self.tokenizer))
        self.pooling = pooling
        config_dict = {k: v for k, v in config.to_diff_dict().items() if k not in _VOLATILE_CONFIG_KEYS}
        self.architecture = {"hf": config.model_type, "config_sha256": sha256_json(config_dict)}
        self.features_info = {"layer": "last_hidden_state", "pooling": pooling}

    def transform(self, item: str) -> str:
        return item

    def collate(self, items: list[str]):
        return self.tokenizer(items, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")

    def features(self, batch) -> torch.Tensor:
        hidden = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)

    def preprocess(self) -> dict:
        vocab = sorted(self.tokenizer.get_vocab().items())
        return {
            "tokenizer": type(self.tokenizer).__name__,
            "vocab_sha256": sha256_json(vocab),
            "lowercase": bool(self.tokenizer.init_kwargs.get("do_lower_case", False)),
            "max_length": self.max_length,
        }
