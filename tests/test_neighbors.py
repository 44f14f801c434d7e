"""FAISS neighbour diagnostics: exact kNN as scikit-learn's brute force, label agreement by hand,
planted duplicates, the CSR export, where acquired points sit, and the `neighbors` command."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner

from embedcache.analysis.neighbors import (
    NeighborIndex,
    NeighborOptions,
    acquisition_neighborhoods,
    analyze,
    knn_graph,
    label_agreement,
    select_rows,
    write_report,
)
from embedcache.cache import EmbeddingCache
from embedcache.cli import main
from embedcache.errors import ConfigError
from embedcache.pool import as_pool
from embedcache.metadata import Metadata
from embedcache.records import Acquisition, RoundRecord, RunHeader, RunWriter, Source, read_runs
from helpers import make_metadata, recipe

faiss = pytest.importorskip("faiss")


def graph_of(X, **options):
    options = NeighborOptions(**options)
    pool = as_pool(X)
    index = NeighborIndex.build(pool, np.arange(len(X)), options)
    return knn_graph(pool, index, options)


def sklearn_neighbors(X, k, metric):
    from sklearn.neighbors import NearestNeighbors

    nn = NearestNeighbors(n_neighbors=k, algorithm="brute", metric="cosine" if metric == "cosine" else "euclidean")
    return nn.fit(X).kneighbors()


@pytest.mark.parametrize("distance", ["cosine", "l2"])
def test_exact_knn_equals_sklearn_brute_force(distance):
    X = np.random.default_rng(0).standard_normal((500, 24)).astype(np.float32)
    graph, _ = graph_of(X, k=7, distance=distance, block_rows=64)
    distances, indices = sklearn_neighbors(X, 7, distance)
    assert [set(row) for row in graph.neighbors.tolist()] == [set(row) for row in indices.tolist()]
    np.testing.assert_allclose(graph.distances, distances, rtol=1e-4, atol=1e-5)


def test_a_split_of_a_cache_streamed_in_blocks(tmp_path):
    X = np.random.default_rng(1).standard_normal((400, 16)).astype(np.float32)
    meta = make_metadata(400)
    path = EmbeddingCache.write(tmp_path / "c.h5", X, meta, recipe=recipe())
    rows = select_rows(meta, ["val"])
    options = NeighborOptions(k=5, block_rows=37)
    with EmbeddingCache(path) as cache:
        pool = as_pool(cache)
        graph, _ = knn_graph(pool, NeighborIndex.build(pool, rows, options), options)
    _, indices = sklearn_neighbors(X[rows], 5, "cosine")
    assert (graph.rows == rows).all()
    assert [set(r) for r in graph.neighbors.tolist()] == [set(r) for r in indices.tolist()]


def test_ivf_probing_every_list_is_exact():
    X = np.random.default_rng(2).standard_normal((600, 16)).astype(np.float32)
    exact, _ = graph_of(X, k=5)
    ivf, _ = graph_of(X, k=5, ivf_nlist=8, nprobe=8)
    assert [set(r) for r in ivf.neighbors.tolist()] == [set(r) for r in exact.neighbors.tolist()]


def test_label_agreement_by_hand():
    # points on a line; with k = 2:  A(0): B, C -> 1/2   B(1): A, C -> 1/2   C(2.5): B, A -> 0
    #                                 D(10): E, F -> 1     E(11): D, F -> 1    F(13): E, D -> 1
    # G (label unknown) is far away: it is neither counted nor anyone's neighbour.
    X = np.array([[0, 0], [1, 0], [2.5, 0], [10, 0], [11, 0], [13, 0], [100, 0]], dtype=np.float32)
    labels = np.array([0, 0, 1, 1, 1, 1, -1])
    place = np.array([0, 0, 0, 1, 1, 1, 1])
    graph, _ = graph_of(X, k=2, distance="l2")
    result = label_agreement(graph.neighbors, labels, {"label": (labels, ("a", "b")), "place": (place, ("x", "y"))})
    assert result["overall"] == {"agreement": pytest.approx(4 / 6), "n": 6}
    assert result["by"]["label"] == {"a": {"agreement": 0.5, "n": 2}, "b": {"agreement": 0.75, "n": 4}}
    assert result["by"]["place"]["x"] == {"agreement": pytest.approx(1 / 3), "n": 3}
    assert result["by"]["place"]["y"] == {"agreement": 1.0, "n": 3}


def duplicate_cache(tmp_path):
    rng = np.random.default_rng(3)
    X = rng.standard_normal((300, 32)).astype(np.float32)
    splits = ["train"] * 200 + ["val"] * 100
    X[250] = X[5]  # exact, across train/val
    X[20] = X[10] + 1e-3 * rng.standard_normal(32)  # near, within train
    X[270] = 3 * X[260]  # same direction: cosine 1, not identical, within val
    meta = Metadata.from_values([f"r{i}" for i in range(300)], rng.integers(0, 2, 300).tolist(), splits,
                                groups={"place": rng.choice(["land", "water"], 300).tolist()})
    return EmbeddingCache.write(tmp_path / "dup.h5", X, meta, recipe=recipe())


@pytest.mark.parametrize("distance", ["cosine", "l2"])
def test_planted_duplicates_are_found(tmp_path, distance):
    with EmbeddingCache(duplicate_cache(tmp_path)) as cache:
        report = analyze(cache, NeighborOptions(k=5, distance=distance, duplicate_threshold=0.99))
    pairs = {(p["id_a"], p["id_b"]): p for p in report.duplicates}
    assert set(pairs) == {("r5", "r250"), ("r10", "r20"), ("r260", "r270")}
    assert pairs[("r5", "r250")]["exact"] and not pairs[("r10", "r20")]["exact"] and not pairs[("r260", "r270")]["exact"]
    assert (pairs[("r5", "r250")]["split_a"], pairs[("r5", "r250")]["split_b"]) == ("train", "val")
    summary = report.summary["duplicates"]
    assert summary["within_split"] == {"train": 1, "val": 1} and summary["across_splits"] == {"train/val": 1}
    assert summary["exact_pairs"] == 1 and summary["rows_with_more_to_check"] == 0


def test_csr_export_loads_with_scipy(tmp_path):
    from scipy.sparse import load_npz

    with EmbeddingCache(duplicate_cache(tmp_path)) as cache:
        report = analyze(cache, NeighborOptions(k=6, splits=("val",)))
    write_report(report, tmp_path / "out")
    graph = load_npz(tmp_path / "out" / "knn.npz")
    assert graph.shape == (100, 100) and graph.format == "csr"
    assert (np.diff(graph.indptr) == 6).all()
    for i in range(100):
        row = graph.getrow(i)
        assert (np.diff(row.data) >= 0).all() and i not in row.indices  # nearest first, never itself
    np.testing.assert_array_equal(graph.indices.reshape(100, 6), report.graph.neighbors)
    with open(tmp_path / "out" / "knn_nodes.csv") as f:
        nodes = list(csv.DictReader(f))
    assert [n["id"] for n in nodes] == [f"r{i}" for i in range(200, 300)]
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["nodes"] == 100


def boundary_cache(tmp_path):
    """Two classes along the first axis; points near x0 = 0 sit on the boundary."""
    rng = np.random.default_rng(4)
    n = 400
    labels = rng.integers(0, 2, n)
    X = rng.standard_normal((n, 8)).astype(np.float32) * 0.3
    X[:, 0] += np.where(labels == 1, 1.0, -1.0) * rng.uniform(0, 2, n)
    X[:, 1] += 3  # keep cosines meaningful
    meta = Metadata.from_values([f"p{i}" for i in range(n)], labels.tolist(), ["train"] * 300 + ["val"] * 100)
    return EmbeddingCache.write(tmp_path / "b.h5", X, meta, recipe=recipe()), X, labels


def write_run(path, fingerprint, strategy, seed, seed_ids, rounds):
    header = RunHeader(mode="linear", strategy=strategy, seed=seed, source=Source(fingerprint), n_rounds=len(rounds),
                       seed_ids=seed_ids)
    with RunWriter(path, header) as writer:
        for number, ids in enumerate(rounds):
            writer.write_round(RoundRecord(number, 0, acquired=Acquisition(ids, [1.0] * len(ids))))


def test_acquired_points_near_the_boundary_are_reported_so(tmp_path):
    path, X, labels = boundary_cache(tmp_path)
    train = np.arange(300)
    rng = np.random.default_rng(5)
    seed_rows = rng.choice(train, 10, replace=False)
    boundary = [r for r in np.argsort(np.abs(X[:300, 0])) if r not in seed_rows][:20]
    seed_ids = [f"p{r}" for r in seed_rows]
    with EmbeddingCache(path) as cache:
        write_run(tmp_path / "runs" / "margin-seed0.jsonl", cache.fingerprint, "margin", 0, seed_ids,
                  [[f"p{r}" for r in boundary[:10]], [f"p{r}" for r in boundary[10:]], []])
        runs = read_runs([tmp_path / "runs"])
        options = NeighborOptions(k=5)
        pool = as_pool(cache)
        index = NeighborIndex.build(pool, np.arange(400), options)
        result = acquisition_neighborhoods(pool, cache.metadata(), cache.fingerprint, index, runs, k=5)
    run = result["runs"][0]
    assert run["n_acquired"] == 20
    assert run["acquired"]["other_label_fraction"] > run["random"]["other_label_fraction"] + 0.2
    # the distance to the nearest labelled point, by hand, for the 20 acquisitions
    unit = X / np.linalg.norm(X, axis=1, keepdims=True)
    expected = []
    for number, chosen in enumerate([boundary[:10], boundary[10:]]):
        labeled = list(seed_rows) + boundary[:10] * number
        expected += [1 - (unit[labeled] @ unit[r]).max() for r in chosen]
    assert run["acquired"]["nearest_labeled_distance"] == pytest.approx(np.mean(expected), rel=1e-4)
    assert result["by_strategy"]["margin"]["runs"] == 1


def test_runs_of_another_cache_are_refused(tmp_path):
    path, _, _ = boundary_cache(tmp_path)
    write_run(tmp_path / "other.jsonl", "f" * 64, "entropy", 0, ["p1"], [["p2"]])
    with EmbeddingCache(path) as cache, pytest.raises(ConfigError, match="recorded on features ffffffffffff"):
        analyze(cache, NeighborOptions(k=3), read_runs([tmp_path / "other.jsonl"]))
    with EmbeddingCache(path) as cache:
        write_run(tmp_path / "missing.jsonl", cache.fingerprint, "entropy", 0, ["p1"], [["nope"]])
        with pytest.raises(ConfigError, match="ids not in the cache, e.g. \\['nope'\\]"):
            analyze(cache, NeighborOptions(k=3), read_runs([tmp_path / "missing.jsonl"]))


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(k=0), "k: must be a positive integer"),
        (dict(distance="manhattan"), "distance: unknown distance 'manhattan'"),
        (dict(ivf_nlist=1000), "use at most one list per row"),
        (dict(splits=("test",)), "unknown split 'test'"),
        (dict(duplicate_threshold=2.0), r"duplicate_threshold: a cosine similarity lies in \[-1, 1\]"),
        (dict(device="tpu"), "device: 'tpu': expected auto, cpu, cuda or cuda:N"),
    ],
)
def test_bad_options_are_clear_errors(tmp_path, options, message):
    path, _, _ = boundary_cache(tmp_path)
    with EmbeddingCache(path) as cache, pytest.raises(ConfigError, match=message):
        analyze(cache, NeighborOptions(**options))


def test_neighbors_command(tmp_path):
    path, X, _ = boundary_cache(tmp_path)
    with EmbeddingCache(path) as cache:
        write_run(tmp_path / "runs" / "entropy-seed1.jsonl", cache.fingerprint, "entropy", 1, ["p0", "p1"],
                  [["p2", "p3"], []])
    out = tmp_path / "report"
    result = CliRunner().invoke(main, ["neighbors", str(path), "--runs", str(tmp_path / "runs"), "--k", "4",
                                       "--out", str(out), "--split", "train", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "kNN label agreement" in result.output and "| entropy | 1 | 2 |" in result.output
    assert {p.name for p in out.iterdir()} == {"summary.json", "summary.md", "knn.npz", "knn_nodes.csv",
                                              "duplicates.csv", ".embedcache-output.json"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["nodes"] == 300 and summary["k"] == 4 and summary["splits"] == ["train"]
    bad = CliRunner().invoke(main, ["neighbors", str(path), "--out", str(tmp_path / "other"), "--ivf", "0"])
    assert bad.exit_code == 2 and "Error: --ivf: must be a positive number of lists, got 0" in bad.output
    again = CliRunner().invoke(main, ["neighbors", str(path), "--out", str(out), "--quiet"])
    assert again.exit_code == 2 and "holds an earlier `neighbors` output; pass --overwrite" in again.output
    assert json.loads((out / "summary.json").read_text()) == summary
    replaced = CliRunner().invoke(main, ["neighbors", str(path), "--out", str(out), "--quiet", "--overwrite",
                                         "--distance", "l2"])
    assert replaced.exit_code == 0 and json.loads((out / "summary.json").read_text())["distance"] == "l2"


@pytest.mark.skipif(hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0, reason="a GPU is present")
def test_gpu_search_without_faiss_gpu_says_why(tmp_path):
    with pytest.raises(ConfigError, match="'cuda' needs faiss-gpu"):
        graph_of(np.eye(4, dtype=np.float32), k=1, device="cuda")
    assert graph_of(np.eye(4, dtype=np.float32), k=1, device="auto")[0].neighbors.shape == (4, 1)


@pytest.mark.gpu
@pytest.mark.skipif(not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() < 1,
                    reason="needs faiss-gpu and a CUDA GPU")
def test_faiss_gpu_equals_cpu():
    X = np.random.default_rng(6).standard_normal((2000, 64)).astype(np.float32)
    for distance in ("cosine", "l2"):
        cpu, _ = graph_of(X, k=8, distance=distance, device="cpu")
        gpu, _ = graph_of(X, k=8, distance=distance, device="cuda")
        assert [set(r) for r in gpu.neighbors.tolist()] == [set(r) for r in cpu.neighbors.tolist()]
        np.testing.assert_allclose(gpu.distances, cpu.distances, rtol=1e-3, atol=1e-4)
