"""How these files were made: run records in the first format (header key `"schema": 1`), written by
embedcache at commit c98f66c (before records were typed) with

    git checkout c98f66c && python tests/data/records-v1/make_records.py /tmp/out

then tiny.h5, linear/*.jsonl and hybrid/*.jsonl copied here (their headers keep the /tmp paths they
were made at). Kept for provenance only: tests read the files, they never run this script (it
needs the code of that commit)."""
import json, shutil, sys
from pathlib import Path
import numpy as np
from click.testing import CliRunner
from embedcache.cache import EmbeddingCache
from embedcache.cli import main
from embedcache.metadata import Metadata
from embedcache.datasets.synthetic import write_image_manifest

out = Path(sys.argv[1]); shutil.rmtree(out, ignore_errors=True); out.mkdir(parents=True)
rng = np.random.default_rng(7)
n = 96
label = np.arange(n) % 2
place = np.where(rng.random(n) < 0.8, label, 1 - label)
x = rng.normal(size=(n, 6)).astype(np.float32)
x[:, 0] += 1.5 * label; x[:, 1] += 1.5 * place
meta = Metadata.from_values(ids=[f"ex{i:03d}" for i in range(n)], labels=label.tolist(),
                            splits=["train" if i % 3 else "val" for i in range(n)],
                            groups={"place": np.array(["land", "water"])[place].tolist(), "user": (np.arange(n) % 5).tolist()},
                            label_names=["landbird", "waterbird"])
recipe = {"spec": "test:v1-records", "architecture": {"test": "gaussian"}, "weights": {"source": "random", "seed": 0},
          "features": {"layer": "none"}, "preprocess": {}, "amp": None, "dtype": "float32"}
cache = EmbeddingCache.write(out / "tiny.h5", x, meta, recipe=recipe)
args = ["al", "--cache", str(cache), "--seed-size", "8", "--per-round", "4", "--budget", "16", "--eval-every", "2",
        "--group", "place", "--group", "label*place", "--worst-group", "label*place", "--metric", "macro_f1",
        "--metric", "class_balanced_accuracy", "--percentile", "user:10",
        "--strategy", "least-confidence", "--strategy", "random", "--seeds", "0-1", "--out", str(out / "linear"), "--quiet"]
r = CliRunner().invoke(main, args); print(r.output); assert r.exit_code == 0
r = CliRunner().invoke(main, ["report", str(out / "linear"), "--out", str(out / "report"), "--quiet"]); print(r.output); assert r.exit_code == 0
# hybrid: finetune evaluates, a linear head on a cache of the same images ranks
images = write_image_manifest(out / "images", n=48, size=32)
GN = "timm:test_efficientnet_gn"
r = CliRunner().invoke(main, ["extract", "--dataset", "manifest", "--root", str(images), "--backbone", GN, "--weights", "random",
    "--resolution", "32", "--out", str(out / "image.h5"), "--workers", "0", "--device", "cpu", "--dtype", "float32", "--quiet"])
print(r.output); assert r.exit_code == 0
r = CliRunner().invoke(main, ["al", "--mode", "finetune", "--score-with", "linear", "--cache", str(out / "image.h5"),
    "--dataset", "manifest", "--root", str(images), "--backbone", GN, "--weights", "random",
    "--recipe", "resize=36", "--recipe", "crop=32", "--recipe", "eval_resize=32", "--recipe", "batch_size=8",
    "--recipe", "schedule=1,2,3", "--micro-batch", "4", "--workers", "0", "--device", "cpu",
    "--seed-size", "4", "--per-round", "2", "--budget", "2", "--group", "place",
    "--strategy", "least-confidence", "--seeds", "0", "--out", str(out / "hybrid"), "--quiet"])
print(r.output); assert r.exit_code == 0
