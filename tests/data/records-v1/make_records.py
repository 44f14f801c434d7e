"""How these files were made: run records in the first format (header key `"schema": 1`), written by
embedcache at commit c98f66c (before records were typed) with this script, run from a checkout of that
commit as `python make_records.py /tmp/gen/out`; then tiny.h5, linear/*.jsonl and hybrid/*.jsonl were
copied here (their headers keep the /tmp/gen/out paths). Kept for provenance only: the tests read
the files and never run this script."""

import shutil
import sys
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from embedcache.cache import EmbeddingCache
from embedcache.cli import main
from embedcache.datasets.synthetic import write_image_manifest
from embedcache.metadata import Metadata


def invoke(args: list[str]) -> None:
    result = CliRunner().invoke(main, args)
    print(result.output)
    assert result.exit_code == 0


out = Path(sys.argv[1])
shutil.rmtree(out, ignore_errors=True)
out.mkdir(parents=True)
# linear mode: a tiny cache with a label-correlated `place` and a `user` group, least-confidence and random
rng = np.random.default_rng(7)
n = 96
label = np.arange(n) % 2
place = np.where(rng.random(n) < 0.8, label, 1 - label)
x = rng.normal(size=(n, 6)).astype(np.float32)
x[:, 0] += 1.5 * label
x[:, 1] += 1.5 * place
meta = Metadata.from_values(ids=[f"ex{i:03d}" for i in range(n)], labels=label.tolist(),
                            splits=["train" if i % 3 else "val" for i in range(n)],
                            groups={"place": np.array(["land", "water"])[place].tolist(),
                                    "user": (np.arange(n) % 5).tolist()},
                            label_names=["landbird", "waterbird"])
recipe = {"spec": "test:v1-records", "architecture": {"test": "gaussian"}, "weights": {"source": "random", "seed": 0},
          "features": {"layer": "none"}, "preprocess": {}, "amp": None, "dtype": "float32"}
cache = EmbeddingCache.write(out / "tiny.h5", x, meta, recipe=recipe)
invoke(["al", "--cache", str(cache), "--seed-size", "8", "--per-round", "4", "--budget", "16", "--eval-every", "2",
        "--group", "place", "--group", "label*place", "--worst-group", "label*place", "--metric", "macro_f1",
        "--metric", "class_balanced_accuracy", "--percentile", "user:10", "--strategy", "least-confidence",
        "--strategy", "random", "--seeds", "0-1", "--out", str(out / "linear"), "--quiet"])
invoke(["report", str(out / "linear"), "--out", str(out / "report"), "--quiet"])
# hybrid: finetuning evaluates, a linear head on a cache of the same images ranks
images = write_image_manifest(out / "images", n=48, size=32)
backbone = "timm:test_efficientnet_gn"
invoke(["extract", "--dataset", "manifest", "--root", str(images), "--backbone", backbone, "--weights", "random",
        "--resolution", "32", "--out", str(out / "image.h5"), "--workers", "0", "--device", "cpu", "--dtype",
        "float32", "--quiet"])
invoke(["al", "--mode", "finetune", "--score-with", "linear", "--cache", str(out / "image.h5"), "--dataset",
        "manifest", "--root", str(images), "--backbone", backbone, "--weights", "random", "--recipe", "resize=36",
        "--recipe", "crop=32", "--recipe", "eval_resize=32", "--recipe", "batch_size=8", "--recipe",
        "schedule=1,2,3", "--micro-batch", "4", "--workers", "0", "--device", "cpu", "--seed-size", "4",
        "--per-round", "2", "--budget", "2", "--group", "place", "--strategy", "least-confidence", "--seeds", "0",
        "--out", str(out / "hybrid"), "--quiet"])
