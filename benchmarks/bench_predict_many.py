"""Where `edgecls predict` spends its time on many tiny images, and whether the time grows in proportion.

    .venv/bin/python benchmarks/bench_predict_many.py --engine export/new2.onnx --counts 1000,2000,4000 --json out.json

For each count N, writes N tiny (4x4) PNG files and times the stages `predict` runs for each image, the same
functions it calls: the header check (`check_image`), decoding and fitting to the network input (`fitted_batches`),
and the model (`Classifier.classify`), on ONNX Runtime's CPU provider. Reports seconds per stage, milliseconds per
image and the ratio of the largest N's per-image cost to the smallest's (about 1: proportional).
The adversarial round's 100,000 images took 815 s; this finds out which stage that was.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgecls.runtime import Classifier  # noqa: E402
from edgecls.runtime.images import check_image, expand_paths, fitted_batches  # noqa: E402


def measure(engine: Path, count: int, folder: Path) -> dict[str, float]:
    from PIL import Image

    rng = np.random.default_rng(count)
    for index in range(count):
        Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).save(folder / f"{index:06d}.png")
    started = time.perf_counter()
    files = expand_paths([folder])
    for path in files:
        check_image(path)
    checked = time.perf_counter()
    stages = {"list_and_check_s": checked - started, "decode_and_fit_s": 0.0, "model_s": 0.0}
    with Classifier.load(engine) as classifier:
        batches = iter(fitted_batches(files, classifier.preprocess, classifier.batch_size))
        while True:
            before = time.perf_counter()
            batch = next(batches, None)
            after = time.perf_counter()
            stages["decode_and_fit_s"] += after - before
            if batch is None:
                break
            classifier.classify(batch[1])
            stages["model_s"] += time.perf_counter() - after
    total = sum(stages.values())
    return {"images": count, **{k: round(v, 3) for k, v in stages.items()}, "total_s": round(total, 3),
            "ms_per_image": round(1000 * total / count, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", required=True, type=Path)
    parser.add_argument("--counts", default="1000,2000,4000")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    for count in (int(c) for c in args.counts.split(",")):
        with tempfile.TemporaryDirectory() as folder:
            rows.append(measure(args.engine, count, Path(folder)))
        print(json.dumps(rows[-1]), flush=True)
    result = {"rows": rows, "per_image_growth": round(rows[-1]["ms_per_image"] / rows[0]["ms_per_image"], 2)}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
