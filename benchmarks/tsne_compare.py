"""Which t-SNE for `embedcache tsne`: scikit-learn's Barnes-Hut or openTSNE, on the same points.

Points: 5,000 x 512 float32 with the structure of a backbone's features, a hierarchical Gaussian
mixture (10 classes x 4 sub-clusters in a 32-d subspace, plus isotropic noise in all 512 dims).
Both run with perplexity 30, PCA initialisation, seed 0, their default iterations and the same
number of threads. Time: best wall-clock seconds of the repeats, and the process CPU seconds
(user + system, all threads) of that repeat, which a busy machine disturbs less.
Quality: trustworthiness at k = 10 (scikit-learn's), recall of each point's 10 nearest
neighbours in the 2-D map, and 10-NN class accuracy in the map (how well classes stay apart).

    python benchmarks/tsne_compare.py [--n 5000] [--dim 512] [--threads 2] [--repeats 1]

Needs `pip install openTSNE` (not a dependency of embedcache). Measured on 2 cores (openTSNE
1.0.4, scikit-learn 1.9.1), best of 2 on an otherwise idle machine:

    method                      wall s   CPU s  trust@10  10-NN recall  class 10-NN
    scikit-learn Barnes-Hut       13.7    26.8    0.9944         0.337        1.000
    openTSNE Barnes-Hut           10.1    19.5    0.9944         0.342        1.000
    openTSNE FFT                  17.2    24.9    0.9944         0.337        1.000

With other jobs on the two cores (load 4-5), scikit-learn's OpenMP gradient suffered most:
66.5 s wall (46.9 s CPU) against openTSNE Barnes-Hut's 11.1 s (20.7 s). Both are deterministic
for a fixed seed. Same quality, at most 1.4x on a quiet machine: embedcache uses scikit-learn.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np


def points(n: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    classes, subclusters, latent = 10, 4, 32
    centres = rng.normal(scale=1.5, size=(classes, latent))
    offsets = rng.normal(scale=1.0, size=(classes, subclusters, latent))
    label = rng.integers(classes, size=n)
    sub = rng.integers(subclusters, size=n)
    z = centres[label] + offsets[label, sub] + rng.normal(size=(n, latent))
    mixing = rng.normal(size=(latent, dim)) / np.sqrt(latent)
    x = z @ mixing + rng.normal(scale=0.5, size=(n, dim))
    return x.astype(np.float32), label


def quality(x: np.ndarray, y: np.ndarray, label: np.ndarray, k: int = 10) -> dict:
    from sklearn.manifold import trustworthiness
    from sklearn.neighbors import NearestNeighbors

    high = NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x, return_distance=False)[:, 1:]
    low = NearestNeighbors(n_neighbors=k + 1).fit(y).kneighbors(y, return_distance=False)[:, 1:]
    recall = np.mean([len(np.intersect1d(a, b)) / k for a, b in zip(high, low)])
    votes = label[low]
    knn_accuracy = np.mean([np.bincount(v).argmax() == t for v, t in zip(votes, label)])
    return {"trustworthiness": trustworthiness(x, y, n_neighbors=k), "knn_recall": recall, "class_knn": knn_accuracy}


def sklearn_tsne(x: np.ndarray, threads: int) -> np.ndarray:
    from sklearn.manifold import TSNE

    return TSNE(perplexity=30, init="pca", learning_rate="auto", random_state=0, n_jobs=threads).fit_transform(x)


def open_tsne(x: np.ndarray, threads: int, method: str) -> np.ndarray:
    from openTSNE import TSNE

    return np.asarray(TSNE(perplexity=30, initialization="pca", negative_gradient_method=method, random_state=0,
                           n_jobs=threads).fit(x))


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    x, label = points(args.n, args.dim)
    methods = {"scikit-learn Barnes-Hut": lambda: sklearn_tsne(x, args.threads),
               "openTSNE Barnes-Hut": lambda: open_tsne(x, args.threads, "bh"),
               "openTSNE FFT": lambda: open_tsne(x, args.threads, "fft")}
    print(f"{args.n} x {args.dim} points, {args.threads} threads, best of {args.repeats}")
    print(f"{'method':<26}{'wall s':>8}{'CPU s':>8}{'trust@10':>10}{'10-NN recall':>14}{'class 10-NN':>13}")
    for name, run in methods.items():
        times = []
        for _ in range(args.repeats):
            start, cpu = time.perf_counter(), _cpu_seconds()
            y = run()
            times.append((time.perf_counter() - start, _cpu_seconds() - cpu))
        wall, cpu = min(times)
        q = quality(x, y, label)
        print(f"{name:<26}{wall:>8.1f}{cpu:>8.1f}{q['trustworthiness']:>10.4f}{q['knn_recall']:>14.3f}"
              f"{q['class_knn']:>13.3f}")


if __name__ == "__main__":
    main()
