"""A generated task-ambiguity text dataset: product reviews whose sentiment is the label and whose
product category (books / kitchen) is a spurious attribute.

* Ambiguity: in the train split (the AL pool) a `matched` share of positive reviews are about books
  and of negative reviews about kitchenware; in val each class is half books, half kitchen.
* The category is salient: the product is named in most sentences.
* The sentiment must be understood, not memorised: it is carried by adjectives, and the val split
  uses a disjoint half of the adjective lists (synonyms never seen in the pool). Reviews also
  negate the opposite polarity ("not flimsy at all, it is sturdy"), contrast an unrelated remark
  of the opposite polarity ("the delivery was awful, but the kettle itself is superb") and add
  neutral filler, so neither a keyword nor a bag of words of the pool reads the label in val.
* Fairness between encoders: every sentiment word is a single WordPiece token in BERT's
  uncased vocabulary and both polarities use the same sentence frames, so text length and
  tokenisation carry no label information a random-init encoder could pick up.

With shared vocabularies between pool and val (`held_out_vocabulary=False`) the task is a
closed-vocabulary template, which a bag of random token embeddings (a random-init transformer,
mean-pooled) solves: use that setting to see when pretraining is not what AL needs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

LABELS = ("negative", "positive")
CATEGORIES = ("books", "kitchen")
#: Single-WordPiece adjectives; even positions are used in the pool, odd ones in val.
POSITIVE = ("excellent superb wonderful fantastic great terrific outstanding marvelous brilliant lovely delightful "
            "impressive amazing splendid fabulous exceptional stellar perfect sturdy reliable good nice beautiful "
            "awesome incredible remarkable pleasant solid flawless charming").split()
NEGATIVE = ("terrible awful dreadful horrible poor disappointing pathetic useless defective worthless inferior bad "
            "cheap broken ugly boring annoying faulty unreliable disgusting nasty miserable weak fragile clumsy "
            "frustrating unpleasant awkward dull sloppy").split()
_ITEMS = {"books": "novel paperback memoir thriller biography cookbook anthology textbook".split(),
          "kitchen": "blender skillet kettle toaster saucepan grinder teapot colander".split()}
_PARTS = {"books": ("the plot", "the chapters", "the characters", "the ending", "the writing", "the cover"),
          "kitchen": ("the handle", "the lid", "the blade", "the motor", "the coating", "the base")}
_OTHER = ("the delivery", "the packaging", "the seller", "the price", "the shipping")
_FILLER = ("I ordered it last month.", "My sister suggested it.", "It came in a plain box.", "I rarely write reviews.",
           "We have had it for a few weeks now.", "It was on sale at the time.", "I compared a few options first.")


def _review(rng: np.random.Generator, label: int, category: str, val: bool) -> str:
    def pick(options):
        return options[int(rng.integers(len(options)))]

    half = 1 if val else 0
    own = [w for i, w in enumerate((NEGATIVE, POSITIVE)[label]) if i % 2 == half]
    other = [w for i, w in enumerate((NEGATIVE, POSITIVE)[1 - label]) if i % 2 == half]
    item, part = pick(_ITEMS[category]), pick(_PARTS[category])
    sentences = [pick([f"I bought this {item} for myself.", f"This {item} was a gift.", f"Review of the {item}.",
                       f"We got the {item} a while ago."])]
    sentences.append(pick([
        f"Honestly, the {item} is {pick(own)}.",
        f"Overall I found it {pick(own)}.",
        f"In short, {pick(own)} and {pick(own)}.",
        f"The {item} is not {pick(other)} at all, it is {pick(own)}.",
        f"{pick(_OTHER).capitalize()} was {pick(other)}, but the {item} itself is {pick(own)}.",
    ]))
    if rng.random() < 0.7:
        sentences.append(f"{part.capitalize()} is {pick(own)}.")
    if rng.random() < 0.5:
        sentences.insert(int(rng.integers(1, len(sentences) + 1)), pick(_FILLER))
    return " ".join(sentences)


def write_ambiguous_reviews(path: str | Path, n_train: int = 3000, n_val: int = 1000, matched: float = 0.95,
                            seed: int = 0, held_out_vocabulary: bool = True) -> Path:
    """Write the dataset as JSONL (`id, text, label, split, category`) for the `jsonl` adapter.

    Classes are balanced in both splits; `matched` of each class's train reviews have the class's
    own category (positive → books, negative → kitchen), exactly half of val's do.
    """
    if not 0.0 <= matched <= 1.0:
        raise ValueError(f"matched must be a share in [0, 1], got {matched}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    records = []
    for split, n, share in (("train", n_train, matched), ("val", n_val, 0.5)):
        for label in (0, 1):
            count = n // 2 + (label == 1) * (n % 2)
            own = int(round(share * count))
            categories = [CATEGORIES[1 - label]] * own + [CATEGORIES[label]] * (count - own)
            for category in rng.permutation(categories).tolist():
                text = _review(rng, label, category, val=held_out_vocabulary and split == "val")
                records.append({"text": text, "label": LABELS[label], "split": split, "category": category})
    order = rng.permutation(len(records))
    with open(path, "w", encoding="utf-8") as f:
        for number, index in enumerate(order):
            f.write(json.dumps({"id": f"r{number:05d}", **records[index]}) + "\n")
    return path
