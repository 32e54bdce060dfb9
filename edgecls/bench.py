"""`edgecls bench`: accuracy, parity with the original model, latency and throughput of any edgecls model file.

Every model is opened as a runner (`edgecls.runtime`; PyTorch checkpoints through `TorchRunner` below) and
wrapped in the same `Classifier`, so a .pt, an .onnx and a .plan are measured by the same code on the same
images. Results are one JSON-ready dict; the terminal table is rendered from it, so both show the same figures.
"""

from __future__ import annotations

import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from edgecls.artifacts import library_versions, utc_now
from edgecls.data import image_digests
from edgecls.errors import EdgeclsError
from edgecls.metrics import accuracy, parity, per_class_accuracy
from edgecls.runtime import Classifier, Runner, open_runner

DEFAULT_BATCH_SIZES = (1, 8, 64, 256)
ACCURACY_CHUNK = 500  # images per call while measuring accuracy (bounded memory, a progress bar that moves)
FORMATS = {".pt": "pytorch", ".onnx": "onnx", ".plan": "tensorrt", ".engine": "tensorrt"}


# ----------------------------------------------------------------------------------------------- references

@dataclass
class Reference:
    """Reference logits of the original model on (part of) the test split, and what they were made from."""

    source: str
    logits: np.ndarray
    labels: np.ndarray
    indices: np.ndarray  # positions in the test split (for .npz references: set by check_reference)
    model: str
    checkpoint_sha256: str | None
    data_fingerprint: str | None  # the data the logits were computed on
    trained_on: str | None = None  # the data the reference model was trained on, when known
    digests: np.ndarray | None = None  # N x 16: the digest of each row's image (.npz references)


def load_reference_npz(path: str | Path) -> Reference:
    """Read `<model>.reference.npz` written by `edgecls export` (docs/FORMATS.md)."""
    import json
    import zipfile

    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in ("logits", "labels", "digests", "meta")}
        meta = json.loads(str(arrays["meta"]))
    except FileNotFoundError as exc:
        raise EdgeclsError(f"reference {path} does not exist; export the model or pass --reference") from exc
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
        raise EdgeclsError(f"reference {path} is unreadable or not an edgecls reference ({exc}); "
                           "export the model again") from exc
    logits = arrays["logits"]
    if logits.ndim != 2 or len(arrays["labels"]) != len(logits) or len(arrays["digests"]) != len(logits):
        raise EdgeclsError(f"reference {path} holds inconsistent arrays; export the model again")
    # No indices until check_reference has found each row's image in the test split at hand.
    return Reference(str(path), logits.astype(np.float32), arrays["labels"].astype(np.int64),
                     np.empty(0, dtype=np.int64), str(meta.get("model")), meta.get("checkpoint_sha256"),
                     meta.get("data_fingerprint"), digests=arrays["digests"])


def reference_from_checkpoint(path: str | Path, dataset: Any, device: str | None = None) -> Reference:
    """The checkpoint's logits on the whole test split, through the training-time evaluation path."""
    from edgecls.checkpoint import load_checkpoint
    from edgecls.evaluate import pick_device, torch_logits

    checkpoint = load_checkpoint(path)
    dev = pick_device(device)
    logits = torch_logits(checkpoint.build_model().to(dev), dataset.test_images, checkpoint.preprocess, device=dev)
    count = len(dataset.test_labels)
    return Reference(str(path), logits, np.asarray(dataset.test_labels, dtype=np.int64), np.arange(count),
                     checkpoint.model_name, checkpoint.sha256, dataset.fingerprint, checkpoint.data_fingerprint)


def load_reference(path: str | Path, dataset: Any, device: str | None = None) -> Reference:
    path = Path(path)
    if path.suffix == ".pt":
        return reference_from_checkpoint(path, dataset, device)
    if path.suffix == ".npz":
        return load_reference_npz(path)
    raise EdgeclsError(f"reference {path} is neither a checkpoint (.pt) nor reference logits (.npz)")


