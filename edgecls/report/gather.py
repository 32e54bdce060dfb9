"""Everything the report shows, read from the project's files into plain data.

This is the only part of the report that knows where files live and how they are laid out (docs/FORMATS.md);
the readers it borrows from other modules are imported here and nowhere else in `edgecls.report`, so a move of
those readers means editing this file only. Each reader validates what it reads: a corrupt file is one
EdgeclsError naming it. An input that simply does not exist is not an error: its section is left out, with a
line in `ReportInputs.missing` saying which command makes it. A file that belongs to another checkpoint (an
export older than the last training run, say) is skipped, with a line in `ReportInputs.notes` under the section
it would have appeared in.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from edgecls import reference as references
from edgecls.artifacts import read_bounded
from edgecls.checkpoint import Checkpoint, load_checkpoint
from edgecls.data import load_cifar10, resolve_data_path
from edgecls.errors import EdgeclsError
from edgecls.formats import (BenchResult, CalibrationRecord, EngineManifest, ExportSet, Folders, Int8Report,
                             ModelFiles, ModelMetadata)
from edgecls.onnx_graph import load_onnx
from edgecls.reference import Reference

LOG_NUMBERS = ("loss", "lr", "seconds", "images_per_second")  # required in every line of the training log
LOG_ACCURACIES = ("test_accuracy", "val_accuracy")  # optional: a number or null
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")  # the layers int8 quantization applies to


@dataclass
class TrainingRun:
    """The checkpoint's own record of its training, and the per-epoch log when there is one."""

    checkpoint: Checkpoint
    device: str | None  # what trained it ("cpu", or the GPU's name)
    log_path: Path
    epochs: list[dict[str, Any]] | None  # one dict per line of the log; None when there is no log


@dataclass
class ModelRow:
    """One line of `edgecls models`: our counts beside the paper's Table 2."""

    name: str
    paper_name: str
    params: int
    fc_params: int
    fc_share: float
    macs: int
    paper_params: int
    paper_fc_share: float
    ours: bool  # the model of the checkpoint being reported


@dataclass
class ArtifactFile:
    """An ONNX file or a TensorRT plan of this checkpoint, with the model record it carries."""

    path: Path
    metadata: ModelMetadata  # the ONNX file's `edgecls` metadata; for a plan, the one its manifest carries

    @property
    def precision(self) -> str:
        return self.metadata.precision


@dataclass
class OnnxFile(ArtifactFile):
    pass


@dataclass
class PlanFile(ArtifactFile):
    manifest: EngineManifest  # the `.plan.json` beside it


@dataclass
class BenchRun:
    """One model's bench result (the single-model form of `edgecls bench --json`), and the file it came from."""

    source: Path
    result: BenchResult

    @property
    def machine(self) -> str:
        return self.result.machine


@dataclass
class TensorRange:
    tensor: str
    low: float
    high: float


@dataclass
class Calibration:
    path: Path
    record: dict[str, Any]  # the record without its (long) index list and ranges
    ranges: list[TensorRange]  # in the order the tensors appear in the graph


@dataclass
class LayerPrecision:
    """One weighted layer of the int8 graph: quantized or kept in float, and why."""

    name: str
    op: str
    precision: str  # "int8" or "float"
    reason: str


@dataclass
class ReportInputs:
    checkpoint_path: Path
    model: str
    class_names: list[str]
    training: TrainingRun
    models: list[ModelRow]
    reference: Reference | None = None
    onnx_files: list[OnnxFile] = field(default_factory=list)
    plans: list[PlanFile] = field(default_factory=list)
    bench: list[BenchRun] = field(default_factory=list)
    int8_layers: list[LayerPrecision] = field(default_factory=list)
    calibration: Calibration | None = None
    int8_report: Int8Report | None = None
    int8_report_path: Path | None = None
    export_set: ExportSet | None = None  # the export record beside the ONNX files, when there is one
    missing: dict[str, str] = field(default_factory=dict)  # input -> a line saying which command makes it
    notes: dict[str, list[str]] = field(default_factory=dict)  # section -> files found but skipped, and why
    sources: list[Path] = field(default_factory=list)  # every file the page is made from

    def latest_bench(self, artifact: Path) -> BenchRun | None:
        """The most recent bench result of an artifact, matched by file name: a plan benched on its device was
        named there relative to another working folder."""
        runs = [run for run in self.bench if run.result.path.name == artifact.name]
        return max(runs, key=lambda run: run.result.measured_at, default=None)


