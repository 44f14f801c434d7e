"""The labels file: appended, fsynced and locked; undo and skip are rows; torn rows and concurrent writers."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap

import pytest

from embedcache.workflow.labels import COLUMNS, LabelConflict, LabelsError, LabelsFile, read_labels


def _rows(path):
    with open(path, newline="", encoding="utf-8-sig") as f:
        return list(csv.DictReader(f))


def test_labels_undo_and_skip_are_appended_rows_and_history_is_kept(tmp_path):
    path = tmp_path / "labels.csv"
    labels = LabelsFile(path)
    labels.label("a", "cat", "ann")
    labels.label("b", "dog", "ann", note="blurry")
    labels.skip("c", "ann")
    assert labels.undo_last("ann").id == "c"  # the skip is taken back
    assert labels.undo_last("ann").id == "b"
    labels.label("b", "cat", "ann")
    rows = _rows(path)
    assert list(rows[0]) == list(COLUMNS)
    assert [(r["id"], r["label"], r["note"]) for r in rows] == [
        ("a", "cat", ""), ("b", "dog", "blurry"), ("c", "", "skip"), ("c", "", "undo"), ("b", "", "undo"),
        ("b", "cat", "")]
    state = read_labels(path)
    assert [(r.id, r.label) for r in state.labels()] == [("a", "cat"), ("b", "cat")]
    assert state.skipped() == set() and state.classes_seen == ["cat", "dog"]
    assert all(r["time"].endswith("+00:00") and r["annotator"] == "ann" for r in rows)


def test_a_second_label_for_an_id_is_refused_until_an_undo(tmp_path):
    labels = LabelsFile(tmp_path / "labels.csv")
    labels.label("a", "cat", "one")
    with pytest.raises(LabelConflict, match="'a' is already labelled 'cat' \\(line 2, by one\\)"):
        LabelsFile(tmp_path / "labels.csv").label("a", "dog", "two")  # another process's view of the file
    with pytest.raises(LabelConflict, match="no label or skip to undo"):
        labels.retract("zzz", "one")
    with pytest.raises(LabelConflict, match="nothing of two's to undo"):
        labels.undo_last("two")
    labels.retract("a", "two")
    labels.label("a", "dog", "two")
    assert read_labels(tmp_path / "labels.csv").label_of("a") == "dog"


def test_a_torn_last_row_is_reported_then_set_aside_by_the_next_writer(tmp_path):
    path = tmp_path / "labels.csv"
    labels = LabelsFile(path)
    labels.label("a", "cat")
    labels.label("b", "dog")
    with open(path, "ab") as f:
        f.write(b"c,ca")  # a crash in the middle of a write
    state = LabelsFile(path).read()
    assert [r.id for r in state.labels()] == ["a", "b"]
    assert len(state.warnings) == 1 and "line 4" in state.warnings[0] and "'c,ca'" in state.warnings[0]
    writer = LabelsFile(path)
    writer.label("d", "cat")
    assert [r["id"] for r in _rows(path)] == ["a", "b", "d"]
    assert (tmp_path / "labels.csv.torn").read_bytes().endswith(b"bytes:\nc,ca\n")
    assert LabelsFile(path).read().warnings == []


def test_a_quoted_field_with_a_line_break_is_one_row_and_bad_files_name_their_line(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text('\ufeffid,label,note\n"x,1",cat,"two\nlines"\ny,dog,\n', encoding="utf-8")
    state = read_labels(path)
    assert [(r.id, r.label, r.line) for r in state.labels()] == [("x,1", "cat", 2), ("y", "dog", 4)]
    LabelsFile(path).label("z", "cat")  # a file with its own columns gets rows in those columns
    assert _rows(path)[-1] == {"id": "z", "label": "cat", "note": ""}
    (tmp_path / "short.csv").write_text("id,label\na,cat,extra\n")
    with pytest.raises(LabelsError, match="short.csv, line 2: 3 fields, the header has 2"):
        read_labels(tmp_path / "short.csv")
    (tmp_path / "nolabel.csv").write_text("id,class\n")
    with pytest.raises(LabelsError, match="lacks \\['label'\\]"):
        read_labels(tmp_path / "nolabel.csv")
    with pytest.raises(LabelsError, match="line break"):
        LabelsFile(path).label("w", "two\nlines")


_WRITER = textwrap.dedent("""
    import sys
    from embedcache.workflow.labels import LabelConflict, LabelsFile
    labels = LabelsFile(sys.argv[1])
    for i in range(int(sys.argv[3])):
        try:
            labels.label(f"id{i:03d}", "cat" if i % 2 else "dog", sys.argv[2], note="x" * 500)
            print("ok", i, flush=True)
        except LabelConflict:
            print("taken", i, flush=True)