def find_reference(model_path: Path, metadata: dict[str, Any], onnx_path: str | None = None) -> Path | None:
    """`<model>.reference.npz` beside the model, beside the ONNX file a plan was built from, or in export/."""
    name = f"{metadata.get('model')}.reference.npz"
    folders = [model_path.parent, model_path.parent.parent / "export", Path("export")]
    if onnx_path:
        folders.insert(1, Path(onnx_path).parent)
    return next((folder / name for folder in folders if (folder / name).is_file()), None)


def check_reference(reference: Reference, metadata: dict[str, Any], model_path: Path, dataset: Any) -> None:
    """Refuse a reference that belongs to another model, checkpoint or data set: its parity would be meaningless."""
    where = reference.source
    if reference.model != metadata.get("model"):
        raise EdgeclsError(f"reference {where} is for model {reference.model}, but {model_path} is "
                           f"{metadata.get('model')}; pass the reference of this model")
    ours = metadata.get("checkpoint_sha256")
    if ours and reference.checkpoint_sha256 and ours != reference.checkpoint_sha256:
        raise EdgeclsError(f"reference {where} comes from checkpoint {reference.checkpoint_sha256[:12]}, but "
                           f"{model_path} from checkpoint {ours[:12]}; pass the matching reference or export again")
    if reference.data_fingerprint and reference.data_fingerprint != dataset.fingerprint:
        raise EdgeclsError(f"reference {where} was computed on another data set (fingerprint "
                           f"{reference.data_fingerprint[:12]}) than the test data here ({dataset.fingerprint[:12]}); "
                           "pass the data it was made with (--data)")
    trained_on = metadata.get("data_fingerprint")
    if reference.trained_on and trained_on and reference.trained_on != trained_on:
        raise EdgeclsError(f"reference {where} was trained on another data set ({reference.trained_on[:12]}) than "
                           f"{model_path} ({trained_on[:12]}); pass the reference of this model")
    classes = len(metadata["preprocess"]["class_names"])
    if reference.logits.shape[1] != classes:
        raise EdgeclsError(f"reference {where} has {reference.logits.shape[1]} classes, {model_path} has {classes}; "
                           "pass the reference of this model")
    count = len(dataset.test_labels)
    if reference.digests is not None:  # find each reference image in this test split, whatever its order
        positions: dict[bytes, list[int]] = {}
        for i, digest in enumerate(image_digests(dataset.test_images)):
            positions.setdefault(digest, []).append(i)  # identical images: matched in turn
        found = [positions[bytes(row)].pop(0) if positions.get(bytes(row)) else None for row in reference.digests]
        if None in found:
            raise EdgeclsError(f"reference {where}: {found.count(None)} of its images are not in this test split; "
                               "pass the data it was made with (--data)")
        reference.indices = np.asarray(found, dtype=np.int64)
    if len(reference.indices) and (reference.indices.min() < 0 or reference.indices.max() >= count
                                   or np.any(np.asarray(dataset.test_labels)[reference.indices] != reference.labels)):
        raise EdgeclsError(f"reference {where} does not match this test split ({count} images); "
                           "pass the data it was made with (--data)")


# ----------------------------------------------------------------------------------------------- PyTorch runner

