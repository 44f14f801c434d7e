"""Waterbirds with a chosen share of matched backgrounds, built from CUB-200-2011 and Places365.

The paper (section 6.4) varies the share of training birds on their "own" background (landbird on land,
waterbird on water) from 50 to 95 % with the class marginals fixed, using the group_DRO construction:
every CUB image, its bird cut out with the CUB segmentation mask and pasted on a Places365 background
(land: bamboo_forest, forest/broadleaf; water: ocean, lake/natural). `build_waterbirds` reproduces that,
seeded, and writes the release's `metadata.csv` layout; the `waterbirds-variant` adapter reads it.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
from pathlib import Path
from typing import Callable

from embedcache.datasets.base import open_image, register_dataset
from embedcache.datasets.builder import BUILD_RECORD, build_folder, group_counts, stage_rng, write_build_record
from embedcache.datasets.waterbirds import Waterbirds
from embedcache.errors import ConfigError, DatasetError
from embedcache.outputs import write_csv

#: Places365 categories (folders under data_large/) used as backgrounds, by place code: 0 land, 1 water.
PLACES = (("b/bamboo_forest", "f/forest/broadleaf"), ("o/ocean", "l/lake/natural"))

#: A CUB species is a waterbird when its lower-cased name contains one of these (seabirds and waterfowl).
#: As in group_DRO this is a substring test, so e.g. Eastern_Towhee and Western_Meadowlark ("tern") count
#: as waterbirds too; keeping it is what reproduces the released labels and class marginals.
WATERBIRD_NAME_PARTS = ("albatross", "auklet", "cormorant", "frigatebird", "fulmar", "gull", "jaeger", "kittiwake",
                        "pelican", "puffin", "tern", "gadwall", "grebe", "mallard", "merganser", "guillemot",
                        "pacific_loon")

SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
COLUMNS = ("img_id", "img_filename", "y", "split", "place", "place_filename")


@dataclasses.dataclass
class WaterbirdsBuild:
    """Parameters of one Waterbirds variant.

    `matched` is the share of each class's training birds on their own background (the release has 0.95);
    val and test are always 50/50 per class. `val_fraction` of each class's CUB training images become the
    val split (the release: 0.2 overall); CUB's test images are the test split.
    """

    cub: Path
    places: Path
    out: Path
    matched: float = 0.95
    seed: int = 0
    val_fraction: float = 0.2
    threads: int = 4
    overwrite: bool = False

    def __post_init__(self) -> None:
        self.cub, self.places, self.out = Path(self.cub), Path(self.places), Path(self.out)
        if not 0.0 <= self.matched <= 1.0:
            raise ConfigError(f"{self.matched}: give a share between 0 and 1, e.g. 0.8", param="matched")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"{self.val_fraction}: give a share strictly between 0 and 1", param="val_fraction")
        if self.threads < 1:
            raise ConfigError(f"{self.threads}: need at least 1", param="threads")


def is_waterbird(species_folder: str) -> bool:
    """`001.Black_footed_Albatross` → True (the group_DRO rule, see WATERBIRD_NAME_PARTS)."""
    species = species_folder.split(".", 1)[-1].lower()
    return any(part in species for part in WATERBIRD_NAME_PARTS)


def _read_id_table(path: Path) -> dict[int, str]:
    """CUB's `<image id> <value>` text files (images.txt, train_test_split.txt)."""
    if not path.is_file():
        raise DatasetError(f"{path}: not found (is `cub` the CUB_200_2011/ folder?)")
    table = {}
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        key, _, value = line.strip().partition(" ")
        if not key.isdigit() or not value:
            raise DatasetError(f"{path}, line {line_no}: expected '<image id> <value>', got {line!r}")
        table[int(key)] = value.strip()
    return table


def _segmentations_folder(cub: Path) -> Path:
    """CUB's segmentations ship as a separate archive; its `segmentations/` may sit inside or beside CUB_200_2011/."""
    for candidate in (cub / "segmentations", cub.parent / "segmentations"):
        if candidate.is_dir():
            return candidate
    raise DatasetError(f"{cub}: no segmentations/ folder in it or beside it (CUB's segmentations.tgz, extracted)")


