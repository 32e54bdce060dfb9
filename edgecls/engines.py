"""TensorRT engines from the exported ONNX files, on the device that will run them (DESIGN.md §4).

One code path for TensorRT 8.5 (JetPack 5) to 11.x. The precision comes from the ONNX file (fp32 / fp16 /
int8 Q/DQ); what differs between versions is how the network is declared (tools/api/FINDINGS.md):

- 8.5: weakly typed. EXPLICIT_BATCH is required, and the FP16 / INT8 builder flags must be set from the
  ONNX's precision (even for a Q/DQ model) or TensorRT would not use those precisions.
- 9.x: STRONGLY_TYPED, and still EXPLICIT_BATCH (the 9.x ONNX parser needs it; Polygraphy sets it below 10.0).
- 10.x: STRONGLY_TYPED network: the types in the ONNX file are the types that run.
- 11.x: strongly typed always; the precision flags and EXPLICIT_BATCH are gone.

Enum members are looked up by name (their values changed between versions) and only when they exist.

A plan may target a Jetson DLA core (`dla_core`): DLA runs fp16 and int8 layers at one fixed batch size, with GPU
fallback for the rest. DLA builds are declared the way each version's trtexec declares them
(samples/common/sampleEngines.cpp, `setupNetworkAndConfig`, at v8.6.1, v9.3.0, v10.3.0, v10.13.0 and v11.1):

- 8.x to 10.x: weakly typed (no STRONGLY_TYPED), FP16 (INT8 too for an int8 file) + PREFER_PRECISION_CONSTRAINTS +
  GPU_FALLBACK. Strongly typed DLA networks exist only from 11.x, and FP16 on a strongly typed network is an error
  (NVIDIA/TensorRT issue #4228: "Parameter check failed ... condition: !config.getFlag(BuilderFlag::kFP16)").
- 11.x: strongly typed (always), no precision flags: they no longer exist ("Strongly Typed Networks for DLA",
  docs.nvidia.com/deeplearning/tensorrt/11.4.1/inference-library/dla-strongly-typed-networks.html).

After a DLA build TensorRT is asked where each layer runs (the engine inspector), and the build fails when less
than `min_dla_share` of the layers are on the DLA: with GPU fallback, a layer the DLA cannot run moves to the GPU
without a word.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Tuple

from edgecls.artifacts import atomic_write, check_output_file, sha256_file, utc_now
from edgecls.defaults import DEFAULT_BATCH_PROFILE, DEFAULT_WORKSPACE_MIB, ENGINES_DIR, PRECISIONS
from edgecls.errors import EdgeclsError, first_line
from edgecls.formats import EngineManifest, ModelMetadata
from edgecls.runtime.cuda_memory import BindingStatus, GpuInfo, probe
from edgecls.runtime.tensorrt_backend import BOARD_MODEL_FILE, board_model, tensorrt_problem

if TYPE_CHECKING:  # the API contract (tests/test_api_contract.py) type-checks every TensorRT call against each version
    import tensorrt as trt



@dataclass(frozen=True)
class BuildOptions:
    """Names of the NetworkDefinitionCreationFlag and BuilderFlag members to set."""

    network_flags: tuple[str, ...]
    builder_flags: tuple[str, ...]


# A DLA build fails unless at least this share of the network's layers run on the DLA (`--min-dla-share`).
DEFAULT_MIN_DLA_SHARE = 0.5


def build_options(tensorrt_version: str, precision: str, dla: bool = False) -> BuildOptions:
    """How to declare the network for a TensorRT version, an ONNX precision and a target (GPU, or a DLA core with
    GPU fallback); see the module docstring. EdgeclsError for what that version cannot build."""
    major = version_tuple(tensorrt_version)[0]
    if precision not in PRECISIONS:
        raise EdgeclsError(f"unknown ONNX precision {precision!r}; re-export the file with `edgecls export`")
    if major < 8:
        raise EdgeclsError(f"TensorRT {tensorrt_version} is too old: edgecls needs 8.5 or newer (JetPack 5.1+)")
    if dla:
        return _dla_build_options(tensorrt_version, precision)
    if major == 8:
        return BuildOptions(("EXPLICIT_BATCH",), {"fp32": (), "fp16": ("FP16",), "int8": ("INT8",)}[precision])
    if major == 9:
        return BuildOptions(("EXPLICIT_BATCH", "STRONGLY_TYPED"), ())
    if major == 10:
        return BuildOptions(("STRONGLY_TYPED",), ())
    return BuildOptions((), ())


def _dla_build_options(tensorrt_version: str, precision: str) -> BuildOptions:
    """trtexec's DLA declaration for the version (module docstring). On 8.x to 10.x an int8 file also gets FP16: a
    DLA has no fp32, so a layer outside the Q/DQ pairs stays on the DLA only in fp16 (trtexec --int8 --fp16)."""
    problem = dla_unsupported(tensorrt_version, precision)
    if problem:
        raise EdgeclsError(problem)
    if precision == "fp32":
        raise EdgeclsError("a DLA runs fp16 and int8 layers only: build the fp16 or int8 export with --dla")
    major = version_tuple(tensorrt_version)[0]
    if major >= 11:
        return BuildOptions((), ("GPU_FALLBACK",))
    precisions = ("FP16",) if precision == "fp16" else ("INT8", "FP16")
    return BuildOptions(("EXPLICIT_BATCH",) if major < 10 else (),
                        precisions + ("PREFER_PRECISION_CONSTRAINTS", "GPU_FALLBACK"))


def version_tuple(version: str) -> Tuple[int, ...]:
    """'8.5.2.2' -> (8, 5, 2, 2); EdgeclsError when it is not dotted numbers."""
    try:
        return tuple(int(part) for part in str(version).strip().split("."))
    except ValueError as exc:
        raise EdgeclsError(f"cannot read the TensorRT version {version!r}") from exc


def dla_unsupported(tensorrt_version: str, precision: Optional[str] = None) -> Optional[str]:
    """Why this TensorRT cannot build an engine (of this ONNX precision) for a Jetson DLA, or None.

    The version window is NVIDIA's "Working with DLA" page (docs.nvidia.com/deeplearning/tensorrt/11.5.0/
    inference-library/work-with-dla.html, and the 11.4.1 page and release notes): 10.7 was the last 10.x release with
    DLA; 11.0 to 11.3 have none and 11.4.0 only on Windows on ARM; 11.4.1 brought it back for Jetson AGX Orin on
    JetPack 7.2.2+; 11.5.0 does not support JetPack, so Orin's DLA is "through TensorRT 11.4.1".
    Int8 on 8.x: the TensorRT 8.x Developer Guide, "Working with DLA", says "DLA does not support Explicit
    Quantization", and edgecls' int8 files are explicit (Q/DQ)."""
    version = version_tuple(tensorrt_version)
    if (10, 8) <= version[:2] and version[:3] < (11, 4, 1):
        return (f"TensorRT {tensorrt_version} has no DLA support on Jetson (10.7 was the last 10.x release with DLA; "
                "it came back in 11.4.1 for Jetson AGX Orin on JetPack 7.2.2+); build without --dla")
    if version[:2] >= (11, 5):
        return (f"TensorRT {tensorrt_version} has no DLA support on Jetson (NVIDIA's \"Working with DLA\": JetPack is "
                "not supported from 11.5.0; Orin's DLA is through TensorRT 11.4.1 on JetPack 7.2.2+); build without "
                "--dla")
    if precision == "int8" and version[0] == 8:
        return (f"TensorRT {tensorrt_version} cannot put an int8 Q/DQ file on a DLA (its guide, \"Working with DLA\": "
                "DLA does not support explicit quantization); build the fp16 export with --dla, or the int8 file for "
                "the GPU (without --dla)")
    return None


