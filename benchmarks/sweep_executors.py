"""One sweep, three executors: wall time of `embedcache sweep` in this process, in 2 local worker
processes, and on a Ray cluster of two nodes (one CPU each) started on 127.0.0.1 for the purpose.

The sweep: 2 Waterbirds-sized synthetic caches (4,795 train x 2048-d, 1,199 val, float16; see
`embedcache.datasets.synthetic.ambiguity_embeddings`) x 2 strategies (least-confidence, random) x 4
seeds = 16 runs of the waterbirds protocol (65 rounds each). Every executor writes the same records
(checked here, timings aside). Each time is the command's whole wall time as a user sees it, Python
start-up and, for Ray, connecting to the cluster and starting its workers included; the cluster's
own start-up is printed separately.

    python benchmarks/sweep_executors.py [--seeds 4] [--dim 2048]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PLAN = """
out = "{out}"
caches = ["{a}", "{b}"]
strategies = ["least-confidence", "random"]
seeds = "0-{last}"

[protocol]
preset = "waterbirds"
"""


def timed(*args: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "embedcache.cli", *args, "--quiet"], check=True)
    return time.perf_counter() - started


def stable(folder: Path) -> dict:
    from embedcache.records import read_runs
    from embedcache.sweep_index import expand

    return {str(run.path.relative_to(folder)): (dataclasses.replace(run.header, created=None),
                                                [dataclasses.replace(r, seconds=0.0) for r in run.rounds])
            for run in read_runs(expand([folder]))}


@contextlib.contextmanager
def two_nodes(temp: Path):
    """A head and a second node, one CPU each, on 127.0.0.1; yields the address."""
    ray = Path(sys.executable).with_name("ray")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    common = ["--block", "--num-cpus", "1", "--node-ip-address", "127.0.0.1", "--object-store-memory", "200000000"]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    nodes = [subprocess.Popen([ray, "start", "--head", "--port", str(port), "--temp-dir", str(temp),
                               "--include-dashboard", "false", *common], env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            time.sleep(0.2)
        nodes.append(subprocess.Popen([ray, "start", "--address", f"127.0.0.1:{port}", *common], env=env,
                                      start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        import ray as ray_module

        while True:
            ray_module.init(address=f"127.0.0.1:{port}", include_dashboard=False, log_to_driver=False,
                            configure_logging=False)
            alive = sum(node["Alive"] for node in ray_module.nodes())
            ray_module.shutdown()
            if alive == 2:
                break
            time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        for node in nodes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.pid, signal.SIGKILL)
            node.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--dim", type=int, default=2048)
    args = parser.parse_args()

    from embedcache.cache import EmbeddingCache
    from embedcache.datasets.synthetic import ambiguity_embeddings

    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    with tempfile.TemporaryDirectory(prefix="ec-sweep-", dir="/tmp") as temp:
        temp = Path(temp)
        caches = []
        for name, matched in (("wb-0.50", 0.5), ("wb-0.95", 0.95)):
            x, meta = ambiguity_embeddings(n_train=4795, n_val=1199, dim=args.dim, matched=matched, seed=0)
            recipe = {"spec": "synthetic", "matched": matched}
            caches.append(EmbeddingCache.write(temp / f"{name}.h5", x.astype("float16"), meta, recipe=recipe))
        times = {}
        for name, extra in (("this process", []), ("2 local processes", ["--jobs", "2"])):
            plan = temp / f"{len(times)}.toml"
            plan.write_text(PLAN.format(out=temp / f"out{len(times)}", a=caches[0], b=caches[1], last=args.seeds - 1))
            times[name] = (timed("sweep", str(plan), *extra), temp / f"out{len(times)}")
        started = time.perf_counter()
        with two_nodes(temp / "ray") as address:
            print(f"cluster start-up (2 nodes): {time.perf_counter() - started:.1f} s")
            plan = temp / "ray.toml"
            plan.write_text(PLAN.format(out=temp / "ray-out", a=caches[0], b=caches[1], last=args.seeds - 1))
            times["Ray, 2 nodes x 1 CPU"] = (timed("sweep", str(plan), "--executor", "ray", "--address", address),
                                             temp / "ray-out")
        runs = 2 * 2 * args.seeds
        reference = stable(times["this process"][1])
        for name, (seconds, out) in times.items():
            same = "same records" if stable(out) == reference else "RECORDS DIFFER"
            print(f"{name:>22}: {seconds:6.1f} s for {runs} runs ({seconds / runs:.2f} s per run), {same}")


if __name__ == "__main__":
    main()
