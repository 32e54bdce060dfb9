"""Checkpoint -> ONNX (fp32, fp16, int8), reference logits, and the parity check against PyTorch.

Precision lives in the ONNX file (DESIGN.md §2): one file per precision, each runnable on ONNX Runtime's
CPU provider, so every one of them is checked against the PyTorch model here before any GPU sees it.
Everything is written into a staging folder inside the output folder first; only once the whole export
succeeded are the files renamed into place as one set, described by `<model>.export.json` (`ExportSet`), which
every reader checks. A failed run changes nothing; a run killed while installing leaves a set that readers refuse
with one line until the next export, never a mix of two exports.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx

from edgecls.artifacts import (check_output_folder, copy_beside, is_storage_error, output_folder, sha256_file,
                               staging_dir, storage_error, temporary_files_in, utc_now)
from edgecls.data import digest_rows
from edgecls.defaults import CALIBRATION_DIR, DEFAULT_OPSET, EXPORT_DIR
from edgecls.errors import EdgeclsError, first_line
from edgecls.formats import ExportSet, Int8Report, ModelMetadata, ReferenceLogits
from edgecls.metrics import Gate, GateResult, Parity, parity
from edgecls.onnx_graph import fold_batchnorm, load_onnx, save_checked, topological_sort
from edgecls.quantize import CalibrationSettings, Int8Result, calibration_indices, quantize_int8

PARITY_BATCH = 500
# fp32 ONNX vs PyTorch: both compute in float32, so only summation order differs. Anything beyond this
# (relative to the logits' magnitude) means the exported graph computes something else.
FP32_TOLERANCE = 1e-3


@dataclass
class FileParity:
    """One exported file against the PyTorch model on the same images, and the verdict of its gate."""

    path: Path
    precision: str
    parity: Parity
    verdict: GateResult  # only fp32 is gated: within float rounding of PyTorch

    def line(self) -> str:
        found = self.parity
        text = (f"{self.path.name} ({self.precision}): top-1 agreement {found.agreement:.2f}% with PyTorch, "
                f"max |Δ logit| {found.max_abs_logit_diff:.2e}, accuracy {found.accuracy:.2f}% "
                f"(PyTorch {found.reference_accuracy:.2f}%) on {found.images:,} test images")
        if not self.verdict:
            text += " -- FAILED: beyond float rounding"
        return text


@dataclass
class ExportReport:
    model: str
    files: dict[str, Path]  # precision -> installed ONNX file
    reference: Path | None
    parity: list[FileParity]
    calibration: Path | None = None  # the calibration record used/written for int8
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    int8_search: Int8Result | None = None  # when int8 was made within a budget: with the search's report
    int8_report: Path | None = None  # its report, installed under calibration/

    @property
    def passed(self) -> bool:
        return all(result.verdict for result in self.parity) and (self.int8_search is None or self.int8_search.passed)


# ----------------------------------------------------------------------------------------------- fp32

def export_fp32(model: Any, crop_size: int, metadata: ModelMetadata, out_path: str | os.PathLike,
                opset: int = DEFAULT_OPSET) -> Path:
    """Export a PyTorch model (eval mode) to `out_path`: input `images` with a dynamic batch, output `logits`.

    The TorchScript exporter (`dynamo=False`) is used on purpose: it emits the requested opset directly,
    whereas the torch.export-based one builds opset 18 and converts down, and it folds every Conv + BatchNorm.
    BatchNorm after a ConvTranspose it leaves alone, so we fold that ourselves (fewer float ops around the
    int8 layers, and one less source of fp16 rounding).
    """
    import torch

    # Any batch above 1 traces the same graph (the batch axis is dynamic; 1 would let the exporter fix it).
    example = torch.zeros(2, 3, crop_size, crop_size)
    with staging_dir(Path(out_path).parent, "onnx-export") as tmp, warnings.catch_warnings():
        # The TorchScript exporter announces its own deprecation; the warning is noise for our users.
        warnings.simplefilter("ignore")
        raw_path = tmp / "raw.onnx"
        # Constant folding is how the exporter folds Conv + BatchNorm; without it fold_batchnorm folds every pair
        # instead, into the same graph but for tensor names (so the option's mutants change nothing seen).
        torch.onnx.export(model.eval(), (example,), str(raw_path), dynamo=False, opset_version=opset,
                          do_constant_folding=True,  # pragma: no mutate
                          input_names=[metadata.input_name], output_names=[metadata.output_name],
                          dynamic_axes={metadata.input_name: {0: "batch"}, metadata.output_name: {0: "batch"}})
        onnx_model = onnx.load(str(raw_path))
    return finish_fp32(onnx_model, metadata, out_path)


def finish_fp32(onnx_model: onnx.ModelProto, metadata: ModelMetadata, out_path: str | os.PathLike) -> Path:
    """The exporter's graph as edgecls writes it: BatchNorms folded, described, its metadata embedded, checked."""
    fold_batchnorm(onnx_model)
    onnx_model.doc_string = f"edgecls {metadata.model} ({metadata.precision})"
    metadata.embed(onnx_model)
    return save_checked(onnx_model, out_path)


