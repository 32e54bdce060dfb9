"""The files one stage hands the next (docs/FORMATS.md), each as a typed record with one writer, one reader and
one validation. Torch-free: the runtime reads the ONNX metadata and the engine manifest with it on a device.

- `ModelMetadata`: the `edgecls` entry of an exported ONNX file's metadata (and of an engine manifest).
- `EngineManifest`: `<name>.plan.json` beside a TensorRT plan.
- `ReferenceLogits`: `<model>.reference.npz`, the original model's logits on the test split.
- `CalibrationRecord`: `calibration/<model>.<method>.json`, the calibration images and tensor ranges.
- `ExportSet`: `<model>.export.json` beside the files of one export, which readers check before using one.
- `Int8Report`: `calibration/<model>.int8-report.json`, the evidence of an int8 file made within a budget.
- `BenchResult`: one model file's result in an `edgecls bench --json` file.

Every field is read with its type checked (`_typed`): an edited file is refused in one line naming the file and the
field, never taken with a wrong type ("complete": "false" is not true).
- `TritonRepository`: `edgecls-repository.json` at the root of a Triton model repository `edgecls deploy` wrote.

The checkpoint is PyTorch's own format and lives in `edgecls.checkpoint`; the preprocessing record in
`edgecls.preprocess`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import zipfile
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar, Collection, Iterator, Mapping, Optional, Sequence

import numpy as np

from edgecls.artifacts import atomic_write, check_npz_sizes, live_writer, read_bounded, sha256_file, write_json
from edgecls.defaults import CALIBRATION_DIR, ENGINES_DIR, EXPORT_DIR, PRECISIONS
from edgecls.errors import EdgeclsError, first_line
from edgecls.preprocess import Preprocessing

INPUT_NAME = "images"
OUTPUT_NAME = "logits"
METADATA_KEY = "edgecls"  # the ONNX metadata_props key
FORMAT_VERSION = 1  # of every record below; each file says which version wrote it


def _json_object(path: Path, what: str, fix: str, missing: str) -> dict:
    """The JSON object in `path`, or one line naming the file: `missing` when there is none, else what is wrong."""
    try:
        record = json.loads(read_bounded(path, what).decode())  # a FIFO or /dev/zero is refused, not read forever
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


_KIND_WORDS = {"bool": "true or false", "int": "a whole number", "float": "a finite number", "str": "a string",
               "dict": "a JSON object", "list": "a list"}


def _is_kind(value: Any, kind: str) -> bool:
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return isinstance(value, {"str": str, "dict": dict, "list": list}[kind])


def _typed(value: Any, kind: str, name: str) -> Any:
    """`value` when it is of `kind` ("int", "float", "str", "bool", "dict", "list", or "Optional[...]" of one: JSON's
    own types, a bool being no number), else a TypeError naming the field (`_fields_of` turns it into one line)."""
    if kind.startswith("Optional["):
        if value is None:
            return None
        kind = kind[len("Optional["):-1]
    if not _is_kind(value, kind):
        shown = json.dumps(value) if isinstance(value, (str, int, float, bool, type(None))) else type(value).__name__
        raise TypeError(f"{name} ({shown[:40]} is not {_KIND_WORDS[kind]})")
    return float(value) if kind == "float" else value


def _typed_fields(cls: type, record: Any, prefix: str = "") -> dict[str, Any]:
    """The values of the dataclass `cls`'s fields in the JSON object `record`, each checked against the field's
    annotation; a field with a default may be absent (it then keeps its default)."""
    if not isinstance(record, dict):
        raise TypeError(f"{prefix[:-1] or 'the record'} (not a JSON object)")  # "layers[0]." names "layers[0]"
    values = {}
    for spec in fields(cls):
        if spec.name in record:
            values[spec.name] = _typed(record[spec.name], str(spec.type), prefix + spec.name)
        elif spec.default is MISSING and spec.default_factory is MISSING:  # type: ignore[misc]
            raise KeyError(prefix + spec.name)
    return values


def _numbers(block: Any, keys: Sequence[str], name: str) -> None:
    """Check that the JSON object `block` holds a finite number under each of `keys`."""
    _typed(block, "dict", name)
    for key in keys:
        if key not in block:
            raise KeyError(f"{name}.{key}")
        _typed(block[key], "float", f"{name}.{key}")


# The figures of a Parity (`edgecls.metrics.Parity`) that the report and the tables show.
PARITY_NUMBERS = ("images", "agreement", "flips", "right_to_wrong", "wrong_to_right", "accuracy", "accuracy_delta")


class _Record:
    """A dataclass record kept as JSON, read field by field with each field's type checked (`_typed`): an edited
    file is refused in one line naming the file and the field, never taken with a wrong type."""

    WHAT: ClassVar[str]  # what the record is called in messages
    FIX: ClassVar[str]  # what to do about a bad one

    # Runs when a record class is defined (at import, before any test: mutants here cannot be seen); the defaults
    # serve only the abstract _MarkedRecord, whose words are never shown.
    def __init_subclass__(cls, what: str = "", fix: str = "", **kwargs: Any) -> None:  # pragma: no mutate
        super().__init_subclass__(**kwargs)
        cls.WHAT, cls.FIX = what, fix  # pragma: no mutate

    def to_dict(self) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, **asdict(self)}  # type: ignore[call-overload]

    def write(self, path: str | os.PathLike) -> Path:
        write_json(path, self.to_dict())
        return Path(path)

    @classmethod
    def from_dict(cls, record: Any, source: str) -> Any:
        """The record of a JSON object read from `source` (the version already checked)."""
        with _fields_of(f"{cls.WHAT} {source}", cls.FIX):
            return cls(**cls._checked(_typed_fields(cls, record)))

    @classmethod
    def _checked(cls, values: dict[str, Any]) -> dict[str, Any]:
        """The fields' values after the checks their contents need beyond their types (none here)."""
        return values


