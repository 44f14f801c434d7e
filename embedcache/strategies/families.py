"""The strategy families researchers compare against, registered under the names users type.

Each class adapts one algorithm module (pure functions on arrays) to the `Strategy` contract: it
asks the learner for what it declares in `requires` (embeddings, gradient embeddings, posterior
samples, probabilities), runs the algorithm on the sorted candidates, and returns (rows, scores).
Options and their defaults follow the papers (see each algorithm module, and the README's table).

| name | paper | needs |
|---|---|---|
| coreset | Sener & Savarese, ICLR 2018 | embed |
| badge | Ash et al., ICLR 2020 | gradient-embedding |
| typiclust | Hacohen et al., ICML 2022 | embed |
| probcover | Yehuda et al., NeurIPS 2022 | embed, proba (its number of classes) |
| bald, batchbald | Houlsby et al. 2011; Kirsch et al., NeurIPS 2019 | posterior-samples |
| power-/softmax-/rank-SCORE | Kirsch et al., TMLR 2023 | proba (posterior-samples for bald) |
| cluster-margin | Citovsky et al., NeurIPS 2021 | proba, embed |

Algorithms run on CUDA when torch sees a GPU (`device="auto"`), else on the CPU.
"""

from __future__ import annotations

import math

import numpy as np

from embedcache.learners.base import Capability
from embedcache.learners.posterior import N_SAMPLES
from embedcache.scoring import PROBABILITY_SCORES, top_k
from embedcache.strategies import bald as bald_module
from embedcache.strategies import stochastic
from embedcache.strategies.badge import badge
from embedcache.strategies.base import AUTO, STRATEGIES, Option, Strategy
from embedcache.strategies.cluster_margin import MARGIN_FACTOR, cluster_margin, hac_clusters
from embedcache.strategies.kcenter import kcenter_greedy
from embedcache.strategies.probcover import ALPHA, probcover
from embedcache.strategies.typiclust import MAX_CLUSTERS, MIN_CLUSTER_SIZE, N_NEIGHBORS, typiclust

DEVICE = "auto"
#: Posterior probabilities scored at once by BALD ([rows, samples, classes] float32: 16 MiB).
_BALD_BLOCK_ELEMENTS = 1 << 22
SAMPLES = Option("samples", int, N_SAMPLES, "posterior samples", minimum=1)


def _sorted(candidates) -> np.ndarray:
    return np.sort(np.asarray(candidates, dtype=np.int64))


def _embedded(learner, candidates: np.ndarray, labeled: np.ndarray):
    """The learner's embeddings of candidates and labelled rows as one table, and the positions of each in it."""
    nodes = np.union1d(candidates, np.asarray(labeled, dtype=np.int64))
    table = np.ascontiguousarray(learner.embed(nodes), dtype=np.float32)
    return table, np.searchsorted(nodes, candidates), np.searchsorted(nodes, np.asarray(labeled, dtype=np.int64))


def _n_classes(learner, candidates: np.ndarray) -> int:
    """The number of classes the learner predicts (the width of its probabilities)."""
    return int(learner.predict_proba(candidates[:1]).shape[1])


def posterior_samples(learner, rows: np.ndarray, samples: int, seed: int) -> np.ndarray:
    """[rows, samples, classes] posterior probabilities (the BALD functions' layout)."""
    return np.ascontiguousarray(learner.posterior_proba(rows, samples, seed).transpose(1, 0, 2))


