"""suggest, predict (and saved heads), export-label-studio: library calls and commands, on small pools."""

from __future__ import annotations

import csv
import json
import xml.etree.ElementTree as ET

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from workflow_helpers import write_pool

from embedcache.strategies import create_strategy
from embedcache.cli import main
from embedcache.errors import ConfigError
from embedcache.learners.linear import LinearLearner
from embedcache.scoring import PROBABILITY_SCORES, top_k, topk_disagreement
from embedcache.workflow.labels import LabelsError, LabelsFile, read_labels
from embedcache.workflow.suggest import suggest
from embedcache.workflow.workspace import Workspace


@pytest.fixture
def pool(tmp_path):
    cache, truth = write_pool(tmp_path / "pool", n=80)
    labels = LabelsFile(tmp_path / "labels.csv")
    for example_id in list(truth)[:12]:
        labels.label(example_id, truth[example_id], "ann")
    return cache, truth, tmp_path / "labels.csv"


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_suggest_ranks_the_pool_as_the_unfused_reference_does(pool):
    cache, truth, labels_path = pool
    LabelsFile(labels_path).skip("doc013", "ann")
    state = read_labels(labels_path)
    workspace = Workspace(cache, split="train")
    result = suggest(workspace, state, k=10, strategy="margin", seed=3)
    assert result.strategy == "margin" and result.n_labels == 12 and result.classes == ["positive", "negative"]
    # reference: the same head fitted here, probabilities of every candidate, the margin formula, top-k
    rows = np.array([workspace.row_of(r.id) for r in state.labels()])
    y = np.array([["positive", "negative"].index(r.label) for r in state.labels()])
    reference = LinearLearner(workspace.features, 2)
    reference.prepare(np.arange(64), {})  # standardised with the train split's statistics, as the workspace does
    reference.fit(rows, y)
    candidates = np.array([r for r in range(64) if r not in set(rows.tolist()) | {13}])
    expected = top_k(PROBABILITY_SCORES["margin"](reference.predict_proba(candidates)), candidates, 10, 3)
    got = (np.array([workspace.row_of(s.id) for s in result.suggestions]),
           np.array([s.score for s in result.suggestions]))
    assert topk_disagreement(got, expected) is None
    assert all(s.id != "doc013" and s.text.startswith("review ") for s in result.suggestions)
    assert {s.predicted for s in result.suggestions} <= {"positive", "negative"}
    assert result.pool == len(candidates) and len(result.signals) == 4 and result.rounds == 1
    again = suggest(Workspace(cache, split="train"), read_labels(labels_path), k=10, strategy="margin", seed=3)
    assert [(s.id, s.score) for s in again.suggestions] == [(s.id, s.score) for s in result.suggestions]


def test_with_no_labels_suggest_is_a_seeded_random_cold_start(pool, tmp_path):
    cache, _, _ = pool
    workspace = Workspace(cache, split="train")
    empty = LabelsFile(tmp_path / "none.csv").read()
    result = suggest(workspace, empty, k=5, strategy="entropy", seed=4)
    rows, _ = create_strategy("random").select(None, np.arange(64), np.zeros(0, np.int64), 5, 4)
    assert result.strategy == "random" and [s.id for s in result.suggestions] == [f"doc{r:03d}" for r in rows]
    assert all(s.predicted is None and s.probability is None for s in result.suggestions)