def gather(checkpoint: str | Path, *, folders: Folders = Folders(), results_dir: str | Path = "results",
           bench_files: Iterable[str | Path] = ()) -> ReportInputs:
    """Read what exists for the checkpoint's model; see the module docstring for what happens to the rest."""
    training = read_training(Path(checkpoint))
    loaded = training.checkpoint
    inputs = ReportInputs(loaded.path, loaded.model_name, list(loaded.preprocess.class_names), training,
                          model_table(loaded), sources=[loaded.path])
    if training.epochs is not None and training.epochs[-1]["epoch"] < loaded.epoch:
        # the run was stopped between writing its checkpoint and its log: a curve that ends early would mislead
        inputs.missing["training log"] = (
            f"training log {training.log_path} ends at epoch {training.epochs[-1]['epoch']}, before the checkpoint's "
            f"epoch {loaded.epoch}; `edgecls train --resume` (or training again) writes them together")
        training.epochs = None
    elif training.epochs is None:
        inputs.missing["training log"] = (f"no training log {training.log_path}: `edgecls train` writes it beside "
                                          "the checkpoint")
    else:
        inputs.sources.append(training.log_path)
    export_hint = f"`edgecls export --checkpoint {loaded.path} --fp16 --int8`"
    files = folders.of(loaded.model_name)
    _gather_export(inputs, files, export_hint)
    _gather_bench(inputs, Path(results_dir), [Path(p) for p in bench_files])
    _gather_quantization(inputs, files, export_hint)
    return inputs


def _gather_export(inputs: ReportInputs, files: ModelFiles, export_hint: str) -> None:
    """The export record, the reference logits, the ONNX files and the plans made from this checkpoint."""
    if files.export_record.is_file():
        inputs.export_set = ExportSet.read(files.export_record)
    reference_path = files.reference
    if reference_path.is_file():
        reference = references.from_file(reference_path)
        if _belongs(reference.checkpoint_sha256, inputs, reference_path, "accuracy", export_hint):
            inputs.reference = reference
            inputs.sources.append(reference_path)
    if inputs.reference is None:
        inputs.missing["reference"] = (f"no reference logits of this checkpoint ({reference_path}): "
                                       f"{export_hint} writes them")
    for path in files.artifacts():
        if not path.is_file():
            continue
        if path.suffix == ".onnx":
            metadata = ModelMetadata.read(path)
            if _belongs(metadata.checkpoint_sha256, inputs, path, "parity", export_hint):
                inputs.onnx_files.append(OnnxFile(path, metadata))
        else:
            manifest = EngineManifest.read(path)
            remedy = "`edgecls build` on the device, from the current export"
            if _belongs(manifest.model.checkpoint_sha256, inputs, path, "parity", remedy) and \
                    _built_from_this_export(manifest, inputs, path, remedy):
                inputs.plans.append(PlanFile(path, manifest.model, manifest))
    inputs.sources += [artifact.path for artifact in [*inputs.onnx_files, *inputs.plans]]
    if not inputs.onnx_files:
        inputs.missing["onnx"] = f"no ONNX file of {inputs.model} in {files.folders.export}: {export_hint} writes them"


def _built_from_this_export(manifest: EngineManifest, inputs: ReportInputs, plan: Path, remedy: str) -> bool:
    """Whether a plan was built from an ONNX file of the current export (when the export has a record): a plan of an
    earlier export of the same checkpoint is noted and left out."""
    export = inputs.export_set
    source = Path(manifest.onnx_path).name
    if export is None or source not in ExportSet.member_names(inputs.model) or \
            export.files.get(source) == manifest.onnx_sha256:
        return True
    inputs.notes.setdefault("parity", []).append(
        f"{plan} left out: it was built from another {source} than the current export's; remake it with {remedy}")
    return False


def _gather_bench(inputs: ReportInputs, results_dir: Path, explicit: list[Path]) -> None:
    inputs.bench = read_bench_runs(inputs.model, inputs.training.checkpoint.sha256, results_dir, explicit,
                                   inputs.notes.setdefault("speed", []))
    inputs.sources += sorted({run.source for run in inputs.bench})
    if not inputs.bench:
        inputs.missing["bench"] = (f"no bench results of this checkpoint in {results_dir}: run `edgecls bench --all "
                                   f"{inputs.checkpoint_path} --json {results_dir / (inputs.model + '.json')}`")