class TorchRunner(Runner):
    """A checkpoint run by PyTorch (eager or CUDA graph, fp32 or fp16), behind the runtime's runner interface.

    It lives here, not in `edgecls.runtime`, because the runtime must never import torch.
    """

    backend = "pytorch"

    def __init__(self, path: str | Path, device: str | None = None, precision: str = "fp32", cuda_graph: bool = False):
        super().__init__(path)
        self.device_name, self.precision, self.cuda_graph = device, precision, cuda_graph
        self._graphs: dict[tuple[int, ...], tuple[Any, Any, Any]] = {}

    def _open(self) -> None:
        import torch

        from edgecls.checkpoint import load_checkpoint
        from edgecls.evaluate import pick_device

        checkpoint = load_checkpoint(self.path)
        self.device = pick_device(self.device_name)
        if self.device.type != "cuda" and (self.cuda_graph or self.precision == "fp16"):
            raise EdgeclsError(f"CUDA graphs and fp16 need a CUDA device, not {self.device}")
        self.dtype = torch.float16 if self.precision == "fp16" else torch.float32
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick its fastest kernels
        self.model = checkpoint.build_model().to(self.device, self.dtype)
        self.metadata = {
            "format_version": 1, "model": checkpoint.model_name, "precision": self.precision,
            "input_name": "images", "output_name": "logits", "preprocess": checkpoint.preprocess.to_dict(),
            "checkpoint_sha256": checkpoint.sha256, "data_fingerprint": checkpoint.data_fingerprint,
        }

    def _close(self) -> None:
        self.model, self._graphs = None, {}

    def _forward(self, batch: Any) -> Any:
        """Logits of a device tensor already in the model's dtype; replays a CUDA graph when asked for one."""
        import torch

        if not self.cuda_graph:
            with torch.inference_mode():
                return self.model(batch)
        key = tuple(batch.shape)
        if key not in self._graphs:
            self._graphs[key] = self._capture(key)
        graph, static_in, static_out = self._graphs[key]
        static_in.copy_(batch)
        graph.replay()
        return static_out

    def _capture(self, shape: tuple[int, ...]) -> tuple[Any, Any, Any]:
        import torch

        with torch.cuda.device(self.device):  # streams and the graph belong to the runner's GPU, not the current one
            static_in = torch.zeros(shape, device=self.device, dtype=self.dtype)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side), torch.no_grad():  # warm-up on a side stream, as graph capture requires
                for _ in range(3):
                    self.model(static_in)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph), torch.no_grad():
                static_out = self.model(static_in)
        return graph, static_in, static_out

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        batch = torch.from_numpy(feed[self.input_name]).to(self.device, self.dtype)
        logits = self._forward(batch).float().cpu().numpy()
        return {self.output_name: logits}

    def model_only(self, feed: dict[str, np.ndarray]) -> Callable[[], None] | None:
        import torch

        batch = torch.from_numpy(feed[self.input_name]).to(self.device, self.dtype)
        cuda = self.device.type == "cuda"
        self._forward(batch)  # captures the graph for this shape before timing starts

        def run() -> None:
            self._forward(batch)
            if cuda:
                torch.cuda.synchronize(self.device)

        return run

    def describe(self) -> dict[str, Any]:
        import torch

        info: dict[str, Any] = {"backend": self.backend, "device": str(self.device), "precision": self.precision,
                                "mode": "cuda-graph" if self.cuda_graph else "eager",
                                "threads": torch.get_num_threads()}
        if self.device.type == "cuda":
            info["gpu_name"] = torch.cuda.get_device_name(self.device)
        return info


def open_model(path: str | Path, provider: str = "cpu", threads: int | None = None, device: str | None = None,
               precision: str = "fp32", cuda_graph: bool = False) -> Runner:
    """A runner for any model file: checkpoints through PyTorch, the rest through `edgecls.runtime`."""
    path = Path(path)
    if path.suffix.lower() == ".pt":
        if threads:
            import torch

            torch.set_num_threads(threads)
        return TorchRunner(path, device=device, precision=precision, cuda_graph=cuda_graph)
    return open_runner(path, provider=provider, threads=threads)


# ----------------------------------------------------------------------------------------------- timing

def measure(fn: Callable[[], Any], batch_size: int, duration: float, warmup: float,
            min_calls: int = 5) -> dict[str, Any]:
    """Latency percentiles (ms) and throughput of `fn` after `warmup` seconds, over at least `duration` seconds."""
    started = time.perf_counter()
    while True:  # at least two warm-up calls: the first often pays for allocation or kernel selection
        fn()
        fn()
        if time.perf_counter() - started >= warmup:
            break
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < min_calls or time.perf_counter() - started < duration:
        begin = time.perf_counter()
        fn()
        times.append(time.perf_counter() - begin)
    seconds = np.asarray(times)
    p50, p90, p99 = np.percentile(seconds * 1e3, [50, 90, 99])
    return {"batch_size": batch_size, "p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99),
            "mean_ms": float(seconds.mean() * 1e3), "images_per_s": float(batch_size * len(times) / seconds.sum()),
            "calls": len(times)}


