"""EmbeddingCache: schema v1 layout, writing in order, resume, reading, iteration, validation (checksums,
required parts), caches from other tools, merge."""

from __future__ import annotations

import hashlib
import json

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from helpers import make_metadata, recipe

from embedcache.cache import SCHEMA_VERSION, EmbeddingCache, NotACacheError, merge_shards, partial_path
from embedcache.cli import main
from embedcache.datasets.synthetic import ambiguity_embeddings
from embedcache.errors import CacheError, DatasetError
from embedcache.recipe import canonical_json, recipe_difference, recipe_fingerprint, recipe_label


@pytest.fixture
def arrays():
    rng = np.random.default_rng(1)
    return rng.normal(size=(257, 24)).astype(np.float32), make_metadata(257)


def test_schema_layout_matches_design(tmp_path, arrays):
    emb, meta = arrays
    path = EmbeddingCache.write(tmp_path / "c.h5", emb, meta, recipe=recipe())
    with h5py.File(path) as f:
        assert f["embeddings"].shape == (257, 24) and f["embeddings"].dtype == np.float32
        assert f["embeddings"].chunks[1] == 24  # row-chunked
        assert h5py.check_string_dtype(f["ids"].dtype).encoding == "utf-8" and f["ids"].asstr()[0] == "id00000"
        assert f["label"].dtype == np.int64 and list(f["label"].attrs["names"]) == ["a", "b", "c"]
        assert f["split"].dtype == np.int8 and [s for s in f["split"].attrs["names"]] == ["train", "val"]
        assert f["groups/place"].dtype == np.int64 and list(f["groups/place"].attrs["names"]) == ["land", "water"]
        assert f.attrs["schema_version"] == SCHEMA_VERSION
        assert f.attrs["complete"] and f.attrs["recipe_fingerprint"] == recipe_fingerprint(recipe())
        for key in ("embedcache_version", "recipe", "dataset", "versions"):
            assert key in f.attrs
        datasets = []
        f.visititems(lambda name, obj: datasets.append(obj) if isinstance(obj, h5py.Dataset) else None)
        assert len(datasets) == 6 and all(ds.fletcher32 for ds in datasets)  # every chunk checksummed


def test_roundtrip_reads_rows_columns_and_chunks(tmp_path, arrays):
    emb, meta = arrays
    with EmbeddingCache(EmbeddingCache.write(tmp_path / "c.h5", emb, meta, recipe=recipe())) as cache:
        cache.validate()
        np.testing.assert_array_equal(cache.embeddings(), emb)
        np.testing.assert_array_equal(cache.embeddings(slice(10, 20)), emb[10:20])
        rows = np.random.default_rng(0).permutation(257)[:100]
        np.testing.assert_array_equal(cache.embeddings(rows), emb[rows])
        got = cache.metadata()
        assert list(got.ids) == list(meta.ids) and (got.label == meta.label).all()
        assert got.group_names == meta.group_names and (got.groups["user"] == meta.groups["user"]).all()
        seen = np.concatenate([r for r, _ in cache.iter_chunks(chunk_rows=50)])
        np.testing.assert_array_equal(seen, np.arange(257))
        np.testing.assert_array_equal(np.concatenate([b for _, b in cache.iter_chunks(chunk_rows=50)]), emb)
        picked = [(r, b) for r, b in cache.iter_chunks(rows=rows, chunk_rows=16)]
        assert all(len(r) <= 16 for r, _ in picked)
        for r, b in picked:
            np.testing.assert_array_equal(b, emb[r])
        assert cache.summary()["splits"] == {"train": 129, "val": 128}


def test_append_resume_and_complete_only_at_finalize(tmp_path, arrays):
    emb, meta = arrays
    path = tmp_path / "c.h5"
    with EmbeddingCache.create(path, meta, dim=24, dtype="float32", recipe=recipe(), dataset={"name": "x"}) as c:
        assert c.path == partial_path(path) and c.target == path
        c.append(emb[:100])
    assert not path.exists()  # only a complete cache ever sits at the final path
    with pytest.raises(CacheError, match=r"no such cache file \(.*c.h5.partial holds an unfinished write"):
        EmbeddingCache(path)
    with EmbeddingCache(partial_path(path)) as c:
        assert not c.complete and c.rows_written == 100
        with pytest.raises(CacheError, match="not complete .100/257"):
            c.require_complete()
        with pytest.raises(CacheError, match="not complete"):
            c.validate()
    with EmbeddingCache(partial_path(path), "r+") as c:
        c.append(emb[100:200])
        c.append(emb[200:])
        c.finalize()
        assert c.path == path and c.complete  # open for reading at the final path
    assert not partial_path(path).exists()
    with EmbeddingCache(path) as c:
        assert c.complete
        np.testing.assert_array_equal(c.embeddings(), emb)


