"""The paper's datasets: adapters over tiny copies of the real layouts, the two builders, and bad input."""

from __future__ import annotations

import collections
import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from embedcache.cache import EmbeddingCache
from embedcache.cli import main
from embedcache.datasets import create_dataset
from embedcache.datasets.download import download_wilds
from embedcache.datasets.synthetic import (write_amazon, write_cub_and_places, write_iwildcam, write_treeperson,
                                          write_waterbirds)
from embedcache.datasets.treeperson import TreepersonBuild, build_treeperson, iter_json_array, qualifying_images
from embedcache.datasets.waterbirds_variant import WaterbirdsBuild, build_waterbirds, is_waterbird
from embedcache.errors import ConfigError, DatasetError

TIMM = ["--backbone", "timm:test_resnet", "--weights", "random", "--resolution", "32"]


def cli(*args, ok: bool = True):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    else:
        assert result.exit_code != 0 and "Traceback" not in result.output
    return result


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------- adapters over the released layouts


def test_waterbirds_reads_either_release_folder_or_its_parent(tmp_path):
    folder = write_waterbirds(tmp_path / "wilds", per_group=2)
    for root in (folder, folder.parent):
        meta = create_dataset("waterbirds", root).metadata
        assert meta.split_names == ("train", "val", "test") and meta.label_names == ("landbird", "waterbird")
        assert meta.group_names == {"place": ("land", "water")}
        assert meta.ids[0] == "1" and len(meta) == 24
        train = meta.split_indices("train")
        assert collections.Counter(zip(meta.label[train], meta.groups["place"][train])) == {
            (0, 0): 2, (0, 1): 2, (1, 0): 2, (1, 1): 2}
    original = write_waterbirds(tmp_path / "dro", folder="waterbird_complete95_forest2water2", per_group=1)
    data = create_dataset("waterbirds", original.parent)
    assert data.input_path(0) == original / "000.Species_0/Species_0_0001.jpg" and data.load(0).size == (32, 32)
    write_waterbirds(tmp_path / "dro", per_group=1)  # now the parent holds both releases
    with pytest.raises(DatasetError, match="holds waterbirds_v1.0 and waterbird_complete95_forest2water2"):
        create_dataset("waterbirds", tmp_path / "dro")


def test_treeperson_reads_the_paper_layout(tmp_path):
    meta = create_dataset("treeperson", write_treeperson(tmp_path / "tp", per_group=3)).metadata
    assert meta.split_names == ("train", "val") and meta.label_names == ("no_person", "person")
    assert meta.group_names["place"] == ("trees", "buildings") and len(meta) == 24
    rows = read_rows(tmp_path / "tp/metadata.csv")
    assert list(rows[0]) == ["img_id", "img_filename", "y", "place", "split"]
    assert [int(r["place"]) for r in rows] == meta.groups["place"].tolist()
    assert [int(r["y"]) for r in rows] == meta.label.tolist()


def test_iwildcam_labels_locations_and_class_names(tmp_path):
    folder = write_iwildcam(tmp_path, n=15, num_classes=3, locations=4)
    data = create_dataset("iwildcam", tmp_path)
    meta = data.metadata
    rows = read_rows(folder / "metadata.csv")
    assert meta.split_names == ("train", "val", "test", "id_val", "id_test")
    assert meta.ids.tolist() == [r["image_id"] for r in rows] and meta.label.tolist() == [int(r["y"]) for r in rows]
    assert [meta.group_names["location"][c] for c in meta.groups["location"]] == [r["location_remapped"] for r in rows]
    assert meta.label_names == ("species 0", "species 1", "species 2")
    assert data.input_path(0) == folder / "train" / rows[0]["filename"]
    (folder / "categories.csv").unlink()
    assert create_dataset("iwildcam", folder).metadata.label_names is None