def timing_images(images: np.ndarray, batch_size: int) -> np.ndarray:
    """The first `batch_size` test images (repeated when the test split is smaller)."""
    repeats = math.ceil(batch_size / len(images))
    return np.concatenate([images] * repeats)[:batch_size] if repeats > 1 else images[:batch_size]


def time_classifier(classifier: Classifier, variant: str, images: np.ndarray, batch_sizes: Iterable[int],
                    duration: float, warmup: float, model_only: bool = True,
                    min_calls: int = 5) -> list[dict[str, Any]]:
    """End-to-end timings (what `classify` costs a user: preprocessing, transfers, softmax) and, where the
    backend can separate it, the model alone on already preprocessed inputs placed where the model reads them."""
    runner = classifier.runner
    rows = []
    for batch_size in batch_sizes:
        batch = timing_images(images, batch_size)
        rows.append({"variant": variant, "scope": "end-to-end",
                     **measure(lambda: classifier.classify(batch), batch_size, duration, warmup, min_calls)})
        fits = runner.min_batch <= batch_size <= (runner.max_batch or batch_size)
        if model_only and fits:
            run = runner.model_only({runner.input_name: classifier.preprocess(batch)})
            if run is not None:
                rows.append({"variant": variant, "scope": "model-only",
                             **measure(run, batch_size, duration, warmup, min_calls)})
    return rows


# ----------------------------------------------------------------------------------------------- environment

def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(engine_info: dict[str, Any]) -> dict[str, Any]:
    candidates = ("numpy", "onnxruntime", "tensorrt", "torch", "pycuda")
    versions = library_versions(*(name for name in candidates if name in sys.modules))
    if "cuda.bindings" in sys.modules:
        versions["cuda-python"] = str(getattr(sys.modules["cuda.bindings"], "__version__", "?"))
    threads: dict[str, Any] = {"cpu_count": os.cpu_count()}
    if "torch" in sys.modules:
        threads["torch"] = sys.modules["torch"].get_num_threads()
    if "threads" in engine_info:
        threads[engine_info["backend"]] = engine_info["threads"]
    return {"cpu": cpu_name(), "gpu": engine_info.get("gpu_name"), "platform": platform.platform(),
            "versions": versions, "threads": threads, "measured_at": utc_now()}


# ----------------------------------------------------------------------------------------------- bench

def check_classes(dataset: Any, metadata: dict[str, Any], model_path: Path) -> None:
    theirs = list(metadata["preprocess"]["class_names"])
    if list(dataset.class_names) != theirs:
        raise EdgeclsError(f"the test data has classes {list(dataset.class_names)}, but {model_path} was trained on "
                           f"{theirs}; pass the data it was trained on with --data")


def model_logits(classifier: Classifier, images: np.ndarray, progress: bool = False) -> np.ndarray:
    starts = range(0, len(images), ACCURACY_CHUNK)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="accuracy", unit="batch", leave=False)
    return np.concatenate([classifier.logits(images[start : start + ACCURACY_CHUNK]) for start in starts])


def torch_variants(path: Path, device: str | None, threads: int | None) -> list[tuple[str, Runner]]:
    """For a checkpoint on CUDA: eager and CUDA-graph, fp32 and fp16, besides the main (eager fp32) runner."""
    from edgecls.evaluate import pick_device

    if pick_device(device).type != "cuda":
        return []
    return [(f"pytorch {mode} {precision}", open_model(path, device=device, threads=threads, precision=precision,
                                                          cuda_graph=mode == "cuda-graph"))
            for mode, precision in (("eager", "fp16"), ("cuda-graph", "fp32"), ("cuda-graph", "fp16"))]


