"""The labelling page's state, without the web: who sees which example, what a label does, the side panel.

Every action goes through the labels file (`LabelsFile`), under its OS lock, before anything else
changes: the row is fsynced before the action returns, so the page never moves on from a label that
is not on disk. The file is the only truth: the session re-reads what other processes appended
before each action, a restart rebuilds everything from it, and the file (not the browser) decides
when two tabs send a label for one id (the second gets a conflict and the next example).

Each browser tab has an id; the session shows different tabs different examples (the best-ranked
one not shown in another tab within `lease_seconds`). Every `round_size` labels the stop-set
predictions are kept, for the stopping signals and the "changed since the last round" figure.

After a label the head refits (warm-started) and re-ranks at once the `SHORTLIST` best candidates of
the last full ranking: the tab's next example is the best of those under the new head. The whole
pool is re-ranked by `complete_ranking`, which the app runs right after sending the answer; every
request first completes a pending full ranking itself, so what a tab is shown never depends on
timing, only on the order of actions. A person takes longer to read an example than the full
ranking takes, so the page stays fast however large the pool (see benchmarks/label_latency.py).
"""

from __future__ import annotations

import threading
import time
import urllib.parse
from pathlib import Path
from typing import Callable

import numpy as np

from embedcache.stopping import Measures, measure, stopping_signals
from embedcache.workflow.labels import LabelConflict, LabelsError, LabelsFile
from embedcache.workflow.suggest import ROUND_SIZE
from embedcache.workflow.workspace import Model, Workspace

#: How many of the best candidates are kept in order for the tabs (more than tabs anyone opens).
QUEUE = 32
#: How many of the best candidates a full ranking keeps for the next label's immediate re-rank.
SHORTLIST = 1024


class SessionError(LabelsError):
    """A request the session cannot carry out (unknown id or class, an id outside the pool)."""


