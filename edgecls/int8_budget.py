"""INT8 within an accuracy budget: `edgecls export --int8 --max-drop 0.3 --min-agreement 99.5`.

The budget is an `edgecls.metrics.Gate` judged on validation images (the training images the checkpoint held out;
calibration never uses them), against the float model. The search:

1. Calibrates with each method (minmax, entropy, percentile) on training images outside the validation split.
2. Measures, for every quantizable layer (Conv, ConvTranspose, Gemm) and method, the model with that layer alone
   in int8: the SQNR of its logits against the float model's, and its top-1 agreement and accuracy change.
   Everything before a layer is float when it alone is int8, so the float model runs once per chunk of images,
   keeping its activations where each layer starts, and each variant runs only from its own layer on: for new2
   about 3.5 network passes for all eight layers instead of eight, whatever the number of methods.
3. Ranks the layers by that SQNR, lowest (costliest) first. SQNR rather than agreement or accuracy change: on a
   few thousand images one layer alone flips a handful of answers at most, so those counts tie or swap on noise,
   while the SQNR is continuous and measures the same thing, the distance from the float model's answers.
   The layer alone int8 rather than alone float: the cost of the layer itself, not mixed with the noise of seven
   others, and the figure the report promises.
4. For each method, starts from every layer int8 and moves the costliest remaining layer back to float, one at a
   time, until the budget holds (at least one layer stays int8).
5. Keeps the choice that holds the budget with the most int8 layers (ties: the higher agreement, then accuracy).
   If none holds, nothing is written and the best choice found is reported.

The evidence is an `edgecls.formats.Int8Report` (`calibration/<model>.int8-report.json`): per layer its op,
parameters, SQNR, cost alone and decision with the reason; every choice evaluated; the result's validation and
test figures (test only reported) and its CPU throughput against the fp32 file and the all-int8 one.
"""

from __future__ import annotations

import contextlib
import itertools
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import onnx

from edgecls.artifacts import atomic_write, library_versions, utc_now
from edgecls.data import Cifar10, seeded_subset
from edgecls.defaults import CALIBRATION_DIR, DEFAULT_CALIBRATION_SIZE, DEFAULT_VAL_SPLIT, VALIDATION_SEED
from edgecls.errors import EdgeclsError
from edgecls.formats import CalibrationRecord, Int8Report, LayerDecision
from edgecls.metrics import Gate, GateResult, Parity, parity
from edgecls.onnx_graph import cut_inputs, from_node, with_outputs
from edgecls.quantize import (CalibrationSettings, Int8Result, PreparedModel, QuantizableLayer, fp32_metadata,
                              load_calibration_record, new_calibration_record, quantization_record, save_int8)
from edgecls.timing import cpu_throughput

SENSITIVITY = "SQNR of the logits with the layer alone int8, lowest first"
# Validation images whose float activations are kept at once during the sensitivity pass (new2: ~420 KB each).
ACTIVATION_CHUNK = 128
EVALUATION_BATCH = 500  # images per call when a candidate file runs on the validation or test images


