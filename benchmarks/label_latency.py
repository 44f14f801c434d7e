"""Click-to-next latency of the labelling page on a large pool.

    python benchmarks/label_latency.py                    # 100,000 x 768 float16, 2 classes
    python benchmarks/label_latency.py --classes 10       # a 10-class task
    python benchmarks/label_latency.py --n 20000 --labels 30

Builds a synthetic cache (Gaussian features with a class direction, a manifest of texts) in a
temporary folder, starts `embedcache label` as a real server process on 127.0.0.1, and labels
examples the way the page does: POST /api/label with the shown example's true class, then read the
next example from the answer. Each label is appended and fsynced and the head refits (warm-started)
before the answer is sent; the answer's next example is the best of the last full ranking's
shortlist under the new head, and the whole pool is re-ranked by the fused scorer right after the
answer is sent (see embedcache/workflow/session.py).

Two passes of --labels labels each, after --warmup ones: "at a person's pace" waits --think-ms
between receiving an example and labelling it (reading it takes a person longer than that), so the
full re-rank is done before the next click; "back to back" clicks at once, so each request first
finishes the previous full re-rank (the worst case). Reported: end to end (the client's POST round
trip over loopback, JSON parsed) and server side (the app's time from request to answer, from its
Server-Timing header), p50 and p95, the refit's share, and how long the background full re-rank
takes. Goal: end to end <= 300 ms at a person's pace.
"""

from __future__ import annotations

import argparse
import csv
import http.client
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from score import cpu_model, versions  # noqa: E402  (the benchmarks' shared machine description)


def build(folder: Path, n: int, d: int, classes: int, seed: int) -> tuple[Path, list[str]]:
    """A float16 cache of n rows, its manifest of texts, and each row's true class name."""
    from embedcache.cache import EmbeddingCache
    from embedcache.datasets import create_dataset

    rng = np.random.default_rng(seed)
    truth = rng.integers(0, classes, n)
    names = [f"class{c}" for c in range(classes)]
    manifest = folder / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "text", "split"])
        for i in range(n):
            writer.writerow([f"ex{i:06d}", f"synthetic example {i}, a text of about the length of a short review",
                             "train"])
    centres = rng.normal(size=(classes, d)).astype(np.float32)
    x = rng.normal(size=(n, d)).astype(np.float32) + 0.35 * centres[truth]
    dataset = create_dataset("manifest", manifest)
    recipe = {"spec": "benchmark:gaussian", "architecture": {"benchmark": "gaussian"}, "weights": {"source": "random",
              "seed": seed}, "features": {}, "preprocess": {}, "amp": None, "dtype": "float16"}
    cache = EmbeddingCache.write(folder / "pool.h5", x.astype(np.float16), dataset.metadata, recipe=recipe,
                                 dataset=dataset.describe())
    return cache, [names[c] for c in truth]


def post(connection: http.client.HTTPConnection, path: str, body: dict) -> tuple[dict, float]:
    connection.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    data = json.loads(response.read())
    if response.status != 200:
        raise RuntimeError(f"{path}: {response.status} {data}")
    timing = response.getheader("Server-Timing", "app;dur=nan")
    return data, float(timing.split("dur=")[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--d", type=int, default=768)
    parser.add_argument("--classes", type=int, default=2)
    parser.add_argument("--labels", type=int, default=100, help="labels measured per pass")
    parser.add_argument("--warmup", type=int, default=5, help="labels before measuring, per pass")
    parser.add_argument("--think-ms", type=int, default=700, help="pause before each label in the first pass")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        started = time.perf_counter()
        cache, truth = build(folder, args.n, args.d, args.classes, args.seed)
        row = {f"ex{i:06d}": name for i, name in enumerate(truth)}
        print(f"cache {args.n:,} x {args.d} float16, {args.classes} classes: "
              f"built in {time.perf_counter() - started:.1f} s")
        started = time.perf_counter()
        server = subprocess.Popen(
            [sys.executable, "-m", "embedcache.cli", "label", str(cache), "--labels", str(folder / "labels.csv"),
             "--port", "0", "--classes", ",".join(f"class{c}" for c in range(args.classes))],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            line = server.stdout.readline()
            if not line.startswith("Labelling page:"):
                raise SystemExit(f"the server did not start: {line!r}")
            port = int(line.split()[2].rstrip("/").rsplit(":", 1)[1])
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            connection.request("GET", "/api/state?tab=bench")
            state = json.loads(connection.getresponse().read())
            print(f"server up and first example shown after {time.perf_counter() - started:.1f} s "
                  "(start, read the cache, standardise and copy the pool)")
            load_before = os.getloadavg()
            passes = {}
            for name, think in ((f"at a person's pace ({args.think_ms} ms)", args.think_ms), ("back to back", 0)):
                measured = {"end to end (loopback)": [], "server side (request)": [], "  of which refit": [],
                            "full re-rank (after)": []}
                for i in range(args.warmup + args.labels):
                    time.sleep(think / 1e3)
                    example = state["example"]["id"]
                    t0 = time.perf_counter()
                    state, app_ms = post(connection, "/api/label", {"tab": "bench", "id": example,
                                                                    "label": row[example]})
                    elapsed = 1e3 * (time.perf_counter() - t0)
                    if i >= args.warmup:
                        for key, value in zip(measured, (elapsed, app_ms, state["timing"]["fit_ms"],
                                                         state["timing"]["full_rank_ms"])):
                            measured[key].append(value)
                passes[name] = measured
            load_after = os.getloadavg()
        finally:
            server.terminate()
            server.wait(timeout=60)

    total_labels = 2 * (args.warmup + args.labels)
    print(f"\nclick to next, {args.labels} labels per pass after {args.warmup} warm-up ones ({total_labels} labelled "
          "in all):")
    print(f"  {'':<34}{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}")
    for name, measured in passes.items():
        print(f"  {name}")
        for key, values in measured.items():
            print(f"    {key:<32}{np.percentile(values, 50):>9.1f}{np.percentile(values, 95):>9.1f}{max(values):>9.1f}")
    print(f"\nload average before/after: {load_before[0]:.2f} / {load_after[0]:.2f} (on {os.cpu_count()} CPUs)")
    print(f"machine: {cpu_model()}; {versions('numpy', 'torch', 'starlette', 'uvicorn')}")
    pace = next(iter(passes.values()))["end to end (loopback)"]
    verdict = "met" if np.percentile(pace, 95) <= 300 else "MISSED"
    print(f"goal: end to end p95 <= 300 ms at a person's pace -> {verdict}")


if __name__ == "__main__":
    main()