def test_suggest_command_writes_a_batch_and_never_replaces_one_without_overwrite(pool, tmp_path):
    cache, _, labels_path = pool
    out = tmp_path / "batch.csv"
    result = _run("suggest", cache, "--labels", labels_path, "--k", 5, "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    with open(out, newline="") as f:
        batch = list(csv.DictReader(f))
    assert [list(b) for b in batch[:1]] == [["rank", "id", "score", "predicted", "probability", "text"]]
    assert [b["rank"] for b in batch] == ["1", "2", "3", "4", "5"]
    again = _run("suggest", cache, "--labels", labels_path, "--k", 5, "--out", out)
    assert again.exit_code == 2 and f"--out: {out} exists; pass --overwrite" in again.output
    stdout = _run("suggest", cache, "--labels", labels_path, "--k", 5, "--quiet")
    assert stdout.output.splitlines()[1].split(",")[:2] == ["1", batch[0]["id"]]
    typo = _run("suggest", cache, "--strategy", "margn")
    assert typo.exit_code == 2 and "unknown strategy 'margn'" in typo.output and "least-confidence" in typo.output


def test_labels_the_cache_does_not_know_are_named(pool, tmp_path):
    cache, _, labels_path = pool
    LabelsFile(labels_path).label("nope", "positive", "ann")
    result = _run("suggest", cache, "--labels", labels_path)
    assert result.exit_code == 1 and "1 labelled id(s) are not in" in result.output
    assert "'nope' (line 14)" in result.output
    bad = tmp_path / "bad.csv"
    LabelsFile(bad).label("doc001", "neutral")
    with pytest.raises(LabelsError, match="outside `classes` \\['negative', 'positive'\\]: 'neutral' for 'doc001'"):
        Workspace(cache, classes=["negative", "positive"]).training_set(read_labels(bad))


def test_predict_saves_a_head_that_predicts_on_caches_of_the_same_recipe_only(pool, tmp_path):
    cache, truth, labels_path = pool
    out, head = tmp_path / "p.parquet", tmp_path / "head.safetensors"
    result = _run("predict", cache, "--labels", labels_path, "--out", out, "--save-head", head, "--quiet")
    assert result.exit_code == 0, result.output
    table = pq.read_table(out).to_pydict()
    assert list(table) == ["id", "split", "predicted", "probability", "label", "p_positive", "p_negative"]
    assert len(table["id"]) == 80 and table["label"][20] == ""
    assert table["label"][:2] == [truth["doc000"], truth["doc001"]]
    assert np.allclose(np.array(table["p_positive"]) + table["p_negative"], 1, atol=1e-6)
    accuracy = np.mean([p == truth[i] for i, p in zip(table["id"], table["predicted"])])
    assert accuracy > 0.85  # the first coordinate separates the classes
    # another cache file with the same recipe (here: the same features): the saved head gives the same numbers
    other, _ = write_pool(tmp_path / "other", n=80, seed=0, name="other.h5")
    result = _run("predict", other, "--head", head, "--out", tmp_path / "other.csv", "--quiet")
    assert result.exit_code == 0, result.output
    with open(tmp_path / "other.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert np.allclose([float(r["p_positive"]) for r in rows], table["p_positive"], atol=2e-6)
    foreign, _ = write_pool(tmp_path / "foreign", n=20, recipe_changes={"dtype": "float16"}, name="foreign.h5")
    refused = _run("predict", foreign, "--head", head, "--out", tmp_path / "foreign.csv")
    assert refused.exit_code == 2 and f"{head} was fitted on features of recipe" in refused.output
    assert "foreign.h5 holds recipe" in refused.output and "dtype" in refused.output
    assert not (tmp_path / "foreign.csv").exists()
    both = _run("predict", cache, "--head", head, "--labels", labels_path, "--out", tmp_path / "x.csv")
    assert both.exit_code == 2 and "not both or neither" in both.output


def _check_task_format(tasks: list, config: str, classes: list[str]) -> None:
    """Label Studio's documented task format: labelstud.io/guide/task_format ("Label Studio JSON format of
    annotated tasks") and labelstud.io/guide/predictions ("JSON format for pre-annotations"): a task has a
    `data` object holding every `$variable` of the labeling config's object tags; `predictions` is a list of
    objects with `model_version` (string), `score` (number) and `result`, a list of regions with `from_name`
    (a control tag's name), `to_name` (its toName), `type` (the control tag in lower case) and `value`, which
    for a Choices tag is {"choices": [values of its Choice children]}."""
    view = ET.fromstring(config)
    objects = {tag.get("name"): tag.get("value").lstrip("$") for tag in view if tag.tag in ("Text", "Image")}
    controls = {tag.get("name"): tag for tag in view if tag.tag == "Choices"}
    assert set(classes) == {c.get("value") for tag in controls.values() for c in tag}
    assert isinstance(tasks, list) and tasks
    for task in tasks:
        assert set(task) <= {"data", "predictions", "annotations"} and isinstance(task["data"], dict)
        for variable in objects.values():
            assert isinstance(task["data"][variable], str) and task["data"][variable]
        for prediction in task.get("predictions", []):
            assert isinstance(prediction["model_version"], str) and isinstance(prediction["score"], float)
            assert 0 <= prediction["score"] <= 1
            for region in prediction["result"]:
                control = controls[region["from_name"]]
                assert region["to_name"] == control.get("toName") and region["to_name"] in objects
                assert region["type"] == control.tag.lower()
                assert set(region["value"]) == {"choices"} and len(region["value"]["choices"]) == 1
                assert region["value"]["choices"][0] in {c.get("value") for c in control}


def test_label_studio_export_follows_the_documented_format_and_its_export_comes_back(pool, tmp_path):
    cache, truth, labels_path = pool
    out = tmp_path / "tasks.json"
    result = _run("export-label-studio", cache, "--labels", labels_path, "--split", "train", "--out", out)
    assert result.exit_code == 0, result.output
    config = result.output[result.output.index("<View>"):]
    tasks = json.loads(out.read_text())
    _check_task_format(tasks, config, ["positive", "negative"])
    assert len(tasks) == 64 - 12 and [t["data"]["rank"] for t in tasks] == list(range(1, 53))
    uncertainty = [t["data"]["uncertainty"] for t in tasks]
    assert uncertainty == sorted(uncertainty, reverse=True)
    confidence = [t["predictions"][0]["score"] for t in tasks]
    assert confidence == pytest.approx(1 - np.array(uncertainty), abs=1e-6)  # least-confidence: score = 1 - max p
    # label two tasks "in Label Studio" and read its JSON export back as labels
    for task in tasks[:2]:
        task["annotations"] = [{"id": 1, "completed_by": 1, "created_at": "2024-05-01T10:00:00Z",
                                "result": [{"from_name": "label", "to_name": "text", "type": "choices",
                                            "value": {"choices": [truth[task["data"]["embedcache_id"]]]}}]}]
    export = tmp_path / "export.json"
    export.write_text(json.dumps(tasks))
    state = read_labels(export)
    assert [r.id for r in state.labels()] == [t["data"]["embedcache_id"] for t in tasks[:2]]
    batch = _run("suggest", cache, "--labels", export, "--k", 3, "--quiet")
    assert batch.exit_code == 0 and len(batch.output.splitlines()) == 4


def test_image_tasks_carry_urls_relative_to_the_media_folder(tmp_path):
    cache, _ = write_pool(tmp_path / "photos", n=10, images=True)
    out = tmp_path / "tasks.json"
    result = _run("export-label-studio", cache, "--out", out, "--k", 3, "--url-prefix", "/data/local-files/?d=photos/")
    assert result.exit_code == 0, result.output
    tasks = json.loads(out.read_text())
    assert all(t["data"]["image"].startswith("/data/local-files/?d=photos/images/doc") for t in tasks)
    assert all("predictions" not in t for t in tasks)  # no labels yet: no model
    _check_task_format(tasks, result.output[result.output.index("<View>"):], [])


def test_a_cache_without_its_dataset_cannot_export_tasks(tmp_path):
    from helpers import make_metadata, recipe

    from embedcache.cache import EmbeddingCache

    cache = EmbeddingCache.write(tmp_path / "c.h5", np.ones((10, 4), np.float32), make_metadata(10), recipe=recipe())
    with pytest.raises(ConfigError, match="made from vectors in memory"):
        from embedcache.workflow.label_studio import export_tasks

        export_tasks(Workspace(cache), LabelsFile(tmp_path / "l.csv").read())