def check_dla_request(dla_core: Optional[int], precision: str, batch: Tuple[int, int, int], source: str) -> None:
    """Refuse, before TensorRT is asked, what a DLA cannot run: fp32, or a batch range (DLA has no dynamic shapes)."""
    if dla_core is None:
        return
    if dla_core < 0:
        raise EdgeclsError(f"--dla {dla_core}: a DLA core is numbered from 0 (Xavier and Orin have cores 0 and 1)")
    if precision == "fp32":
        raise EdgeclsError(f"{source} is fp32, which a DLA does not run (fp16 and int8 only): build the fp16 or int8 "
                           "export with --dla, e.g. edgecls build export/new2.int8.onnx --dla 0")
    if len(set(batch)) != 1:
        raise EdgeclsError(f"--batch {':'.join(map(str, batch))}: a DLA runs one fixed batch size; pass --batch N:N:N "
                           f"(e.g. --batch {batch[1]}:{batch[1]}:{batch[1]})")


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


def unavailable_reason() -> Optional[str]:
    """Why an engine cannot be built here (no TensorRT, no GPU), or None when it can."""
    problem = tensorrt_problem()
    if problem is not None:
        return problem
    statuses = probe()
    if gpu_info(statuses) is None:
        return "TensorRT is installed but no NVIDIA GPU is reachable: " + gpu_problem(statuses)
    return None


