"""A model repository for a standalone Triton Inference Server (`edgecls deploy triton`): Triton's own release on a
Jetson, NVIDIA's container on a GPU server.

Each exported file becomes one Triton model, `<repo>/<name>/config.pbtxt` and `<repo>/<name>/1/model.onnx|.plan`:
an ONNX file on the `onnxruntime_onnx` platform (CPU or GPU instances; or, `onnx_backend="python"`, edgecls's own
runtime in Triton's Python backend), a TensorRT plan on `tensorrt_plan` (GPU instances). Names, shapes, types, class
names and preprocessing are read from the files (the ONNX graph and its edgecls metadata, the engine manifest), never
restated. With `ensemble=True`, Python-backend models decode and preprocess encoded images with edgecls's one decoder
and preprocessing and turn logits into probabilities and top-k class names, and an ensemble per model chains them, so
clients send image bytes.

A plan runs only with the TensorRT build and GPU model that made it: deploy refuses one whose manifest does not match
the target the user names. The repository is written into a staging folder and renamed into place; a folder that is
not an edgecls repository is never overwritten.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from edgecls.artifacts import (check_output_folder, library_versions, sha256_file, staging_dir,
                               storage_error, temporary_prefix, utc_now)
from edgecls.defaults import TRITON_ONNX_MAX_BATCH, TRITON_QUEUE_DELAY_US, TRITON_TOP_K
from edgecls.errors import EdgeclsError
from edgecls.serving.batching import check_batching
from edgecls.formats import METADATA_KEY, EngineManifest, ExportSet, ModelMetadata, TritonRepository

VERSION = "1"  # the one version folder written per model
LABELS_FILE = "labels.txt"  # the class names, one per line, beside config.pbtxt (Triton's label_filename)
PYTHON_MODEL = Path(__file__).with_name("triton_python_model.py")  # becomes model.py of every Python-backend model
PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding the edgecls package
IMAGE_INPUT, PROBABILITIES, TOP_K = "image", "probabilities", "classes"  # names triton_python_model.py uses


# ONNX tensor element types (TensorProto.DataType names) -> Triton's
_TRITON_TYPES = {"FLOAT": "TYPE_FP32", "FLOAT16": "TYPE_FP16", "DOUBLE": "TYPE_FP64", "BFLOAT16": "TYPE_BF16",
                 "UINT8": "TYPE_UINT8", "INT8": "TYPE_INT8", "INT16": "TYPE_INT16", "INT32": "TYPE_INT32",
                 "INT64": "TYPE_INT64", "BOOL": "TYPE_BOOL"}


@dataclass(frozen=True)
class PlanTarget:
    """The TensorRT build and GPU the user's Triton runs on, which a plan's manifest must name."""

    tensorrt: Optional[str] = None  # e.g. "10.3" or "10.3.0.30": every component given must match the manifest's
    gpu: Optional[str] = None  # e.g. "Orin": the manifest's gpu_name, case aside
    compute: Optional[str] = None  # e.g. "8.7"; optional

    def check(self, plan: Path, manifest: EngineManifest) -> None:
        """Refuse, in one line naming what differs, a plan built for another TensorRT build or GPU."""
        built = (f"{plan} was built with TensorRT {manifest.tensorrt_version} for {manifest.gpu_name} "
                 f"(compute {manifest.compute_capability})")
        if self.tensorrt is None or self.gpu is None:
            raise EdgeclsError(f"{built} and runs only there: name the Triton it is for with --target-trt VERSION "
                               "--target-gpu NAME (its TensorRT version and GPU)")
        differs = []
        given = self.tensorrt.strip().split(".")
        if manifest.tensorrt_version.strip().split(".")[: len(given)] != given:
            differs.append("the TensorRT version")
        if manifest.gpu_name.strip().lower() != self.gpu.strip().lower():
            differs.append("the GPU")
        if self.compute is not None and manifest.compute_capability.strip() != self.compute.strip():
            differs.append("the compute capability")
        if differs:
            compute = f", compute {self.compute}" if self.compute is not None else ""
            raise EdgeclsError(f"{built}, not for the target (TensorRT {self.tensorrt} on {self.gpu}{compute}): "
                               f"{' and '.join(differs)} differ{'s' if len(differs) == 1 else ''}; rebuild it with "
                               "`edgecls build` on the target device, or name the target it was built for")


@dataclass(frozen=True)
class Tensor:
    name: str
    data_type: str  # Triton's TYPE_*
    dims: tuple  # without the batch dimension


@dataclass(frozen=True)
class Source:
    """One exported file, as read before anything is written."""

    path: Path
    kind: str  # "onnx" | "plan"
    metadata: ModelMetadata
    input: Tensor
    output: Tensor
    max_batch: int

    @property
    def model_name(self) -> str:
        return f"{self.metadata.model}_{self.metadata.precision}_{'trt' if self.kind == 'plan' else 'onnx'}"


@dataclass(frozen=True)
class Options:
    """How Triton should run the models (the CLI's options)."""

    max_batch: Optional[int] = None  # None: the plan's profile maximum, TRITON_ONNX_MAX_BATCH for ONNX
    preferred_batch: tuple = ()
    queue_delay_us: int = TRITON_QUEUE_DELAY_US
    instances: int = 1
    onnx_device: str = "cpu"  # cpu | gpu
    onnx_backend: str = "onnxruntime"  # onnxruntime (Triton's backend) | python (edgecls's runtime in Triton)
    ensemble: bool = False
    top_k: int = TRITON_TOP_K
    target: PlanTarget = field(default_factory=PlanTarget)


@dataclass(frozen=True)
class Written:
    """What `write_repository` wrote: the folder and its models, by name, with their kind."""

    folder: Path
    models: dict


# ----------------------------------------------------------------------------------------------- reading the files

def read_source(path: str | os.PathLike, options: Options) -> Source:
    """An exported ONNX file or a TensorRT plan with its manifest, checked (a plan against the target) and described
    as Triton will see it."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return _read_onnx(path, options)
    if suffix in (".plan", ".engine"):
        return _read_plan(path, options)
    raise EdgeclsError(f"{path}: Triton models are made from exported .onnx files or TensorRT .plan files (with their "
                       "manifest), not from this file; give one of those")


def _read_onnx(path: Path, options: Options) -> Source:
    import onnx

    from edgecls.onnx_graph import load_onnx

    model = load_onnx(path)
    metadata = ModelMetadata.from_onnx(model, str(path))
    ExportSet.check_member(path, metadata.model)

    def tensor(values: Sequence[Any], name: str) -> Tensor:
        value = next(v for v in values if v.name == name)
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim]
        if not dims or dims[0] != -1:
            raise EdgeclsError(f"{path}: tensor '{name}' has no variable batch dimension (shape {dims}), which Triton "
                               "needs to batch requests; export it again with `edgecls export`")
        element = onnx.TensorProto.DataType.Name(value.type.tensor_type.elem_type)
        if element not in _TRITON_TYPES:
            raise EdgeclsError(f"{path}: tensor '{name}' holds {element}, which Triton's onnxruntime backend does not "
                               "take; export it again with `edgecls export`")
        return Tensor(name, _TRITON_TYPES[element], tuple(dims[1:]))

    max_batch = options.max_batch or TRITON_ONNX_MAX_BATCH
    return Source(path, "onnx", metadata, tensor(model.graph.input, metadata.input_name),
                  tensor(model.graph.output, metadata.output_name), max_batch)


def _read_plan(path: Path, options: Options) -> Source:
    manifest = EngineManifest.read(path)
    options.target.check(path, manifest)
    low, high = manifest.batch["min"], manifest.batch["max"]
    if low != 1:
        fix = ("a DLA plan takes one batch size: deploy a GPU plan or the ONNX file" if manifest.dla_core is not None
               else f"rebuild it with `edgecls build --batch 1:OPT:{high}`")
        raise EdgeclsError(f"{path} accepts batches of {low} to {high} images, but Triton sends any batch from 1 up; "
                           f"{fix}")
    if options.max_batch is not None and options.max_batch > high:
        raise EdgeclsError(f"--max-batch {options.max_batch} is above the {high} images {path} accepts (its batch "
                           f"profile); give at most {high}, or rebuild the engine with a larger profile")
    metadata = manifest.model
    crop = metadata.preprocess.crop_size
    # The engine's inputs and outputs are those of the ONNX file it was built from, which edgecls exports with float32
    # input and logits at every precision: the manifest's metadata gives their names and sizes.
    return Source(path, "plan", metadata, Tensor(metadata.input_name, "TYPE_FP32", (3, crop, crop)),
                  Tensor(metadata.output_name, "TYPE_FP32", (len(metadata.preprocess.class_names),)),
                  options.max_batch or high)


# ----------------------------------------------------------------------------------------------- config.pbtxt

class _Enum(str):
    """A protobuf enum value: written bare (KIND_GPU), not quoted."""


def _quoted(text: str) -> str:
    """A protobuf text-format string: printable ASCII as is, everything else as octal escapes of its UTF-8 bytes,
    which every protobuf version reads."""
    out = []
    for byte in text.encode("utf-8"):
        char = chr(byte)
        out.append("\\" + char if char in '"\\' else char if 32 <= byte < 127 else f"\\{byte:03o}")
    return '"' + "".join(out) + '"'


def _scalar(value: Any) -> str:
    if isinstance(value, _Enum):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return _quoted(str(value))


def to_pbtxt(message: Mapping[str, Any], depth: int = 0) -> str:
    """A model configuration (nested dicts; a list of dicts is a repeated message, a list of scalars a repeated
    scalar, a map a list of {"key", "value"} dicts) in protobuf text format."""
    pad, lines = "  " * depth, []
    for key, value in message.items():
        if isinstance(value, Mapping):
            value = [value]
        if isinstance(value, list) and value and isinstance(value[0], Mapping):
            for item in value:
                lines += [f"{pad}{key} {{", to_pbtxt(item, depth + 1).rstrip("\n"), f"{pad}}}"]
        elif isinstance(value, (list, tuple)):
            lines.append(f"{pad}{key}: [{', '.join(_scalar(v) for v in value)}]")
        else:
            lines.append(f"{pad}{key}: {_scalar(value)}")
    return "\n".join(line for line in lines if line) + "\n"


def _io(tensor: Tensor, labels: bool = False) -> dict:
    entry: dict[str, Any] = {"name": tensor.name, "data_type": _Enum(tensor.data_type), "dims": list(tensor.dims)}
    if labels:
        entry["label_filename"] = LABELS_FILE
    return entry


def _batching(options: Options, max_batch: int) -> dict:
    batching: dict[str, Any] = {"max_queue_delay_microseconds": options.queue_delay_us}
    if options.preferred_batch:
        batching = {"preferred_batch_size": list(options.preferred_batch), **batching}
    return batching


def _parameters(metadata: ModelMetadata, **values: str) -> list:
    """Every model carries the export's own metadata record (under "edgecls", as `edgecls serve`'s models do), so
    that a client, `edgecls bench --server` or the Python models read names, class names and preprocessing from it."""
    entries = {METADATA_KEY: json.dumps(metadata.to_dict(), separators=(",", ":")), **values}
    return [{"key": key, "value": {"string_value": value}} for key, value in entries.items()]


def inference_config(source: Source, options: Options) -> dict:
    """The config of the model that runs `source` itself."""
    config: dict[str, Any] = {"name": source.model_name}
    python = source.kind == "onnx" and options.onnx_backend == "python"
    if source.kind == "plan":
        config["platform"] = "tensorrt_plan"
        kind = "KIND_GPU"  # a plan runs on the GPU it was built for
    else:
        config["backend" if python else "platform"] = "python" if python else "onnxruntime_onnx"
        kind = "KIND_GPU" if options.onnx_device == "gpu" else "KIND_CPU"
    config.update({"max_batch_size": source.max_batch, "input": [_io(source.input)],
                   "output": [_io(source.output, labels=True)],
                   "dynamic_batching": _batching(options, source.max_batch),
                   "instance_group": [{"count": options.instances, "kind": _Enum(kind)}],
                   "parameters": _parameters(source.metadata, **({"edgecls_role": "onnxruntime"} if python else {}))})
    return config


def preprocess_config(name: str, source: Source, max_batch: int, options: Options) -> dict:
    """Encoded images (one per batch row) -> the network input, in Triton's Python backend."""
    return {"name": name, "backend": "python", "max_batch_size": max_batch,
            "input": [{"name": IMAGE_INPUT, "data_type": _Enum("TYPE_STRING"), "dims": [1]}],
            "output": [_io(source.input)], "dynamic_batching": _batching(options, max_batch),
            "instance_group": [{"count": options.instances, "kind": _Enum("KIND_CPU")}],
            "parameters": _parameters(source.metadata, edgecls_role="preprocess")}


