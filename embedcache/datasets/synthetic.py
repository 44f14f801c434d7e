"""Tiny generated datasets, written to disk in the formats the adapters (and the Waterbirds builder) read: for
tests, examples and the conformance checks of `embedcache.testing`.

Images are class-coloured noise so different classes give different features even through a
random-init network; texts mix a class keyword into random filler words.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from embedcache.outputs import write_csv

FILLER_WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa "
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
    return write_csv(root / "manifest.csv", rows)


def write_text_jsonl(path: str | Path, n: int = 20, seed: int = 0, splits: Sequence[str] = ("train", "val"),
                     keywords: Sequence[str] = ("great", "awful"), words: int = 12) -> Path:
    """One JSON object per line: id, text (filler words around the class keyword), label, split, topic."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for i in range(n):
            label = i % len(keywords)
            filler = list(rng.choice(FILLER_WORDS, size=words))
            filler.insert(int(rng.integers(len(filler) + 1)), keywords[label])
            record = {"id": f"t{i:05d}", "text": " ".join(filler), "label": label,
                      "split": splits[(i // len(keywords)) % len(splits)], "topic": str(rng.choice(["a", "b", "c"]))}
            f.write(json.dumps(record) + "\n")
    return path


def ambiguity_embeddings(n_train: int = 2000, n_val: int = 800, dim: int = 32, matched: float = 0.95,
                         minority: float = 0.5, margin: float = 1.0, spurious: float = 4.0, seed: int = 0,
                         separable: bool = True):
    """Embeddings of a task-ambiguity dataset, like Waterbirds seen by a pretrained model.

    The label (landbird / waterbird, `minority` = share of waterbirds) is the causal feature; the
    group `place` (land / water) is spurious: it equals the label for a `matched` share of the
    train split and half of the val split. With `separable`, the label is linearly separable
    along one direction (|coordinate| ≥ `margin`) and the place is a more salient direction
    (±spurious/2 plus unit noise), so a head fitted on mostly matched examples leans on the place
    and errs on the mismatched ones. Without it (a "random-init-like" space) both are buried:
    the directions carry 5 % of that signal. Other dimensions are unit Gaussian noise.

    Returns (embeddings float32 [n, dim], Metadata with splits train/val and group place).
    """
    from embedcache.metadata import Metadata

    rng = np.random.default_rng(seed)
    n = n_train + n_val
    label = (rng.random(n) < minority).astype(np.int64)
    share = np.where(np.arange(n) < n_train, matched, 0.5)
    place = np.where(rng.random(n) < share, label, 1 - label)
    x = rng.normal(size=(n, dim))
    basis, _ = np.linalg.qr(rng.normal(size=(dim, 2)))
    strength = 1.0 if separable else 0.05
    core = (2 * label - 1) * (margin + rng.random(n)) * strength
    spur = (2 * place - 1) * spurious / 2 * strength + rng.normal(size=n)
    x = x - (x @ basis) @ basis.T + np.outer(core, basis[:, 0]) + np.outer(spur, basis[:, 1])
    metadata = Metadata.from_values(
        ids=[f"s{i:06d}" for i in range(n)], labels=label.tolist(),
        splits=["train"] * n_train + ["val"] * n_val,
        groups={"place": np.array(["land", "water"])[place].tolist()}, label_names=("landbird", "waterbird"))
    return x.astype(np.float32), metadata


def _write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_csv(path, rows)


def _write_label_place(folder: Path, columns: Sequence[str], splits: Sequence[int], filename_format: str,
                       per_group: int, size: int, seed: int) -> Path:
    """`per_group` images of every (split, y, place) in `folder`, listed in metadata.csv with `columns`."""
    rng = np.random.default_rng(seed)
    rows = []
    for split in splits:
        for y in (0, 1):
            for place in (0, 1):
                for _ in range(per_group):
                    img_id = len(rows) + 1
                    filename = filename_format.format(y=y, id=img_id)
                    (folder / filename).parent.mkdir(parents=True, exist_ok=True)
                    _image(rng, 2 * y + place, size).save(folder / filename)
                    row = {"img_id": img_id, "img_filename": filename, "y": y, "split": split, "place": place,
                           "place_filename": f"/{'o/ocean' if place else 'b/bamboo_forest'}/{img_id:08d}.jpg"}
                    rows.append({c: row[c] for c in columns})
    _write_csv(folder / "metadata.csv", rows)
    return folder


def write_waterbirds(root: str | Path, folder: str = "waterbirds_v1.0", per_group: int = 2, size: int = 32,
                     seed: int = 0) -> Path:
    """root/<folder>/ as WILDS ships Waterbirds: metadata.csv and <species folder>/<image>.jpg, `per_group`
    images of every (split, bird, place)."""
    return _write_label_place(Path(root) / folder, ("img_id", "img_filename", "y", "split", "place", "place_filename"),
                              (0, 1, 2), "{y:03d}.Species_{y}/Species_{y}_{id:04d}.jpg", per_group, size, seed)


def write_treeperson(root: str | Path, per_group: int = 2, size: int = 32, seed: int = 0) -> Path:
    """root/ in the paper's Treeperson layout: metadata.csv (img_id,img_filename,y,place,split), train and val."""
    return _write_label_place(Path(root), ("img_id", "img_filename", "y", "place", "split"), (0, 1),
                              "images/{id}.jpg", per_group, size, seed)


def write_iwildcam(root: str | Path, n: int = 15, num_classes: int = 3, locations: int = 4, size: int = 32,
                   seed: int = 0, categories: bool = True) -> Path:
    """root/iwildcam_v2.0/ as WILDS ships it: metadata.csv, train/<filename>, optionally categories.csv."""
    folder = Path(root) / "iwildcam_v2.0"
    rng = np.random.default_rng(seed)
    splits = ("train", "val", "test", "id_val", "id_test")
    rows = []
    for i in range(n):
        y = i % num_classes
        location = int(rng.integers(locations))
        filename = f"{i:04x}abcd-{y}.jpg"
        (folder / "train").mkdir(parents=True, exist_ok=True)
        _image(rng, y, size).save(folder / "train" / filename)
        rows.append({"split": splits[(i // num_classes) % len(splits)], "location_remapped": location,
                     "location": 100 + 7 * location, "sequence_remapped": i // 2, "seq_id": f"seq{i // 2}",
                     "y": y, "category_id": 10 * y + 3, "datetime": f"2013-06-{1 + i % 28:02d} 10:00:00.000",
                     "filename": filename, "image_id": f"img-{i:05d}"})
    _write_csv(folder / "metadata.csv", rows)
    if categories:
        _write_csv(folder / "categories.csv",
                   [{"y": y, "category_id": 10 * y + 3, "name": f"species {y}"} for y in range(num_classes)])
    return folder


def write_amazon(root: str | Path, n: int = 20, users: int = 4, seed: int = 0,
                 keywords: Sequence[str] = ("awful", "poor", "fine", "good", "great")) -> Path:
    """root/amazon_v2.1/ as WILDS ships it: reviews.csv (some texts with commas, quotes and line breaks, so
    quoted cells) and splits/user.csv, where every fifth review has split -1 (not in the dataset)."""
    folder = Path(root) / "amazon_v2.1"
    rng = np.random.default_rng(seed)
    reviews, splits = [], []
    for i in range(n):
        stars = 1 + i % 5
        text = " ".join([*rng.choice(FILLER_WORDS, size=6), keywords[stars - 1]])
        if i % 3 == 0:
            text += ', "quoted", and\na second line'
        reviews.append({"reviewerID": f"A{int(rng.integers(users)):03d}", "asin": f"B{i:05d}",
                        "overall": float(stars), "reviewText": text, "reviewTime": "06 1, 2014",
                        "unixReviewTime": 1401580800, "summary": f"summary {i}",
                        "category": ("Books", "Movies_and_TV")[i % 2], "reviewYear": 2014})
        splits.append({"split": -1 if i % 5 == 4 else (0, 1, 2, 3, 4)[(i // 2) % 5], "clean": i % 5 != 4})
    _write_csv(folder / "reviews.csv", reviews)
    _write_csv(folder / "splits" / "user.csv", splits)
    return folder


#: CUB species folders of `write_cub_and_places`: waterbirds by the Group DRO rule (albatross, gull) and landbirds.
CUB_SPECIES = ("001.Black_footed_Albatross", "013.Bobolink", "059.California_Gull", "094.White_breasted_Nuthatch",
               "133.White_throated_Sparrow", "149.Brown_Thrasher")


def write_cub_and_places(root: str | Path, per_species: int = 10, backgrounds: int = 40) -> tuple[Path, Path]:
    """A tiny CUB_200_2011/ (solid red birds with a centred square mask) and places365/data_large/ (solid
    blue backgrounds of another size), in the layouts those datasets ship in: what
    `embedcache.datasets.waterbirds_variant.build_waterbirds` reads. Returns (cub, places)."""
    from PIL import Image

    root = Path(root)
    cub, places = root / "CUB_200_2011", root / "places365"
    mask = np.zeros((20, 24), dtype=np.uint8)
    mask[5:15, 7:17] = 255
    images, splits = [], []
    for species in CUB_SPECIES:
        for k in range(per_species):
            relative = f"{species}/{species.split('.')[1]}_{k:04d}_{len(images)}.jpg"
            images.append(relative)
            splits.append(int(k % 3 != 0))  # two thirds CUB-train
            for folder, image in ((cub / "images", Image.new("RGB", (24, 20), (220, 20, 20))),
                                  (cub / "segmentations", Image.fromarray(mask))):
                path = folder / (relative if folder.name == "images" else relative.replace(".jpg", ".png"))
                path.parent.mkdir(parents=True, exist_ok=True)
                image.save(path)
    (cub / "images.txt").write_text("".join(f"{i} {p}\n" for i, p in enumerate(images, start=1)))
    (cub / "train_test_split.txt").write_text("".join(f"{i} {s}\n" for i, s in enumerate(splits, start=1)))
    for category in ("b/bamboo_forest", "f/forest/broadleaf", "o/ocean", "l/lake/natural"):
        folder = places / "data_large" / category
        folder.mkdir(parents=True)
        for k in range(backgrounds // 2):
            Image.new("RGB", (40, 30), (20, 20, 200 + k % 50)).save(folder / f"{k:08d}.jpg")
    return cub, places