def _read_cub(cub: Path) -> list[dict]:
    """One record per CUB image: id, relative path, label, CUB train flag, image and mask paths."""
    images = _read_id_table(cub / "images.txt")
    is_train = _read_id_table(cub / "train_test_split.txt")
    masks = _segmentations_folder(cub)
    birds, missing = [], []
    for image_id, relative in sorted(images.items()):
        if image_id not in is_train or is_train[image_id] not in ("0", "1"):
            raise DatasetError(f"{cub / 'train_test_split.txt'}: no 0/1 train flag for image id {image_id}")
        bird = {"id": image_id, "filename": relative, "y": int(is_waterbird(relative.split("/")[0])),
                "cub_train": is_train[image_id] == "1", "image": cub / "images" / relative,
                "mask": masks / Path(relative).with_suffix(".png")}
        missing += [f"{bird[key]} (id {image_id})" for key in ("image", "mask") if not bird[key].is_file()]
        birds.append(bird)
    if missing:
        raise DatasetError(f"{len(missing)} CUB file(s) not found, e.g. {missing[0]}")
    if not birds:
        raise DatasetError(f"{cub / 'images.txt'}: lists no images")
    return birds


def _places_folder(places: Path) -> Path:
    """The folder holding the Places365 category folders (b/bamboo_forest/...): `places` or its data_large/."""
    for candidate in (places, places / "data_large", places / "data_256"):
        if all((candidate / category).is_dir() for group in PLACES for category in group):
            return candidate
    wanted = ", ".join(f"{c}/" for group in PLACES for c in group)
    raise DatasetError(f"{places}: needs the Places365 folders {wanted} in it or in its data_large/")


def _background_pools(folder: Path) -> list[list[str]]:
    """Per place code, the background files (relative to `folder`), sorted so a seed fixes the draw."""
    return [sorted(f"{category}/{p.name}" for category in group for p in (folder / category).iterdir()
                   if p.suffix.lower() in (".jpg", ".jpeg"))
            for group in PLACES]


def _assign_splits(birds: list[dict], val_fraction: float, seed: int) -> None:
    """CUB test → test; per class, a seeded `val_fraction` of CUB train → val, the rest → train."""
    rng = stage_rng(seed, 0)
    for y in (0, 1):
        pool = [b for b in birds if b["cub_train"] and b["y"] == y]
        val = set(rng.permutation(len(pool))[:round(val_fraction * len(pool))].tolist())
        for k, b in enumerate(pool):
            b["split"] = "val" if k in val else "train"
    for b in birds:
        if not b["cub_train"]:
            b["split"] = "test"


def _assign_places(birds: list[dict], matched: float, seed: int) -> None:
    """Per split and class, exactly round(share × n) birds get their own background: share = `matched` in
    train, 0.5 in val and test. The seeded order does not depend on `matched`, so variants of one seed
    are nested (a higher share turns more of the same birds to matched) and share val and test."""
    rng = stage_rng(seed, 1)
    for split in SPLIT_CODES:
        share = matched if split == "train" else 0.5
        for y in (0, 1):
            members = [b for b in birds if b["split"] == split and b["y"] == y]
            n_matched = round(share * len(members))
            for rank, k in enumerate(rng.permutation(len(members))):
                members[k]["place"] = y if rank < n_matched else 1 - y


def _assign_backgrounds(birds: list[dict], pools: list[list[str]], places_folder: Path, seed: int) -> None:
    """Each bird gets its own background, drawn without replacement; test and val draw first so their
    images are the same for every matched share."""
    rng = stage_rng(seed, 2)
    order = {"test": 0, "val": 1, "train": 2}
    for place, pool in enumerate(pools):
        takers = sorted((b for b in birds if b["place"] == place), key=lambda b: (order[b["split"]], b["id"]))
        if len(takers) > len(pool):
            raise DatasetError(f"{places_folder}: {len(pool)} {' + '.join(PLACES[place])} images for "
                               f"{len(takers)} birds; every bird needs its own background")
        for b, k in zip(takers, rng.permutation(len(pool))):
            b["background"] = pool[k]


