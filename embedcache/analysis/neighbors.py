"""Nearest-neighbour diagnostics of an embedding space (FAISS, imported when used).

What they tell a user:
* kNN label agreement: how often a point's k nearest neighbours share its label, overall and per
  value of any column (label, split, groups) — how well the embedding separates what the task needs,
  and for which subgroups it does not;
* where acquired points sit, for a set of AL runs: how mixed their neighbours' labels are (a high
  other-label fraction = near a class boundary) and how far they are from the nearest point labelled
  at the time, compared with random pool points drawn at the same rounds;
* exact and near duplicates (cosine >= a threshold), within and across splits (train/val leakage);
* the kNN graph as a SciPy CSR matrix (distances as data, rows sorted nearest first), the format
  cleanlab and others read.

The index holds the rows of the chosen splits (default: all) and is built block by block from the
cache: blocks are added, then searched, so the embeddings sit in memory once (inside the index).
Exact search uses IndexFlatIP on L2-normalised vectors (distance "cosine": 1 - cos) or IndexFlatL2
(distance "l2": Euclidean); `ivf_nlist` swaps in IndexIVFFlat for very large caches, and a faiss-gpu
index is used on a CUDA `device` ("auto": when faiss-gpu sees a GPU). Near duplicates are looked for
among each row's `duplicate_neighbors` nearest rows, found in the same search as the graph.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from embedcache.errors import ConfigError
from embedcache.metadata import LABEL, Metadata
from embedcache.outputs import OutputFolder, write_csv
from embedcache.pool import Pool, as_pool, to_host

DISTANCES = ("cosine", "l2")
#: Columns of duplicates.csv (also its header when there are no pairs).
DUPLICATE_COLUMNS = ("id_a", "id_b", "split_a", "split_b", "cosine", "exact")
_BLOCK_BYTES = 1 << 26
_EXAMPLES = 20


@dataclasses.dataclass
class NeighborOptions:
    """How to build the neighbour index and what to look for."""

    k: int = 10
    distance: str = "cosine"
    #: Rows of these splits form the graph (empty: every row).
    splits: tuple[str, ...] = ()
    #: IndexIVFFlat with this many lists (approximate, for very large caches) instead of exact search.
    ivf_nlist: int | None = None
    nprobe: int = 16
    #: Two rows whose cosine similarity is at least this are near-duplicates.
    duplicate_threshold: float = 0.99
    #: How many nearest rows of each row are checked for duplicates.
    duplicate_neighbors: int = 32
    #: "auto" (a faiss-gpu index when faiss-gpu sees a GPU), "cpu", "cuda" or "cuda:N".
    device: str = "auto"
    block_rows: int | None = None
    seed: int = 0

    def validate(self) -> None:
        for name in ("k", "nprobe", "duplicate_neighbors"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"must be a positive integer, got {value!r}", param=name)
        if self.distance not in DISTANCES:
            raise ConfigError(f"unknown distance {self.distance!r}; choose one of {list(DISTANCES)}", param="distance")
        if self.ivf_nlist is not None and self.ivf_nlist < 1:
            raise ConfigError(f"must be a positive number of lists, got {self.ivf_nlist}", param="ivf_nlist")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", str(self.device)):
            raise ConfigError(f"{self.device!r}: expected auto, cpu, cuda or cuda:N", param="device")
        if not -1.0 <= self.duplicate_threshold <= 1.0:
            raise ConfigError(f"a cosine similarity lies in [-1, 1], got {self.duplicate_threshold}",
                              param="duplicate_threshold")


def _faiss():
    try:
        import faiss
    except ImportError:
        raise ConfigError("neighbour diagnostics need FAISS: pip install faiss-cpu (or faiss-gpu-cu12)") from None
    return faiss


@dataclasses.dataclass
class KnnGraph:
    """Each node's k nearest other nodes, nearest first. Nodes are source rows (`rows`)."""

    rows: np.ndarray  # [n] int64 rows of the source, one per node
    neighbors: np.ndarray  # [n, k] int64 node positions, -1 where fewer were found (IVF)
    distances: np.ndarray  # [n, k] float32: 1 - cosine, or Euclidean distance
    distance: str

    def to_csr(self):
        """The graph as a scipy.sparse CSR matrix [n, n] with distances as data, nearest first per row."""
        from scipy.sparse import csr_matrix

        found = self.neighbors >= 0
        indptr = np.concatenate([[0], np.cumsum(found.sum(axis=1))])
        return csr_matrix((self.distances[found], self.neighbors[found], indptr),
                          shape=(len(self.rows), len(self.rows)))


