"""Option parsers and progress bars shared by the commands."""

from __future__ import annotations

import contextlib
from typing import Iterator

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


@contextlib.contextmanager
def progress_bar(description: str, unit: str, enabled: bool = True) -> Iterator:
    """A tqdm bar driven by a `progress(done, total)` callback, as the library's long calls take.

    The bar starts at the first call, so work already done (a resumed run) does not inflate the rate.
    """
    from tqdm.auto import tqdm

    bars = []

    def update(done: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(desc=description, unit=unit, total=total, initial=done, disable=not enabled,
                             dynamic_ncols=True, smoothing=0.1))
        bars[0].update(done - bars[0].n)

    try:
        yield update
    finally:
        for bar in bars:
            bar.close()
