"""Label Studio interop: tasks with the model's predictions out, a JSON export's choices back in.

Export (`embedcache export-label-studio`) writes Label Studio's basic JSON task format: a list of
`{"data": {...}, "predictions": [{"model_version", "score", "result": [{"from_name", "to_name",
"type": "choices", "value": {"choices": [name]}}]}]}` (labelstud.io/guide/task_format and
labelstud.io/guide/predictions). `data` holds the text (`text`) or an image URL (`image`), the
cache id (`embedcache_id`), the strategy's `uncertainty` score (higher = ask first) and its `rank`.
A prediction's `score` is the model's confidence, so Label Studio's Data Manager, sorted by
prediction score ascending, shows the least confident tasks first; the `uncertainty` column sorts
by the acquisition score itself.

Import: `--labels export.json` reads a Label Studio JSON export: each task's cache id from
`data[id_field]`, its label from the latest non-cancelled annotation's single choice.
"""

from __future__ import annotations

import json
import urllib.parse
from pathlib import Path
from xml.sax.saxutils import quoteattr

import numpy as np

import embedcache
from embedcache.errors import ConfigError
from embedcache.workflow.labels import LabelRow, LabelsError, LabelState
from embedcache.workflow.workspace import Model, Workspace

ID_FIELD = "embedcache_id"
#: Where Label Studio serves files from its local storage (LOCAL_FILES_DOCUMENT_ROOT).
LOCAL_FILES_URL = "/data/local-files/?d="


def labeling_config(classes: list[str], modality: str, from_name: str = "label") -> str:
    """A Label Studio labeling config that matches the exported tasks (single choice)."""
    obj = "image" if modality == "image" else "text"
    tag = "Image" if obj == "image" else "Text"
    choices = "\n".join(f"    <Choice value={quoteattr(c)}/>" for c in classes)
    return (f'<View>\n  <{tag} name="{obj}" value="${obj}"/>\n  <Choices name={quoteattr(from_name)} '
            f'toName="{obj}" choice="single">\n{choices}\n  </Choices>\n</View>\n')


def export_tasks(workspace: Workspace, state: LabelState, *, strategy: str = "least-confidence", seed: int = 0,
                 k: int | None = None, from_name: str = "label", media_root: str | Path | None = None,
                 url_prefix: str = LOCAL_FILES_URL) -> tuple[list[dict], list[str]]:
    """(tasks, class names): the pool ranked by `strategy`, most informative first (the first k when given).

    Image paths become `url_prefix` + the path relative to `media_root` (default: the dataset's image
    folder), URL-quoted. Before the first label there is no model: tasks carry no predictions and are
    in the seeded random cold-start order.
    """
    why = workspace.inputs_unavailable
    if why:
        raise ConfigError(f"cannot export tasks without their texts or images: {why}")
    model = Model(workspace, strategy, seed)
    rows, y, classes = workspace.training_set(state)
    model.fit(rows, y, classes)
    candidates = workspace.candidates(state)
    chosen, scores = model.rank(candidates, len(candidates) if k is None else k)
    proba = model.predict_proba(chosen)
    obj = "image" if workspace.modality == "image" else "text"
    root = Path(media_root if media_root is not None else workspace.image_root or ".").resolve()
    version = (f"embedcache {embedcache.__version__} linear head, {model.active_strategy}, {len(rows)} labels, "
               f"features {workspace.fingerprint[:12]}")
    tasks = []
    for i, (row, score) in enumerate(zip(chosen.tolist(), np.asarray(scores, dtype=np.float64).tolist())):
        example = workspace.example(row)
        data = {ID_FIELD: example.id, "uncertainty": score, "rank": i + 1}
        if obj == "text":
            data["text"] = example.text
        else:
            data["image"] = url_prefix + urllib.parse.quote(_relative(example, root))
        task = {"data": data}
        if proba is not None:
            best = int(proba[i].argmax())
            task["predictions"] = [{
                "model_version": version, "score": float(proba[i, best]),
                "result": [{"id": "embedcache", "from_name": from_name, "to_name": obj, "type": "choices",
                            "value": {"choices": [classes[best]]}}],
            }]
        tasks.append(task)
    return tasks, classes


def _relative(example, root: Path) -> str:
    path = example.path
    try:
        return path.resolve().relative_to(root).as_posix()
    except ValueError:
        raise ConfigError(f"{root}: the image of id {example.id!r} ({path}) is outside it", param="media") from None


def read_export(path: str | Path, id_field: str = ID_FIELD) -> LabelState:
    """Labels from a Label Studio JSON export (Export → JSON): per task, the single choice of its latest
    non-cancelled annotation. Rows are ordered by annotation time, so 'the order labels came in' holds."""
    path = Path(path)
    try:
        tasks = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LabelsError(f"{path}: cannot read as JSON ({e})") from None
    if not isinstance(tasks, list):
        raise LabelsError(f"{path}: a Label Studio JSON export is a list of tasks, found {type(tasks).__name__}")
    found = []
    for t, task in enumerate(tasks):
        name = f"{path}, task {task.get('id', t) if isinstance(task, dict) else t}"
        data = task.get("data") if isinstance(task, dict) else None
        if not isinstance(data, dict):
            raise LabelsError(f"{name}: no 'data' object (is this Label Studio's JSON export?)")
        annotations = [a for a in task.get("annotations") or [] if isinstance(a, dict) and not a.get("was_cancelled")]
        if not annotations:
            continue
        if data.get(id_field) in (None, ""):
            raise LabelsError(f"{name}: data has no {id_field!r} field to find the cache row by; pass `id_field` "
                              f"with the field that holds the cache ids (it has {sorted(data)})")
        for a, annotation in enumerate(annotations):
            choices = [r for r in annotation.get("result") or [] if isinstance(r, dict) and r.get("type") == "choices"]
            if not choices:
                continue
            values = (choices[-1].get("value") or {}).get("choices") or []
            if len(values) != 1:
                raise LabelsError(f"{name}: annotation {annotation.get('id', a)} has {len(values)} choices; "
                                  "embedcache reads single-choice classification")
            who = annotation.get("completed_by")
            if isinstance(who, dict):
                who = who.get("email") or who.get("id")
            when = str(annotation.get("updated_at") or annotation.get("created_at") or "")
            found.append((when, t, a, LabelRow(id=str(data[id_field]), label=str(values[0]).strip(),
                                               annotator="" if who is None else str(who), time=when,
                                               note=f"label studio task {task.get('id', t)}")))
    state = LabelState(str(path))
    for *_, row in sorted(found, key=lambda f: f[:3]):
        state.add(row)
    return state