class _MarkedRecord(_Record):
    """A record whose JSON names its format: {"format": FORMAT, "format_version": ..., its fields}."""

    FORMAT: ClassVar[str]
    ELSEWHERE: ClassVar[str]  # where the right file is, when another one is given

    def __init_subclass__(cls, format: str = "", elsewhere: str = "", **kwargs: Any) -> None:  # pragma: no mutate
        super().__init_subclass__(**kwargs)  # as _Record's: runs at import, every subclass names both
        cls.FORMAT, cls.ELSEWHERE = format, elsewhere  # pragma: no mutate

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.FORMAT, **super().to_dict()}

    @classmethod
    def read(cls, path: str | os.PathLike) -> Any:
        path = Path(path)
        record = _marked_record(path, cls.FORMAT, cls.WHAT, cls.FIX, missing=cls.missing(path),
                                elsewhere=cls.ELSEWHERE)
        return cls.from_dict(record, str(path))  # from_dict reads the fields by name: "format" and the version stay out

    @classmethod
    def missing(cls, path: Path) -> str:
        return f"{cls.WHAT} {path} does not exist; {cls.FIX}"


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
            strings = {key: _typed(record[key], "str", key) for key in
                       ("model", "precision", "checkpoint_sha256", "data_fingerprint", "input_name", "output_name")}
            metadata = cls(**strings, preprocess=Preprocessing.from_dict(record["preprocess"]),
                           quantization=_typed(record.get("quantization"), "Optional[dict]", "quantization"))
        except KeyError as exc:
            raise EdgeclsError(f"{source}: the edgecls metadata lacks {exc.args[0]!r}; {fix}") from exc
        except TypeError as exc:
            raise EdgeclsError(f"{source}: the edgecls metadata garbles {exc}; {fix}") from exc
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
    layers_on_dla: Optional[list] = None  # DLA plans: the layers TensorRT runs on the DLA (its engine inspector)
    layers_on_gpu: Optional[list] = None  # DLA plans: the layers that fell back to the GPU; None for GPU plans

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
            strings = {key: _typed(record[key], "str", key) for key in
                       ("tensorrt_version", "gpu_name", "compute_capability", "onnx_path", "onnx_sha256", "plan_sha256",
                        "precision")}
            informative = {key: _typed(record.get(key, ""), "str", key) for key in
                           ("built_at", "cuda_binding", "board", "l4t_release")}
            return cls(**strings, **informative, batch=batch, model=ModelMetadata.from_dict(record["edgecls"], source),
                       build_seconds=_typed(record.get("build_seconds", 0.0), "float", "build_seconds"),
                       dla_core=dla_core,
                       layers_on_dla=_name_list(record.get("layers_on_dla"), "layers_on_dla"),
                       layers_on_gpu=_name_list(record.get("layers_on_gpu"), "layers_on_gpu"))

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