def _postprocessed(source: Source, options: Options) -> list[dict]:
    """What the postprocessing model and the ensemble return: the logits, their softmax and the top-k class names."""
    top_k = min(options.top_k, len(source.metadata.preprocess.class_names))
    return [_io(source.output, labels=True),
            {"name": PROBABILITIES, "data_type": _Enum("TYPE_FP32"), "dims": list(source.output.dims),
             "label_filename": LABELS_FILE},
            {"name": TOP_K, "data_type": _Enum("TYPE_STRING"), "dims": [top_k]}]


def postprocess_config(name: str, source: Source, max_batch: int, options: Options) -> dict:
    """Logits -> the logits again, probabilities and the top-k class names, in Triton's Python backend. It hands the
    logits on so that every output of the ensemble comes from this one last step: Triton prunes the steps whose
    outputs a request does not ask for, and an ensemble output that also fed a later step was pruned with that step
    (a request for the logits alone then never finished: "unexpected deadlock", Triton 2.51)."""
    outputs = _postprocessed(source, options)
    return {"name": name, "backend": "python", "max_batch_size": max_batch, "input": [_io(source.output)],
            "output": outputs, "dynamic_batching": _batching(options, max_batch),
            "instance_group": [{"count": options.instances, "kind": _Enum("KIND_CPU")}],
            "parameters": _parameters(source.metadata, edgecls_role="postprocess",
                                      edgecls_top_k=str(outputs[-1]["dims"][0]))}


