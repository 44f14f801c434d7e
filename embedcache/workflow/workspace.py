"""A cache opened for work on your own data: the rows that may be suggested, the class names, the
training set a labels file makes, each example's text or image, and the model fitted on it.

The pool is the rows of `split` (all rows without one) that have no label: none in the cache
(`label` -1) and none in the labels file, and that were not skipped. The training set is the
cache's own labels (unless `cache_labels=False`, which treats every row as unlabelled: how the demo
lets you label a dataset whose answers are known) followed by the labels file's, in the order they
were given. Class names are `classes` when given (then fixed), else the cache's label names and
then every new name the labels file brings, in order of first appearance, so the keys of the page
never move.

`Model` is the linear head (`LinearLearner`, warm-started as labels arrive) with a strategy from
`embedcache.strategies`; with no labels yet it draws a seeded random cold start. Everything is a
function of the cache, the labels and the seed, so `suggest` gives the same batch for the same inputs.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from embedcache.strategies import create_strategy
from embedcache.cache import EmbeddingCache
from embedcache.errors import ConfigError, DatasetError
from embedcache.learners.linear import LinearLearner
from embedcache.metadata import Metadata
from embedcache.stopping import STOP_SET_SIZE
from embedcache.workflow.labels import LabelsError, LabelState

#: progress(done, total)
Progress = Callable[[int, int], None]
#: The strategy used while there are no labels: a seeded uniform draw.
COLD_START = "random"


@dataclasses.dataclass
class Example:
    """What a person needs to judge one row: its id, and its text or image path when the cache's
    dataset can still be read."""

    row: int
    id: str
    text: str | None = None
    path: Path | None = None


class Workspace:
    """A complete cache, read once: metadata, float32 features of every row, the pool and the classes."""

    def __init__(self, path: str | Path, *, split: str | None = None, classes: Sequence[str] | None = None,
                 cache_labels: bool = True, progress: Progress | None = None):
        self.path = Path(path)
        with EmbeddingCache(self.path) as cache:
            cache.require_complete()
            self.fingerprint = cache.fingerprint
            self.recipe = cache.recipe
            self.dataset = cache.dataset or {}
            self.metadata: Metadata = cache.metadata()
            self.features = np.empty((cache.n_rows, cache.dim), dtype=np.float32)
            done = 0
            if progress:
                progress(0, cache.n_rows)
            for rows, block in cache.iter_chunks():
                self.features[rows] = block
                done += len(rows)
                if progress:
                    progress(done, cache.n_rows)
        meta = self.metadata
        self.split = split
        self.split_rows = meta.split_indices(split) if split is not None else np.arange(len(meta))
        if not len(self.split_rows):
            raise ConfigError(f"{split!r} of {self.path} has no rows", param="split")
        self.cache_labels = cache_labels
        known = meta.label >= 0 if cache_labels else np.zeros(len(meta), dtype=bool)
        self.cache_labelled = np.flatnonzero(known)
        self.fixed_classes = classes is not None
        if classes is not None:
            self.base_classes = [str(c).strip() for c in classes]
            if not self.base_classes or any(not c for c in self.base_classes) or \
                    len(set(self.base_classes)) != len(self.base_classes):
                raise ConfigError(f"must be distinct non-empty names, got {list(classes)}", param="classes")
        else:
            self.base_classes = list(meta.label_names or [])
        if cache_labels and len(self.cache_labelled):
            cache_names = meta.label_names or tuple(str(c) for c in range(int(meta.label.max()) + 1))
            missing = [n for n in cache_names if n not in self.base_classes]
            if missing and self.fixed_classes:
                raise ConfigError(f"{self.path} labels rows as {missing}, which `classes` lacks; add them or pass "
                                  "`ignore_cache_labels`")
            self.base_classes += missing
            index = {name: i for i, name in enumerate(self.base_classes)}
            self._cache_y = np.array([index[cache_names[c]] for c in meta.label[self.cache_labelled]], dtype=np.int64)
        else:
            self._cache_y = np.zeros(0, dtype=np.int64)
        self.pool_rows = self.split_rows[~known[self.split_rows]]
        self._row_of = {example_id: row for row, example_id in enumerate(meta.ids.tolist())}
        self._inputs: tuple[list[str], np.ndarray, Path | None, str] | None = None

    # ------------------------------------------------------------------ labels → training set
    def row_of(self, example_id: str) -> int | None:
        return self._row_of.get(example_id)

    def classes(self, state: LabelState) -> list[str]:
        """Class names in key order: the fixed or cache names, then names the labels file brings."""
        if self.fixed_classes:
            return list(self.base_classes)
        return self.base_classes + [c for c in state.classes_seen if c not in self.base_classes]

    def training_set(self, state: LabelState) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """(rows, class indices, class names) of every label: the cache's first, then the file's in order.

        Ids the cache lacks and names outside fixed classes are errors that name them and their lines.
        """
        labels = state.labels()
        unknown = [row for row in labels if row.id not in self._row_of]
        if unknown:
            shown = ", ".join(f"{r.id!r} (line {r.line})" if r.line else repr(r.id) for r in unknown[:5])
            raise LabelsError(f"{state.source}: {len(unknown)} labelled id(s) are not in {self.path}: {shown}")
        classes = self.classes(state)
        index = {name: i for i, name in enumerate(classes)}
        strange = [row for row in labels if row.label not in index]
        if strange:
            shown = ", ".join(f"{r.label!r} for {r.id!r} (line {r.line})" for r in strange[:5])
            raise LabelsError(f"{state.source}: label(s) outside `classes` {classes}: {shown}")
        rows = np.array([self._row_of[r.id] for r in labels], dtype=np.int64)
        twice = np.intersect1d(rows, self.cache_labelled)
        if len(twice):
            raise LabelsError(f"{state.source}: id {self.metadata.ids[twice[0]]!r} already has a label in {self.path}; "
                              "pass `ignore_cache_labels` to label the cache's rows anew")
        y = np.array([index[r.label] for r in labels], dtype=np.int64)
        return np.concatenate([self.cache_labelled, rows]), np.concatenate([self._cache_y, y]), classes

    def candidates(self, state: LabelState, exclude: Sequence[str] = ()) -> np.ndarray:
        """Pool rows with no label in the file, not skipped, and not in `exclude` (ids), in row order."""
        gone = [i for i, row in state.current.items() if row.action != "retract"] + list(exclude)
        taken = np.zeros(len(self.metadata), dtype=bool)
        taken[[self._row_of[i] for i in gone if i in self._row_of]] = True
        return self.pool_rows[~taken[self.pool_rows]]

    # ------------------------------------------------------------------ inputs
    def _input_table(self) -> tuple[list[str], np.ndarray, Path | None, str]:
        """(inputs, cache row → dataset index, image root, why not) from the dataset the cache was made from."""
        if self._inputs is None:
            inputs, index, root, why = [], np.full(len(self.metadata), -1, dtype=np.int64), None, ""
            name, where = self.dataset.get("name"), self.dataset.get("root")
            if not name or not where or name == "in-memory":
                why = f"{self.path} does not record a dataset folder (made from vectors in memory)"
            else:
                from embedcache.datasets import create_dataset

                try:
                    dataset = create_dataset(name, where, **(self.dataset.get("options") or {}))
                    inputs = dataset.inputs
                    position = {i: k for k, i in enumerate(dataset.metadata.ids.tolist())}
                    index = np.array([position.get(i, -1) for i in self.metadata.ids.tolist()], dtype=np.int64)
                    root = dataset.image_root if dataset.modality == "image" else None
                except (DatasetError, ConfigError) as e:
                    why = f"the dataset {self.path} was made from cannot be read: {e}"
            self._inputs = (inputs, index, root, why)
        return self._inputs

    @property
    def modality(self) -> str:
        return self.dataset.get("modality") or "unknown"

    @property
    def image_root(self) -> Path | None:
        """The folder the dataset's image paths are relative to (None for text or unreadable datasets)."""
        return self._input_table()[2]

    @property
    def inputs_unavailable(self) -> str:
        """Why texts / images cannot be shown ('' when they can)."""
        return self._input_table()[3]

    def example(self, row: int) -> Example:
        inputs, index, root, _ = self._input_table()
        example = Example(row=int(row), id=str(self.metadata.ids[row]))
        k = int(index[row]) if len(index) else -1
        if k >= 0:
            if root is None:
                example.text = inputs[k]
            else:
                example.path = root / inputs[k]
        return example


