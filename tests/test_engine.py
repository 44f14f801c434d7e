"""The batched engine: runs of one cache stepped together write the records the single-run loop
writes (bit for bit: same fits, same chunks, same products), resume after a kill as they do, and
strategies it cannot batch select per run inside it."""

from __future__ import annotations

import os
import subprocess

import numpy as np
import pytest
from click.testing import CliRunner
from runs_helpers import embedcache, stable, tiny_cache

from embedcache import engine
from embedcache.cli import main
from embedcache.errors import ConfigError
from embedcache.experiments import LinearExperiment, run_grid
from embedcache.faults import ENV as CRASH_AT
from embedcache.kernels import predict_many, predict_proba, score_topk, score_topk_many
from embedcache.protocols import get_protocol
from embedcache.scoring import topk_disagreement

STRATEGIES = ["least-confidence", "entropy", "margin", "max-logit", "random"]
PROTOCOL = get_protocol("waterbirds").replace(seed_size=10, budget=20)
#: A grid as `al` options: every uncertainty score and random, two seeds, 5 rounds each.
GRID = ["--seed-size", "10", "--budget", "20", *[a for s in STRATEGIES for a in ("--strategy", s)], "--seeds", "0-1"]


@pytest.fixture
def cache(tmp_path):
    return tiny_cache(tmp_path / "c.h5")


def _heads(rng, dim, widths):
    heads = []
    for width in widths:
        W = rng.normal(size=(dim, width)).astype(np.float32)
        b = rng.normal(size=width).astype(np.float32)
        if width == 1:  # a binary head as the linear learner gives it: the softmax of [0, z]
            W, b = np.concatenate([np.zeros_like(W), W], 1), np.concatenate([[0], b]).astype(np.float32)
        heads.append((W, b))
    return heads


def test_many_heads_in_one_pass_give_each_head_its_own_results():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000, 24)).astype(np.float32)
    heads = _heads(rng, 24, [1, 3, 1, 5])
    strategies, ks, seeds = ["least-confidence", "entropy", "margin", "max-logit"], [5, 7, 9, 11], [1, 2, 3, 4]
    excludes = [None, rng.random(3000) < 0.3, None, rng.random(3000) < 0.9]
    alone = [score_topk(X, W, b, s, k, exclude=e, seed=q, chunk_rows=512)
             for (W, b), s, k, e, q in zip(heads, strategies, ks, excludes, seeds)]
    together = score_topk_many(X, heads, strategies, ks, excludes=excludes, seeds=seeds, chunk_rows=512)
    stacked = score_topk_many(X, heads, strategies, ks, excludes=excludes, seeds=seeds, chunk_rows=512, stack=True)
    for one, many, gemm in zip(alone, together, stacked):
        assert np.array_equal(one[0], many[0]) and np.array_equal(one[1], many[1])  # the same calls: same bits
        assert topk_disagreement(one, gemm) is None  # one product for all heads: up to ties
    rows = rng.choice(3000, 100, replace=False)
    for (W, b), p, q in zip(heads, predict_many(X, heads, rows), predict_many(X, heads, rows, stack=True)):
        assert np.array_equal(predict_proba(X, W, b, rows=rows), p)
        np.testing.assert_allclose(p, q, atol=1e-6)
    with pytest.raises(ConfigError, match="4 heads need as many"):
        score_topk_many(X, heads, strategies[:3], ks)


def test_batched_records_are_the_single_run_records(cache, tmp_path):
    protocols = [PROTOCOL, PROTOCOL.replace(pool_size=60, per_round=(5, 10, 5))]  # subsampled pools: per run
    for i, protocol in enumerate(protocols):
        one = run_grid(LinearExperiment(cache, batch=1), protocol, STRATEGIES, [0, 1], tmp_path / f"one{i}")
        many = run_grid(LinearExperiment(cache), protocol, STRATEGIES, [0, 1], tmp_path / f"many{i}")
        assert len(one) == len(many) == 10 and all(run.complete for run in many)
        assert stable(tmp_path / f"one{i}") == stable(tmp_path / f"many{i}")
    before = {p.name: p.read_bytes() for p in (tmp_path / "many1").iterdir()}
    again = run_grid(LinearExperiment(cache), protocols[1], STRATEGIES, [0, 1], tmp_path / "many1")
    assert len(again) == 10 and {p.name: p.read_bytes() for p in (tmp_path / "many1").iterdir()} == before


def test_strategies_the_engine_cannot_batch_select_per_run_inside_it(cache, tmp_path, monkeypatch):
    batched, per_run = [], []
    score_many, select = engine.score_topk_many, engine.RunState.select

    def spy_many(X, heads, strategies, *args, **kwargs):
        batched.append(list(strategies))
        return score_many(X, heads, strategies, *args, **kwargs)

    def spy_select(state, learner, candidates, rows):
        per_run.append(state.planned.strategy)
        return select(state, learner, candidates, rows)

    monkeypatch.setattr(engine, "score_topk_many", spy_many)
    monkeypatch.setattr(engine.RunState, "select", spy_select)
    run_grid(LinearExperiment(cache), PROTOCOL, ["random", "margin", "entropy"], [0, 1], tmp_path / "many")
    assert set(per_run) == {"random"} and len(per_run) == 2 * 4  # 4 acquisitions per run, each run's own
    assert batched and all(sorted(b) == ["entropy", "entropy", "margin", "margin"] for b in batched)
    run_grid(LinearExperiment(cache, batch=1), PROTOCOL, ["random", "margin", "entropy"], [0, 1], tmp_path / "one")
    assert stable(tmp_path / "one") == stable(tmp_path / "many")


