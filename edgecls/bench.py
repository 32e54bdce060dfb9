"""`edgecls bench`: accuracy, parity with the original model, latency and throughput of any edgecls model file.

Every model is opened as a runner (`edgecls.runtime.open_runner`: .pt, .onnx and .plan alike) and wrapped in the
same `Classifier`, so all of them are measured by the same code on the same images; the reference comes from
`edgecls.reference`, the timings from `edgecls.timing`, the verdicts from `edgecls.metrics.Gate`. A checkpoint on
CUDA is also timed in fp16 and with CUDA graphs; every timed variant gets its own accuracy and parity line, and the
gate judges each. Results are one JSON-ready dict; the terminal tables are rendered from it, so both show the same
figures.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from edgecls import reference as references
from edgecls.data import Cifar10
from edgecls.defaults import BENCH_ALL_BATCH_SIZES, BENCH_ALL_DURATION_S, BENCH_ALL_WARMUP_S
from edgecls.errors import EdgeclsError
from edgecls.formats import BenchResult, Folders
from edgecls.metrics import Gate, GateResult, Parity, accuracy, parity, per_class_accuracy
from edgecls.reference import Reference
from edgecls.runtime import Classifier, Runner, open_runner
from edgecls.timing import TimingSettings, environment, time_classifier

ACCURACY_CHUNK = 500  # images per call while measuring accuracy (bounded memory, a progress bar that moves)
FORMATS = {".pt": "pytorch", ".onnx": "onnx", ".plan": "tensorrt", ".engine": "tensorrt"}
# bench --all: one quicker row per artifact, end to end only.
ALL_ARTIFACTS_TIMING = TimingSettings(BENCH_ALL_BATCH_SIZES, BENCH_ALL_DURATION_S, BENCH_ALL_WARMUP_S, min_calls=3,
                                      model_only=False, cuda_variants=False)

ReferenceLike = Union[str, Path, Reference, None]


@dataclass(frozen=True)
class RunnerOptions:
    """How to open model files."""

    provider: str = "cpu"  # ONNX Runtime's execution provider
    threads: Optional[int] = None  # CPU threads for ONNX Runtime / PyTorch (None: theirs)
    device: Optional[str] = None  # PyTorch's device for checkpoints (None: CUDA when available)

    def open(self, path: Path) -> Runner:
        return open_runner(path, provider=self.provider, threads=self.threads, device=self.device)


@dataclass(frozen=True)
class BenchSettings:
    """How to bench: what to time, how to open the model files, the parity gate, and whether to show progress."""

    timing: TimingSettings = TimingSettings()
    options: RunnerOptions = RunnerOptions()
    gate: Gate = Gate()
    progress: bool = False


def bench_model(path: str | Path, dataset: Cifar10, reference: ReferenceLike = None, *,
                settings: BenchSettings = BenchSettings(), strict_reference: Optional[bool] = None,
                logits: Optional[np.ndarray] = None) -> dict[str, Any]:
    """Accuracy, parity, timings and the gate's verdict of one model file on `dataset`'s test split, as a dict.

    `reference`: a checkpoint or .npz path, or a Reference; None looks for the one saved at export beside the model.
    A reference that does not belong to this model or data is an error when `strict_reference` (default: when it
    was given explicitly); otherwise it is reported as unused in the result's notes and the bench goes on without
    parity. An active `gate` without a usable reference is an error before any work. `logits`: this model's
    test-split logits when already computed (bench --all reuses the checkpoint's, computed as the reference).
    """
    timing, options, gate, progress = settings.timing, settings.options, settings.gate, settings.progress
    path = Path(path)
    if not path.is_file():
        raise EdgeclsError(f"model file {path} does not exist; check the path")
    strict = reference is not None if strict_reference is None else strict_reference
    with Classifier(options.open(path)) as classifier:
        metadata = classifier.metadata
        dataset.check_fits(metadata.preprocess, path)
        limit = classifier.runner.max_batch
        if limit is not None and max(timing.batch_sizes) > limit:  # the classifier would time several calls as one
            raise EdgeclsError(f"{path} accepts batches of at most {limit} images (its engine profile), but batch size "
                               f"{max(timing.batch_sizes)} was asked for; pass smaller --batch-sizes")
        notes: list[str] = []
        if reference is None:
            manifest = getattr(classifier.runner, "manifest", None)
            reference = references.find(path, metadata.model, manifest.onnx_path if manifest else None)
        aligned = _usable_reference(reference, metadata, path, dataset, options.device, strict, notes)
        if gate.active and aligned is None:  # say so before the work, not after it
            raise no_reference_error(path)
        if logits is None:
            logits = model_logits(classifier, dataset.test_images, progress)
        found = None if aligned is None else compare(logits, aligned)
        info = classifier.describe()
        variant = f"{info['backend']} {metadata.precision}"
        if classifier.runner.backend == "pytorch":
            variant = f"pytorch {info['mode']} {info['precision']}"
        timings = time_classifier(classifier, variant, dataset.test_images, timing)
        variants = [variant_record(variant, logits, found, dataset)]
        if classifier.runner.backend == "pytorch" and timing.cuda_variants:
            for name, extra in torch_variants(path, options):
                # Each timed variant answers for itself: a stale CUDA-graph buffer or an fp16 overflow shows here.
                with Classifier(extra) as other:
                    other_logits = model_logits(other, dataset.test_images, progress)
                    against = compare(other_logits, aligned) if aligned else parity(
                        other_logits, logits, dataset.test_labels, f"{variant}, this run")
                    variants.append(variant_record(name, other_logits, against, dataset))
                    timings += time_classifier(other, name, dataset.test_images, timing)

    labels = dataset.test_labels
    return BenchResult(
        model={"path": str(path), "format": FORMATS.get(path.suffix.lower(), path.suffix),
               "name": metadata.model, "precision": metadata.precision, "size_mb": path.stat().st_size / 1e6,
               "checkpoint_sha256": metadata.checkpoint_sha256, **info},
        data=data_summary(dataset),
        accuracy=accuracy(logits, labels),
        per_class=per_class_accuracy(logits, labels, list(dataset.class_names)),
        parity=asdict(found) if found else None,
        variants=variants,
        timings=timings,
        settings=timing.to_dict(),
        notes=notes,
        gates=judge(gate, variants).to_dict(),
        environment=environment(info),
    ).to_dict()


def _usable_reference(reference: ReferenceLike, metadata: Any, path: Path, dataset: Cifar10, device: Optional[str],
                      strict: bool, notes: list[str]) -> Optional[Reference]:
    """The reference loaded, checked and aligned; when it does not belong, an error if `strict`, else None with
    the reason appended to `notes`."""
    if reference is None:
        return None
    try:
        return references.resolve(reference, metadata, path, dataset, device)
    except EdgeclsError as exc:
        if strict:
            raise
        notes.append(f"reference not used: {exc}")
        return None


def compare(logits: np.ndarray, aligned: Reference) -> Parity:
    """Parity of the test-split `logits` with the rows of an aligned reference."""
    return parity(logits[aligned.indices], aligned.logits, aligned.labels, aligned.source)


def variant_record(variant: str, logits: np.ndarray, found: Optional[Parity], dataset: Cifar10) -> dict[str, Any]:
    """One timed variant's own answers: its accuracy and its parity (None: nothing to compare with)."""
    return {"variant": variant, "accuracy": accuracy(logits, dataset.test_labels),
            "parity": asdict(found) if found else None}


def judge(gate: Gate, variants: list[dict[str, Any]], missing: str = "no reference to compare with") -> GateResult:
    """The gate's verdict on every timed variant (the model's own first); with several, failures name theirs."""
    failures: list[str] = []
    for record in variants:
        verdict = gate.check(Parity(**record["parity"]) if record["parity"] else None, missing)
        failures += [f"{record['variant']}: {failure}" if len(variants) > 1 else failure for failure in verdict.failures]
    return GateResult(gate, tuple(failures))


def model_logits(classifier: Classifier, images: np.ndarray, progress: bool = False) -> np.ndarray:
    starts = range(0, len(images), ACCURACY_CHUNK)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="accuracy", unit="batch", leave=False)
    return np.concatenate([classifier.logits(images[start : start + ACCURACY_CHUNK]) for start in starts])