def _name_list(value: Any, field: str) -> Optional[list]:
    """An optional list of layer names in a manifest (ValueError, reported by _fields_of, for anything else)."""
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
        raise ValueError(f"{field} {value!r}")
    return list(value)


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
            check_npz_sizes(path, "reference")  # declared shapes, before numpy allocates them
            with np.load(path, allow_pickle=False) as archive:  # pragma: no mutate (False is numpy's default too)
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
                       model=_typed(meta["model"], "str", "model"),
                       checkpoint_sha256=_typed(meta["checkpoint_sha256"], "str", "checkpoint_sha256"),
                       data_fingerprint=_typed(meta["data_fingerprint"], "str", "data_fingerprint"),
                       split=_typed(meta.get("split", "test"), "str", "split"))
        except KeyError as exc:
            raise EdgeclsError(f"reference {path} lacks {exc.args[0]!r} in its description; {fix}") from exc
        except TypeError as exc:
            raise EdgeclsError(f"reference {path} garbles {exc} in its description; {fix}") from exc


# ----------------------------------------------------------------------------------------------- calibration record

@dataclass(frozen=True)
class CalibrationRecord(_MarkedRecord, format="edgecls-calibration", what="calibration record",
                        fix="delete it and calibrate afresh", elsewhere="pass a file from calibration/"):
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

    @classmethod
    def missing(cls, path: Path) -> str:
        return f"calibration record {path} does not exist; drop --calibration-cache to calibrate afresh"

    @classmethod
    def _checked(cls, values: dict[str, Any]) -> dict[str, Any]:
        for position, index in enumerate(values["indices"]):
            _typed(index, "int", f"indices[{position}]")
        return values


# ----------------------------------------------------------------------------------------------- export set

@dataclass(frozen=True)
class ExportSet(_Record, what="export record", fix="run `edgecls export` again"):
    """`<model>.export.json`, beside the files one export installed: their names and sha256, and whether installing
    them finished. Export renames the record in as incomplete, then each file, then the complete record; every
    reader of an export file calls `check_member` first, so a crash while installing leaves files that readers
    refuse with one line, never a mix of two exports taken for one. `companions` names the files the same export
    installed in other folders (the calibration record, the int8 report) with their sha256: a reader takes such a
    file as this export's only when it is listed there with those bytes (`companion_matches`)."""

    model: str
    checkpoint_sha256: str
    files: dict  # file name (in the record's folder) -> sha256
    complete: bool
    created_at: str = ""
    companions: dict = field(default_factory=dict)  # file name (in its own folder) -> sha256

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

    @classmethod
    def _checked(cls, values: dict[str, Any]) -> dict[str, Any]:
        for key in ("files", "companions"):
            for name, digest in values.get(key, {}).items():
                _typed(digest, "str", f"{key}[{name}]")
        return values

    @classmethod
    def read(cls, path: str | os.PathLike) -> "ExportSet":
        path = Path(path)
        record = _json_object(path, cls.WHAT, cls.FIX, missing=f"export record {path} does not exist; {cls.FIX}")
        _check_version(record, f"export record {path}", cls.FIX)
        return cls.from_dict(record, str(path))

    def companion_matches(self, path: str | os.PathLike) -> bool:
        """Whether `path` is a companion of this export, with the bytes the export installed."""
        path = Path(path)
        expected = self.companions.get(path.name)
        return expected is not None and path.is_file() and sha256_file(path) == expected

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
            writer = live_writer(path.parent, "export")
            if writer is not None:
                raise EdgeclsError(f"{path}: an export of {model} into {path.parent} is in progress (process {writer} "
                                   "is installing its files); wait for it to finish, then run this again")
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
class Int8Report(_MarkedRecord, format="edgecls-int8-report", what="int8 report",
                 fix="export the model again with `edgecls export --int8 --max-drop ...`",
                 elsewhere="pass a <model>.int8-report.json from calibration/"):
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

    @staticmethod
    def path_for(folder: str | os.PathLike, model: str) -> Path:
        return Path(folder) / f"{model}.int8-report.json"

    @classmethod
    def _checked(cls, values: dict[str, Any]) -> dict[str, Any]:
        """The contents every reader uses: the layers as `LayerDecision`s, the limits of the budget, the result's
        figures and the throughput, each of its own type."""
        values["layers"] = [LayerDecision(**_typed_fields(LayerDecision, layer, f"layers[{index}]."))
                            for index, layer in enumerate(values["layers"])]
        for layer_index, layer in enumerate(values["layers"]):
            for key in ("agreement", "accuracy_delta"):
                _typed(layer.alone.get(key), "Optional[float]", f"layers[{layer_index}].alone.{key}")
        for key in ("max_drop", "min_agreement"):
            _typed(values["budget"].get(key), "Optional[float]", f"budget.{key}")
        for split in ("validation", "test"):
            if values["result"].get(split) is not None:
                _numbers(values["result"][split], PARITY_NUMBERS, f"result.{split}")
        for position, candidate in enumerate(values["candidates"]):
            _typed(candidate, "dict", f"candidates[{position}]")
        if values.get("throughput") is not None:
            speed = values["throughput"]
            _numbers(speed, ("batch_size", "vs_fp32", "vs_all_int8"), "throughput")
            _numbers(speed.get("images_per_s"), ("fp32", "all_int8", "result"), "throughput.images_per_s")
        return values


