"""Tiny generated datasets, written to disk in the formats the adapters read (tests and examples).

Images are class-coloured noise so different classes give different features even through a
random-init network; texts mix a class keyword into random filler words.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Sequence

import numpy as np

_WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa "
          "quebec romeo sierra tango uniform victor whiskey xray yankee zulu").split()


def _image(rng: np.random.Generator, label: int, size: int):
    from PIL import Image

    hue = np.array([(label * 97) % 256, (label * 53 + 80) % 256, (label * 29 + 160) % 256], dtype=np.float64)
    pixels = np.clip(hue + rng.normal(0, 40, size=(size, size, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def write_image_folder(root: str | Path, classes: Sequence[str] = ("cat", "dog"), per_class: int = 4,
                       size: int = 32, seed: int = 0, splits: Sequence[str] | None = None) -> Path:
    """root/<class>/<n>.png, or root/<split>/<class>/<n>.png when `splits` is given."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split in splits or [None]:
        base = root / split if split else root
        for label, cls in enumerate(classes):
            (base / cls).mkdir(parents=True, exist_ok=True)
            for n in range(per_class):
                _image(rng, label, size).save(base / cls / f"{n:04d}.png")
    return root


def write_image_manifest(root: str | Path, n: int = 12, size: int = 32, seed: int = 0,
                         splits: Sequence[str] = ("train", "val"), place_names: Sequence[str] = ("land", "water"),
                         num_classes: int = 2) -> Path:
    """root/images/<id>.png plus root/manifest.csv with id,path,label,split,place."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = i % num_classes
        path = f"images/{i:05d}.png"
        _image(rng, label, size).save(root / path)
        rows.append({"id": f"ex{i:05d}", "path": path, "label": label, "split": splits[(i // num_classes) % len(splits)],
                     "place": place_names[int(rng.integers(len(place_names)))]})
    manifest = root / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def write_text_jsonl(path: str | Path, n: int = 20, seed: int = 0, splits: Sequence[str] = ("train", "val"),
                     keywords: Sequence[str] = ("great", "awful"), words: int = 12) -> Path:
    """One JSON object per line: id, text (filler words around the class keyword), label, split, topic."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for i in range(n):
            label = i % len(keywords)
            filler = list(rng.choice(_WORDS, size=words))
            filler.insert(int(rng.integers(len(filler) + 1)), keywords[label])
            record = {"id": f"t{i:05d}", "text": " ".join(filler), "label": label,
                      "split": splits[(i // len(keywords)) % len(splits)], "topic": str(rng.choice(["a", "b", "c"]))}
            f.write(json.dumps(record) + "\n")
    return path
