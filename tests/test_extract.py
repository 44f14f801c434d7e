"""Extraction end to end: exact rows, order, resume, shards, and every bad-input error (kills, full disks and
read-only folders: test_cache_faults.py)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from embedcache.backbones import create_backbone
from embedcache.cache import EmbeddingCache, partial_path
from embedcache.cli import main
from embedcache.datasets import create_dataset
from embedcache.datasets.synthetic import write_image_manifest
from embedcache.errors import ConfigError
from embedcache.extract import ExtractOptions, extract

TIMM = ["--backbone", "timm:test_resnet", "--weights", "random", "--resolution", "48"]


def cli(*args: str, ok: bool = True):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    return result


def test_image_rows_equal_a_direct_forward_pass(image_folder, tmp_path):
    out = tmp_path / "c.h5"
    cli("extract", "--dataset", "imagefolder", "--root", image_folder, *TIMM, "--out", out, "--dtype", "float32",
        "--batch-size", "3", "--workers", "1", "--quiet")
    data = create_dataset("imagefolder", image_folder)
    backbone = create_backbone("timm:test_resnet", weights="random", resolution=48)
    transform = backbone.image_preprocess.transform()
    inputs = torch.stack([transform(Image.open(image_folder / i).convert("RGB")) for i in data.metadata.ids])
    with torch.no_grad():
        expected = backbone.model.eval()(inputs).numpy()
    with EmbeddingCache(out) as cache:
        cache.validate()
        assert list(cache.metadata().ids) == list(data.metadata.ids)  # dataset order, ids aligned
        assert (cache.metadata().label == data.metadata.label).all()
        assert np.abs(cache.embeddings() - expected).max() < 1e-4
        assert cache.recipe["preprocess"]["resolution"] == 48 and cache.recipe["weights"]["source"] == "random"


def test_text_rows_equal_a_direct_forward_pass(tiny_bert, text_jsonl, tmp_path):
    out = tmp_path / "t.h5"
    cli("extract", "--dataset", "jsonl", "--root", text_jsonl, "--backbone", f"hf:{tiny_bert}", "--out", out,
        "--dtype", "float32", "--batch-size", "5", "--quiet")
    data = create_dataset("jsonl", text_jsonl)
    backbone = create_backbone(f"hf:{tiny_bert}")
    with torch.no_grad():
        expected = torch.cat([backbone.features(backbone.collate([data.load(i)])) for i in range(len(data.inputs))])
    with EmbeddingCache(out) as cache:
        assert np.abs(cache.embeddings() - expected.numpy()).max() < 1e-4
        assert cache.metadata().groups["topic"].tolist() == data.metadata.groups["topic"].tolist()


def test_real_pretrained_minilm_matches_sentence_transformers(minilm_path, tmp_path):
    """The one test with real pretrained weights, offline: our mean-pooled rows, L2-normalised, equal
    sentence-transformers' embeddings, and similar sentences land closer than unrelated ones."""
    texts = ["The battery died after two days.", "Battery life is terrible, it barely lasts.",
             "The soup recipe needs more garlic.", "I loved the soundtrack of this film."]
    path = tmp_path / "t.jsonl"
    path.write_text("".join(f'{{"id": "s{i}", "text": "{t}"}}\n' for i, t in enumerate(texts)))
    out = tmp_path / "m.h5"
    cli("extract", "--dataset", "jsonl", "--root", path, "-o", "unlabelled=true", "--backbone", f"hf:{minilm_path}",
        "--out", out, "--dtype", "float32", "--quiet")
    from sentence_transformers import SentenceTransformer

    expected = SentenceTransformer(str(minilm_path), device="cpu").encode(texts)
    with EmbeddingCache(out) as cache:
        got = cache.embeddings()
        assert cache.recipe["preprocess"]["max_length"] == 256  # from sentence_bert_config.json
    got /= np.linalg.norm(got, axis=1, keepdims=True)
    assert np.abs(got - expected).max() < 1e-4
    similarity = got @ got.T
    assert similarity[0, 1] > similarity[0, 2] + 0.2 and similarity[0, 1] > similarity[0, 3] + 0.2