# ----------------------------------------------------------------------------------------------- bench result

TIMING_TEXT = ("variant", "scope")
TIMING_NUMBERS = ("batch_size", "p50_ms", "p90_ms", "p99_ms", "images_per_s")
LOAD_NUMBERS = ("concurrency", "request_batch", "timed_requests", "failed", "images_per_s")


@dataclass(frozen=True)
class BenchResult(_Record, what="bench file", fix="write it again with `edgecls bench --json`"):
    """One model file's bench result: what `edgecls bench --json` writes for one file, and each row's `details` in
    the file `bench --all --json` writes. `edgecls.bench` makes it; the report reads it back (`read_all`)."""

    model: dict  # path, format, name, precision, size_mb, checkpoint_sha256, and the backend's own facts
    accuracy: float
    timings: list  # one row per variant, scope and batch size: variant, scope, batch_size, p50/p90/p99_ms, images_per_s
    data: dict = field(default_factory=dict)  # source, fingerprint, test_images
    per_class: dict = field(default_factory=dict)  # class name -> accuracy (null: no test image of it)
    parity: Optional[dict] = None  # `edgecls.metrics.Parity` as a dict; null without a reference
    variants: list = field(default_factory=list)  # each timed variant's own accuracy and parity
    settings: dict = field(default_factory=dict)  # the timing settings
    notes: list = field(default_factory=list)
    gates: dict = field(default_factory=dict)  # the gate's verdict (`edgecls.metrics.GateResult.to_dict`)
    environment: dict = field(default_factory=dict)  # cpu, gpu, platform, versions, threads, measured_at
    # A served model (`edgecls bench --server`): the server, one load row per concurrency, and whether the run ended
    # (a server that stopped answering leaves `complete` false and `error` saying where).
    server: Optional[dict] = None  # url, protocol, model, metrics, instances, dynamic_batching
    load: list = field(default_factory=list)  # concurrency, request_batch, timed_requests, failed, lost, p50/p90/p99_ms,
    #                                           images_per_s, batching ({batches, mean_batch} or null)
    complete: bool = True
    error: Optional[str] = None

    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)  # the bench file's own layout: no version field (files written before it had none)
        if self.server is None:  # a file's bench: the served fields stay out of its file, as before they existed
            for key in ("server", "load", "complete", "error"):
                del record[key]
        return record

    @classmethod
    def _checked(cls, values: dict[str, Any]) -> dict[str, Any]:
        model = values["model"]
        for key in ("path", "name", "precision"):
            if key not in model:
                raise KeyError(f"model.{key}")
            _typed(model[key], "str", f"model.{key}")
        _typed(model.get("checkpoint_sha256"), "Optional[str]", "model.checkpoint_sha256")
        for index, row in enumerate(values["timings"]):
            for key in TIMING_TEXT:
                _typed(row.get(key) if isinstance(row, dict) else row, "str", f"timings[{index}].{key}")
            _numbers(row, TIMING_NUMBERS, f"timings[{index}]")
        for name, value in values.get("per_class", {}).items():
            _typed(value, "Optional[float]", f"per_class[{name}]")
        if values.get("parity") is not None:
            _numbers(values["parity"], PARITY_NUMBERS, "parity")
        environment = values.get("environment", {})
        for key in ("versions", "threads"):
            _typed(environment.get(key, {}), "dict", f"environment.{key}")
        for key in ("cpu", "gpu", "platform", "measured_at"):
            _typed(environment.get(key), "Optional[str]", f"environment.{key}")
        if values.get("server") is not None:
            for key in ("url", "protocol", "model"):
                _typed(values["server"].get(key), "str", f"server.{key}")
        for index, row in enumerate(values.get("load", [])):
            _numbers(row, LOAD_NUMBERS, f"load[{index}]")
            for key in ("p50_ms", "p90_ms", "p99_ms"):  # null when no request of that level was answered
                _typed(row.get(key), "Optional[float]", f"load[{index}].{key}")
            if row.get("batching") is not None:
                _numbers(row["batching"], ("batches", "mean_batch"), f"load[{index}].batching")
        return values

    @property
    def path(self) -> Path:
        """The benched file, as named where it was benched."""
        return Path(self.model["path"])

    @property
    def measured_at(self) -> str:
        return str(self.environment.get("measured_at") or "")

    @property
    def machine(self) -> str:
        """Where it was measured: the GPU (and CPU) in words."""
        env = self.environment
        cores = env.get("threads", {}).get("cpu_count")
        cpu = f"{env.get('cpu') or '?'}" + (f", {cores} cores" if cores else "")
        return f"{env['gpu']} ({cpu})" if env.get("gpu") else cpu

    @classmethod
    def read_all(cls, path: str | os.PathLike) -> list["BenchResult"]:
        """The results in a bench file: the file itself (`bench --json`), or the `details` of each row of
        `bench --all --json`. An empty list when the file is some other JSON object; one line naming the file and
        the field when it is a bench file with a field missing or of the wrong type."""
        path = Path(path)
        try:
            record = json.loads(read_bounded(path, "bench file").decode())  # a device is refused, not read
        except FileNotFoundError as exc:
            raise EdgeclsError(f"bench file {path} does not exist; write one with `edgecls bench ... --json {path}`") \
                from exc
        except (OSError, ValueError) as exc:  # ValueError: not UTF-8, or not JSON
            raise EdgeclsError(f"bench file {path} is unreadable or not JSON ({first_line(exc)}); {cls.FIX}") from exc
        if not isinstance(record, dict):
            return []
        if isinstance(record.get("rows"), list):
            found = [row["details"] for row in record["rows"] if isinstance(row, dict) and row.get("details")]
        elif "timings" in record:
            found = [record]
        else:
            return []
        return [cls.from_dict(result, str(path)) for result in found]


