#!/usr/bin/env python3
"""Prove the API contract by mutation: apply one-line bugs to the TensorRT / CUDA modules, one at a time, and show
that tests/test_api_contract.py fails for each (`make contract-mutants`; not run by CI: about four minutes on two cores).

Each mutant is a bug of a class the contract must catch (issue 18): a misspelled method called on an object held in
a local, a parameter, `self.x` or a property; an enum member reached through a local alias; a handle taken with an
attribute that does not exist; a name inside a `hasattr` guard; a member name looked up at run time (getattr, a
table keyed by enum member names); a wrong argument count; an annotation dropped from a binding object.

The repository is copied into a temporary folder for each mutant (nothing here is ever edited), the unmutated copy
must pass first, and the contract test runs in two steps: the quick checks, then, if they pass, the mypy checks (so a
mutant is "caught" when either fails). Prints one line per mutant and "N of M caught"; exits 0 only when all are.

    python tools/api/mutate_contract.py                 # all mutants
    python tools/api/mutate_contract.py --only 3 --only 18 --json results/contract-mutants.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[2]
COPIED = ("edgecls", "tools/api", "tests/conftest.py", "tests/test_api_contract.py")
MYPY_TESTS = "test_tensorrt_calls_match_recorded_api or test_tensorrt_calls_match_tensorrt_stubs"
# The test that the mutants still apply to the code fails on every mutated copy by design: it proves nothing here.
SELF_TEST = "test_every_contract_mutant_still_applies"
ENGINES, BACKEND, CUDA = "edgecls/engines.py", "edgecls/runtime/tensorrt_backend.py", "edgecls/runtime/cuda_memory.py"


@dataclass(frozen=True)
class Mutant:
    path: str
    before: str  # must occur exactly once in the file
    after: str
    kind: str  # the class of bug


MUTANTS = (
    # TensorRT, through mypy over each version's API
    Mutant(ENGINES, "network = builder.create_network(flags)", "network = builder.create_network_v2(flags)",
           "method on a local"),
    Mutant(ENGINES, "config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)",
           "config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20, 0)", "argument count"),
    Mutant(ENGINES, "available = builder.num_DLA_cores", "available = builder.num_dla_cores", "property on a local"),
    Mutant(ENGINES, "config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED",
           "config.profiling_verbosity = trt.ProfilingVerbosity.DETAIL", "enum member"),
    Mutant(ENGINES, "information = inspector.get_engine_information(trt.LayerInformationFormat.JSON)",
           "information = inspector.get_engine_info(trt.LayerInformationFormat.JSON)", "method on a local"),
    Mutant(ENGINES, "network_layers = [network.get_layer(index).name for index in range(network.num_layers)]",
           "network_layers = [network.get_layer(index).name for index in range(network.num_layer)]",
           "property on a local"),
    Mutant(BACKEND, "runtime.DLA_core = manifest.dla_core", "runtime.dla_core = manifest.dla_core",
           "attribute set on a local"),
    Mutant(BACKEND, "if not state.context.execute_async_v3(state.cuda.stream_handle):",
           "if not state.context.execute_async_v2(state.cuda.stream_handle):", "method removed in a version"),
    Mutant(BACKEND, "context = engine.create_execution_context()", "context = engine.create_context()",
           "method on a local"),
    Mutant(BACKEND, "{name: numpy_dtype(engine.get_tensor_dtype(name).name, name, self.path)",
           "{name: numpy_dtype(engine.get_tensor_datatype(name).name, name, self.path)", "method on a local"),
    Mutant(BACKEND, "if engine.get_tensor_format(name) != trt.TensorFormat.LINEAR:",
           "if engine.get_tensor_format(name) != trt.TensorFormat.LINEAR_:", "enum member"),
    Mutant(BACKEND, "if tuple(state.context.get_tensor_shape(self.input_name)) != shape and",
           "if tuple(state.context.get_shape(self.input_name)) != shape and", "method on an attribute's attribute"),
    Mutant(ENGINES, "inputs = [network.get_input(index).name for index in range(network.num_inputs)]",
           "inputs = [network.get_inputs(index).name for index in range(network.num_inputs)]", "method on a local"),
    # names looked up at run time: guards, getattr'd flags, tables keyed by member names
    Mutant(ENGINES, 'if hasattr(trt.BuilderFlag, "TF32"):', 'if hasattr(trt.BuilderFlag, "TF_32"):',
           "name in a hasattr guard"),
    Mutant(BACKEND, 'if not hasattr(trt, "Builder"):', 'if not hasattr(trt, "Bulder"):', "name in a hasattr guard"),
    Mutant(ENGINES, 'return BuildOptions((), ("GPU_FALLBACK",))', 'return BuildOptions((), ("GPU_FALL_BACK",))',
           "flag name looked up by getattr (11.x DLA)"),
    Mutant(ENGINES, 'precisions + ("PREFER_PRECISION_CONSTRAINTS", "GPU_FALLBACK"))',
           'precisions + ("PREFER_PRECISION_CONSTRAINT", "GPU_FALLBACK"))', "flag name looked up by getattr (DLA)"),
    Mutant(ENGINES, 'return BuildOptions(("STRONGLY_TYPED",), ())', 'return BuildOptions(("STRONGLY_TYPE",), ())',
           "flag name looked up by getattr (10.x)"),
    Mutant(BACKEND, '"HALF": np.float16', '"FP16": np.float16', "table keyed by enum member names"),
    # pycuda objects, followed through their annotations
    Mutant(CUDA, "self._context: pycuda_driver.Context = device.retain_primary_context()",
           "self._context: pycuda_driver.Context = device.retain_primary_ctx()", "pycuda method on a local"),
    Mutant(CUDA, "        self.stream.synchronize()", "        self.stream.sync()", "pycuda method on a property"),
    Mutant(CUDA, "return int(self.stream.handle)", "return int(self.stream.handel)", "handle taken by a wrong name"),
    Mutant(CUDA, "        self._context.push()\n        try:\n            yield",
           "        self._context.push_current()\n        try:\n            yield", "pycuda method on self.x"),
    Mutant(CUDA, "context.detach()", "context.release()", "pycuda method on a parameter"),
    Mutant(CUDA, "host_allocation.free()", "host_allocation.release()", "pycuda method on a local"),
    Mutant(CUDA, "major, minor = device.compute_capability()", "major, minor = device.compute_capabilities()",
           "pycuda method on a local"),
    Mutant(CUDA, "device: pycuda_driver.Device = pycuda_driver.Device(ordinal)",
           "device = pycuda_driver.Device(ordinal)", "annotation dropped from a binding object"),
    # cuda-python
    Mutant(CUDA, "attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, device)",
           "attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR_, device)", "enum member through a local alias"),
    Mutant(CUDA, "return cuda_utils.get_cuda_native_handle", "return cuda_utils.get_native_handle",
           "handle taken with a function that does not exist"),
    Mutant(CUDA, "            self.driver.cuCtxPopCurrent()", "            self.driver.cuCtxPopCurrent(self._context)",
           "argument count"),
)


def copy_repository(dest: Path) -> None:
    for part in COPIED:
        source, target = ROOT / part, dest / part
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target)


def apply(dest: Path, mutant: Mutant) -> None:
    path = dest / mutant.path
    text = path.read_text()
    count = text.count(mutant.before)
    if count != 1:
        raise SystemExit(f"mutant {mutant.before!r} matches {count} places in {mutant.path}: fix the list")
    path.write_text(text.replace(mutant.before, mutant.after))


def run_contract(dest: Path, timeout: float, mypy_cache: Path) -> tuple[bool, str]:
    """(passed, the first failure line): the quick checks, then the mypy checks."""
    env = {**os.environ, "PYTHONPATH": str(dest), "PYTHONDONTWRITEBYTECODE": "1", "EDGECLS_MYPY_CACHE": str(mypy_cache)}
    for selection in (f"not ({MYPY_TESTS} or {SELF_TEST})", MYPY_TESTS):
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-k", selection,
                               "tests/test_api_contract.py"], cwd=dest, env=env, capture_output=True, text=True,
                              timeout=timeout)
        if done.returncode != 0:
            output = done.stdout + done.stderr
            failed = next((line for line in output.splitlines() if line.startswith("FAILED")), "")
            evidence = next((line[1:].strip() for line in output.splitlines() if line.startswith("E ") and (
                "error:" in line or "does not exist" in line or "lacks" in line or "annotate" in line
                or "no supported" in line or "is no " in line or "in no recorded" in line)), "")
            return False, f"{failed} {evidence}".strip()[:300]
    return True, ""


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--only", type=int, action="append", help="Run only mutant N (1-based); repeatable.")
    parser.add_argument("--list", action="store_true", help="List the mutants and exit.")
    parser.add_argument("--json", help="Write the results here as JSON.")
    parser.add_argument("--timeout", type=float, default=600.0, help="Seconds per pytest run (default 600).")
    args = parser.parse_args(argv)
    chosen = [(n, m) for n, m in enumerate(MUTANTS, 1) if not args.only or n in args.only]
    if args.list:
        for number, mutant in chosen:
            print(f"{number:2}. {mutant.path}: {mutant.kind}: {mutant.before.strip()!r} -> {mutant.after.strip()!r}")
        return 0
    with tempfile.TemporaryDirectory(prefix="contract-mypy-cache-") as cache:  # shared: numpy's stubs read once
        return run_mutants(chosen, args, Path(cache))


def run_mutants(chosen: list[tuple[int, Mutant]], args: argparse.Namespace, mypy_cache: Path) -> int:
    with tempfile.TemporaryDirectory(prefix="contract-baseline-") as folder:
        copy_repository(Path(folder))
        passed, failure = run_contract(Path(folder), args.timeout, mypy_cache)
    if not passed:
        print(f"the unmutated contract test fails, so mutants prove nothing: {failure}")
        return 2
    print("unmutated: the contract test passes", flush=True)
    results = []
    for number, mutant in chosen:
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix=f"contract-mutant-{number}-") as folder:
            copy_repository(Path(folder))
            apply(Path(folder), mutant)
            passed, failure = run_contract(Path(folder), args.timeout, mypy_cache)
        results.append({"number": number, "path": mutant.path, "kind": mutant.kind, "before": mutant.before.strip(),
                        "after": mutant.after.strip(), "caught": not passed, "failure": failure,
                        "seconds": round(time.perf_counter() - started, 1)})
        print(f"{number:2}. {'caught  ' if not passed else 'MISSED  '} {mutant.kind}: "
              f"{mutant.after.strip().splitlines()[0][:70]}"
              f"{'  <- ' + failure[:160] if failure else ''}", flush=True)
    caught = sum(result["caught"] for result in results)
    print(f"{caught} of {len(results)} mutants caught by tests/test_api_contract.py")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"caught": caught, "total": len(results), "mutants": results}, indent=1))
    return 0 if caught == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