def torch_variants(path: Path, options: RunnerOptions) -> list[tuple[str, Runner]]:
    """For a checkpoint on CUDA: eager fp16 and CUDA-graph fp32 and fp16, besides the main (eager fp32) runner."""
    from edgecls.device import pick_device
    from edgecls.runtime.torch_backend import TorchRunner

    if pick_device(options.device).type != "cuda":
        return []
    return [(f"pytorch {mode} {precision}", TorchRunner(path, device=options.device, precision=precision,
                                                         cuda_graph=mode == "cuda-graph", threads=options.threads))
            for mode, precision in (("eager", "fp16"), ("cuda-graph", "fp32"), ("cuda-graph", "fp16"))]


def data_summary(dataset: Cifar10) -> dict[str, Any]:
    return {"source": str(dataset.source), "fingerprint": dataset.fingerprint,
            "test_images": int(len(dataset.test_labels))}


def no_reference_error(path: str | Path) -> EdgeclsError:
    return EdgeclsError(f"--max-drop / --min-agreement need a reference for {path}: pass --reference (a checkpoint "
                        "or .npz) or export the model, which writes <model>.reference.npz")


# ----------------------------------------------------------------------------------------------- bench --all

def bench_all(checkpoint: str | Path, dataset: Cifar10, reference: str | Path | None = None, *,
              folders: Folders = Folders(),
              settings: BenchSettings = BenchSettings(ALL_ARTIFACTS_TIMING)) -> dict[str, Any]:
    """One row per artifact of the checkpoint's model (its files in `folders`), all compared with the same
    reference."""
    from edgecls.checkpoint import load_checkpoint

    timing, options, gate = settings.timing, settings.options, settings.gate

    checkpoint = Path(checkpoint)
    loaded = load_checkpoint(checkpoint)
    dataset.check_fits(loaded.preprocess, checkpoint)
    model = loaded.model_name
    ours = loaded.model_metadata()
    explicit = reference is not None
    notes: list[str] = []
    shared = references.resolve(reference, ours, checkpoint, dataset, options.device) if explicit else None
    saved = folders.of(model).reference
    if not explicit and saved.is_file():
        # The reference saved at export, if it belongs to this checkpoint and data; else the checkpoint itself.
        try:
            shared = references.resolve(saved, ours, checkpoint, dataset)
        except EdgeclsError as exc:
            notes.append(f"{saved} not used: {exc}")
    if shared is None:
        shared = references.from_checkpoint(checkpoint, dataset, options.device)

    rows = []
    for path in [checkpoint, *folders.of(model).artifacts()]:  # missing ones too: their row says so
        row: dict[str, Any] = {"path": str(path), "format": FORMATS.get(path.suffix.lower(), path.suffix),
                               "precision": None, "size_mb": None, "accuracy": None, "agreement": None,
                               "accuracy_delta": None, "p50_ms_batch1": None, "images_per_s": None,
                               "batch_size": max(timing.batch_sizes), "status": "ok", "gates": None}
        rows.append(row)
        if not path.is_file():
            row["status"] = f"not found (make it with `edgecls {'build' if path.suffix == '.plan' else 'export'}`)"
            continue
        row["size_mb"] = path.stat().st_size / 1e6
        try:
            known = shared.logits if path == checkpoint and references.covers(shared, loaded.sha256, dataset) else None
            result = bench_model(path, dataset, shared, settings=replace(settings, gate=Gate()),
                                 strict_reference=explicit, logits=known)
        except EdgeclsError as exc:
            row["status"] = str(exc)
            if gate.active:  # a file that cannot run cannot pass a parity gate
                row["gates"] = gate.check(None, f"could not run: {exc}").to_dict()
            continue
        end_to_end = {t["batch_size"]: t for t in result["timings"] if t["scope"] == "end-to-end"}
        row.update(precision=result["model"]["precision"], accuracy=result["accuracy"],
                   p50_ms_batch1=end_to_end[1]["p50_ms"] if 1 in end_to_end else None,
                   images_per_s=end_to_end[max(end_to_end)]["images_per_s"], details=result)
        if result["notes"]:
            row["status"] = "ok; " + "; ".join(result["notes"])
        if result["parity"]:
            row.update(agreement=result["parity"]["agreement"], accuracy_delta=result["parity"]["accuracy_delta"])
        row["gates"] = judge(gate, result["variants"], "no usable reference to compare with").to_dict()
        if not row["gates"]["passed"]:
            row["status"] = "gate failed: " + "; ".join(row["gates"]["failures"])
    return {"checkpoint": str(checkpoint), "model": model, "reference": shared.source, "notes": notes,
            "data": data_summary(dataset), "settings": timing.to_dict(), "rows": rows,
            "passed": all(r["gates"] is None or r["gates"]["passed"] for r in rows),
            "environment": environment({"backend": "mixed"})}


