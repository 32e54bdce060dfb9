"""TensorRT engines from the exported ONNX files, on the device that will run them (DESIGN.md §4).

One code path for TensorRT 8.5 (JetPack 5), 10.x and 11.x. The precision comes from the ONNX file
(fp32 / fp16 / int8 Q/DQ); what differs between versions is how the network is declared:

- 8.5: weakly typed. EXPLICIT_BATCH is required, and the FP16 / INT8 builder flags must be set from the
  ONNX's precision (even for a Q/DQ model) or TensorRT would not use those precisions.
- 9.x / 10.x: STRONGLY_TYPED network: the types in the ONNX file are the types that run.
- 11.x: strongly typed always; the precision flags and EXPLICIT_BATCH are gone.

Enum members are looked up by name (their values changed between versions) and only when they exist.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgecls.artifacts import atomic_write, ensure_writable_dir, sha256_file, utc_now
from edgecls.defaults import DEFAULT_BATCH_PROFILE, DEFAULT_WORKSPACE_MIB, ENGINES_DIR, PRECISIONS
from edgecls.errors import EdgeclsError, first_line
from edgecls.formats import EngineManifest, ModelMetadata

if TYPE_CHECKING:  # the API contract (tests/test_api_contract.py) type-checks every TensorRT call against each version
    import tensorrt as trt

INSTALL_HINT = ("TensorRT is not installed here: run `edgecls build` on the device that will run the engine, with "
                "TensorRT's Python bindings installed (JetPack's python3-libnvinfer, or `pip install tensorrt` on a desktop)")


@dataclass(frozen=True)
class BuildOptions:
    """Names of the NetworkDefinitionCreationFlag and BuilderFlag members to set."""

    network_flags: tuple[str, ...]
    builder_flags: tuple[str, ...]


def build_options(tensorrt_version: str, precision: str) -> BuildOptions:
    """How to declare the network for a TensorRT version and an ONNX precision (see the module docstring)."""
    try:
        major = int(tensorrt_version.split(".")[0])
    except ValueError as exc:
        raise EdgeclsError(f"cannot read the TensorRT version {tensorrt_version!r}") from exc
    if precision not in PRECISIONS:
        raise EdgeclsError(f"unknown ONNX precision {precision!r}; re-export the file with `edgecls export`")
    if major < 8:
        raise EdgeclsError(f"TensorRT {tensorrt_version} is too old: edgecls needs 8.5 or newer (JetPack 5.1+)")
    if major == 8:
        return BuildOptions(("EXPLICIT_BATCH",), {"fp32": (), "fp16": ("FP16",), "int8": ("INT8",)}[precision])
    if major <= 10:
        return BuildOptions(("STRONGLY_TYPED",), ())
    return BuildOptions((), ())


def parse_batch(text: str) -> tuple[int, int, int]:
    """'MIN:OPT:MAX' -> (min, opt, max), with 1 <= min <= opt <= max."""
    try:
        values = tuple(int(part) for part in text.split(":"))
    except ValueError:
        values = ()
    return check_batch(values, text)


def check_batch(batch: tuple, shown: str | None = None) -> tuple[int, int, int]:
    """The batch profile, if it is three sizes with 1 <= min <= opt <= max."""
    if len(batch) != 3 or not 1 <= batch[0] <= batch[1] <= batch[2]:
        raise EdgeclsError(f"--batch {shown or ':'.join(map(str, batch))!r} is not MIN:OPT:MAX with "
                           "1 <= MIN <= OPT <= MAX, e.g. 1:64:256")
    return batch  # type: ignore[return-value]


def default_plan_path(onnx_path: str | os.PathLike) -> Path:
    """engines/<onnx name without .onnx>.plan"""
    return Path(ENGINES_DIR) / (Path(onnx_path).stem + ".plan")


def unavailable_reason() -> str | None:
    """Why an engine cannot be built here (no TensorRT, no GPU), or None when it can."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return INSTALL_HINT
    if gpu_info() is None:
        return "TensorRT is installed but no NVIDIA GPU is visible; run `edgecls build` on the device"
    return None


