"""Option groups, parsers and progress bars shared by the commands."""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path
from typing import Any, Callable, Iterator

import click

from embedcache.cli.command import UsageLine
from embedcache.cli.conventions import BACKBONE, DATASET, DATASET_OPTION, INIT_SEED, MAX_LENGTH, POOLING, ROOT, WEIGHTS
from embedcache.specs import DataSpec, ModelSpec


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


def grouped(name: str, build: Callable[..., Any], *options: Callable) -> Callable:
    """Options whose values `build(**values)` turns into one object, which the command receives as
    `name` (a `Protocol`, a `LinearConfig`, ...) instead of the options one by one. `build` takes the
    options' parameter names; what it raises is reported against their flags."""
    names = [p.name for p in option_group(*options)(lambda: None).__click_params__]

    def apply(command: Callable) -> Callable:
        @functools.wraps(command)
        def wrapper(*args, **kwargs):
            kwargs[name] = build(**{n: kwargs.pop(n) for n in names})
            return command(*args, **kwargs)

        return option_group(*options)(wrapper)
    return apply


def _dataset_args(dataset_name: str | None, root: Path | None, dataset_options: tuple[str, ...]) -> DataSpec | None:
    options = parse_key_values(dataset_options, "--option")
    if dataset_name is None and root is None:
        if options:
            raise UsageLine("-o/--option is an option of the dataset adapter: give --dataset and --root too")
        return None
    if dataset_name is None or root is None:
        raise UsageLine("--dataset and --root go together: give both")
    return DataSpec(dataset_name, root, options)


def dataset_options(required: bool = True) -> Callable:
    """--dataset, --root and -o/--option, passed to the command as `data` (a DataSpec, or None when
    they are optional and not given)."""
    return grouped("data", _dataset_args,
                   DATASET(name="dataset_name", required=required), ROOT(required=required),
                   DATASET_OPTION(name="dataset_options"))


def _backbone_args(backbone: str | None, weights: str, init_seed: int, max_length: int | None,
                   pooling: str | None) -> ModelSpec | None:
    return None if backbone is None else ModelSpec(backbone, weights, init_seed, max_length, pooling)


def backbone_options(required: bool = True) -> Callable:
    """--backbone, --weights, --init-seed, --max-length and --pooling, passed to the command as `model`
    (a ModelSpec, or None without --backbone)."""
    return grouped("model", _backbone_args,
                   BACKBONE(required=required), WEIGHTS(default="pretrained", show_default=True),
                   INIT_SEED(default=0, show_default=True), MAX_LENGTH(), POOLING())


def step_bars(enabled: bool):
    """A progress(phase, done, total) callback for finetuning: one transient bar per training or scoring
    pass (passes start at done = 0); None when disabled."""
    if not enabled:
        return None
    bars = Bars(leave=False, position=1)
    return lambda phase, done, total: bars.update(phase, done, total, "step" if phase == "train" else "ex")
