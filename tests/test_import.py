"""`embedcache import`: your own vectors (.npy / .npz / Parquet) + a metadata table → a cache that `al` and
`report` use like an extracted one; every bad input is a one-line error and nothing is written."""

from __future__ import annotations

import csv
import json
import tracemalloc
import zipfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from embedcache.cache import EmbeddingCache
from embedcache.cli import main
from embedcache.datasets.synthetic import ambiguity_embeddings
from embedcache.importer import ImportOptions, import_embeddings, open_vectors
from embedcache.records import read_runs

MODEL = "synthetic ambiguity, separable"


@pytest.fixture(scope="module")
def data():
    """Separable vectors with a spurious `place` group (the paper's setting in miniature)."""
    x, meta = ambiguity_embeddings(n_train=400, n_val=200, dim=16, seed=3, separable=True)
    rows = [{"id": meta.ids[i], "label": meta.label_names[meta.label[i]], "split": meta.split_names[meta.split[i]],
             "place": meta.group_names["place"][meta.groups["place"][i]]} for i in range(len(meta))]
    return x, rows


def write_csv(path, rows, columns=None):
    columns = columns or list(rows[0])
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_parquet_vectors(path, x, ids=None, row_group_size=None, list_type="fixed", **columns):
    if list_type == "fixed":
        vectors = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), x.shape[1])
    elif list_type == "tensor":
        storage = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), x.shape[1])
        vectors = pa.ExtensionArray.from_storage(pa.fixed_shape_tensor(pa.from_numpy_dtype(x.dtype), [x.shape[1]]),
                                                 storage)
    else:
        vectors = pa.array(list(x))
    table = {"embedding": vectors, **({"id": pa.array(ids)} if ids is not None else {}), **columns}
    pq.write_table(pa.table(table), path, row_group_size=row_group_size)
    return path


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def run_import(embeddings, metadata, out, *extra):
    result = cli("import", "--embeddings", embeddings, "--metadata", metadata, "--model", MODEL, "--out", out,
                 "--quiet", *extra)
    assert result.exit_code == 0, result.output
    return result


def import_error(tmp_path, embeddings, metadata, *extra, code: int = 1) -> str:
    """The one-line error of a refused import: exit status 1 for bad data, 2 (`code`) for a usage error."""
    out = tmp_path / "refused.h5"
    result = cli("import", "--embeddings", embeddings, "--metadata", metadata, "--model", MODEL, "--out", out,
                 "--quiet", *extra)
    assert result.exit_code == code and result.output.startswith("Error: "), result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1, result.output
    assert not out.exists()
    return result.output


# ---------------------------------------------------------------------------------------------- end to end


def test_npy_npz_and_parquet_imports_run_al_and_report_identically(data, tmp_path):
    x, rows = data
    ids = [r["id"] for r in rows]
    shuffled = [rows[i] for i in np.random.default_rng(0).permutation(len(rows))]
    inputs = {
        # .npy, metadata CSV in the same row order
        "npy": (np.save(tmp_path / "v.npy", x) or tmp_path / "v.npy", write_csv(tmp_path / "m.csv", rows), []),
        # .npz (compressed) with an id array; the metadata CSV in another order: matched by id
        "npz": (tmp_path / "v.npz", write_csv(tmp_path / "shuffled.csv", shuffled), ["--vectors", "vecs"]),
        # Parquet vectors with an id column; Parquet metadata, shuffled, label as names, place as a group
        "parquet": (write_parquet_vectors(tmp_path / "v.parquet", x, ids=ids, row_group_size=128),
                    tmp_path / "m.parquet", []),
    }
    np.savez_compressed(tmp_path / "v.npz", vecs=x, id=np.array(ids))
    pq.write_table(pa.Table.from_pylist(shuffled), tmp_path / "m.parquet")
    fingerprints, manifests, records = set(), set(), []
    for name, (embeddings, metadata, extra) in inputs.items():
        out = tmp_path / f"{name}.h5"
        result = run_import(embeddings, metadata, out, *extra)
        assert "600 rows x 16 (float32)" in result.output
        with EmbeddingCache(out) as cache:
            cache.validate()
            meta = cache.metadata()
            assert meta.ids.tolist() == ids and meta.label_names == ("landbird", "waterbird")
            assert meta.group_names == {"place": ("land", "water")} and meta.split_names == ("train", "val")
            assert np.array_equal(cache.embeddings(), x)
            assert cache.recipe["spec"] == MODEL and cache.recipe["dtype"] == "float32"
            assert cache.dataset["options"]["format"] == name and cache.dataset["name"] == "import"
            fingerprints.add(cache.fingerprint)
            manifests.add(cache.dataset["manifest_sha256"])
        runs = tmp_path / f"runs-{name}"
        al = cli("al", "--cache", out, "--strategy", "least-confidence", "--strategy", "random", "--seeds", "0-1",
                 "--seed-size", "20", "--per-round", "5", "--budget", "20", "--eval-split", "val", "--group",
                 "label*place", "--out", runs, "--quiet")
        assert al.exit_code == 0 and "4 of 4 runs complete" in al.output, al.output
        report = cli("report", "--runs", runs, "--out", tmp_path / f"report-{name}", "--group", "label*place",
                     "--quiet")
        assert report.exit_code == 0, report.output
        summary = json.loads((tmp_path / f"report-{name}" / "summary.json").read_text())
        assert {c["strategy"] for c in summary["curves"]} == {"least-confidence", "random"}
        assert all(c["backbone"].startswith(MODEL) for c in summary["curves"])
        records.append([[r.metrics for r in run.rounds] for run in read_runs([runs])])
    # the same vectors and examples, whichever file they came from: one fingerprint, the same runs
    assert len(fingerprints) == 1 and len(manifests) == 1
    assert records[0] == records[1] == records[2]