def test_amazon_follows_the_wilds_user_split(tmp_path):
    folder = write_amazon(tmp_path, n=20)
    data = create_dataset("amazon", tmp_path)
    meta = data.metadata
    splits = [int(r["split"]) for r in read_rows(folder / "splits/user.csv")]
    with open(folder / "reviews.csv", newline="") as f:
        reviews = list(csv.DictReader(f))
    kept = [i for i, s in enumerate(splits) if s != -1]
    assert meta.ids.tolist() == [str(i) for i in kept] and len(kept) == 16
    assert data.inputs == [reviews[i]["reviewText"] for i in kept] and "\na second line" in data.inputs[0]
    assert meta.label.tolist() == [int(float(reviews[i]["overall"])) - 1 for i in kept]
    names = ("train", "val", "id_val", "test", "id_test")
    assert [meta.split_names[c] for c in meta.split] == [names[splits[i]] for i in kept]
    assert [meta.group_names["user"][c] for c in meta.groups["user"]] == [reviews[i]["reviewerID"] for i in kept]
    assert meta.group_names["category"] == ("Books", "Movies_and_TV") and data.modality == "text"


@pytest.mark.parametrize("name, write", [
    ("waterbirds", lambda root: write_waterbirds(root, per_group=1)),
    ("treeperson", lambda root: write_treeperson(root, per_group=2)),
    ("iwildcam", lambda root: write_iwildcam(root, n=10)),
])
def test_image_datasets_extract_end_to_end(tmp_path, name, write):
    root = write(tmp_path / "data")
    out = tmp_path / "c.h5"
    cli("extract", "--dataset", name, "--root", root, *TIMM, "--out", out, "--quiet", "--workers", "0")
    expected = create_dataset(name, root).metadata
    with EmbeddingCache(out) as cache:
        cache.validate()
        meta = cache.metadata()
        assert meta.ids.tolist() == expected.ids.tolist() and (meta.label == expected.label).all()
        assert meta.split_names == expected.split_names and meta.group_names == expected.group_names
        assert cache.dataset["name"] == name and np.isfinite(cache.embeddings()).all()


def test_amazon_extracts_end_to_end(tmp_path, tiny_bert):
    write_amazon(tmp_path / "data", n=10)
    out = tmp_path / "a.h5"
    cli("extract", "--dataset", "amazon", "--root", tmp_path / "data", "--backbone", f"hf:{tiny_bert}", "--out", out,
        "--quiet")
    with EmbeddingCache(out) as cache:
        cache.validate()
        assert cache.n_rows == 8 and set(cache.metadata().groups) == {"user", "category"}


# ---------------------------------------------------------------- bad input names the file, line and id