def ensemble_config(source: Source, preprocess: str, postprocess: str, options: Options) -> dict:
    """Encoded images in; logits, probabilities and the top-k class names out: preprocess -> model -> postprocess."""
    outputs = _postprocessed(source, options)

    def step(model: str, inputs: Mapping[str, str], outputs: Mapping[str, str]) -> dict:
        return {"model_name": model, "model_version": -1,
                "input_map": [{"key": k, "value": v} for k, v in inputs.items()],
                "output_map": [{"key": k, "value": v} for k, v in outputs.items()]}

    # the tensors between the steps, named apart from the ensemble's own outputs
    images, logits = f"{source.input.name}_preprocessed", f"{source.output.name}_of_model"
    return {"name": f"{source.model_name}_ensemble", "platform": "ensemble", "max_batch_size": source.max_batch,
            "input": [{"name": IMAGE_INPUT, "data_type": _Enum("TYPE_STRING"), "dims": [1]}],
            "output": outputs,
            "ensemble_scheduling": {"step": [
                step(preprocess, {IMAGE_INPUT: IMAGE_INPUT}, {source.input.name: images}),
                step(source.model_name, {source.input.name: images}, {source.output.name: logits}),
                step(postprocess, {source.output.name: logits}, {o["name"]: o["name"] for o in outputs})]},
            "parameters": _parameters(source.metadata)}