def test_the_fingerprint_follows_the_content_and_dtype_only(data, tmp_path):
    x, rows = data
    metadata = write_csv(tmp_path / "m.csv", rows)

    def fingerprint(vectors, name, *extra):
        np.save(tmp_path / f"{name}.npy", vectors)
        run_import(tmp_path / f"{name}.npy", metadata, tmp_path / f"{name}.h5", *extra)
        with EmbeddingCache(tmp_path / f"{name}.h5") as cache:
            return cache.fingerprint, cache.recipe["weights"]["sha256"]

    same = fingerprint(x, "a")
    assert fingerprint(x, "renamed") == same  # another file name: the same features
    changed = x.copy()
    changed[123, 4] = np.nextafter(changed[123, 4], np.float32(np.inf))
    assert fingerprint(changed, "one-ulp")[1] != same[1]
    assert fingerprint(x, "half", "--dtype", "float16")[0] != same[0]  # stored otherwise: other features
    assert fingerprint(x.astype(np.float64), "f64")[1] != same[1]


def test_unlabelled_data_custom_splits_and_chosen_groups(data, tmp_path):
    x, rows = data
    np.save(tmp_path / "v.npy", x)
    pool = [{"image_id": r["id"], "part": "pool" if r["split"] == "train" else "holdout", "place": r["place"],
             "caption": f"photo {i}"} for i, r in enumerate(rows)]
    metadata = write_csv(tmp_path / "pool.csv", pool)
    assert "no 'label' column" in import_error(tmp_path, tmp_path / "v.npy", metadata, "--id-column", "image_id")
    run_import(tmp_path / "v.npy", metadata, tmp_path / "pool.h5", "--id-column", "image_id", "--unlabelled",
               "--split-column", "part", "--splits", "pool,holdout", "--group", "place", "--dtype", "float16")
    with EmbeddingCache(tmp_path / "pool.h5") as cache:
        meta = cache.metadata()
        assert (meta.label == -1).all() and meta.split_names == ("holdout", "pool")
        assert list(meta.groups) == ["place"] and str(cache.dtype) == "float16"


def test_parquet_list_and_tensor_columns_and_a_fortran_npy(data, tmp_path):
    x, rows = data
    metadata = write_csv(tmp_path / "m.csv", rows)
    for list_type in ("list", "tensor"):
        path = write_parquet_vectors(tmp_path / f"{list_type}.parquet", x, list_type=list_type)
        run_import(path, metadata, tmp_path / f"{list_type}.h5")
        with EmbeddingCache(tmp_path / f"{list_type}.h5") as cache:
            assert np.array_equal(cache.embeddings(), x)
    np.save(tmp_path / "f.npy", np.asfortranarray(x))
    np.save(tmp_path / "big-endian.npy", x.astype(">f4"))
    for name in ("f", "big-endian"):
        run_import(tmp_path / f"{name}.npy", metadata, tmp_path / f"{name}.h5")
        with EmbeddingCache(tmp_path / f"{name}.h5") as cache:
            assert np.array_equal(cache.embeddings(), x)


