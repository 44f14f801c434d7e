"""The registered strategy families in the AL loop: every name runs in linear and finetune mode, a
learner without a capability a strategy needs is refused before any file is written, options in one
syntax (parsed, recorded, part of a record's identity), state kept across rounds (Cluster-Margin's
clusters, SEALS candidates, cold-start seed sets) reproduced exactly by a resumed run, and the
learners' posterior samples."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import recipe

from embedcache.backbones import create_backbone
from embedcache.cache import EmbeddingCache
from embedcache.cli import main
from embedcache.datasets import create_dataset
from embedcache.datasets.synthetic import ambiguity_embeddings, write_image_manifest
from embedcache.errors import ConfigError
from embedcache.learners import BaseLearner, Capability
from embedcache.learners.finetune import FinetuneLearner, FinetuneOptions, default_recipe
from embedcache.learners.linear import LinearLearner
from embedcache.loop import run_al
from embedcache.protocols import get_protocol
from embedcache.records import Source, read_run, record_path
from embedcache.strategies import STRATEGIES, create_strategy, parse_strategy, strategy_spec

PROTOCOL = get_protocol("waterbirds").replace(seed_size=10, per_round=5, budget=10)
SOURCE = Source("synthetic", backbone="synthetic (test)")
#: The strategies this issue adds, each with what it needs beyond probabilities.
NEEDS = {"coreset": Capability.EMBED, "badge": Capability.GRADIENT_EMBEDDING, "typiclust": Capability.EMBED,
         "probcover": Capability.EMBED, "bald": Capability.POSTERIOR_SAMPLES,
         "batchbald": Capability.POSTERIOR_SAMPLES, "cluster-margin": Capability.EMBED,
         **{f"{mode}-bald": Capability.POSTERIOR_SAMPLES for mode in ("power", "softmax", "rank")}}


@pytest.fixture(scope="module")
def small():
    return ambiguity_embeddings(n_train=300, n_val=100, dim=16, seed=2)


def _run(small, out, strategy, seed=0, protocol=PROTOCOL, on_round=None, learner=None):
    x, meta = small
    return run_al(learner or LinearLearner(x, 2), meta, protocol, strategy, seed, out, source=SOURCE,
                  on_round=on_round)


def _acquired(run) -> list[list[str]]:
    return [r.acquired.ids for r in run.rounds]


def _killed_then_resumed(small, tmp_path, strategy, protocol=PROTOCOL, at_round=1, learner=None):
    """(uninterrupted run, run killed after round `at_round` and resumed)."""
    whole = _run(small, tmp_path / "whole", strategy, protocol=protocol, learner=learner)

    def die(record, n_rounds):
        if record.round == at_round:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(small, tmp_path / "killed", strategy, protocol=protocol, on_round=die, learner=learner)
    assert len(read_run(record_path(tmp_path / "killed", parse_strategy(strategy).text, 0)).rounds) == at_round + 1
    return whole, _run(small, tmp_path / "killed", strategy, protocol=protocol, learner=learner)


# ------------------------------------------------------------------------------------ every name, both modes
@pytest.mark.parametrize("name", STRATEGIES.names())
def test_every_strategy_runs_in_linear_mode(small, tmp_path, name):
    run = _run(small, tmp_path, name)
    assert run.complete and run.header.strategy == name and len(run.rounds) == 3
    acquired = [i for ids in _acquired(run) for i in ids]
    assert len(acquired) == 10 == len(set(acquired)) and not set(acquired) & set(run.header.seed_ids)
    assert all(np.isfinite(r.acquired.scores).all() for r in run.rounds)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_image_manifest(tmp_path_factory.mktemp("images") / "data", n=32, size=32)


@pytest.fixture(scope="module")
def finetune_learner(images):
    recipe_ = default_recipe("image", {"resize": "36", "crop": "32", "eval_resize": "32", "batch_size": "4",
                                       "schedule": "1,2"})
    return FinetuneLearner(create_dataset("manifest", images), create_backbone("timm:test_efficientnet_gn",
                                                                                weights="random"),
                           2, recipe_, FinetuneOptions(device="cpu", num_workers=0, micro_batch=4))



@pytest.mark.parametrize("name", STRATEGIES.names())
def test_every_strategy_runs_in_finetune_mode(images, finetune_learner, tmp_path, name, one_thread):
    meta = create_dataset("manifest", images).metadata
    protocol = get_protocol("custom").replace(seed_size=6, per_round=3, budget=3, groups=("place",))
    run = run_al(finetune_learner, meta, protocol, name, 0, tmp_path, source=SOURCE)
    assert run.complete and run.header.mode == "finetune" and run.header.strategy == name
    assert len(run.rounds[0].acquired.ids) == 3 and not set(run.rounds[0].acquired.ids) & set(run.header.seed_ids)


# ------------------------------------------------------------------------------------ capabilities
class ProbaOnly(BaseLearner):
    """A learner offering only the core contract (probabilities), wrapping a linear head."""

    def __init__(self, features):
        self.inner = LinearLearner(features, 2)

    def fit(self, rows, y):
        self.inner.fit(rows, y)
        return self

    def predict_proba(self, rows):
        return self.inner.predict_proba(rows)

    def describe(self):
        return {"learner": "proba-only"}


@pytest.mark.parametrize("name", sorted(NEEDS))
def test_a_strategy_needing_what_the_learner_lacks_fails_at_planning_naming_both(small, tmp_path, name):
    with pytest.raises(ConfigError, match=f"strategy '{name}' needs the {NEEDS[name]} capability.*the proba-only "
                                          "learner lacks"):
        _run(small, tmp_path / "runs", name, learner=ProbaOnly(small[0]))
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("changes, needs", [({"seed_strategy": "typiclust"}, "seed strategy 'typiclust'"),
                                            ({"candidates": "knn:20"}, "candidate restriction 'knn:20'")])
def test_seed_strategies_and_knn_candidates_need_embeddings(small, tmp_path, changes, needs):
    with pytest.raises(ConfigError, match=rf"^{needs} needs the embed capability.*proba-only"):
        _run(small, tmp_path / "runs", "random", protocol=PROTOCOL.replace(**changes), learner=ProbaOnly(small[0]))
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------------------------ options
def test_options_parse_to_one_canonical_spelling_with_defaults_left_out():
    assert parse_strategy("probcover:delta=0.30").text == "probcover:delta=0.3"
    assert parse_strategy("batchbald:samples=50,joint=20000").text == "batchbald:joint=20000,samples=50"
    assert parse_strategy("power-entropy:beta=1").text == "power-entropy"  # the default
    assert dict(parse_strategy("probcover:delta=0.3").options) == {"delta": 0.3, "alpha": 0.95, "clusters": "auto"}
    assert strategy_spec("typiclust", {"neighbors": 10}).text == "typiclust:neighbors=10"
    assert create_strategy("batchbald:samples=7").samples == 7


@pytest.mark.parametrize("text, message", [
    ("probcover:radius=1", "strategy 'probcover' has no option radius; its options: delta=auto"),
    ("probcover:delta=-1", "strategy 'probcover', option delta: expected a number > 0 or auto, got '-1'"),
    ("probcover:alpha=2", "strategy 'probcover', option alpha: expected a number > 0 and <= 1"),
    ("batchbald:samples=1.5", "strategy 'batchbald', option samples: expected an integer >= 1"),
    ("margin:beta=2", "strategy 'margin' has no option beta; it takes no options"),
    ("bald:samples", "options are written name:key=value"),
    ("bald:samples=3,samples=4", "each key once"),
])
def test_bad_options_are_config_errors_naming_strategy_and_option(text, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        parse_strategy(text)


def test_options_are_recorded_and_make_another_record(small, tmp_path):
    default = _run(small, tmp_path, "probcover")
    other = _run(small, tmp_path, "probcover:delta=3.0")
    assert default.path.name == "probcover-seed0.jsonl" and other.path.name == "probcover+delta=3.0-seed0.jsonl"
    assert other.header.strategy == "probcover:delta=3.0"
    header = json.loads(other.path.read_text().splitlines()[0])
    assert header["strategy_options"] == {"delta": 3.0, "alpha": 0.95, "clusters": "auto"}
    assert _acquired(default) != _acquired(other)
    again = _run(small, tmp_path, "probcover:delta=3")  # the same configuration, spelt otherwise: reused
    assert again.path == other.path


@pytest.fixture
def cache(tmp_path, small):
    x, meta = small
    return EmbeddingCache.write(tmp_path / "small.h5", x, meta, recipe=recipe())


def test_cli_takes_options_checks_them_at_parse_time_and_records_them(cache, tmp_path):
    out = tmp_path / "runs"
    base = ["al", "--cache", str(cache), "--out", str(out), "--seed-size", "10", "--per-round", "5", "--budget", "5"]
    bad = CliRunner().invoke(main, [*base, "--strategy", "batchbald:sample=3"])
    assert bad.exit_code == 2 and "strategy 'batchbald' has no option sample" in bad.output and not out.exists()
    result = CliRunner().invoke(main, [*base, "--strategy", "batchbald:samples=20", "--strategy", "rank-margin:beta=2"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.glob("*.jsonl")) == ["batchbald+samples=20-seed0.jsonl",
                                                           "rank-margin+beta=2.0-seed0.jsonl"]
    assert read_run(out / "batchbald+samples=20-seed0.jsonl").header.strategy_options == {"samples": 20, "joint": 10000}


def test_help_lists_the_families():
    output = CliRunner().invoke(main, ["al", "--help"]).output
    text = re.sub(r"-\s+", "-", re.sub(r"\s+", " ", output))  # help lines wrap at spaces and hyphens
    for word in ("coreset", "badge", "typiclust", "probcover", "batchbald", "power-/softmax-/rank-SCORE",
                 "cluster-margin", "--seed-strategy", "--candidates", "NAME:KEY=VALUE"):
        assert word in text, word


def test_sweep_plans_take_the_same_options(cache, tmp_path):
    from embedcache.sweep import load_plan

    plan = tmp_path / "plan.toml"
    plan.write_text(f'out = "runs"\ncaches = ["{cache.name}"]\nseeds = "0"\n'
                    'strategies = ["random", {name = "probcover", delta = 0.5}, {name = "bald", samples = 20}]\n'
                    '[protocol]\npreset = "waterbirds"\nseed_size = 10\nper_round = 5\nbudget = 5\n'
                    'seed_strategy = "typiclust"\ncandidates = "knn:30"\n')
    parsed = load_plan(plan)
    assert [s.text for s in parsed.strategies] == ["random", "probcover:delta=0.5", "bald:samples=20"]
    assert parsed.cells[0].protocol.seed_strategy == "typiclust" and parsed.cells[0].protocol.candidates == "knn:30"
    plan.write_text(plan.read_text().replace("samples = 20", "samples = 0"))
    with pytest.raises(ConfigError, match=r"strategies\[2\]: strategy 'bald', option samples: expected an integer"):
        load_plan(plan)


# ------------------------------------------------------------------------------------ state across rounds
@pytest.mark.parametrize("strategy, changes", [
    ("cluster-margin", {}),
    ("cluster-margin:clusters=4", {"candidates": "knn:15"}),
    ("margin", {"seed_strategy": "typiclust"}),
    ("least-confidence", {"seed_strategy": "probcover", "candidates": "knn:10"}),
    ("coreset", {"seed_strategy": "coreset"}),
])
def test_state_kept_across_rounds_is_rebuilt_exactly_on_resume(small, tmp_path, strategy, changes):
    protocol = PROTOCOL.replace(budget=20, **changes)
    whole, resumed = _killed_then_resumed(small, tmp_path, strategy, protocol=protocol)
    assert _acquired(resumed) == _acquired(whole) and resumed.header.seed_ids == whole.header.seed_ids
    recorded = {key: resumed.header.protocol.get(key) for key in ("seed_strategy", "candidates")}
    assert recorded == {key: getattr(protocol, key) for key in ("seed_strategy", "candidates")}


def test_cold_start_seed_sets_read_no_labels_and_are_recorded(small, tmp_path):
    x, meta = small
    runs = {method: _run(small, tmp_path / method, "random", protocol=PROTOCOL.replace(seed_strategy=method))
            for method in ("typiclust", "probcover:delta=4.0", "random", "balanced")}
    assert runs["typiclust"].header.protocol["seed_strategy"] == "typiclust"
    assert runs["typiclust"].header.protocol["seed_balanced"] is False
    assert "seed_strategy" not in runs["balanced"].header.protocol  # the protocol's seed_balanced, as before
    assert runs["balanced"].header.protocol["seed_balanced"] is True
    assert runs["random"].header.protocol["seed_balanced"] is False
    assert len({tuple(run.header.seed_ids) for run in runs.values()}) == 4
    shuffled = meta.take(np.arange(len(meta)))
    shuffled_labels = dataclasses.replace(shuffled, label=np.random.default_rng(0).permutation(shuffled.label))
    blind = run_al(LinearLearner(x, 2), shuffled_labels, PROTOCOL.replace(seed_strategy="typiclust"), "random", 0,
                   tmp_path / "blind", source=SOURCE)
    assert blind.header.seed_ids == runs["typiclust"].header.seed_ids  # labels play no part


def test_a_seed_strategy_that_needs_labels_or_does_not_exist_is_refused_before_anything_is_written(small, cache,
                                                                                                    tmp_path):
    with pytest.raises(ConfigError, match="seed_strategy: 'margin' cannot choose a seed set without labels"):
        _run(small, tmp_path / "lib", "random", protocol=PROTOCOL.replace(seed_strategy="margin"))
    assert not (tmp_path / "lib").exists()
    spelled = _run(small, tmp_path / "spelled", "random", protocol=PROTOCOL.replace(seed_strategy=" probcover:delta=4 "))
    assert spelled.header.protocol["seed_strategy"] == "probcover:delta=4.0"  # the canonical spelling is recorded
    out = tmp_path / "runs"
    for text, message in (("margin", "cannot choose a seed set without labels"), ("probcovr", "Did you mean probcover")):
        result = CliRunner().invoke(main, ["al", "--cache", str(cache), "--out", str(out), "--strategy", "random",
                                           "--seed-strategy", text])
        assert result.exit_code == 2 and "Error: --seed-strategy: " in result.output, result.output
        assert message in result.output and not out.exists()


def test_knn_candidates_restrict_what_is_scored(small, tmp_path):
    run = _run(small, tmp_path, "least-confidence", protocol=PROTOCOL.replace(candidates="knn:3", budget=15))
    whole_pool = _run(small, tmp_path / "all", "least-confidence", protocol=PROTOCOL.replace(budget=15))
    assert all(r.pool_size < w.pool_size for r, w in zip(run.rounds[:-1], whole_pool.rounds[:-1]))
    assert run.header.protocol["candidates"] == "knn:3"


def test_finetune_cluster_margin_resumes_to_the_same_record(images, finetune_learner, tmp_path, one_thread):
    meta = create_dataset("manifest", images).metadata
    protocol = get_protocol("custom").replace(seed_size=6, per_round=2, budget=4, groups=("place",))
    whole = run_al(finetune_learner, meta, protocol, "cluster-margin", 0, tmp_path / "whole", source=SOURCE)

    def die(record, n_rounds):
        if record.round == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_al(finetune_learner, meta, protocol, "cluster-margin", 0, tmp_path / "killed", source=SOURCE,
               on_round=die)
    resumed = run_al(finetune_learner, meta, protocol, "cluster-margin", 0, tmp_path / "killed", source=SOURCE)
    assert _acquired(resumed) == _acquired(whole)


# ------------------------------------------------------------------------------------ posterior samples
def test_linear_posterior_samples_center_on_the_fit_and_narrow_with_labels():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 12)).astype(np.float32)
    y = (x[:, 0] > 0).astype(int) + (x[:, 1] > 1)
    learner = LinearLearner(x, 3)
    learner.prepare(np.arange(2000), {})
    rows = np.arange(2000, 2100)
    gaps, spreads = [], []
    for n in (30, 300):
        learner.fit(np.arange(n), y[:n])
        samples = learner.posterior_proba(rows, 100, 1)
        assert samples.shape == (100, 100, 3) and np.allclose(samples.sum(axis=2), 1, atol=1e-5)
        np.testing.assert_array_equal(samples, learner.posterior_proba(rows, 100, 1))
        np.testing.assert_allclose(learner.posterior_proba(rows[:7], 100, 1), samples[:, :7], atol=1e-5)
        gaps.append(np.abs(samples.mean(axis=0) - learner.predict_proba(rows)).mean())
        spreads.append(samples.std(axis=0).mean())
    assert gaps[1] < gaps[0] / 3 and spreads[1] < spreads[0] / 2  # more labels: closer to the fit, narrower
    binary = LinearLearner(x, 2)
    binary.prepare(np.arange(2000), {})
    binary.fit(np.arange(100), (x[:100, 0] > 0).astype(int))
    bootstrap = binary.posterior_proba(rows, 4, 1, method="bootstrap")
    assert bootstrap.shape == (4, 100, 2) and np.abs(bootstrap.mean(axis=0) - binary.predict_proba(rows)).mean() < 0.1
    with pytest.raises(ConfigError, match="method: must be auto, laplace or bootstrap"):
        binary.posterior_proba(rows, 5, 0, method="mc-dropout")


# ------------------------------------------------------------------------------------ suggest
@pytest.mark.parametrize("name", STRATEGIES.names())
def test_suggest_accepts_every_strategy_and_cold_starts_with_those_needing_no_labels(tmp_path, name):
    from workflow_helpers import write_pool

    from embedcache.workflow.labels import LabelsFile, read_labels
    from embedcache.workflow.suggest import suggest
    from embedcache.workflow.workspace import Workspace

    cache, truth = write_pool(tmp_path / "pool", n=80)
    labels = LabelsFile(tmp_path / "labels.csv")
    empty = LabelsFile(tmp_path / "none.csv").read()
    for example_id in list(truth)[:12]:
        labels.label(example_id, truth[example_id], "ann")
    labelled = suggest(Workspace(cache, split="train"), read_labels(tmp_path / "labels.csv"), k=5, strategy=name)
    assert labelled.strategy == name and len({s.id for s in labelled.suggestions}) == 5
    cold = suggest(Workspace(cache, split="train"), empty, k=5, strategy=name, seed=1)
    assert cold.strategy == (name if create_strategy(name).cold_start else "random")
    assert len({s.id for s in cold.suggestions}) == 5


def test_a_seed_strategy_that_needs_labels_is_refused_before_anything_is_written(small, cache, tmp_path):
    with pytest.raises(ConfigError, match="seed_strategy: 'bald' cannot choose a seed set without labels"):
        _run(small, tmp_path / "runs", "random", protocol=PROTOCOL.replace(seed_strategy="bald"))
    assert not (tmp_path / "runs").exists()
    result = CliRunner().invoke(main, ["al", "--cache", str(cache), "--out", str(tmp_path / "cli"), "--strategy",
                                       "random", "--seed-strategy", "typiclust:radius=2"])
    assert result.exit_code == 2 and "--seed-strategy: strategy 'typiclust' has no option radius" in result.output
    assert not (tmp_path / "cli").exists()