# ----------------------------------------------------------------------------------------------- fp16

def convert_fp16(fp32_path: str | os.PathLike, out_path: str | os.PathLike) -> Path:
    """float16 inside, float32 `images` and `logits`, from the fp32 file; metadata precision `fp16`.

    Uses ONNX Runtime's bundled converter (`onnxruntime.transformers.float16`, the maintained copy of
    onnxconverter-common's), so no extra package is needed.
    """
    from onnxruntime.transformers.float16 import convert_float_to_float16

    source = load_onnx(fp32_path)
    metadata = ModelMetadata.from_onnx(source, str(fp32_path))
    model = convert_float_to_float16(source, keep_io_types=True)
    # The converter appends its input/output Casts at the end of the node list; ONNX (and TensorRT's
    # parser, which reads nodes in order) need producers before consumers.
    topological_sort(model.graph)
    metadata.with_precision("fp16").embed(model)
    return save_checked(model, out_path)


# ----------------------------------------------------------------------------------------------- parity

def onnx_logits(path: str | os.PathLike, images_uint8: np.ndarray, batch_size: int = PARITY_BATCH) -> np.ndarray:
    """Logits of an exported file on ONNX Runtime's CPU provider, through the deployment runtime itself (so parity
    also covers the preprocessing it reads from the file's metadata)."""
    from edgecls.runtime import Classifier

    with Classifier.load(path, batch_size=batch_size) as classifier:
        return classifier.logits(images_uint8)


def check_parity(path: Path, precision: str, logits: np.ndarray, reference: np.ndarray,
                 labels: np.ndarray) -> FileParity:
    """Top-1 agreement, max |Δ logit| and accuracies; fp32 must stay within float rounding of the reference."""
    found = parity(logits, reference, labels, "PyTorch")
    gate = Gate(max_logit_diff=FP32_TOLERANCE * max(1.0, float(np.max(np.abs(reference))))) if precision == "fp32" \
        else Gate()
    return FileParity(path, precision, found, gate.check(found))


# ----------------------------------------------------------------------------------------------- all of it

@dataclass(frozen=True)
class ExportRequest:
    """One export, asked for: `edgecls export` builds it from its options, `export_model` takes it. Every option is
    checked once, when the request is made, before the checkpoint or the data is read.

    With an active `budget` (--max-drop / --min-agreement), `edgecls.int8_budget` chooses the float layers and the
    calibration method (`calibration.method` None: every method; else that one) on the validation images, and
    nothing is installed when no choice holds it; without one, the first and last layers stay float and
    `calibration.method` None means percentile.
    """

    checkpoint: Path
    out_dir: Path = Path(EXPORT_DIR)
    fp16: bool = False
    int8: bool = False
    calibration: CalibrationSettings = CalibrationSettings()
    calibration_dir: Path = Path(CALIBRATION_DIR)
    opset: int = DEFAULT_OPSET
    budget: Gate = Gate()

    def __post_init__(self) -> None:
        if self.budget.active and not self.int8:
            raise EdgeclsError("--max-drop and --min-agreement set the accuracy budget of the int8 file: add --int8 "
                               "(or drop them)")
        for name in ("checkpoint", "out_dir", "calibration_dir"):
            object.__setattr__(self, name, Path(getattr(self, name)))
        check_output_folder(self.out_dir)
        if self.int8:
            check_output_folder(self.calibration_dir)


