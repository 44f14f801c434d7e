"""Option parsers and progress bars shared by the commands."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, Iterator

import click


def parse_key_values(pairs: tuple[str, ...], flag: str) -> dict[str, str]:
    """("a=1", "b=x") → {"a": "1", "b": "x"}; anything else is a usage error naming `flag`."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint=flag)
        options[key.replace("-", "_")] = value
    return options


def parse_shard(value: str | None) -> tuple[int, int]:
    """"I/N" → (I, N); None → (0, 1)."""
    if value is None:
        return 0, 1
    index, sep, count = value.partition("/")
    if not sep or not index.isdigit() or not count.isdigit():
        raise click.BadParameter(f"expected I/N such as 0/4, got {value!r}", param_hint="--shard")
    return int(index), int(count)


class Bars:
    """Progress bars keyed by name, each driven by `update(key, done, total)` as the library's
    progress callbacks report. A key's bar starts at its first update (so work already done, e.g. a
    resumed run, does not inflate the rate), starts again when `done` goes back (a new pass), and
    closes when `done` reaches `total`. `leave=False` clears finished bars; `position` stacks them."""

    def __init__(self, enabled: bool = True, leave: bool = True, position: int | None = None):
        self.enabled, self.leave, self.position = enabled, leave, position
        self._bars: dict = {}

    def update(self, key: str, done: int, total: int, unit: str = "it") -> None:
        from tqdm.auto import tqdm

        bar = self._bars.get(key)
        if bar is not None and done < bar.n:
            bar.close()
            bar = None
        if bar is None:
            bar = self._bars[key] = tqdm(desc=key, unit=unit, total=total, initial=done, disable=not self.enabled,
                                         leave=self.leave, position=self.position, dynamic_ncols=True,
                                         smoothing=0.1)
        bar.update(done - bar.n)
        if done >= total:
            self._bars.pop(key).close()

    def write(self, text: str) -> None:
        """A line above the bars."""
        from tqdm.auto import tqdm

        tqdm.write(text)

    def close(self) -> None:
        while self._bars:
            self._bars.popitem()[1].close()


@contextlib.contextmanager
def progress_bar(description: str, unit: str, enabled: bool = True) -> Iterator:
    """One bar driven by a `progress(done, total)` callback, as the library's long calls take."""
    bars = Bars(enabled)
    try:
        yield lambda done, total: bars.update(description, done, total, unit)
    finally:
        bars.close()


def option_group(*options: Callable) -> Callable:
    """Several click options applied as one decorator, in the order listed (as `--help` shows them)."""
    def apply(command: Callable) -> Callable:
        for option in reversed(options):
            command = option(command)
        return command
    return apply


def dataset_options(required: bool = True) -> Callable:
    """--dataset, --root and -o/--option: which dataset adapter reads which files."""
    return option_group(
        click.option("--dataset", "dataset_name", required=required,
                     help="Dataset adapter: imagefolder, manifest, jsonl, or a paper dataset (see data/README.md)."),
        click.option("--root", required=required, type=click.Path(path_type=Path),
                     help="Where the dataset is: a folder, a manifest CSV or a .jsonl file, as the adapter expects."),
        click.option("-o", "--option", "dataset_options", multiple=True, metavar="KEY=VALUE",
                     help="An adapter option, e.g. -o text_field=review. Repeatable."),
    )


def backbone_options(required: bool = True, seed_flag: str = "--seed") -> Callable:
    """--backbone, --weights, the random-init seed, --max-length and --pooling."""
    return option_group(
        click.option("--backbone", required=required,
                     help="timm:<model> (images, e.g. timm:resnetv2_50x1_bit.goog_in21k) or hf:<name-or-folder> "
                          "(text)."),
        click.option("--weights", default="pretrained", show_default=True,
                     help="'pretrained' (from the hub), 'random' (seeded init: the non-pretrained control), or a "
                          "checkpoint file: BiT .npz, .safetensors, or a torch state dict (.pt/.pth/.bin)."),
        click.option(seed_flag, "init_seed", default=0, show_default=True,
                     help="Seed of the random init for --weights random."),
        click.option("--max-length", type=int, default=None, help="Text backbones: tokens kept per example."),
        click.option("--pooling", type=click.Choice(["mean", "cls"]), default=None,
                     help="Text backbones: mean of the last hidden state over tokens (default) or its [CLS] row."),
    )


finetune_options = option_group(
    click.option("--recipe", "recipe_options", multiple=True, metavar="KEY=VALUE",
                 help="Finetune mode: override a field of the paper's recipe (BiT for images, RoBERTa's for text), "
                      "e.g. --recipe base_lr=0.01 or --recipe schedule=10,20,30,40,50. Repeatable; an unknown key "
                      "lists the fields."),
    click.option("--micro-batch", default=8, show_default=True,
                 help="Finetune mode: examples per forward/backward pass; the recipe's batch is accumulated from "
                      "them."),
    click.option("--eval-batch-size", default=64, show_default=True,
                 help="Finetune mode: examples per forward pass when evaluating and scoring."),
    click.option("--workers", type=int, default=None,
                 help="Finetune mode: DataLoader worker processes; default: CPUs - 1 (max 8) for images, 0 for text."),
    click.option("--train-seed", default=0, show_default=True,
                 help="Finetune mode: seed of the shuffling, crops, flips and dropout (mixed with each round's "
                      "labelled set, so resumed runs train identically)."),
    click.option("--amp", type=click.Choice(["auto", "bf16", "none"]), default="auto", show_default=True,
                 help="Finetune mode: bf16 autocast; auto = on for CUDA, off on CPU."),
)


def step_bars(enabled: bool):
    """A progress(phase, done, total) callback for finetuning: one transient bar per training or scoring
    pass (passes start at done = 0); None when disabled."""
    if not enabled:
        return None
    bars = Bars(leave=False, position=1)
    return lambda phase, done, total: bars.update(phase, done, total, "step" if phase == "train" else "ex")