def bench_model(path: str | Path, dataset: Any, reference: str | Path | Reference | None = None, *,
                auto_reference: bool = True, strict_reference: bool | None = None,
                batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
                duration: float = 2.0, warmup: float = 0.5, provider: str = "cpu", threads: int | None = None,
                device: str | None = None, all_variants: bool = True, model_only: bool = True, min_calls: int = 5,
                logits: np.ndarray | None = None, progress: bool = False,
                require_reference: bool = False) -> dict[str, Any]:
    """Accuracy, parity and timings of one model file on `dataset`'s test split, as a JSON-ready dict.

    `reference`: a checkpoint or .npz path, or an already loaded Reference; None looks for the reference saved
    at export beside the model (when `auto_reference`). A reference that does not belong to this model or data
    is an error when `strict_reference` (default: when it was given explicitly); otherwise it is reported as
    unused in the result's notes and the bench goes on without parity. `logits`: this model's test-split
    logits when already computed (bench --all reuses the checkpoint's, computed as the reference).
    """
    path = Path(path)
    if not path.is_file():
        raise EdgeclsError(f"model file {path} does not exist; check the path")
    runner = open_model(path, provider=provider, threads=threads, device=device)
    with Classifier(runner) as classifier:
        metadata = classifier.metadata
        check_classes(dataset, metadata, path)
        if logits is None:
            logits = model_logits(classifier, dataset.test_images, progress)
        labels = np.asarray(dataset.test_labels)
        notes: list[str] = []
        strict = reference is not None if strict_reference is None else strict_reference
        if reference is None and auto_reference:
            reference = find_reference(path, metadata, getattr(runner, "manifest", {}).get("onnx_path"))
        reference = _usable_reference(reference, metadata, path, dataset, device, strict, notes)
        if require_reference and reference is None:  # say so before the timings, not after
            raise _no_reference_error(path)
        result_parity = None
        if reference is not None:
            result_parity = parity(logits[reference.indices], reference.logits, reference.labels, reference.source)

        info = classifier.describe()
        variant = f"{info['backend']} {metadata.get('precision', '?')}"
        if runner.backend == "pytorch":
            variant = f"pytorch {info['mode']} {info['precision']}"
        timings = time_classifier(classifier, variant, dataset.test_images, batch_sizes, duration, warmup, model_only,
                                  min_calls)
        if runner.backend == "pytorch" and all_variants:
            for name, extra in torch_variants(path, device, threads):
                with Classifier(extra) as other:
                    timings += time_classifier(other, name, dataset.test_images, batch_sizes, duration, warmup,
                                               model_only, min_calls)

    return {
        "model": {"path": str(path), "format": FORMATS.get(path.suffix.lower(), path.suffix),
                  "name": metadata.get("model"), "precision": metadata.get("precision"),
                  "size_mb": path.stat().st_size / 1e6, "checkpoint_sha256": metadata.get("checkpoint_sha256"), **info},
        "data": {"source": str(getattr(dataset, "source", "?")), "fingerprint": dataset.fingerprint,
                 "test_images": int(len(labels))},
        "accuracy": accuracy(logits, labels),
        "per_class": per_class_accuracy(logits, labels, list(dataset.class_names)),
        "parity": asdict(result_parity) if result_parity else None,
        "timings": timings,
        "settings": {"batch_sizes": list(batch_sizes), "duration_s": duration, "warmup_s": warmup},
        "notes": notes,
        "environment": environment(info),
    }


def _usable_reference(reference: str | Path | Reference | None, metadata: dict[str, Any], path: Path, dataset: Any,
                      device: str | None, strict: bool, notes: list[str]) -> Reference | None:
    """The reference loaded and checked against this model and data; when it does not belong, an error if
    `strict`, else None with the reason appended to `notes`."""
    if reference is None:
        return None
    try:
        if not isinstance(reference, Reference):
            reference = load_reference(reference, dataset, device)
        check_reference(reference, metadata, path, dataset)
        return reference
    except EdgeclsError as exc:
        if strict:
            raise
        notes.append(f"reference not used: {exc}")
        return None


