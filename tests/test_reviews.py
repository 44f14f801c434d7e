"""The demo's generated task-ambiguity reviews: the ambiguity is as specified and the task is not
readable from a bag of words."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from embedcache.datasets.reviews import CATEGORIES, LABELS, NEGATIVE, POSITIVE, write_ambiguous_reviews


@pytest.fixture(scope="module")
def reviews(tmp_path_factory):
    path = write_ambiguous_reviews(tmp_path_factory.mktemp("reviews") / "r.jsonl", n_train=1000, n_val=400)
    return [json.loads(line) for line in path.read_text().splitlines()]


def _matched(record) -> bool:
    return CATEGORIES.index(record["category"]) == 1 - LABELS.index(record["label"])


def test_matched_share_is_exact_in_the_pool_and_half_in_val(reviews):
    for split, share in (("train", 0.95), ("val", 0.5)):
        for label in LABELS:
            rows = [r for r in reviews if r["split"] == split and r["label"] == label]
            assert len(rows) == {"train": 500, "val": 200}[split]
            assert sum(map(_matched, rows)) == round(share * len(rows))
    assert len({r["id"] for r in reviews}) == len(reviews)


def test_val_sentiment_words_never_appear_in_the_pool(reviews):
    words = {w for lexicon in (POSITIVE, NEGATIVE) for w in lexicon}

    def used(split):
        return {w for r in reviews if r["split"] == split for w in re.findall(r"[a-z]+", r["text"].lower())} & words
    assert used("train") and used("val") and not used("train") & used("val")


def test_sentiment_words_are_single_wordpieces(minilm_path):
    """So that text length carries no label information a random-init encoder could use."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    assert len(POSITIVE) == len(NEGATIVE)
    assert [w for w in POSITIVE + NEGATIVE if len(tokenizer.tokenize(w)) != 1] == []


def test_a_bag_of_words_does_not_reach_ceiling_from_the_seed_set(reviews):
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression

    train = [r for r in reviews if r["split"] == "train"]
    val = [r for r in reviews if r["split"] == "val"]
    vectorizer = CountVectorizer(ngram_range=(1, 2)).fit([r["text"] for r in train])
    y_train = np.array([LABELS.index(r["label"]) for r in train])
    y_val = np.array([LABELS.index(r["label"]) for r in val])
    rng = np.random.default_rng(0)
    for size in (20, len(train)):  # the demo's seed set, and every pool label
        rows = np.concatenate([rng.choice(np.flatnonzero(y_train == c), size // 2, replace=False) for c in (0, 1)])
        model = LogisticRegression(max_iter=5000).fit(vectorizer.transform([train[i]["text"] for i in rows]),
                                                      y_train[rows])
        accuracy = (model.predict(vectorizer.transform([r["text"] for r in val])) == y_val).mean()
        assert accuracy < 0.75, (size, accuracy)
