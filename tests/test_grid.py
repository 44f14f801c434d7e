"""Grids of runs as processes: workers end with their parent, the parent of workers holds no
features, and read-only folders get one-line errors (while finished records are still confirmed)."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import time
import uuid
import weakref
from pathlib import Path

import pytest
from click.testing import CliRunner
from runs_helpers import GRID, embedcache, permission_bits_apply, stable, tiny_cache

from embedcache.cache import EmbeddingCache
from embedcache.cli import main
from embedcache.experiments import LinearExperiment, run_grid
from embedcache.faults import ENV as CRASH_AT
from embedcache.protocols import get_protocol

TAG = "EMBEDCACHE_TEST_TAG"


def _alive_with(tag: str) -> list[int]:
    """Pids of the live (not zombie) processes whose environment carries TAG=tag."""
    marker = f"{TAG}={tag}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            alive = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
            if alive and marker in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the processes through /proc")
def test_workers_end_with_a_killed_parent_and_a_rerun_gives_the_uninterrupted_records(tmp_path):
    args = ["al", "--cache", tiny_cache(tmp_path / "c.h5"), *GRID, "--quiet"]
    tag = uuid.uuid4().hex
    env = {**os.environ, TAG: tag, CRASH_AT: "grid.run-finished"}  # the parent SIGKILLs itself after one run
    with open(tmp_path / "log", "w") as log:  # not a pipe: orphans would hold it open
        parent = embedcache(*args, "--out", tmp_path / "runs", "--jobs", "2", env=env, stdout=log, stderr=log)
        assert parent.wait() == -9, (tmp_path / "log").read_text()
    deadline = time.monotonic() + 10
    while _alive_with(tag) and time.monotonic() < deadline:  # the workers and multiprocessing's helper
        time.sleep(0.05)
    assert not _alive_with(tag)
    rerun = CliRunner().invoke(main, [*map(str, args), "--out", str(tmp_path / "runs"), "--jobs", "2"])
    assert rerun.exit_code == 0 and "4 of 4 runs complete" in rerun.output, rerun.output
    whole = CliRunner().invoke(main, [*map(str, args), "--out", str(tmp_path / "whole")])
    assert whole.exit_code == 0, whole.output
    assert stable(tmp_path / "runs") == stable(tmp_path / "whole")


@pytest.mark.slow
def test_the_parent_of_workers_reads_features_only_in_blocks_and_keeps_none(tmp_path, monkeypatch):
    cache = tiny_cache(tmp_path / "c.h5")
    reads, embeddings = [], EmbeddingCache.embeddings

    def recorded(self, rows=None, dtype=None):  # this process only: the spawned workers run the real one
        values = embeddings(self, rows, dtype)
        reads.append((len(values), weakref.ref(values)))
        return values

    monkeypatch.setattr(EmbeddingCache, "embeddings", recorded)
    monkeypatch.setattr(EmbeddingCache, "block_rows", property(lambda self: 64))
    held = []

    def on_run(run, done, total):  # the workers are running: what does this process still hold?
        gc.collect()
        held.append(sum(ref() is not None for _, ref in reads))

    protocol = get_protocol("waterbirds").replace(seed_size=10, budget=10)
    runs = run_grid(LinearExperiment(cache), protocol, ["margin", "random"], [0, 1], tmp_path / "runs", jobs=2,
                    on_run=on_run)
    assert len(runs) == 4 and held == [0, 0, 0, 0]
    assert reads and max(n for n, _ in reads) <= 64  # the finiteness check streams the cache
    run_grid(LinearExperiment(cache), protocol, ["margin", "random"], [0, 1], tmp_path / "one")
    assert stable(tmp_path / "runs") == stable(tmp_path / "one")


def _bound_by_permissions(*args) -> subprocess.CompletedProcess:
    process = embedcache(*args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=permission_bits_apply)
    stdout, stderr = process.communicate()
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="drops capabilities with Linux prctl")
def test_read_only_folders_are_named_and_finished_records_there_are_confirmed(tmp_path):
    runs, locked = tmp_path / "runs", tmp_path / "locked"
    args = ["al", "--cache", tiny_cache(tmp_path / "c.h5"), *GRID, "--quiet"]
    assert CliRunner().invoke(main, [*map(str, args), "--out", str(runs)]).exit_code == 0
    before = {p.name: p.read_bytes() for p in runs.iterdir()}
    for record in runs.iterdir():
        record.chmod(0o444)
    runs.chmod(0o555)
    locked.mkdir(mode=0o555)
    try:
        again = _bound_by_permissions(*args, "--out", runs)
        assert again.returncode == 0 and "4 of 4 runs complete" in again.stdout, again.stderr

        more = _bound_by_permissions(*args, "--seeds", "0-2", "--out", runs)
        assert more.returncode == 2 and more.stderr.count("\n") == 1, more.stderr  # a ConfigError: usage
        assert more.stderr.startswith(f"Error: --out: cannot write run records in {runs} (Permission denied")

        for out in (runs / "report", locked):  # a folder to make in a read-only one; a read-only one
            report = _bound_by_permissions("report", "--runs", runs, "--out", out)
            assert report.returncode == 2 and report.stderr.count("\n") == 1, report.stderr
            assert report.stderr.startswith(f"Error: --out: {out}: cannot write there (Permission denied)")
        assert {p.name: p.read_bytes() for p in runs.iterdir()} == before and not any(locked.iterdir())
    finally:
        runs.chmod(0o755)
        locked.chmod(0o755)
