"""Benchmark the fused scorer against reading the pool once and against the naive way.

    python benchmarks/score.py                      # CPU: N = 2,000,000, D = 512, float32
    python benchmarks/score.py --n 200000 --d 256   # smaller
    python benchmarks/score.py --gpu-n 10000000     # GPU part (N = 10M, D = 2048, float16) when CuPy sees a GPU

For each number of classes C, in one process and on the same array: the time to read the pool once
(a sum over X), embedcache's `score_topk`, and the naive baseline (softmax(X @ W + b), the formula,
a full argsort). Each is the best of --repeat runs. Goals: scorer / read-once <= 1.5 on CPU
(<= 1.25 on GPU), naive / scorer >= 3.
"""

from __future__ import annotations

import argparse
import platform
import time
from importlib import metadata

import numpy as np

from embedcache.scoring import PROBABILITY_SCORES
from embedcache.kernels import score_topk
from embedcache.kernels.cpu import default_threads
from embedcache.pool import cuda_status


def cpu_model() -> str:
    """The CPU's name (with family/model numbers, which a VM's masked name may need)."""
    info = {}
    try:
        for line in open("/proc/cpuinfo"):
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    except OSError:
        return platform.processor() or platform.machine()
    avx512 = ", AVX-512" if "avx512f" in info.get("flags", "").split() else ""
    return f"{info.get('model name', platform.machine())} (family {info.get('cpu family')}, model {info.get('model')}{avx512})"


def versions(*names: str) -> str:
    found = []
    for name in names:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pass
    return ", ".join(found)


def seconds(fn, sync=lambda: None) -> tuple[float, float]:
    """(wall-clock, CPU) seconds of one call; CPU time counts every thread of this process."""
    sync()
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    sync()
    return time.perf_counter() - start, time.process_time() - cpu


def read_and_score(repeat: int, read, score, sync=lambda: None) -> tuple[tuple, tuple]:
    """Best (wall, CPU) times of `read` and `score`, alternated so that other load hits both alike."""
    times = [(seconds(read, sync), seconds(score, sync)) for _ in range(repeat)]
    return tuple(tuple(min(t[which][kind] for t in times) for kind in (0, 1)) for which in (0, 1))


def naive(xp, X, W, b, strategy: str, k: int):
    """What one would write first: all probabilities in memory, then a full sort."""
    if X.dtype == xp.float16:  # one fp16 GEMM; upcasting a 40 GB pool first would not fit
        logits = (X @ W.astype(xp.float16)).astype(xp.float32) + b
    else:
        logits = X @ W + b
    if strategy == "max-logit":
        scores = -logits.max(axis=1)
    else:
        e = xp.exp(logits - logits.max(axis=1, keepdims=True))
        proba = e / e.sum(axis=1, keepdims=True)
        scores = PROBABILITY_SCORES[strategy](proba) if xp is np else _gpu_formula(xp, strategy, proba)
    return xp.argsort(-scores)[:k]


def _gpu_formula(xp, strategy, proba):
    if strategy == "least-confidence":
        return 1 - proba.max(axis=1)
    if strategy == "entropy":
        return -(proba * xp.log(xp.maximum(proba, 1e-30))).sum(axis=1)
    top2 = xp.sort(proba, axis=1)[:, -2:]
    return -(top2[:, 1] - top2[:, 0])


def report(label: str, nbytes: int, read: tuple, scorer: tuple, slow: float, goal: float) -> None:
    gb = nbytes / 1e9
    print(f"{label:>9}  read-once {read[0]:6.3f} s ({gb / read[0]:5.1f} GB/s)  scorer {scorer[0]:6.3f} s "
          f"({gb / scorer[0]:5.1f} GB/s, {scorer[1]:6.3f} CPU-s)  naive {slow:6.3f} s   scorer/read "
          f"{scorer[0] / read[0]:5.2f} [goal <= {goal}]  naive/scorer {slow / scorer[0]:5.1f} [goal >= 3]", flush=True)


