"""Conformance checks for what plugs into embedcache: learners, strategies, dataset adapters, backbones.

In the spirit of scikit-learn's `check_estimator`: every check is a plain function that takes an
instance (or an example that makes one) and raises AssertionError with a message naming what is
wrong. `check_learner`, `check_strategy`, `check_dataset` and `check_backbone` run every check of
their kind. `example_learner`, `example_dataset` and `example_backbone` build a tiny offline
instance for every registered name, and fail for a registered name they have no example of, so a
new entry cannot skip conformance. The test suite runs them over every registry entry:

    @pytest.mark.parametrize("name", LEARNERS.names())
    def test_learner_conforms(name, tmp_path):
        check_learner(example_learner(name, tmp_path))

A strategy is checked against `reference_learner(capabilities)`, a fitted stand-in that offers
exactly the capabilities asked for, so a strategy that uses more than its `requires` fails.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from embedcache.backbones import BACKBONES, Backbone, create_backbone
from embedcache.datasets import DATASETS, DatasetAdapter, create_dataset
from embedcache.datasets import synthetic
from embedcache.learners import LEARNERS
from embedcache.learners.base import CAPABILITY_PROTOCOLS, BaseLearner, Capability, Learner, capabilities
from embedcache.recipe import Recipe
from embedcache.scoring import LOGIT_SCORES, PROBABILITY_SCORES, UNCERTAINTY_SCORES, top_k, topk_disagreement
from embedcache.strategies import STRATEGIES, Strategy, declared_options, parse_strategy

_TRAINING_FACTS = ("steps", "loss_initial", "loss_final", "stopped_by")
_SHA256 = re.compile(r"[0-9a-f]{64}")
#: Class keywords the synthetic texts use, in the tiny BERT's vocabulary.
_KEYWORDS = ("great", "awful", "fine", "broken", "poor", "good")


def _json(value: Any, what: str) -> None:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise AssertionError(f"{what} must be JSON (it goes into records and caches): {e}") from None


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


# ====================================================================== learners
@dataclasses.dataclass
class LearnerExample:
    """A way to make fresh, unfitted learners of one kind, and a small task they learn: `labels` of
    every row they index, rows to fit on (`train`), rows to predict (`test`), and the accuracy on
    `test` a learner of this kind reaches at least."""

    make: Callable[[], Learner]
    labels: np.ndarray
    train: np.ndarray
    test: np.ndarray
    num_classes: int
    min_accuracy: float


def check_learner(example: LearnerExample) -> None:
    """Every learner check: the contract before fitting, fit / predict_proba, determinism, the
    training facts, and every capability the learner (and the learner it ranks with) offers."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny networks run faster on one thread
    try:
        learner = example.make()
        check_learner_contract(learner)
        learner.prepare(np.union1d(example.train, example.test), {"test": example.test})
        assert learner.fit(example.train, example.labels[example.train]) is learner, "fit must return self"
        check_training_facts(learner)
        proba = check_proba(learner, example)
        again = example.make()
        again.prepare(np.union1d(example.train, example.test), {"test": example.test})
        again_proba = again.fit(example.train, example.labels[example.train]).predict_proba(example.test)
        assert np.array_equal(proba, again_proba), \
            "two learners made and fitted alike must give the same probabilities, bit for bit"
        for subject in dict.fromkeys([learner, learner.ranker]):  # the ranker is fitted with its learner
            for capability in sorted(capabilities(subject)):
                CAPABILITY_CHECKS[capability](subject, example)
    finally:
        torch.set_num_threads(threads)


