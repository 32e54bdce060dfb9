"""The files one stage hands the next (docs/FORMATS.md), each as a typed record with one writer, one reader and
one validation. Torch-free: the runtime reads the ONNX metadata and the engine manifest with it on a device.

- `ModelMetadata`: the `edgecls` entry of an exported ONNX file's metadata (and of an engine manifest).
- `EngineManifest`: `<name>.plan.json` beside a TensorRT plan.
- `ReferenceLogits`: `<model>.reference.npz`, the original model's logits on the test split.
- `CalibrationRecord`: `calibration/<model>.<method>.json`, the calibration images and tensor ranges.
- `ExportSet`: `<model>.export.json` beside the files of one export, which readers check before using one.
- `TritonRepository`: `edgecls-repository.json` at the root of a Triton model repository `edgecls deploy` wrote.

The checkpoint is PyTorch's own format and lives in `edgecls.checkpoint`; the preprocessing record in
`edgecls.preprocess`.
"""

from __future__ import annotations

import contextlib
import json
import os
import zipfile
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar, Collection, Iterator, Mapping, Optional, Sequence

import numpy as np

from edgecls.artifacts import atomic_write, sha256_file, write_json
from edgecls.defaults import PRECISIONS
from edgecls.errors import EdgeclsError, first_line
from edgecls.preprocess import Preprocessing

INPUT_NAME = "images"
OUTPUT_NAME = "logits"
METADATA_KEY = "edgecls"  # the ONNX metadata_props key
FORMAT_VERSION = 1  # of every record below; each file says which version wrote it


def _json_object(path: Path, what: str, fix: str, missing: str) -> dict:
    """The JSON object in `path`, or one line naming the file: `missing` when there is none, else what is wrong."""
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise EdgeclsError(missing) from exc
    except (OSError, ValueError) as exc:  # ValueError: not UTF-8, or not JSON
        raise EdgeclsError(f"{what} {path} is unreadable or not JSON ({first_line(exc)}); {fix}") from exc
    if not isinstance(record, dict):
        raise EdgeclsError(f"{path} is not an edgecls {what}; {fix}")
    return record


@contextlib.contextmanager
def _fields_of(what: str, fix: str) -> Iterator[None]:
    """Turn a missing or malformed field, met while building a record, into one line naming the file."""
    try:
        yield
    except (KeyError, TypeError, ValueError) as exc:
        raise EdgeclsError(f"{what} lacks or garbles {first_line(exc)}; {fix}") from exc


def _check_version(record: Mapping[str, Any], what: str, fix: str) -> None:
    version = record.get("format_version")
    if version != FORMAT_VERSION:
        raise EdgeclsError(f"{what} has format version {version}, this edgecls reads version {FORMAT_VERSION}; {fix}")


def _marked_record(path: Path, marker: str, what: str, fix: str, missing: str, elsewhere: str) -> dict:
    """The JSON object of a record that names its format (`"format": marker`): refused in one line naming the file
    when it is missing, unreadable, another file (`elsewhere` says where the right one is) or of another version."""
    record = _json_object(path, what, fix, missing)
    if record.get("format") != marker:
        raise EdgeclsError(f"{path} is not an edgecls {what}; {elsewhere}")
    _check_version(record, f"{what} {path}", fix)
    return record


class _MarkedRecord:
    """A dataclass record kept as JSON that names its format: {"format": FORMAT, "format_version": ..., its fields}."""

    FORMAT: ClassVar[str]

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.FORMAT, "format_version": FORMAT_VERSION, **asdict(self)}  # type: ignore[call-overload]

    def write(self, path: str | os.PathLike) -> Path:
        write_json(path, self.to_dict())
        return Path(path)


# ----------------------------------------------------------------------------------------------- ONNX metadata

