"""The shared conformance checks of `embedcache.testing`, run over every registry entry: every learner,
strategy, dataset adapter and backbone kind. A registered name without an example fails here."""

from __future__ import annotations

import numpy as np
import pytest

from embedcache.backbones import BACKBONES
from embedcache.datasets import DATASETS
from embedcache.learners import LEARNERS, Capability, capabilities
from embedcache.scoring import top_k
from embedcache.strategies import STRATEGIES, Strategy, create_strategy
from embedcache.testing import (check_backbone, check_dataset, check_learner, check_strategy, example_backbone,
                                example_dataset, example_learner, reference_learner)


@pytest.mark.parametrize("name", LEARNERS.names())
def test_every_learner_conforms(name, tmp_path):
    check_learner(example_learner(name, tmp_path))


@pytest.mark.parametrize("name", STRATEGIES.names())
def test_every_strategy_conforms(name):
    check_strategy(create_strategy(name))


@pytest.mark.parametrize("name", DATASETS.names())
def test_every_dataset_adapter_conforms(name, tmp_path):
    check_dataset(example_dataset(name, tmp_path))


@pytest.mark.parametrize("kind", BACKBONES.names())
def test_every_backbone_kind_conforms(kind, tmp_path):
    check_backbone(example_backbone(kind, tmp_path))


def test_registries_hold_what_the_docs_promise():
    assert LEARNERS.names() == ["finetune", "hybrid", "linear"]
    stochastic = [f"{mode}-{score}" for mode in ("power", "softmax", "rank")
                  for score in ("least-confidence", "entropy", "margin", "bald")]
    assert STRATEGIES.names() == sorted(["entropy", "least-confidence", "margin", "max-logit", "random", "coreset",
                                         "badge", "typiclust", "probcover", "bald", "batchbald", "cluster-margin",
                                         *stochastic])


def test_a_registered_name_without_an_example_fails(tmp_path, monkeypatch):
    monkeypatch.setitem(LEARNERS._entries, "newcomer", object)
    with pytest.raises(AssertionError, match="learner 'newcomer' is registered but embedcache.testing has no example"):
        example_learner("newcomer", tmp_path)
    monkeypatch.setitem(DATASETS._entries, "newcomer", object)
    with pytest.raises(AssertionError, match="dataset 'newcomer' is registered but"):
        example_dataset("newcomer", tmp_path)


def test_a_strategy_using_more_than_it_requires_fails_its_check(monkeypatch):
    class Sneaky(Strategy):
        """Declares probabilities only, but reads logits."""

        name, requires = "sneaky", frozenset({Capability.PROBA})

        def select(self, learner, candidates, labeled, k, seed):
            return top_k(-learner.predict_logits(candidates).max(axis=1), candidates, k, seed)

    monkeypatch.setitem(STRATEGIES._entries, "sneaky", Sneaky)
    with pytest.raises(AssertionError, match="does `requires` name every capability it uses"):
        check_strategy(Sneaky())


def test_reference_learner_offers_exactly_what_is_asked():
    assert capabilities(reference_learner(frozenset())) == {Capability.PROBA}
    both = reference_learner(frozenset({Capability.LOGITS, Capability.EMBED}))
    assert capabilities(both) == {Capability.PROBA, Capability.LOGITS, Capability.EMBED}
    np.testing.assert_allclose(both.predict_proba(np.arange(3)).sum(1), 1, rtol=1e-6)
