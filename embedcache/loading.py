"""Examples of a dataset through a backbone's transform, in batches: the one loader extraction and
finetuning read examples with. A bad example does not stop the loader: its message comes back with
the batch, so a caller can skip it (extraction's --skip-bad) or stop with it (finetuning)."""

from __future__ import annotations

import os
from typing import Callable, Sequence

import torch

from embedcache.datasets import DatasetAdapter
from embedcache.errors import DatasetError


class _Examples(torch.utils.data.Dataset):
    """Loads and transforms example `rows[k]`; failures are returned, not raised, so they can be skipped."""

    def __init__(self, dataset: DatasetAdapter, transform: Callable, rows: Sequence[int]):
        self.dataset, self.transform, self.rows = dataset, transform, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, k: int):
        try:
            return self.transform(self.dataset.load(self.rows[k])), None
        except DatasetError as e:
            return None, str(e)
        except Exception as e:  # a transform failing on odd input (e.g. a 1-pixel image)
            return None, f"{self.dataset.location(self.rows[k])}: {type(e).__name__}: {e}"


class _Collate:
    def __init__(self, collate: Callable):
        self.collate = collate

    def __call__(self, items: list):
        good = [x for x, err in items if err is None]
        errors = {k: err for k, (_, err) in enumerate(items) if err is not None}
        return len(items), (self.collate(good) if good else None), errors


def default_workers(modality: str) -> int:
    """Loader processes when none are asked for: one fewer than the CPUs (at most 8) for images, 0 for text."""
    return min(8, max(1, (os.cpu_count() or 2) - 1)) if modality == "image" else 0


def example_loader(dataset: DatasetAdapter, transform: Callable, collate: Callable, rows: Sequence[int],
                   batch_size: int, num_workers: int | None = None,
                   pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """Batches of dataset `rows` in order, as `(size, batch, errors)`: `batch` collates the examples that
    loaded (None if none did), `errors` maps a failed example's position in the batch to its message.
    Extraction and finetuning both read examples through this one loader."""
    workers = default_workers(dataset.modality) if num_workers is None else num_workers
    return torch.utils.data.DataLoader(_Examples(dataset, transform, rows), batch_size=batch_size, shuffle=False,
                                       num_workers=workers, collate_fn=_Collate(collate), pin_memory=pin_memory)