def gpu_info() -> dict[str, str] | None:
    """Name and compute capability of the current GPU, from cuda-python when installed, else nvidia-smi; None if
    no GPU."""
    from edgecls.runtime.cuda_memory import CudaPython

    try:
        cuda = CudaPython()
    except (ImportError, EdgeclsError):
        cuda = None
    if cuda is not None:
        try:
            name, capability = cuda.device_info()
            return {"gpu_name": name, "compute_capability": capability}
        except EdgeclsError:
            pass
        finally:
            cuda.close()
    # cuda-python absent, or failing (e.g. a driver older than its CUDA): ask nvidia-smi instead
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        output = subprocess.run(["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=30, check=True).stdout
    except (subprocess.SubprocessError, OSError):
        return None
    first = output.strip().splitlines()[0] if output.strip() else ""  # the first GPU
    if "," not in first:
        return None
    name, capability = (part.strip() for part in first.rsplit(",", 1))
    return {"gpu_name": name, "compute_capability": capability}


def build_engine(onnx_path: str | os.PathLike, plan_path: str | os.PathLike | None = None,
                 batch: tuple[int, int, int] = DEFAULT_BATCH_PROFILE,
                 workspace_mib: int = DEFAULT_WORKSPACE_MIB) -> Path:
    """Build a TensorRT plan from an exported ONNX file; write it and its manifest (`<plan>.json`) atomically.

    The default plan path is `engines/<onnx name without .onnx>.plan`.
    """
    onnx_path = Path(onnx_path)
    metadata = ModelMetadata.read(onnx_path)  # validates the file before we look for TensorRT
    if (metadata.quantization or {}).get("target") == "cpu":
        raise EdgeclsError(f"{onnx_path} is the int8 form for ONNX Runtime on CPUs (u8 activations), which TensorRT "
                           "rejects; export it with `edgecls export --int8 --target trt` to build an engine")
    plan_path = Path(plan_path) if plan_path is not None else default_plan_path(onnx_path)
    if plan_path.suffix != ".plan":
        raise EdgeclsError(f"engine path {plan_path} should end in .plan (its manifest goes beside it as .plan.json)")
    ensure_writable_dir(plan_path.parent)
    check_batch(batch)
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise EdgeclsError(INSTALL_HINT) from exc
    gpu = gpu_info()
    if gpu is None:
        raise EdgeclsError("no NVIDIA GPU is visible (checked with cuda-python and nvidia-smi); build on the device")

    options = build_options(trt.__version__, metadata.precision)
    started = time.perf_counter()
    serialized = _build(onnx_path, metadata, options, batch, workspace_mib)
    build_seconds = time.perf_counter() - started

    with atomic_write(plan_path) as handle:
        handle.write(memoryview(serialized))
    EngineManifest(tensorrt_version=trt.__version__, gpu_name=gpu["gpu_name"],
                   compute_capability=gpu["compute_capability"], onnx_path=str(onnx_path),
                   onnx_sha256=sha256_file(onnx_path), plan_sha256=sha256_file(plan_path), precision=metadata.precision,
                   batch=dict(zip(("min", "opt", "max"), batch)), model=metadata,
                   build_seconds=round(build_seconds, 2), built_at=utc_now()).write(plan_path)
    return plan_path


def _build(onnx_path: Path, metadata: ModelMetadata, options: BuildOptions,
           batch: tuple[int, int, int], workspace_mib: int) -> trt.IHostMemory:
    """Parse the ONNX file and build the serialized engine with one optimization profile for the batch."""
    import tensorrt as trt  # imported here, not passed in, so that mypy checks each call against the version's API

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    for name in options.network_flags:
        member = getattr(trt.NetworkDefinitionCreationFlag, name, None)
        if member is None:
            raise EdgeclsError(f"TensorRT {trt.__version__} lacks NetworkDefinitionCreationFlag.{name}; "
                               "this version is not supported by edgecls")
        flags |= 1 << int(member)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [parser.get_error(i) for i in range(parser.num_errors)]
        raise EdgeclsError(f"TensorRT {trt.__version__} cannot parse {onnx_path}: "
                           f"{first_line(errors[0]) if errors else 'unknown error'}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    for name in options.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    if hasattr(trt.BuilderFlag, "TF32"):
        # On by default: float32 layers would round their inputs to 10-bit mantissas, so an "fp32" engine
        # would no longer match the fp32 ONNX file. Reduced precision is what the fp16 / int8 files are for.
        config.clear_flag(trt.BuilderFlag.TF32)
    crop = metadata.preprocess.crop_size
    profile = builder.create_optimization_profile()
    profile.set_shape(metadata.input_name, *[(n, 3, crop, crop) for n in batch])
    config.add_optimization_profile(profile)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EdgeclsError(f"TensorRT {trt.__version__} failed to build an engine from {onnx_path} "
                           "(its log above says why); try a larger --workspace or a smaller --batch maximum")
    return serialized


def build_command(onnx_path: str | os.PathLike, plan_path: str | os.PathLike | None = None) -> str:
    """The `edgecls build` command line to run on the device for an exported file."""
    plan = Path(plan_path) if plan_path is not None else default_plan_path(onnx_path)
    return f"edgecls build {onnx_path} -o {plan}"
