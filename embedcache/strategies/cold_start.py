"""Cold start: the seed set, chosen before any label exists.

Today's seed sets are random or class-balanced, and class-balanced needs the labels a user does not
have yet. TypiClust and ProbCover were designed for exactly this low-budget start (Hacohen et al.,
ICML 2022; Yehuda et al., NeurIPS 2022): with nothing labelled, TypiClust clusters the pool into k
clusters and takes the most typical row of each; ProbCover covers the pool greedily with δ-balls
(δ from the purity rule with `n_classes` k-means clusters, or given).
"""

from __future__ import annotations

import inspect

import numpy as np

from embedcache.errors import ConfigError
from embedcache.scoring import top_k
from embedcache.strategies._common import check_k, check_rows, check_table, row_uniforms
from embedcache.strategies.probcover import probcover
from embedcache.strategies.typiclust import typiclust

METHODS = ("random", "typiclust", "probcover")


def cold_start(embeddings: np.ndarray, pool: np.ndarray, k: int, seed: int, *, method: str = "typiclust",
               **options) -> tuple[np.ndarray, np.ndarray]:
    """k seed rows of `pool`, with no labels: (rows, scores) in the order chosen.

    method: "random" (a seeded uniform draw: scores are the draws), "typiclust" or "probcover" (their
    keyword options pass through, e.g. n_classes= or delta= for ProbCover, n_neighbors= for TypiClust).
    """
    if method not in METHODS:
        raise ConfigError(f"seed-set method must be one of {list(METHODS)}, got {method!r}")
    if method == "random":
        if options:
            raise ConfigError(f"the random seed set takes no options, got {sorted(options)}")
        table = check_table(embeddings)
        rows = check_rows(pool, len(table), "pool")
        k = check_k(k, len(rows), "pool rows")
        return top_k(row_uniforms(rows, seed, "cold start"), rows, k, seed)
    algorithm = typiclust if method == "typiclust" else probcover
    accepted = {name for name, parameter in inspect.signature(algorithm).parameters.items()
                if parameter.kind is inspect.Parameter.KEYWORD_ONLY}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ConfigError(f"{method} has no option {', '.join(unknown)}; its options: {sorted(accepted)}")
    return algorithm(embeddings, pool, np.empty(0, dtype=np.int64), k, seed, **options)