def gpu_problem(statuses: list[BindingStatus]) -> str:
    """Why no CUDA binding reached a GPU, one clause per binding."""
    return "; ".join(f"{status.name}: {status.problem}" for status in statuses if status.problem)


def gpu_info(statuses: Optional[list[BindingStatus]] = None) -> Optional[GpuInfo]:
    """The first GPU seen by any CUDA binding that works (cuda-python, then pycuda: JetPack 5 has pycuda only), else by
    nvidia-smi (which Jetsons lack); None when there is none."""
    for status in probe() if statuses is None else statuses:
        if status.gpu is not None:
            return status.gpu
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        output = subprocess.run(["nvidia-smi", "--query-gpu=name,compute_cap,memory.total",
                                 "--format=csv,noheader,nounits"],
                                capture_output=True, text=True, timeout=30, check=True).stdout
    except (subprocess.SubprocessError, OSError):
        return None
    fields = [part.strip() for part in (output.strip().splitlines() or [""])[0].split(",")]  # the first GPU
    if len(fields) != 3 or not fields[1]:
        return None
    name, capability, memory_mib = fields
    return GpuInfo(name, capability, int(memory_mib) << 20 if memory_mib.isdigit() else 0, "nvidia-smi")


def dla_cores() -> Optional[int]:
    """How many DLA cores TensorRT's builder sees here (0 on GPUs without one); None when TensorRT cannot say."""
    if tensorrt_problem() is not None:
        return None
    import tensorrt as trt

    try:
        return int(trt.Builder(trt.Logger(trt.Logger.ERROR)).num_DLA_cores)
    except Exception:  # noqa: BLE001 - no CUDA device: pybind11 raises TypeError for the builder TensorRT did not make
        return None


# ------------------------------------------------------------------------------- where the layers of a DLA plan run

# How a DLA plan's layer information names things: TensorRT fuses each subgraph it gives the DLA into one engine
# layer named `{ForeignNode[<first layer>...<last layer>]}`, and copies data to and from DLA memory in layers named
# `<tensor> to nvm`, `<tensor> from nvm` and `<tensor> copy finish` (a DLA engine's per-layer profile, in
# NVIDIA/TensorRT issue #3143). GPU layers keep the network's layer names, fused ones joined by " + ". TensorRT's GPU
# graph compiler (Myelin) makes foreign nodes too, of LayerType "Myelin" (a layer type NVIDIA's engine explorer,
# tools/experimental/trt-engine-explorer/trex/colors.py, knows; it knows no DLA type).
# Not yet seen on a device by this project: the manifest keeps both lists of names so the first DLA build can be
# checked by eye.
FOREIGN_NODE = re.compile(r"^\{ForeignNode\[(.*)\]\}$")
DLA_MEMORY_COPY = re.compile(r" (to|from) nvm$| copy finish$")
GPU_FOREIGN_NODE_TYPES = ("Myelin", "kgen")


@dataclass(frozen=True)
class LayerPlacement:
    """Which of a DLA plan's layers run on the DLA and which on the GPU (network layer names where they can be
    matched, else the engine's own layer names)."""

    dla: tuple[str, ...]
    gpu: tuple[str, ...]

    @property
    def share(self) -> float:
        """The share of the layers on the DLA (0 when there are none)."""
        total = len(self.dla) + len(self.gpu)
        return len(self.dla) / total if total else 0.0

    def summary(self, dla_core: int) -> str:
        """One line: how many layers run where, and the first few on the GPU."""
        total = len(self.dla) + len(self.gpu)
        text = f"DLA core {dla_core}: {len(self.dla)} of {total} layers ({self.share:.0%}); GPU: {len(self.gpu)}"
        if self.gpu:
            shown = ", ".join(self.gpu[:4])
            text += f" ({shown}{', ...' if len(self.gpu) > 4 else ''})"
        return text


