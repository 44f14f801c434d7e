"""`suggest` (the next batch to label) and `predict` (a prediction for every row), as library calls."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import numpy as np

from embedcache.cache import EmbeddingCache
from embedcache.stopping import Signal, measures_of, stopping_signals
from embedcache.workflow.head import Head
from embedcache.workflow.labels import LabelState
from embedcache.workflow.workspace import Model, Workspace

#: Labels per round of the stopping signals' history.
ROUND_SIZE = 10


@dataclasses.dataclass
class Suggestion:
    rank: int
    id: str
    score: float
    predicted: str | None  # None before the first label
    probability: float | None
    text: str | None = None
    path: str | None = None


@dataclasses.dataclass
class SuggestResult:
    suggestions: list[Suggestion]
    strategy: str  # the strategy that ranked: the one asked for, or the random cold start
    n_labels: int
    pool: int  # candidates left before this batch
    classes: list[str]
    signals: list[Signal]
    rounds: int


def suggest(workspace: Workspace, state: LabelState, k: int, strategy: str = "least-confidence", seed: int = 0,
            round_size: int = ROUND_SIZE) -> SuggestResult:
    """Fit the head on every label, rank the pool and return the k best, with the stopping signals
    of the rounds so far. Deterministic for the same cache, labels, strategy and seed."""
    model = Model(workspace, strategy, seed)
    rows, y, classes = workspace.training_set(state)
    history = model.round_history(rows, y, classes, round_size)
    candidates = workspace.candidates(state)
    chosen, scores = model.rank(candidates, k)
    proba = model.predict_proba(chosen)
    suggestions = []
    for i, (row, score) in enumerate(zip(chosen.tolist(), np.asarray(scores, dtype=np.float64).tolist())):
        example = workspace.example(row)
        predicted = probability = None
        if proba is not None:
            best = int(proba[i].argmax())
            predicted, probability = classes[best], float(proba[i, best])
        suggestions.append(Suggestion(rank=i + 1, id=example.id, score=score, predicted=predicted,
                                      probability=probability, text=example.text,
                                      path=None if example.path is None else str(example.path)))
    return SuggestResult(suggestions, model.active_strategy, len(rows), len(candidates), classes,
                         stopping_signals(measures_of(history)), len(history))


def suggestion_columns(result: SuggestResult) -> dict[str, list]:
    """The batch as table columns: rank, id, score, predicted, probability, and text or path when known."""
    columns = {name: [getattr(s, name) for s in result.suggestions]
               for name in ("rank", "id", "score", "predicted", "probability")}
    for name in ("text", "path"):
        values = [getattr(s, name) for s in result.suggestions]
        if any(v is not None for v in values):
            columns[name] = values
    return columns


def fit_head(workspace: Workspace, state: LabelState, seed: int = 0) -> Head:
    """The head fitted on every label (the model `suggest` ranks with)."""
    rows, y, classes = workspace.training_set(state)
    return Model(workspace, seed=seed).fit(rows, y, classes).head()


def predict(cache_path: str | Path, head: Head, known: dict[str, str] | None = None,
            progress: Callable[[int, int], None] | None = None) -> dict[str, list | np.ndarray]:
    """Predictions for every row of a cache (read block by block): id, split, predicted, probability,
    label (the known label, from `known`: id → name, else empty) and p_<class> for every class."""
    with EmbeddingCache(cache_path) as cache:
        cache.require_complete()
        head.check_cache(cache.path, cache.fingerprint, cache.recipe, cache.dim)
        meta = cache.metadata()
        proba = np.zeros((cache.n_rows, len(head.label_names)), dtype=np.float32)
        if progress:
            progress(0, cache.n_rows)
        for rows, block in cache.iter_chunks():
            proba[rows] = head.predict_proba(block)
            if progress:
                progress(int(rows[-1]) + 1, cache.n_rows)
    best = proba.argmax(axis=1)
    names = np.array(head.label_names, dtype=object)
    ids = meta.ids.tolist()
    known = known or {}
    columns: dict[str, list | np.ndarray] = {
        "id": ids, "split": [meta.split_names[s] for s in meta.split.tolist()],
        "predicted": names[best].tolist(), "probability": proba[np.arange(len(best)), best],
        "label": [known.get(i, "") for i in ids],
    }
    for c, name in enumerate(head.label_names):
        columns[f"p_{name}"] = proba[:, c]
    return columns


def known_labels(workspace: Workspace, state: LabelState) -> dict[str, str]:
    """id → label name of every training label (the cache's, when used, and the file's)."""
    rows, y, classes = workspace.training_set(state)
    ids = workspace.metadata.ids
    return {ids[r]: classes[c] for r, c in zip(rows.tolist(), y.tolist())}