def _gather_quantization(inputs: ReportInputs, files: ModelFiles, export_hint: str) -> None:
    """The int8 file's layers, its calibration record, and the int8 report when there is one: the last two only when
    they belong to the int8 file's export (`_of_this_export`)."""
    int8 = next((f for f in inputs.onnx_files if f.precision == "int8"), None)
    report_path = files.int8_report
    if report_path.is_file() and _of_this_export(report_path, int8, inputs, export_hint):
        report = Int8Report.read(report_path)
        if _belongs(report.checkpoint_sha256, inputs, report_path, "quantization", export_hint):
            inputs.int8_report, inputs.int8_report_path = report, report_path
            inputs.sources.append(report_path)
    if int8 is None:
        inputs.missing["int8"] = f"no int8 export of {inputs.model} in {files.folders.export}: {export_hint} writes it"
        return
    quantization = int8.metadata.quantization or {}
    graph = load_onnx(int8.path).graph
    inputs.int8_layers = read_int8_layers(graph, quantization.get("budget"))
    record_path = files.calibration_record(str(quantization.get("method")))
    if not record_path.is_file():
        inputs.missing["calibration"] = f"no calibration record {record_path}: `edgecls export --int8` writes it"
        return
    if not _of_this_export(record_path, int8, inputs, export_hint):
        return
    calibration = read_calibration(record_path, graph_order(graph))
    if _belongs(calibration.record.get("checkpoint_sha256"), inputs, record_path, "quantization", export_hint):
        inputs.calibration = calibration
        inputs.sources.append(record_path)


def _of_this_export(path: Path, int8: OnnxFile | None, inputs: ReportInputs, remedy: str) -> bool:
    """Whether a file of the int8 export's evidence (its int8 report or calibration record) belongs to the int8 file
    shown: there must be one, and the export record, when there is one, must list the file with its bytes. Else the
    file is noted and left out (a report of an earlier export, or of an int8 file a later export removed)."""
    if int8 is None:
        why = "the current export has no int8 file"
    elif inputs.export_set is None or inputs.export_set.companion_matches(path):
        return True
    else:
        why = f"it is not the one the current export of {inputs.model} made (see its export record)"
    inputs.notes.setdefault("quantization", []).append(f"{path} left out: {why}; remake it with {remedy}")
    return False


def _belongs(theirs: str | None, inputs: ReportInputs, path: Path, section: str, remedy: str) -> bool:
    """Whether a file was made from this checkpoint; a stale one is noted in `section` and left out, not an error."""
    ours = inputs.training.checkpoint.sha256
    if not theirs or theirs == ours:
        return True
    inputs.notes.setdefault(section, []).append(
        f"{path} left out: it comes from another checkpoint ({theirs[:12]}, this one is {ours[:12]}); "
        f"remake it with {remedy}")
    return False


def test_images(inputs: ReportInputs, data: str | Path | None) -> np.ndarray | None:
    """The test images the reference logits were computed on, in the reference's row order (found by digest in
    the data set `data` names, resolved like every command does); None when `data` is not given and nothing is
    at the default location."""
    if data is None and not resolve_data_path(None).exists():
        return None
    dataset = load_cifar10(data)
    checkpoint = inputs.training.checkpoint
    aligned = references.resolve(inputs.reference, checkpoint.model_metadata(), checkpoint.path, dataset)
    return dataset.test_images[aligned.indices]  # each row's image, found by digest


# ----------------------------------------------------------------------------------------------- training

def read_training(checkpoint: Path) -> TrainingRun:
    loaded = load_checkpoint(checkpoint)
    device = loaded.device
    log_path = ModelFiles.training_log(checkpoint, loaded.model_name)
    epochs = read_training_log(log_path) if log_path.is_file() else None
    return TrainingRun(loaded, device, log_path, epochs)


def read_training_log(path: Path) -> list[dict[str, Any]]:
    """The JSON lines `edgecls train` writes, one per epoch (`edgecls.train.EpochLog`), checked field by field."""
    fix = "delete it or train again with `edgecls train`"
    try:
        lines = read_bounded(path, "training log").decode().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise EdgeclsError(f"training log {path} is unreadable ({exc}); {fix}") from exc
    epochs = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError as exc:
            raise EdgeclsError(f"training log {path} line {number} is not JSON ({exc}); {fix}") from exc
        if not isinstance(entry, dict) or not _is_number(entry.get("epoch")) or \
                not all(_is_number(entry.get(key)) for key in LOG_NUMBERS) or \
                not all(entry.get(key) is None or _is_number(entry[key]) for key in LOG_ACCURACIES):
            raise EdgeclsError(f"training log {path} line {number} is not an epoch record (epoch, "
                               f"{', '.join(LOG_NUMBERS)}, and {' / '.join(LOG_ACCURACIES)} as numbers or null); {fix}")
        epochs.append(entry)
    if not epochs:
        raise EdgeclsError(f"training log {path} is empty; {fix}")
    return epochs


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def model_table(checkpoint: Checkpoint) -> list[ModelRow]:
    """The rows `edgecls models` prints; the checkpoint's own model counted with its own configuration."""
    from edgecls.models import MODELS, create_model, model_stats

    rows = []
    for name, spec in MODELS.items():
        ours = name == checkpoint.model_name
        model = create_model(name, **(checkpoint.model_config if ours else {}))
        stats = model_stats(model, checkpoint.preprocess.crop_size if ours else 28)
        rows.append(ModelRow(name, spec.paper_name, stats.params, stats.fc_params, stats.fc_share, stats.macs,
                             spec.paper.params, spec.paper.fc_share, ours))
    return rows