def _compose(bird: dict, places_folder: Path, out: Path) -> None:
    """Paste the masked bird on its background (cropped and resized to the bird photo) and save it."""
    from PIL import Image, ImageOps

    photo = open_image(bird["image"], str(bird["id"]))
    mask = open_image(bird["mask"], str(bird["id"])).convert("L")  # grey values stay exact through RGB
    if mask.size != photo.size:
        raise DatasetError(f"{bird['mask']}: segmentation is {mask.size}, the image {photo.size} (id {bird['id']})")
    background = open_image(places_folder / bird["background"], str(bird["id"]))
    background = ImageOps.fit(background, photo.size, Image.Resampling.LANCZOS)
    target = out / bird["filename"]
    target.parent.mkdir(parents=True, exist_ok=True)
    Image.composite(photo, background, mask).save(target)


def build_waterbirds(config: WaterbirdsBuild, progress: Callable[[int, int], None] | None = None) -> dict:
    """Build a Waterbirds variant into `config.out`; returns the build record also written to build.json.

    Deterministic for a seed: same inputs and seed → identical metadata.csv and images.
    """
    folder = build_folder(config.out, "datasets build-waterbirds", config.overwrite)
    birds = _read_cub(config.cub)
    places_folder = _places_folder(config.places)
    pools = _background_pools(places_folder)
    _assign_splits(birds, config.val_fraction, config.seed)
    _assign_places(birds, config.matched, config.seed)
    _assign_backgrounds(birds, pools, places_folder, config.seed)
    rows = [{"img_id": b["id"], "img_filename": b["filename"], "y": b["y"], "split": SPLIT_CODES[b["split"]],
             "place": b["place"], "place_filename": "/" + b["background"]} for b in birds]

    with folder.writing() as out:
        done = 0
        if progress:
            progress(0, len(birds))
        with concurrent.futures.ThreadPoolExecutor(config.threads) as pool:
            for _ in pool.map(lambda b: _compose(b, places_folder, out), birds):
                done += 1
                if progress:
                    progress(done, len(birds))
        write_csv(out / "metadata.csv", rows, columns=COLUMNS)
        return write_build_record(out, {
            "dataset": "waterbirds-variant", "matched": config.matched, "seed": config.seed,
            "val_fraction": config.val_fraction, "cub": str(config.cub.resolve()),
            "places": str(places_folder.resolve()),
            "counts": group_counts(rows, {str(v): k for k, v in SPLIT_CODES.items()}, Waterbirds.label_names,
                                   Waterbirds.place_names),
        })


@register_dataset("waterbirds-variant")
class WaterbirdsVariant(Waterbirds):
    """--root: a folder written by `embedcache datasets build-waterbirds`.

    A distinct adapter rather than an alias: it requires the builder's `build.json` and adds the matched
    share, seed and val fraction to the cache's dataset description, so analyses across variants
    (accuracy against matched share) read them from the caches. `waterbirds` reads the same folder as a
    plain Waterbirds dataset.
    """

    folder_names = ()

    def __init__(self, root: str | Path):
        super().__init__(root)
        path = self.folder / BUILD_RECORD
        if not path.is_file():
            raise DatasetError(f"{path}: not found; 'waterbirds-variant' reads a folder written by "
                               "`embedcache datasets build-waterbirds` (the 'waterbirds' adapter reads the release)")
        try:
            self.build = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DatasetError(f"{path}: cannot read the build record ({e})") from None
        if not isinstance(self.build, dict) or self.build.get("dataset") != "waterbirds-variant" \
                or "matched" not in self.build:
            raise DatasetError(f"{path}: not a build record of 'waterbirds-variant'")

    def describe(self) -> dict:
        build = {key: self.build.get(key) for key in ("matched", "seed", "val_fraction")}
        return {**super().describe(), "build": build}
