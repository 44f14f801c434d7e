"""Benchmark embedcache's strategy algorithms against scikit-activeml's on the same pool.

    pip install -e '.[bench]'                     # scikit-activeml 1.0.1
    python benchmarks/strategies.py                # 20,000 x 512, 2 and 10 classes, 200 labelled, batch 20
    python benchmarks/strategies.py --large        # also each of ours alone at 1,000,000 x 512, peak RSS
    python benchmarks/strategies.py --only coreset,badge --classes 2

The pool is a mixture of 80 Gaussian modes in 512 dimensions, L2-normalised (the features TypiClust
and ProbCover assume), each mode belonging to one class. Both sides get the same pool, labelled set,
class probabilities (a scikit-learn logistic regression fitted on the labelled rows) and posterior
samples (the Laplace posterior of that head, `embedcache.learners.posterior`). Each side is timed in
this process, best of --repeats runs (scikit-activeml's slow strategies run once), and the overlap of
the two selections is printed with the reason wherever they cannot agree exactly:

* coreset, BALD: deterministic; they agree up to exact ties (scikit-activeml breaks ties at random).
* BADGE: the first pick (the largest gradient norm) is deterministic; later picks are draws from the
  D^2 distribution, from different random generators.
* TypiClust: each side clusters with its own k-means (FAISS vs scikit-learn, different starts), so the
  clusters differ; the "same clusters" line hands our k-means labels to scikit-activeml (and its
  typicality K = 20, the paper's; its default is 5) to compare the rest of the algorithm.
* ProbCover: each side picks delta its own way (ours: the exact purity quantile; theirs: the largest
  of 0.1, 0.2, ..., 2.0 passing the purity test, with its own k-means); the "same delta" line gives
  theirs our delta. Equal coverage gains are common and are broken at random by scikit-activeml.
* BatchBALD: exact while the picked rows' label configurations number at most M = 1,000, sampled after
  that, from different generators.

Cluster-Margin and the stochastic batches have no scikit-activeml counterpart; their times are ours alone.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
import warnings

import numpy as np

from embedcache.learners.posterior import laplace_samples
from embedcache.scoring import margin
from embedcache.strategies._common import Span, device_of, kmeans_labels
from embedcache.strategies.badge import badge
from embedcache.strategies.bald import bald, batchbald
from embedcache.strategies.candidates import KnnCandidates
from embedcache.strategies.cluster_margin import cluster_margin, hac_clusters
from embedcache.strategies.kcenter import kcenter_greedy
from embedcache.strategies.probcover import probcover, purity_radius
from embedcache.strategies.stochastic import stochastic_batch
from embedcache.strategies.typiclust import typiclust

from score import cpu_model, versions  # benchmarks/ is the script's folder

LABELLED, BATCH, POSTERIOR_SAMPLES, JOINT_SAMPLES = 200, 20, 20, 1000
STRATEGIES = ("coreset", "badge", "typiclust", "probcover", "bald", "batchbald", "cluster-margin", "power",
              "knn-candidates")


# ---------------------------------------------------------------------- the pool
def make_pool(n: int, dim: int, classes: int, seed: int = 0, modes: int = 80, spread: float = 1.0):
    """(X float32 [n, dim] unit rows, labels, labelled rows): a mixture of `modes` Gaussian modes."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((modes, dim)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    mode = rng.integers(0, modes, n)
    x = np.empty((n, dim), dtype=np.float32)
    for lo in range(0, n, 65536):  # block by block: no second copy of a large pool
        hi = min(lo + 65536, n)
        block = rng.standard_normal((hi - lo, dim), dtype=np.float32)
        block *= spread / math.sqrt(dim)
        block += centers[mode[lo:hi]]
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        x[lo:hi] = block
    labelled = np.sort(rng.choice(n, LABELLED, replace=False))
    return x, mode % classes, labelled


def fit_head(x, y, labelled, classes):
    """A logistic regression on the labelled rows (scikit-learn's, wrapped for scikit-activeml too)."""
    from sklearn.linear_model import LogisticRegression

    from skactiveml.classifier import SklearnClassifier

    y_missing = np.full(len(x), np.nan)
    y_missing[labelled] = y[labelled]
    wrapped = SklearnClassifier(LogisticRegression(max_iter=1000), classes=np.arange(classes), random_state=0)
    return wrapped.fit(x, y_missing), y_missing


def head_posterior(model, x, labelled, candidates):
    """[n, T, C] Laplace-posterior probabilities of the candidates (the fitted head, C = 1 as in scikit-learn)."""
    estimator = model.estimator_
    samples = laplace_samples(x[labelled], estimator.coef_.T, estimator.intercept_, C=estimator.C,
                              n_samples=POSTERIOR_SAMPLES, seed=0)
    return np.concatenate([samples.proba(x[candidates[lo:lo + 65536]]) for lo in range(0, len(candidates), 65536)])