# ----------------------------------------------------------------------------------------------- where they live

@dataclass(frozen=True)
class Folders:
    """The folders a project keeps its files in (the commands' --export-dir, --engines-dir and --calibration-dir)."""

    export: Path = Path(EXPORT_DIR)
    engines: Path = Path(ENGINES_DIR)
    calibration: Path = Path(CALIBRATION_DIR)

    def __post_init__(self) -> None:
        for name in ("export", "engines", "calibration"):
            object.__setattr__(self, name, Path(getattr(self, name)))

    def of(self, model: str) -> "ModelFiles":
        return ModelFiles(model, self)


@dataclass(frozen=True)
class ModelFiles:
    """Where every file of one model lives: the one place that names them (export, bench --all, the report and the
    reference search ask it)."""

    model: str
    folders: Folders = Folders()

    def onnx(self, precision: str) -> Path:
        return self.folders.export / ExportSet.member_name(self.model, precision)

    @property
    def reference(self) -> Path:
        return self.folders.export / ExportSet.member_name(self.model, "reference")

    @property
    def export_record(self) -> Path:
        return ExportSet.path_for(self.folders.export, self.model)

    @property
    def int8_report(self) -> Path:
        return Int8Report.path_for(self.folders.calibration, self.model)

    def calibration_record(self, method: str) -> Path:
        return self.folders.calibration / f"{self.model}.{method}.json"

    def plans(self) -> list[Path]:
        """The model's TensorRT plans in the engines folder, or the name the first one would have."""
        engines = self.folders.engines
        return sorted(engines.glob(f"{self.model}*.plan")) or [engines / f"{self.model}.plan"]

    def artifacts(self) -> list[Path]:
        """Every ONNX file and plan of the model that may exist, in pipeline order (missing ones too)."""
        return [self.onnx(precision) for precision in PRECISIONS] + self.plans()

    @staticmethod
    def training_log(checkpoint: str | os.PathLike, model: str) -> Path:
        """The per-epoch log `edgecls train` writes beside a checkpoint."""
        return Path(checkpoint).parent / f"{model}.log.jsonl"


# ----------------------------------------------------------------------------------------------- Triton repository

@dataclass(frozen=True)
class TritonRepository(_MarkedRecord, format="edgecls-triton-repository", what="Triton repository record",
                       fix="remove its folder and run `edgecls deploy triton` again",
                       elsewhere="its folder was not written by `edgecls deploy triton`; choose another output folder"):
    """`edgecls-repository.json` at the root of a Triton model repository written by `edgecls deploy triton`: which
    models it holds and the files they were made from. Deploy replaces a folder only when it holds this record, so it
    never overwrites a folder it did not write. Triton itself reads only the model folders beside it."""

    models: dict  # Triton model name -> {"kind": platform or backend, "source": the file it came from or null}
    sources: dict  # each source file as given -> its sha256
    created_at: str = ""
    versions: dict = field(default_factory=dict)

    FILE_NAME: ClassVar[str] = "edgecls-repository.json"

    @classmethod
    def missing(cls, path: Path) -> str:
        return f"{path.parent} is not an edgecls model repository (no {path.name}); {cls.FIX}"