def test_skipped_rows_are_dropped_and_recorded(tmp_path, arrays):
    emb, meta = arrays
    meta = meta.take(np.arange(10))
    path = tmp_path / "c.h5"
    with EmbeddingCache.create(path, meta, dim=24, dtype="float32", recipe=recipe(), dataset={}) as c:
        c.append(emb[[0, 2, 3]], skipped={1: "bad one"})
        c.append(emb[[4, 5, 6, 7, 8]], skipped={5: "bad two"})  # block of 6: offset 5 = row 9
        c.finalize()
    with EmbeddingCache(path) as c:
        assert c.skipped_ids == ["id00001", "id00009"] and c.skipped_errors == ["bad one", "bad two"]
        assert list(c.metadata().ids) == [f"id0000{i}" for i in (0, 2, 3, 4, 5, 6, 7, 8)]
        np.testing.assert_array_equal(c.embeddings(), emb[[0, 2, 3, 4, 5, 6, 7, 8]])
        np.testing.assert_array_equal(c.metadata().label, meta.label[[0, 2, 3, 4, 5, 6, 7, 8]])
        c.validate()


def test_validate_reports_nan_rows_by_id(tmp_path, arrays):
    emb, meta = arrays
    emb = emb.copy()
    emb[[3, 7]] = np.nan
    emb[9, 0] = np.inf
    with EmbeddingCache(EmbeddingCache.write(tmp_path / "c.h5", emb, meta, recipe=recipe())) as c:
        with pytest.raises(CacheError, match=r"3 row\(s\) with NaN/inf.*id00003"):
            c.validate()


def test_duplicate_ids_are_refused_with_their_names(tmp_path, arrays):
    emb, meta = arrays
    meta.ids[5] = meta.ids[4]
    with pytest.raises(DatasetError, match="duplicate id.*id00004"):
        EmbeddingCache.write(tmp_path / "c.h5", emb, meta, recipe=recipe())
    assert not (tmp_path / "c.h5").exists()


def test_float16_overflow_is_an_error_not_inf(tmp_path, arrays):
    emb, meta = arrays
    with pytest.raises(CacheError, match=r"float16 range; store them as float32 \(`dtype`\)"):
        EmbeddingCache.write(tmp_path / "c.h5", emb * 1e6, meta, recipe=recipe(dtype="float16"))


def test_wrong_schema_and_non_hdf5_files_are_refused(tmp_path, arrays):
    emb, meta = arrays
    path = EmbeddingCache.write(tmp_path / "c.h5", emb, meta, recipe=recipe())
    with h5py.File(path, "r+") as f:
        f.attrs["schema_version"] = 99
    with pytest.raises(CacheError, match="schema version 99"):
        EmbeddingCache(path)
    junk = tmp_path / "junk.h5"
    junk.write_text("not hdf5")
    with pytest.raises(CacheError, match="junk.h5: cannot open as HDF5"):
        EmbeddingCache(junk)
    with pytest.raises(CacheError, match="no such cache file"):
        EmbeddingCache(tmp_path / "missing.h5")


def test_existing_file_is_never_replaced_without_overwrite(tmp_path, arrays):
    emb, meta = arrays
    path = EmbeddingCache.write(tmp_path / "c.h5", emb, meta, recipe=recipe())
    with pytest.raises(CacheError, match="already exists; pass `overwrite`"):
        EmbeddingCache.write(path, emb[::-1].copy(), meta, recipe=recipe())
    with EmbeddingCache(path) as c:
        np.testing.assert_array_equal(c.embeddings(), emb)


def test_fingerprint_ignores_spec_and_check_recipe_names_differences(tmp_path, arrays):
    emb, meta = arrays
    assert recipe_fingerprint(recipe(spec="hf:/a/b")) == recipe_fingerprint(recipe(spec="hf:/c/d"))
    with EmbeddingCache(EmbeddingCache.write(tmp_path / "c.h5", emb, meta, recipe=recipe())) as c:
        c.check_recipe(recipe(spec="other/path"))
        with pytest.raises(CacheError, match=r"another recipe.*weights: .*\"seed\":0.*\"seed\":1"):
            c.check_recipe(recipe(weights={"source": "random", "seed": 1}))


def _shards(tmp_path, emb, meta, bounds, **recipe_changes):
    paths = []
    for index, (start, stop) in enumerate(bounds):
        path = tmp_path / f"s{index}.h5"
        with EmbeddingCache.create(path, meta.take(np.arange(start, stop)), dim=emb.shape[1], dtype="float32",
                                   recipe=recipe(**recipe_changes), dataset={"manifest_sha256": "m"},
                                   shard={"index": index, "count": len(bounds), "start": start, "stop": stop,
                                          "total": len(meta)}) as c:
            c.append(emb[start:stop])
            c.finalize()
        paths.append(path)
    return paths