@pytest.mark.parametrize("virtual", [False, True])
def test_merged_shards_equal_the_unsharded_extraction(tmp_path, virtual):
    write_image_manifest(tmp_path / "data", n=11)
    common = ["--dataset", "manifest", "--root", tmp_path / "data", *TIMM, "--quiet", "--workers", "0"]
    cli("extract", *common, "--out", tmp_path / "full.h5")
    for i in range(3):
        cli("extract", *common, "--out", tmp_path / f"s{i}.h5", "--shard", f"{i}/3")
    cli("merge", tmp_path / "s2.h5", tmp_path / "s0.h5", tmp_path / "s1.h5", "--out", tmp_path / "m.h5",
        *(["--virtual"] if virtual else []))
    with EmbeddingCache(tmp_path / "full.h5") as full, EmbeddingCache(tmp_path / "m.h5") as merged:
        merged.validate()
        np.testing.assert_array_equal(full.embeddings(), merged.embeddings())
        assert list(full.metadata().ids) == list(merged.metadata().ids)
        assert full.fingerprint == merged.fingerprint and full.dataset == merged.dataset
        assert full.metadata().group_names == merged.metadata().group_names


def test_skip_bad_records_skipped_ids(tmp_path):
    write_image_manifest(tmp_path / "data", n=8)
    (tmp_path / "data/images/00002.png").write_bytes(b"not a png")
    (tmp_path / "data/images/00005.png").unlink()
    out = tmp_path / "c.h5"
    result = cli("extract", "--dataset", "manifest", "--root", tmp_path / "data", *TIMM, "--out", out,
                 "--skip-bad", "--quiet", "--batch-size", "3")
    assert "skipped 2 bad example(s)" in result.output
    with EmbeddingCache(out) as cache:
        cache.validate()
        assert cache.skipped_ids == ["ex00002", "ex00005"] and cache.n_rows == 6
        assert "ex00002" not in set(cache.metadata().ids)
        assert "cannot read image" in cache.skipped_errors[0] and "not found" in cache.skipped_errors[1]
    assert "skipped   2: ex00002; ex00005" in cli("info", out).output


def _error(args, tmp_path) -> str:
    result = cli(*args, ok=False)
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    return result.output