""")


def test_concurrent_writers_never_interleave_or_duplicate(tmp_path):
    path = tmp_path / "labels.csv"
    processes = [subprocess.Popen([sys.executable, "-c", _WRITER, str(path), name, "60"], stdout=subprocess.PIPE,
                                  text=True) for name in ("one", "two", "three")]
    outputs = [p.communicate(timeout=120)[0].split("\n") for p in processes]
    assert all(p.returncode == 0 for p in processes)
    rows = _rows(path)
    assert sorted(r["id"] for r in rows) == [f"id{i:03d}" for i in range(60)]  # each id exactly once
    assert all(r["note"] == "x" * 500 and r["label"] in ("cat", "dog") for r in rows)
    won = {(r["annotator"], r["id"]) for r in rows}
    confirmed = {(name, f"id{int(line.split()[1]):03d}") for name, out in zip(("one", "two", "three"), outputs)
                 for line in out if line.startswith("ok")}
    assert confirmed == won


@pytest.mark.parametrize("point", ["labels.written:3", "labels.synced:3"])
def test_a_writer_killed_mid_label_loses_no_confirmed_label(tmp_path, point):
    path = tmp_path / "labels.csv"
    env = {**os.environ, "EMBEDCACHE_CRASH_AT": point}
    result = subprocess.run([sys.executable, "-c", _WRITER, str(path), "one", "10"], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == -9
    confirmed = [f"id{int(line.split()[1]):03d}" for line in result.stdout.split("\n") if line.startswith("ok")]
    assert confirmed == ["id000", "id001"]
    ids = [r.id for r in read_labels(path).labels()]
    assert ids[:2] == confirmed and len(ids) <= 3  # the third was written but never confirmed


def test_label_studio_export_is_read_as_labels(tmp_path):
    export = [
        {"id": 7, "data": {"embedcache_id": "b", "text": "x"}, "annotations": [
            {"id": 1, "result": [{"type": "choices", "from_name": "label", "to_name": "text",
                                  "value": {"choices": ["dog"]}}], "completed_by": {"email": "ann@example.org"},
             "created_at": "2024-01-02T10:00:00Z", "was_cancelled": False},
            {"id": 2, "result": [{"type": "choices", "value": {"choices": ["cat"]}}], "completed_by": 3,
             "created_at": "2024-01-01T10:00:00Z", "was_cancelled": True}]},
        {"id": 8, "data": {"embedcache_id": "a"}, "annotations": [
            {"id": 3, "result": [{"type": "choices", "value": {"choices": ["cat"]}}], "completed_by": 3,
             "created_at": "2024-01-01T09:00:00Z"}]},
        {"id": 9, "data": {"embedcache_id": "c"}, "annotations": []},
    ]
    path = tmp_path / "export.json"
    path.write_text(json.dumps(export))
    state = read_labels(path)
    assert [(r.id, r.label, r.annotator) for r in state.labels()] == [("a", "cat", "3"),
                                                                      ("b", "dog", "ann@example.org")]
    export[1]["data"] = {"other": "a"}
    path.write_text(json.dumps(export))
    with pytest.raises(LabelsError, match="task 8: data has no 'embedcache_id' field.*`id_field`"):
        read_labels(path)
    path.write_text(json.dumps(export[1:]))
    assert read_labels(path, id_field="other").label_of("a") == "cat"
    with pytest.raises(LabelsError, match="appended to a CSV"):
        LabelsFile(path)