def test_batch_must_be_positive(cache):
    with pytest.raises(ConfigError, match="batch: must be a positive integer"):
        LinearExperiment(cache, batch=0)


@pytest.mark.slow
def test_a_batched_grid_killed_mid_round_resumes_to_the_one_by_one_records(cache, tmp_path):
    args = ["al", "--cache", cache, *GRID, "--quiet"]
    env = {**os.environ, CRASH_AT: "loop.round-written:23"}  # the 3rd round of the 10 runs, part-way through
    killed = embedcache(*args, "--out", tmp_path / "runs", env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = killed.communicate()[0].decode()
    assert killed.returncode == -9, output
    rounds = [len((tmp_path / "runs" / name).read_text().splitlines()) - 1 for name in os.listdir(tmp_path / "runs")
              if name.endswith(".jsonl")]
    assert sorted(rounds) == [2] * 7 + [3] * 3  # every run part-way, some a round ahead
    rerun = CliRunner().invoke(main, [*map(str, args), "--out", str(tmp_path / "runs")])
    assert rerun.exit_code == 0 and "10 of 10 runs complete" in rerun.output, rerun.output
    one = CliRunner().invoke(main, [*map(str, args), "--out", str(tmp_path / "one"), "--batch", "1"])
    assert one.exit_code == 0, one.output
    assert stable(tmp_path / "runs") == stable(tmp_path / "one")


def _agree_up_to_ties(a, b, ids):
    """Two runs' rounds agree as the determinism contract allows across code paths: equal until a round
    whose acquisitions differ only at a near-tie (from there the runs part ways), scores and losses
    within the tolerance, the same evaluations."""
    for x, y in zip(a, b):
        assert (x.round, x.n_labeled, x.metrics) == (y.round, y.n_labeled, y.metrics)
        assert x.training.loss_final == pytest.approx(y.training.loss_final, rel=1e-6)
        if x.acquired.ids != y.acquired.ids:
            rows = {i: r for r, i in enumerate(ids)}
            sides = [(np.array([rows[i] for i in r.acquired.ids]), np.array(r.acquired.scores)) for r in (x, y)]
            assert topk_disagreement(*sides) is None
            return
        np.testing.assert_allclose(x.acquired.scores, y.acquired.scores, rtol=1e-5, atol=1e-5)


def test_a_pool_larger_than_the_memory_budget_streams_from_the_cache(tmp_path, monkeypatch):
    from helpers import recipe

    from embedcache import cache as cache_module
    from embedcache.cache import EmbeddingCache
    from embedcache.datasets.synthetic import ambiguity_embeddings
    from embedcache.kernels import cpu

    # the budget: HDF5 chunks of 64 rows, read 128 at a time, scored 256 at a time; reads counted in rows
    monkeypatch.setattr(cache_module, "_CHUNK_BYTES", 4 << 10)
    monkeypatch.setattr(cache_module, "_BLOCK_BYTES", 8 << 10)
    x, meta = ambiguity_embeddings(n_train=900, n_val=120, dim=32, seed=3)
    cache = EmbeddingCache.write(tmp_path / "c.h5", x.astype(np.float16), meta, recipe=recipe())
    protocol = PROTOCOL.replace(budget=30)
    in_memory = run_grid(LinearExperiment(cache), protocol, STRATEGIES, [0, 1], tmp_path / "memory")
    monkeypatch.setattr(cpu, "_CHUNK_BYTES", 8 << 10)
    largest, embeddings = [0], EmbeddingCache.embeddings

    def counted(self, rows=None, dtype=None):
        out = embeddings(self, rows, dtype)
        largest[0] = max(largest[0], len(out))
        return out

    monkeypatch.setattr(EmbeddingCache, "embeddings", counted)
    streamed = run_grid(LinearExperiment(cache, in_memory=False), protocol, STRATEGIES, [0, 1], tmp_path / "disk")
    pool, evaluation = len(meta.split_indices("train")), len(meta.split_indices("val"))
    assert largest[0] <= max(256, evaluation) < pool  # never the pool at once: chunks, eval rows, labelled rows
    for a, b in zip(in_memory, streamed):
        assert a.path.name == b.path.name and b.complete
        _agree_up_to_ties(a.rounds, b.rounds, meta.ids)
    one_by_one = run_grid(LinearExperiment(cache, in_memory=False, batch=1), protocol, STRATEGIES, [0, 1],
                          tmp_path / "disk-one")
    assert len(one_by_one) == 10 and stable(tmp_path / "disk") == stable(tmp_path / "disk-one")