def run_cpu(args) -> None:
    print(f"CPU: {cpu_model()}, {default_threads()} cores available; "
          + versions("numpy", "scipy-openblas64", "threadpoolctl", "h5py"))
    rng = np.random.default_rng(0)
    X = np.empty((args.n, args.d), dtype=np.float32)
    for start in range(0, args.n, 100_000):
        X[start:start + 100_000] = rng.standard_normal((min(100_000, args.n - start), args.d), dtype=np.float32)
    print(f"pool: N = {args.n:,}, D = {args.d}, float32, {X.nbytes / 1e9:.2f} GB; k = {args.k}, "
          f"strategy {args.strategy}, best of {args.repeat}")
    for c in args.classes:
        W = (3 * rng.standard_normal((args.d, c)) / np.sqrt(args.d)).astype(np.float32)
        b = rng.standard_normal(c).astype(np.float32)
        read, scorer = read_and_score(args.repeat, lambda: X.sum(), lambda: score_topk(X, W, b, args.strategy, args.k))
        slow = min(seconds(lambda: naive(np, X, W, b, args.strategy, args.k))[0] for _ in range(args.naive_repeat))
        report(f"C = {c}", X.nbytes, read, scorer, slow, 1.5)


def run_gpu(args, cupy) -> None:
    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    print(f"GPU: {name}, {props['totalGlobalMem'] / 2**30:.0f} GiB; " + versions("cupy-cuda12x", "cupy"))
    X = cupy.empty((args.gpu_n, args.gpu_d), dtype=cupy.float16)
    generator = cupy.random.default_rng(0)
    for start in range(0, args.gpu_n, 1_000_000):
        stop = min(start + 1_000_000, args.gpu_n)
        X[start:stop] = generator.standard_normal((stop - start, args.gpu_d), dtype=cupy.float32)
    print(f"pool: N = {args.gpu_n:,}, D = {args.gpu_d}, float16, {X.nbytes / 1e9:.2f} GB on the device")
    sync = cupy.cuda.Device().synchronize
    rng = np.random.default_rng(0)
    for c in args.classes:
        W = (3 * rng.standard_normal((args.gpu_d, c)) / np.sqrt(args.gpu_d)).astype(np.float32)
        b = rng.standard_normal(c).astype(np.float32)
        read, scorer = read_and_score(args.repeat, lambda: X.sum(dtype=cupy.float32),
                                      lambda: score_topk(X, W, b, args.strategy, args.k), sync)
        Wd, bd = cupy.asarray(W), cupy.asarray(b)
        slow = min(seconds(lambda: naive(cupy, X, Wd, bd, args.strategy, args.k), sync)[0]
                   for _ in range(args.naive_repeat))
        report(f"C = {c}", X.nbytes, read, scorer, slow, 1.25)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2_000_000, help="CPU pool rows")
    parser.add_argument("--d", type=int, default=512, help="CPU pool width")
    parser.add_argument("--gpu-n", type=int, default=10_000_000, help="GPU pool rows")
    parser.add_argument("--gpu-d", type=int, default=2048, help="GPU pool width")
    parser.add_argument("--classes", type=lambda s: [int(c) for c in s.split(",")], default=[2, 10, 182],
                        help="comma-separated numbers of classes")
    parser.add_argument("--strategy", default="entropy", help="least-confidence, entropy, margin or max-logit")
    parser.add_argument("--k", type=int, default=20, help="rows to select")
    parser.add_argument("--repeat", type=int, default=5, help="runs per measurement (the best counts)")
    parser.add_argument("--naive-repeat", type=int, default=1, help="runs of the naive baseline")
    parser.add_argument("--no-cpu", action="store_true", help="skip the CPU part")
    args = parser.parse_args()
    if not args.no_cpu:
        run_cpu(args)
    cupy, why = cuda_status()
    if cupy is None:
        print(f"GPU part skipped: {why}")
    else:
        run_gpu(args, cupy)


if __name__ == "__main__":
    main()