def export_model(request: ExportRequest, data: Any = None, progress: bool = True) -> ExportReport:
    """Export a checkpoint to `<out_dir>/<model>.onnx` (+ `.fp16.onnx`, `.int8.onnx`) and `<model>.reference.npz`.

    `data` is a data location (str / None: resolved like training does) or an already loaded `Cifar10`.
    Each file is checked on ONNX Runtime against PyTorch on the test split. Files are staged and installed
    together (`install_set`) only when every step succeeded and the fp32 file is within float rounding of PyTorch;
    the set replaces the model's earlier export in `out_dir` as a whole.
    int8 calibrates on training images outside the checkpoint's validation split.
    """
    from edgecls.data import load_cifar10

    started = time.perf_counter()
    fp16, int8, budget, settings = request.fp16, request.int8, request.budget, request.calibration
    calibration_dir = request.calibration_dir
    checkpoint = load_source(request.checkpoint)
    out = request.out_dir
    dataset = data if hasattr(data, "test_images") else load_cifar10(data)
    dataset.check_fits(checkpoint.preprocess, checkpoint.path)
    validation = checkpoint.validation_indices(dataset) if int8 else None  # calibration must not use these
    if int8 and settings.cache is None:  # too few calibration images: say so before the long work
        calibration_indices(len(dataset.train_images), settings.size, settings.seed, validation)

    name = checkpoint.model_name
    model = checkpoint.build_model()
    report = ExportReport(name, {}, None, [])
    with staging_dir(out, "export") as staging, temporary_files_in(staging), contextlib.ExitStack() as cleanup:
        try:
            reference = ReferenceLogits(
                reference_logits(model, dataset.test_images, checkpoint.preprocess),
                np.asarray(dataset.test_labels), digest_rows(dataset.test_images), model=name,
                checkpoint_sha256=checkpoint.sha256, data_fingerprint=dataset.fingerprint)
            staged = {"fp32": export_fp32(model, checkpoint.preprocess.crop_size, checkpoint.model_metadata("fp32"),
                                          staging / ExportSet.member_name(name, "fp32"), request.opset)}
            if fp16:
                staged["fp16"] = convert_fp16(staged["fp32"], staging / ExportSet.member_name(name, "fp16"))
            quantized = None
            if int8 and budget.active:
                quantized = int8_within_budget(request, checkpoint, dataset, validation, reference.logits,
                                               staged["fp32"], staging, progress)
                report.int8_search = quantized
                if not quantized.passed:
                    report.notes.append(f"nothing installed in {out}: no int8 choice holds the budget")
                    report.seconds = time.perf_counter() - started
                    return report
            elif int8:
                # Where in the staging folder it works changes nothing seen: any name there does, and its work_dir is
                # already the default one (temporary_files_in).
                quantized = quantize_int8(staged["fp32"], staging / ExportSet.member_name(name, "int8"), data=dataset,
                                          record_path=staging / "calibration.json", work_dir=staging,  # pragma: no mutate
                                          settings=settings, exclude=validation)
            if quantized is not None:
                staged["int8"] = quantized.path
            files = staged.items()
            if progress:
                from tqdm import tqdm
                files = tqdm(files, desc="parity", unit="file", leave=False)
            report.parity = [check_parity(path, precision, onnx_logits(path, dataset.test_images),
                                          reference.logits, reference.labels) for precision, path in files]
            staged["reference"] = reference.write(staging / ExportSet.member_name(name, "reference"))
        except OSError as exc:  # the libraries writing into the staging folder (torch, onnx, ONNX Runtime)
            if not is_storage_error(exc):
                raise
            raise storage_error(exc, out, f"the export of {name}") from exc
        if not report.passed:
            report.notes.append(f"nothing installed in {out}: the fp32 export does not match PyTorch")
            report.seconds = time.perf_counter() - started
            return report
        # Everything that still needs disk space is written now, so that installing is renames only.
        also_install = []

        def install_beside(staged_file: Path, destination: Path) -> Path:
            temporary = copy_beside(staged_file, destination)
            cleanup.callback(temporary.unlink, missing_ok=True)  # renamed away once installed; removed if not
            also_install.append((temporary, destination))
            return destination

        # The files this export installs in other folders: the record lists them, so that readers take only these.
        companions: dict[str, str] = {}
        if quantized is not None:
            cleanup.enter_context(output_folder(calibration_dir))  # made now; removed again if installing fails
            report.calibration = quantized.record_path if quantized.reused else \
                install_beside(quantized.record_path, Path(calibration_dir) / quantized.record_name)
            companions[report.calibration.name] = sha256_file(quantized.record_path)
        if report.int8_search is not None:
            int8_report = Int8Report.path_for(calibration_dir, name)
            companions[int8_report.name] = sha256_file(report.int8_search.report_path)
            report.int8_report = install_beside(report.int8_search.report_path, int8_report)
        record = ExportSet(model=name, checkpoint_sha256=checkpoint.sha256, created_at=utc_now(), complete=True,
                           files={path.name: sha256_file(path) for path in staged.values()}, companions=companions)
        try:
            install_set(record, staging, out, also_install)
        except OSError as exc:  # renames need no space, but a folder may still refuse one (its own limits)
            raise EdgeclsError(f"installing the export of {name} into {out} failed ({first_line(exc)}); run "
                               "`edgecls export` again (meanwhile readers refuse a half-installed set)") from exc
        report.files = {kind: out / path.name for kind, path in staged.items() if kind != "reference"}
        report.reference = out / staged["reference"].name
        for result in report.parity:
            result.path = report.files[result.precision]
    report.seconds = time.perf_counter() - started
    return report