def bald_scores(learner, rows: np.ndarray, samples: int, seed: int) -> np.ndarray:
    """BALD's mutual information per row, a block of rows at a time (the same posterior draws for every block)."""
    scores = np.empty(len(rows))
    width = max(1, _n_classes(learner, rows))
    step = max(1, _BALD_BLOCK_ELEMENTS // (samples * width))
    for lo in range(0, len(rows), step):
        scores[lo:lo + step] = bald_module.bald_scores(posterior_samples(learner, rows[lo:lo + step], samples, seed))
    return scores


def _back(rows_of_positions: np.ndarray, result: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    positions, scores = result
    return rows_of_positions[positions], np.asarray(scores, dtype=np.float64)


# ------------------------------------------------------------------------------------ diversity
@STRATEGIES.register("coreset")
class CoresetStrategy(Strategy):
    """Greedy k-center on the learner's embeddings (`kcenter`); with nothing labelled, a seed set."""

    name = "coreset"
    requires = frozenset({Capability.EMBED})
    cold_start = True

    def select(self, learner, candidates, labeled, k, seed):
        candidates = _sorted(candidates)
        table, at, labelled_at = _embedded(learner, candidates, labeled)
        nodes = np.union1d(candidates, labeled).astype(np.int64)
        return _back(nodes, kcenter_greedy(table, at, labelled_at, min(k, len(candidates)), seed, device=DEVICE))

    def seed_set(self, embeddings, k, seed, n_classes):
        empty = np.zeros(0, dtype=np.int64)
        return kcenter_greedy(embeddings, np.arange(len(embeddings)), empty, k, seed, device=DEVICE)


@STRATEGIES.register("badge")
class BadgeStrategy(Strategy):
    """k-means++ seeding on gradient embeddings (`badge`), never materialising them."""

    name = "badge"
    requires = frozenset({Capability.GRADIENT_EMBEDDING})

    def select(self, learner, candidates, labeled, k, seed):
        candidates = _sorted(candidates)
        residual, inputs = learner.gradient_embedding(candidates)
        proba = np.asarray(residual, dtype=np.float64).copy()  # p = r + onehot(ŷ), ŷ where r is lowest (p_ŷ - 1)
        proba[np.arange(len(proba)), proba.argmin(axis=1)] += 1.0
        inputs = np.ascontiguousarray(inputs, dtype=np.float32)  # [h, 1]: the bias's input is already there
        return _back(candidates, badge(inputs, np.arange(len(candidates)), proba, min(k, len(candidates)), seed,
                                       device=DEVICE))


@STRATEGIES.register("typiclust")
class TypiclustStrategy(Strategy):
    """The most typical row of the largest uncovered k-means clusters (`typiclust`); also a seed set."""

    name = "typiclust"
    requires = frozenset({Capability.EMBED})
    cold_start = True
    options = (Option("neighbors", int, N_NEIGHBORS, "K of the typicality's K nearest neighbours", minimum=1),
               Option("min_cluster", int, MIN_CLUSTER_SIZE, "clusters of at most this many rows are skipped",
                      minimum=0),
               Option("max_clusters", int, MAX_CLUSTERS, "cap on the number of k-means clusters", minimum=1))

    def __init__(self, neighbors: int = N_NEIGHBORS, min_cluster: int = MIN_CLUSTER_SIZE,
                 max_clusters: int = MAX_CLUSTERS):
        self.settings = {"n_neighbors": neighbors, "min_cluster_size": min_cluster, "max_clusters": max_clusters}

    def select(self, learner, candidates, labeled, k, seed):
        candidates = _sorted(candidates)
        table, at, labelled_at = _embedded(learner, candidates, labeled)
        nodes = np.union1d(candidates, labeled).astype(np.int64)
        return _back(nodes, typiclust(table, at, labelled_at, min(k, len(candidates)), seed, device=DEVICE,
                                      **self.settings))

    def seed_set(self, embeddings, k, seed, n_classes):
        empty = np.zeros(0, dtype=np.int64)
        return typiclust(embeddings, np.arange(len(embeddings)), empty, k, seed, device=DEVICE, **self.settings)


@STRATEGIES.register("probcover")
class ProbcoverStrategy(Strategy):
    """Greedy max coverage of δ-balls (`probcover`); δ by the purity rule unless given; also a seed set."""

    name = "probcover"
    requires = frozenset({Capability.EMBED, Capability.PROBA})
    cold_start = True
    options = (Option("delta", float, AUTO, "ball radius; auto: the largest with purity >= alpha", minimum=0,
                      open_minimum=True),
               Option("alpha", float, ALPHA, "purity threshold of the automatic delta", minimum=0, open_minimum=True,
                      maximum=1),
               Option("clusters", int, AUTO, "k-means clusters of the purity rule; auto: the number of classes",
                      minimum=2))

    def __init__(self, delta: float | str = AUTO, alpha: float = ALPHA, clusters: int | str = AUTO):
        self.delta, self.alpha, self.clusters = delta, alpha, clusters

    def _settings(self, n_classes: int) -> dict:
        if self.delta != AUTO:
            return {"delta": self.delta}
        return {"alpha": self.alpha, "n_classes": n_classes if self.clusters == AUTO else self.clusters}

    def select(self, learner, candidates, labeled, k, seed):
        candidates = _sorted(candidates)
        table, at, labelled_at = _embedded(learner, candidates, labeled)
        nodes = np.union1d(candidates, labeled).astype(np.int64)
        settings = self._settings(_n_classes(learner, candidates))
        return _back(nodes, probcover(table, at, labelled_at, min(k, len(candidates)), seed, device=DEVICE,
                                      **settings))

    def seed_set(self, embeddings, k, seed, n_classes):
        empty = np.zeros(0, dtype=np.int64)
        return probcover(embeddings, np.arange(len(embeddings)), empty, k, seed, device=DEVICE,
                         **self._settings(n_classes))


# ------------------------------------------------------------------------------------ Bayesian
@STRATEGIES.register("bald")
class BaldStrategy(Strategy):
    """The top k by BALD's mutual information, from the learner's posterior samples."""

    name = "bald"
    requires = frozenset({Capability.POSTERIOR_SAMPLES})
    options = (SAMPLES,)

    def __init__(self, samples: int = N_SAMPLES):
        self.samples = samples

    def select(self, learner, candidates, labeled, k, seed):
        candidates = _sorted(candidates)
        scores = bald_scores(learner, candidates, self.samples, seed)
        return top_k(scores, candidates, min(k, len(candidates)), seed)


@STRATEGIES.register("batchbald")
class BatchBaldStrategy(Strategy):
    """BatchBALD's greedy joint mutual information, from the learner's posterior samples."""

    name = "batchbald"
    requires = frozenset({Capability.POSTERIOR_SAMPLES})
    options = (SAMPLES, Option("joint", int, bald_module.JOINT_SAMPLES,
                               "label configurations sampled once exact enumeration exceeds them", minimum=1))

    def __init__(self, samples: int = N_SAMPLES, joint: int = bald_module.JOINT_SAMPLES):
        self.samples, self.joint = samples, joint

    def select(self, learner, candidates, labeled, k, seed):
        candidates = _sorted(candidates)
        if k >= len(candidates):  # every candidate is taken: no greedy choice to make, BALD orders them
            return top_k(bald_scores(learner, candidates, self.samples, seed), candidates, len(candidates), seed)
        proba = posterior_samples(learner, candidates, self.samples, seed)
        return bald_module.batchbald(proba, candidates, min(k, len(candidates)), seed,
                                     joint_samples=max(self.joint, self.samples), device=DEVICE)


# ------------------------------------------------------------------------------------ stochastic batches
#: Scores stochastic batches sample from; bald reads posterior samples.
STOCHASTIC_SCORES = ("least-confidence", "entropy", "margin", "bald")


class StochasticStrategy(Strategy):
    """A batch sampled without replacement with p ∝ s^β (power), exp(β s) (softmax) or rank^-β (rank) over
    one score (`stochastic`). Power sampling reads margin as 1 + margin (≥ 0)."""

    mode: str
    score: str
    options = (Option("beta", float, stochastic.BETA, "the power β (0: uniform)", minimum=0),)

    def __init__(self, beta: float = stochastic.BETA, samples: int = N_SAMPLES):
        self.beta, self.samples = beta, samples

    def select(self, learner, candidates, labeled, k, seed):
        candidates = _sorted(candidates)
        if self.score == "bald":
            scores = bald_scores(learner, candidates, self.samples, seed)
        else:
            scores = PROBABILITY_SCORES[self.score](learner.predict_proba(candidates)).astype(np.float64)
            if self.score == "margin" and self.mode == "power":
                scores = 1.0 + scores
        scores = np.maximum(scores, 0.0) if self.mode == "power" else scores  # BALD's rounding below 0
        return stochastic.stochastic_batch(scores, candidates, min(k, len(candidates)), seed, mode=self.mode,
                                           beta=self.beta)


def _register_stochastic(mode: str, score: str) -> None:
    uses_posterior = score == "bald"
    attributes = {
        "name": f"{mode}-{score}", "mode": mode, "score": score,
        "requires": frozenset({Capability.POSTERIOR_SAMPLES if uses_posterior else Capability.PROBA}),
        "options": StochasticStrategy.options + ((SAMPLES,) if uses_posterior else ()),
        "__doc__": f"Stochastic {mode} batches over the {score} score.", "__module__": __name__}
    cls = type(f"{mode.capitalize()}{score.title().replace('-', '')}Strategy", (StochasticStrategy,), attributes)
    STRATEGIES.register(cls.name)(cls)


for _mode in stochastic.MODES:
    for _score in STOCHASTIC_SCORES:
        _register_stochastic(_mode, _score)


# ------------------------------------------------------------------------------------ Cluster-Margin
@STRATEGIES.register("cluster-margin")
class ClusterMarginStrategy(Strategy):
    """Round robin over the HAC clusters of the lowest-margin candidates (`cluster_margin`). The pool is
    clustered once per run (`prepare`, on the embeddings before the first fit); without `prepare` (the
    conformance check, `suggest`) each call clusters its candidates."""

    name = "cluster-margin"
    requires = frozenset({Capability.PROBA, Capability.EMBED})
    options = (Option("clusters", int, AUTO, "HAC clusters; auto: the square root of the pool size", minimum=1),
               Option("factor", int, MARGIN_FACTOR, "margin candidates per acquired row (k_m = factor·k)",
                      minimum=1))

    def __init__(self, clusters: int | str = AUTO, factor: int = MARGIN_FACTOR):
        self.clusters, self.factor = clusters, factor
        self._pool: np.ndarray | None = None
        self._pool_clusters: np.ndarray | None = None

    def _cluster(self, learner, rows: np.ndarray, seed: int) -> np.ndarray:
        table = np.ascontiguousarray(learner.embed(rows), dtype=np.float32)
        n_clusters = math.ceil(math.sqrt(len(rows))) if self.clusters == AUTO else self.clusters
        if len(rows) < 2:
            return np.zeros(len(rows), dtype=np.int64)
        return hac_clusters(table, np.arange(len(rows)), seed, n_clusters=n_clusters, device=DEVICE)

    def prepare(self, learner, pool, seed):
        self._pool = np.sort(np.asarray(pool, dtype=np.int64))
        self._pool_clusters = self._cluster(learner, self._pool, seed)

    def select(self, learner, candidates, labeled, k, seed):
        candidates = _sorted(candidates)
        if self._pool is not None:
            clusters = self._pool_clusters[np.searchsorted(self._pool, candidates)]
        else:
            clusters = self._cluster(learner, candidates, seed)
        scores = PROBABILITY_SCORES["margin"](learner.predict_proba(candidates))
        k = min(k, len(candidates))
        return cluster_margin(scores, candidates, clusters, k, seed, margin_candidates=min(len(candidates),
                                                                                          self.factor * k))