def apply_gates(result: dict[str, Any], max_drop: float | None, min_agreement: float | None) -> dict[str, Any]:
    """Add the gate verdict to a bench result; parity gates without any reference are a usage error."""
    gates: dict[str, Any] = {"max_drop": max_drop, "min_agreement": min_agreement, "passed": True, "failures": []}
    if max_drop is None and min_agreement is None:
        result["gates"] = gates
        return gates
    found = result["parity"]
    if found is None:
        raise _no_reference_error(result["model"]["path"])
    drop = found["reference_accuracy"] - found["accuracy"]
    if max_drop is not None and drop > max_drop:
        gates["failures"].append(f"accuracy dropped {drop:.2f} points (more than --max-drop {max_drop:g})")
    if min_agreement is not None and found["agreement"] < min_agreement:
        gates["failures"].append(f"top-1 agreement {found['agreement']:.2f}% is below --min-agreement {min_agreement:g}%")
    gates["passed"] = not gates["failures"]
    result["gates"] = gates
    return gates


# ----------------------------------------------------------------------------------------------- bench --all

def artifacts_of(checkpoint: Path, model: str, export_dir: Path, engines_dir: Path) -> list[Path]:
    """Every file of this model that may exist, in pipeline order (missing ones too: their row says so)."""
    files = [checkpoint] + [export_dir / f"{model}{suffix}.onnx" for suffix in ("", ".fp16", ".int8")]
    plans = sorted(engines_dir.glob(f"{model}*.plan"))
    return files + (plans or [engines_dir / f"{model}.plan"])