class Model:
    """The head fitted on the training set, the strategy that ranks the pool, and the stop set.

    `fit` warm-starts the LinearLearner when the labelled rows extend the last fit's (each new label
    in the page); new class names build a new learner. The learner is prepared on the split's rows,
    so its standardisation and its contiguous pool block do not depend on the labels.
    """

    def __init__(self, workspace: Workspace, strategy: str = "least-confidence", seed: int = 0,
                 stop_set_size: int = STOP_SET_SIZE):
        self.workspace = workspace
        self.strategy_name = strategy
        self.strategy = create_strategy(strategy)
        # before the first label: the strategy itself when it can choose without labels, else random
        self.cold_start = self.strategy if self.strategy.cold_start else create_strategy(COLD_START)
        self.seed = int(seed)
        pool = workspace.split_rows
        rng = np.random.default_rng([self.seed, 7])
        self.stop_rows = np.sort(rng.choice(pool, size=min(stop_set_size, len(pool)), replace=False))
        self._stop_features = workspace.features[self.stop_rows]  # contiguous: scored after every refit
        self.learner: LinearLearner | None = None
        self.classes: list[str] = []
        self.n_labels = 0
        self.labeled_rows = np.zeros(0, dtype=np.int64)

    def fit(self, rows: np.ndarray, y: np.ndarray, classes: list[str]) -> "Model":
        """Fit on (rows, class indices into `classes`); with no rows the model is the cold start."""
        if self.learner is None or len(classes) != self.learner.num_classes:
            self.learner = LinearLearner(self.workspace.features, max(len(classes), 1))
            self.learner.prepare(self.workspace.split_rows, {})
        self.classes = list(classes)
        self.n_labels = len(rows)
        self.labeled_rows = np.asarray(rows, dtype=np.int64)
        if len(rows):
            self.learner.fit(rows, y)
        return self

    @property
    def fitted(self) -> bool:
        return self.n_labels > 0

    @property
    def active_strategy(self) -> str:
        """The strategy ranking now: the chosen one, or before the first label the cold start (the chosen
        one when it needs no labels: typiclust, probcover, coreset; else random)."""
        return self.strategy_name if self.fitted or self.strategy.cold_start else COLD_START

    def rank(self, candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k best candidates (rows, scores), best first."""
        if not len(candidates):
            return candidates[:0], np.zeros(0)
        if self.fitted:
            return self.strategy.select(self.learner, candidates, self.labeled_rows, k, self.seed)
        if self.cold_start.cold_start:  # from the candidates' embeddings alone
            k = min(k, len(candidates))
            embeddings = np.ascontiguousarray(self.learner.embed(candidates), dtype=np.float32)
            positions, scores = self.cold_start.seed_set(embeddings, k, self.seed, max(len(self.classes), 2))
            return candidates[np.asarray(positions, dtype=np.int64)], scores
        return self.cold_start.select(self.learner, candidates, self.labeled_rows, k, self.seed)

    def predict_proba(self, rows: np.ndarray) -> np.ndarray | None:
        """[n, classes] probabilities, or None before the first label."""
        if not self.fitted:
            return None
        return self.learner.predict_proba(np.asarray(rows, dtype=np.int64))[:, :len(self.classes)]

    def stop_set_proba(self) -> np.ndarray | None:
        """[stop set, classes] probabilities, or None before the first label."""
        return self.head().predict_proba(self._stop_features) if self.fitted else None

    def round_history(self, rows: np.ndarray, y: np.ndarray, classes: list[str], round_size: int) -> list[np.ndarray]:
        """Stop-set probabilities of the models fitted on the first round_size·j labels, j = 1, 2, …,
        then the model fitted on all of them is left in place (the warm-start chain, prefix by prefix)."""
        history = []
        for end in range(round_size, len(rows) + 1, round_size):
            self.fit(rows[:end], y[:end], classes)
            history.append(self.stop_set_proba())
        self.fit(rows, y, classes)
        return history

    def head(self):
        """The fitted head as a `Head` (see head.py), to save or to predict with."""
        from embedcache.workflow.head import Head

        if not self.fitted:
            raise ConfigError("no labels yet: label some examples before saving or using a head")
        return Head.from_learner(self.learner, self.classes, self.workspace.fingerprint, self.workspace.recipe,
                                 n_labels=self.n_labels)
