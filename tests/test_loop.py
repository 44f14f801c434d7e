"""The AL loop and `embedcache al`: determinism, resume, what the strategies acquire, and bad input."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import recipe
from scipy import stats

from embedcache.cache import EmbeddingCache, partial_path
from embedcache.cli import main
from embedcache.datasets.synthetic import ambiguity_embeddings
from embedcache.errors import CacheError, ConfigError
from embedcache.experiments import LinearExperiment, parse_seeds, run_grid
from embedcache.learners import BaseLearner
from embedcache.learners.hybrid import HybridLearner
from embedcache.learners.linear import LinearConfig, LinearLearner
from embedcache.loop import run_al, seed_set, stop_set
from embedcache.metadata import Metadata
from embedcache.protocols import Protocol, get_protocol
from embedcache.records import RecordError, Source, read_run, read_runs, record_path
from embedcache.stopping import measure

SMALL = get_protocol("waterbirds").replace(seed_size=20, per_round=5, budget=60)
SOURCE = Source("synthetic", backbone="synthetic (test)")


@pytest.fixture(scope="module")
def ambiguous():
    return ambiguity_embeddings(n_train=1500, n_val=600, dim=24, seed=1)


@pytest.fixture
def cache(tmp_path, ambiguous):
    x, meta = ambiguous
    return EmbeddingCache.write(tmp_path / "amb.h5", x, meta, recipe=recipe())


def _run(ambiguous, out, strategy="least-confidence", seed=0, protocol=SMALL, on_round=None, config=None):
    x, meta = ambiguous
    learner = LinearLearner(x, 2, config or LinearConfig())
    return run_al(learner, meta, protocol, strategy, seed, out, source=SOURCE, on_round=on_round)


def _stable(run) -> dict:
    """A record without wall-clock facts, for equality."""
    return {"header": dataclasses.replace(run.header, created=None, versions={}),
            "rounds": [dataclasses.replace(r, seconds=0.0) for r in run.rounds]}


@pytest.mark.parametrize("strategy", ["least-confidence", "random"])
def test_same_seed_same_records(ambiguous, tmp_path, strategy):
    a = _run(ambiguous, tmp_path / "a", strategy)
    b = _run(ambiguous, tmp_path / "b", strategy)
    assert a.complete and len(a.rounds) == SMALL.n_rounds == 13
    assert _stable(a) == _stable(b)
    assert a.rounds[-1].n_labeled == 80 and a.rounds[-1].acquired.ids == []
    assert len(set(a.labeled_ids())) == 80
    c = _run(ambiguous, tmp_path / "c", strategy, seed=1)
    assert c.header.seed_ids != a.header.seed_ids


def test_a_killed_run_resumes_to_the_same_record(ambiguous, tmp_path):
    whole = _run(ambiguous, tmp_path / "whole")

    def die_at_round_5(record, n_rounds):
        if record.round == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(ambiguous, tmp_path / "killed", on_round=die_at_round_5)
    path = record_path(tmp_path / "killed", "least-confidence", 0)
    with open(path, "a") as f:  # a kill in the middle of writing the next line
        f.write('{"type":"round","round":6,"n_lab')
    partial = read_run(path)
    assert len(partial.rounds) == 6 and not partial.complete
    resumed = _run(ambiguous, tmp_path / "killed")
    assert _stable(resumed) == _stable(whole) and resumed.rounds[6].stopping.kappa is not None  # κ across the kill


def test_random_acquires_groups_at_their_pool_rates(ambiguous, tmp_path):
    x, meta = ambiguous
    counts = dict.fromkeys(["landbird*land", "landbird*water", "waterbird*land", "waterbird*water"], 0)
    for seed in range(6):
        run = _run(ambiguous, tmp_path, "random", seed, protocol=SMALL.replace(budget=100))
        groups = run.header.pool_counts["label*place"]
        for r in run.rounds:
            for value in r.acquired.values("label*place"):
                counts[value] += 1
    observed = np.array([counts[k] for k in groups])
    expected = np.array([groups[k] for k in groups], dtype=float)
    expected = expected / expected.sum() * observed.sum()
    assert stats.chisquare(observed, expected).pvalue > 0.01


def test_least_confidence_upsamples_the_mismatched_group_and_beats_random(ambiguous, tmp_path):
    protocol = SMALL.replace(budget=80)
    worst, mismatched = {}, {}
    for strategy in ("least-confidence", "random"):
        finals, shares = [], []
        for seed in range(4):
            run = _run(ambiguous, tmp_path / strategy, strategy, seed, protocol=protocol)
            finals.append(run.rounds[-1].metrics["val"].worst_group.accuracy)
            labels = [lab for r in run.rounds for lab in r.acquired.groups["label"]]
            places = [p for r in run.rounds for p in r.acquired.groups["place"]]
            shares.append(np.mean([(lab == "waterbird") != (p == "water") for lab, p in zip(labels, places)]))
        worst[strategy], mismatched[strategy] = np.mean(finals), np.mean(shares)
    pool = run.header.pool_counts["label*place"]
    prevalence = (pool["landbird*water"] + pool["waterbird*land"]) / sum(pool.values())
    assert prevalence < 0.08
    assert mismatched["least-confidence"] > 4 * prevalence, mismatched
    assert mismatched["random"] < 2 * prevalence
    assert worst["least-confidence"] > worst["random"] + 0.1, worst


def test_seed_sets():
    labels = np.array([0] * 10 + [1] * 3 + [2] * 1)
    rows = np.arange(100, 114)
    chosen = seed_set(labels, rows, 5, True, np.random.default_rng(0))
    per_class = np.bincount(labels[chosen - 100], minlength=3)
    assert len(chosen) == 5 and per_class.tolist() == [2, 2, 1]  # the spare two go to classes that have them
    with pytest.raises(ConfigError, match="needs 2 examples of each of 3 classes, but class 2 has only 1"):
        seed_set(labels, rows, 7, True, np.random.default_rng(0))
    assert len(seed_set(labels, rows, 9, False, np.random.default_rng(0))) == 9


def test_schedule_and_overrides():
    assert Protocol(budget=12, per_round=5).schedule() == [5, 5, 2]
    assert Protocol(budget=30, per_round=(2, 4, 8)).schedule() == [2, 4, 8, 8, 8]
    amazon = get_protocol("amazon")
    assert (amazon.seed_size, amazon.per_round, amazon.budget, amazon.pool_size) == (10, 2, 90, 2000)
    iwildcam = get_protocol("iwildcam").replace(pool_size=500, metrics=("macro_f1",))
    assert iwildcam.pool_size == 500 and iwildcam.evaluation.metrics == ("macro_f1",) and iwildcam.budget == 1456
    assert parse_seeds("0-3,10,2") == [0, 1, 2, 3, 10] and parse_seeds("1,11") == [1, 11]
    with pytest.raises(ConfigError, match="seeds: 'a-b': expected numbers"):
        parse_seeds("a-b")


@pytest.mark.parametrize("change, message", [
    ({"budget": 5000}, r"seed set 20 \+ budget 5000 = 5020 examples, but the pool split 'train' has only 1500"),
    ({"eval_splits": ("test",)}, "unknown split 'test'"),
    ({"groups": ("colour",)}, "unknown group 'colour'"),
    ({"worst_group": "label*colour"}, "unknown group 'colour'"),
    ("too-balanced", r"needs \d+ examples of each of 2 classes, but class \d has only"),
])
def test_bad_protocols_fail_before_writing(ambiguous, tmp_path, change, message):
    if change == "too-balanced":  # one more example of each class than the rarer class has
        x, meta = ambiguous
        rarer = np.bincount(meta.label[meta.split_indices("train")]).min()
        change = {"seed_size": 2 * (rarer + 1), "budget": 0}
    with pytest.raises(ConfigError, match=message):
        _run(ambiguous, tmp_path, protocol=SMALL.replace(**change))
    assert not any(tmp_path.iterdir())


def test_unlabelled_pool_examples_are_refused(ambiguous, tmp_path):
    x, meta = ambiguous
    labels = meta.label.copy()
    labels[7] = -1
    broken = Metadata(meta.ids, labels, meta.split, meta.split_names, meta.groups, meta.group_names, meta.label_names)
    with pytest.raises(ConfigError, match="1 example.* no label .-1., e.g. id 's000007'"):
        run_al(LinearLearner(x, 2), broken, SMALL, "random", 0, tmp_path, source=SOURCE)


def test_a_record_of_another_configuration_is_not_overwritten(ambiguous, tmp_path):
    _run(ambiguous, tmp_path)
    path = record_path(tmp_path, "least-confidence", 0)
    before = path.read_bytes()
    with pytest.raises(RecordError, match="another run configuration .differs in: protocol"):
        _run(ambiguous, tmp_path, protocol=SMALL.replace(per_round=10))
    with pytest.raises(RecordError, match="differs in: learner"):
        _run(ambiguous, tmp_path, config=LinearConfig(C=3.0))
    other_data = ambiguity_embeddings(n_train=1500, n_val=600, dim=24, seed=2)  # same recipe, other examples
    with pytest.raises(RecordError, match="differs in: data"):
        _run(other_data, tmp_path)
    assert path.read_bytes() == before


def test_cli_runs_grid_in_parallel_identically_and_skips_finished(cache, tmp_path):
    args = ["al", "--cache", str(cache), "--protocol", "waterbirds", "--seed-size", "20", "--budget", "30",
            "--strategy", "entropy", "--strategy", "margin", "--seeds", "0-1"]
    runner = CliRunner()
    one = runner.invoke(main, [*args, "--out", str(tmp_path / "one")])
    assert one.exit_code == 0, one.output
    assert "round   7/7" in one.output and "worst" in one.output and "4 of 4 runs complete" in one.output
    two = runner.invoke(main, [*args, "--out", str(tmp_path / "two"), "--jobs", "2", "--quiet"])
    assert two.exit_code == 0, two.output
    for a, b in zip(read_runs([tmp_path / "one"]), read_runs([tmp_path / "two"])):
        assert _stable(a)["rounds"] == _stable(b)["rounds"] and a.header.seed_ids == b.header.seed_ids
        assert all(r.stopping is not None for r in a.rounds)
    again = runner.invoke(main, [*args, "--out", str(tmp_path / "one")])
    assert again.exit_code == 0 and "round" not in again.output  # nothing rerun
    header = json.loads((tmp_path / "one" / "entropy-seed0.jsonl").read_text().splitlines()[0])
    assert header["fingerprint"] == EmbeddingCache(cache).fingerprint and header["learner"]["C"] == 1.0


def test_cli_bad_input(cache, tmp_path):
    runner = CliRunner()
    base = ["al", "--cache", str(cache), "--out", str(tmp_path / "o")]
    for extra, message in [(["--strategy", "uncertainty"], "unknown strategy 'uncertainty'"),
                           (["--strategy", "random", "--protocol", "cub"], "unknown protocol 'cub'"),
                           (["--strategy", "random", "--eval-split", "id_val"], "unknown split 'id_val'"),
                           (["--strategy", "random", "--budget", "99999"], "budget 99999")]:
        result = runner.invoke(main, base + extra)
        assert result.exit_code == 2 and message in result.output, result.output  # usage errors
    incomplete = tmp_path / "partial.h5"
    x, meta = ambiguity_embeddings(n_train=50, n_val=10, dim=4)
    with EmbeddingCache.create(incomplete, meta, dim=4, dtype="float32", recipe=recipe(), dataset={}) as c:
        c.append(x[:10])
    result = runner.invoke(main, ["al", "--cache", str(partial_path(incomplete)), "--strategy", "random", "--out",
                                  str(tmp_path)])
    assert result.exit_code == 1 and "is not complete (10/60 rows written)" in result.output


def test_grid_library_call(cache, tmp_path):
    runs = run_grid(LinearExperiment(cache), SMALL.replace(budget=10), ["margin"], [3], tmp_path)
    assert len(runs) == 1 and runs[0].seed == 3 and runs[0].complete


def test_grid_never_counts_finished_records_of_another_configuration(cache, tmp_path):
    protocol = SMALL.replace(budget=10)
    run_grid(LinearExperiment(cache), protocol, ["margin"], [0], tmp_path)
    with pytest.raises(RecordError, match="differs in: learner"):
        run_grid(LinearExperiment(cache, LinearConfig(C=5.0)), protocol, ["margin"], [0], tmp_path)
    with pytest.raises(RecordError, match="differs in: protocol"):
        run_grid(LinearExperiment(cache), protocol.replace(per_round=2), ["margin"], [0], tmp_path, jobs=2)


@pytest.mark.parametrize("bad, message, fixed", [
    (["--strategy", "uncertain"], "unknown strategy 'uncertain'", ["--strategy", "entropy"]),
    (["--percentile", "place:150"], "Error: --percentile: place:150: the percentile must lie in 0..100",
     ["--percentile", "place:50"]),
    (["--percentile", "colour:10"], "unknown group 'colour'", ["--percentile", "place:10"]),
    (["--group", "colour"], "unknown group 'colour'", ["--group", "place"]),
    (["--worst-group", "label*colour"], "unknown group 'colour'", ["--worst-group", "label*place"]),
    (["--eval-split", "id_val"], "unknown split 'id_val'", ["--eval-split", "val"]),
    (["--seeds", "3-1"], "the range 3-1 runs backwards; write 1-3", ["--seeds", "1-3"]),
    (["--pool-size", "3", "--per-round", "5"], "--pool-size: 3 is smaller than the largest batch (5 per round): each "
     "round acquires its batch from the examples it scores, so the pool size must be at least 5",
     ["--pool-size", "30", "--per-round", "5"]),
    (["--budget", "99999"], "budget 99999", ["--budget", "5"]),
    (["--seed-size", "0"], "Error: --seed-size: must be at least 1", ["--seed-size", "4"]),
    (["--eval-every", "0"], "Error: --eval-every: must be at least 1", ["--eval-every", "2"]),
    (["--stop-set-size", "-1"], "Error: --stop-set-size: must be 0 (no stopping signals) or more",
     ["--stop-set-size", "0"]),
    (["--C", "0"], "'--C': 0.0 is not in the range x>0", ["--C", "2"]),
    (["--device", "cuda:99"], "Error: --device: cuda:99: ", ["--device", "cpu"]),
    (["--jobs", "0"], "'--jobs': 0 is not in the range x>=1", ["--jobs", "1"]),
])
def test_every_option_error_comes_before_the_first_byte_and_the_corrected_command_runs(cache, tmp_path, bad, message,
                                                                                       fixed):
    out = tmp_path / "runs"
    base = ["al", "--cache", str(cache), "--out", str(out), "--seed-size", "10", "--budget", "10", "--strategy",
            "random", "--quiet"]
    result = CliRunner().invoke(main, base + bad)
    error = result.output.splitlines()[-1]  # click's own usage errors show the usage above it; the library's do not
    assert result.exit_code == 2 and error.startswith("Error: ") and message in error, result.output
    assert result.output.count("\n") == 1 or result.output.startswith("Usage: "), result.output
    assert not out.exists()
    result = CliRunner().invoke(main, base + fixed)
    assert result.exit_code == 0 and "runs complete" in result.output, result.output


def _with_values(cache, rows, value) -> None:
    import h5py

    with h5py.File(cache, "r+") as f:
        for row in rows:
            f["embeddings"][row, 3] = value


@pytest.mark.parametrize("split, value", [("train", np.nan), ("val", np.inf)])
@pytest.mark.parametrize("jobs", ["1", "2"])
def test_nonfinite_features_of_the_rows_a_run_uses_are_refused_naming_ids(cache, ambiguous, tmp_path, split, value,
                                                                          jobs):
    _, meta = ambiguous
    rows = meta.split_indices(split)[[3, 8]]
    _with_values(cache, rows, value)
    out = tmp_path / "runs"
    result = CliRunner().invoke(main, ["al", "--cache", str(cache), "--out", str(out), "--seed-size", "10", "--budget",
                                       "10", "--strategy", "margin", "--strategy", "random", "--jobs", jobs])
    ids = meta.ids[rows].tolist()
    assert result.exit_code == 1 and result.output == (
        f"Error: 2 example(s) of the splits this run uses (train, val) have NaN or infinite embedding values, e.g. ids "
        f"{ids}; find them all with `embedcache info --check CACHE` and extract those examples again\n")
    assert not out.exists()
    x, _ = ambiguous
    x = x.copy()
    x[rows, 3] = value
    with pytest.raises(CacheError, match=r"2 example\(s\) of the splits"):  # the library call checks too
        run_al(LinearLearner(x, 2), meta, SMALL, "random", 0, out, source=SOURCE)
    assert not out.exists()


def test_meaningless_runs_are_refused(ambiguous, tmp_path):
    x, meta = ambiguous
    one_class = meta.label.copy()
    one_class[meta.split_indices("train")] = 1
    single = Metadata(meta.ids, one_class, meta.split, meta.split_names, meta.groups, meta.group_names,
                      meta.label_names)
    with pytest.raises(ConfigError, match="every example of the pool split 'train' has the label 'waterbird': a run "
                                          "needs at least two classes"):
        run_al(LinearLearner(x, 2), single, SMALL, "random", 0, tmp_path, source=SOURCE)
    with pytest.raises(ConfigError, match="pool_size: 3 is smaller than the largest batch"):
        SMALL.replace(pool_size=3)
    with pytest.raises(ConfigError, match="no runs to make"):
        run_grid(LinearExperiment(tmp_path / "unused.h5"), SMALL, ["random"], [], tmp_path)
    assert not any(tmp_path.iterdir())


class _ProbabilitiesOnly(BaseLearner):
    """The linear learner seen through the core contract only: probabilities, no other capability."""

    def __init__(self, inner: LinearLearner):
        self.inner = inner

    def describe(self) -> dict:
        return {"learner": "probabilities-only"}

    def prepare(self, pool, evaluation):
        self.inner.prepare(pool, evaluation)

    def fit(self, rows, y):
        self.training_ = self.inner.fit(rows, y).training_
        return self

    def predict_proba(self, rows):
        return self.inner.predict_proba(rows)


def test_a_strategy_needing_a_capability_the_ranker_lacks_fails_before_writing(ambiguous, tmp_path):
    x, meta = ambiguous
    with pytest.raises(ConfigError, match="strategy 'max-logit' needs the logits capability of the learner that "
                                          "ranks the pool, which the probabilities-only learner lacks"):
        run_al(_ProbabilitiesOnly(LinearLearner(x, 2)), meta, SMALL, "max-logit", 0, tmp_path, source=SOURCE)
    assert not any(tmp_path.iterdir())
    # a hybrid ranks with its scorer: the evaluator's capabilities do not count
    with pytest.raises(ConfigError, match="which the probabilities-only learner lacks"):
        run_al(HybridLearner(LinearLearner(x, 2), _ProbabilitiesOnly(LinearLearner(x, 2))), meta, SMALL, "max-logit",
               0, tmp_path, source=SOURCE)
    assert not any(tmp_path.iterdir())
    unfused = run_al(_ProbabilitiesOnly(LinearLearner(x, 2)), meta, SMALL, "margin", 0, tmp_path / "a", source=SOURCE)
    assert unfused.complete


def test_max_logit_is_a_strategy_and_a_hybrid_acquires_what_its_scorer_would(ambiguous, tmp_path):
    x, meta = ambiguous
    alone = _run(ambiguous, tmp_path / "linear", "max-logit")
    assert alone.complete and all(len(r.acquired.ids) == 5 for r in alone.rounds[:-1])
    hybrid = run_al(HybridLearner(_ProbabilitiesOnly(LinearLearner(x, 2)), LinearLearner(x, 2)), meta, SMALL,
                    "max-logit", 0, tmp_path / "hybrid", source=SOURCE)
    assert [r.acquired for r in hybrid.rounds] == [r.acquired for r in alone.rounds]
    assert [r.metrics for r in hybrid.rounds] == [r.metrics for r in alone.rounds]


def test_every_round_records_its_models_stopping_measures_on_a_seeded_stop_set(ambiguous, tmp_path):
    """Each round's measures are those of its model's predictions on the run's stop set (a sample of the
    pool drawn from the seed; no labels are read): replayed here round by round."""
    x, meta = ambiguous
    protocol = SMALL.replace(stop_set_size=300)
    run = _run(ambiguous, tmp_path / "a", protocol=protocol)
    assert run.header.stop_set_size == 300 and run.header.protocol["stop_set_size"] == 300
    pool = meta.split_indices("train")
    rows = stop_set(pool, 300, 0)
    assert len(rows) == 300 and np.isin(rows, pool).all() and not np.array_equal(rows, stop_set(pool, 300, 1))
    learner = LinearLearner(x, 2)
    learner.prepare(pool, {})
    row_of = {i: r for r, i in enumerate(meta.ids)}
    previous = None
    for record in run.rounds:
        labelled = [row_of[i] for i in run.labeled_ids(record.round)]
        learner.fit(labelled, meta.label[labelled])
        expected, previous = measure(learner.predict_proba(rows), previous)
        got = record.stopping
        assert (got.kappa is None) == (expected.kappa is None) == (record.round == 0)
        for field in ("kappa", "changed", "uncertainty", "max_uncertainty"):
            assert getattr(got, field) == pytest.approx(getattr(expected, field), abs=1e-6), (record.round, field)
    assert run.rounds[-1].stopping.kappa > 0.9 and 0 <= run.rounds[-1].stopping.changed < 0.05
    off = _run(ambiguous, tmp_path / "b", protocol=protocol.replace(stop_set_size=0))
    assert off.header.stop_set_size == 0 and all(r.stopping is None for r in off.rounds)
    assert [dataclasses.replace(r, seconds=0.0, stopping=None) for r in run.rounds] == \
        [dataclasses.replace(r, seconds=0.0) for r in off.rounds]  # measuring changes nothing else
    with pytest.raises(RecordError, match="differs in: protocol"):
        _run(ambiguous, tmp_path / "a", protocol=protocol.replace(stop_set_size=200))


def test_a_non_warm_start_learner_resumes_to_the_same_stopping_measures(ambiguous, tmp_path):
    """A learner that does not replay its fits on resume fits the last finished round again, for the
    predictions the next round's κ compares with."""
    config = LinearConfig(warm_start=False)
    whole = _run(ambiguous, tmp_path / "whole", config=config)

    def die_at_round_3(record, n_rounds):
        if record.round == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(ambiguous, tmp_path / "killed", on_round=die_at_round_3, config=config)
    resumed = _run(ambiguous, tmp_path / "killed", config=config)
    assert resumed.rounds[4].stopping.kappa is not None
    assert _stable(resumed) == _stable(whole)