@pytest.mark.parametrize("virtual", [False, True])
def test_merge_shards_in_any_order(tmp_path, arrays, virtual):
    emb, meta = arrays
    paths = _shards(tmp_path, emb, meta, [(0, 85), (85, 171), (171, 257)])
    out = merge_shards(paths[::-1], tmp_path / "merged.h5", virtual=virtual)
    with EmbeddingCache(out) as c:
        c.validate()
        np.testing.assert_array_equal(c.embeddings(), emb)
        assert list(c.metadata().ids) == list(meta.ids)
        assert c.unchecksummed() == []  # a virtual /embeddings has none of its own: the shards' are verified
        assert c._file["embeddings"].is_virtual == virtual
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged.h5", "s0.h5", "s1.h5", "s2.h5"]
    with h5py.File(paths[1]) as f:
        chunk = f["embeddings"].id.get_chunk_info(0)
    _flip_byte(paths[1], chunk.byte_offset + 10)
    with EmbeddingCache(out) as c:  # copied rows are checked in the merged file, virtual ones in the shard
        if virtual:
            with pytest.raises(CacheError, match=r"/embeddings rows 85-170 \(in s1.h5\): corrupted bytes"):
                c.validate()
        else:
            c.validate()
    if virtual:  # without its shards a virtual dataset would read as zeros
        paths[2].rename(tmp_path / "elsewhere.h5")
        with pytest.raises(CacheError, match=r"virtual /embeddings reads rows from \[.*s2.h5'\], which are not"):
            EmbeddingCache(out)


def test_merge_refuses_mixed_recipes_missing_shards_and_incomplete(tmp_path, arrays):
    emb, meta = arrays
    good = _shards(tmp_path, emb, meta, [(0, 100), (100, 257)])
    with pytest.raises(CacheError, match=r"missing \[1\]"):
        merge_shards(good[:1], tmp_path / "m.h5")
    other = tmp_path / "other"
    other.mkdir()
    odd = _shards(other, emb, meta, [(0, 100), (100, 257)], weights={"source": "random", "seed": 5})
    with pytest.raises(CacheError, match="has recipe"):
        merge_shards([good[0], odd[1]], tmp_path / "m.h5")
    with h5py.File(good[1], "r+") as f:
        f.attrs["complete"] = False
    with pytest.raises(CacheError, match="not complete"):
        merge_shards(good, tmp_path / "m.h5")
    assert not (tmp_path / "m.h5").exists()