def placement_from_layer_information(record: str | dict | list, network_layers: list[str]) -> LayerPlacement:
    """Where the layers of a DLA plan run, from TensorRT's engine information (the engine inspector's JSON, built with
    DETAILED profiling verbosity: {"Layers": [{"Name": .., "LayerType": ..}, ..]}; a list of names with less detail).

    A foreign node that is not Myelin's is the DLA's; its `first...last` range covers those network layers, in the
    network's order. Copies to and from DLA memory are not layers of the model and are left out. A layer whose names
    match no network layer counts once under its engine name."""
    if isinstance(record, str):
        try:
            record = json.loads(record)
        except ValueError as exc:
            raise EdgeclsError(f"TensorRT's layer information is not JSON ({first_line(exc)})") from exc
    layers = record.get("Layers", []) if isinstance(record, dict) else record
    if not isinstance(layers, list):
        raise EdgeclsError("TensorRT's layer information has no list of layers")
    position = {name: index for index, name in enumerate(network_layers)}
    placed: dict[str, str] = {}
    for layer in layers:
        name = str(layer.get("Name", "")) if isinstance(layer, dict) else str(layer)
        kind = str(layer.get("LayerType", "")) if isinstance(layer, dict) else ""
        if not name or DLA_MEMORY_COPY.search(name):
            continue
        foreign = FOREIGN_NODE.match(name)
        device = "dla" if foreign and kind not in GPU_FOREIGN_NODE_TYPES else "gpu"
        if foreign:
            first, _, last = foreign.group(1).partition("...")
            ends = [position.get(first), position.get(last or first)]
            covered = network_layers[ends[0]:ends[1] + 1] if None not in ends else []  # type: ignore[operator]
        else:
            covered = [part for part in re.split(r" \+ |\(|\)|, ", name) if part in position]
        for covered_name in covered or [name]:
            placed.setdefault(covered_name, device)
    return LayerPlacement(dla=tuple(n for n, d in placed.items() if d == "dla"),
                          gpu=tuple(n for n, d in placed.items() if d == "gpu"))


def check_dla_share(placement: LayerPlacement, dla_core: int, min_share: float, source: str,
                    judged: Optional[Tuple[int, int]] = None) -> None:
    """Refuse a DLA plan that runs less than `min_share` of its layers on the DLA. `judged`: (layers the builder
    judged able to run on the DLA, network layers), said too, so that a plan that fell back can be told from a
    layer report read wrongly."""
    if placement.share < min_share:
        before = f" (before the build, TensorRT judged {judged[0]} of the network's {judged[1]} layers able to run " \
                 "there)" if judged else ""
        raise EdgeclsError(f"{source} on {placement.summary(dla_core)}{before}: below --min-dla-share {min_share:g}, "
                           "so the plan was not written; pass --min-dla-share 0 to keep it anyway, or build without "
                           "--dla")


@dataclass(frozen=True)
class JetsonRelease:
    """The board and its Linux for Tegra release, read where a Jetson keeps them; empty strings elsewhere."""

    board: str  # /proc/device-tree/model, e.g. "NVIDIA Jetson AGX Orin Developer Kit"
    l4t: str  # /etc/nv_tegra_release, e.g. "35.4.1"

    @property
    def jetpack(self) -> str:
        """The JetPack line of the L4T release ("" when unknown)."""
        major = self.l4t.split(".")[0]
        return {"32": "4.x", "34": "5.0 (preview)", "35": "5.x", "36": "6.x", "38": "7.x"}.get(major, "")


L4T_RELEASE_FILE = "/etc/nv_tegra_release"


def parse_l4t_release(text: str) -> str:
    """'# R35 (release), REVISION: 4.1, GCID: ...' -> '35.4.1'; '' when the text is not of that form."""
    found = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    return f"{found.group(1)}.{found.group(2)}" if found else ""


def jetson_release() -> JetsonRelease:
    def read(path: str) -> str:
        try:
            return Path(path).read_text(errors="replace")
        except OSError:
            return ""

    return JetsonRelease(board=board_model(BOARD_MODEL_FILE), l4t=parse_l4t_release(read(L4T_RELEASE_FILE)))


