"""`amazon`: Amazon-WILDS product reviews, 1 to 5 stars, with WILDS' split by reviewer (`user`)."""

from __future__ import annotations

import contextlib
import csv
from pathlib import Path
from typing import Iterator

from embedcache.datasets.base import DatasetAdapter, coded, csv_rows, find_dataset_folder, register_dataset
from embedcache.errors import DatasetError
from embedcache.metadata import Metadata

#: splits/user.csv codes (WILDS' `user` split scheme); -1 marks a review that is not in the dataset.
SPLIT_CODES = {"0": "train", "1": "val", "2": "id_val", "3": "test", "4": "id_test"}
NOT_IN_DATASET = "-1"
REVIEW_COLUMNS = ("reviewerID", "overall", "reviewText", "category")


@contextlib.contextmanager
def _long_csv_fields() -> Iterator[None]:
    """Let the csv module read review texts longer than its default 128 KiB cell limit, then restore it."""
    previous = csv.field_size_limit(2**31 - 1)
    try:
        yield
    finally:
        csv.field_size_limit(previous)


@register_dataset("amazon")
class Amazon(DatasetAdapter):
    """--root: `amazon_v2.1/` as WILDS ships it, or a parent holding it.

    Row i of `splits/user.csv` (`split,clean`) belongs to row i of `reviews.csv`. As in WILDS, rows with
    split -1 are left out and `clean` is not read (WILDS uses it only to build its unlabeled sets). id =
    the review's 0-based row in reviews.csv; text = reviewText; label = overall - 1; groups `user`
    (reviewerID) and `category`; splits train / val (OOD) / id_val / test (OOD) / id_test. reviews.csv
    (about 1.4 M rows) is streamed, keeping only the rows in the dataset.
    """

    modality = "text"

    def __init__(self, root: str | Path):
        super().__init__(root)
        self.folder = find_dataset_folder(self.root, "reviews.csv", ("amazon_v2.1",), self.name)
        self.reviews_path = self.folder / "reviews.csv"
        self.splits_path = self.folder / "splits" / "user.csv"
        if not self.splits_path.is_file():
            raise DatasetError(f"{self.splits_path}: not found (Amazon-WILDS keeps its user split there)")

    def _read_splits(self) -> list[str | None]:
        """The split of every reviews.csv row, None where it is not in the dataset."""
        codes = {NOT_IN_DATASET: None, **SPLIT_CODES}
        return [coded(row, "split", codes, f"{self.splits_path}, line {line} (row {line - 2} of reviews.csv)")
                for line, row in csv_rows(self.splits_path, ("split",))]

    def read(self) -> tuple[Metadata, list[str]]:
        splits = self._read_splits()
        ids, texts, labels, kept_splits, users, categories = [], [], [], [], [], []
        stars = {str(s): s - 1 for s in range(1, 6)} | {f"{s}.0": s - 1 for s in range(1, 6)}
        rows = 0
        with _long_csv_fields(), open(self.reviews_path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, [])
            missing = [c for c in REVIEW_COLUMNS if c not in header]
            if missing:
                raise DatasetError(f"{self.reviews_path}: missing column(s) {missing}; found {header}")
            column = {name: header.index(name) for name in REVIEW_COLUMNS}
            start = reader.line_num + 1
            try:
                for rows, cells in enumerate(reader, start=1):
                    split = splits[rows - 1] if rows <= len(splits) else None
                    if split is not None:
                        where = f"{self.reviews_path}, line {start} (id '{rows - 1}')"
                        if len(cells) != len(header):
                            raise DatasetError(f"{where}: {len(cells)} cells, the header has {len(header)}")
                        review = {name: cells[i] for name, i in column.items()}
                        ids.append(str(rows - 1))
                        texts.append(review["reviewText"])
                        labels.append(coded(review, "overall", stars, where))
                        kept_splits.append(split)
                        users.append(review["reviewerID"])
                        categories.append(review["category"])
                    start = reader.line_num + 1
            except csv.Error as e:
                raise DatasetError(f"{self.reviews_path}, line {reader.line_num}: cannot read CSV ({e})") from None
        if rows != len(splits):
            raise DatasetError(f"{self.reviews_path} has {rows} reviews but {self.splits_path} has {len(splits)} "
                               "rows; they must be the same length (one split per review)")
        return Metadata.from_values(ids, labels, kept_splits, groups={"user": users, "category": categories},
                                    label_names=("1 star", "2 stars", "3 stars", "4 stars", "5 stars")), texts