@dataclass(frozen=True)
class ModelMetadata:
    """What an exported model says about itself: which model, which precision, how to preprocess its input."""

    model: str
    precision: str  # fp32 | fp16 | int8
    preprocess: Preprocessing
    checkpoint_sha256: str  # the checkpoint it was exported from
    data_fingerprint: str  # the data that checkpoint was trained on
    input_name: str = INPUT_NAME
    output_name: str = OUTPUT_NAME
    quantization: Optional[dict] = None  # int8 only: target, method, calibration images

    def to_dict(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "format_version": FORMAT_VERSION, "model": self.model, "precision": self.precision,
            "input_name": self.input_name, "output_name": self.output_name, "preprocess": self.preprocess.to_dict(),
            "checkpoint_sha256": self.checkpoint_sha256, "data_fingerprint": self.data_fingerprint}
        if self.quantization is not None:
            record["quantization"] = self.quantization
        return record

    @classmethod
    def from_dict(cls, record: Any, source: str) -> "ModelMetadata":
        fix = "re-export it with `edgecls export`"
        if not isinstance(record, dict):
            raise EdgeclsError(f"{source}: the edgecls metadata is not a JSON object; {fix}")
        _check_version(record, f"{source}: the edgecls metadata", fix)
        try:
            metadata = cls(model=str(record["model"]), precision=str(record["precision"]),
                           preprocess=Preprocessing.from_dict(record["preprocess"]),
                           checkpoint_sha256=str(record["checkpoint_sha256"]),
                           data_fingerprint=str(record["data_fingerprint"]), input_name=str(record["input_name"]),
                           output_name=str(record["output_name"]), quantization=record.get("quantization"))
        except KeyError as exc:
            raise EdgeclsError(f"{source}: the edgecls metadata lacks {exc.args[0]!r}; {fix}") from exc
        except EdgeclsError as exc:
            raise EdgeclsError(f"{source}: {exc}") from exc
        if metadata.precision not in PRECISIONS:
            raise EdgeclsError(f"{source}: the edgecls metadata names an unknown precision {metadata.precision!r}; {fix}")
        return metadata

    @classmethod
    def from_json(cls, raw: str | None, source: str) -> "ModelMetadata":
        """Parse the metadata entry as stored in the file; None (no entry) is an error naming the file."""
        if raw is None:
            raise EdgeclsError(f"{source} has no edgecls metadata ('{METADATA_KEY}'), so its preprocessing is unknown; "
                               "export it with `edgecls export`")
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise EdgeclsError(f"{source}: the edgecls metadata is not JSON ({exc.msg}); re-export it") from exc
        return cls.from_dict(record, source)

    def check_io(self, inputs: Mapping[str, Sequence[Optional[int]]], outputs: Collection[str], source: str) -> None:
        """Check that a graph's inputs (name -> dims, None for a dynamic one) and outputs agree with this record."""
        if self.input_name not in inputs or self.output_name not in outputs:
            raise EdgeclsError(f"{source}: the graph has inputs {sorted(inputs)} and outputs {sorted(outputs)}, but its "
                               f"metadata names '{self.input_name}' -> '{self.output_name}'; re-export it")
        dims = list(inputs[self.input_name])
        crop = self.preprocess.crop_size
        batch_ok = len(dims) == 4 and (dims[0] is None or dims[0] >= 1)
        if not batch_ok or dims[1:] != [3, crop, crop]:
            shown = ["batch" if d is None else d for d in dims]
            raise EdgeclsError(f"{source}: input '{self.input_name}' has shape {shown}, but its metadata says "
                               f"[batch, 3, {crop}, {crop}]; re-export it with `edgecls export`")

    # --- in an ONNX file ---------------------------------------------------------------------------------
    def embed(self, model: Any) -> None:
        """Store this record in an onnx.ModelProto, replacing any earlier one."""
        kept = [entry for entry in model.metadata_props if entry.key != METADATA_KEY]
        del model.metadata_props[:]
        model.metadata_props.extend(kept)
        model.metadata_props.add(key=METADATA_KEY, value=json.dumps(self.to_dict()))

    @classmethod
    def from_onnx(cls, model: Any, source: str) -> "ModelMetadata":
        """The record of a loaded onnx.ModelProto, after checking its graph agrees with it."""
        entries = {entry.key: entry.value for entry in model.metadata_props}
        metadata = cls.from_json(entries.get(METADATA_KEY), source)
        inputs = {value.name: [d.dim_value if d.HasField("dim_value") else None
                               for d in value.type.tensor_type.shape.dim] for value in model.graph.input}
        metadata.check_io(inputs, {value.name for value in model.graph.output}, source)
        return metadata

    @classmethod
    def read(cls, path: str | os.PathLike) -> "ModelMetadata":
        """The record of an ONNX file on disk (needs the `onnx` package), once the file has passed
        `ExportSet.check_member`."""
        from edgecls.onnx_graph import load_onnx

        metadata = cls.from_onnx(load_onnx(path), str(path))
        ExportSet.check_member(path, metadata.model)
        return metadata

    def with_precision(self, precision: str, quantization: Optional[dict] = None) -> "ModelMetadata":
        return replace(self, precision=precision, quantization=quantization)


