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
    bad.write_text(json.dumps({"id": "a", "text": "x"}) + "\n{oops\n")
    with pytest.raises(DatasetError, match="bad.jsonl, line 2: not JSON"):
        create_dataset("jsonl", bad).metadata
    bad.write_text(json.dumps({"id": "a", "body": "x"}) + "\n")
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