# ----------------------------------------------------------------------------------------------- JSON files

def read_bench_runs(model: str, sha256: str, results_dir: Path, explicit: list[Path],
                    notes: list[str]) -> list[BenchRun]:
    """The bench results of this checkpoint: every `results_dir/*.json` that holds some (others are noted and
    skipped), and each `explicit` file, which must hold some."""
    runs = []
    found = sorted(results_dir.glob("*.json"))  # none when the folder does not exist
    required, seen = {path.resolve() for path in explicit}, {path.resolve() for path in found}
    for path in found + [p for p in explicit if p.resolve() not in seen]:
        results = BenchResult.read_all(path)  # a device or a FIFO is refused, saying what it is
        mine = [r for r in results if r.model["name"] == model and r.model.get("checkpoint_sha256") in (None, sha256)]
        if not mine:
            why = (f"{path} holds no bench result of this {model} checkpoint ({sha256[:12]})" if results
                   else f"{path} is not an `edgecls bench --json` file")
            if path.resolve() in required:
                raise EdgeclsError(f"{why}; pass a bench file of this checkpoint")
            notes.append(f"{why}: left out")
        runs += [BenchRun(path, result) for result in mine]
    return runs


def read_calibration(path: Path, tensor_order: list[str]) -> Calibration:
    """A calibration record (`calibration/<model>.<method>.json`, written by `edgecls export --int8`), its ranges
    sorted by `tensor_order` (the graph's order; others last)."""
    fix = "delete it and export again with `edgecls export --int8`"
    record = CalibrationRecord.read(path).to_dict()
    ranges = record["ranges"]
    # ONNX Runtime's serialized TensorsData: {"CLS": "TensorsData", "data": {tensor: {"lowest", "highest"}}}; the
    # record's reader has checked that `ranges` is an object
    tensors = ranges.get("data", ranges)
    try:
        parsed = {name: TensorRange(name, _scalar(value["lowest"]), _scalar(value["highest"]))
                  for name, value in tensors.items() if name != "CLS"}
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise EdgeclsError(f"calibration record {path} has malformed ranges ({exc!r}); {fix}") from exc
    order = {name: i for i, name in enumerate(tensor_order)}
    ordered = sorted(parsed.values(), key=lambda r: order.get(r.tensor, len(order)))
    summary = {key: value for key, value in record.items() if key not in ("indices", "ranges")}
    return Calibration(path, summary, ordered)


def _scalar(value: Any) -> float:
    """A range end as ONNX Runtime saves it: a number, or {"data": number or [number], "dtype": ...}."""
    if isinstance(value, dict):
        value = value["data"]
    return float(np.asarray(value, dtype=np.float64).reshape(-1)[0])


def graph_order(graph: Any) -> list[str]:
    """The names of an ONNX graph's tensors, inputs first, then in the order the nodes make them."""
    return [value.name for value in graph.input] + [name for node in graph.node for name in node.output]


def read_int8_layers(graph: Any, budget: dict[str, Any] | None = None) -> list[LayerPrecision]:
    """Each weighted layer of an int8 Q/DQ ONNX graph, int8 when its weight comes out of a DequantizeLinear node.

    Without a `budget` (the file's metadata records one when `edgecls.int8_budget` chose its float layers), the
    reasons for float layers restate the rule `edgecls.quantize` applies: first and last layers stay float.
    """
    dequantized = {node.output[0] for node in graph.node if node.op_type == "DequantizeLinear"}
    inputs, outputs = {v.name for v in graph.input}, {v.name for v in graph.output}
    layers = []
    for node in graph.node:
        if node.op_type not in WEIGHTED_OPS:
            continue
        if len(node.input) > 1 and node.input[1] in dequantized:
            layers.append(LayerPrecision(node.name, node.op_type, "int8", ""))
            continue
        if budget is not None:
            limits = ", ".join(f"{key.replace('_', ' ')} {value}" for key, value in budget.items() if value is not None)
            reason = f"the int8 search kept it in float to hold the budget ({limits})"
        elif set(node.input) & inputs:
            reason = "first layer: its input, the standardized pixels, is finer than an 8-bit grid"
        elif set(node.output) & outputs:
            reason = "last layer: 8-bit logits would turn near-ties into flipped predictions"
        else:
            reason = "left in float by the quantizer"
        layers.append(LayerPrecision(node.name, node.op_type, "float", reason))
    return layers