# ----------------------------------------------------------------------------------------------- engine manifest

@dataclass(frozen=True)
class EngineManifest:
    """How, where and from what a TensorRT plan was built: a plan runs only with the TensorRT build and GPU model
    that made it, so the runtime compares these with the machine before TensorRT reads the plan."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    onnx_path: str
    onnx_sha256: str
    plan_sha256: str
    precision: str
    batch: dict  # {"min": .., "opt": .., "max": ..}
    model: ModelMetadata  # the ONNX file's metadata, stored under "edgecls"
    build_seconds: float = 0.0
    built_at: str = ""
    dla_core: Optional[int] = None  # the Jetson DLA core the plan runs on (GPU fallback on); None: the GPU
    cuda_binding: str = ""  # what read the GPU's facts at build: cuda-python | pycuda | nvidia-smi
    board: str = ""  # the Jetson board (/proc/device-tree/model); "" elsewhere
    l4t_release: str = ""  # the Jetson Linux release (/etc/nv_tegra_release), e.g. "35.4.1"; "" elsewhere

    @staticmethod
    def path_for(plan: str | os.PathLike) -> Path:
        plan = Path(plan)
        return plan.with_name(plan.name + ".json")

    def to_dict(self) -> dict[str, Any]:
        record = {"format_version": FORMAT_VERSION}
        record.update((f.name, getattr(self, f.name)) for f in fields(self) if f.name != "model")
        record["edgecls"] = self.model.to_dict()
        return record

    @classmethod
    def from_dict(cls, record: Any, source: str) -> "EngineManifest":
        fix = "rebuild the engine with `edgecls build`"
        if not isinstance(record, dict) or "edgecls" not in record or "tensorrt_version" not in record:
            raise EdgeclsError(f"{source} is not an edgecls engine manifest; {fix}")
        _check_version(record, f"engine manifest {source}", fix)
        with _fields_of(f"engine manifest {source}", fix):
            batch = {key: int(record["batch"][key]) for key in ("min", "opt", "max")}
            dla_core = record.get("dla_core")
            if dla_core is not None and (isinstance(dla_core, bool) or not isinstance(dla_core, int) or dla_core < 0):
                raise ValueError(f"dla_core {dla_core!r}")
            return cls(tensorrt_version=str(record["tensorrt_version"]), gpu_name=str(record["gpu_name"]),
                       compute_capability=str(record["compute_capability"]), onnx_path=str(record["onnx_path"]),
                       onnx_sha256=str(record["onnx_sha256"]), plan_sha256=str(record["plan_sha256"]),
                       precision=str(record["precision"]), batch=batch,
                       model=ModelMetadata.from_dict(record["edgecls"], source),
                       build_seconds=float(record.get("build_seconds", 0.0)), built_at=str(record.get("built_at", "")),
                       dla_core=dla_core, cuda_binding=str(record.get("cuda_binding", "")),
                       board=str(record.get("board", "")), l4t_release=str(record.get("l4t_release", "")))

    def write(self, plan: str | os.PathLike) -> Path:
        path = self.path_for(plan)
        write_json(path, self.to_dict())
        return path

    @classmethod
    def read(cls, plan: str | os.PathLike) -> "EngineManifest":
        """The manifest of `plan`, after checking that the plan on disk is the one it describes."""
        plan = Path(plan)
        if not plan.is_file():
            raise EdgeclsError(f"engine file {plan} does not exist; build it with `edgecls build` on this device")
        path = cls.path_for(plan)
        fix = "rebuild the engine with `edgecls build`"
        record = _json_object(path, "engine manifest", fix, missing=f"{plan} has no manifest {path}; {fix}")
        manifest = cls.from_dict(record, str(path))
        if sha256_file(plan) != manifest.plan_sha256:
            raise EdgeclsError(f"engine file {plan} does not match its manifest (truncated, or replaced); "
                               "rebuild it with `edgecls build`")
        return manifest


# ----------------------------------------------------------------------------------------------- reference logits

@dataclass(frozen=True)
class ReferenceLogits:
    """The original PyTorch model's logits on the evaluation images, so that a device without PyTorch can check
    parity. Each row carries the digest of its image (`edgecls.data.image_digests`), so rows are matched to images
    whatever form or order the data is read in later."""

    logits: np.ndarray  # float32, N x classes
    labels: np.ndarray  # int64, N
    digests: np.ndarray  # uint8, N x 16
    model: str
    checkpoint_sha256: str
    data_fingerprint: str  # of the data the logits were computed on
    split: str = "test"

    def write(self, path: str | os.PathLike) -> Path:
        meta = {"format_version": FORMAT_VERSION, "model": self.model, "checkpoint_sha256": self.checkpoint_sha256,
                "data_fingerprint": self.data_fingerprint, "split": self.split}
        with atomic_write(path) as handle:
            np.savez(handle, logits=self.logits.astype(np.float32), labels=self.labels.astype(np.int64),
                     digests=self.digests.astype(np.uint8), meta=np.array(json.dumps(meta)))
        return Path(path)

    @classmethod
    def read(cls, path: str | os.PathLike) -> "ReferenceLogits":
        path = Path(path)
        fix = "export the model again"
        try:
            with np.load(path, allow_pickle=False) as archive:
                arrays = {key: archive[key] for key in ("logits", "labels", "digests", "meta")}
            meta = json.loads(str(arrays["meta"]))
        except FileNotFoundError as exc:
            raise EdgeclsError(f"reference {path} does not exist; export the model or pass --reference") from exc
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
            raise EdgeclsError(f"reference {path} is unreadable or not an edgecls reference ({first_line(exc)}); "
                               f"{fix}") from exc
        if not isinstance(meta, dict):
            raise EdgeclsError(f"reference {path} has no description of its rows; {fix}")
        _check_version(meta, f"reference {path}", fix)
        logits, labels, digests = arrays["logits"], arrays["labels"], arrays["digests"]
        if logits.ndim != 2 or labels.shape != (len(logits),) or digests.shape != (len(logits), 16):
            raise EdgeclsError(f"reference {path} holds inconsistent arrays; {fix}")
        try:
            return cls(logits.astype(np.float32), labels.astype(np.int64), digests.astype(np.uint8),
                       model=str(meta["model"]), checkpoint_sha256=str(meta["checkpoint_sha256"]),
                       data_fingerprint=str(meta["data_fingerprint"]), split=str(meta.get("split", "test")))
        except KeyError as exc:
            raise EdgeclsError(f"reference {path} lacks {exc.args[0]!r} in its description; {fix}") from exc


# ----------------------------------------------------------------------------------------------- calibration record

@dataclass(frozen=True)
class CalibrationRecord(_MarkedRecord):
    """Which training images calibrated an int8 export and the tensor ranges they gave: passing the record back
    (`--calibration-cache`) reproduces the same scales without the images."""

    model: str
    checkpoint_sha256: str
    data_fingerprint: str
    method: str
    size: int
    seed: int
    indices: list  # positions in the training split
    ranges: dict  # tensor name -> [low, high], in ONNX Runtime's calibration-cache form
    split: str = "train"
    created_at: str = ""
    versions: dict = field(default_factory=dict)

    FORMAT = "edgecls-calibration"

    @classmethod
    def read(cls, path: str | os.PathLike) -> "CalibrationRecord":
        path = Path(path)
        fix = "delete it and calibrate afresh"
        record = _marked_record(path, cls.FORMAT, "calibration record", fix,
                                missing=f"calibration record {path} does not exist; drop --calibration-cache to "
                                        "calibrate afresh", elsewhere="pass a file from calibration/")
        with _fields_of(f"calibration record {path}", fix):
            return cls(model=str(record["model"]), checkpoint_sha256=str(record["checkpoint_sha256"]),
                       data_fingerprint=str(record["data_fingerprint"]), method=str(record["method"]),
                       size=int(record["size"]), seed=int(record["seed"]), indices=list(record["indices"]),
                       ranges=dict(record["ranges"]), split=str(record.get("split", "train")),
                       created_at=str(record.get("created_at", "")), versions=dict(record.get("versions", {})))


# ----------------------------------------------------------------------------------------------- export set

@dataclass(frozen=True)
class ExportSet:
    """`<model>.export.json`, beside the files one export installed: their names and sha256, and whether installing
    them finished. Export renames the record in as incomplete, then each file, then the complete record; every
    reader of an export file calls `check_member` first, so a crash while installing leaves files that readers
    refuse with one line, never a mix of two exports taken for one."""

    model: str
    checkpoint_sha256: str
    files: dict  # file name (in the record's folder) -> sha256
    complete: bool
    created_at: str = ""

    @staticmethod
    def member_name(model: str, kind: str) -> str:
        """The name an export gives each kind of file: an ONNX file per precision, or the reference logits."""
        return f"{model}.reference.npz" if kind == "reference" else \
            f"{model}{'' if kind == 'fp32' else '.' + kind}.onnx"

    @classmethod
    def member_names(cls, model: str) -> list[str]:
        """Every name an export of `model` may install: the record governs these, whether it lists them or not."""
        return [cls.member_name(model, kind) for kind in (*PRECISIONS, "reference")]

    @staticmethod
    def path_for(folder: str | os.PathLike, model: str) -> Path:
        return Path(folder) / f"{model}.export.json"

    def to_dict(self) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, **asdict(self)}

    def write(self, path: str | os.PathLike) -> Path:
        write_json(path, self.to_dict())
        return Path(path)

    @classmethod
    def read(cls, path: str | os.PathLike) -> "ExportSet":
        path = Path(path)
        fix = "run `edgecls export` again"
        record = _json_object(path, "export record", fix, missing=f"export record {path} does not exist; {fix}")
        _check_version(record, f"export record {path}", fix)
        with _fields_of(f"export record {path}", fix):
            return cls(model=str(record["model"]), checkpoint_sha256=str(record["checkpoint_sha256"]),
                       files={str(name): str(digest) for name, digest in dict(record["files"]).items()},
                       complete=bool(record["complete"]), created_at=str(record.get("created_at", "")))

    @classmethod
    def check_member(cls, path: str | os.PathLike, model: str) -> None:
        """Refuse an export file of `model` that is not part of a complete export set: its folder's record is
        incomplete (an export was interrupted while installing), does not list it under its name, or lists other
        bytes. A file with no record beside it (copied alone, or exported before records existed) is not checked,
        nor is a file under a name no export writes."""
        path = Path(path)
        record_path = cls.path_for(path.parent, model)
        if not record_path.is_file():
            return
        record = cls.read(record_path)
        if not record.complete:
            raise EdgeclsError(f"{path}: the export of {model} into {path.parent} was interrupted while installing its "
                               f"files ({record_path} is incomplete), so they may come from two exports; "
                               "run `edgecls export` again")
        expected = record.files.get(path.name)
        if expected is None:
            if path.name in cls.member_names(model):
                raise EdgeclsError(f"{path} is not part of the last export of {model} ({record_path}); "
                                   "run `edgecls export` again, or remove the file")
            return
        if sha256_file(path) != expected:
            raise EdgeclsError(f"{path} has changed since it was exported (it does not match {record_path}); "
                               "run `edgecls export` again")


# ----------------------------------------------------------------------------------------------- int8 report

@dataclass(frozen=True)
class LayerDecision:
    """One quantizable layer in an int8 search: what quantizing it alone costs, and whether it stayed int8."""

    name: str  # the node's name in the ONNX graph
    op: str  # Conv, ConvTranspose or Gemm, as exported
    parameters: int
    sqnr_db: float  # of the logits with this layer alone int8, against the float model's (validation)
    alone: dict  # validation figures with this layer alone int8: accuracy, accuracy_delta, agreement, flips, ...
    rank: int  # 1: the costliest alone (lowest SQNR), the first one moved back to float
    decision: str  # "int8" | "float"
    reason: str


@dataclass(frozen=True)
class Int8Report(_MarkedRecord):
    """The evidence behind an int8 file made within an accuracy budget (`edgecls export --int8 --max-drop ...`):
    `calibration/<model>.int8-report.json`. Accuracy decisions were made on the validation images; the test split
    is only reported. Every figure block (`validation`, `test`, a candidate's or a layer's `alone`) is a
    `edgecls.metrics.Parity` as a dict, against the float model."""

    model: str
    checkpoint_sha256: str
    data_fingerprint: str
    target: str  # trt | cpu
    budget: dict  # {"max_drop": points or None, "min_agreement": percent or None}
    passed: bool  # the result holds the budget on the validation images
    method: str  # the calibration method of the result
    float_layers: list  # names of the layers left in float
    int8_layers: int
    layers: list  # LayerDecision per quantizable layer, in graph order
    validation: dict  # which images judged: source, size, seed, seen_in_training, note
    calibration: dict  # size, seed, split, disjoint_from_validation
    sensitivity: str  # how layers were ranked
    candidates: list  # every choice evaluated, in order: method, float_layers, int8_layers, validation, passed,
    #                   failures
    result: dict  # {"validation": Parity dict, "test": Parity dict or None}
    throughput: Optional[dict]  # CPU images/s of fp32, all-int8 and the result (None when no choice held)
    search_seconds: float
    created_at: str = ""
    versions: dict = field(default_factory=dict)

    FORMAT = "edgecls-int8-report"

    @classmethod
    def read(cls, path: str | os.PathLike) -> "Int8Report":
        path = Path(path)
        fix = "export the model again with `edgecls export --int8 --max-drop ...`"
        record = _marked_record(path, cls.FORMAT, "int8 report", fix,
                                missing=f"int8 report {path} does not exist; {fix}",
                                elsewhere="pass a <model>.int8-report.json from calibration/")
        with _fields_of(f"int8 report {path}", fix):
            values = {f.name: record[f.name] for f in fields(cls) if f.name not in ("created_at", "versions")}
            values["layers"] = [LayerDecision(**layer) for layer in values["layers"]]
            return cls(**values, created_at=str(record.get("created_at", "")),
                       versions=dict(record.get("versions", {})))


# ----------------------------------------------------------------------------------------------- Triton repository

@dataclass(frozen=True)
class TritonRepository(_MarkedRecord):
    """`edgecls-repository.json` at the root of a Triton model repository written by `edgecls deploy triton`: which
    models it holds and the files they were made from. Deploy replaces a folder only when it holds this record, so it
    never overwrites a folder it did not write. Triton itself reads only the model folders beside it."""

    models: dict  # Triton model name -> {"kind": platform or backend, "source": the file it came from or null}
    sources: dict  # each source file as given -> its sha256
    created_at: str = ""
    versions: dict = field(default_factory=dict)

    FORMAT = "edgecls-triton-repository"
    FILE_NAME = "edgecls-repository.json"

    @classmethod
    def read(cls, path: str | os.PathLike) -> "TritonRepository":
        path = Path(path)
        fix = "remove its folder and run `edgecls deploy triton` again"
        record = _marked_record(path, cls.FORMAT, "Triton repository record", fix,
                                missing=f"{path.parent} is not an edgecls model repository (no {path.name}); {fix}",
                                elsewhere="its folder was not written by `edgecls deploy triton`; choose another "
                                          "output folder")
        with _fields_of(f"Triton repository record {path}", fix):
            return cls(models=dict(record["models"]), sources=dict(record["sources"]),
                       created_at=str(record.get("created_at", "")), versions=dict(record.get("versions", {})))