def bench_all(checkpoint: str | Path, dataset: Any, reference: str | Path | None = None, *,
              export_dir: str | Path = "export", engines_dir: str | Path = "engines",
              batch_sizes: Sequence[int] = (1, 256), duration: float = 0.5, warmup: float = 0.2,
              provider: str = "cpu", threads: int | None = None, device: str | None = None,
              max_drop: float | None = None, min_agreement: float | None = None,
              progress: bool = False) -> dict[str, Any]:
    """One row per artifact of the checkpoint's model, all compared with the same reference."""
    from edgecls.checkpoint import load_checkpoint

    checkpoint = Path(checkpoint)
    loaded = load_checkpoint(checkpoint)
    model = loaded.model_name
    export_dir, engines_dir = Path(export_dir), Path(engines_dir)
    explicit = reference is not None
    notes: list[str] = []
    ours = {"model": model, "checkpoint_sha256": loaded.sha256, "data_fingerprint": loaded.data_fingerprint,
            "preprocess": loaded.preprocess.to_dict()}
    shared = load_reference(reference, dataset, device) if explicit else None
    if shared is not None:
        check_reference(shared, ours, checkpoint, dataset)
    saved = export_dir / f"{model}.reference.npz"
    if not explicit and saved.is_file():
        # The reference saved at export, if it belongs to this checkpoint and data; else the checkpoint itself.
        try:
            shared = load_reference_npz(saved)
            check_reference(shared, ours, checkpoint, dataset)
        except EdgeclsError as exc:
            notes.append(f"{saved} not used: {exc}")
            shared = None
    if shared is None:
        shared = reference_from_checkpoint(checkpoint, dataset, device)

    gating = max_drop is not None or min_agreement is not None
    rows = []
    files = artifacts_of(checkpoint, model, export_dir, engines_dir)
    for path in files:
        row: dict[str, Any] = {"path": str(path), "format": FORMATS.get(path.suffix.lower(), path.suffix),
                               "precision": None, "size_mb": None, "accuracy": None, "agreement": None,
                               "accuracy_delta": None, "p50_ms_batch1": None, "images_per_s": None,
                               "batch_size": max(batch_sizes), "status": "ok", "gates": None}
        rows.append(row)
        if not path.is_file():
            row["status"] = f"not found (make it with `edgecls {'build' if path.suffix == '.plan' else 'export'}`)"
            continue
        row["size_mb"] = path.stat().st_size / 1e6
        try:
            known = shared.logits if path == checkpoint and _covers_checkpoint(shared, loaded.sha256, dataset) else None
            result = bench_model(path, dataset, shared, strict_reference=explicit, batch_sizes=batch_sizes,
                                 duration=duration, warmup=warmup, provider=provider, threads=threads, device=device,
                                 all_variants=False, model_only=False, min_calls=3, logits=known, progress=progress)
        except EdgeclsError as exc:
            row["status"] = str(exc)
            if gating:  # a file that cannot run cannot pass a parity gate
                row["gates"] = _failed_gates(max_drop, min_agreement, f"could not run: {exc}")
            continue
        end_to_end = {t["batch_size"]: t for t in result["timings"] if t["scope"] == "end-to-end"}
        row.update(precision=result["model"]["precision"], accuracy=result["accuracy"],
                   p50_ms_batch1=end_to_end[1]["p50_ms"] if 1 in end_to_end else None,
                   images_per_s=end_to_end[max(end_to_end)]["images_per_s"], details=result)
        if result["notes"]:
            row["status"] = "ok; " + "; ".join(result["notes"])
        if result["parity"]:
            row.update(agreement=result["parity"]["agreement"], accuracy_delta=result["parity"]["accuracy_delta"])
        if gating and result["parity"] is None:
            row["gates"] = _failed_gates(max_drop, min_agreement, "no usable reference to compare with")
        else:
            row["gates"] = apply_gates(result, max_drop, min_agreement)
        if not row["gates"]["passed"]:
            row["status"] = "gate failed: " + "; ".join(row["gates"]["failures"])
    return {"checkpoint": str(checkpoint), "model": model, "reference": shared.source, "notes": notes,
            "data": {"source": str(getattr(dataset, "source", "?")), "fingerprint": dataset.fingerprint,
                     "test_images": int(len(dataset.test_labels))},
            "settings": {"batch_sizes": list(batch_sizes), "duration_s": duration, "warmup_s": warmup},
            "rows": rows, "passed": all(r["gates"] is None or r["gates"]["passed"] for r in rows),
            "environment": environment({"backend": "mixed"})}


def _no_reference_error(path: str | Path) -> EdgeclsError:
    return EdgeclsError(f"--max-drop / --min-agreement need a reference for {path}: pass --reference (a checkpoint "
                        "or .npz) or export the model, which writes <model>.reference.npz")


def _failed_gates(max_drop: float | None, min_agreement: float | None, reason: str) -> dict[str, Any]:
    return {"max_drop": max_drop, "min_agreement": min_agreement, "passed": False, "failures": [reason]}


def _covers_checkpoint(reference: Reference, sha256: str, dataset: Any) -> bool:
    """Whether `reference` holds this checkpoint's own logits on the whole test split, in order: then its row
    in bench --all needs no second pass of PyTorch over the test set (the slowest part on a CPU)."""
    count = len(dataset.test_labels)
    return (reference.checkpoint_sha256 == sha256 and len(reference.indices) == count
            and bool(np.array_equal(reference.indices, np.arange(count))))


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
    settings = result["settings"]
    lines.append(f"timing (after {settings['warmup_s']:g} s warm-up, {settings['duration_s']:g} s per row):")
    lines.append(f"  {'variant':28} {'scope':11} {'batch':>5} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} {'images/s':>10}")
    for t in result["timings"]:
        lines.append(f"  {t['variant']:28} {t['scope']:11} {t['batch_size']:>5} {t['p50_ms']:>9.3f} {t['p90_ms']:>9.3f} "
                     f"{t['p99_ms']:>9.3f} {t['images_per_s']:>10.1f}")
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
