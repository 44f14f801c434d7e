"""embedcache: active learning with pretrained models, on cached embeddings or by full finetuning."""

__version__ = "0.1.0"