# ---------------------------------------------------------------------------------------------- bad input


def test_bad_vectors_are_one_line_errors_naming_the_culprit(data, tmp_path):
    x, rows = data
    metadata = write_csv(tmp_path / "m.csv", rows)
    cases = {
        "short.npy": (x[:-1], "short.npy holds 599 vectors but .*m.csv has 600 rows"),
        "flat.npy": (x.ravel(), r"has shape \(9600,\): embeddings must be a 2-D array \[rows, dim\]"),
        "cube.npy": (x.reshape(600, 4, 4), r"has shape \(600, 4, 4\)"),
        "ints.npy": (np.ones((600, 16), np.int8), "holds int8 values; embeddings must be floating point"),
    }
    bad = x.copy()
    bad[5, 3], bad[77, 0] = np.nan, -np.inf
    cases["nan.npy"] = (bad, "2 row\\(s\\) \\(ids 's000005', 's000077'\\) hold NaN or infinite values")
    for name, (array, message) in cases.items():
        np.save(tmp_path / name, array)
        output = import_error(tmp_path, tmp_path / name, metadata)
        assert __import__("re").search(message, output), output
    huge = x.copy()
    huge[9, 0] = 1e6
    np.save(tmp_path / "huge.npy", huge)
    assert "(ids 's000009') hold values beyond the float16 range" in import_error(
        tmp_path, tmp_path / "huge.npy", metadata, "--dtype", "float16")
    np.savez(tmp_path / "two.npz", a=x, b=x)
    assert "holds the arrays ['a', 'b']; name the one with the vectors with --vectors" in import_error(
        tmp_path, tmp_path / "two.npz", metadata, code=2)
    np.savez(tmp_path / "fortran.npz", v=np.asfortranarray(x))
    assert "Fortran (column-major) order" in import_error(tmp_path, tmp_path / "fortran.npz", metadata)
    ragged = list(x)
    ragged[42] = ragged[42][:8]
    pq.write_table(pa.table({"embedding": pa.array(ragged)}), tmp_path / "ragged.parquet")
    assert "1 row(s) (ids 's000042') have a vector whose length is not 16" in import_error(
        tmp_path, tmp_path / "ragged.parquet", metadata)
    pq.write_table(pa.table({"embedding": pa.array([[1, 2]] * 600)}), tmp_path / "int.parquet")
    assert "holds int64 values; embeddings must be floating point" in import_error(
        tmp_path, tmp_path / "int.parquet", metadata)
    (tmp_path / "text.npy").write_text("not numpy")
    assert "not a readable .npy array" in import_error(tmp_path, tmp_path / "text.npy", metadata)


def test_bad_metadata_and_ids_are_one_line_errors_naming_rows(data, tmp_path):
    x, rows = data
    np.save(tmp_path / "v.npy", x)
    vectors = tmp_path / "v.npy"
    twice = [dict(r) for r in rows]
    twice[300]["id"] = twice[2]["id"]
    assert "m.csv, line 302: duplicate id 's000002', first at" in import_error(
        tmp_path, vectors, write_csv(tmp_path / "m.csv", twice))
    stray = [dict(r) for r in rows]
    stray[7]["label"] = "1.5"
    message = import_error(tmp_path, vectors, write_csv(tmp_path / "m.csv", [{**r, "label": 0} for r in rows[:7]]
                                                        + stray[7:8] + [{**r, "label": 1} for r in rows[8:]]))
    assert "m.csv, line 9 (id 's000007'): label '1.5' is not a whole-number class index" in message
    typo = [dict(r) for r in rows]
    typo[3]["split"] = "trian"
    assert "line 5 (id 's000003'): split 'trian' is not one of" in import_error(
        tmp_path, vectors, write_csv(tmp_path / "m.csv", typo))
    assert "no id column 'id'" in import_error(tmp_path, vectors, write_csv(tmp_path / "m.csv", rows,
                                                                             ["label", "split"]))
    assert "--group: colour: not a group column" in import_error(tmp_path, vectors, write_csv(tmp_path / "m.csv", rows),
                                                                 "--group", "colour", code=2)
    ids = np.array([r["id"] for r in rows])
    ids[10] = "stranger"
    np.savez(tmp_path / "ids.npz", v=x, id=ids)
    assert "1 id(s) with no row in" in import_error(tmp_path, tmp_path / "ids.npz",
                                                      write_csv(tmp_path / "m.csv", rows), "--vectors", "v")
    ids[10] = ids[11]
    np.savez(tmp_path / "ids.npz", v=x, id=ids)
    assert "duplicate id 's000011'" in import_error(tmp_path, tmp_path / "ids.npz", tmp_path / "m.csv")
    np.savez(tmp_path / "fewer.npz", v=x[:-1], id=np.array([r["id"] for r in rows[:-1]]))
    assert "m.csv, line 601 (id 's000599'): no vector with this id in fewer.npz" in import_error(
        tmp_path, tmp_path / "fewer.npz", tmp_path / "m.csv")


