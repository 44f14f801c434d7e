"""Dataset adapters: what they read, and the errors they give on malformed input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from embedcache.datasets import DATASETS, create_dataset
from embedcache.datasets.synthetic import write_image_folder, write_image_manifest
from embedcache.errors import ConfigError, DatasetError
from embedcache.metadata import Metadata, encode, split_order


def test_registry_lists_the_builtin_adapters():
    assert {"imagefolder", "manifest", "jsonl"} <= set(DATASETS.names())
    with pytest.raises(ConfigError, match="unknown dataset 'imagefolders'.*Did you mean imagefolder"):
        create_dataset("imagefolders", ".")
    with pytest.raises(ConfigError, match=r"does not take option\(s\) \['colour'\]"):
        create_dataset("imagefolder", ".", colour="red")


def test_imagefolder_flat_and_split_folders(tmp_path):
    flat = create_dataset("imagefolder", write_image_folder(tmp_path / "a", classes=("b", "a"), per_class=3))
    meta = flat.metadata
    assert meta.label_names == ("a", "b") and meta.split_names == ("train",)
    assert list(meta.ids[:3]) == ["a/0000.png", "a/0001.png", "a/0002.png"] and list(meta.label) == [0, 0, 0, 1, 1, 1]
    assert flat.load(0).mode == "RGB" and flat.load(0).size == (32, 32)
    split = create_dataset("imagefolder", write_image_folder(tmp_path / "b", per_class=2, splits=("val", "train")))
    assert split.metadata.split_names == ("train", "val")
    assert list(split.metadata.ids) == ["train/cat/0000.png", "train/cat/0001.png", "train/dog/0000.png",
                                        "train/dog/0001.png", "val/cat/0000.png", "val/cat/0001.png",
                                        "val/dog/0000.png", "val/dog/0001.png"]


def test_manifest_images_with_groups_and_named_labels(tmp_path):
    write_image_manifest(tmp_path, n=10)
    data = create_dataset("manifest", tmp_path)  # the folder holding manifest.csv
    meta = data.metadata
    assert data.modality == "image" and len(meta) == 10
    assert meta.group_names["place"] == ("land", "water") and list(meta.label[:4]) == [0, 1, 0, 1]
    assert data.input_path(0) == tmp_path / "images/00000.png"
    named = tmp_path / "named.csv"
    named.write_text("id,path,label\nx,images/00000.png,dog\ny,images/00001.png,cat\n")
    assert create_dataset("manifest", named).metadata.label_names == ("cat", "dog")


def test_manifest_text_and_unknown_labels(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("id,text,label,split,user\na,hello there,1,train,7\nb,bye now,,val,10\nc,so so,0,test,7\n")
    data = create_dataset("manifest", path)
    assert data.modality == "text" and data.load(1) == "bye now"
    assert list(data.metadata.label) == [1, -1, 0]
    assert data.metadata.group_names["user"] == ("7", "10")  # numeric order, not "10" < "7"
    assert data.missing_files() == []


@pytest.mark.parametrize("content, message", [
    ("path,label\nx.png,1\n", r"missing column\(s\) \['id'\]"),
    ("id,label\na,1\n", "exactly one of the columns 'path'"),
    ("id,path,label\na,x.png,1\n,y.png,0\n", "line 3: empty id"),
    ("id,path,label\na,x.png,1\na,y.png,0\n", "duplicate id.*'a'"),
])
def test_manifest_errors_name_the_file(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(DatasetError, match=f"bad.csv.*{message}"):
        create_dataset("manifest", path).metadata


def test_missing_and_corrupt_images_are_reported_by_path_and_id(tmp_path):
    write_image_manifest(tmp_path, n=4)
    (tmp_path / "images/00001.png").unlink()
    (tmp_path / "images/00002.png").write_bytes(b"\x89PNG garbage")
    data = create_dataset("manifest", tmp_path)
    assert data.missing_files() == [1]
    with pytest.raises(DatasetError, match=r"00001.png: image file not found \(id 'ex00001'\)"):
        data.load(1)
    with pytest.raises(DatasetError, match=r"00002.png: cannot read image \(id 'ex00002'\)"):
        data.load(2)


def test_jsonl_groups_labels_and_errors(tmp_path, text_jsonl):
    data = create_dataset("jsonl", text_jsonl)
    assert data.modality == "text" and len(data.metadata) == 24 and "topic" in data.metadata.groups
    assert data.metadata.split_names == ("train", "val")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "a", "text": "x", "label": 0}) + "\n{oops\n")
    with pytest.raises(DatasetError, match="bad.jsonl, line 2: not JSON"):
        create_dataset("jsonl", bad).metadata
    bad.write_text(json.dumps({"id": "a", "body": "x", "label": 0}) + "\n")
    with pytest.raises(DatasetError, match="line 1: missing 'text'"):
        create_dataset("jsonl", bad).metadata
    assert create_dataset("jsonl", bad, text_field="body").load(0) == "x"


def test_missing_root_names_the_dataset(tmp_path):
    with pytest.raises(DatasetError, match="nowhere: no such file or folder.*'imagefolder'"):
        create_dataset("imagefolder", tmp_path / "nowhere")


def test_describe_fingerprints_the_manifest(tmp_path):
    manifest = write_image_manifest(tmp_path, n=6)
    before = create_dataset("manifest", manifest).describe()
    assert before["rows"] == 6 and before["name"] == "manifest" and before["modality"] == "image"
    assert create_dataset("manifest", manifest).describe() == before
    manifest.write_text(manifest.read_text().replace("ex00003,images/00003.png,1", "ex00003,images/00003.png,0"))
    assert create_dataset("manifest", manifest).describe()["manifest_sha256"] != before["manifest_sha256"]


def test_metadata_encoding_and_columns():
    codes, names = encode([10, 2, 2, 10, 1])
    assert names == ("1", "2", "10") and codes.tolist() == [2, 1, 1, 2, 0]
    assert split_order(["test", "zzz", "train", "id_val", "val"]) == ("train", "val", "test", "id_val", "zzz")
    meta = Metadata.from_values(["a", "b", "c"], [0, 1, 1], ["val", "train", "train"], {"g": ["x", "y", "x"]})
    assert meta.split_indices("train").tolist() == [1, 2]
    assert meta.column("label")[1] == ("0", "1") and meta.column("g")[0].tolist() == [0, 1, 0]
    with pytest.raises(ConfigError, match="unknown split 'test'"):
        meta.split_indices("test")
    with pytest.raises(ConfigError, match="unknown group 'place'.*'label', 'g'"):
        meta.column("place")
    assert meta.take(np.array([2, 0])).ids.tolist() == ["c", "a"]


# ---------------------------------------------------------------- strict input: one rule for every adapter that
# reads labels, splits and paths from text. Each case below used to be read silently in a wrong way.


def _manifest(tmp_path, text: str, name: str = "m.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_an_integer_label_column_stays_integer_whitespace_and_pandas_floats_included(tmp_path):
    # used to switch the whole column to name mode (" 1" sorted before "0") and renumber every class
    path = _manifest(tmp_path, "id,text,label\na,x,0\nb,y, 1\nc,z,2\nd,w,\ne,v,2.0\nf,u,-1\n")
    meta = create_dataset("manifest", path).metadata
    assert meta.label.tolist() == [0, 1, 2, -1, 2, -1] and meta.label_names is None
    named = create_dataset("manifest", _manifest(tmp_path, "id,text,label\na,x,dog\nb,y, cat \nc,z,\n")).metadata
    assert named.label.tolist() == [1, 0, -1] and named.label_names == ("cat", "dog")


@pytest.mark.parametrize("cell, message", [
    ("1.5", r"m.csv, line 3 \(id 'b'\): label '1.5' is not a whole-number class index, but the column holds class "
            r"indices \(e.g. .*m.csv, line 2 \(id 'a'\): '0'\)"),
    ("one", r"m.csv, line 3 \(id 'b'\): label 'one' is not a whole-number class index"),
    ("-2", r"m.csv, line 3 \(id 'b'\): label '-2' is not a class index"),
])
def test_a_stray_value_in_an_integer_label_column_is_an_error_naming_line_and_value(tmp_path, cell, message):
    path = _manifest(tmp_path, f"id,text,label\na,x,0\nb,y,{cell}\nc,z,2\nd,w,1\n")
    with pytest.raises(DatasetError, match=message):
        create_dataset("manifest", path).metadata


def test_a_number_among_class_names_and_odd_json_labels_are_errors(tmp_path):
    path = _manifest(tmp_path, "id,text,label\na,x,dog\nb,y,cat\nc,z,3\n")
    with pytest.raises(DatasetError, match=r"line 4 \(id 'c'\): label '3' is a number in a column of class names"):
        create_dataset("manifest", path).metadata
    lines = tmp_path / "t.jsonl"
    for label, message in [(1.5, r"line 2 \(id 'b'\): label 1.5 is not a whole-number"),
                           (True, r"line 2 \(id 'b'\): label True is neither a class index nor a class name")]:
        lines.write_text(json.dumps({"id": "a", "text": "x", "label": 0}) + "\n"
                         + json.dumps({"id": "b", "text": "y", "label": label}) + "\n")
        with pytest.raises(DatasetError, match=message):
            create_dataset("jsonl", lines).metadata


def test_a_split_typo_is_an_error_with_the_closest_name_unless_the_user_names_the_splits(tmp_path):
    # used to become a split of its own ("trian"), silently leaving those rows out of the pool
    path = _manifest(tmp_path, "id,text,label,split\na,x,0,train\nb,y,1,trian\nc,z,0,holdout\n")
    with pytest.raises(DatasetError, match=r"m.csv, line 3 \(id 'b'\): split 'trian' is not one of \['train', "
                                           r"'val', 'test', 'id_val', 'id_test'\]; did you mean 'train'\?.*-o splits="):
        create_dataset("manifest", path).metadata
    path.write_text("id,text,label,split\na,x,0,train\nb,y,1,\nc,z,0,holdout\n")
    meta = create_dataset("manifest", path, splits="train,holdout").metadata
    assert meta.split_names == ("train", "holdout") and meta.split.tolist() == [0, 0, 1]  # empty = train
    with pytest.raises(DatasetError, match=r"line 4 \(id 'c'\): split 'holdout' is not one of \['train', 'val'\]"):
        create_dataset("manifest", path, splits="train,val").metadata
    with pytest.raises(ConfigError, match="-o splits: expected distinct, non-empty split names"):
        create_dataset("manifest", path, splits="train,,val")
    lines = tmp_path / "t.jsonl"
    lines.write_text(json.dumps({"id": "a", "text": "x", "label": 0, "split": "Val"}) + "\n")
    with pytest.raises(DatasetError, match=r"t.jsonl, line 1 \(id 'a'\): split 'Val' .*did you mean 'val'"):
        create_dataset("jsonl", lines).metadata


def test_a_missing_label_column_is_refused_unless_the_data_is_declared_unlabelled(tmp_path):
    # used to give every example the label -1 without a word
    path = _manifest(tmp_path, "id,text,split\na,x,train\nb,y,val\n")
    with pytest.raises(DatasetError, match=r"m.csv: no 'label' column\. .*pass -o unlabelled=true if the data is "
                                           "unlabelled"):
        create_dataset("manifest", path)
    meta = create_dataset("manifest", path, unlabelled="true").metadata
    assert meta.label.tolist() == [-1, -1] and meta.label_names is None
    labelled = _manifest(tmp_path, "id,text,label\na,x,1\nb,y,\n", "l.csv")
    with pytest.raises(DatasetError, match="has a 'label' column, but -o unlabelled=true says"):
        create_dataset("manifest", labelled, unlabelled=True)
    with pytest.raises(ConfigError, match="-o unlabelled=maybe: expected true or false"):
        create_dataset("manifest", path, unlabelled="maybe")
    lines = tmp_path / "t.jsonl"
    lines.write_text(json.dumps({"id": "a", "text": "x"}) + "\n")
    with pytest.raises(DatasetError, match="t.jsonl: no 'label' field"):
        create_dataset("jsonl", lines).metadata
    assert create_dataset("jsonl", lines, unlabelled="yes").metadata.label.tolist() == [-1]


def test_duplicate_ids_and_ragged_rows_name_their_lines(tmp_path):
    path = _manifest(tmp_path, "id,text,label\na,x,0\nb,y,1\n a ,z,0\n")
    with pytest.raises(DatasetError, match=r"m.csv, line 4: duplicate id 'a', first at .*m.csv, line 2"):
        create_dataset("manifest", path).metadata
    path.write_text("id,text,label\na,x,0\nb,y\n")
    with pytest.raises(DatasetError, match=r"m.csv, line 3: 2 cells, but the header has 3 columns"):
        create_dataset("manifest", path).metadata


def test_image_paths_leading_outside_the_root_are_refused_unless_allowed(tmp_path):
    # used to be read: a manifest could put any file on the machine into a cache
    manifest = write_image_manifest(tmp_path / "data", n=4)
    outside = tmp_path / "elsewhere.png"
    (tmp_path / "data/images/00000.png").rename(outside)
    for path in ("../elsewhere.png", str(outside), "images/../../elsewhere.png"):
        manifest.write_text(manifest.read_text().replace("images/00000.png", path, 1))
        with pytest.raises(DatasetError, match=r"manifest.csv, line 2 \(id 'ex00000'\): image path .*elsewhere.png.* "
                                               r"leads outside .*data.*-o allow_outside_root=true"):
            create_dataset("manifest", manifest).metadata
        allowed = create_dataset("manifest", manifest, allow_outside_root="true")
        assert allowed.load(0).size == (32, 32)
        manifest.write_text(manifest.read_text().replace(path, "images/00000.png", 1))
    manifest.write_text(manifest.read_text().replace("images/00001.png", "images/../images/00001.png", 1)
                        .replace("images/00002.png", str(tmp_path / "data/images/00002.png"), 1))
    assert create_dataset("manifest", manifest).missing_files() == [0]  # inside the root: fine


def test_paper_adapters_refuse_paths_outside_their_folder_too(tmp_path):
    from embedcache.datasets.synthetic import write_waterbirds

    folder = write_waterbirds(tmp_path, per_group=1)
    metadata = folder / "metadata.csv"
    first = metadata.read_text().splitlines()[1].split(",")[1]
    metadata.write_text(metadata.read_text().replace(first, "../../etc/passwd", 1))
    with pytest.raises(DatasetError, match=r"metadata.csv, line 2 \(id '1'\): image path '../../etc/passwd' leads "
                                           r"outside .*; move the file under it$"):
        create_dataset("waterbirds", folder).metadata
