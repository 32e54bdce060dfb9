"""Training speed and accuracy of new2 on one GPU (issue 2's goals: the default recipe >= 87.2% single-crop
test accuracy in <= 15 s of training; the best recipe >= 89.5%).

    python benchmarks/bench_train_gpu.py --data ../shared/data/cifar10-jpeg.tar.gz [--runs fast,paper] [--json results/train.json]

Reports the time to load and decode the data (first, then cached), and for each run the training time
(steps only), training images/s, single center-crop and mirrored-crop test accuracy. Runs on the CPU too
(with --epochs to keep it short), which only checks that the script works.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import torch

from edgecls.artifacts import library_versions, write_json
from edgecls.data import load_cifar10
from edgecls.checkpoint import load_checkpoint
from edgecls.evaluate import torch_logits
from edgecls.metrics import accuracy
from edgecls.train import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/cifar10-jpeg.tar.gz")
    parser.add_argument("--runs", default="fast,paper", help="comma-separated recipes to run")
    parser.add_argument("--epochs", type=int, help="override every recipe's epochs (smoke tests)")
    parser.add_argument("--train-images", type=int, help="train on a subset (smoke tests)")
    parser.add_argument("--json", default="results/bench-train.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as cache:  # a fresh cache, so the first load really decodes
        os.environ["EDGECLS_CACHE"] = cache
        started = time.perf_counter()
        load_cifar10(args.data)
        decode_seconds = time.perf_counter() - started
        started = time.perf_counter()
        data = load_cifar10(args.data)
        cached_seconds = time.perf_counter() - started
    if args.train_images:
        data = data.subset(args.train_images, None)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    report = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
              "versions": library_versions("torch"), "data": data.source,
              "load_decode_seconds": round(decode_seconds, 2), "load_cached_seconds": round(cached_seconds, 2), "runs": []}
    print(f"data: decode {decode_seconds:.1f} s, cached load {cached_seconds:.1f} s")
    for recipe in args.runs.split(","):
        with tempfile.TemporaryDirectory() as out:
            result = train("new2", data, recipe=recipe, epochs=args.epochs, device=device, out_dir=out)
            saved = load_checkpoint(result.checkpoint)
            model = saved.build_model().to(device)
            mirrored = accuracy(torch_logits(model, data.test_images, saved.preprocess, device=device, mirror=True),
                                data.test_labels)
        run = {"recipe": recipe, "epochs": len(result.history), "train_seconds": round(result.train_seconds, 2),
               "images_per_second": round(result.images_per_second), "test_accuracy": round(result.test_accuracy, 2),
               "test_accuracy_mirrored": round(mirrored, 2)}
        report["runs"].append(run)
        print(json.dumps(run))
    write_json(args.json, report)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
