"""One "which examples" fingerprint (`Metadata.fingerprint`) behind a cache's `dataset.manifest_sha256` and
a run header's `data`, whichever way the examples came in: a dataset adapter, `embedcache import`, or
`EmbeddingCache.write`."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from helpers import make_metadata, recipe

from embedcache.cache import EmbeddingCache
from embedcache.datasets import create_dataset
from embedcache.datasets.synthetic import write_amazon, write_image_manifest, write_text_jsonl, write_waterbirds
from embedcache.experiments import LinearExperiment
from embedcache.importer import ImportOptions, import_embeddings
from embedcache.metadata import Metadata
from embedcache.recipe import vectors_digest

#: What DatasetAdapter.describe() gave for these synthetic datasets before the definitions were merged
#: (embedcache c98f66c): the adapters' values, and so the identity of caches and records of real
#: datasets, are unchanged.
DESCRIBED_BEFORE = {
    "manifest": "0dba3facdba0d078ecf1d69f5cf1fa6cceb72ae17e2df88ba44fa7d6c6b5da7e",
    "jsonl": "cd288502d132f27a2b3cfce1532aed1fed62e0097629b12bfb2800d52f320cf7",
    "waterbirds": "a00db62a831949f4ee3840e4012c077b2903f06093ea66e7634681904e22b7dd",
    "amazon": "9ee3d8957e35ca7e905cee8b3aaabc8c7f1e9608d49cc3ef5d2682931adc68c1",
}


def test_dataset_adapters_keep_their_manifest_hash(tmp_path):
    roots = {"manifest": write_image_manifest(tmp_path / "manifest", n=48, size=32),
             "jsonl": write_text_jsonl(tmp_path / "texts.jsonl"), "waterbirds": write_waterbirds(tmp_path / "wb"),
             "amazon": write_amazon(tmp_path / "amazon")}
    for name, root in roots.items():
        data = create_dataset(name, root)
        described = data.describe()["manifest_sha256"]
        assert described == DESCRIBED_BEFORE[name] == data.metadata.fingerprint(data.inputs), name


def test_the_fingerprint_covers_the_examples_not_their_names_or_layout():
    meta = make_metadata(30)
    same = Metadata(meta.ids.copy(), np.asfortranarray(meta.label.copy()), meta.split.copy(), meta.split_names,
                    dict(reversed(meta.groups.items())), meta.group_names, ("x", "y", "z"))
    assert same.fingerprint() == meta.fingerprint()  # label names and memory layout do not matter
    relabelled = Metadata(meta.ids, (meta.label + 1) % 3, meta.split, meta.split_names, meta.groups,
                          meta.group_names, meta.label_names)
    paths = [f"images/{i}.png" for i in meta.ids]
    assert len({meta.fingerprint(), relabelled.fingerprint(), meta.fingerprint(paths),
                meta.fingerprint(paths[::-1]), meta.fingerprint("a" * 64)}) == 5


def test_the_same_vectors_and_examples_have_one_data_fingerprint_by_every_route(tmp_path):
    """EmbeddingCache.write and `embedcache import` of the same vectors and metadata agree, and the
    run header of a run on either carries that value as its `data`."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 6)).astype(np.float32)
    rows = [{"id": f"r{i:02d}", "label": ["cat", "dog"][i % 2], "split": "train" if i < 30 else "val",
             "place": ["land", "water"][(i // 2) % 2]} for i in range(40)]
    with open(tmp_path / "meta.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    np.save(tmp_path / "x.npy", x)
    imported = import_embeddings(tmp_path / "x.npy", tmp_path / "meta.csv", tmp_path / "imported.h5",
                                 ImportOptions(model="test vectors"))
    with EmbeddingCache(tmp_path / "imported.h5") as cache:
        meta, by_import = cache.metadata(), cache.dataset["manifest_sha256"]
    written = EmbeddingCache.write(tmp_path / "written.h5", x, meta, recipe=recipe())
    with EmbeddingCache(written) as cache:
        by_write = cache.dataset["manifest_sha256"]
    content = vectors_digest(x.dtype, *x.shape)
    content.update(x.tobytes())
    assert content.hexdigest() == imported.content_sha256
    assert by_import == by_write == meta.fingerprint(imported.content_sha256)
    for path in (tmp_path / "imported.h5", written):
        assert LinearExperiment(path).open(learners=False).source.data == by_write
    other = EmbeddingCache.write(tmp_path / "other.h5", x[::-1].copy(), meta, recipe=recipe())
    with EmbeddingCache(other) as cache:  # other vectors under the same recipe: other examples, never mixed
        assert cache.dataset["manifest_sha256"] != by_write


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_a_cache_written_without_a_dataset_fingerprints_its_vectors(tmp_path, dtype):
    meta = make_metadata(12)
    x = np.arange(12 * 3, dtype=dtype).reshape(12, 3)
    path = EmbeddingCache.write(tmp_path / "c.h5", x, meta, recipe=recipe(dtype=dtype))
    content = vectors_digest(x.dtype, 12, 3)
    content.update(x.tobytes())
    with EmbeddingCache(path) as cache:
        assert cache.dataset == {"name": "in-memory", "rows": 12,
                                 "manifest_sha256": meta.fingerprint(content.hexdigest())}
