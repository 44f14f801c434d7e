"""The CUDA paths (torch tensors, faiss-gpu when installed) pick what the CPU paths pick.

No GPU was available while these were written: they skip cleanly without one (`pytest -m gpu`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from embedcache.strategies.badge import badge
from embedcache.strategies.bald import batchbald
from embedcache.strategies.cluster_margin import hac_clusters
from embedcache.strategies.kcenter import kcenter_greedy
from embedcache.strategies.probcover import probcover
from embedcache.strategies.typiclust import typiclust

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible to torch")


@pytest.fixture(scope="module")
def pool():
    """Integer coordinates: every distance is exact on both devices, so the picks must be equal."""
    rng = np.random.default_rng(0)
    x = rng.integers(-3, 4, size=(400, 6)).astype(np.float32)
    return x, np.arange(20), np.arange(20, 400)


@pytest.mark.gpu
@needs_cuda
def test_diversity_strategies_pick_alike_on_cuda(pool):
    x, labelled, candidates = pool
    proba = np.random.default_rng(1).multinomial(8, [0.25, 0.25, 0.5], size=len(candidates)) / 8.0
    for run in (lambda d: kcenter_greedy(x, candidates, labelled, 15, 3, device=d, block_rows=64),
                lambda d: badge(x, candidates, proba, 15, 3, device=d, block_rows=64),
                lambda d: probcover(x, candidates, labelled, 15, 3, delta=2.2, device=d, block_rows=64),
                lambda d: typiclust(x, candidates, labelled, 15, 3, device=d)):
        cpu, cuda = run("cpu"), run("cuda")
        assert np.array_equal(cpu[0], cuda[0])
        np.testing.assert_allclose(cpu[1], cuda[1], rtol=1e-6)
    assert np.array_equal(hac_clusters(x, candidates, 0, device="cpu"), hac_clusters(x, candidates, 0, device="cuda"))


@pytest.mark.gpu
@needs_cuda
def test_batchbald_on_cuda():
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((300, 1, 4)) * 2 + rng.standard_normal((300, 10, 4))
    proba = np.exp(logits) / np.exp(logits).sum(2, keepdims=True)
    cpu = batchbald(proba, np.arange(300), 6, 0, joint_samples=64)
    cuda = batchbald(proba, np.arange(300), 6, 0, joint_samples=64, device="cuda")
    assert np.array_equal(cpu[0][:3], cuda[0][:3])  # exact while 4^m <= 64; sampled steps may differ in rounding
    np.testing.assert_allclose(cpu[1][:3], cuda[1][:3], rtol=1e-9)
