"""A pool larger than memory: a 10-round AL run that streams a 4,000,000 x 768 float16 cache (6 GB).

Builds the cache block by block (two classes along one direction of noise; 10,000 val rows, the rest
the pool) in the folder with the most free space among --dirs (or at the largest size that fits, said
so), then runs

    /usr/bin/time -v embedcache al --cache CACHE --stream-pool --protocol custom --seed-size 20
        --per-round 10 --budget 90 --strategy least-confidence --seeds 0 --out OUT

(10 rounds: 10 fits, 9 acquisitions over the whole pool, the val split evaluated every round) and
prints its peak RSS (goal < 2 GB), the per-round times from the record, and two read-once times of
the file for the bound: from the page cache (warm) and, after asking the kernel to drop this file's
pages (`posix_fadvise DONTNEED`, this file only), from the disk (cold). The cache is deleted at the end.

    python benchmarks/out_of_core.py [--rows 4000000] [--dim 768] [--dirs /tmp /work]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

VAL_ROWS = 10_000
BLOCK_ROWS = 65_536
ROUNDS_ARGS = ["--protocol", "custom", "--seed-size", "20", "--per-round", "10", "--budget", "90"]


def build(path: Path, rows: int, dim: int) -> float:
    """Write the synthetic cache; seconds taken."""
    from embedcache.cache import EmbeddingCache
    from embedcache.metadata import Metadata

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, rows)
    split = np.zeros(rows, dtype=np.int64)
    split[rng.choice(rows, VAL_ROWS, replace=False)] = 1
    ids = np.char.add("r", np.arange(rows).astype(str))
    metadata = Metadata(ids=ids, label=labels, split=split, split_names=("train", "val"), label_names=("a", "b"))
    direction = rng.standard_normal(dim).astype(np.float32)
    direction *= 1.5 / np.linalg.norm(direction)
    started = time.perf_counter()
    cache = EmbeddingCache.create(path, metadata, dim=dim, dtype="float16", recipe={"benchmark": "out_of_core"},
                                  dataset={})
    for start in range(0, rows, BLOCK_ROWS):
        stop = min(start + BLOCK_ROWS, rows)
        block = rng.standard_normal((stop - start, dim), dtype=np.float32)
        block += np.where(labels[start:stop, None] == 1, direction, -direction)
        cache.append(block.astype(np.float16))
    cache.finalize()
    cache.close()
    return time.perf_counter() - started


def read_once(path: Path, cold: bool) -> float:
    """Seconds to read every embedding row once through the cache (HDF5, checksums verified)."""
    from embedcache.cache import EmbeddingCache

    if cold:
        fd = os.open(path, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
    started = time.perf_counter()
    with EmbeddingCache(path) as cache:
        for _ in cache.iter_chunks():
            pass
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=4_000_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--dirs", nargs="+", default=["/tmp", "/work"], help="where the cache may go")
    args = parser.parse_args()

    need = args.rows * args.dim * 2
    free = {d: shutil.disk_usage(d).free for d in args.dirs if Path(d).is_dir()}
    where = max(free, key=free.get)
    rows = args.rows
    if free[where] < need * 1.2:
        rows = int(free[where] / 1.2 / (args.dim * 2)) // BLOCK_ROWS * BLOCK_ROWS
        print(f"only {free[where] / 1e9:.1f} GB free in {where}: measuring {rows:,} rows instead of {args.rows:,}")
    print("free space: " + ", ".join(f"{d} {f / 1e9:.0f} GB" for d, f in free.items()) + f"; cache in {where}")

    with tempfile.TemporaryDirectory(dir=where, prefix="embedcache-ooc-") as tmp:
        tmp = Path(tmp)
        cache = tmp / "pool.h5"
        seconds = build(cache, rows, args.dim)
        size = cache.stat().st_size
        print(f"built {rows:,} x {args.dim} float16 ({size / 1e9:.2f} GB on disk) in {seconds:.0f} s")

        command = ["/usr/bin/time", "-v", sys.executable, "-m", "embedcache.cli", "al", "--cache", str(cache),
                   "--stream-pool", *ROUNDS_ARGS, "--strategy", "least-confidence", "--seeds", "0", "--out",
                   str(tmp / "runs"), "--quiet"]
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if done.returncode != 0:
            sys.exit(f"the AL run failed:\n{done.stdout}\n{done.stderr}")
        peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
        lines = (tmp / "runs" / "least-confidence-seed0.jsonl").read_text().splitlines()
        rounds = [json.loads(line) for line in lines[1:]]
        per_round = [r["seconds"] for r in rounds]
        warm = read_once(cache, cold=False)
        cold = read_once(cache, cold=True)

    print(f"AL run: {len(rounds)} rounds, {wall:.1f} s wall in all (start-up, the finiteness check, the "
          f"statistics pass and the rounds), peak RSS {peak_kb / 1024**2:.2f} GiB (goal < 2 GB)")
    print(f"per round: mean {np.mean(per_round):.2f} s (acquiring rounds {np.mean(per_round[:-1]):.2f} s, "
          f"min {min(per_round[:-1]):.2f}, max {max(per_round[:-1]):.2f}; last round, no scoring, "
          f"{per_round[-1]:.2f} s)")
    print(f"read-once of the file through the cache: {warm:.2f} s from the page cache ({size / warm / 1e9:.2f} GB/s), "
          f"{cold:.2f} s from disk ({size / cold / 1e9:.2f} GB/s)")
    print(f"an acquiring round / warm read-once = {np.mean(per_round[:-1]) / warm:.2f}; / cold = "
          f"{np.mean(per_round[:-1]) / cold:.2f}")


if __name__ == "__main__":
    main()
