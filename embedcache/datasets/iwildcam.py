"""`iwildcam`: iWildCam2020-WILDS camera-trap photos, 182 animal classes, grouped by camera location."""

from __future__ import annotations

from embedcache.datasets.base import CsvImageAdapter, coded, csv_rows, register_dataset
from embedcache.errors import DatasetError
from embedcache.metadata import CANONICAL_SPLITS, Metadata


def _class_index(value: str | None, where: str, column: str) -> int:
    text = (value or "").strip()
    if not text.isdigit():
        raise DatasetError(f"{where}: {column} {text!r} is not a non-negative integer")
    return int(text)


@register_dataset("iwildcam")
class IWildCam(CsvImageAdapter):
    """--root: `iwildcam_v2.0/` as WILDS ships it, or a parent holding it.

    Reads `metadata.csv`: id = image_id, label y, split train / val (OOD) / test (OOD) / id_val / id_test,
    group `location` = location_remapped (WILDS' own dense location index, which it groups evaluation by;
    the raw `location` column holds the same cameras under other numbers). Images are `train/<filename>`
    for every split. Class names come from `categories.csv` (columns y, name) when it is there.
    """

    folder_names = ("iwildcam_v2.0",)
    columns = ("split", "location_remapped", "y", "filename", "image_id")
    id_column = "image_id"
    file_column = "filename"

    @property
    def image_root(self):
        return self.folder / "train"

    def read(self) -> tuple[Metadata, list[str]]:
        if not self.image_root.is_dir():
            raise DatasetError(f"{self.image_root}: no such folder; iWildCam-WILDS keeps every image under train/")
        split_codes = {name: name for name in CANONICAL_SPLITS}
        ids, files, labels, splits, locations = [], [], [], [], []
        for example_id, filename, where, row in self.image_rows():
            ids.append(example_id)
            files.append(filename)
            labels.append(_class_index(row["y"], where, "y"))
            splits.append(coded(row, "split", split_codes, where))
            locations.append(_class_index(row["location_remapped"], where, "location_remapped"))
        label_names = self._label_names(max(labels, default=-1) + 1)
        return Metadata.from_values(ids, labels, splits, groups={"location": locations},
                                    label_names=label_names), files

    def _label_names(self, num_labels: int) -> tuple[str, ...] | None:
        """Names of classes 0..K-1 from categories.csv (K = the larger of its and the metadata's class count)."""
        path = self.folder / "categories.csv"
        if not path.is_file():
            return None
        names = {}
        for _, row in csv_rows(path, ("y", "name")):
            if (row["y"] or "").strip().lstrip("-").isdigit() and int(row["y"]) >= 0:
                names[int(row["y"])] = (row["name"] or "").strip()
        unnamed = [y for y in range(max(num_labels, max(names, default=-1) + 1)) if not names.get(y)]
        if unnamed:
            raise DatasetError(f"{path}: no name for class(es) y = {unnamed[:5]}")
        return tuple(names[y] for y in sorted(names))
