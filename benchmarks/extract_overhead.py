"""How much does `extract` cost beyond the backbone's forward pass?

On the same images, in one process, times
  (a) a bare loop of the forward pass over inputs already decoded and preprocessed in memory, and
  (b) `embedcache.extract` end to end: reading and decoding the files in a DataLoader, the forward
      pass, and writing the HDF5 cache,
and prints b/a. Goal on a 2-core CPU with a small model: b/a <= 1.10.

    python benchmarks/extract_overhead.py [--model resnet18] [--images 256] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet18", help="timm model (random init)")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--size", type=int, default=256, help="side of the generated JPEGs")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="best of this many timings of each")
    args = parser.parse_args()

    from embedcache.backbones import create_backbone
    from embedcache.datasets import create_dataset
    from embedcache.datasets.synthetic import write_image_folder
    from embedcache.extract import ExtractOptions, extract

    with tempfile.TemporaryDirectory() as tmp:
        root = write_image_folder(Path(tmp) / "images", per_class=args.images // 2, size=args.size)
        for png in root.rglob("*.png"):  # JPEG, as real photo datasets are
            Image.open(png).save(png.with_suffix(".jpg"), quality=90)
            png.unlink()
        data = create_dataset("imagefolder", root)
        backbone = create_backbone(f"timm:{args.model}", weights="random")
        model = backbone.model.eval()
        inputs = torch.stack([backbone.transform(data.load(i)) for i in range(len(data.inputs))])

        def bare() -> float:
            started = time.perf_counter()
            with torch.inference_mode():
                for start in range(0, len(inputs), args.batch_size):
                    model(inputs[start:start + args.batch_size])
            return time.perf_counter() - started

        def end_to_end(i: int) -> float:
            started = time.perf_counter()
            extract(data, backbone, Path(tmp) / f"c{i}.h5", ExtractOptions(batch_size=args.batch_size))
            return time.perf_counter() - started

        bare()  # warm-up (allocator, oneDNN primitives)
        a = min(bare() for _ in range(args.repeats))
        b = min(end_to_end(i) for i in range(args.repeats))

    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}")
    print(f"{args.images} JPEGs {args.size}px -> timm:{args.model} at {backbone.preprocess()['resolution']}px, "
          f"batch {args.batch_size}")
    print(f"(a) bare forward loop      {a:7.2f} s  {args.images / a:7.1f} img/s")
    print(f"(b) extract end to end     {b:7.2f} s  {args.images / b:7.1f} img/s")
    print(f"ratio b/a                  {b / a:7.3f}   (goal <= 1.10)")


if __name__ == "__main__":
    main()
