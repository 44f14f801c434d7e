"""`waterbirds`: birds pasted on land or water backgrounds (Sagawa et al. 2020), as WILDS or group_DRO ship it."""

from __future__ import annotations

from typing import ClassVar

from embedcache.datasets.base import CsvImageAdapter, coded, register_dataset
from embedcache.metadata import Metadata


class LabelPlaceImages(CsvImageAdapter):
    """Images with a binary label `y` and a binary spurious cue `place`, listed in `metadata.csv`.

    The shared reader of Waterbirds and Treeperson; subclasses name the columns' meanings. The label ×
    place subgroups are not a column of their own: evaluation and analysis name them `label*place`.
    """

    id_column = "img_id"
    file_column = "img_filename"
    label_names: ClassVar[tuple[str, str]]
    place_names: ClassVar[tuple[str, str]]
    split_codes: ClassVar[dict[str, str]]

    def read(self) -> tuple[Metadata, list[str]]:
        ids, files, labels, splits, places = [], [], [], [], []
        label_codes = {"0": 0, "1": 1}
        place_codes = {"0": self.place_names[0], "1": self.place_names[1]}
        for example_id, filename, where, row in self.image_rows():
            ids.append(example_id)
            files.append(filename)
            labels.append(coded(row, "y", label_codes, where))
            splits.append(coded(row, "split", self.split_codes, where))
            places.append(coded(row, "place", place_codes, where))
        metadata = Metadata.from_values(ids, labels, splits, groups={"place": places}, label_names=self.label_names,
                                        group_orders={"place": self.place_names})
        return metadata, files


@register_dataset("waterbirds")
class Waterbirds(LabelPlaceImages):
    """--root: `waterbirds_v1.0/` (WILDS), `waterbird_complete95_forest2water2/` (the group_DRO release), a
    folder written by `embedcache datasets build-waterbirds`, or a parent holding one of the first two.

    Reads `metadata.csv` (`img_id,img_filename,y,split,place,...`): id = img_id, label y (1 = waterbird),
    split 0/1/2 = train/val/test, group `place` (1 = water).
    """

    folder_names = ("waterbirds_v1.0", "waterbird_complete95_forest2water2")
    columns = ("img_id", "img_filename", "y", "split", "place")
    label_names = ("landbird", "waterbird")
    place_names = ("land", "water")
    split_codes = {"0": "train", "1": "val", "2": "test"}
