"""What every backbone provides: preprocessing, batching, a feature forward pass and its recipe.

A backbone turns dataset inputs (PIL images or strings) into `[B, D]` features. `transform`
runs per example in DataLoader workers, `collate` builds a batch, `features` is the
(differentiable) forward pass: extraction calls it under `torch.inference_mode`, finetuning
trains through it.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch

from embedcache.errors import BackboneError
from embedcache.recipe import Recipe, sha256_files

#: Keyword values of `weights`; anything else is a path to a checkpoint file.
PRETRAINED, RANDOM = "pretrained", "random"
WEIGHT_FILE_SUFFIXES = (".npz", ".safetensors", ".pt", ".pth", ".bin", ".ckpt")


@dataclasses.dataclass(frozen=True)
class ImagePreprocess:
    """Eval-time image preprocessing, recorded in the recipe.

    resize_mode "shorter" scales the shorter side to `resize` (then crops to `resolution` when
    crop is "center"); "square" resizes to resize×resize, as BiT does (resize 480, no crop).
    """

    resolution: int
    resize: int
    resize_mode: str = "shorter"
    crop: str = "center"
    interpolation: str = "bilinear"
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)

    def __post_init__(self) -> None:
        if self.resize_mode not in ("shorter", "square"):
            raise BackboneError(f"resize_mode must be 'shorter' or 'square', got {self.resize_mode!r}")
        if self.crop not in ("center", "none"):
            raise BackboneError(f"crop must be 'center' or 'none', got {self.crop!r}")

    @classmethod
    def from_timm(cls, config: dict, resolution: int | None = None) -> "ImagePreprocess":
        """timm's eval preprocessing (resize by crop_pct, center crop), optionally at another resolution."""
        side = int(resolution or config["input_size"][-1])
        crop_pct = float(config.get("crop_pct") or 1.0)
        return cls(
            resolution=side,
            resize=int(side / crop_pct),
            interpolation=str(config.get("interpolation") or "bilinear"),
            mean=tuple(float(m) for m in config["mean"]),
            std=tuple(float(s) for s in config["std"]),
        )

    def transform(self):
        from torchvision.transforms import v2 as T

        mode = T.InterpolationMode(self.interpolation)
        size = (self.resize, self.resize) if self.resize_mode == "square" else self.resize
        steps = [T.ToImage(), T.Resize(size, interpolation=mode, antialias=True)]
        if self.crop == "center":
            steps.append(T.CenterCrop(self.resolution))
        steps += [T.ToDtype(torch.float32, scale=True), T.Normalize(self.mean, self.std)]
        return T.Compose(steps)

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        return {**data, "mean": list(self.mean), "std": list(self.std)}


class Backbone(abc.ABC):
    """A feature extractor with its preprocessing. Subclasses fill the attributes in __init__."""

    modality: str
    model: torch.nn.Module
    num_features: int
    spec: str
    architecture: dict
    weights: dict
    features_info: dict

    @abc.abstractmethod
    def transform(self, item: Any) -> Any:
        """One raw input (PIL image or str) → what `collate` takes. Runs in loader workers."""

    @abc.abstractmethod
    def collate(self, items: list) -> Any:
        """A list of transformed items → one batch."""

    @abc.abstractmethod
    def features(self, batch: Any) -> torch.Tensor:
        """A batch (already on the model's device) → `[B, D]` features."""

    @abc.abstractmethod
    def preprocess(self) -> dict:
        """The preprocessing that goes into the recipe."""

    def batch_to(self, batch: Any, device: torch.device, channels_last: bool = False) -> Any:
        if isinstance(batch, torch.Tensor):
            fmt = torch.channels_last if channels_last and batch.ndim == 4 else torch.contiguous_format
            return batch.to(device, non_blocking=True, memory_format=fmt)
        return batch.to(device)

    def recipe(self, dtype: str, amp: str | None = None) -> Recipe:
        return Recipe(
            spec=self.spec,
            architecture=self.architecture,
            weights=self.weights,
            features=self.features_info,
            preprocess=self.preprocess(),
            amp=amp,
            dtype=dtype,
        )


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch's CPU generator inside the block only, so random init is reproducible and isolated."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def weights_file(weights: str) -> Path | None:
    """The checkpoint path that `weights` names, None for "pretrained" / "random"; errors if missing."""
    if weights in (PRETRAINED, RANDOM):
        return None
    path = Path(weights)
    if not path.is_file():
        raise BackboneError(f"{weights!r}: not 'pretrained', 'random', or an existing checkpoint file", param="weights")
    if path.suffix.lower() not in WEIGHT_FILE_SUFFIXES:
        raise BackboneError(f"{path}: unknown checkpoint type; use one of {', '.join(WEIGHT_FILE_SUFFIXES)}",
                            param="weights")
    return path


def file_weights_entry(path: Path) -> dict:
    return {"source": "file", "format": path.suffix.lower().lstrip("."), "sha256": sha256_files([path])}


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors or a torch file (loaded with weights_only=True), unwrapped."""
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt files raise many types
        raise BackboneError(f"{path}: cannot read checkpoint ({type(e).__name__}: {e})") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BackboneError(f"{path}: not a state dict of tensors")
    prefix = "module."
    if all(k.startswith(prefix) for k in state):
        state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def load_matching(
    model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path, spec: str, ignore: Iterable[str] = ()
) -> None:
    """Load `state` into `model`, or explain (missing / unexpected / wrongly shaped keys) why it does not fit.

    Keys starting with a prefix in `ignore` (a classifier the feature model does not have) are dropped.
    """
    ignore = tuple(ignore)
    state = {k: v for k, v in state.items() if not (ignore and k.startswith(ignore))}
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong_shape = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
                   for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong_shape:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
            if keys:
                parts.append(f"{len(keys)} {label} (e.g. {', '.join(keys[:3])})")
        raise BackboneError(f"{path} does not fit {spec}: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)