# ---------------------------------------------------------------------- the two sides
class FixedClusters:
    """A scikit-learn style clusterer that returns given labels (to give scikit-activeml our clusters)."""

    labels: np.ndarray

    def __init__(self, n_clusters=None, random_state=None):
        pass

    def fit_predict(self, x):
        return self.labels


class Timing(float):
    """Wall-clock seconds of the fastest run, with that run's CPU seconds (all threads) as `.cpu`."""

    cpu: float


def best_of(repeats: int, fn) -> tuple[Timing, object]:
    runs, result = [], None
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        runs.append((time.perf_counter() - wall, time.process_time() - cpu))
    wall, cpu = min(runs)
    timing = Timing(wall)
    timing.cpu = cpu
    return timing, result


def overlap(a, b) -> int:
    return len(set(np.asarray(a).tolist()) & set(np.asarray(b).tolist()))


def compare(args, classes: int) -> list[dict]:
    from skactiveml.pool import Badge, CoreSet, ProbCover, TypiClust, batch_bald

    x, y, labelled = make_pool(args.n, args.dim, classes)
    candidates = np.setdiff1d(np.arange(args.n), labelled)
    model, y_missing = fit_head(x, y, labelled, classes)
    rows = []

    def row(name, ours_s: Timing, theirs_s: Timing | None, agree, note):
        entry = {"classes": classes, "strategy": name, "ours_s": float(ours_s), "ours_cpu_s": ours_s.cpu,
                 "theirs_s": None if theirs_s is None else float(theirs_s),
                 "theirs_cpu_s": None if theirs_s is None else theirs_s.cpu, "overlap": agree, "note": note}
        rows.append(entry)
        theirs = "          -" if theirs_s is None else (
            f"{theirs_s:8.2f} s ({theirs_s.cpu:7.2f})  {theirs_s / ours_s:6.1f}x ({theirs_s.cpu / ours_s.cpu:5.1f}x)")
        print(f"C={classes:<3} {name:<26} {ours_s:8.3f} s ({ours_s.cpu:7.3f})   {theirs:<38} "
              f"{agree if agree is not None else '-':>5}   {note}", flush=True)

    wanted = set(args.only or STRATEGIES)
    if "coreset" in wanted:
        ours_s, ours = best_of(args.repeats, lambda: kcenter_greedy(x, candidates, labelled, BATCH, 0)[0])
        theirs_s, theirs = best_of(2, lambda: CoreSet(random_state=0).query(x, y_missing, batch_size=BATCH))
        row("coreset", ours_s, theirs_s, f"{overlap(ours, theirs)}/20", "same picks in the same order"
            if np.array_equal(ours, theirs) else "deterministic: differences are exact or float near-ties")
    if "badge" in wanted:
        def ours_badge():  # the probabilities are part of the time, as in scikit-activeml's query
            return badge(x, candidates, model.predict_proba(x)[candidates], BATCH, 0)[0]
        ours_s, ours = best_of(args.repeats, ours_badge)
        theirs_s, theirs = best_of(1, lambda: Badge(random_state=0).query(x, y_missing, model, fit_clf=False,
                                                                          batch_size=BATCH))
        row("badge", ours_s, theirs_s, f"{overlap(ours, theirs)}/20",
            f"first pick {'equal' if ours[0] == theirs[0] else 'DIFFERS'}; "
            "later picks are D² draws from different RNGs")
    if "typiclust" in wanted:
        ours_s, ours = best_of(args.repeats, lambda: typiclust(x, candidates, labelled, BATCH, 0)[0])
        theirs_s, theirs = best_of(1, lambda: TypiClust(random_state=0).query(x, y_missing, batch_size=BATCH))
        row("typiclust", ours_s, theirs_s, f"{overlap(ours, theirs)}/20", "each side's own k-means")
        span = Span(x, np.arange(args.n), device_of("cpu"))
        FixedClusters.labels = kmeans_labels(span, LABELLED + BATCH, 0)
        shared_s, shared = best_of(1, lambda: TypiClust(random_state=0, cluster_algo=FixedClusters, k=20).query(
            x, y_missing, batch_size=BATCH))
        row("typiclust (same clusters)", ours_s, None, f"{overlap(ours, shared)}/20",
            f"scikit-activeml given our k-means labels took {shared_s:.2f} s (its k-means is the rest)")
    if "probcover" in wanted:
        ours_s, ours = best_of(args.repeats, lambda: probcover(x, candidates, labelled, BATCH, 0,
                                                               n_classes=classes)[0])
        theirs_s, theirs = best_of(1, lambda: ProbCover(random_state=0).query(x, y_missing, batch_size=BATCH))
        row("probcover", ours_s, theirs_s, f"{overlap(ours, theirs)}/20", "each side's own delta and k-means")
        span = Span(x, np.arange(args.n), device_of("cpu"))
        delta = purity_radius(x, np.arange(args.n), kmeans_labels(span, classes, 0))
        fixed_s, fixed = best_of(1, lambda: probcover(x, candidates, labelled, BATCH, 0, delta=delta)[0])
        shared_s, shared = best_of(1, lambda: ProbCover(random_state=0, deltas=[delta]).query(
            x, y_missing, batch_size=BATCH))
        row("probcover (same delta)", fixed_s, shared_s, f"{overlap(fixed, shared)}/20",
            f"delta = {delta:.4f}; equal gains go by our tie rule vs their random tie-break")
    if "bald" in wanted or "batchbald" in wanted:
        samples = head_posterior(model, x, labelled, candidates)
        theirs_samples = np.ascontiguousarray(samples.transpose(1, 0, 2), dtype=np.float64)
    if "bald" in wanted:
        ours_s, ours = best_of(args.repeats, lambda: bald(samples, candidates, BATCH, 0)[0])

        def theirs_bald():
            utilities = batch_bald(theirs_samples.copy(), 1, random_state=0)[0]
            return candidates[np.argsort(-utilities, kind="stable")[:BATCH]]
        theirs_s, theirs = best_of(2, theirs_bald)
        row("bald", ours_s, theirs_s, f"{overlap(ours, theirs)}/20",
            "deterministic (theirs clips probabilities at 1e-7)")
    if "batchbald" in wanted:
        ours_s, ours = best_of(args.repeats, lambda: batchbald(samples, candidates, BATCH, 0,
                                                               joint_samples=JOINT_SAMPLES)[0])

        def theirs_batchbald():
            utilities = batch_bald(theirs_samples.copy(), BATCH, n_MC_samples=JOINT_SAMPLES, random_state=0)
            return candidates[np.nanargmax(utilities, axis=1)]
        theirs_s, theirs = best_of(1, theirs_batchbald)
        prefix = int(np.argmin(np.append(ours == theirs, False)))
        exact = int(math.floor(math.log(JOINT_SAMPLES, classes))) + 1
        row("batchbald", ours_s, theirs_s, f"{overlap(ours, theirs)}/20",
            f"first {prefix} picks equal; exact for the first {exact}, "
            f"then sampled (M = {JOINT_SAMPLES}) by different RNGs")
    if "cluster-margin" in wanted:
        hac_s, clusters = best_of(1, lambda: hac_clusters(x, candidates, 0))
        scores = margin(model.predict_proba(x[candidates]))
        ours_s, _ = best_of(args.repeats, lambda: cluster_margin(scores, candidates, clusters, BATCH, 0))
        row("cluster-margin", ours_s, None, None, f"per round; HAC once per run {hac_s:.2f} s "
            f"({len(np.unique(clusters))} clusters); no scikit-activeml counterpart")
    if "power" in wanted:
        scores = 1.0 + margin(model.predict_proba(x[candidates]))
        ours_s, _ = best_of(args.repeats, lambda: stochastic_batch(scores, candidates, BATCH, 0, mode="power"))
        row("power (1 + margin)", ours_s, None, None, "no scikit-activeml counterpart")
    return rows


