"""How fast, and in how much memory, does `embedcache import` bring in a large embeddings file?

Writes a ROWS x DIM float16 array as .npy (and as Parquet: an id column and a fixed_size_list column,
row groups of --row-group rows, snappy, no dictionary encoding, which would make pyarrow's decoding of
float16 vectors about ten times slower) plus a metadata CSV (id, label, split) in a temporary folder,
then, for each format, in a fresh child process (so its peak RSS is its own):
  (a) reads the vectors once, block by block, with plain numpy (file reads) or pyarrow (iter_batches),
  (b) imports them with `embedcache.importer.import_embeddings`,
and prints rows/s, MB/s of vectors, the ratio b / a, the time of each import phase (metadata table,
check pass, write pass) and the child's peak RSS (resource.getrusage). Files are freshly written, so
both (a) and (b) read from the page cache.

    python benchmarks/import_throughput.py [--rows 1000000] [--dim 768] [--formats npy,parquet]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BLOCK_ROWS = 1 << 15


def write_files(folder: Path, rows: int, dim: int, formats: list[str], row_group: int) -> None:
    """The array and metadata, written a block at a time (never the whole array in memory)."""
    from numpy.lib import format as npy

    rng = np.random.default_rng(0)

    def blocks():
        for start in range(0, rows, BLOCK_ROWS):
            yield rng.standard_normal((min(BLOCK_ROWS, rows - start), dim), dtype=np.float32).astype(np.float16)

    if "npy" in formats:
        with open(folder / "vectors.npy", "wb") as f:
            npy.write_array_header_1_0(f, {"descr": "<f2", "fortran_order": False, "shape": (rows, dim)})
            for block in blocks():
                f.write(block.tobytes())
    if "parquet" in formats:
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = pa.schema([("id", pa.string()), ("embedding", pa.list_(pa.float16(), dim))])
        with pq.ParquetWriter(folder / "vectors.parquet", schema, use_dictionary=False) as writer:
            start = 0
            for block in blocks():
                ids = pa.array([f"x{i:07d}" for i in range(start, start + len(block))])
                vectors = pa.FixedSizeListArray.from_arrays(pa.array(block.ravel()), dim)
                writer.write_table(pa.table([ids, vectors], schema=schema), row_group_size=row_group)
                start += len(block)
    with open(folder / "metadata.csv", "w") as f:
        f.write("id,label,split\n")
        for i in range(rows):
            f.write(f"x{i:07d},{i % 10},{'val' if i % 5 == 0 else 'train'}\n")


def read_once(path: Path) -> float:
    """Seconds to read every vector once into numpy, a block at a time."""
    started = time.perf_counter()
    if path.suffix == ".npy":
        from numpy.lib import format as npy

        with open(path, "rb") as f:
            npy.read_magic(f)
            shape, _, dtype = npy.read_array_header_1_0(f)
            buffer = np.empty((BLOCK_ROWS, shape[1]), dtype=dtype)
            for start in range(0, shape[0], BLOCK_ROWS):
                n = min(BLOCK_ROWS, shape[0] - start)
                f.readinto(memoryview(buffer[:n]).cast("B"))
    else:
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20).iter_batches(
                batch_size=BLOCK_ROWS, columns=["embedding"]):
            batch.column(0).flatten().to_numpy()
    return time.perf_counter() - started


def measure(folder: Path, fmt: str) -> dict:
    """One format, in this (child) process: read once, then import; phase times and peak RSS."""
    from embedcache.importer import ImportOptions, import_embeddings, read_metadata_table

    path = folder / f"vectors.{fmt}"
    options = ImportOptions(model="benchmark: random float16")
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    once = read_once(path)
    marks = {}

    def progress(phase: str, done: int, total: int) -> None:
        if done == 0:
            marks[phase] = time.perf_counter()

    started = time.perf_counter()
    result = import_embeddings(path, folder / "metadata.csv", folder / f"{fmt}.h5", options, progress=progress)
    finished = time.perf_counter()
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    table_started = time.perf_counter()
    read_metadata_table(folder / "metadata.csv", options)
    table = time.perf_counter() - table_started
    os.unlink(folder / f"{fmt}.h5")
    return {"format": fmt, "rows": result.rows, "dim": result.dim, "vector_bytes": path.stat().st_size,
            "read_once_s": once, "import_s": result.seconds, "before_check_s": marks["check"] - started,
            "metadata_table_s": table, "check_s": marks["write"] - marks["check"],
            "write_s": finished - marks["write"], "aligned_by": result.aligned_by,
            "peak_rss_mib": peak_rss, "rss_before_mib": base_rss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--formats", default="npy,parquet")
    parser.add_argument("--row-group", type=int, default=65536, help="Parquet rows per row group")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # "write" or a format to measure, with --folder
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "write":
        write_files(args.folder, args.rows, args.dim, args.formats.split(","), args.row_group)
        return
    if args.child:
        print(json.dumps(measure(args.folder, args.child)))
        return
    formats = args.formats.split(",")
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, numpy {np.__version__}; "
          f"{args.rows:,} x {args.dim} float16 ({args.rows * args.dim * 2 / 1e9:.2f} GB)")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        started = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--child", "write", "--folder", str(folder), "--rows", str(args.rows),
                        "--dim", str(args.dim), "--formats", args.formats, "--row-group", str(args.row_group)],
                       check=True)
        print(f"wrote the files in {time.perf_counter() - started:.0f} s")
        for fmt in formats:
            child = subprocess.run([sys.executable, __file__, "--child", fmt, "--folder", str(folder)],
                                   check=True, capture_output=True, text=True)
            r = json.loads(child.stdout.strip().splitlines()[-1])
            mb = r["rows"] * r["dim"] * 2 / 1e6
            print(f"\n{fmt} ({r['vector_bytes'] / 1e6:,.0f} MB on disk, matched by {r['aligned_by']})\n"
                  f"  import      {r['import_s']:6.1f} s   {r['rows'] / r['import_s']:>10,.0f} rows/s   "
                  f"{mb / r['import_s']:6.0f} MB/s\n"
                  f"  read once   {r['read_once_s']:6.1f} s   {r['rows'] / r['read_once_s']:>10,.0f} rows/s   "
                  f"{mb / r['read_once_s']:6.0f} MB/s\n"
                  f"  ratio import / read once: {r['import_s'] / r['read_once_s']:.1f}\n"
                  f"  phases      open + metadata + align {r['before_check_s']:.1f} s (of which the CSV table "
                  f"{r['metadata_table_s']:.1f} s), check pass {r['check_s']:.1f} s, write pass {r['write_s']:.1f} s\n"
                  f"  peak RSS    {r['peak_rss_mib']:,.0f} MiB (the process before reading: "
                  f"{r['rss_before_mib']:,.0f} MiB; the vectors: {mb / 1.048576:,.0f} MiB)")


if __name__ == "__main__":
    main()
