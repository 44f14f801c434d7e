"""`treeperson`: is there a person in this Visual Genome photo, with trees and buildings as the spurious cue.

The paper (Appendix C) selects images that contain exactly one of a tree or a building, labels whether a
person is present, and skews the train split: 3700 person & building, 370 person & tree, 370 no-person &
building, 3700 no-person & tree; val has 498 of each. `build_treeperson` makes that from Visual Genome's
`objects.json` and images and writes the paper's `metadata.csv` layout, which the adapter reads.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path
from typing import Callable, Iterator, Sequence

from embedcache.datasets.base import register_dataset
from embedcache.datasets.builder import build_folder, group_counts, stage_rng, write_build_record
from embedcache.datasets.waterbirds import LabelPlaceImages
from embedcache.errors import ConfigError, DatasetError
from embedcache.outputs import write_csv

#: Object names (lower case, whole name) that mark each kind of object (Appendix C).
PERSON_NAMES = frozenset({"person", "people", "man", "men", "woman", "women"})
BUILDING_NAMES = frozenset({"building", "buildings"})
TREE_NAMES = frozenset({"tree", "trees", "leaf", "leaves", "grass"})

SPLIT_CODES = {"train": 0, "val": 1}


@register_dataset("treeperson")
class Treeperson(LabelPlaceImages):
    """--root: the folder holding the paper's `metadata.csv` (`img_id,img_filename,y,place,split`), as
    released or as written by `embedcache datasets build-treeperson`, or a parent holding `treeperson/`.

    id = img_id (the Visual Genome image id), label y (1 = a person), group `place` (1 = buildings,
    0 = trees); split 0/1/2 or train/val/test. Image paths are relative to that folder.
    """

    folder_names = ("treeperson",)
    columns = ("img_id", "img_filename", "y", "place", "split")
    label_names = ("no_person", "person")
    place_names = ("trees", "buildings")
    split_codes = {"0": "train", "1": "val", "2": "test", "train": "train", "val": "val", "test": "test"}


@dataclasses.dataclass
class TreepersonBuild:
    """Parameters of a Treeperson build; the counts default to the paper's.

    Train and val are disjoint. With `val_ids` (a text file of Visual Genome image ids, one per line, e.g.
    the images of GQA's val split) val is drawn from those images and train from all others; without it,
    each subgroup's qualifying images are shuffled with the seed and val takes the first `val_per_group`,
    train the next ones.
    """

    objects: Path
    images: Sequence[Path]
    out: Path
    seed: int = 0
    val_ids: Path | None = None
    majority: int = 3700
    minority: int = 370
    val_per_group: int = 498
    overwrite: bool = False

    def __post_init__(self) -> None:
        self.objects, self.out = Path(self.objects), Path(self.out)
        self.images = [Path(p) for p in self.images]
        self.val_ids = None if self.val_ids is None else Path(self.val_ids)
        if not self.images:
            raise ConfigError("give at least one Visual Genome image folder (VG_100K/, VG_100K_2/)", param="images")
        for name in ("majority", "minority", "val_per_group"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{getattr(self, name)}: must not be negative", param=name)

    def train_counts(self) -> dict[tuple[int, int], int]:
        """Train examples per (person, place) subgroup: the majority where person goes with buildings."""
        return {(1, 1): self.majority, (1, 0): self.minority, (0, 1): self.minority, (0, 0): self.majority}


def iter_json_array(path: Path, chunk_chars: int = 1 << 20) -> Iterator[object]:
    """The items of a file holding one JSON array, parsed one at a time (objects.json is ~0.5 GB)."""
    decoder = json.JSONDecoder()
    blank = re.compile(r"[\s,]*")
    try:
        with open(path, encoding="utf-8") as f:
            buffer = f.read(chunk_chars).lstrip()
            if not buffer.startswith("["):
                raise DatasetError(f"{path}: expected a JSON array ([...])")
            position, item_no, exhausted = 1, 0, False
            while True:
                position = blank.match(buffer, position).end()
                if buffer.startswith("]", position):
                    return
                try:
                    item, end = decoder.raw_decode(buffer, position)
                except json.JSONDecodeError as e:
                    if exhausted:
                        raise DatasetError(f"{path}: item {item_no} is not valid JSON ({e.msg})") from None
                    more = f.read(chunk_chars)
                    exhausted = not more
                    buffer, position = buffer[position:] + more, 0
                    continue
                yield item
                item_no += 1
                position = end
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: cannot read ({e})") from None


def _object_names(obj: dict) -> set[str]:
    """An object's names: `names` (list) in objects.json v1.2+, `name` (string) in v1.0."""
    names = obj.get("names", [obj.get("name")])
    return {n.strip().lower() for n in (names if isinstance(names, list) else [names]) if isinstance(n, str)}


def qualifying_images(objects: Path) -> dict[int, tuple[int, int]]:
    """Image id → (person, place) for every image with exactly one of a tree or a building."""
    found = {}
    for item_no, image in enumerate(iter_json_array(objects)):
        image_id = image.get("image_id", image.get("id")) if isinstance(image, dict) else None
        if not isinstance(image_id, int) or not isinstance(image.get("objects"), list):
            raise DatasetError(f"{objects}: item {item_no} lacks an integer image_id and an objects list")
        names = set().union(*(_object_names(o) for o in image["objects"] if isinstance(o, dict)))
        building, tree = bool(names & BUILDING_NAMES), bool(names & TREE_NAMES)
        if building != tree:
            found[image_id] = (int(bool(names & PERSON_NAMES)), int(building))
    return found


def _read_val_ids(path: Path) -> set[int]:
    ids = set()
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            if not line.strip().isdigit():
                raise DatasetError(f"{path}, line {line_no}: expected a Visual Genome image id, got {line!r}")
            ids.add(int(line))
    return ids


def _find_image(image_id: int, folders: Sequence[Path]) -> Path | None:
    return next((folder / f"{image_id}.jpg" for folder in folders if (folder / f"{image_id}.jpg").is_file()), None)


def build_treeperson(config: TreepersonBuild, progress: Callable[[int, int], None] | None = None) -> dict:
    """Select, balance and copy Treeperson into `config.out`; returns the record also written to build.json.

    Qualifying images whose file is in none of the `images` folders are left out (counted in the record
    as `missing_images`). Deterministic for a seed.
    """
    folder = build_folder(config.out, "datasets build-treeperson", config.overwrite)
    for images in config.images:
        if not images.is_dir():
            raise DatasetError(f"{images}: no such folder", param="images")
    val_ids = _read_val_ids(config.val_ids) if config.val_ids else None
    candidates = qualifying_images(config.objects)
    paths = {i: _find_image(i, config.images) for i in sorted(candidates)}
    missing = sum(p is None for p in paths.values())

    rng = stage_rng(config.seed, 0)
    chosen = []  # (split, image id, person, place)
    for (person, place), n_train in config.train_counts().items():
        members = [i for i in sorted(candidates) if candidates[i] == (person, place) and paths[i] is not None]
        members = [members[k] for k in rng.permutation(len(members))]
        if val_ids is None:
            val, train = members[:config.val_per_group], members[config.val_per_group:][:n_train]
        else:
            val = [i for i in members if i in val_ids][:config.val_per_group]
            train = [i for i in members if i not in val_ids][:n_train]
        group = f"{'person' if person else 'no person'} & {'building' if place else 'tree'}"
        for split, picked, wanted in (("val", val, config.val_per_group), ("train", train, n_train)):
            if len(picked) < wanted:
                raise DatasetError(f"{config.objects}: only {len(picked)} images for {split} {group}, "
                                   f"{wanted} wanted ({missing} qualifying images were not found under `images`)")
            chosen += [(split, i, person, place) for i in picked]

    chosen.sort(key=lambda c: (SPLIT_CODES[c[0]], c[1]))
    rows = [{"img_id": i, "img_filename": f"images/{i}.jpg", "y": person, "place": place, "split": SPLIT_CODES[split]}
            for split, i, person, place in chosen]
    with folder.writing() as out:
        (out / "images").mkdir()
        if progress:
            progress(0, len(chosen))
        for done, (_, image_id, _, _) in enumerate(chosen, start=1):
            shutil.copyfile(paths[image_id], out / "images" / f"{image_id}.jpg")
            if progress:
                progress(done, len(chosen))
        write_csv(out / "metadata.csv", rows, columns=Treeperson.columns)
        return write_build_record(out, {
            "dataset": "treeperson", "seed": config.seed, "objects": str(config.objects.resolve()),
            "images": [str(p.resolve()) for p in config.images],
            "val_ids": str(config.val_ids.resolve()) if config.val_ids else None,
            "qualifying_images": len(candidates), "missing_images": missing,
            "counts": group_counts(rows, {str(v): k for k, v in SPLIT_CODES.items()}, Treeperson.label_names,
                                   Treeperson.place_names),
        })