def cli(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in result.output and not isinstance(result.exception, (KeyError, AttributeError, OSError))
    return result


def _flip_byte(path, offset: int) -> None:
    with open(path, "r+b") as raw:
        raw.seek(offset)
        byte = raw.read(1)
        raw.seek(offset)
        raw.write(bytes([byte[0] ^ 0xFF]))


def test_corrupted_bytes_are_named_by_dataset_and_rows_while_other_chunks_read(tmp_path):
    emb = np.random.default_rng(2).normal(size=(1200, 512)).astype(np.float32)  # 1 MiB chunks: rows 0-511, ...
    path = EmbeddingCache.write(tmp_path / "c.h5", emb, make_metadata(1200), recipe=recipe())
    with h5py.File(path) as f:
        assert f["embeddings"].chunks == (512, 512)
        embeddings_chunk = f["embeddings"].id.get_chunk_info(1)  # rows 512-1023
        label_chunk = f["label"].id.get_chunk_info(0)
    _flip_byte(path, embeddings_chunk.byte_offset + 1000)
    _flip_byte(path, label_chunk.byte_offset + 8 * 700)  # the label of row 700
    result = cli("info", "--check", path)
    assert result.exit_code == 1
    assert "/embeddings rows 512-1023: corrupted bytes (checksum mismatch)" in result.output
    assert "/label rows 0-1199: corrupted bytes (checksum mismatch)" in result.output
    assert "restore the file from a copy or extract it again" in result.output and result.output.count("\n") == 1
    with EmbeddingCache(path) as cache:  # the other chunks still read
        np.testing.assert_array_equal(cache.embeddings(slice(0, 512)), emb[:512])
        np.testing.assert_array_equal(cache.embeddings(np.array([1100, 3])), emb[[1100, 3]])
        with pytest.raises(CacheError, match=r"cannot read /embeddings .*`embedcache info --check .*c.h5` names"):
            cache.embeddings(np.array([700]))


def _foreign_cache(path, recipe_value, emb, meta, **drop):
    """A cache as another tool writes it from the schema table alone: plain h5py, contiguous datasets,
    variable-length ids, no checksums, no rows_written, a recipe of its own shape."""
    identity = recipe_value
    if isinstance(recipe_value, dict):  # the fingerprint leaves out "spec", as the README says
        identity = {k: v for k, v in recipe_value.items() if k != "spec"}
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    with h5py.File(path, "w") as f:
        attrs = {"schema_version": 1, "embedcache_version": "other-tool 2.0", "recipe": json.dumps(recipe_value),
                 "recipe_fingerprint": hashlib.sha256(canonical.encode()).hexdigest(),
                 "dataset": json.dumps({"name": "mine"}), "complete": True, "versions": json.dumps({"other": "2.0"})}
        for key, value in attrs.items():
            if key not in drop:
                f.attrs[key] = value
        columns = {"embeddings": emb, "ids": np.array(list(meta.ids), dtype=h5py.string_dtype()),
                   "label": meta.label, "split": meta.split}
        for name, data in columns.items():
            if name not in drop:
                f[name] = data
        if "split" in f:
            f["split"].attrs["names"] = list(meta.split_names)
        for name, codes in meta.groups.items():
            f[f"groups/{name}"] = codes
            f[f"groups/{name}"].attrs["names"] = list(meta.group_names[name])
    return path


@pytest.mark.parametrize("recipe_value", [{"backbone": "x", "weights": "synthetic"}, "plain string", [1, 2]])
def test_a_cache_from_another_tool_with_any_json_recipe_works_everywhere(tmp_path, recipe_value):
    x, meta = ambiguity_embeddings(n_train=60, n_val=20, dim=8, seed=3)
    path = _foreign_cache(tmp_path / "theirs.h5", recipe_value, x.astype(np.float32), meta)
    shown = cli("info", path)
    assert shown.exit_code == 0 and canonical_json(recipe_value) in shown.output
    checked = cli("info", "--check", path)
    assert checked.exit_code == 0 and "check     ok: but its bytes are not checksummed" in checked.output
    with EmbeddingCache(path) as cache:
        assert cache.recipe == recipe_value and cache.rows_written == 80 and cache.summary()["recipe"] == recipe_value
        assert recipe_label(cache.recipe).startswith(canonical_json(recipe_value)[:20])
        cache.check_recipe(recipe_value)
        assert recipe_difference(cache.recipe, {"other": 1}) != []
    ran = cli("al", "--cache", path, "--strategy", "least-confidence", "--seed-size", "6", "--per-round", "2",
              "--budget", "4", "--out", tmp_path / "runs", "--quiet")
    assert ran.exit_code == 0, ran.output
    record = tmp_path / "runs" / "least-confidence-seed0.jsonl"
    assert len(record.read_text().splitlines()) == 1 + 3  # header, rounds 0..2


def test_a_file_without_the_required_parts_is_refused_naming_them(tmp_path):
    only_version = tmp_path / "v.h5"
    with h5py.File(only_version, "w") as f:
        f.attrs["schema_version"] = 1
    with pytest.raises(NotACacheError, match=r"not a complete schema-1 embedding cache: root attribute\(s\) "
                                             r"embedcache_version, recipe, recipe_fingerprint, dataset, complete, "
                                             r"versions missing; /embeddings, /ids, /label, /split, /groups missing"):
        EmbeddingCache(only_version)
    result = cli("info", only_version)
    assert result.exit_code == 1 and "v.h5: not a complete schema-1 embedding cache" in result.output
    x, meta = ambiguity_embeddings(n_train=10, n_val=4, dim=4)
    no_label = _foreign_cache(tmp_path / "n.h5", {}, x, meta, label=True, recipe=True)
    with pytest.raises(NotACacheError, match=r"root attribute\(s\) recipe missing; /label missing"):
        EmbeddingCache(no_label)
    short = _foreign_cache(tmp_path / "s.h5", {}, x[:5], meta)
    with pytest.raises(NotACacheError, match="datasets of different lengths: /embeddings 5, /ids 14"):
        EmbeddingCache(short)


def test_a_cache_without_checksums_still_validates_and_says_so(tmp_path, arrays):
    emb, meta = arrays
    path = _foreign_cache(tmp_path / "old.h5", recipe(), emb, meta)  # how caches were written before checksums
    with EmbeddingCache(path) as cache:
        cache.validate()
        assert cache.unchecksummed() == ["/embeddings", "/groups/place", "/groups/user", "/ids", "/label", "/split"]
    output = cli("info", "--check", path).output
    assert "its bytes are not checksummed (written before embedcache stored checksums, or by another tool)" in output