def test_corrupt_image_stops_with_its_name_and_leaves_no_complete_file(tmp_path):
    write_image_manifest(tmp_path / "data", n=8)
    (tmp_path / "data/images/00006.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "c.h5"
    message = _error(["extract", "--dataset", "manifest", "--root", tmp_path / "data", *TIMM, "--out", out,
                      "--batch-size", "2", "--quiet"], tmp_path)
    assert "00006.png: cannot read image (id 'ex00006')" in message and "--skip-bad" in message
    assert f"Rows before it are saved in {partial_path(out)}" in message and not out.exists()
    with EmbeddingCache(partial_path(out)) as cache:
        assert not cache.complete and cache.rows_written == 6  # rows before the bad one are kept


def test_missing_file_is_reported_before_anything_is_written(tmp_path):
    write_image_manifest(tmp_path / "data", n=6)
    (tmp_path / "data/images/00004.png").unlink()
    out = tmp_path / "c.h5"
    message = _error(["extract", "--dataset", "manifest", "--root", tmp_path / "data", *TIMM, "--out", out],
                     tmp_path)
    assert "1 image file(s) not found" in message and "00004.png (id 'ex00004')" in message
    assert not out.exists()


@pytest.mark.parametrize("args, expected", [
    (["--backbone", "timm:not_a_model", "--weights", "random"], "unknown timm model 'not_a_model'"),
    (["--backbone", "nope:x"], "unknown backbone kind 'nope'"),
    (["--backbone", "timm:test_resnet", "--weights", "missing.npz"], "--weights: 'missing.npz': not 'pretrained'"),
])
def test_bad_backbone_options(image_folder, tmp_path, args, expected):
    out = tmp_path / "c.h5"
    message = _error(["extract", "--dataset", "imagefolder", "--root", image_folder, *args, "--out", out], tmp_path)
    assert expected in message and not out.exists()


def test_unknown_dataset_and_duplicate_ids(tmp_path, image_folder):
    assert "unknown dataset 'imgfolder'" in _error(
        ["extract", "--dataset", "imgfolder", "--root", image_folder, *TIMM, "--out", tmp_path / "c.h5"], tmp_path)
    manifest = tmp_path / "dupes.csv"
    manifest.write_text("id,text,label\na,one,0\nb,two,1\na,three,0\n")
    message = _error(["extract", "--dataset", "manifest", "--root", manifest, *TIMM, "--out", tmp_path / "d.h5"],
                     tmp_path)
    assert "dupes.csv, line 4: duplicate id 'a', first at " in message and "dupes.csv, line 2" in message


def test_weights_of_another_architecture(tmp_path, image_folder):
    import timm

    weights = tmp_path / "vit.safetensors"
    from safetensors.torch import save_file

    save_file(timm.create_model("test_vit", num_classes=0).state_dict(), str(weights))
    message = _error(["extract", "--dataset", "imagefolder", "--root", image_folder, "--backbone", "timm:test_resnet",
                      "--weights", weights, "--out", tmp_path / "c.h5"], tmp_path)
    assert "vit.safetensors does not fit timm:test_resnet" in message


def test_existing_outputs_are_never_overwritten_silently(image_folder, tmp_path):
    out = tmp_path / "c.h5"
    cli("extract", "--dataset", "imagefolder", "--root", image_folder, *TIMM, "--out", out, "--quiet")
    before = out.read_bytes()
    same = _error(["extract", "--dataset", "imagefolder", "--root", image_folder, *TIMM, "--out", out], tmp_path)
    assert "already complete with this recipe and dataset: nothing to do" in same and "--resume" in same
    assert "--overwrite" not in same  # never advised for a complete cache of the same recipe
    unchanged = cli("extract", "--dataset", "imagefolder", "--root", image_folder, *TIMM, "--out", out, "--resume")
    assert "already complete (20 rows): nothing to do" in unchanged.output and out.read_bytes() == before
    other = [*TIMM[:-1], "64"]  # another resolution: another recipe
    different = _error(["extract", "--dataset", "imagefolder", "--root", image_folder, *other, "--out", out,
                        "--resume"], tmp_path)
    assert "holds another recipe" in different and "preprocess" in different and "--overwrite" in different
    assert out.read_bytes() == before
    cli("extract", "--dataset", "imagefolder", "--root", image_folder, *other, "--out", out, "--overwrite", "--quiet")
    with EmbeddingCache(out) as cache:
        assert cache.recipe["preprocess"]["resolution"] == 64
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.h5", "photos"]  # nothing left beside it


def test_library_call_with_amp_records_it(image_folder, tmp_path):
    data = create_dataset("imagefolder", image_folder)
    backbone = create_backbone("timm:test_resnet", weights="random", resolution=32)
    calls = []
    result = extract(data, backbone, tmp_path / "c.h5", ExtractOptions(amp="bf16", num_workers=0, batch_size=4),
                     progress=lambda done, total: calls.append((done, total)))
    assert result.rows == 20 and calls[0] == (0, 20) and calls[-1] == (20, 20)
    with EmbeddingCache(result.path) as cache:
        assert cache.recipe["amp"] == "bf16" and cache.dtype == np.float16
        cache.validate()


def test_shard_bounds_are_checked(tmp_path):
    write_image_manifest(tmp_path / "data", n=6)
    data = create_dataset("manifest", tmp_path / "data")
    backbone = create_backbone("timm:test_resnet", weights="random", resolution=32)
    with pytest.raises(ConfigError, match="shard: 2/2: need 0 <= I < N"):
        extract(data, backbone, tmp_path / "x.h5", ExtractOptions(shard=(2, 2)))
    with pytest.raises(ConfigError, match="shard: 0/8 is empty"):
        extract(data, backbone, tmp_path / "x.h5", ExtractOptions(shard=(0, 8)))
    assert not (tmp_path / "x.h5").exists()


def _manifest_with_a_broken_image(root):
    """8 images whose 7th is truncated, so a batch-2 extraction stops after saving 6 rows."""
    write_image_manifest(root, n=8)
    good = (root / "images/00006.png").read_bytes()
    (root / "images/00006.png").write_bytes(good[:20])
    return good


def test_every_resume_and_overwrite_message_is_true(tmp_path):
    """Each situation --out can be in, what extract says about it, and that following the advice works."""
    data = tmp_path / "data"
    good = _manifest_with_a_broken_image(data)
    out = tmp_path / "c.h5"
    args = ["extract", "--dataset", "manifest", "--root", data, *TIMM, "--batch-size", "2", "--workers", "0",
            "--quiet", "--out", out]
    _error(args, tmp_path)  # stops at the broken image with 6 rows saved
    interrupted = _error(args, tmp_path)
    assert f"{partial_path(out)} holds an interrupted extraction (6/8 rows); pass --resume to continue" in interrupted
    (data / "images/00006.png").write_bytes(good)
    assert "resumed at row 6" in cli(*args, "--resume").output
    assert "--overwrite" not in _error(args, tmp_path)  # complete, same recipe: nothing to do
    assert "nothing to do" in cli(*args, "--resume").output
    assert "--resume continues --out and --overwrite starts it again" in _error([*args, "--resume", "--overwrite"],
                                                                               tmp_path)
    junk = tmp_path / "junk.h5"
    junk.write_text("not a cache")
    message = _error([*args[:-1], junk], tmp_path)
    assert "junk.h5 exists and is not an embedding cache (cannot open as HDF5" in message and "--overwrite" in message
    assert junk.read_text() == "not a cache"


def test_a_cache_interrupted_in_place_by_an_older_version_still_resumes(tmp_path):
    """Before .partial files, an interrupted extraction sat at --out itself; --resume finishes it there."""
    data = tmp_path / "data"
    good = _manifest_with_a_broken_image(data)
    out = tmp_path / "old.h5"
    args = ["extract", "--dataset", "manifest", "--root", data, *TIMM, "--batch-size", "2", "--workers", "0",
            "--quiet", "--out", out]
    _error(args, tmp_path)
    partial_path(out).rename(out)  # where an older embedcache left it
    (data / "images/00006.png").write_bytes(good)
    assert f"{out} holds an interrupted extraction (6/8 rows); pass --resume" in _error(args, tmp_path)
    assert "resumed at row 6" in cli(*args, "--resume").output
    cli(*args[:-1], tmp_path / "fresh.h5")
    with EmbeddingCache(out) as resumed, EmbeddingCache(tmp_path / "fresh.h5") as fresh:
        resumed.validate()
        np.testing.assert_array_equal(resumed.embeddings(), fresh.embeddings())


def test_an_older_version_killed_while_dropping_skipped_rows_is_refused(tmp_path):
    """Older versions moved rows in place to drop skipped ones; a file they left incomplete with every
    row written may hold rows under the wrong ids, so it is not resumed."""
    write_image_manifest(tmp_path / "data", n=8)
    (tmp_path / "data/images/00002.png").write_bytes(b"not a png")
    out = tmp_path / "old.h5"
    args = ["extract", "--dataset", "manifest", "--root", tmp_path / "data", *TIMM, "--workers", "0", "--quiet",
            "--skip-bad", "--out", out]
    cli(*args)
    with h5py.File(out, "r+") as f:  # what an older version killed mid-compaction left: rows written, not complete
        f.attrs["complete"] = False
    message = _error([*args, "--resume"], tmp_path)
    assert "left incomplete by an older embedcache after all its rows were written" in message
    assert "pass --overwrite to extract it again" in message


@pytest.mark.parametrize("args, expected", [
    (["--shard", "3/2"], "Error: --shard: 3/2: need 0 <= I < N"),
    (["--shard", "x"], "expected I/N"),
    (["--batch-size", "0"], "Error: --batch-size: must be at least 1"),
    (["--workers", "-1"], "Invalid value for '--workers': -1 is not in the range x>=0"),
    (["--amp", "fp8"], "'fp8' is not one of"),
    (["--dtype", "int8"], "'int8' is not one of"),
    (["--device", "tpu:0"], "--device"),
    (["--resume", "--overwrite"], "pass one of them"),
    (["--out-is-a-folder"], "is a folder"),
])
def test_option_errors_write_nothing(image_folder, tmp_path, args, expected):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "c.h5"
    if args == ["--out-is-a-folder"]:
        args, out = [], out_dir
    message = _error(["extract", "--dataset", "imagefolder", "--root", image_folder, *TIMM, "--out", out, *args],
                     tmp_path)
    assert expected in message
    assert list(out_dir.iterdir()) == []


def test_merge_and_info_errors_write_nothing(tmp_path):
    write_image_manifest(tmp_path / "data", n=6)
    common = ["--dataset", "manifest", "--root", tmp_path / "data", *TIMM, "--quiet", "--workers", "0"]
    for i in range(2):
        cli("extract", *common, "--out", tmp_path / f"s{i}.h5", "--shard", f"{i}/2")
    before = {p.name: p.read_bytes() for p in tmp_path.glob("s*.h5")}
    assert "is one of the shards" in _error(["merge", tmp_path / "s0.h5", tmp_path / "s1.h5", "--out",
                                             tmp_path / "s0.h5", "--overwrite"], tmp_path)
    assert "missing [1]" in _error(["merge", tmp_path / "s0.h5", "--out", tmp_path / "m.h5"], tmp_path)
    assert "no such cache file" in _error(["info", tmp_path / "nope.h5"], tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.glob("s*.h5")} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "s0.h5", "s1.h5"]


def test_amp_means_the_same_as_in_al():
    """auto is bf16 on CUDA and none on the CPU; "none" and None are no autocast; the recipe records the result."""
    import torch

    from embedcache.devices import resolve_amp

    cpu = torch.device("cpu")
    assert [resolve_amp(a, cpu) for a in ("auto", "none", None, "bf16", "fp16")] == [None, None, None, "bf16", "fp16"]
    with pytest.raises(ConfigError, match="'fp8': expected one of auto, bf16, fp16, none") as e:
        resolve_amp("fp8", cpu)
    assert e.value.param == "amp"