# ---------------------------------------------------------------------- one of ours alone, large
def run_large(name: str, n: int, dim: int, classes: int) -> dict:
    """Time one of ours on an n-row pool in this (child) process; peak RSS includes the pool itself."""
    from sklearn.linear_model import LogisticRegression

    x, y, labelled = make_pool(n, dim, classes)
    candidates = np.setdiff1d(np.arange(n), labelled)
    head = LogisticRegression(max_iter=1000).fit(x[labelled], y[labelled])
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def probabilities():
        return np.concatenate([head.predict_proba(x[candidates[lo:lo + 65536]])
                               for lo in range(0, len(candidates), 65536)])

    start = time.perf_counter()
    if name == "coreset":
        kcenter_greedy(x, candidates, labelled, BATCH, 0)
    elif name == "badge":
        badge(x, candidates, probabilities(), BATCH, 0)
    elif name == "typiclust":
        typiclust(x, candidates, labelled, BATCH, 0)
    elif name == "probcover":
        probcover(x, candidates, labelled, BATCH, 0, n_classes=classes)
    elif name == "probcover-on-knn-candidates":
        seals = KnnCandidates(x, np.arange(n))
        seals.add_labelled(labelled)
        pool = seals.candidates()
        probcover(x, pool, labelled, BATCH, 0, n_classes=classes)
    elif name in ("bald", "batchbald", "batchbald-on-knn-candidates"):
        if name == "batchbald-on-knn-candidates":
            seals = KnnCandidates(x, np.arange(n))
            seals.add_labelled(labelled)
            candidates = seals.candidates()
        samples = laplace_samples(x[labelled], head.coef_.T, head.intercept_, C=head.C, n_samples=POSTERIOR_SAMPLES)
        proba = np.concatenate([samples.proba(x[candidates[lo:lo + 65536]]) for lo in range(0, len(candidates), 65536)])
        if name == "bald":
            bald(proba, candidates, BATCH, 0)
        else:
            batchbald(proba, candidates, BATCH, 0, joint_samples=JOINT_SAMPLES)
    elif name == "cluster-margin":
        clusters = hac_clusters(x, candidates, 0)
        cluster_margin(margin(probabilities()), candidates, clusters, BATCH, 0)
    elif name == "power":
        stochastic_batch(1.0 + margin(probabilities()), candidates, BATCH, 0)
    elif name == "knn-candidates":
        seals = KnnCandidates(x, np.arange(n))
        seals.add_labelled(labelled)
        seals.add_labelled(candidates[:BATCH])
        seals.candidates()
    else:
        raise SystemExit(f"unknown strategy {name}")
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"strategy": name, "n": n, "seconds": seconds, "pool_bytes": x.nbytes, "rss_before": baseline,
            "rss_peak": peak}


