"""Shared by the tests of run records and grids: a tiny cache, `al` as a real process, record equality."""

from __future__ import annotations

import ctypes
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

from helpers import recipe

from embedcache.cache import EmbeddingCache
from embedcache.datasets.synthetic import ambiguity_embeddings
from embedcache.records import read_runs

#: A grid small enough to run in a second: 2 strategies x 2 seeds, 3 rounds each.
GRID = ["--seed-size", "10", "--budget", "10", "--strategy", "random", "--strategy", "margin", "--seeds", "0-1"]


def tiny_cache(path: Path, seed: int = 1) -> Path:
    x, meta = ambiguity_embeddings(n_train=300, n_val=100, dim=8, seed=seed)
    return EmbeddingCache.write(path, x, meta, recipe=recipe())


def embedcache(*args, **popen) -> subprocess.Popen:
    """`embedcache ARGS` as a separate process (stdin, stdout and stderr as `popen` says)."""
    return subprocess.Popen([sys.executable, "-m", "embedcache.cli", *map(str, args)], **popen)


def stable(folder: Path) -> dict[str, dict]:
    """Every record of a folder without its timings (`created`, `seconds`), for equality."""
    result = {}
    for run in read_runs([folder]):
        result[run.path.name] = {"header": dataclasses.replace(run.header, created=None),
                                 "rounds": [dataclasses.replace(r, seconds=0.0) for r in run.rounds]}
    return result


def permission_bits_apply() -> None:
    """preexec_fn: make file permission bits bind the child even when the tests run as root (as here
    and in CI), by dropping the capabilities that bypass them (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH,
    CAP_FOWNER) from the bounding set, so the program it executes never holds them. (Switching to
    `nobody` would not do: the interpreter may live in root's private home.) Other users are bound
    by the bits already."""
    if os.getuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2, 3):
        if libc.prctl(_PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), f"prctl(PR_CAPBSET_DROP, {capability}) failed")


_PR_CAPBSET_DROP = 24  # from <linux/prctl.h>