def check_learner_contract(learner: Learner) -> None:
    """The core protocol, a registered name in `describe()`, JSON descriptions, a ranker that is a learner."""
    name = type(learner).__name__
    assert isinstance(learner, Learner), f"{name} does not fulfil embedcache.learners.base.Learner"
    assert isinstance(learner.warm_start, bool), f"{name}.warm_start must be a bool"
    assert isinstance(learner.training_, Mapping), f"{name}.training_ must be a mapping (empty before fit)"
    description = learner.describe()
    assert isinstance(description, dict), f"{name}.describe() must return a dict"
    _json(description, f"{name}.describe()")
    assert description.get("learner") in LEARNERS, \
        f"{name}.describe()['learner'] must be its registered name, one of {LEARNERS.names()}"
    assert isinstance(learner.ranker, Learner), f"{name}.ranker must be a learner"
    assert Capability.PROBA in capabilities(learner), f"{name} must predict probabilities"


def check_training_facts(learner: Learner) -> None:
    """`training_` after a fit: the facts a round record keeps, losses finite and falling."""
    facts = learner.training_
    missing = [key for key in _TRAINING_FACTS if key not in facts]
    assert not missing, f"training_ lacks {missing} after fit"
    _json(dict(facts), "training_")
    assert np.isfinite([facts["loss_initial"], facts["loss_final"]]).all(), f"non-finite losses in {dict(facts)}"
    assert facts["loss_final"] < facts["loss_initial"], f"the loss did not fall during fit: {dict(facts)}"


def check_proba(learner: Learner, example: LearnerExample) -> np.ndarray:
    """`predict_proba`: float32 `[n, C]` rows that are distributions, as accurate as the example asks."""
    proba = learner.predict_proba(example.test)
    assert proba.shape == (len(example.test), example.num_classes), \
        f"predict_proba gave shape {proba.shape}, expected {(len(example.test), example.num_classes)}"
    assert proba.dtype == np.float32, f"predict_proba gave {proba.dtype}, expected float32"
    assert np.isfinite(proba).all() and (proba >= 0).all() and (proba <= 1).all(), "probabilities outside [0, 1]"
    np.testing.assert_allclose(proba.sum(axis=1), 1, atol=1e-5, err_msg="probabilities must sum to 1 per row")
    accuracy = float((proba.argmax(axis=1) == example.labels[example.test]).mean())
    assert accuracy >= example.min_accuracy, f"accuracy {accuracy:.3f} on the example, below {example.min_accuracy}"
    return proba


def check_logits(learner, example: LearnerExample) -> None:
    """`predict_logits`: float32 `[n, C]` whose softmax is `predict_proba` (-inf for impossible classes)."""
    logits = learner.predict_logits(example.test)
    assert logits.shape == (len(example.test), example.num_classes), f"predict_logits gave shape {logits.shape}"
    assert logits.dtype == np.float32, f"predict_logits gave {logits.dtype}, expected float32"
    assert not np.isnan(logits).any() and not np.isposinf(logits).any(), "logits hold NaN or +inf"
    np.testing.assert_allclose(_softmax(logits.astype(np.float64)), learner.predict_proba(example.test), atol=1e-5,
                               err_msg="softmax(predict_logits) must equal predict_proba")


