"""Sweeps, grids and sharded extraction on a real Ray cluster: a head and a second node on 127.0.0.1,
started once for this module and stopped in a finalizer. A worker SIGKILLed in the middle of a run
is retried, and the records equal those of the local executor."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from runs_helpers import GRID, stable, tiny_cache

from embedcache.cache import EmbeddingCache
from embedcache.cli import main
from embedcache.faults import ENV as CRASH_AT, ONCE_ENV as CRASH_ONCE

ray = pytest.importorskip("ray", reason="pip install -e '.[dev]' installs Ray")
pytestmark = pytest.mark.slow

TAG = "EMBEDCACHE_TEST_TAG"
#: Seconds to wait for a node to come up (a cold start imports Ray's whole runtime on 2 busy cores).
STARTUP_SECONDS = 120


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tagged(tag: str) -> list[int]:
    """Live processes whose environment carries TAG=tag: everything the cluster started."""
    marker = f"{TAG}={tag}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                alive = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
                if alive and marker in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
    return found


def _alive_nodes(address: str) -> int:
    ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        return sum(node["Alive"] for node in ray.nodes())
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def cluster():
    """The address of a 2-node cluster (one CPU each) on 127.0.0.1, for this module only."""
    ray_cli = Path(sys.executable).with_name("ray")
    port, tag = _free_port(), uuid.uuid4().hex
    temp = tempfile.mkdtemp(prefix="ec-ray-", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    env = {**os.environ, TAG: tag, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    common = ["--block", "--num-cpus", "1", "--node-ip-address", "127.0.0.1", "--object-store-memory", "80000000"]
    nodes = []
    address = f"127.0.0.1:{port}"
    try:
        with open(Path(temp) / "head.log", "w") as log:
            nodes.append(subprocess.Popen([ray_cli, "start", "--head", "--port", str(port), "--temp-dir", temp,
                                           "--include-dashboard", "false", *common], env=env, stdout=log,
                                          stderr=log, start_new_session=True))
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:  # the head's GCS port answers
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            assert time.monotonic() < deadline and nodes[0].poll() is None, (Path(temp) / "head.log").read_text()
            time.sleep(0.2)
        with open(Path(temp) / "node.log", "w") as log:
            nodes.append(subprocess.Popen([ray_cli, "start", "--address", address, *common], env=env, stdout=log,
                                          stderr=log, start_new_session=True))
        while _alive_nodes(address) < 2:
            assert time.monotonic() < deadline and nodes[1].poll() is None, (Path(temp) / "node.log").read_text()
            time.sleep(0.5)
        yield address
    finally:  # nothing of the cluster outlives the module: its processes are killed, its files removed
        for node in nodes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.pid, signal.SIGKILL)
            node.wait()
        for pid in _tagged(tag):  # workers or helpers that left the nodes' process groups
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)


PLAN = """
out = "{out}"
caches = ["{a}", "{b}"]
strategies = ["random", "margin"]
seeds = "0-1"

[protocol]
seed_size = 10
budget = 10
"""


def _invoke(*args):
    return CliRunner().invoke(main, [*map(str, args)])


def test_a_sweep_with_a_worker_killed_mid_run_completes_with_the_local_records(cluster, tmp_path, monkeypatch):
    a, b = tiny_cache(tmp_path / "wb-a.h5", seed=1), tiny_cache(tmp_path / "wb-b.h5", seed=2)
    for name in ("local", "ray"):
        (tmp_path / f"{name}.toml").write_text(PLAN.format(out=tmp_path / name, a=a, b=b))
    local = _invoke("sweep", tmp_path / "local.toml", "--quiet")
    assert local.exit_code == 0, local.output

    marker = tmp_path / "killed.pid"  # the one worker that dies writes its pid here
    monkeypatch.setenv(CRASH_AT, "unit.round-written:2")  # after round 1 of 3 of a worker's first run
    monkeypatch.setenv(CRASH_ONCE, str(marker))
    swept = _invoke("sweep", tmp_path / "ray.toml", "--executor", "ray", "--address", cluster, "--quiet")
    assert swept.exit_code == 0, swept.output
    assert "8 of 8 runs complete" in swept.output
    killed = int(marker.read_text())
    assert killed != os.getpid() and not Path(f"/proc/{killed}").exists()
    for cell in ("wb-a", "wb-b"):
        assert stable(tmp_path / "ray" / cell) == stable(tmp_path / "local" / cell)
    assert not list((tmp_path / "ray").glob("*/*.lock"))  # every lock was released by the worker that held it


def test_al_grid_and_sharded_extraction_on_the_cluster_match_local_ones(cluster, tmp_path, image_folder):
    cache = tiny_cache(tmp_path / "c.h5")
    args = ["al", "--cache", cache, *GRID, "--quiet"]
    assert _invoke(*args, "--out", tmp_path / "local").exit_code == 0
    remote = _invoke(*args, "--out", tmp_path / "ray", "--executor", "ray", "--address", cluster)
    assert remote.exit_code == 0 and "4 of 4 runs complete" in remote.output, remote.output
    assert stable(tmp_path / "ray") == stable(tmp_path / "local")

    extract = ["extract", "--dataset", "imagefolder", "--root", image_folder, "--backbone", "timm:test_efficientnet_gn",
               "--weights", "random", "--device", "cpu", "--workers", "0", "--batch-size", "4", "--quiet"]
    assert _invoke(*extract, "--out", tmp_path / "local.h5").exit_code == 0
    sharded = _invoke(*extract, "--executor", "ray", "--address", cluster, "--shards", "2", "--out",
                      tmp_path / "ray.h5")
    assert sharded.exit_code == 0 and "rows from 2 shards" in sharded.output, sharded.output
    assert sorted(p.name for p in tmp_path.glob("ray*")) == ["ray", "ray.h5"]  # the shard files are merged away
    with EmbeddingCache(tmp_path / "ray.h5") as got, EmbeddingCache(tmp_path / "local.h5") as want:
        assert got.complete and got.fingerprint == want.fingerprint
        assert got.metadata().ids.tolist() == want.metadata().ids.tolist()
        # Ray runs a task on one thread, so the convolutions may sum in another order: equal up to float16 rounding
        np.testing.assert_allclose(got.embeddings(dtype=np.float32), want.embeddings(dtype=np.float32), rtol=1e-2,
                                   atol=1e-3)
    again = _invoke(*extract, "--executor", "ray", "--address", cluster, "--shards", "2", "--out", tmp_path / "ray.h5")
    assert again.exit_code == 1 and "already exists with this recipe and dataset" in again.output
