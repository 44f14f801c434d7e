"""Finetune-mode speed: images per second of one BiT training step (forward, backward and SGD
update of batch 32 accumulated over micro-batches), through `FinetuneLearner.fit` itself.

A warm-up fit loads and resizes the labelled images (later rounds reuse them) and warms the
kernels; the timed fit then runs `--steps` steps at a constant learning rate, including the
per-step crop/flip/normalise, host-to-device copy and the loss all-reduce (a no-op in one process).
Also times scoring (`predict_proba`, eval mode) for comparison. Defaults: on CPU a small model
(ResNet-18) at a 128 crop; on a CUDA GPU (when there is one, or with --device cuda) the paper's
BiT-M-R50x1 architecture at 512 → 480 with bf16 autocast and channels_last.

    python benchmarks/finetune_step.py [--model timm:resnetv2_50x1_bit] [--device auto] [--steps 5]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None,
                        help="backbone spec, random init (default: timm:resnet18 on CPU, "
                             "timm:resnetv2_50x1_bit on CUDA)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: 3 on CPU, 20 on CUDA)")
    parser.add_argument("--batch", type=int, default=32, help="examples per optimizer step")
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--crop", type=int, default=None, help="training crop (default: 128 on CPU, 480 on CUDA)")
    parser.add_argument("--amp", default="auto", choices=["auto", "bf16", "none"])
    parser.add_argument("--images", type=int, default=64, help="labelled images generated")
    args = parser.parse_args()

    import torch

    from embedcache.backbones import create_backbone
    from embedcache.datasets import create_dataset
    from embedcache.datasets.synthetic import write_image_manifest
    from embedcache.devices import resolve_device
    from embedcache.learners.finetune import FinetuneLearner, FinetuneOptions, default_recipe

    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    crop = args.crop or (480 if cuda else 128)
    resize = crop * 512 // 480
    steps = args.steps or (20 if cuda else 3)
    model = args.model or ("timm:resnetv2_50x1_bit" if cuda else "timm:resnet18")
    recipe = default_recipe("image", {"batch_size": str(args.batch), "crop": str(crop), "resize": str(resize),
                                      "eval_resize": str(crop), "schedule": f"0,{steps}"})
    options = FinetuneOptions(device=str(device), amp=args.amp, micro_batch=args.micro_batch)
    with tempfile.TemporaryDirectory() as folder:
        data = create_dataset("manifest", write_image_manifest(Path(folder), n=args.images, size=resize))
        learner = FinetuneLearner(data, create_backbone(model, weights="random"), 2, recipe, options)
        rows = np.arange(args.images)
        y = data.metadata.label
        learner.fit(rows, y)  # warm-up: loads the images, builds the kernels
        started = time.perf_counter()
        learner.fit(rows, y)
        if cuda:
            torch.cuda.synchronize()
        train = time.perf_counter() - started
        learner.predict_proba(rows)
        started = time.perf_counter()
        learner.predict_proba(rows)
        score = time.perf_counter() - started

    name = torch.cuda.get_device_name(device) if cuda else f"{platform.machine()} {platform.processor() or 'CPU'}"
    print(f"device: {name}; {torch.get_num_threads()} torch threads; torch {torch.__version__}")
    print(f"model {model} (random init), train crop {crop} from {resize}, eval {crop}, amp {learner.amp}, "
          f"channels_last {learner.channels_last}")
    assert learner.training_["steps"] == steps, learner.training_
    print(f"train: {steps} steps of {args.batch} (micro-batches of {args.micro_batch}) in {train:.2f} s = "
          f"{train / steps:.3f} s/step, {steps * args.batch / train:.1f} images/s")
    print(f"score: {args.images} images in {score:.2f} s = {args.images / score:.1f} images/s")


if __name__ == "__main__":
    main()
