"""Per-call host work of Polygraphy's TrtRunner.infer() against edgecls's TensorRTRunner.infer() (docs/POLYGRAPHY.md).

Two parts, JSON out:

1. `host` (anywhere Polygraphy and numpy are installed; no TensorRT, no GPU): times, one by one, the Python steps
   that Polygraphy 0.53.x runs on every `infer()` of a one-input, one-output engine fed a numpy batch, leaving out
   the TensorRT and CUDA calls themselves (counted in docs/POLYGRAPHY.md, not timed here), and edgecls's own
   per-call steps likewise. Each step cites the line of polygraphy it stands for. It also reports whether the
   first `polygraphy.util.array.is_torch()` call, made by every TrtRunner.infer(), imported torch.
2. `--plan PATH` (on the device: TensorRT, a GPU, and an edgecls plan with its manifest): runs the plan through both
   runners on the same batch, times `infer()` per call, and reports the largest difference between their outputs
   (expected 0: same engine, same input). For a DLA plan the runtime is given the manifest's DLA core, which
   Polygraphy's loaders do not set themselves. This part has not run here (no TensorRT on these machines).

Polygraphy is not an edgecls dependency: run this with an interpreter that has it, e.g.
    python3 -m venv /tmp/pg && /tmp/pg/bin/pip install polygraphy numpy
    PYTHONPATH=$PWD /tmp/pg/bin/python benchmarks/bench_polygraphy_overhead.py --json /tmp/polygraphy-host.json
    PYTHONPATH=$PWD python3 benchmarks/bench_polygraphy_overhead.py --plan engines/new2.fp16.plan   # on the device
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import timeit
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import numpy as np

from edgecls.runtime.tensorrt_backend import check_input, tensorrt_problem


def per_call_us(step: Callable[[], object], number: int, repeat: int) -> float:
    """The best of `repeat` runs of `number` calls, in microseconds per call (the best: other processes share
    these cores, and their load only ever adds time)."""
    return min(timeit.repeat(step, number=number, repeat=repeat)) / number * 1e6


def twice(step: Callable[[], None]) -> Callable[[], None]:
    def run() -> None:
        step()
        step()

    return run


def polygraphy_steps(batch: np.ndarray, out_shape: Tuple[int, ...]) -> List[Tuple[str, Callable[[], object]]]:
    """Polygraphy's per-infer Python work for one numpy input and one float32 output, without the TensorRT and CUDA
    calls. Line numbers: polygraphy 0.53.6."""
    from polygraphy import cuda, util
    from polygraphy.backend.base import util as base_util
    from polygraphy.common import FormattedArray, TensorMetadata
    from polygraphy.datatype import DataType

    name = "input"
    feed = {name: batch}
    meta = TensorMetadata().add(name, DataType.FLOAT32, (-1, *batch.shape[1:]))
    nbytes = batch.nbytes
    out_nbytes = int(np.prod(out_shape)) * 4
    host_output = np.empty((out_nbytes,), dtype=np.uint8)  # runner.py L150-157: a reused, pageable host buffer
    device_output = cuda.DeviceView(0, (out_nbytes,), DataType.UINT8)  # stands for the allocator's DeviceArray
    device_input = cuda.DeviceView(0, (nbytes,), DataType.UINT8)  # ... and for the input's DeviceArray

    guarded = util.check_called_by("infer")(lambda: None)

    def check_called_by() -> None:  # util/util.py L743-763: wraps infer_impl and get_input_metadata_impl
        # Called from a polygraphy frame (invoke_if_callable), as BaseRunner.infer calls infer_impl: then the
        # decorator only looks the caller's module up (inspect.getmodule) and warns about nothing.
        util.invoke_if_callable(guarded)

    def metadata() -> None:  # base/runner.py L111-146 and backend/trt/util.py L709-726, less the TensorRT calls
        fresh = TensorMetadata().add(name, DataType.FLOAT32, (-1, *batch.shape[1:]))
        for _, (dtype, _shape) in fresh.items():
            DataType.from_dtype(dtype)

    def input_to_device() -> None:  # runner.py L357-367 and backend/trt/util.py L791-821, less cudaMemcpyAsync
        array = FormattedArray(batch, shape=util.array.shape(batch))
        util.array.is_torch(array.array)
        util.array.is_on_gpu(array.array)
        contiguous = util.array.make_contiguous(array.array)
        shape = (util.array.nbytes(contiguous),)
        util.volume(shape)  # DeviceArray.resize: no reallocation once large enough (cuda.py L494-513)
        host = util.array.view(contiguous, DataType.UINT8, shape)
        util.array.nbytes(host)  # DeviceArray.copy_from / _check_host_buffer (cuda.py L349-376, L536-562)
        _ = util.array.dtype(host) != device_input._dtype
        util.array.is_contiguous(host)
        util.array.data_ptr(host)

    def output_to_host() -> None:  # runner.py L512-585 and L119-167, less the TensorRT calls and cudaMemcpyAsync
        util.volume(out_shape)
        util.array.is_on_gpu(device_output)
        util.array.is_torch(host_output)  # L150: evaluated on every call once the buffer exists
        buffer = util.array.resize_or_reallocate(host_output, (out_nbytes,))
        util.array.data_ptr(buffer)
        util.array.data_ptr(device_output)
        util.array.view(buffer, DataType.FLOAT32, out_shape)

    return [
        ("of which: is_torch() alone, per call (util/array.py L36-50)", lambda: util.array.is_torch(batch)),
        ("check_called_by x2 (infer_impl, get_input_metadata_impl)", twice(check_called_by)),
        ("input metadata rebuilt (TensorMetadata, DataType)", metadata),
        ("check_inputs (base/util.py L22-53)", lambda: base_util.check_inputs(feed, meta)),
        ("input: FormattedArray, is_torch, dispatch, view", input_to_device),
        ("output: dispatch, is_torch, resize, view", output_to_host),
        ("time.time() x2 (runner.py L628-632)", lambda: (time.time(), time.time())),
    ]


def edgecls_steps(batch: np.ndarray, out_shape: Tuple[int, ...]) -> List[Tuple[str, Callable[[], object]]]:
    """edgecls's per-infer Python work (tensorrt_backend.py infer/_stage), without the TensorRT and CUDA calls.
    The two copies are real data movement: the page-locked staging copy and the copy handed to the caller."""
    host_input = np.empty((256, *batch.shape[1:]), dtype=np.float32)  # page-locked on the device
    host_output = np.empty((256, *out_shape[1:]), dtype=np.float32)
    plan = Path("engine.plan")
    count = len(batch)

    def stage() -> None:
        check_input(plan, batch, host_input.shape[1:], host_input.dtype, 1, 256)
        tuple(host_input[:count].shape)

    return [
        ("check_input + shape (tensorrt_backend.py L94-103, L230-240)", stage),
        ("np.copyto into the staging buffer (L236)", lambda: np.copyto(host_input[:count], batch, casting="same_kind")),
        ("copy of the output for the caller (L254)", lambda: host_output[:count].astype(np.float32)),
    ]


def torch_side_effect(batch: np.ndarray) -> Dict[str, object]:
    """Whether the first is_torch() call (made by every TrtRunner.infer(), runner.py L364) imports torch, and its cost."""
    import importlib.util

    from polygraphy import util

    installed = importlib.util.find_spec("torch") is not None
    before = "torch" in sys.modules
    started = time.perf_counter()
    util.array.is_torch(batch)
    return {"torch_installed": installed, "torch_imported_before": before,
            "torch_imported_after_first_is_torch": "torch" in sys.modules,
            "first_is_torch_ms": round((time.perf_counter() - started) * 1e3, 1)}


def host_part(batch_size: int, number: int, repeat: int) -> Dict[str, object]:
    import polygraphy

    batch = np.random.default_rng(0).standard_normal((batch_size, 3, 28, 28)).astype(np.float32)
    out_shape = (batch_size, 10)
    side_effect = torch_side_effect(batch)  # first: it must see a process where nothing imported torch yet
    result: Dict[str, object] = {"polygraphy": polygraphy.__version__, "batch": batch_size, **side_effect}
    for label, steps in (("polygraphy_us", polygraphy_steps(batch, out_shape)),
                         ("edgecls_us", edgecls_steps(batch, out_shape))):
        timed = {name: round(per_call_us(step, number, repeat), 2) for name, step in steps}
        total = sum(value for name, value in timed.items() if not name.startswith("of which"))
        result[label] = {"steps": timed, "total": round(total, 2)}
    return result


def plan_part(plan: Path, batch_size: int, calls: int) -> Dict[str, object]:
    """Both runners on one plan (device only)."""
    import tensorrt as trt
    from polygraphy.backend.common import BytesFromPath
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    from edgecls.formats import EngineManifest
    from edgecls.runtime.tensorrt_backend import TensorRTRunner

    manifest = EngineManifest.read(plan)
    crop = manifest.model.preprocess.crop_size
    lowest, highest = manifest.batch["min"], manifest.batch["max"]
    size = min(max(batch_size, lowest), highest)
    batch = np.random.default_rng(0).standard_normal((size, 3, crop, crop)).astype(np.float32)
    feed = {manifest.model.input_name: batch}

    def timed(infer: Callable[[], Dict[str, np.ndarray]]) -> Tuple[np.ndarray, float]:
        output = infer()[manifest.model.output_name].copy()  # also the warm-up call
        started = time.perf_counter()
        for _ in range(calls):
            infer()
        return output, (time.perf_counter() - started) / calls * 1e6

    with TensorRTRunner(plan) as ours:
        ours_out, ours_us = timed(lambda: ours.infer(feed))

    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    if manifest.dla_core is not None:
        runtime.DLA_core = manifest.dla_core  # Polygraphy's loaders never set it (loader.py L939-961)
    with TrtRunner(EngineFromBytes(BytesFromPath(str(plan)), runtime=runtime)) as theirs:
        theirs_out, theirs_us = timed(lambda: theirs.infer(feed))
        _, unchecked_us = timed(lambda: theirs.infer(feed, check_inputs=False))

    return {"plan": str(plan), "tensorrt": trt.__version__, "batch": size, "calls": calls,
            "edgecls_infer_us": round(ours_us, 1), "polygraphy_infer_us": round(theirs_us, 1),
            "polygraphy_infer_unchecked_us": round(unchecked_us, 1),
            "max_abs_difference": float(np.max(np.abs(ours_out.astype(np.float64) - theirs_out)))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=1, help="images per call (default 1: where overhead shows)")
    parser.add_argument("--number", type=int, default=2000, help="calls per timing run (host part)")
    parser.add_argument("--repeat", type=int, default=5, help="timing runs per step; the best is kept (host part)")
    parser.add_argument("--plan", type=Path, help="also run this plan through both runners (needs TensorRT and a GPU)")
    parser.add_argument("--calls", type=int, default=1000, help="timed infer() calls per runner (plan part)")
    parser.add_argument("--json", type=Path, help="write the result here as well as to stdout")
    args = parser.parse_args()

    try:
        import polygraphy  # noqa: F401 - only to say clearly when it is missing
    except ImportError:
        print("skipped: polygraphy is not installed in this interpreter (pip install polygraphy into a scratch venv)")
        return 0
    if args.plan is not None:  # checked before the host part's minute of timing
        problem = tensorrt_problem() or (None if args.plan.is_file() else f"{args.plan} is not a file")
        if problem is not None:
            print(f"error: --plan {args.plan} needs TensorRT, a GPU and an edgecls plan: {problem}", file=sys.stderr)
            return 2
    result: Dict[str, object] = {"python": platform.python_version(), "machine": platform.machine(),
                                 "host": host_part(args.batch, args.number, args.repeat)}
    if args.plan is not None:
        result["plan"] = plan_part(args.plan, args.batch, args.calls)
    text = json.dumps(result, indent=1)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