@dataclass(frozen=True)
class ValidationImages:
    """The training images every accuracy decision is made on, and where they came from."""

    images: np.ndarray  # uint8 N x H x W x 3
    labels: np.ndarray
    indices: np.ndarray  # their positions in the training split (calibration avoids them)
    seed: int | None
    held_out: bool  # True: held out by training (never seen); False: a seeded subset the model was trained on

    @classmethod
    def choose(cls, data: Cifar10, recorded: np.ndarray | None, recorded_seed: int | None,
               calibration_size: Optional[int]) -> "ValidationImages":
        """The checkpoint's held-out images (`recorded`: their positions in `data`'s training split), else a seeded
        subset of the training images that leaves room for calibration (`calibration_size` None: the default size,
        or half of a smaller data set)."""
        if recorded is not None:
            return cls(data.train_images[recorded], data.train_labels[recorded], recorded, recorded_seed, True)
        total = len(data.train_images)
        if calibration_size is None:
            calibration_size = min(DEFAULT_CALIBRATION_SIZE, total // 2)
        size = min(DEFAULT_VAL_SPLIT, total - calibration_size)
        if size < 1:
            raise EdgeclsError(f"the {total} training images leave none for validation beside {calibration_size} "
                               "calibration images; pass a smaller --calibration-size")
        indices = seeded_subset(total, size, VALIDATION_SEED)
        return cls(data.train_images[indices], data.train_labels[indices], indices, VALIDATION_SEED, False)

    @property
    def note(self) -> str:
        count = f"{len(self.indices):,} training images"
        if self.held_out:
            return f"{count} held out in training (seed {self.seed}): the model never saw them"
        return (f"{count} chosen with seed {self.seed}: the checkpoint records no held-out split, so the model saw "
                "them in training and figures on them flatter it")

    def describe(self) -> dict[str, Any]:
        return {"source": "held out in training" if self.held_out else "seeded subset of the training images",
                "size": len(self.indices), "seed": self.seed, "seen_in_training": not self.held_out,
                "note": self.note}


@dataclass
class Candidate:
    """One choice evaluated: a calibration method and the layers left in float, judged on validation."""

    method: str
    float_layers: tuple[str, ...]
    int8_layers: int
    path: Path  # the int8 file, in the search's work folder
    figures: Parity  # on the validation images, against the float model
    verdict: GateResult

    def summary(self) -> dict[str, Any]:
        return {"method": self.method, "float_layers": list(self.float_layers), "int8_layers": self.int8_layers,
                "validation": asdict(self.figures), "passed": self.verdict.passed,
                "failures": list(self.verdict.failures)}


@dataclass(frozen=True)
class Int8Search:
    """An int8 search within an accuracy budget, asked for and checked once when made: the int8 version of
    `fp32_path` with the most int8 layers that holds `budget` goes to `out_path`, its calibration record to
    `record_path` and its report to `report_path` (defaults: under calibration/); `work_dir` holds the candidates
    (default: a temporary folder). `calibration.method` None tries every method; with `calibration.cache` (a
    calibration record), only its method and ranges are tried."""

    fp32_path: Path
    out_path: Path
    budget: Gate
    calibration: CalibrationSettings = CalibrationSettings()
    record_path: Optional[Path] = None
    report_path: Optional[Path] = None
    work_dir: Optional[Path] = None

    def __post_init__(self) -> None:
        if not self.budget.active:
            raise EdgeclsError("an int8 search needs a budget: pass --max-drop and/or --min-agreement")
        for name in ("fp32_path", "out_path", "record_path", "report_path", "work_dir"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, Path(getattr(self, name)))


def search_int8(request: Int8Search, data: Cifar10, validation: ValidationImages, test_logits: np.ndarray,
                progress: bool = True) -> Int8Result:
    """Run the search `request` asks for on the `validation` images (`test_logits`: the float model's logits on
    `data.test_images`, for the report only). When no choice holds the budget, nothing is written and the result's
    report describes the best choice found."""
    started = time.perf_counter()
    gate, settings, fp32_path, out_path = request.budget, request.calibration, request.fp32_path, request.out_path
    target, size, seed, cache = settings.target, settings.size, settings.seed, settings.cache
    record_path, report_path = request.record_path, request.report_path
    methods = settings.methods
    metadata = fp32_metadata(fp32_path)
    data.check_fits(metadata.preprocess, fp32_path)
    if cache is not None:
        method = methods[0] if len(methods) == 1 else CalibrationRecord.read(cache).method
        records = {method: load_calibration_record(cache, metadata, method)}
    else:
        records = {method: new_calibration_record(metadata, data, fp32_path, method, size, seed, validation.indices)
                   for method in methods}
    budget = {"max_drop": gate.max_drop, "min_agreement": gate.min_agreement}

    with _work_folder(request.work_dir) as work:
        prepared = PreparedModel.create(fp32_path, metadata, target, work)
        if cache is None:
            for method in _bar(list(records), progress, "calibrating", "method"):
                record = records[method]
                records[method] = replace(record, ranges=prepared.calibrate(data.train_images[record.indices], method))
        float_logits, alone = layer_sensitivity(prepared, {m: r.ranges for m, r in records.items()},
                                                validation.images, progress)
        costs = {method: [(parity(logits, float_logits, validation.labels), sqnr(float_logits, logits))
                          for logits in alone[method]] for method in records}
        rankings = {method: rank_layers([sqnr_db for _, sqnr_db in costs[method]]) for method in records}
        numbers = itertools.count()

        def evaluate(method: str, float_layers: tuple[str, ...]) -> Candidate:
            path = work / f"candidate-{next(numbers)}.int8.onnx"
            write_int8(prepared, records[method], float_layers, budget, path)
            figures = parity(run_file(path, validation.images), float_logits, validation.labels, "float model")
            return Candidate(method, float_layers, len(prepared.layers) - len(float_layers), path, figures,
                             gate.check(figures))

        candidates: list[Candidate] = []
        with _bar(None, progress, "int8 search", "choice") as bar:
            for method in records:
                candidates += greedy(method, [prepared.layers[i].name for i in rankings[method]], evaluate,
                                     best_int8=most_int8(candidates), on_step=bar.update)
        chosen = choose(candidates)
        result_figures: dict[str, Any] = {"validation": asdict(chosen.figures), "test": None}
        throughput = None
        written = None
        if chosen.verdict:
            test_figures = parity(run_file(chosen.path, data.test_images), test_logits, data.test_labels,
                                  "float model")
            result_figures.update(test=asdict(test_figures), test_holds_budget=gate.check(test_figures).passed)
            all_int8 = all_int8_candidate(candidates, chosen.method).path
            throughput = cpu_throughput({"fp32": fp32_path, "all_int8": all_int8, "result": chosen.path},
                                        validation.images)
            with atomic_write(out_path) as handle:
                handle.write(chosen.path.read_bytes())
            written = Path(out_path)

    record = records[chosen.method]
    record_name = f"{metadata.model}.{record.method}.json"
    if cache is not None:
        record_path = Path(cache)
    else:
        record_path = Path(record_path) if record_path is not None else Path(CALIBRATION_DIR) / record_name
    report = Int8Report(
        model=metadata.model, checkpoint_sha256=metadata.checkpoint_sha256, data_fingerprint=data.fingerprint,
        target=target, budget=budget, passed=chosen.verdict.passed, method=chosen.method,
        float_layers=list(chosen.float_layers), int8_layers=chosen.int8_layers,
        layers=layer_decisions(prepared.layers, costs[chosen.method], rankings[chosen.method], chosen, candidates),
        validation=validation.describe(),
        calibration={"size": record.size, "seed": record.seed, "split": record.split,
                     "disjoint_from_validation": not set(record.indices) & set(validation.indices.tolist()),
                     "methods_tried": list(records)},
        sensitivity=SENSITIVITY, candidates=[c.summary() for c in candidates], result=result_figures,
        throughput=throughput, search_seconds=time.perf_counter() - started, created_at=utc_now(),
        versions=library_versions("onnxruntime", "onnx", "numpy"))
    written_report = None
    if chosen.verdict:
        if cache is None:
            record.write(record_path)
        written_report = report.write(report_path if report_path is not None
                                      else Int8Report.path_for(CALIBRATION_DIR, metadata.model))
    return Int8Result(written, record_path, record_name, cache is not None, report, written_report)


def rank_layers(sqnr_db: list[float]) -> list[int]:
    """Layer positions, costliest (lowest SQNR alone) first; equal SQNRs keep graph order."""
    return sorted(range(len(sqnr_db)), key=lambda index: sqnr_db[index])


def greedy(method: str, ranking: list[str], evaluate: Any, best_int8: int, on_step: Any) -> list[Candidate]:
    """From every layer int8, move the costliest remaining layer (`ranking`: costliest first) back to float until the
    budget holds; stop early once this method can no longer keep as many int8 layers as `best_int8`."""
    tried: list[Candidate] = []
    for count in range(len(ranking)):  # layers in float; at least one stays int8
        if len(ranking) - count < best_int8:
            break
        candidate = evaluate(method, tuple(ranking[:count]))
        on_step(1)
        tried.append(candidate)
        if candidate.verdict:
            break
    return tried


def most_int8(candidates: list[Candidate]) -> int:
    """The most int8 layers of a choice that holds the budget (0 while none does)."""
    return max((c.int8_layers for c in candidates if c.verdict), default=0)


def choose(candidates: list[Candidate]) -> Candidate:
    """The choice that holds the budget with the most int8 layers (then the higher agreement and accuracy); when
    none holds, the one closest to it (fewest failed limits, then the higher agreement and accuracy)."""
    passing = [c for c in candidates if c.verdict]
    if passing:
        return max(passing, key=lambda c: (c.int8_layers, c.figures.agreement, c.figures.accuracy))
    return max(candidates, key=lambda c: (-len(c.verdict.failures), c.figures.agreement, c.figures.accuracy))


def all_int8_candidate(candidates: list[Candidate], method: str) -> Candidate:
    """The choice of `method` with every layer int8: the report's throughput compares the result with it."""
    return next(c for c in candidates if c.method == method and not c.float_layers)


def layer_decisions(layers: list[QuantizableLayer], costs: list[tuple[Parity, float]], ranking: list[int],
                    chosen: Candidate, candidates: list[Candidate]) -> list[LayerDecision]:
    """Per layer (graph order): its cost alone, its rank, the decision and why."""
    tried = {c.float_layers: c for c in candidates if c.method == chosen.method}
    decisions = []
    for index, layer in enumerate(layers):
        figures, sqnr_db = costs[index]
        rank = ranking.index(index) + 1
        if layer.name in chosen.float_layers:
            before = tried[chosen.float_layers[:rank - 1]]  # the choice with this layer still int8
            reason = (f"costliest left in int8 (rank {rank}); with it in int8: "
                      f"{'; '.join(before.verdict.failures)}")
            decision = "float"
        else:
            decision = "int8"
            reason = "the budget holds with it in int8" if chosen.verdict else "int8 in the best choice found"
        alone = {key: value for key, value in asdict(figures).items() if key != "reference"}
        decisions.append(LayerDecision(layer.name, layer.op, layer.parameters, round(sqnr_db, 3), alone, rank,
                                       decision, reason))
    return decisions


def write_int8(prepared: PreparedModel, record: CalibrationRecord, float_layers: Sequence[str], budget: dict,
               path: Path) -> Path:
    """One int8 file of the search, complete with its metadata (which layers are float, the budget)."""
    model = prepared.quantize(record.ranges, record.method, float_layers, prepared.source)
    quantization = quantization_record(prepared.target, record, float_layers, budget)
    prepared.metadata.with_precision("int8", quantization).embed(model)
    return save_int8(model, prepared.target, path)


def run_file(path: Path, images: np.ndarray) -> np.ndarray:
    """Logits of an edgecls ONNX file through the deployment runtime (ONNX Runtime, CPU)."""
    from edgecls.runtime import Classifier

    # The batch size bounds memory; the logits are the same at any size.
    with Classifier.load(path, batch_size=EVALUATION_BATCH) as classifier:  # pragma: no mutate
        return classifier.logits(images)


def sqnr(reference: np.ndarray, found: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB (ONNX Runtime's qdq_loss_debug definition)."""
    from onnxruntime.quantization.qdq_loss_debug import compute_signal_to_quantization_noice_ratio

    return float(compute_signal_to_quantization_noice_ratio(reference, found))


# ------------------------------------------------------------------------------------------------ sensitivity

def layer_sensitivity(prepared: PreparedModel, ranges: dict[str, dict], images: np.ndarray,
                      progress: bool = False) -> tuple[np.ndarray, dict[str, list[np.ndarray]]]:
    """The float model's logits on uint8 `images`, and for each method (name -> its ranges) the logits with each
    layer alone int8 (in `prepared.layers` order).

    ONNX Runtime's `qdq_loss_debug.collect_activations` would keep every activation of every image in memory
    (about 2 GB for new2 on 5,000 images); here the float activations live for one chunk of images at a time.
    """
    import onnxruntime as ort

    model = onnx.shape_inference.infer_shapes(prepared.model)
    nodes = [node.name for node in model.graph.node]
    input_name, output_name = prepared.metadata.input_name, prepared.metadata.output_name
    cuts = {layer.name: cut_inputs(model, nodes.index(layer.name)) for layer in prepared.layers}
    kept = sorted({name for names in cuts.values() for name in names} - {input_name})
    options = ort.SessionOptions()
    options.enable_cpu_mem_arena = False  # many sessions are open at once: each frees its buffers after a run
    # and none keeps its threads spinning after a run, stealing the cores from the next (new2: 1.5x faster here).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")

    def session(graph: onnx.ModelProto) -> Any:
        return ort.InferenceSession(graph.SerializeToString(), options, providers=["CPUExecutionProvider"])

    float_session = session(with_outputs(model, kept))
    names = [layer.name for layer in prepared.layers]
    variants = {(method, name): session(prepared.quantize(method_ranges, method, [n for n in names if n != name],
                                                          prepared.source, from_node(model, nodes.index(name),
                                                                                   cuts[name])))
                for method, method_ranges in ranges.items() for name in names}
    float_logits: list[np.ndarray] = []
    alone: dict[tuple[str, str], list[np.ndarray]] = {key: [] for key in variants}
    for start in _bar(range(0, len(images), ACTIVATION_CHUNK), progress, "layer sensitivity", "chunk"):
        inputs = prepared.metadata.preprocess(images[start:start + ACTIVATION_CHUNK])
        values = dict(zip([output_name, *kept], float_session.run([output_name, *kept], {input_name: inputs})))
        values[input_name] = inputs
        float_logits.append(values[output_name])
        for (method, name), variant in variants.items():
            alone[method, name].append(variant.run([output_name], {tensor: values[tensor] for tensor in cuts[name]})[0])
    return np.concatenate(float_logits), {method: [np.concatenate(alone[method, name]) for name in names]
                                          for method in ranges}


@contextlib.contextmanager
def _work_folder(work_dir: str | Path | None) -> Iterator[Path]:
    if work_dir is not None:
        folder = Path(work_dir)
        folder.mkdir(parents=True, exist_ok=True)
        yield folder
        return
    with tempfile.TemporaryDirectory(prefix="edgecls-int8-search-") as tmp:
        yield Path(tmp)


def _bar(items: Any, progress: bool, desc: str, unit: str) -> Any:
    """A tqdm progress bar over `items` (or a manual one for None), silent without `progress`."""
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit=unit, leave=False, disable=not progress)