class LabellingSession:
    def __init__(self, workspace: Workspace, labels: LabelsFile, *, strategy: str = "least-confidence",
                 seed: int = 0, annotator: str = "", round_size: int = ROUND_SIZE, media_root: str | Path | None = None,
                 lease_seconds: float = 600.0):
        self.workspace = workspace
        self.labels = labels
        self.annotator = annotator
        self.round_size = int(round_size)
        self.lease_seconds = lease_seconds
        self.model = Model(workspace, strategy, seed)
        root = media_root if media_root is not None else workspace.image_root
        self.media_root = None if root is None else Path(root).resolve()
        self._lock = threading.RLock()
        self._assigned: dict[str, tuple[str, float]] = {}  # tab → (id, when assigned)
        self._fitted: tuple[np.ndarray, np.ndarray, list[str]] = (np.zeros(0, np.int64), np.zeros(0, np.int64), [])
        self._rows_seen = -1  # rows of the labels file the model reflects
        self._history: list[np.ndarray] = []  # stop-set probabilities per round
        self._measures: list[Measures] = []  # and what the stopping signals read of them
        self._previous: np.ndarray | None = None  # stop-set predictions before the last refit
        self._current: np.ndarray | None = None  # and after it
        self._ranking: list[tuple[int, float]] = []
        self._shortlist = np.zeros(0, dtype=np.int64)
        self._stale = False  # the ranking covers only the shortlist: a full ranking is pending
        self._in_pool = np.zeros(len(workspace.metadata), dtype=bool)
        self._in_pool[workspace.pool_rows] = True
        self.timing = {"fit_ms": 0.0, "rank_ms": 0.0, "full_rank_ms": 0.0}
        with self._lock:
            self._sync()

    # ------------------------------------------------------------------ model upkeep
    def _sync(self, quick: bool = False) -> None:
        """Re-read the labels file; refit and re-rank if it changed (`quick`: the shortlist only)."""
        state = self.labels.read()
        if len(state.rows) == self._rows_seen:
            return
        rows, y, classes = self.workspace.training_set(state)
        old_rows, old_y, old_classes = self._fitted
        started = time.perf_counter()
        if classes != old_classes:
            common = 0
        else:
            n = min(len(rows), len(old_rows))
            same = (rows[:n] == old_rows[:n]) & (y[:n] == old_y[:n])
            common = n if same.all() else int(np.argmin(same))
        r = self.round_size
        self._history, self._measures = self._history[:common // r], self._measures[:common // r]
        for end in range(len(self._history) * r + r, len(rows) + 1, r):  # rounds the labels file now reaches
            self.model.fit(rows[:end], y[:end], classes)
            self._history.append(self.model.stop_set_proba())
            previous = self._history[-2].argmax(axis=1) if len(self._history) > 1 else None
            self._measures.append(measure(self._history[-1], previous)[0])
        self.model.fit(rows, y, classes)
        self._fitted = (rows, y, classes)
        self._rows_seen = len(state.rows)
        proba = self.model.stop_set_proba()
        self._previous, self._current = self._current, None if proba is None else proba.argmax(axis=1)
        fitted = time.perf_counter()
        self._rerank(quick)
        self.timing.update(fit_ms=1e3 * (fitted - started), rank_ms=1e3 * (time.perf_counter() - fitted))

    def _rerank(self, quick: bool) -> None:
        """Rank the shortlist's open rows (`quick`, when any are left) or the whole pool."""
        ids = self.workspace.metadata.ids
        shortlist = [r for r in self._shortlist.tolist() if self._open(ids[r])] if quick else []
        if shortlist:
            chosen, scores = self.model.rank(np.array(shortlist, dtype=np.int64), QUEUE)
        else:
            chosen, scores = self.model.rank(self.workspace.candidates(self.labels.state), SHORTLIST)
            self._shortlist = chosen
        self._stale = bool(shortlist)
        self._ranking = list(zip(chosen[:QUEUE].tolist(), np.asarray(scores[:QUEUE], dtype=np.float64).tolist()))

    def complete_ranking(self) -> None:
        """Re-rank the whole pool if the last action re-ranked only the shortlist."""
        with self._lock:
            if self._stale:
                started = time.perf_counter()
                self._rerank(quick=False)
                self.timing["full_rank_ms"] = 1e3 * (time.perf_counter() - started)

    def _next_for(self, tab: str) -> str | None:
        """The best-ranked candidate not shown in another live tab (kept if this tab's is still open)."""
        now = time.monotonic()
        live = {t: i for t, (i, when) in self._assigned.items() if now - when < self.lease_seconds}
        mine = live.get(tab)
        if mine is not None and self._open(mine):
            self._assigned[tab] = (mine, now)
            return mine
        others = {i for t, i in live.items() if t != tab}
        for refill in (False, True):
            if refill:
                self._rerank_beyond(others)
            for row, _ in self._ranking:
                example_id = self.workspace.metadata.ids[row]
                if example_id not in others and self._open(example_id):
                    self._assigned[tab] = (example_id, now)
                    return example_id
        self._assigned.pop(tab, None)
        return None

    def _pool_left(self) -> int:
        """Pool rows neither labelled nor skipped (without a pass over the pool)."""
        taken = sum(1 for i, row in self.labels.state.current.items() if row.action != "retract"
                    and (r := self.workspace.row_of(i)) is not None and self._in_pool[r])
        return len(self.workspace.pool_rows) - taken

    def _open(self, example_id: str) -> bool:
        """Neither labelled nor skipped now."""
        current = self.labels.state.current.get(example_id)
        return current is None or current.action == "retract"

    def _rerank_beyond(self, shown: set[str]) -> None:
        """Rank again with the ids other tabs show left out (when they fill the whole queue)."""
        candidates = self.workspace.candidates(self.labels.state, exclude=sorted(shown))
        chosen, scores = self.model.rank(candidates, QUEUE)
        self._ranking = list(zip(chosen.tolist(), np.asarray(scores, dtype=np.float64).tolist()))

    # ------------------------------------------------------------------ actions
    def view(self, tab: str) -> dict:
        """What the tab shows now."""
        with self._lock:
            self.complete_ranking()
            self._sync()
            return self._payload(tab)

    def label(self, tab: str, example_id: str, name: str) -> dict:
        """Write the label (fsynced), refit, and return the tab's next example."""
        with self._lock:
            self.complete_ranking()
            self._check_example(example_id)
            name = str(name).strip()
            classes = self.workspace.classes(self.labels.state)
            if self.workspace.fixed_classes and name not in classes:
                raise SessionError(f"{name!r} is not one of the classes {classes}")
            return self._record(tab, lambda: self.labels.label(example_id, name, self.annotator),
                                f"Labelled {example_id} as {name}.")

    def skip(self, tab: str, example_id: str) -> dict:
        with self._lock:
            self.complete_ranking()
            self._check_example(example_id)
            return self._record(tab, lambda: self.labels.skip(example_id, self.annotator), f"Skipped {example_id}.")

    def _record(self, tab: str, write: Callable[[], object], done: str) -> dict:
        """Write a label or skip (on disk before the page moves on); a conflict with another tab is shown, not
        raised."""
        try:
            write()
            message, conflict = done, False
        except LabelConflict as e:
            message, conflict = f"Not saved: {e}.", True
        self._assigned.pop(tab, None)
        self._sync(quick=True)
        return self._payload(tab, message, conflict)

    def undo(self, tab: str) -> dict:
        """Take back this annotator's latest label or skip; the tab shows that example again."""
        with self._lock:
            self.complete_ranking()
            try:
                row = self.labels.undo_last(self.annotator)
            except LabelConflict:
                self._sync()
                return self._payload(tab, "Nothing to undo.", True)
            self._sync(quick=True)
            self._assigned[tab] = (row.id, time.monotonic())
            what = f"label {row.label}" if row.label is not None else "skip"
            return self._payload(tab, f"Undid the {what} of {row.id}.", False)

    def _check_example(self, example_id: str) -> None:
        row = self.workspace.row_of(str(example_id))
        if row is None:
            raise SessionError(f"unknown id {example_id!r}: not in {self.workspace.path}")
        if not self._in_pool[row]:
            raise SessionError(f"id {example_id!r} is not in the pool this page labels")

    # ------------------------------------------------------------------ what the page shows
    def _payload(self, tab: str, message: str | None = None, conflict: bool = False) -> dict:
        state = self.labels.state
        example_id = self._next_for(tab)
        rows, y, classes = self._fitted
        return {
            "title": self.workspace.path.name,
            "classes": self.workspace.classes(state),
            "fixed_classes": self.workspace.fixed_classes,
            "strategy": self.model.active_strategy,
            "example": None if example_id is None else self._example(example_id),
            "queue": [self.workspace.metadata.ids[r] for r, _ in self._ranking[:8]],
            "message": message,
            "conflict": conflict,
            "warnings": list(state.warnings),
            "panel": self._panel(rows, y, classes),
            "timing": self.timing,
        }

    def _example(self, example_id: str) -> dict:
        row = self.workspace.row_of(example_id)
        example = self.workspace.example(row)
        out = {"id": example.id, "text": example.text, "image": None, "image_error": None, "predicted": None,
               "confidence": None, "score": None}
        if example.path is not None:
            out["image"], out["image_error"] = self._media_url(example.path)
        elif example.text is None:
            out["image_error"] = self.workspace.inputs_unavailable or "no text or image for this id"
        out["score"] = next((s for r, s in self._ranking if r == row), None)
        proba = self.model.predict_proba([row])
        if proba is not None:
            best = int(proba[0].argmax())
            out["predicted"], out["confidence"] = self.model.classes[best], float(proba[0, best])
        return out

    def _media_url(self, path: Path) -> tuple[str | None, str | None]:
        if self.media_root is None:
            return None, "no media folder to serve images from"
        try:
            relative = Path(path).resolve().relative_to(self.media_root)
        except ValueError:
            return None, f"the image is outside the media folder {self.media_root}"
        return "/media/" + urllib.parse.quote(relative.as_posix()), None

    def _panel(self, rows: np.ndarray, y: np.ndarray, classes: list[str]) -> dict:
        meta = self.workspace.metadata
        counts = np.bincount(y, minlength=len(classes)) if len(y) else np.zeros(len(classes), dtype=np.int64)
        stop_size = len(self.model.stop_rows)
        changes = {"previous": None, "round": None, "stop_set": stop_size}
        if self._previous is not None and self._current is not None:
            changes["previous"] = int((self._previous != self._current).sum())
        earlier = [h for j, h in enumerate(self._history) if (j + 1) * self.round_size < len(rows)]
        if earlier and self._current is not None:
            changes["round"] = {"changed": int((earlier[-1].argmax(axis=1) != self._current).sum()),
                                "since_labels": len(earlier) * self.round_size}
        groups = {}
        for name, codes in meta.groups.items():
            values = meta.group_names[name]
            table: dict[str, dict[str, int]] = {}
            for value, c in zip(codes[rows].tolist(), y.tolist()):
                per_class = table.setdefault(values[value], {})
                per_class[classes[c]] = per_class.get(classes[c], 0) + 1
            groups[name] = table
        state = self.labels.state
        return {
            "labelled": int(len(rows)),
            "counts": {name: int(n) for name, n in zip(classes, counts)},
            "pool_left": self._pool_left(),
            "skipped": len(state.skipped()),
            "changes": changes,
            "rounds": len(self._history),
            "round_size": self.round_size,
            "signals": [s.to_dict() for s in stopping_signals(self._measures)],
            "groups": groups,
        }