def build_engine(onnx_path: str | os.PathLike, plan_path: str | os.PathLike | None = None,
                 batch: tuple[int, int, int] = DEFAULT_BATCH_PROFILE,
                 workspace_mib: int = DEFAULT_WORKSPACE_MIB, dla_core: Optional[int] = None,
                 min_dla_share: float = DEFAULT_MIN_DLA_SHARE) -> Path:
    """Build a TensorRT plan from an exported ONNX file; write it and its manifest (`<plan>.json`) atomically.

    The default plan path is `engines/<onnx name without .onnx>.plan`. `dla_core`: build for that Jetson DLA core
    (fp16 / int8 files, a fixed batch MIN = OPT = MAX), with GPU fallback for layers the DLA cannot run; the manifest
    records which layers TensorRT put where, and the build fails (nothing written) when less than `min_dla_share`
    of them are on the DLA.
    """
    onnx_path = Path(onnx_path)
    metadata = ModelMetadata.read(onnx_path)  # validates the file before we look for TensorRT
    if (metadata.quantization or {}).get("target") == "cpu":
        raise EdgeclsError(f"{onnx_path} is the int8 form for ONNX Runtime on CPUs (u8 activations), which TensorRT "
                           "rejects; export it with `edgecls export --int8 --target trt` to build an engine")
    plan_path = Path(plan_path) if plan_path is not None else default_plan_path(onnx_path)
    if plan_path.suffix != ".plan":
        raise EdgeclsError(f"engine path {plan_path} should end in .plan (its manifest goes beside it as .plan.json)")
    check_output_file(plan_path, inputs=(onnx_path,), writes=("TensorRT engine",))  # creates nothing: a failed
    check_output_file(f"{plan_path}.json", inputs=(onnx_path,), writes=("engine manifest",))  # build leaves no folder
    check_batch(batch)
    check_dla_request(dla_core, metadata.precision, batch, str(onnx_path))
    if not 0.0 <= min_dla_share <= 1.0:
        raise EdgeclsError(f"--min-dla-share {min_dla_share:g} is not a share between 0 and 1 (e.g. 0.5)")
    problem = tensorrt_problem()
    if problem is not None:
        raise EdgeclsError(problem)
    import tensorrt as trt

    options = build_options(trt.__version__, metadata.precision, dla=dla_core is not None)
    statuses = probe()
    gpu = gpu_info(statuses)
    if gpu is None:
        raise EdgeclsError(f"no NVIDIA GPU is reachable here ({gpu_problem(statuses)}; nvidia-smi: none); "
                           "build on the device that will run the engine")

    started = time.perf_counter()
    placement: Optional[LayerPlacement] = None
    try:
        serialized, network_layers, judged = _build(onnx_path, metadata, options, batch, workspace_mib, dla_core)
        if dla_core is not None:
            placement = _layer_placement(serialized, dla_core, network_layers)
    except (RuntimeError, TypeError, AttributeError, ValueError) as exc:
        # pybind11 raises these when TensorRT returns nothing (e.g. TypeError for a Builder it could not make)
        raise EdgeclsError(f"TensorRT {trt.__version__} failed while building {onnx_path}: {first_line(exc)}; "
                           "`edgecls doctor` checks this device") from exc
    build_seconds = time.perf_counter() - started
    if placement is not None and dla_core is not None:
        check_dla_share(placement, dla_core, min_dla_share, str(onnx_path), (judged, len(network_layers)))

    with atomic_write(plan_path) as handle:
        handle.write(memoryview(serialized))
    jetson = jetson_release()
    EngineManifest(tensorrt_version=trt.__version__, gpu_name=gpu.name, compute_capability=gpu.compute_capability,
                   onnx_path=str(onnx_path), onnx_sha256=sha256_file(onnx_path), plan_sha256=sha256_file(plan_path),
                   precision=metadata.precision, batch=dict(zip(("min", "opt", "max"), batch)), model=metadata,
                   build_seconds=round(build_seconds, 2), built_at=utc_now(), dla_core=dla_core,
                   cuda_binding=gpu.source, board=jetson.board, l4t_release=jetson.l4t,
                   layers_on_dla=None if placement is None else list(placement.dla),
                   layers_on_gpu=None if placement is None else list(placement.gpu)).write(plan_path)
    return plan_path