class NeighborIndex:
    """A FAISS index over some rows of a pool (array or cache), with the vectors prepared for its distance."""

    def __init__(self, index, rows: np.ndarray, n_source: int, distance: str, norms: np.ndarray):
        self.index = index
        self.rows = rows
        self.distance = distance
        self.norms = norms  # [n] L2 norms of the raw vectors, for cosines under the l2 distance
        self.position = np.full(n_source, -1, dtype=np.int64)
        self.position[rows] = np.arange(len(rows))

    @classmethod
    def build(cls, pool: Pool, rows: np.ndarray, options: NeighborOptions,
              progress: Callable[[int, int], None] | None = None) -> "NeighborIndex":
        """Add `rows` of the pool block by block (IVF: train on a seeded sample first)."""
        faiss = _faiss()
        options.validate()
        d, n = pool.dim, len(rows)
        metric = faiss.METRIC_INNER_PRODUCT if options.distance == "cosine" else faiss.METRIC_L2
        if options.ivf_nlist is None:
            index = faiss.IndexFlat(d, metric)
        else:
            if options.ivf_nlist > n:
                raise ConfigError(f"{options.ivf_nlist} lists for {n} rows: use at most one list per row",
                                  param="ivf_nlist")
            index = faiss.IndexIVFFlat(faiss.IndexFlat(d, metric), d, options.ivf_nlist, metric)
            sample = np.random.default_rng(options.seed).choice(n, min(n, 256 * options.ivf_nlist), replace=False)
            index.train(prepare(pool.take(np.sort(rows[sample])), options.distance))
            index.nprobe = options.nprobe
        gpu = gpu_index(options.device)
        if gpu is not None:
            resources = faiss.StandardGpuResources()
            index = faiss.index_cpu_to_gpu(resources, gpu, index)
            index.referenced_objects = [resources]
        norms = np.empty(n, dtype=np.float32)
        done = 0
        for _, block in pool.chunks(rows, block_rows(pool.dim, options)):
            vectors = prepare(to_host(block), "l2")  # a float32 copy, normalised below for cosine
            norms[done:done + len(vectors)] = np.linalg.norm(vectors, axis=1)
            if options.distance == "cosine":
                faiss.normalize_L2(vectors)
            index.add(vectors)
            done += len(vectors)
            if progress is not None:
                progress(done, 2 * n)
        return cls(index, rows, pool.n_rows, options.distance, norms)

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(node positions [m, k], distances [m, k]) of the k nearest nodes to raw vectors."""
        found = min(k, len(self.rows))
        scores, ids = self.index.search(prepare(vectors, self.distance), found)
        if self.distance == "cosine":
            distances = np.maximum(1.0 - scores, 0.0)
        else:
            distances = np.sqrt(np.maximum(scores, 0.0))
        distances[ids < 0] = np.inf
        return ids.astype(np.int64), distances.astype(np.float32)

    def cosines(self, vectors: np.ndarray, ids: np.ndarray, distances: np.ndarray) -> np.ndarray:
        """Cosine similarity of each vector to its found nodes (from the search's distances)."""
        if self.distance == "cosine":
            return 1.0 - distances
        a = np.linalg.norm(vectors, axis=1).astype(np.float64)[:, None]
        b = self.norms[np.maximum(ids, 0)].astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            cos = (a * a + b * b - distances.astype(np.float64) ** 2) / (2 * a * b)
        return np.where((a * b > 0) & (ids >= 0), cos, 0.0)

    def neighbors_of(self, rows: np.ndarray, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest nodes of source `rows` (raw `vectors`), each row itself left out."""
        ids, distances = self.search(vectors, k + 1)
        is_self = ids == self.position[rows][:, None]
        order = np.argsort(is_self, axis=1, kind="stable")[:, :k]  # not-self first, nearest first
        return np.take_along_axis(ids, order, axis=1), np.take_along_axis(distances, order, axis=1)


def gpu_index(device: str) -> int | None:
    """The GPU to search on, None for the CPU: "cuda" / "cuda:N" insist (ConfigError without faiss-gpu and
    that GPU), "auto" takes GPU 0 when faiss-gpu sees one."""
    if device == "cpu":
        return None
    faiss = _faiss()
    gpus = faiss.get_num_gpus() if hasattr(faiss, "StandardGpuResources") else 0
    if device == "auto":
        return 0 if gpus else None
    index = int(device.partition(":")[2] or 0)
    if index >= gpus:
        raise ConfigError(f"{device!r} needs faiss-gpu (pip install faiss-gpu-cu12) and that GPU; FAISS sees {gpus} "
                          "GPU(s)", param="device")
    return index


def block_rows(dim: int, options: NeighborOptions) -> int:
    return options.block_rows or max(1, _BLOCK_BYTES // (4 * dim))


def prepare(vectors: Any, distance: str) -> np.ndarray:
    """float32 C-contiguous copies, L2-normalised for cosine (zero vectors stay zero)."""
    vectors = np.array(vectors, dtype=np.float32, order="C", copy=True)
    if distance == "cosine":
        _faiss().normalize_L2(vectors)
    return vectors


def select_rows(meta: Metadata, splits: Sequence[str]) -> np.ndarray:
    """Rows of the given splits (all rows when none are given), ascending."""
    if not splits:
        return np.arange(len(meta), dtype=np.int64)
    return np.flatnonzero(np.isin(meta.split, [meta.split_code(s) for s in splits])).astype(np.int64)


# ---------------------------------------------------------------------- graph and duplicates
@dataclasses.dataclass
class Duplicates:
    """Pairs of nodes (a < b) with cosine >= threshold, and how many nodes had more candidates than checked."""

    pairs: np.ndarray  # [p, 2] node positions
    cosine: np.ndarray  # [p]
    saturated: int


def knn_graph(pool: Pool, index: NeighborIndex, options: NeighborOptions,
              progress: Callable[[int, int], None] | None = None) -> tuple[KnnGraph, Duplicates]:
    """Search every node's neighbours block by block: the kNN graph and the near-duplicate pairs."""
    n = len(index.rows)
    k = min(options.k, n - 1)
    wide = min(max(options.k, options.duplicate_neighbors), n - 1)
    neighbors = np.empty((n, k), dtype=np.int64)
    distances = np.empty((n, k), dtype=np.float32)
    pairs, cosines, saturated = [], [], 0
    done = 0
    for rows, block in pool.chunks(index.rows, block_rows(pool.dim, options)):
        block = np.asarray(to_host(block), dtype=np.float32)
        ids, dist = index.neighbors_of(rows, block, wide)
        neighbors[done:done + len(rows)], distances[done:done + len(rows)] = ids[:, :k], dist[:, :k]
        cos = index.cosines(block, ids, dist)
        close = (cos >= options.duplicate_threshold) & (ids >= 0)
        saturated += int(close.all(axis=1).sum()) if wide else 0
        query, slot = np.nonzero(close)
        a, b = query + done, ids[query, slot]
        pairs.append(np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1))
        cosines.append(cos[query, slot])
        done += len(rows)
        if progress is not None:
            progress(n + done, 2 * n)
    pairs = np.concatenate(pairs) if pairs else np.empty((0, 2), np.int64)
    cosines = np.concatenate(cosines) if cosines else np.empty(0)
    pairs, first = np.unique(pairs, axis=0, return_index=True)  # each pair is found from both ends
    return KnnGraph(index.rows, neighbors, distances, options.distance), Duplicates(pairs, cosines[first], saturated)


def label_agreement(neighbors: np.ndarray, labels: np.ndarray,
                    columns: dict[str, tuple[np.ndarray, Sequence[str]]]) -> dict:
    """Mean fraction of each node's neighbours with its label, overall and per value of each column.

    `neighbors` [n, k] holds node positions (-1: none); `labels` [n] (-1: unknown, such nodes are
    left out and such neighbours do not count); `columns` maps a name to per-node (codes, names).
    """
    known = labels >= 0
    valid = (neighbors >= 0) & known[np.maximum(neighbors, 0)]
    same = (labels[np.maximum(neighbors, 0)] == labels[:, None]) & valid
    counted = known & valid.any(axis=1)
    agreement = np.where(counted, same.sum(axis=1) / np.maximum(valid.sum(axis=1), 1), np.nan)

    def mean(mask):
        mask = mask & counted
        return {"agreement": float(agreement[mask].mean()) if mask.any() else None, "n": int(mask.sum())}

    return {
        "overall": mean(np.ones(len(labels), dtype=bool)),
        "by": {name: {value: mean(codes == code) for code, value in enumerate(names) if (codes == code).any()}
               for name, (codes, names) in columns.items()},
    }


def node_columns(meta: Metadata, rows: np.ndarray) -> dict[str, tuple[np.ndarray, Sequence[str]]]:
    """label, split and every group column, restricted to `rows`."""
    columns = {LABEL: meta.column(LABEL), "split": (meta.split, meta.split_names)}
    columns.update({name: meta.column(name) for name in meta.groups})
    return {name: (codes[rows], names) for name, (codes, names) in columns.items()}


def duplicate_table(pool: Pool, meta: Metadata, rows: np.ndarray, duplicates: Duplicates) -> list[dict]:
    """Duplicate pairs by id, most similar first; `exact` when the stored vectors are identical."""
    a, b = rows[duplicates.pairs[:, 0]], rows[duplicates.pairs[:, 1]]
    involved = np.unique(np.concatenate([a, b]))
    vectors = pool.take(involved) if len(involved) else np.empty((0, pool.dim))
    at = {int(r): i for i, r in enumerate(involved)}
    table = [
        {"id_a": str(meta.ids[ra]), "id_b": str(meta.ids[rb]), "split_a": meta.split_names[meta.split[ra]],
         "split_b": meta.split_names[meta.split[rb]], "cosine": round(float(c), 6),
         "exact": bool(np.array_equal(vectors[at[int(ra)]], vectors[at[int(rb)]]))}
        for ra, rb, c in zip(a, b, duplicates.cosine)
    ]
    table.sort(key=lambda p: (-p["cosine"], p["id_a"], p["id_b"]))
    return table


def duplicate_summary(table: list[dict], duplicates: Duplicates, options: NeighborOptions) -> dict:
    within: dict[str, int] = {}
    across: dict[str, int] = {}
    for pair in table:
        if pair["split_a"] == pair["split_b"]:
            within[pair["split_a"]] = within.get(pair["split_a"], 0) + 1
        else:
            key = "/".join(sorted((pair["split_a"], pair["split_b"])))
            across[key] = across.get(key, 0) + 1
    return {
        "threshold": options.duplicate_threshold,
        "pairs": len(table),
        "exact_pairs": sum(p["exact"] for p in table),
        "within_split": within,
        "across_splits": across,
        "rows_with_more_to_check": duplicates.saturated,
        "examples": table[:_EXAMPLES],
    }


# ---------------------------------------------------------------------- where acquired points sit
def _point_stats(index: NeighborIndex, labels_of_nodes: np.ndarray, labels: np.ndarray, rows: np.ndarray,
                 vectors: np.ndarray, labeled_vectors: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Per point: the fraction of its k neighbours with another label, and the distance to the nearest labelled point."""
    ids, _ = index.neighbors_of(rows, vectors, k)
    neighbor_labels = np.where(ids >= 0, labels_of_nodes[np.maximum(ids, 0)], -1)
    valid = (neighbor_labels >= 0) & (labels[rows] >= 0)[:, None]
    other = np.where(valid.any(axis=1),
                     ((neighbor_labels != labels[rows][:, None]) & valid).sum(axis=1) / np.maximum(valid.sum(1), 1),
                     np.nan)
    faiss = _faiss()
    nearest = faiss.IndexFlat(vectors.shape[1], faiss.METRIC_INNER_PRODUCT if index.distance == "cosine"
                              else faiss.METRIC_L2)
    nearest.add(prepare(labeled_vectors, index.distance))
    score, _ = nearest.search(prepare(vectors, index.distance), 1)
    distance = 1.0 - score[:, 0] if index.distance == "cosine" else np.sqrt(np.maximum(score[:, 0], 0))
    return {"other_label_fraction": other, "nearest_labeled_distance": distance.astype(np.float64)}


def _mean(values: list[np.ndarray]) -> float | None:
    values = np.concatenate(values) if values else np.empty(0)
    values = values[np.isfinite(values)]
    return float(values.mean()) if len(values) else None


def acquisition_neighborhoods(pool: Pool, meta: Metadata, fingerprint: str, index: NeighborIndex, runs: Sequence,
                              k: int, seed: int = 0) -> dict:
    """Where each run's acquired points sit, next to random unlabelled points of the same splits drawn
    at the same rounds (as many as were acquired), per run and averaged per strategy."""
    row_of = {str(i): r for r, i in enumerate(meta.ids)}
    labels_of_nodes = meta.label[index.rows]
    per_run = []
    for run in runs:
        if run.fingerprint != fingerprint:
            raise ConfigError(f"{run.path} was recorded on features {run.fingerprint[:12]}, but the cache holds "
                              f"{fingerprint[:12]}: pass the cache the runs were made with")
        missing = [i for _, i, _ in run.acquired() if i not in row_of][:5]
        missing += [i for i in run.header.seed_ids if i not in row_of][:5 - len(missing)]
        if missing:
            raise ConfigError(f"{run.path}: ids not in the cache, e.g. {missing}")
        acquired = np.array([row_of[i] for _, i, _ in run.acquired()], dtype=np.int64)
        pool_rows = np.flatnonzero(np.isin(meta.split, np.unique(meta.split[acquired]))) if len(acquired) else acquired
        rng = np.random.default_rng([seed, run.seed])
        stats: dict[str, dict[str, list]] = {"acquired": {}, "random": {}}
        for number, record in enumerate(run.rounds):
            chosen = np.array([row_of[i] for i in record.acquired.ids], dtype=np.int64)
            if not len(chosen):
                continue
            labeled = np.array([row_of[i] for i in run.labeled_ids(before_round=number)], dtype=np.int64)
            unlabeled = np.setdiff1d(pool_rows, labeled)
            random = rng.choice(unlabeled, min(len(chosen), len(unlabeled)), replace=False)
            needed = np.unique(np.concatenate([labeled, chosen, random]))
            vectors = pool.take(needed)
            labeled_vectors = vectors[np.searchsorted(needed, labeled)]
            for name, points in (("acquired", chosen), ("random", random)):
                if len(points) and len(labeled):
                    point_vectors = vectors[np.searchsorted(needed, points)]
                    found = _point_stats(index, labels_of_nodes, meta.label, points, point_vectors, labeled_vectors, k)
                    for key, value in found.items():
                        stats[name].setdefault(key, []).append(value)
        per_run.append({
            "path": str(run.path), "strategy": run.strategy, "seed": run.seed, "n_acquired": int(len(acquired)),
            **{name: {key: _mean(values) for key, values in group.items()} for name, group in stats.items()},
        })
    by_strategy: dict[str, dict] = {}
    for strategy in sorted({r["strategy"] for r in per_run}):
        mine = [r for r in per_run if r["strategy"] == strategy]
        by_strategy[strategy] = {"runs": len(mine), "n_acquired": sum(r["n_acquired"] for r in mine)}
        for name in ("acquired", "random"):
            keys = sorted({key for r in mine for key in r[name]})
            by_strategy[strategy][name] = {
                key: _mean([np.array([r[name][key]], dtype=np.float64) for r in mine if r[name].get(key) is not None])
                for key in keys}
    return {"k": k, "runs": per_run, "by_strategy": by_strategy}


# ---------------------------------------------------------------------- all of it, and the files
@dataclasses.dataclass
class NeighborReport:
    summary: dict
    graph: KnnGraph
    duplicates: list[dict]
    ids: np.ndarray  # [n] ids of the graph's nodes
    splits: np.ndarray  # [n] split names of the graph's nodes


def analyze(cache, options: NeighborOptions, runs: Sequence = (),
            progress: Callable[[int, int], None] | None = None) -> NeighborReport:
    """Index the chosen rows of a cache, build the kNN graph, and compute every diagnostic."""
    options.validate()
    meta = cache.metadata()
    pool = as_pool(cache)
    rows = select_rows(meta, options.splits)
    if len(rows) < 2:
        raise ConfigError(f"need at least 2 rows to find neighbours; the selection has {len(rows)}")
    index = NeighborIndex.build(pool, rows, options, progress)
    graph, found = knn_graph(pool, index, options, progress)
    table = duplicate_table(pool, meta, rows, found)
    columns = node_columns(meta, rows)
    summary = {
        "cache": str(cache.path),
        "fingerprint": cache.fingerprint,
        "nodes": int(len(rows)),
        "dim": pool.dim,
        "distance": options.distance,
        "k": int(graph.neighbors.shape[1]),
        "index": ("IndexFlatIP" if options.distance == "cosine" else "IndexFlatL2") if options.ivf_nlist is None
        else f"IndexIVFFlat(nlist={options.ivf_nlist}, nprobe={options.nprobe})",
        "gpu": gpu_index(options.device) is not None,
        "splits": list(options.splits) or list(meta.split_names),
        "label_agreement": label_agreement(graph.neighbors, meta.label[rows], columns),
        "duplicates": duplicate_summary(table, found, options),
    }
    if runs:
        summary["acquisitions"] = acquisition_neighborhoods(pool, meta, cache.fingerprint, index, runs,
                                                            graph.neighbors.shape[1], options.seed)
    split_names = np.asarray(meta.split_names, dtype=object)[meta.split[rows]]
    return NeighborReport(summary, graph, table, meta.ids[rows], split_names)


def _fmt(value, digits: int = 3) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _counts(found: dict) -> str:
    return ", ".join(f"{key} {n}" for key, n in found.items()) or "none"


def render_markdown(summary: dict, *, details: bool = True) -> str:
    """The summary as readable Markdown tables (details: per-value agreement of every column, duplicate examples)."""
    agreement = summary["label_agreement"]
    lines = [
        f"# Neighbours of {summary['cache']}",
        "",
        f"{summary['nodes']} rows ({', '.join(summary['splits'])}), {summary['dim']}-d, {summary['distance']}, "
        f"k = {summary['k']}, {summary['index']}{' on GPU' if summary['gpu'] else ''}",
        "",
        f"kNN label agreement: **{_fmt(agreement['overall']['agreement'])}** "
        f"(fraction of a point's {summary['k']} neighbours with its label, over {agreement['overall']['n']} labelled rows)",
        "",
        "| column | value | rows | agreement |",
        "|---|---|---:|---:|",
    ]
    for column, values in agreement["by"].items():
        shown = values if details else dict(sorted(values.items(), key=lambda kv: -kv[1]["n"])[:6])
        lines += [f"| {column} | {value} | {v['n']} | {_fmt(v['agreement'])} |" for value, v in shown.items()]
    dup = summary["duplicates"]
    lines += ["", f"Near duplicates (cosine >= {dup['threshold']}): {dup['pairs']} pairs, {dup['exact_pairs']} exact; "
              f"within splits: {_counts(dup['within_split'])}; across splits: {_counts(dup['across_splits'])}"]
    if dup["rows_with_more_to_check"]:
        lines.append(f"({dup['rows_with_more_to_check']} rows had only duplicates among the neighbours checked; "
                     "check more neighbours per row to list them all)")
    if details and dup["examples"]:
        lines += ["", "| id a | id b | splits | cosine | exact |", "|---|---|---|---:|---|"]
        lines += [f"| {p['id_a']} | {p['id_b']} | {p['split_a']}/{p['split_b']} | {p['cosine']:.4f} | "
                  f"{'yes' if p['exact'] else ''} |" for p in dup["examples"]]
    if "acquisitions" in summary:
        acq = summary["acquisitions"]
        lines += ["", f"Where acquired points sit (vs random unlabelled pool points at the same rounds; "
                  f"other-label fraction among {acq['k']} neighbours, distance to the nearest labelled point):", "",
                  "| strategy | runs | acquired | other-label acquired | other-label random | "
                  "nearest labelled acquired | nearest labelled random |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for strategy, s in acq["by_strategy"].items():
            lines.append(f"| {strategy} | {s['runs']} | {s['n_acquired']} | "
                         f"{_fmt(s['acquired'].get('other_label_fraction'))} | {_fmt(s['random'].get('other_label_fraction'))} | "
                         f"{_fmt(s['acquired'].get('nearest_labeled_distance'))} | "
                         f"{_fmt(s['random'].get('nearest_labeled_distance'))} |")
    return "\n".join(lines) + "\n"


#: The files `write_report` writes.
REPORT_FILES = ("summary.json", "summary.md", "knn.npz", "knn_nodes.csv", "duplicates.csv")


def neighbors_folder(out_dir: str | Path, overwrite: bool = False) -> OutputFolder:
    """The output folder, checked (see `embedcache.outputs.OutputFolder`)."""
    return OutputFolder(out_dir, "neighbors", overwrite)


def write_report(report: NeighborReport, out_dir: str | Path | OutputFolder, overwrite: bool = False) -> list[Path]:
    """summary.json, summary.md, knn.npz (CSR, scipy.sparse.load_npz), knn_nodes.csv (node, row, id, split)
    and duplicates.csv into `out_dir`: a new or empty folder, or an earlier output of this function,
    replaced only with `overwrite` once the new one is complete. Returns the paths written."""
    from scipy.sparse import save_npz

    folder = out_dir if isinstance(out_dir, OutputFolder) else neighbors_folder(out_dir, overwrite)
    with folder.writing() as out:
        (out / "summary.json").write_text(json.dumps(report.summary, indent=2) + "\n", encoding="utf-8")
        (out / "summary.md").write_text(render_markdown(report.summary), encoding="utf-8")
        save_npz(out / "knn.npz", report.graph.to_csr())
        write_csv(out / "knn_nodes.csv", [{"node": node, "row": row, "id": i, "split": split} for node, (row, i, split)
                                          in enumerate(zip(report.graph.rows.tolist(), report.ids, report.splits))])
        write_csv(out / "duplicates.csv", report.duplicates, columns=DUPLICATE_COLUMNS)
    return [folder.path / name for name in REPORT_FILES]
