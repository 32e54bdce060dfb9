"""One's own data set, as a new user has it: a folder of photos of mixed sizes and formats, one folder per class, no
test folder, taken through the whole journey with no option beyond the ones a user must give.

    .venv/bin/python benchmarks/bench_own_data.py --data ../shared/data/cifar10-jpeg.tar.gz --json results/own-data.json

Builds WORK/photos/train/<class>/ from the first --per-class training images of each of --classes of the CIFAR-10
image archive, each enlarged (bicubic) to a seeded random size of 40 to 200 pixels a side and saved in turn as JPEG,
PNG, WebP and BMP; then runs, as a user types them:

    edgecls train --data photos                                  (no option: default recipe, default --val-split)
    edgecls export --checkpoint ... --data photos --int8 --target cpu --max-drop 2 --min-agreement 99
    edgecls bench --engine export/new2.int8.onnx --data photos --json ...
    edgecls predict <photo files> --engine export/new2.int8.onnx
    edgecls report checkpoints/new2.pt --data photos

and writes each command's time, exit code and last lines, with the figures read back from the files they wrote
(class counts, held-out splits, accuracies, the int8 report, bench throughput), as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FORMATS = [("jpg", "JPEG", {"quality": 90}), ("png", "PNG", {}), ("webp", "WEBP", {"quality": 90}), ("bmp", "BMP", {})]


def build_photos(archive: Path, classes: list[str], per_class: int, root: Path, seed: int) -> dict:
    """The photo folder: the first `per_class` training images of each class, by file name, enlarged and re-encoded."""
    from PIL import Image

    members: dict[str, list[tarfile.TarInfo]] = {name: [] for name in classes}
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            parts = member.name.split("/")
            if member.isfile() and len(parts) >= 3 and parts[-3] == "train" and parts[-2] in members:
                members[parts[-2]].append(member)
        rng = np.random.default_rng(seed)
        sizes: list[tuple[int, ...]] = []
        for name in classes:
            folder = root / "train" / name
            folder.mkdir(parents=True, exist_ok=True)
            for i, member in enumerate(sorted(members[name], key=lambda m: m.name)[:per_class]):
                with Image.open(tar.extractfile(member)) as image:
                    size = tuple(int(v) for v in rng.integers(40, 201, 2))
                    suffix, kind, options = FORMATS[i % len(FORMATS)]
                    image.convert("RGB").resize(size, Image.BICUBIC).save(folder / f"{i:04d}.{suffix}", kind, **options)
                    sizes.append(size)
    areas = [w * h for w, h in sizes]
    return {"classes": classes, "per_class": per_class, "images": len(sizes),
            "formats": [kind for _, kind, _ in FORMATS], "smallest": list(sizes[int(np.argmin(areas))]),
            "largest": list(sizes[int(np.argmax(areas))]),
            "bytes": sum(f.stat().st_size for f in root.rglob("*") if f.is_file())}


def edgecls(work: Path, *args: str, timeout: float = 3600) -> dict:
    """Run `edgecls ARGS` in `work` as a user would; its time, exit code and last lines of output."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EDGECLS_CACHE": str(work / "cache")}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "edgecls", *args], cwd=work, env=env, capture_output=True, text=True,
                          timeout=timeout)
    lines = [line for line in (done.stdout + done.stderr).splitlines()
             if line.strip() and "\r" not in line and not line.startswith(("decoding images", "calibrat"))]
    result = {"command": "edgecls " + " ".join(args), "exit_code": done.returncode,
              "seconds": round(time.perf_counter() - started, 1), "output": lines[-25:]}
    print(f"{result['command']}: exit {done.returncode} in {result['seconds']} s", flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"))
    parser.add_argument("--classes", default="automobile,bird,ship")
    parser.add_argument("--per-class", type=int, default=700)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default="results/own-data", help="Folder for the photos and every artifact.")
    parser.add_argument("--json", default="results/own-data.json")
    parser.add_argument("--train-options", default="",
                        help="Options added to `edgecls train`, e.g. '--epochs 8' where the CPU is too busy for 40.")
    args = parser.parse_args()

    work = Path(args.work).resolve()
    photos = work / "photos"
    if photos.exists():
        sys.exit(f"{photos} exists; remove it or pass another --work")
    photos.mkdir(parents=True)
    started = time.perf_counter()
    figures: dict = {"data": build_photos(Path(args.data), args.classes.split(","), args.per_class, photos, args.seed)}
    figures["data"]["build_seconds"] = round(time.perf_counter() - started, 1)
    runs = figures["commands"] = []
    runs.append(edgecls(work, "train", "--data", "photos", *args.train_options.split()))
    runs.append(edgecls(work, "export", "--checkpoint", "checkpoints/new2.pt", "--data", "photos", "--int8",
                        "--target", "cpu", "--max-drop", "2", "--min-agreement", "99"))
    runs.append(edgecls(work, "bench", "--engine", "export/new2.int8.onnx", "--data", "photos", "--json",
                        "results/new2.int8.json"))
    samples = [str(next((photos / "train" / name).glob(f"*.{suffix}")).relative_to(work))
               for name in args.classes.split(",") for suffix, _, _ in FORMATS[:2]]
    runs.append(edgecls(work, "predict", *samples, "--engine", "export/new2.int8.onnx", "--top-k", "2"))
    runs.append(edgecls(work, "report", "checkpoints/new2.pt", "--data", "photos", "-o", "reports/new2.html"))

    from edgecls.checkpoint import load_checkpoint
    from edgecls.formats import Int8Report, ModelMetadata

    if (work / "checkpoints" / "new2.pt").is_file():
        checkpoint = load_checkpoint(work / "checkpoints" / "new2.pt")
        train_seconds = re.search(r"after ([\d.]+) s of training", " ".join(runs[0]["output"]))
        figures["checkpoint"] = {"data": checkpoint.data, "val_split": checkpoint.train_args["val_split"],
                                 "recipe": checkpoint.train_args["recipe"], "epochs": checkpoint.epochs,
                                 "batch_size": checkpoint.train_args["batch_size"],
                                 "test_accuracy": checkpoint.test_accuracy, "val_accuracy": checkpoint.val_accuracy,
                                 "train_seconds": float(train_seconds.group(1)) if train_seconds else None,
                                 "class_names": list(checkpoint.preprocess.class_names),
                                 "input_size": checkpoint.preprocess.input_size}
    int8_report = work / "calibration" / "new2.int8-report.json"
    if int8_report.is_file():
        report = Int8Report.read(int8_report)
        figures["int8"] = {"passed": report.passed, "method": report.method, "float_layers": report.float_layers,
                           "int8_layers": report.int8_layers, "validation": report.result["validation"],
                           "test": report.result["test"], "throughput": report.throughput,
                           "onnx_class_names": list(ModelMetadata.read(work / "export" / "new2.int8.onnx")
                                                    .preprocess.class_names)}
    bench_json = work / "results" / "new2.int8.json"
    if bench_json.is_file():
        figures["bench"] = json.loads(bench_json.read_text())
    figures["environment"] = {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(),
                              "load_average": os.getloadavg()}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(figures, indent=1, default=str) + "\n")
    print(f"wrote {args.json}")
    return 0 if all(run["exit_code"] == 0 for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