def check_fused_ranking(learner, example: LearnerExample) -> None:
    """`top_k` for every uncertainty score agrees with scoring the learner's outputs, up to ties, and
    gives the same bits twice."""
    candidates = np.sort(example.test)
    k = max(1, len(candidates) // 3)
    for name in UNCERTAINTY_SCORES:
        if name in LOGIT_SCORES:
            if Capability.LOGITS not in capabilities(learner):
                continue  # nothing to compare with
            reference = top_k(LOGIT_SCORES[name](learner.predict_logits(candidates)), candidates, k, seed=3)
        else:
            reference = top_k(PROBABILITY_SCORES[name](learner.predict_proba(candidates)), candidates, k, seed=3)
        fused = learner.top_k(candidates, name, k, 3)
        why = topk_disagreement(fused, reference)
        assert why is None, f"top_k(..., {name!r}) disagrees with scoring the learner's outputs: {why}"
        again = learner.top_k(candidates, name, k, 3)
        assert np.array_equal(fused[0], again[0]) and np.array_equal(fused[1], again[1]), \
            f"top_k(..., {name!r}) gave other results when asked twice"


def check_embed(learner, example: LearnerExample) -> None:
    """`embed`: finite float32 `[n, D]`, a row's vector independent of the rows embedded with it."""
    rows = np.sort(example.test)
    vectors = learner.embed(rows)
    assert vectors.ndim == 2 and len(vectors) == len(rows) and vectors.shape[1] > 0, f"embed gave {vectors.shape}"
    assert vectors.dtype == np.float32 and np.isfinite(vectors).all(), "embed must give finite float32 vectors"
    np.testing.assert_allclose(learner.embed(rows[::-1])[::-1], vectors, rtol=1e-4, atol=1e-5,
                               err_msg="a row's embedding must not depend on the rows embedded with it")


def check_gradient_embedding(learner, example: LearnerExample) -> None:
    """(residual, inputs): residual = p - onehot(argmax p), inputs = [embed(rows), 1] when the learner embeds."""
    rows = example.test
    residual, inputs = learner.gradient_embedding(rows)
    proba = learner.predict_proba(rows)
    expected = proba.astype(np.float64)
    expected[np.arange(len(rows)), proba.argmax(axis=1)] -= 1.0
    assert residual.shape == proba.shape, f"the residual has shape {residual.shape}, the probabilities {proba.shape}"
    np.testing.assert_allclose(residual, expected, atol=1e-6, err_msg="residual must be p - onehot(argmax p)")
    assert inputs.ndim == 2 and len(inputs) == len(rows), f"inputs have shape {inputs.shape}"
    assert (inputs[:, -1] == 1).all(), "the last column of the inputs is the bias's constant input, 1"
    if Capability.EMBED in capabilities(learner):
        np.testing.assert_allclose(inputs[:, :-1], learner.embed(rows), rtol=1e-4, atol=1e-5,
                                   err_msg="inputs must be [embed(rows), 1]")


def check_posterior_samples(learner, example: LearnerExample) -> None:
    """`posterior_proba`: `[S, n, C]` distributions, the same bits for the same seed."""
    rows = example.test
    samples = learner.posterior_proba(rows, 4, 0)
    assert samples.shape == (4, len(rows), example.num_classes), f"posterior_proba gave shape {samples.shape}"
    assert np.isfinite(samples).all(), "posterior samples hold NaN or inf"
    np.testing.assert_allclose(samples.sum(axis=2), 1, atol=1e-5, err_msg="each sample's rows must sum to 1")
    assert np.array_equal(samples, learner.posterior_proba(rows, 4, 0)), "posterior samples must follow the seed"


#: The check of each capability, run on a fitted learner that offers it.
CAPABILITY_CHECKS: dict[Capability, Callable[[Any, LearnerExample], Any]] = {
    Capability.PROBA: check_proba,
    Capability.LOGITS: check_logits,
    Capability.FUSED_RANKING: check_fused_ranking,
    Capability.EMBED: check_embed,
    Capability.GRADIENT_EMBEDDING: check_gradient_embedding,
    Capability.POSTERIOR_SAMPLES: check_posterior_samples,
}


def gaussian_task(classes: int, n: int = 600, dim: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(features float32 [n, dim], labels [n]): the first `classes` coordinates carry the label, on noise of
    uneven scale and offset (what a linear head must standardise)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = rng.normal(size=(n, dim)) * rng.uniform(0.5, 3, dim) + rng.normal(size=dim) * 2
    x[:, :classes] += np.eye(classes)[y] * 3
    return x.astype(np.float32), y


def _linear_example(folder: Path) -> LearnerExample:
    from embedcache.learners.linear import LinearLearner

    x, y = gaussian_task(4)
    return LearnerExample(lambda: LinearLearner(x, 5), y, np.arange(200), np.arange(300, 400), 5, 0.6)


def _finetune_parts(folder: Path):
    """A tiny random-init timm GroupNorm model on 64 class-coloured 32-pixel images of 4 classes (of 5)."""
    from embedcache.learners.finetune import FinetuneLearner, FinetuneOptions, default_recipe

    data = create_dataset("manifest", synthetic.write_image_manifest(folder / "images", n=64, size=32, num_classes=4))
    recipe = default_recipe("image", {"resize": "36", "crop": "32", "eval_resize": "32", "batch_size": "8",
                                      "schedule": "0,20"})
    options = FinetuneOptions(device="cpu", num_workers=0)

    def make() -> FinetuneLearner:
        return FinetuneLearner(data, create_backbone("timm:test_efficientnet_gn", weights="random"), 5, recipe, options)

    rows = np.arange(64)
    train = rows % 8 < 4  # every class in both halves
    return make, data.metadata.label, rows[train], rows[~train]


def _finetune_example(folder: Path) -> LearnerExample:
    make, labels, train, test = _finetune_parts(folder)
    return LearnerExample(make, labels, train, test, 5, 0.6)


def _hybrid_example(folder: Path) -> LearnerExample:
    """Finetuned evaluation, ranked by a linear head on features that carry the dataset's labels."""
    from embedcache.learners.hybrid import HybridLearner
    from embedcache.learners.linear import LinearLearner

    make_finetune, labels, train, test = _finetune_parts(folder)
    rng = np.random.default_rng(1)
    features = rng.normal(size=(len(labels), 16)).astype(np.float32)
    features[:, :5] += 3 * np.eye(5, dtype=np.float32)[labels]
    return LearnerExample(lambda: HybridLearner(make_finetune(), LinearLearner(features, 5), "example-features"),
                          labels, train, test, 5, 0.6)


_LEARNER_EXAMPLES: dict[str, Callable[[Path], LearnerExample]] = {
    "linear": _linear_example,
    "finetune": _finetune_example,
    "hybrid": _hybrid_example,
}


def _example(examples: Mapping[str, Callable], registry, name: str, folder: str | Path):
    if name not in examples:
        raise AssertionError(f"{registry.kind} {name!r} is registered but embedcache.testing has no example of it; "
                             "add one, so it is checked like every other")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return examples[name](folder)


def example_learner(name: str, folder: str | Path) -> LearnerExample:
    """A tiny example of the learner registered as `name` (data written under `folder`)."""
    return _example(_LEARNER_EXAMPLES, LEARNERS, name, folder)


# ====================================================================== strategies
class _TableLearner(BaseLearner):
    """A fitted stand-in whose outputs are fixed seeded tables over its rows."""

    def __init__(self, n_rows: int, num_classes: int, dim: int, seed: int):
        rng = np.random.default_rng(seed)
        self.logits = (2 * rng.normal(size=(n_rows, num_classes))).astype(np.float32)
        self.logits[::7] = self.logits[0]  # planted ties
        self.proba = _softmax(self.logits.astype(np.float64)).astype(np.float32)
        self.features = rng.normal(size=(n_rows, dim)).astype(np.float32)
        self.training_ = {"steps": 0, "loss_initial": 0.0, "loss_final": 0.0, "stopped_by": "fixed"}

    def fit(self, rows, y):
        return self

    def describe(self) -> dict:
        return {"learner": "reference"}

    def predict_proba(self, rows):
        return self.proba[rows]


def _predict_logits(self, rows):
    return self.logits[rows]


def _top_k(self, candidates, strategy, k, seed):
    outputs = self.logits if strategy in LOGIT_SCORES else self.proba
    score = LOGIT_SCORES.get(strategy) or PROBABILITY_SCORES[strategy]
    candidates = np.asarray(candidates, dtype=np.int64)
    return top_k(score(outputs[candidates]), candidates, k, seed)


def _embed(self, rows):
    return self.features[rows]


def _gradient_embedding(self, rows):
    residual = self.proba[rows].copy()
    residual[np.arange(len(residual)), residual.argmax(axis=1)] -= 1.0
    return residual, np.concatenate([self.features[rows], np.ones((len(residual), 1), np.float32)], axis=1)


def _posterior_proba(self, rows, n_samples, seed):
    noise = np.random.default_rng(seed).normal(size=(n_samples, *self.logits.shape)).astype(np.float32)
    logits = self.logits[rows][None] + noise[:, rows]
    shifted = np.exp(logits - logits.max(axis=2, keepdims=True))
    return shifted / shifted.sum(axis=2, keepdims=True)


_CAPABILITY_METHODS: dict[Capability, dict[str, Callable]] = {
    Capability.PROBA: {},  # the core contract: every learner has it
    Capability.LOGITS: {"predict_logits": _predict_logits},
    Capability.FUSED_RANKING: {"top_k": _top_k},
    Capability.EMBED: {"embed": _embed},
    Capability.GRADIENT_EMBEDDING: {"gradient_embedding": _gradient_embedding},
    Capability.POSTERIOR_SAMPLES: {"posterior_proba": _posterior_proba},
}


def reference_learner(offers=frozenset(Capability), n_rows: int = 500, num_classes: int = 3, dim: int = 8,
                      seed: int = 1) -> Learner:
    """A fitted learner over `n_rows` rows whose outputs are seeded tables (with planted ties),
    offering exactly the capabilities `offers` besides the core contract."""
    methods = {name: method for capability in offers for name, method in _CAPABILITY_METHODS[capability].items()}
    cls = type("ReferenceLearner", (_TableLearner,), methods)
    learner = cls(n_rows, num_classes, dim, seed)
    assert capabilities(learner) == frozenset(offers) | {Capability.PROBA}
    return learner


def check_strategy(strategy: Strategy) -> None:
    """A registered strategy that declares what it needs and picks valid, seeded, order-free selections
    from a learner offering exactly that (and from one offering everything)."""
    assert isinstance(strategy, Strategy), f"{type(strategy).__name__} must subclass embedcache.strategies.Strategy"
    name = strategy.name
    assert name in STRATEGIES, f"strategy {name!r} is not registered in STRATEGIES"
    assert type(STRATEGIES.get(name)()) is type(strategy), f"STRATEGIES[{name!r}] makes another class"
    assert isinstance(strategy.requires, frozenset) and all(isinstance(c, Capability) for c in strategy.requires), \
        f"{name}.requires must be a frozenset of Capability"
    assert parse_strategy(name).text == name, f"strategy {name!r}: its defaults must spell as the bare name"
    for option in declared_options(name):
        assert option.meaning, f"strategy {name!r}, option {option.name}: say what it means"
        assert option.parse(option.text(option.default), name) == option.default, \
            f"strategy {name!r}, option {option.name}: the default {option.default!r} does not read back"
    labeled = np.arange(0, 500, 25)
    candidates = np.sort(np.random.default_rng(2).choice(np.setdiff1d(np.arange(500), labeled), 200, replace=False))
    for offers in (strategy.requires, frozenset(CAPABILITY_PROTOCOLS)):
        learner = reference_learner(offers)
        what = f"strategy {name!r} with a learner offering {sorted(offers) or 'only probabilities'}"
        try:
            rows, scores = strategy.select(learner, candidates, labeled, 17, 5)
        except AttributeError as e:
            raise AssertionError(f"{what} failed ({e}): does `requires` name every capability it uses?") from None
        rows, scores = np.asarray(rows), np.asarray(scores)
        assert rows.dtype.kind == "i", f"{what}: rows must be integers, got {rows.dtype}"
        assert len(rows) == 17 == len(set(rows.tolist())), f"{what}: 17 distinct rows expected, got {rows.tolist()}"
        assert set(rows.tolist()) <= set(candidates.tolist()), f"{what}: chose rows that are not candidates"
        assert scores.shape == rows.shape and np.isfinite(scores).all(), f"{what}: one finite score per row expected"
        again = strategy.select(learner, candidates, labeled, 17, 5)
        assert np.array_equal(rows, again[0]) and np.array_equal(scores, again[1]), f"{what}: not deterministic"
        reordered = strategy.select(learner, candidates[::-1].copy(), labeled, 17, 5)
        assert np.array_equal(rows, reordered[0]), f"{what}: the order candidates come in changed the selection"
        everything = strategy.select(learner, candidates, labeled, 500, 5)[0]
        assert sorted(np.asarray(everything).tolist()) == candidates.tolist(), \
            f"{what}: k above the number of candidates must return them all"


# ====================================================================== dataset adapters
def check_dataset(adapter: DatasetAdapter) -> None:
    """A registered adapter whose metadata is valid, whose examples load, and whose description is
    JSON and reproducible from `create_dataset(name, root, **options())`."""
    name = adapter.name
    assert isinstance(adapter, DatasetAdapter), f"{type(adapter).__name__} must subclass DatasetAdapter"
    assert name in DATASETS and DATASETS.get(name) is type(adapter), f"dataset {name!r} is not registered as itself"
    assert adapter.modality in ("image", "text"), f"dataset {name!r}: modality {adapter.modality!r}"
    from PIL import Image

    meta = adapter.metadata
    n = len(meta)
    assert n > 0 and len(adapter.inputs) == n, f"dataset {name!r}: {n} examples, {len(adapter.inputs)} inputs"
    meta.validate(f"dataset {name!r}")
    assert meta.split_names, f"dataset {name!r} has no split names"
    assert adapter.missing_files() == [], f"dataset {name!r}: files missing for rows {adapter.missing_files()[:5]}"
    for i in sorted({0, n // 2, n - 1}):
        item = adapter.load(i)
        if adapter.modality == "text":
            assert isinstance(item, str), f"dataset {name!r}: example {i} loads as {type(item).__name__}, not str"
        else:
            assert isinstance(item, Image.Image) and item.mode == "RGB", \
                f"dataset {name!r}: example {i} is not an RGB image"
        assert str(meta.ids[i]) in adapter.location(i), f"dataset {name!r}: location({i}) does not name its id"
    description = adapter.describe()
    _json(description, f"dataset {name!r} describe()")
    assert description["name"] == name and description["rows"] == n, f"dataset {name!r}: describe() {description}"
    assert _SHA256.fullmatch(description["manifest_sha256"]), f"dataset {name!r}: manifest_sha256 is no sha256"
    _json(adapter.options(), f"dataset {name!r} options()")
    again = create_dataset(name, adapter.root, **adapter.options()).describe()
    assert again == description, f"dataset {name!r}: create_dataset(name, root, **options()) describes it otherwise"


def _waterbirds_variant(folder: Path) -> DatasetAdapter:
    from embedcache.datasets.waterbirds_variant import WaterbirdsBuild, build_waterbirds

    cub, places = synthetic.write_cub_and_places(folder / "sources", per_species=3, backgrounds=24)
    build_waterbirds(WaterbirdsBuild(cub, places, folder / "built", matched=0.8, seed=0, threads=1))
    return create_dataset("waterbirds-variant", folder / "built")


_DATASET_EXAMPLES: dict[str, Callable[[Path], DatasetAdapter]] = {
    "amazon": lambda folder: create_dataset("amazon", synthetic.write_amazon(folder, n=10)),
    "imagefolder": lambda folder: create_dataset("imagefolder", synthetic.write_image_folder(folder / "photos")),
    "iwildcam": lambda folder: create_dataset("iwildcam", synthetic.write_iwildcam(folder, n=10)),
    "jsonl": lambda folder: create_dataset("jsonl", synthetic.write_text_jsonl(folder / "texts.jsonl", n=8)),
    "manifest": lambda folder: create_dataset("manifest", synthetic.write_image_manifest(folder / "images", n=6)),
    "treeperson": lambda folder: create_dataset("treeperson", synthetic.write_treeperson(folder / "tp", per_group=1)),
    "waterbirds": lambda folder: create_dataset("waterbirds", synthetic.write_waterbirds(folder, per_group=1)),
    "waterbirds-variant": _waterbirds_variant,
}


def example_dataset(name: str, folder: str | Path) -> DatasetAdapter:
    """A tiny copy of the layout the adapter registered as `name` reads, written under `folder`, opened."""
    return _example(_DATASET_EXAMPLES, DATASETS, name, folder)


# ====================================================================== backbones
def _example_inputs(modality: str) -> list:
    """Two inputs of different sizes (images) or lengths (texts), so resizing and padding are exercised."""
    if modality == "text":
        return ["alpha great", "bravo charlie awful delta echo foxtrot"]
    from PIL import Image

    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((30, 40), (32, 32))]


def check_backbone(backbone: Backbone, inputs: list | None = None) -> None:
    """A registered backbone kind with a JSON recipe, whose features of `inputs` (default: two tiny
    ones of its modality) are finite `[B, num_features]`, deterministic, and independent of batchmates."""
    spec = backbone.spec
    kind = spec.partition(":")[0]
    assert isinstance(backbone, Backbone), f"{spec}: must subclass embedcache.backbones.Backbone"
    assert kind in BACKBONES and BACKBONES.get(kind) is type(backbone), f"{spec}: kind {kind!r} is not registered"
    assert backbone.modality in ("image", "text"), f"{spec}: modality {backbone.modality!r}"
    assert isinstance(backbone.num_features, int) and backbone.num_features > 0, f"{spec}: num_features"
    recipe = backbone.recipe("float32")
    assert isinstance(recipe, Recipe), f"{spec}: recipe() must return a Recipe"
    _json(recipe.to_dict(), f"{spec} recipe")
    assert backbone.recipe("float32").fingerprint == recipe.fingerprint, f"{spec}: the recipe's fingerprint varies"
    assert backbone.recipe("float16").fingerprint != recipe.fingerprint, f"{spec}: the storage dtype is not in it"
    inputs = _example_inputs(backbone.modality) if inputs is None else inputs
    backbone.model.eval()

    def features(items: list) -> np.ndarray:
        batch = backbone.batch_to(backbone.collate([backbone.transform(x) for x in items]), torch.device("cpu"))
        with torch.inference_mode():
            return backbone.features(batch).float().numpy()

    together = features(inputs)
    assert together.shape == (len(inputs), backbone.num_features), \
        f"{spec}: features of {len(inputs)} inputs have shape {together.shape}, expected [B, {backbone.num_features}]"
    assert np.isfinite(together).all(), f"{spec}: non-finite features"
    assert np.array_equal(together, features(inputs)), f"{spec}: features differ between two identical calls"
    for i, item in enumerate(inputs):
        np.testing.assert_allclose(features([item])[0], together[i], rtol=1e-4, atol=1e-5,
                                   err_msg=f"{spec}: an input's features depend on the inputs batched with it")


def write_tiny_bert(folder: str | Path, seed: int = 0) -> Path:
    """A 2-layer, 32-wide BERT built from a config (random weights), with a word-level vocabulary of
    `embedcache.datasets.synthetic`'s filler words and class keywords: a local `hf:` model folder made offline."""
    from transformers import BertConfig, BertModel

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *synthetic.FILLER_WORDS, *_KEYWORDS]
    (folder / "vocab.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    config = BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=37, max_position_embeddings=64)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        BertModel(config).save_pretrained(folder)
    return folder


_BACKBONE_EXAMPLES: dict[str, Callable[[Path], Backbone]] = {
    "timm": lambda folder: create_backbone("timm:test_resnet", weights="random", resolution=32),
    "hf": lambda folder: create_backbone(f"hf:{write_tiny_bert(folder / 'tiny-bert')}"),
}


def example_backbone(kind: str, folder: str | Path) -> Backbone:
    """A tiny backbone of the kind registered as `kind` (a random-init timm test model, a tiny BERT)."""
    return _example(_BACKBONE_EXAMPLES, BACKBONES, kind, folder)