# ----------------------------------------------------------------------------------------------- tables

def _num(value: float | None, spec: str, missing: str = "-") -> str:
    return missing if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def format_report(result: dict[str, Any]) -> str:
    """The terminal table for one model; every figure in it is in the JSON too."""
    model, data = result["model"], result["data"]
    where = ", ".join(f"{k} {model[k]}" for k in ("provider", "device", "threads", "gpu_name", "tensorrt") if model.get(k))
    lines = [f"{model['path']}: {model['name']} {model['format']} {model['precision']}, {model['size_mb']:.2f} MB ({where})",
             f"data: {data['test_images']} test images from {data['source']}",
             f"accuracy: {result['accuracy']:.2f}%",
             "per class: " + "  ".join(f"{name} {_num(value, '.2f')}" for name, value in result["per_class"].items())]
    found = result["parity"]
    if found:
        lines += [f"parity vs {found['reference']} ({found['images']} images):",
                  f"  top-1 agreement {found['agreement']:.2f}%, flips {found['flips']} "
                  f"(right->wrong {found['right_to_wrong']}, wrong->right {found['wrong_to_right']}), "
                  f"accuracy {found['accuracy']:.2f}% vs {found['reference_accuracy']:.2f}% "
                  f"(delta {found['accuracy_delta']:+.2f} points)",
                  f"  |delta logit| max {found['max_abs_logit_diff']:.3g}, mean {found['mean_abs_logit_diff']:.3g}"]
    else:
        lines.append("parity: no reference (pass --reference, or export the model to get <model>.reference.npz)")
    lines += [f"note: {note}" for note in result.get("notes", [])]
    lines.append("parity of each timed variant:")
    for record in result["variants"]:
        found = record["parity"]
        against = (f"vs {found['reference']}: agreement {found['agreement']:.2f}%, flips {found['flips']}, "
                   f"accuracy delta {found['accuracy_delta']:+.2f} points, max |delta logit| "
                   f"{found['max_abs_logit_diff']:.3g}") if found else "no reference to compare with"
        lines.append(f"  {record['variant']:28} accuracy {record['accuracy']:6.2f}%, {against}")
    settings = result["settings"]
    lines.append(f"timing (after {settings['warmup_s']:g} s warm-up, {settings['duration_s']:g} s per row; pipelined: "
                 "runs queued back to back, one wait at the end):")
    lines.append(f"  {'variant':28} {'scope':11} {'batch':>5} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} {'images/s':>10} "
                 f"{'pipelined':>10}")
    for t in result["timings"]:
        lines.append(f"  {t['variant']:28} {t['scope']:11} {t['batch_size']:>5} {t['p50_ms']:>9.3f} {t['p90_ms']:>9.3f} "
                     f"{t['p99_ms']:>9.3f} {t['images_per_s']:>10.1f} {_num(t['pipelined_images_per_s'], '10.1f'):>10}")
    gates = result.get("gates")
    if gates and (gates["max_drop"] is not None or gates["min_agreement"] is not None):
        lines.append("gates: " + ("passed" if gates["passed"] else "FAILED: " + "; ".join(gates["failures"])))
    return "\n".join(lines)


def format_all(summary: dict[str, Any]) -> str:
    batch = max(summary["settings"]["batch_sizes"])
    header = (f"{'file':34} {'format':9} {'prec':5} {'MB':>6} {'acc %':>6} {'agree %':>7} {'Δacc':>6} "
              f"{'p50 ms b1':>9} {f'img/s b{batch}':>10}  status")
    lines = [f"{summary['model']}: every artifact vs {summary['reference']} on {summary['data']['test_images']} test images"]
    lines += [f"note: {note}" for note in summary["notes"]] + [header]
    for row in summary["rows"]:
        lines.append(f"{row['path']:34} {row['format']:9} {row['precision'] or '-':5} {_num(row['size_mb'], '6.2f'):>6} "
                     f"{_num(row['accuracy'], '6.2f'):>6} {_num(row['agreement'], '7.2f'):>7} "
                     f"{_num(row['accuracy_delta'], '+6.2f'):>6} {_num(row['p50_ms_batch1'], '9.3f'):>9} "
                     f"{_num(row['images_per_s'], '10.1f'):>10}  {row['status']}")
    return "\n".join(lines)


def json_ready(value: Any) -> Any:
    """NaN and infinities are not JSON: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value
