"""Finetune mode, the paper's protocol: every round the whole backbone plus a linear head is trained
on the labelled set, starting again from the pretrained (or, for the control, random-init)
weights, then evaluation splits and pool are scored by the finetuned model in eval mode.

The recipes follow the paper's Appendix B and its released code (itself Google's BiT code):

* `BitRecipe` (images, BiT-HyperRule): SGD momentum 0.9, no weight decay, base LR 0.003; linear
  warm-up LR·(step+1)/100 over steps 0-99, then ×0.1 *after* steps 200, 300 and 400 (the released
  `get_lr` divides when `boundary < step`, so step 200 still runs at 0.003 and step 201 at 0.0003);
  training stops after 500 steps. Labelled sets of ≥ 20k examples use (500, 3000, 6000, 9000,
  10000), of ≥ 500k (500, 6000, 12000, 18000, 20000). Batch 32 as gradient accumulation over
  micro-batches (paper: 8); a zero-initialised head over all the dataset's classes; train
  transform square resize 512 → random 480 crop → horizontal flip, eval transform square resize
  480, both normalised with mean = std = 0.5. (BiT's rule uses 160 → 128 for images under 96×96
  pixels; the paper's datasets are all larger, so 512/480 are the defaults.)
* `TextRecipe` (RoBERTa-Large): AdamW, LR 1e-6 (constant), weight decay 0.1, batch 2.
* Early stopping (`stop`): by default (`loss_ratio`, the paper's rule) a fit ends once a step's
  training loss (the mean over its whole batch) falls below `loss_ratio` (0.001) × the first
  step's loss. `val_plateau` is the rule the paper's Appendix D compares it with: every
  `plateau_every` optimizer steps the model is evaluated on the labelled split `plateau_split`
  (default val), and the fit ends the `plateau_patience`-th (default: the fifth) time that split's
  accuracy did not increase over the evaluation before it (times are counted, not reset; the
  model is kept as it is then, no earlier weights are restored). `none` trains for the whole step
  budget. The step budget (BiT: the schedule's last step; text: `max_steps`) ends every fit that
  no rule stopped earlier. The paper does not say how often it evaluated, nor whether its plateau
  runs also ended at step 500: `plateau_every` defaults to 10, and a longer `schedule` lifts the cap.

Deliberate differences from the released code, each for reproducibility:
* A step's batch is exactly `batch_size` examples, drawn from shuffled epochs laid end to end
  (the released loader ends each epoch with a short micro-batch weighted like a full one).
* The loss-ratio rule compares whole-batch losses (the released stopper compared the loss of
  each step's last micro-batch).
* The optimizer is created afresh every round (the released code kept one SGD instance, so the
  momentum buffer of round r-1's last step leaked into round r's first steps).

Randomness: a fit's shuffling, crops, flips, head init (text) and dropout come from one seed
hashed from `train_seed` and the labelled rows, so a round trains identically whether the run is
fresh or resumed, and in one process or several (crops and flips are drawn per *global* batch).
Records resume at round granularity; a round restarts from the starting weights, so the record
line of each finished round is all the checkpoint a killed run needs (see `FinetuneLearner`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import typing
from typing import Any, Callable, ClassVar

import numpy as np
import torch

from embedcache.backbones import Backbone, ImagePreprocess
from embedcache.datasets import DatasetAdapter
from embedcache.errors import ConfigError, DatasetError
from embedcache.learners import distributed
from embedcache.learners.base import BaseLearner, fit_arguments, register_learner
from embedcache.loading import default_workers, example_loader
from embedcache.recipe import Recipe

#: progress(phase, done, total): phase "train" counts optimizer steps, "predict" examples scored,
#: "validate" examples of a plateau check (`stop=val_plateau`); each pass starts with done = 0.
Progress = Callable[[str, int, int], None]
AMP_CHOICES = ("auto", "bf16", "none")
#: Early-stop rules of a recipe's `stop` field (the step budget ends every fit that none stopped).
STOP_RULES = ("loss_ratio", "val_plateau", "none")
#: The early-stop fields, left out of a recipe's JSON form at their defaults (records made before they existed).
_STOP_FIELDS = ("stop", "plateau_split", "plateau_patience", "plateau_every")


def bit_schedule(n_labeled: int) -> tuple[int, ...]:
    """BiT-HyperRule step boundaries for a labelled set of n examples: (end of warm-up, three
    decays, stop)."""
    if n_labeled < 20_000:
        return (100, 200, 300, 400, 500)
    if n_labeled < 500_000:
        return (500, 3000, 6000, 9000, 10_000)
    return (500, 6000, 12_000, 18_000, 20_000)


def staircase_lr(step: int, supports: tuple[int, ...], base_lr: float) -> float | None:
    """The learning rate of 0-based optimizer step `step`, or None when training is over: linear
    warm-up base·(step+1)/supports[0], then ÷10 for every boundary in supports[1:] below `step`,
    stop at supports[-1] (the released code's `get_lr`)."""
    if step < supports[0]:
        return base_lr * (step + 1) / supports[0]
    if step >= supports[-1]:
        return None
    lr = base_lr
    for boundary in supports[1:]:
        if boundary < step:
            lr /= 10
    return lr


def _parse_field(hint, text: str, key: str):
    """A recipe field's value from its CLI text, by the field's type."""
    args = typing.get_args(hint)
    if type(None) in args:
        if text.lower() == "none":
            return None
        hint = next(a for a in args if a is not type(None))
    try:
        if typing.get_origin(hint) is tuple:
            return tuple(typing.get_args(hint)[0](v) for v in text.split(","))
        if hint is bool:
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError(text)
            return text.lower() in ("true", "1")
        return hint(text)
    except ValueError:
        raise ConfigError(f"{key}={text}: expected {getattr(hint, '__name__', hint)}"
                          + (" values separated by commas" if typing.get_origin(hint) is tuple else ""),
                          param="recipe_options") from None


@dataclasses.dataclass(frozen=True)
class _StopRule:
    """The early-stop rule both recipes take (module docstring): the paper's loss ratio, Appendix D's
    validation plateau (on `plateau_split`, checked every `plateau_every` steps, stopping at the
    `plateau_patience`-th check that does not improve), or none (the step budget alone)."""

    stop: str = "loss_ratio"
    plateau_split: str = "val"
    plateau_patience: int = 5
    plateau_every: int = 10


class _RecipeBase(_StopRule):
    """What both recipes share: a name, CLI overrides, the stop rules and a JSON form."""

    name: ClassVar[str]
    modality: ClassVar[str]
    #: `stopped_by` when the step budget, not an early-stop rule, ended training.
    end_rule: ClassVar[str]
    batch_size: int
    loss_ratio: float
    zero_head: bool

    def replace(self, options: dict[str, str]):
        """A copy with fields set from `KEY=VALUE` texts (the CLI's --recipe)."""
        names = [f.name for f in dataclasses.fields(self) if f.name not in _STOP_FIELDS] + list(_STOP_FIELDS)
        hints = typing.get_type_hints(type(self))
        changes = {}
        for key, text in options.items():
            if key not in names:
                raise ConfigError(f"{key}: the {self.name} recipe has no such field; it has {', '.join(names)}",
                                  param="recipe_options")
            changes[key] = _parse_field(hints[key], text, key)
        return dataclasses.replace(self, **changes)

    def _check_common(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {self.batch_size}", param="recipe_options")
        if not 0 < self.loss_ratio < 1:
            raise ConfigError(f"loss_ratio must be in (0, 1), got {self.loss_ratio}", param="recipe_options")
        if self.stop not in STOP_RULES:
            raise ConfigError(f"stop={self.stop}: choose one of {', '.join(STOP_RULES)}", param="recipe_options")
        if self.plateau_patience < 1 or self.plateau_every < 1:
            raise ConfigError(f"plateau_patience ({self.plateau_patience}) and plateau_every ({self.plateau_every}) "
                              "must be at least 1", param="recipe_options")

    def to_dict(self) -> dict:
        """The recipe as the run header records it. `stop` is written when it is not the paper's
        loss_ratio, and the plateau fields only with stop=val_plateau: records made before these
        fields existed (all loss_ratio) keep their identity and resume."""
        fields = dataclasses.asdict(self)
        if self.stop != "val_plateau":
            fields = {k: v for k, v in fields.items() if k not in _STOP_FIELDS or (k == "stop" and v != "loss_ratio")}
        return {"name": self.name, **fields}


@dataclasses.dataclass(frozen=True)
class BitRecipe(_RecipeBase):
    """BiT-HyperRule finetuning (images). `schedule`: (warm-up end, decay boundaries..., stop) in
    optimizer steps; None picks BiT's by labelled-set size (`bit_schedule`). `resize` → random
    `crop` (+ flip) for training, square `eval_resize` for evaluation and scoring. `stop` and the
    `plateau_*` fields: the early-stop rule (module docstring)."""

    base_lr: float = 0.003
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 32
    schedule: tuple[int, ...] | None = None
    loss_ratio: float = 1e-3
    zero_head: bool = True
    resize: int = 512
    crop: int = 480
    eval_resize: int = 480
    flip: bool = True
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)

    name: ClassVar[str] = "bit"
    modality: ClassVar[str] = "image"
    end_rule: ClassVar[str] = "schedule"

    def __post_init__(self) -> None:
        self._check_common()
        if self.schedule is not None:
            s = self.schedule
            if len(s) < 2 or s[0] < 0 or s[-1] < 1 or any(b <= a for a, b in zip(s[1:], s[2:])) or s[1] < s[0]:
                raise ConfigError(f"schedule={','.join(map(str, s))}: expected increasing step boundaries "
                                  "(warm-up end, decays..., stop), e.g. 100,200,300,400,500", param="recipe_options")
        if not 0 < self.crop <= self.resize or self.eval_resize < 1:
            raise ConfigError(f"need 0 < crop ({self.crop}) <= resize ({self.resize}) and eval_resize >= 1",
                              param="recipe_options")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ConfigError("mean and std need three values each, std > 0", param="recipe_options")

    def supports(self, n_labeled: int) -> tuple[int, ...]:
        return self.schedule or bit_schedule(n_labeled)

    def learning_rate(self, step: int, n_labeled: int) -> float | None:
        return staircase_lr(step, self.supports(n_labeled), self.base_lr)

    def step_budget(self, n_labeled: int) -> int:
        return self.supports(n_labeled)[-1]

    def optimizer(self, params) -> torch.optim.Optimizer:
        return torch.optim.SGD(params, lr=self.base_lr, momentum=self.momentum, weight_decay=self.weight_decay)

    def eval_preprocess(self) -> ImagePreprocess:
        """BiT's eval transform: square resize, no crop."""
        return ImagePreprocess(resolution=self.eval_resize, resize=self.eval_resize, resize_mode="square",
                               crop="none", mean=self.mean, std=self.std)


@dataclasses.dataclass(frozen=True)
class TextRecipe(_RecipeBase):
    """The paper's RoBERTa-Large recipe: AdamW at a constant LR 1e-6, weight decay 0.1 (on every
    parameter, AdamW's default), batch 2, the loss-ratio stop.

    The paper prints "AdamW with default hyperparameters (β1 = 0.99, β2 = 0.999)", but PyTorch's
    (and transformers') default β1 is 0.9; `beta1` defaults to 0.9 and can be set to 0.99.
    The paper gives no step budget, only the loss-ratio rule; `max_steps` (8000: as many examples
    seen as BiT's 500 steps × 32) is a safety limit, and `stopped_by` says which rule ended a fit.
    The head is a linear layer on the backbone's pooled features, initialised N(0, 0.02²) like
    transformers' classification heads (`zero_head` switches to BiT's zero init)."""

    lr: float = 1e-6
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.1
    batch_size: int = 2
    max_steps: int = 8000
    loss_ratio: float = 1e-3
    zero_head: bool = False

    name: ClassVar[str] = "text"
    modality: ClassVar[str] = "text"
    end_rule: ClassVar[str] = "max_steps"

    def __post_init__(self) -> None:
        self._check_common()
        if self.max_steps < 1 or self.lr <= 0:
            raise ConfigError("max_steps must be at least 1 and lr positive", param="recipe_options")

    def learning_rate(self, step: int, n_labeled: int) -> float | None:
        return self.lr if step < self.max_steps else None

    def step_budget(self, n_labeled: int) -> int:
        return self.max_steps

    def optimizer(self, params) -> torch.optim.Optimizer:
        return torch.optim.AdamW(params, lr=self.lr, betas=(self.beta1, self.beta2), eps=self.eps,
                                 weight_decay=self.weight_decay)


FinetuneRecipe = BitRecipe | TextRecipe


def default_recipe(modality: str, options: dict[str, str] | None = None) -> FinetuneRecipe:
    """The paper's recipe for a modality (BiT for images, RoBERTa's for text), with --recipe overrides."""
    recipe = BitRecipe() if modality == "image" else TextRecipe()
    return recipe.replace(options or {})


@dataclasses.dataclass(frozen=True)
class FinetuneOptions:
    """How finetuning runs. Of these only `amp` and `train_seed` change the numbers (and
    `micro_batch`, for BatchNorm backbones; BiT's GroupNorm makes it exact).

    device: auto | cpu | cuda | cuda:N (under torchrun: cuda, each process taking cuda:LOCAL_RANK).
    amp: "auto" = bf16 autocast on CUDA and none on CPU. channels_last: None = on for images on CUDA.
    """

    device: str = "auto"
    amp: str = "auto"
    micro_batch: int = 8
    eval_batch_size: int = 64
    num_workers: int | None = None
    train_seed: int = 0
    channels_last: bool | None = None

    def __post_init__(self) -> None:
        if self.amp == "fp16":
            raise ConfigError("finetuning in float16 needs loss scaling, which the finetune learner does not do; "
                              "use bf16 (or none)", param="amp")
        if self.amp not in AMP_CHOICES:
            raise ConfigError(f"must be one of {AMP_CHOICES}, got {self.amp!r}", param="amp")
        if self.micro_batch < 1:
            raise ConfigError("must be at least 1", param="micro_batch")
        if self.eval_batch_size < 1:
            raise ConfigError("must be at least 1", param="eval_batch_size")


def round_seed(train_seed: int, rows: np.ndarray) -> int:
    """A 63-bit seed from the learner's seed and the labelled rows (which identify the round)."""
    digest = hashlib.sha256(np.int64(train_seed).tobytes() + np.ascontiguousarray(rows, dtype=np.int64).tobytes())
    return int.from_bytes(digest.digest()[:8], "little") >> 1


class _Batches:
    """The global batches of one fit: example positions from shuffled epochs laid end to end, and
    per example a crop offset and a flip. Every rank draws the same, from the round's seed."""

    def __init__(self, n: int, seed: int, recipe: FinetuneRecipe):
        self.n, self.recipe = n, recipe
        self.rng = np.random.default_rng(seed)
        self.queue = np.zeros(0, dtype=np.int64)

    def next(self, size: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        while len(self.queue) < size:
            self.queue = np.concatenate([self.queue, self.rng.permutation(self.n)])
        positions, self.queue = self.queue[:size], self.queue[size:]
        if not isinstance(self.recipe, BitRecipe):
            return positions, None, None
        offsets = self.rng.integers(0, self.recipe.resize - self.recipe.crop + 1, size=(size, 2))
        flips = self.rng.random(size) < 0.5 if self.recipe.flip else np.zeros(size, dtype=bool)
        return positions, offsets, flips


class _Classifier(torch.nn.Module):
    """Backbone features → linear head, one module so DDP sees every parameter."""

    def __init__(self, backbone: Backbone, num_classes: int):
        super().__init__()
        self.body = backbone.model
        self.head = torch.nn.Linear(backbone.num_features, num_classes)
        self._features = backbone.features

    def features(self, batch) -> torch.Tensor:
        """The penultimate features: what the head reads."""
        return self._features(batch)

    def forward(self, batch) -> torch.Tensor:
        return self.head(self._features(batch))


class _Plateau:
    """stop=val_plateau's count: the watched accuracy's evaluations, and the times it did not
    increase over the evaluation before; `update` says when that reaches `patience`."""

    def __init__(self, patience: int):
        self.patience = patience
        self.checks = 0
        self.non_increases = 0
        self.previous: float | None = None

    def update(self, accuracy: float) -> bool:
        if self.previous is not None and accuracy <= self.previous:
            self.non_increases += 1
        self.previous = accuracy
        self.checks += 1
        return self.non_increases >= self.patience


def _square_resize(size: int):
    """BiT's train-time resize (to size × size, uint8 kept, so random crops are cut from it per step)."""
    from torchvision.transforms import v2 as T

    return T.Compose([T.ToImage(), T.Resize((size, size), interpolation=T.InterpolationMode.BILINEAR, antialias=True)])


def _identity(item):
    return item


@register_learner("finetune")
class FinetuneLearner(BaseLearner):
    """The finetune learner: `fit(rows, y)` trains backbone + head from the starting weights with
    the recipe, `predict_proba(rows)` scores dataset rows with the finetuned model in eval mode.
    Capabilities (see `embedcache.learners.base`): proba, logits, embed (the finetuned network's
    penultimate features), gradient embeddings from them, and posterior samples (last-layer Laplace).

    Rows are indices into `dataset`. Labelled training inputs are loaded once and kept (images
    resized to `recipe.resize` as uint8, cropped and flipped per step), so later rounds read only
    the newly acquired examples. After `fit`, `training_` holds steps, loss_initial, loss_final
    and stopped_by ("loss_ratio", "val_plateau", or the recipe's end rule: "schedule" /
    "max_steps"), with stop=val_plateau also plateau_checks (evaluations of the watched split) and
    plateau_accuracy (its last accuracy); `losses_` holds every step's loss.

    Checkpointing: there is no model state to carry between rounds (each restarts from the
    starting weights with a seed derived from its labelled rows), so the run record, written after
    every round, is the checkpoint; a killed run refits the round it was in, identically on CPU
    (CUDA kernels may differ in the last bits). Saving weights and optimizer state within a round
    would write the model's size to disk many times per round to spare at most one round (≤ 500
    BiT steps) after a kill, so it is not done.

    Under torchrun (see `embedcache.learners.distributed`) the same object runs on every rank: rank 0
    calls fit and the scoring methods, the others call `serve()`, and `close()` on rank 0 releases them.
    """

    def __init__(self, dataset: DatasetAdapter, backbone: Backbone, num_classes: int,
                 recipe: FinetuneRecipe | None = None, options: FinetuneOptions | None = None,
                 progress: Progress | None = None):
        self.dataset, self.backbone = dataset, backbone
        self.recipe = recipe or default_recipe(backbone.modality)
        self.options = options or FinetuneOptions()
        if dataset.modality != backbone.modality:
            raise ConfigError(f"dataset {dataset.name!r} holds {dataset.modality} examples but {backbone.spec} "
                              f"reads {backbone.modality}", param="backbone")
        if self.recipe.modality != backbone.modality:
            raise ConfigError(f"the {self.recipe.name} recipe is for {self.recipe.modality} backbones, "
                              f"not {backbone.spec}")
        self.num_classes = int(num_classes)
        self.progress = progress
        self.context = distributed.setup(self.options.device)
        device = self.context.device
        if self.recipe.batch_size < self.context.world:
            raise ConfigError(f"batch {self.recipe.batch_size} cannot be shared by {self.context.world} processes")
        amp = self.options.amp
        self.amp = ("bf16" if device.type == "cuda" else None) if amp == "auto" else (None if amp == "none" else amp)
        image = backbone.modality == "image"
        channels_last = self.options.channels_last
        self.channels_last = (device.type == "cuda" and image) if channels_last is None else channels_last
        self.network = _Classifier(backbone, self.num_classes).to(device)
        if self.channels_last:
            self.network.to(memory_format=torch.channels_last)
        self._initial = {k: v.detach().to("cpu", copy=True) for k, v in self.network.body.state_dict().items()}
        self._trained = self.network
        if self.context.distributed:
            from torch.nn.parallel import DistributedDataParallel

            # text encoders carry a pooler the pooled features do not use
            self._trained = DistributedDataParallel(
                self.network, device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=not image)
        if image:
            self._eval_transform = self.recipe.eval_preprocess().transform()
            self._train_transform = _square_resize(self.recipe.resize)
            shape = (1, 3, 1, 1)
            self._mean = torch.tensor(self.recipe.mean, device=device).view(shape)
            self._std = torch.tensor(self.recipe.std, device=device).view(shape)
        else:
            self._eval_transform = self._train_transform = _identity
        self._inputs: dict[int, Any] = {}
        self._fitted_rows: np.ndarray | None = None  # the labelled rows of the last fit
        self._posterior: tuple | None = None  # (fitted rows, (n_samples, seed), head samples)
        workers = self.options.num_workers
        if workers is None:  # the processes of a torchrun launch share the CPUs
            workers = default_workers(backbone.modality)
            workers = workers and max(1, workers // self.context.world)
        self._workers = workers
        self._watched = self._plateau_rows() if self.recipe.stop == "val_plateau" else None

    def _plateau_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """The rows and labels of the split stop=val_plateau watches, checked to exist and be labelled."""
        metadata, split = self.dataset.metadata, self.recipe.plateau_split
        if split not in metadata.split_names:
            raise ConfigError(f"plateau_split={split}: dataset {self.dataset.name!r} has no such split; it has "
                              f"{', '.join(metadata.split_names)}", param="recipe_options")
        rows = metadata.split_indices(split)
        if not len(rows) or (metadata.label[rows] < 0).any():
            raise ConfigError(f"plateau_split={split}: the split must hold labelled examples to watch its accuracy; "
                              f"dataset {self.dataset.name!r} has {'none' if not len(rows) else 'some without labels'}",
                              param="recipe_options")
        return rows, metadata.label[rows]

    # ------------------------------------------------------------------ loop hooks
    def describe(self) -> dict:
        return {"learner": "finetune", "recipe": self.recipe.to_dict(), "micro_batch": self.options.micro_batch,
                "train_seed": self.options.train_seed}

    def starting_point(self) -> Recipe:
        """The recipe of the weights every round starts from, with the eval preprocessing and amp:
        its fingerprint identifies the features this learner's runs are made of."""
        recipe = self.backbone.recipe("float32", self.amp)
        if isinstance(self.recipe, BitRecipe):
            recipe = dataclasses.replace(recipe, preprocess=self.recipe.eval_preprocess().to_dict())
        return recipe

    def fit(self, rows: np.ndarray, y: np.ndarray) -> "FinetuneLearner":
        rows, y = fit_arguments(rows, y, self.num_classes)
        self._call("fit", rows, y)
        self._fitted_rows = rows
        return self

    def predict_proba(self, rows: np.ndarray) -> np.ndarray:
        """`[n, num_classes]` softmax probabilities (float32) of the finetuned model in eval mode."""
        return self._score_rows(rows, "proba")[0]

    def predict_logits(self, rows: np.ndarray) -> np.ndarray:
        """`[n, num_classes]` logits (float32) of the finetuned model in eval mode."""
        return self._score_rows(rows, "logits")[0]

    def embed(self, rows: np.ndarray) -> np.ndarray:
        """`[n, num_features]` float32 penultimate features of the finetuned network (what its head reads)."""
        return self._score_rows(rows, "features")[0]

    def gradient_embedding(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """BADGE's gradient of the loss at the predicted class for the head, factorised: (p - onehot(argmax p)
        `[n, C]`, [penultimate features, 1] `[n, D + 1]`), both from one pass of the finetuned model."""
        residual, features = self._score_rows(rows, "proba", "features")
        residual[np.arange(len(residual)), residual.argmax(axis=1)] -= 1.0
        return residual, np.concatenate([features, np.ones((len(features), 1), dtype=np.float32)], axis=1)

    def posterior_proba(self, rows: np.ndarray, n_samples: int, seed: int) -> np.ndarray:
        """`[n_samples, n, num_classes]` float32 probabilities under last-layer Laplace draws of the head
        (`embedcache.learners.posterior.laplace_samples`): the finetuned head's posterior given the
        penultimate features of the labelled rows, with a standard normal prior on its weights (the
        objective Σ CE + ½‖W‖², C = 1: the finetuning itself has no such penalty). A two-class head is
        taken as its logistic form (w₁ - w₀, b₁ - b₀). Draws are made once per fit and seed."""
        samples = self._head_samples(int(n_samples), int(seed))
        return np.ascontiguousarray(samples.proba(self.embed(rows)).transpose(1, 0, 2))

    def _head_samples(self, n_samples: int, seed: int):
        from embedcache.learners.posterior import laplace_samples

        key = (n_samples, seed)
        cached = self._posterior
        if cached is not None and cached[0] is self._fitted_rows and cached[1] == key:
            return cached[2]
        weight = self.network.head.weight.detach().double().cpu().numpy()  # [C, D]
        bias = self.network.head.bias.detach().double().cpu().numpy()
        coef, intercept = weight.T, bias
        if self.num_classes == 2:
            coef, intercept = (weight[1] - weight[0])[:, None], bias[1:] - bias[:1]
        samples = laplace_samples(self.embed(self._fitted_rows), coef, intercept, 1.0, n_samples, seed)
        self._posterior = (self._fitted_rows, key, samples)
        return samples

    def _score_rows(self, rows: np.ndarray, *outputs: str) -> list[np.ndarray]:
        return self._call("score", np.asarray(rows, dtype=np.int64), outputs)

    # ------------------------------------------------------------------ distributed
    def _call(self, name: str, *args):
        if self.context.distributed:
            self.context.broadcast((name, args))
        return self._run(name, args)

    def _run(self, name: str, args: tuple):
        """Execute a call rank 0 made (every rank executes it together)."""
        return {"fit": self._fit, "score": self._score}[name](*args)

    def serve(self) -> None:
        """Ranks other than 0: run rank 0's fit and scoring calls until it closes."""
        while (message := self.context.broadcast()) is not None:
            self._run(*message)

    def close(self) -> None:
        """Release the serving ranks (from rank 0) and leave the process group."""
        if self.context.distributed:
            if self.context.rank == 0:
                self.context.broadcast(None)
            distributed.teardown()

    # ------------------------------------------------------------------ training
    def _report(self, phase: str, done: int, total: int) -> None:
        if self.progress is not None and self.context.rank == 0:
            self.progress(phase, done, total)

    def _autocast(self):
        return torch.autocast(self.context.device.type, dtype=torch.bfloat16, enabled=self.amp == "bf16")

    def _load(self, rows: np.ndarray, transform: Callable, collate: Callable, pin_memory: bool = False):
        """Transformed examples of `rows`, batch by batch; a bad example stops with its error."""
        if not len(rows):
            return
        loader = example_loader(self.dataset, transform, collate, rows, self.options.eval_batch_size, self._workers,
                                pin_memory=pin_memory)
        for size, batch, errors in loader:
            if errors:
                raise DatasetError(errors[min(errors)])
            yield size, batch

    def _train_inputs(self, rows: np.ndarray) -> list:
        missing = np.array([r for r in rows.tolist() if r not in self._inputs], dtype=np.int64)
        position = 0
        for size, items in self._load(missing, self._train_transform, list):  # kept: not pinned
            self._inputs.update(zip(missing[position:position + size].tolist(), items))
            position += size
        return [self._inputs[r] for r in rows.tolist()]

    def _batch(self, inputs: list, positions: np.ndarray, offsets, flips):
        """One micro-batch on the device: tokenised texts, or cropped, flipped, normalised images."""
        device = self.context.device
        if offsets is None:
            return self.backbone.batch_to(self.backbone.collate([inputs[p] for p in positions]), device)
        crop = self.recipe.crop
        images = []
        for p, (i, j), flip in zip(positions.tolist(), offsets.tolist(), flips.tolist()):
            image = inputs[p][:, i:i + crop, j:j + crop]
            images.append(image.flip(-1) if flip else image)
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        batch = torch.stack(images).to(device, non_blocking=True).float().div_(255)
        return batch.sub_(self._mean).div_(self._std).contiguous(memory_format=fmt)

    def _reset(self, seed: int) -> None:
        """Starting weights for the body; a zero or N(0, 0.02²) head."""
        self.network.body.load_state_dict(self._initial)
        head = self.network.head
        with torch.no_grad():
            head.bias.zero_()
            if self.recipe.zero_head:
                head.weight.zero_()
            else:
                generator = torch.Generator().manual_seed(seed)
                head.weight.copy_(torch.randn(head.weight.shape, generator=generator) * 0.02)

    def _fit(self, rows: np.ndarray, y: np.ndarray) -> None:
        order = np.argsort(rows, kind="stable")
        rows, y = rows[order], y[order]
        seed = round_seed(self.options.train_seed, rows)
        inputs = self._train_inputs(rows)
        device = self.context.device
        with torch.random.fork_rng(devices=[device.index] if device.type == "cuda" else []):
            torch.manual_seed(seed + self.context.rank)  # dropout masks
            self._reset(seed)
            self.training_ = self._train(inputs, torch.as_tensor(y, device=device), seed)

    def _train(self, inputs: list, targets: torch.Tensor, seed: int) -> dict:
        recipe, context = self.recipe, self.context
        n, size = len(inputs), recipe.batch_size
        optimizer = recipe.optimizer(self.network.parameters())
        optimizer.zero_grad(set_to_none=True)
        self._trained.train()
        batches = _Batches(n, seed, recipe)
        share = context.shard(size)
        micro = self.options.micro_batch
        losses: list[float] = []
        stopped_by, total = recipe.end_rule, recipe.step_budget(n)
        self._report("train", 0, total)
        plateau = _Plateau(recipe.plateau_patience) if self._watched is not None else None
        while (lr := recipe.learning_rate(len(losses), n)) is not None:
            for group in optimizer.param_groups:
                group["lr"] = lr
            positions, offsets, flips = batches.next(size)
            mine = np.arange(size)[share]
            loss_sum = torch.zeros((), device=self.context.device)
            starts = range(0, len(mine), micro)
            for k, start in enumerate(starts):
                part = mine[start:start + micro]
                batch = self._batch(inputs, positions[part], None if offsets is None else offsets[part],
                                    None if flips is None else flips[part])
                last = k == len(starts) - 1
                with contextlib.nullcontext() if last or not context.distributed else self._trained.no_sync():
                    with self._autocast():
                        logits = self._trained(batch)
                    target = targets[torch.as_tensor(positions[part], device=targets.device)]
                    loss = torch.nn.functional.cross_entropy(logits.float(), target, reduction="sum")
                    # DDP averages gradients over ranks; scaling by world/size makes that the batch mean
                    (loss * (context.world / size)).backward()
                loss_sum += loss.detach()
            loss = float(context.sum(loss_sum)) / size
            if not math.isfinite(loss):
                raise ConfigError(f"finetuning diverged: loss {loss} at step {len(losses)} (lr {lr:g}); "
                                  "lower the learning rate (`recipe_options`)")
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss)
            self._report("train", len(losses), total)
            if recipe.stop == "loss_ratio" and loss < recipe.loss_ratio * losses[0]:
                stopped_by = "loss_ratio"
                break
            if plateau is not None and len(losses) % recipe.plateau_every == 0:
                rows, labels = self._watched
                predicted = self._score(rows, ("logits",), "validate")[0].argmax(axis=1)
                self._trained.train()
                if plateau.update(float(np.mean(predicted == labels))):
                    stopped_by = "val_plateau"
                    break
        self.losses_ = losses
        facts = {"steps": len(losses), "loss_initial": losses[0], "loss_final": losses[-1], "stopped_by": stopped_by}
        if plateau is not None:
            facts.update(plateau_checks=plateau.checks, plateau_accuracy=plateau.previous)
        return facts

    # ------------------------------------------------------------------ scoring
    def _score(self, rows: np.ndarray, outputs: tuple[str, ...], phase: str = "predict") -> list[np.ndarray]:
        """The finetuned model's `outputs` ("proba", "logits", "features") for `rows` in eval mode: each rank
        scores its share, and every rank gets them all back in row order. `phase` names the progress pass."""
        mine = rows[self.context.shard(len(rows))]
        width = {"proba": self.num_classes, "logits": self.num_classes, "features": self.backbone.num_features}
        results = [np.zeros((len(mine), width[name]), dtype=np.float32) for name in outputs]
        self.network.eval()
        position = 0
        self._report(phase, 0, len(mine))
        with torch.inference_mode(), self._autocast():
            for size, batch in self._load(mine, self._eval_transform, self.backbone.collate,
                                          pin_memory=self.context.device.type == "cuda"):
                batch = self.backbone.batch_to(batch, self.context.device, self.channels_last)
                features = self.network.features(batch)
                logits = self.network.head(features).float()
                values = {"features": features, "logits": logits}
                if "proba" in outputs:
                    values["proba"] = torch.softmax(logits, dim=1)
                for result, name in zip(results, outputs):
                    result[position:position + size] = values[name].float().cpu().numpy()
                position += size
                self._report(phase, position, len(mine))
        gathered = self.context.gather(results)
        return [np.concatenate([part[i] for part in gathered]) for i in range(len(outputs))]
