"""Cold start: seed sets without labels."""

from __future__ import annotations

import numpy as np
import pytest

from embedcache.errors import ConfigError
from embedcache.strategies.cold_start import cold_start
from embedcache.strategies.probcover import probcover
from embedcache.strategies.typiclust import typiclust


@pytest.fixture
def pool():
    return np.random.default_rng(0).standard_normal((300, 8)).astype(np.float32)


def test_methods_are_their_algorithms_with_nothing_labelled(pool):
    rows = np.arange(20, 300)
    assert np.array_equal(cold_start(pool, rows, 6, 1, method="typiclust")[0], typiclust(pool, rows, [], 6, 1)[0])
    assert np.array_equal(cold_start(pool, rows, 6, 1, method="probcover", n_classes=3)[0],
                          probcover(pool, rows, [], 6, 1, n_classes=3)[0])
    assert np.array_equal(cold_start(pool, rows, 6, 1, method="probcover", delta=3.0)[0],
                          probcover(pool, rows, [], 6, 1, delta=3.0)[0])


def test_random_is_seeded_and_order_free(pool):
    rows = np.arange(300)
    first, _ = cold_start(pool, rows, 10, 4, method="random")
    assert np.array_equal(first, cold_start(pool, rows[::-1], 10, 4, method="random")[0])
    assert not np.array_equal(first, cold_start(pool, rows, 10, 5, method="random")[0])
    assert len(set(first.tolist())) == 10


@pytest.mark.parametrize("kwargs, message", [
    ({"method": "balanced"}, "seed-set method must be one of"),
    ({"method": "typiclust", "delta": 1.0}, "typiclust has no option delta"),
    ({"method": "random", "n_classes": 2}, "the random seed set takes no options"),
    ({"method": "probcover"}, "ProbCover needs delta, or n_classes"),
    ({"method": "random", "k": 301}, "k = 301 is more than the 300 pool rows"),
])
def test_bad_options_name_the_option(pool, kwargs, message):
    arguments = {"embeddings": pool, "pool": np.arange(300), "k": 3, "seed": 0, **kwargs}
    with pytest.raises(ConfigError, match=message):
        cold_start(**arguments)