def large(args) -> None:
    gib = args.large_n * args.dim * 4 / 2**30
    print(f"\nEach of ours alone on N = {args.large_n:,} x {args.dim} (float32, {gib:.1f} GiB), "
          f"C = {args.large_classes}, {LABELLED} labelled, batch {BATCH}; one child process each; peak RSS "
          f"includes the pool and the labelled head (RSS before = after building them)")
    names = [s for s in (args.only or STRATEGIES) if s != "probcover"]
    names += [f"{s}-on-knn-candidates" for s in ("probcover", "batchbald") if s in (args.only or STRATEGIES)]
    sizes = {name: args.large_n for name in names}
    if not args.only or "probcover" in args.only:
        sizes["probcover"] = args.probcover_n
    for name, n in sizes.items():
        script = os.path.abspath(__file__)
        command = [sys.executable, script, "--child", name, "--n", str(n), "--dim", str(args.dim),
                   "--classes", str(args.large_classes)]
        try:
            result = subprocess.run(command, capture_output=True, text=True, cwd=os.path.dirname(script),
                                    timeout=args.large_timeout)
        except subprocess.TimeoutExpired:
            print(f"{name:<30} N = {n:>9,}  did not finish within {args.large_timeout} s", flush=True)
            continue
        if result.returncode:
            print(f"{name}: failed\n{result.stderr[-2000:]}")
            continue
        r = json.loads(result.stdout.strip().splitlines()[-1])
        print(f"{name:<30} N = {r['n']:>9,}  {r['seconds']:8.1f} s   peak RSS {r['rss_peak'] / 2**30:5.2f} GiB "
              f"(before {r['rss_before'] / 2**30:5.2f} GiB, pool {r['pool_bytes'] / 2**30:4.2f} GiB)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--classes", type=int, nargs="+", default=[2, 10])
    parser.add_argument("--repeats", type=int, default=3, help="our runs per strategy (best is kept)")
    parser.add_argument("--only", type=lambda s: s.split(","), help=f"comma-separated subset of {','.join(STRATEGIES)}")
    parser.add_argument("--large", action="store_true", help="also time each of ours alone on a large pool")
    parser.add_argument("--large-n", type=int, default=1_000_000)
    parser.add_argument("--large-classes", type=int, default=10)
    parser.add_argument("--probcover-n", type=int, default=100_000,
                        help="ProbCover's exact pass is O(N^2 D): its large run uses this many rows")
    parser.add_argument("--large-timeout", type=int, default=1800, help="seconds each large run may take")
    parser.add_argument("--skip-compare", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if args.child:
        print(json.dumps(run_large(args.child, args.n, args.dim, args.classes[0])))
        return
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; "
          + versions("numpy", "faiss-cpu", "scikit-learn", "scikit-activeml", "torch", "scipy"))
    print("load average at start: " + ", ".join(f"{v:.1f}" for v in os.getloadavg()))
    if not args.skip_compare:
        print(f"pool: N = {args.n:,} x {args.dim} float32, {LABELLED} labelled, batch {BATCH}; "
              f"posterior samples T = {POSTERIOR_SAMPLES}; ours best of {args.repeats}\n"
              f"{'':<31}{'ours: wall (CPU)':<24}{'scikit-activeml: wall (CPU), ratio wall (CPU)':<40}overlap")
        for classes in args.classes:
            compare(args, classes)
    if args.large:
        large(args)
    print("load average at end: " + ", ".join(f"{v:.1f}" for v in os.getloadavg()))


if __name__ == "__main__":
    main()