# ----------------------------------------------------------------------------------------------- the Python models

def python_model_files() -> list[Path]:
    """The files a Python-backend model needs, relative to PACKAGE_ROOT: the edgecls modules its model.py imports,
    with those they import when loaded (module-level imports, followed; lazy imports inside functions it never calls
    are not), and the package __init__ files on the way. All torch-free and onnx-free (the runtime's rule)."""
    wanted: dict[str, Path] = {}
    queue = _edgecls_imports(PYTHON_MODEL, module_level_only=False)
    while queue:
        module = queue.pop()
        if module in wanted:
            continue
        spec = importlib.util.find_spec(module)
        if spec is None or spec.origin is None:
            raise EdgeclsError(f"edgecls module {module} is missing from this install; reinstall edgecls")
        wanted[module] = Path(spec.origin).resolve()
        parts = module.split(".")
        queue.extend(".".join(parts[:i]) for i in range(1, len(parts)))  # the packages on the way
        queue.extend(_edgecls_imports(wanted[module], module_level_only=True))
    return sorted(path.relative_to(PACKAGE_ROOT) for path in wanted.values())


def _edgecls_imports(path: Path, module_level_only: bool) -> list[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    found = []
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
            found += [f"{node.module}.{a.name}" for a in node.names if _is_module(f"{node.module}.{a.name}")]
    return [name for name in found if name == "edgecls" or name.startswith("edgecls.")]


def _is_module(name: str) -> bool:
    """Whether `name` is an edgecls module (`from edgecls.runtime import images` imports one)."""
    try:
        return name.startswith("edgecls.") and importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def _write_python_model(folder: Path, config: dict) -> None:
    version = folder / VERSION
    version.mkdir(parents=True)
    shutil.copyfile(PYTHON_MODEL, version / "model.py")
    for relative in python_model_files():
        (version / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(PACKAGE_ROOT / relative, version / relative)
    (folder / "config.pbtxt").write_text(to_pbtxt(config))


# ----------------------------------------------------------------------------------------------- the repository

def check_options(options: Options) -> None:
    check_batching(instances=options.instances, max_batch=options.max_batch, preferred=options.preferred_batch,
                   queue_delay_us=options.queue_delay_us, top_k=options.top_k)
    if options.onnx_device not in ("cpu", "gpu") or options.onnx_backend not in ("onnxruntime", "python"):
        raise EdgeclsError(f"unknown ONNX device {options.onnx_device!r} or backend {options.onnx_backend!r}")


def check_output(folder: Path) -> None:
    """Refuse, before any work, an output that is a file or a folder with contents deploy did not write."""
    try:
        if folder.is_symlink():
            raise EdgeclsError(f"{folder} is a symbolic link; give the folder it points to, or another folder")
        check_output_folder(folder)
        if folder.is_dir() and any(folder.iterdir()):
            record = folder / TritonRepository.FILE_NAME
            if not record.is_file():
                raise EdgeclsError(f"{folder} is not empty and is not an edgecls model repository (no "
                                   f"{TritonRepository.FILE_NAME}), so deploy will not overwrite it; choose another "
                                   "output folder or empty it")
            TritonRepository.read(record)
    except OSError as exc:
        raise EdgeclsError(f"cannot read output folder {folder} ({exc.strerror}); check its permissions") from exc
    check_output_folder(folder.parent)  # the repository is renamed into it


def write_repository(paths: Sequence[str | os.PathLike], output: str | os.PathLike,
                     options: Options = Options()) -> Written:
    """Write a Triton model repository for the exported files `paths` into `output` (see the module's doc)."""
    output = Path(os.path.abspath(output))  # "." and "a/.." name their folder too
    check_options(options)
    check_output(output)
    if not paths:
        raise EdgeclsError("no exported model given; pass .onnx files (from `edgecls export`) or .plan files")
    sources = [read_source(path, options) for path in paths]
    _check_sources(sources, options)
    preprocessing = _preprocessing_by_model(sources) if options.ensemble else {}

    models: dict[str, dict] = {}
    with staging_dir(output.parent, output.name) as staging:
        try:
            for source in sources:
                models[source.model_name] = _write_inference_model(staging, source, options)
            for model, group in preprocessing.items():
                models.update(_write_ensembles(staging, model, group, options))
            TritonRepository(models=models, sources={str(s.path): sha256_file(s.path) for s in sources},
                             created_at=utc_now(), versions=library_versions("onnx")) \
                .write(staging / TritonRepository.FILE_NAME)
            _sync(staging)
        except OSError as exc:
            raise storage_error(exc, output.parent, f"the model repository {output}") from exc
        _install(staging, output)
    return Written(output, models)


def _check_sources(sources: Sequence[Source], options: Options) -> None:
    names = [source.model_name for source in sources]
    for name in sorted(set(names)):
        if names.count(name) > 1:
            given = ", ".join(str(s.path) for s in sources if s.model_name == name)
            raise EdgeclsError(f"{given} would all be Triton model {name}; give one file of each model and precision")
    for source in sources:
        if any("\n" in name or "\r" in name for name in source.metadata.preprocess.class_names):
            raise EdgeclsError(f"{source.path}: a class name holds a line break, which Triton's label file cannot "
                               "hold; export the model with single-line class names")
        over = [size for size in options.preferred_batch if size > source.max_batch]
        if over:
            raise EdgeclsError(f"--preferred-batch-sizes {over[0]} is above the largest batch of {source.path} "
                               f"({source.max_batch}); give sizes up to {source.max_batch}")


def _write_ensembles(staging: Path, model: str, group: Sequence[Source], options: Options) -> dict[str, dict]:
    """The preprocessing and postprocessing models of one exported model, and an ensemble for each of its files."""
    first, max_batch = group[0], max(s.max_batch for s in group)
    pre, post = f"{model}_preprocess", f"{model}_postprocess"
    _write_python_model(staging / pre, preprocess_config(pre, first, max_batch, options))
    _write_python_model(staging / post, postprocess_config(post, first, max_batch, options))
    (staging / post / LABELS_FILE).write_text(_labels(first))
    written = {pre: {"kind": "python", "source": None}, post: {"kind": "python", "source": None}}
    for source in group:
        config = ensemble_config(source, pre, post, options)
        (staging / config["name"] / VERSION).mkdir(parents=True)  # Triton wants a version folder, even empty
        (staging / config["name"] / "config.pbtxt").write_text(to_pbtxt(config))
        (staging / config["name"] / LABELS_FILE).write_text(_labels(source))
        written[config["name"]] = {"kind": "ensemble", "source": None}
    return written


def _sync(folder: Path) -> None:
    """Flush every file and folder of the staged repository to disk before it is renamed into place, so that a crash
    after the rename cannot leave empty files behind it."""
    for path in [*sorted(folder.rglob("*"), reverse=True), folder]:  # files before the folders holding them
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def _preprocessing_by_model(sources: Sequence[Source]) -> dict[str, list[Source]]:
    """The sources grouped by exported model name, which share one preprocessing and one postprocessing model: they
    must then share one preprocessing record."""
    groups: dict[str, list[Source]] = {}
    for source in sources:
        group = groups.setdefault(source.metadata.model, [])
        if group and group[0].metadata.preprocess != source.metadata.preprocess:
            raise EdgeclsError(f"{group[0].path} and {source.path} are both model {source.metadata.model} but "
                               "preprocess differently (two checkpoints); deploy them into two repositories")
        group.append(source)
    return groups


def _labels(source: Source) -> str:
    return "".join(name + "\n" for name in source.metadata.preprocess.class_names)


def _write_inference_model(staging: Path, source: Source, options: Options) -> dict:
    folder = staging / source.model_name
    config = inference_config(source, options)
    if config.get("backend") == "python":
        _write_python_model(folder, config)
    else:
        (folder / VERSION).mkdir(parents=True)
        (folder / "config.pbtxt").write_text(to_pbtxt(config))
    shutil.copyfile(source.path, folder / VERSION / ("model.plan" if source.kind == "plan" else "model.onnx"))
    (folder / LABELS_FILE).write_text(_labels(source))
    return {"kind": config.get("platform") or config["backend"], "source": str(source.path)}


def _install(staging: Path, output: Path) -> None:
    """Rename the finished repository into place: an absent or empty folder is replaced at once; an earlier edgecls
    repository is first moved aside (and put back if the rename fails), then removed."""
    aside = None
    if output.is_dir() and any(output.iterdir()):
        # a name the next run's sweep removes, should this process be killed before the end
        aside = Path(tempfile.mkdtemp(prefix=temporary_prefix(output.name), suffix=".tmp", dir=output.parent))
        os.replace(output, aside)
    try:
        os.replace(staging, output)
    except OSError as exc:
        if aside is not None:
            os.replace(aside, output)
        raise storage_error(exc, output.parent, f"the model repository {output}") from exc
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


__all__ = ["Options", "PlanTarget", "Written", "read_source", "to_pbtxt", "write_repository"]