def _rewrite(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_waterbirds_errors_name_file_line_and_id(tmp_path):
    folder = write_waterbirds(tmp_path, per_group=1)
    metadata = folder / "metadata.csv"
    lines = metadata.read_text().splitlines()
    bad = lines[3].split(",")
    bad[3] = "7"  # split
    metadata.write_text("\n".join([*lines[:3], ",".join(bad), *lines[4:]]) + "\n")
    with pytest.raises(DatasetError, match=r"metadata.csv, line 4 \(id '3'\): split '7' is not one of \['0', '1', '2'\]"):
        create_dataset("waterbirds", folder).metadata
    metadata.write_text("\n".join(",".join(c for k, c in enumerate(line.split(",")) if k != 4) for line in lines))
    with pytest.raises(DatasetError, match=r"metadata.csv: missing column\(s\) \['place'\]"):
        create_dataset("waterbirds", folder).metadata


def test_missing_image_is_named_with_its_csv_line(tmp_path):
    folder = write_waterbirds(tmp_path, per_group=1)
    (folder / "001.Species_1/Species_1_0007.jpg").unlink()
    result = cli("extract", "--dataset", "waterbirds", "--root", folder, *TIMM, "--out", tmp_path / "c.h5", ok=False)
    assert "1 image file(s) not found" in result.output and "Species_1_0007.jpg (id '7')" in result.output
    assert "metadata.csv line 8" in result.output and not (tmp_path / "c.h5").exists()


def test_iwildcam_errors(tmp_path):
    folder = write_iwildcam(tmp_path, n=6)
    _rewrite(folder / "metadata.csv", "\nval,", "\nvalidation,")
    with pytest.raises(DatasetError, match=r"metadata.csv, line 5 \(id 'img-00003'\): split 'validation' is not one"):
        create_dataset("iwildcam", folder).metadata
    for path in (folder / "train").iterdir():
        path.unlink()
    (folder / "train").rmdir()
    with pytest.raises(DatasetError, match="iwildcam_v2.0/train: no such folder"):
        create_dataset("iwildcam", folder).metadata
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(DatasetError, match=r"elsewhere: no metadata.csv here or in iwildcam_v2.0/ \(dataset 'iwildcam'"):
        create_dataset("iwildcam", tmp_path / "elsewhere")


def test_amazon_errors(tmp_path):
    folder = write_amazon(tmp_path, n=6)
    user = folder / "splits/user.csv"
    original = user.read_text()
    _rewrite(user, "\n2,", "\n9,")
    with pytest.raises(DatasetError, match=r"user.csv, line \d+ \(row \d+ of reviews.csv\): split '9' is not one"):
        create_dataset("amazon", folder).metadata
    user.write_text(original + "0,True\n")
    with pytest.raises(DatasetError, match="reviews.csv has 6 reviews but .*user.csv has 7 rows"):
        create_dataset("amazon", folder).metadata
    user.write_text(original)
    _rewrite(folder / "reviews.csv", ",3.0,", ",7.0,")
    with pytest.raises(DatasetError, match=r"reviews.csv, line \d+ \(id '2'\): overall '7.0' is not one of"):
        create_dataset("amazon", folder).metadata


def test_download_is_opt_in_and_needs_wilds(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="no download for 'treeperson'"):
        download_wilds("treeperson", tmp_path)
    monkeypatch.setitem(sys.modules, "wilds", None)  # as if not installed
    with pytest.raises(ConfigError, match="needs the `wilds` package.*pip install wilds"):
        download_wilds("amazon", tmp_path)
    result = cli("datasets", "download", "iwildcam", "--root", tmp_path, ok=False)
    assert "pip install wilds" in result.output


# ---------------------------------------------------------------- Waterbirds builder


def test_waterbird_species_rule_matches_group_dro():
    assert is_waterbird("001.Black_footed_Albatross") and is_waterbird("059.California_Gull")
    assert not is_waterbird("013.Bobolink")
    assert is_waterbird("167.Eastern_Towhee")  # the substring rule's "tern": kept to match the release


@pytest.fixture(scope="module")
def cub_places(tmp_path_factory):
    return write_cub_and_places(tmp_path_factory.mktemp("sources"))


def test_waterbirds_builder_exact_shares_and_reproducible(tmp_path, cub_places):
    cub, places = cub_places
    record = build_waterbirds(WaterbirdsBuild(cub, places, tmp_path / "wb80", matched=0.8, seed=3, threads=2))
    data = create_dataset("waterbirds-variant", tmp_path / "wb80")
    meta = data.metadata
    assert meta.split_names == ("train", "val", "test") and len(meta) == 60
    for split, share in (("train", 0.8), ("val", 0.5), ("test", 0.5)):
        rows = meta.split_indices(split)
        for y in (0, 1):
            members = rows[meta.label[rows] == y]
            matched = int((meta.groups["place"][members] == y).sum())
            assert matched == round(share * len(members)), (split, y)
    # class marginals: CUB test = test; per class, round(0.2 n) of CUB train = val
    assert collections.Counter(meta.label[meta.split_indices("test")].tolist()) == {0: 16, 1: 8}
    assert collections.Counter(meta.label[meta.split_indices("val")].tolist()) == {0: 5, 1: 2}
    assert record["counts"]["train"] == {"landbird/land": 15, "landbird/water": 4, "waterbird/land": 2,
                                         "waterbird/water": 8}
    assert data.describe()["build"] == {"matched": 0.8, "seed": 3, "val_fraction": 0.2}
    rows = read_rows(tmp_path / "wb80/metadata.csv")
    assert list(rows[0]) == ["img_id", "img_filename", "y", "split", "place", "place_filename"]
    assert len({r["place_filename"] for r in rows}) == 60  # every bird its own background
    assert all(r["place_filename"].startswith(("/o/ocean/", "/l/lake/natural/") if r["place"] == "1"
                                               else ("/b/bamboo_forest/", "/f/forest/broadleaf/")) for r in rows)
    image = np.asarray(data.load(0), dtype=int)
    assert image.shape == (20, 24, 3)
    assert abs(image[10, 12] - (220, 20, 20)).max() < 30 and image[1, 1, 2] > 150  # bird inside, background out

    build_waterbirds(WaterbirdsBuild(cub, places, tmp_path / "again", matched=0.8, seed=3, threads=1))
    for path in sorted(p for p in (tmp_path / "wb80").rglob("*") if p.is_file() and p.name != "build.json"):
        assert path.read_bytes() == (tmp_path / "again" / path.relative_to(tmp_path / "wb80")).read_bytes(), path
    build_waterbirds(WaterbirdsBuild(cub, places, tmp_path / "seed4", matched=0.8, seed=4))
    assert read_rows(tmp_path / "seed4/metadata.csv") != rows


def test_waterbirds_variants_of_one_seed_share_val_and_test(tmp_path, cub_places):
    cub, places = cub_places
    result = cli("datasets", "build-waterbirds", "--cub", cub, "--places", places, "--matched", "0.5",
                 "--out", tmp_path / "wb50", "--quiet")
    assert "train landbird/land 10, landbird/water 9" in result.output
    cli("datasets", "build-waterbirds", "--cub", cub, "--places", places, "--matched", "1", "--out",
        tmp_path / "wb100", "--quiet")
    half, full = read_rows(tmp_path / "wb50/metadata.csv"), read_rows(tmp_path / "wb100/metadata.csv")
    assert [r for r in half if r["split"] != "0"] == [r for r in full if r["split"] != "0"]
    assert all(r["place"] == r["y"] for r in full if r["split"] == "0")
    before = read_rows(tmp_path / "wb50/metadata.csv")
    refused = cli("datasets", "build-waterbirds", "--cub", cub, "--places", places, "--matched", "0.9", "--out",
                  tmp_path / "wb50", ok=False)
    assert refused.exit_code == 2 and "holds an earlier `datasets build-waterbirds` output; pass --overwrite" \
        in refused.output
    assert read_rows(tmp_path / "wb50/metadata.csv") == before
    cli("datasets", "build-waterbirds", "--cub", cub, "--places", places, "--matched", "0.9", "--out",
        tmp_path / "wb50", "--overwrite", "--quiet")
    assert read_rows(tmp_path / "wb50/metadata.csv") != before
    with pytest.raises(DatasetError, match="build.json: not found; 'waterbirds-variant' reads a folder"):
        create_dataset("waterbirds-variant", write_waterbirds(tmp_path / "release", per_group=1))


def test_waterbirds_builder_input_errors(tmp_path, cub_places):
    cub, places = cub_places
    with pytest.raises(DatasetError, match="needs the Places365 folders b/bamboo_forest/"):
        build_waterbirds(WaterbirdsBuild(cub, tmp_path, tmp_path / "out"))
    small = write_cub_and_places(tmp_path / "small", per_species=1, backgrounds=2)[1]
    with pytest.raises(DatasetError, match=r"2 b/bamboo_forest \+ f/forest/broadleaf images for \d+ birds"):
        build_waterbirds(WaterbirdsBuild(cub, small, tmp_path / "out"))
    with pytest.raises(ConfigError, match="matched: 1.5: give a share"):
        WaterbirdsBuild(cub, places, tmp_path / "out", matched=1.5)
    broken = tmp_path / "small/CUB_200_2011"
    next((broken / "segmentations").rglob("*.png")).unlink()
    with pytest.raises(DatasetError, match=r"1 CUB file\(s\) not found, e.g. .*segmentations/.*\.png \(id \d+\)"):
        build_waterbirds(WaterbirdsBuild(broken, places, tmp_path / "out"))
    assert not (tmp_path / "out").exists()  # nothing written before the inputs check out


# ---------------------------------------------------------------- Treeperson builder

PERSON_TREE_VARIANTS = {(1, 1): ["Man", "building"], (1, 0): [" people ", "trees"], (0, 1): ["buildings", "car"],
                        (0, 0): ["leaf", "dog"]}


def write_visual_genome(root: Path, per_group: int = 12) -> tuple[Path, list[Path]]:
    """objects.json (a JSON array, one entry per image) and two image folders like VG_100K/ and VG_100K_2/.

    Every (person, place) group gets `per_group` qualifying images; images with both a tree and a building,
    or neither, do not qualify; one qualifying image has no file."""
    folders = [root / "VG_100K", root / "VG_100K_2"]
    for folder in folders:
        folder.mkdir(parents=True)
    entries, image_id = [], 0
    for (person, place), names in PERSON_TREE_VARIANTS.items():
        for _ in range(per_group):
            image_id += 1
            entries.append({"image_id": image_id, "objects": [
                {"object_id": 10 * image_id + k, "names": [name], "synsets": []} for k, name in enumerate(names)]})
    for names in (["tree", "building", "man"], ["woman", "sky"]):
        image_id += 1
        entries.append({"image_id": image_id, "objects": [{"object_id": 1, "names": names}]})
    for entry in entries:
        Image.new("RGB", (16, 12), (entry["image_id"] % 255, 0, 0)).save(
            folders[entry["image_id"] % 2] / f"{entry['image_id']}.jpg")
    (folders[1] / "1.jpg").unlink()  # a qualifying image missing on disk
    objects = root / "objects.json"
    objects.write_text(json.dumps(entries, indent=1))
    return objects, folders


def test_json_array_is_streamed_item_by_item(tmp_path):
    items = [{"image_id": i, "objects": [{"names": ["a, ]", "b"]}] * i} for i in range(30)]
    path = tmp_path / "a.json"
    path.write_text(" \n" + json.dumps(items, indent=2))
    assert list(iter_json_array(path, chunk_chars=7)) == items
    path.write_text(json.dumps(items)[:-40])
    with pytest.raises(DatasetError, match="a.json: item 2\\d is not valid JSON"):
        list(iter_json_array(path, chunk_chars=64))


def test_treeperson_builder_selects_and_balances(tmp_path):
    objects, folders = write_visual_genome(tmp_path / "vg")
    assert qualifying_images(objects)[2] == (1, 1) and 49 not in qualifying_images(objects)
    record = build_treeperson(TreepersonBuild(objects, folders, tmp_path / "tp", seed=1, majority=5, minority=2,
                                              val_per_group=3))
    meta = create_dataset("treeperson", tmp_path / "tp").metadata
    counts = collections.Counter(zip(meta.split[:].tolist(), meta.label.tolist(), meta.groups["place"].tolist()))
    train, val = meta.split_code("train"), meta.split_code("val")
    assert counts == {(train, 1, 1): 5, (train, 1, 0): 2, (train, 0, 1): 2, (train, 0, 0): 5,
                      (val, 1, 1): 3, (val, 1, 0): 3, (val, 0, 1): 3, (val, 0, 0): 3}
    assert len(set(meta.ids)) == len(meta) and "1" not in set(meta.ids)  # disjoint; the missing file left out
    assert record["missing_images"] == 1 and record["qualifying_images"] == 48
    assert all((tmp_path / "tp" / f"images/{i}.jpg").is_file() for i in meta.ids)
    build_treeperson(TreepersonBuild(objects, folders, tmp_path / "again", seed=1, majority=5, minority=2,
                                     val_per_group=3))
    assert (tmp_path / "again/metadata.csv").read_bytes() == (tmp_path / "tp/metadata.csv").read_bytes()


def test_treeperson_builder_with_val_ids_and_too_few_images(tmp_path):
    objects, folders = write_visual_genome(tmp_path / "vg")
    val_ids = set(range(2, 49, 2))
    (tmp_path / "val.txt").write_text("".join(f"{i}\n" for i in sorted(val_ids)))
    result = cli("datasets", "build-treeperson", "--objects", objects, "--images", folders[0], "--images", folders[1],
                 "--val-ids", tmp_path / "val.txt", "--out", tmp_path / "tp", "--majority", "4", "--minority", "1",
                 "--val-per-group", "2", "--quiet")
    assert "train no_person/trees 4" in result.output and "1 of 48 qualifying images were not under" in result.output
    meta = create_dataset("treeperson", tmp_path / "tp").metadata
    val = {int(i) for i in meta.ids[meta.split_indices("val")]}
    train = {int(i) for i in meta.ids[meta.split_indices("train")]}
    assert len(val) == 8 and val <= val_ids and len(train) == 10 and not train & val_ids
    with pytest.raises(DatasetError, match=r"objects.json: only 11 images for train person & building, 12 wanted"):
        build_treeperson(TreepersonBuild(objects, folders, tmp_path / "x", majority=12, val_per_group=0))
    (tmp_path / "bad.txt").write_text("12\nabc\n")
    with pytest.raises(DatasetError, match=r"bad.txt, line 2: expected a Visual Genome image id"):
        build_treeperson(TreepersonBuild(objects, folders, tmp_path / "x", val_ids=tmp_path / "bad.txt"))