def _build(onnx_path: Path, metadata: ModelMetadata, options: BuildOptions, batch: tuple[int, int, int],
           workspace_mib: int, dla_core: Optional[int]) -> Tuple[trt.IHostMemory, list[str], int]:
    """Parse the ONNX file and build the serialized engine with one optimization profile for the batch; returns it,
    the network's layer names in order, and (DLA builds) how many of them the builder judged able to run on the
    DLA (`IBuilderConfig.can_run_on_DLA`; 0 for GPU builds)."""
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
    # errors recorded while parsing count even when it returns True (as Polygraphy checks, backend/trt/util.py)
    if not parser.parse_from_file(str(onnx_path)) or parser.num_errors > 0:
        errors = [parser.get_error(i) for i in range(parser.num_errors)]
        raise EdgeclsError(f"TensorRT {trt.__version__} cannot parse {onnx_path}: "
                           f"{first_line(errors[0]) if errors else 'unknown error'}")
    network_layers = [network.get_layer(index).name for index in range(network.num_layers)]

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    for name in options.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    if hasattr(trt.BuilderFlag, "TF32"):
        # On by default: float32 layers would round their inputs to 10-bit mantissas, so an "fp32" engine
        # would no longer match the fp32 ONNX file. Reduced precision is what the fp16 / int8 files are for.
        config.clear_flag(trt.BuilderFlag.TF32)
    if dla_core is not None:
        available = builder.num_DLA_cores
        if dla_core >= available:
            raise EdgeclsError(f"--dla {dla_core}: this device has {available or 'no'} DLA core"
                               f"{'' if available == 1 else 's'} (TensorRT {trt.__version__}); DLA cores exist on "
                               "Jetson AGX Xavier, Xavier NX and AGX Orin / Orin NX; build without --dla")
        config.default_device_type = trt.DeviceType.DLA  # GPU_FALLBACK (build_options) sends the rest to the GPU
        config.DLA_core = dla_core
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # layer names for the engine inspector
    judged = 0 if dla_core is None else sum(
        bool(config.can_run_on_DLA(network.get_layer(index))) for index in range(network.num_layers))
    crop = metadata.preprocess.crop_size
    inputs = [network.get_input(index).name for index in range(network.num_inputs)]
    if metadata.input_name not in inputs:
        raise EdgeclsError(f"{onnx_path} names its input {metadata.input_name!r} but its graph has {inputs}; "
                           "re-export it with `edgecls export`")
    profile = builder.create_optimization_profile()
    profile.set_shape(metadata.input_name, *[(n, 3, crop, crop) for n in batch])
    # TensorRT only logs a profile it finds invalid, and the build then fails for want of one: say so here
    if not profile or config.add_optimization_profile(profile) < 0:
        raise EdgeclsError(f"TensorRT {trt.__version__} refused the batch profile {':'.join(map(str, batch))} for "
                           f"input {metadata.input_name!r} of {onnx_path} (its log above says why)")

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EdgeclsError(f"TensorRT {trt.__version__} failed to build an engine from {onnx_path} "
                           "(its log above says why); try a larger --workspace or a smaller --batch maximum")
    return serialized, network_layers, judged


def _layer_placement(serialized: trt.IHostMemory, dla_core: int, network_layers: list[str]) -> LayerPlacement:
    """Ask TensorRT where the built plan runs each layer: its engine inspector, on the plan deserialized for the
    DLA core (IEngineInspector exists in every version edgecls supports, 8.5 to 11.x)."""
    import tensorrt as trt

    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    runtime.DLA_core = dla_core
    engine = runtime.deserialize_cuda_engine(serialized)
    if engine is None:
        raise EdgeclsError(f"TensorRT {trt.__version__} built a DLA plan it cannot deserialize (its log above says "
                           "why); build without --dla")
    inspector = engine.create_engine_inspector()
    information = inspector.get_engine_information(trt.LayerInformationFormat.JSON)
    del inspector, engine, runtime  # in this order: each keeps the next alive
    return placement_from_layer_information(information, network_layers)


def build_command(onnx_path: str | os.PathLike, plan_path: str | os.PathLike | None = None) -> str:
    """The `edgecls build` command line to run on the device for an exported file."""
    plan = Path(plan_path) if plan_path is not None else default_plan_path(onnx_path)
    return f"edgecls build {onnx_path} -o {plan}"