def load_source(path: Path) -> Any:
    """The checkpoint an export reads (`edgecls.checkpoint.Checkpoint`), imported here so that torch is not imported
    with this module; the fast tests put a torch-free checkpoint of a small ONNX network in its place."""
    from edgecls.checkpoint import load_checkpoint

    return load_checkpoint(path)


def reference_logits(model: Any, images: np.ndarray, preprocess: Any) -> np.ndarray:
    """The PyTorch model's logits on uint8 `images`: the reference every exported file is compared with."""
    from edgecls.evaluate import torch_logits

    return torch_logits(model, images, preprocess, batch_size=PARITY_BATCH)


def install_set(record: ExportSet, staging: Path, out: Path, also_install: Sequence[tuple[Path, Path]] = ()) -> None:
    """Move the files `record` lists from `staging` into `out`, as one export set.

    Both versions of the set's record are written first; from then on only renames happen, which need no space:
    the incomplete record goes in (readers now refuse every file of this model there), then each file, then the
    other files of `also_install` (temporary, destination: the calibration record), then the complete record. Files
    an earlier export of the model left that this one does not write are removed, so the folder holds one set.
    """
    pending = replace(record, complete=False).write(staging / "pending.export.json")
    complete = record.write(staging / "complete.export.json")
    record_path = ExportSet.path_for(out, record.model)
    os.replace(pending, record_path)
    for name in record.files:
        os.replace(staging / name, out / name)
    for name in set(ExportSet.member_names(record.model)) - set(record.files):
        (out / name).unlink(missing_ok=True)
    for temporary, destination in also_install:
        os.replace(temporary, destination)
    os.replace(complete, record_path)


def int8_within_budget(request: ExportRequest, checkpoint: Any, dataset: Any, validation: np.ndarray | None,
                       test_logits: np.ndarray, fp32_path: Path, staging: Path, progress: bool) -> Int8Result:
    """The int8 file of `checkpoint` with the most int8 layers that holds the request's budget, staged beside the
    fp32 one (`test_logits`: the reference logits, for the report)."""
    from edgecls.int8_budget import Int8Search, ValidationImages, search_int8

    images = ValidationImages.choose(dataset, validation, (checkpoint.validation or {}).get("seed"),
                                     request.calibration.size)
    search = Int8Search(fp32_path, staging / ExportSet.member_name(checkpoint.model_name, "int8"), request.budget,
                        request.calibration, record_path=staging / "calibration.json",
                        report_path=staging / "int8-report.json", work_dir=staging / "int8-search")
    return search_int8(search, dataset, images, test_logits, progress)

