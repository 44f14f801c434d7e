"""`imagefolder`: images in class sub-folders (root/<class>/...); optional split folders above them."""

from __future__ import annotations

from embedcache.datasets.base import register_dataset, IMAGE_SUFFIXES, DatasetAdapter
from embedcache.errors import DatasetError
from embedcache.metadata import CANONICAL_SPLITS, Metadata

#: Top-level folder names taken as splits (root/<split>/<class>/...) when every top folder is one.
SPLIT_FOLDERS = set(CANONICAL_SPLITS) | {"validation", "valid"}


@register_dataset("imagefolder")
class ImageFolder(DatasetAdapter):
    """Label = class folder (sorted names → indices); id = path relative to root; split = "train"
    unless the top-level folders are all split names (train/, val/, test/ ...)."""

    modality = "image"

    def read(self) -> tuple[Metadata, list[str]]:
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: imagefolder expects a folder of class sub-folders")
        top = sorted(p for p in self.root.iterdir() if p.is_dir())
        by_split = bool(top) and all(p.name in SPLIT_FOLDERS for p in top)
        split_dirs = [(("val" if p.name in ("validation", "valid") else p.name), p) for p in top] if by_split \
            else [("train", self.root)]
        classes = sorted({c.name for _, d in split_dirs for c in d.iterdir() if c.is_dir()})
        if not classes:
            raise DatasetError(f"{self.root}: no class sub-folders found")
        ids, labels, splits = [], [], []
        for split, folder in split_dirs:
            for label, cls in enumerate(classes):
                class_dir = folder / cls
                if not class_dir.is_dir():
                    continue
                for path in sorted(class_dir.rglob("*")):
                    if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
                        ids.append(path.relative_to(self.root).as_posix())
                        labels.append(label)
                        splits.append(split)
        if not ids:
            raise DatasetError(f"{self.root}: no image files ({', '.join(IMAGE_SUFFIXES)}) in the class folders")
        return Metadata.from_values(ids, labels, splits, label_names=classes), list(ids)
