"""Benchmark the exact kNN graph of `embedcache.analysis.neighbors` (FAISS) against scikit-learn's brute force.

    python benchmarks/knn.py                 # N = 50,000, D = 512, k = 10, cosine and l2
    python benchmarks/knn.py --n 10000       # smaller

Both find every point's k nearest other points exactly; the script checks they agree. Goal: FAISS
at least 5x faster on CPU.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from embedcache.analysis.neighbors import NeighborIndex, NeighborOptions, knn_graph
from embedcache.pool import as_pool

from score import cpu_model, versions  # benchmarks/ is the script's folder
from embedcache.kernels.cpu import default_threads


def faiss_graph(X, k: int, metric: str):
    options = NeighborOptions(k=k, metric=metric, duplicate_neighbors=k)
    pool = as_pool(X)
    graph, _ = knn_graph(pool, NeighborIndex.build(pool, np.arange(len(X)), options), options)
    return graph.neighbors


def sklearn_graph(X, k: int, metric: str):
    from sklearn.neighbors import NearestNeighbors

    nn = NearestNeighbors(n_neighbors=k, algorithm="brute", metric="cosine" if metric == "cosine" else "euclidean")
    return nn.fit(X).kneighbors(return_distance=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=50_000, help="points")
    parser.add_argument("--d", type=int, default=512, help="dimensions")
    parser.add_argument("--k", type=int, default=10, help="neighbours per point")
    args = parser.parse_args()
    print(f"CPU: {cpu_model()}, {default_threads()} cores available; "
          + versions("faiss-cpu", "faiss-gpu-cu12", "scikit-learn", "numpy", "scipy-openblas64"))
    X = np.random.default_rng(0).standard_normal((args.n, args.d), dtype=np.float32)
    print(f"data: N = {args.n:,}, D = {args.d}, float32; k = {args.k}")
    for metric in ("cosine", "l2"):
        start = time.perf_counter()
        ours = faiss_graph(X, args.k, metric)
        fast = time.perf_counter() - start
        start = time.perf_counter()
        theirs = sklearn_graph(X, args.k, metric)
        slow = time.perf_counter() - start
        same = np.mean([len(set(a) & set(b)) / args.k for a, b in zip(ours.tolist(), theirs.tolist())])
        print(f"{metric:>7}: embedcache/FAISS {fast:7.2f} s   scikit-learn brute {slow:7.2f} s   "
              f"speed-up {slow / fast:5.1f}x [goal >= 5]   same neighbours {100 * same:.2f} %", flush=True)


if __name__ == "__main__":
    main()