def test_an_existing_out_is_never_replaced_without_overwrite(data, tmp_path):
    x, rows = data
    np.save(tmp_path / "v.npy", x)
    metadata = write_csv(tmp_path / "m.csv", rows)
    out = tmp_path / "c.h5"
    out.write_bytes(b"precious")
    result = cli("import", "--embeddings", tmp_path / "v.npy", "--metadata", metadata, "--model", MODEL, "--out", out)
    assert result.exit_code == 1 and "already exists; pass --overwrite" in result.output, result.output
    assert out.read_bytes() == b"precious"
    run_import(tmp_path / "v.npy", metadata, out, "--overwrite")
    with EmbeddingCache(out) as cache:
        assert cache.complete and cache.n_rows == 600
    result = cli("import", "--embeddings", tmp_path / "v.npy", "--metadata", metadata, "--model", MODEL, "--out",
                 metadata, "--overwrite")
    assert result.exit_code == 2 and "Error: --out: " in result.output and "is the input file" in result.output


# ---------------------------------------------------------------------------------------------- bounded memory


def test_the_streaming_readers_never_hold_the_whole_array(tmp_path):
    """20 MB of vectors imported in 256 KiB blocks: Python-side allocations (numpy's are traced) peak far
    below the array, for .npy, stored and compressed .npz; Parquet batches stay one block long and Arrow's
    own allocations stay small even with a single row group."""
    rows, dim = 2000, 2560
    x = np.random.default_rng(0).standard_normal((rows, dim), dtype=np.float32)
    ids = [f"r{i}" for i in range(rows)]
    write_csv(tmp_path / "m.csv", [{"id": i, "label": n % 3} for n, i in enumerate(ids)])
    np.save(tmp_path / "v.npy", x)
    np.savez(tmp_path / "stored.npz", v=x)
    np.savez_compressed(tmp_path / "deflated.npz", v=x)
    write_parquet_vectors(tmp_path / "v.parquet", np.concatenate([x, x]), row_group_size=2 * rows)  # 40 MB
    del x
    options = ImportOptions(model=MODEL, block_bytes=1 << 18)
    for name in ("v.npy", "stored.npz", "deflated.npz"):
        tracemalloc.start()
        try:
            import_embeddings(tmp_path / name, tmp_path / "m.csv", tmp_path / f"{name}.h5", options)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < rows * dim * 4 / 5, f"{name}: peak {peak / 2**20:.1f} MiB"
    assert zipfile.ZipFile(tmp_path / "deflated.npz").infolist()[0].compress_type == zipfile.ZIP_DEFLATED
    parquet = open_vectors(tmp_path / "v.parquet")
    block_rows, seen, arrow_peak = 64, 0, 0
    for block in parquet.blocks(block_rows):
        assert len(block) <= block_rows
        seen += len(block)
        arrow_peak = max(arrow_peak, pa.total_allocated_bytes())
    assert seen == 2 * rows and arrow_peak < 2 * rows * dim * 4 / 5


def test_progress_reports_both_passes(data, tmp_path):
    x, rows = data
    np.save(tmp_path / "v.npy", x)
    calls = []
    result = import_embeddings(tmp_path / "v.npy", write_csv(tmp_path / "m.csv", rows), tmp_path / "c.h5",
                               ImportOptions(model=MODEL, block_bytes=4096), progress=lambda *a: calls.append(a))
    assert result.rows == 600 and result.aligned_by == "order"
    assert [c for c in calls if c[1] in (0, 600)] == [("check", 0, 600), ("check", 600, 600), ("write", 0, 600),
                                                       ("write", 600, 600)]
    assert len(calls) > 10  # one per block
