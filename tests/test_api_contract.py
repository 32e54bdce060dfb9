"""The TensorRT and CUDA Python APIs as a contract (tools/api/README.md).

Every TensorRT attribute, method and enum member the TensorRT-facing modules use must exist, with the argument
counts they are called with, in each TensorRT version edgecls supports:

- mypy type-checks the modules (apicheck.TENSORRT_MODULES) against stubs of each version: tensorrt-stubs 10.13
  (PyPI, generated from the real bindings), and stubs written from the recorded lists tools/api/tensorrt-*.json
  (8.5.2 / 9.3.0 / 10.3.0 from NVIDIA's pybind sources at those tags, 11.4 from the 11.x sources checked against
  the 11.4 bindings wheel);
- enum members looked up by name (`edgecls.engines.build_options`) are checked against each version's enums;
- cuda-python: every `cuda.bindings` name the CUDA helper uses, with its call's argument count, against the
  installed cuda-bindings (13.x, imported: it needs no GPU) and the recorded 12.9 list;
- pycuda: every `pycuda.driver` name it uses against the names in pycuda's sources at 2022.1 and 2026.1;
- no TensorRT name known to fail at run time on a supported version (trt.nptype on 8.5 with numpy >= 1.24).
- the holes mypy and the name checks leave, closed: pycuda / cuda-python objects held in names (locals, parameters,
  `self.x`, properties) are followed through their class annotations, and an unannotated one fails; a local alias of
  a binding's member is followed; names in `hasattr` / `getattr` guards and the keys of tables looked up by enum
  member name must exist in at least one supported version. tools/api/mutate_contract.py proves each class by
  mutation (`make contract-mutants`).

Nothing here imports TensorRT or stands in for it at run time.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools" / "api"))
import apicheck  # noqa: E402


def _need(what: str, present: bool) -> None:
    """Skip, saying why, when a checker is genuinely absent; in CI (CI=true) that is a failure instead."""
    if present:
        return
    message = f"{what} is not installed (run `make install`, which installs the test extra and the stubs)"
    if os.environ.get("CI"):
        pytest.fail(message + "; CI must run the API contract")
    print(f"SKIP: {message}")
    pytest.skip(message)


def _have_mypy() -> bool:
    try:
        import mypy  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def mypy_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One mypy cache for the module's runs (each version's stubs differ; numpy's, read by every run, do not)."""
    return Path(os.environ.get("EDGECLS_MYPY_CACHE") or tmp_path_factory.mktemp("mypy-cache"))


@pytest.mark.parametrize("version", list(apicheck.TENSORRT_LISTS))
def test_tensorrt_calls_match_recorded_api(version: str, tmp_path: Path, mypy_cache: Path) -> None:
    _need("mypy", _have_mypy())
    stubs = apicheck.write_tensorrt_stubs(apicheck.load_list(version), tmp_path / "stubs")
    code, output = apicheck.run_mypy(apicheck.TENSORRT_MODULES, stubs, tmp_path / "mypy", mypy_cache)
    assert code == 0, f"TensorRT {version} API (tools/api/{apicheck.TENSORRT_LISTS[version]}):\n{output}"


def test_tensorrt_calls_match_tensorrt_stubs(tmp_path: Path, mypy_cache: Path) -> None:
    _need("mypy", _have_mypy())
    site = apicheck.find_tensorrt_stubs()
    _need(f"tensorrt-stubs=={apicheck.TENSORRT_STUBS_VERSION}", site is not None)
    stubs = tmp_path / "stubs"
    repaired = apicheck.install_tensorrt_stubs(site, stubs)
    assert len(repaired) <= 10, f"tensorrt-stubs needed many repairs ({repaired}); is it the pinned version?"
    code, output = apicheck.run_mypy(apicheck.TENSORRT_MODULES, stubs, tmp_path / "mypy", mypy_cache)
    assert code == 0, f"TensorRT 10.13 API (tensorrt-stubs {apicheck.TENSORRT_STUBS_VERSION}):\n{output}"


@pytest.mark.parametrize("version", list(apicheck.TENSORRT_LISTS))
def test_build_option_names_exist(version: str) -> None:
    missing = apicheck.missing_build_option_names(apicheck.load_list(version), version)
    assert not missing, f"build_options({version!r}, ...) names members TensorRT {version} lacks: {missing}"


def test_build_option_names_exist_in_tensorrt_stubs(tmp_path: Path) -> None:
    site = apicheck.find_tensorrt_stubs()
    _need(f"tensorrt-stubs=={apicheck.TENSORRT_STUBS_VERSION}", site is not None)
    repaired = tmp_path / "stubs"
    apicheck.install_tensorrt_stubs(site, repaired)
    api = {"enums": {enum: {"members": dict.fromkeys(apicheck.stub_enum_members(repaired, enum))}
                     for enum in ("NetworkDefinitionCreationFlag", "BuilderFlag")}}
    assert api["enums"]["BuilderFlag"]["members"], "no BuilderFlag members read from tensorrt-stubs"
    missing = apicheck.missing_build_option_names(api, "10.13.0")
    assert not missing, f"build_options('10.13.0', ...) names members TensorRT 10.13 lacks: {missing}"


def test_no_tensorrt_name_known_broken_on_a_supported_version() -> None:
    problems = apicheck.broken_tensorrt_uses(apicheck.TENSORRT_MODULES)
    assert not problems, "\n".join(problems)


def test_checker_finds_a_known_broken_name(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("def dtype(engine, name):\n    import tensorrt as trt\n    return trt.nptype(engine.get_tensor_dtype(name))\n")
    problems = apicheck.broken_tensorrt_uses([str(probe)])
    assert len(problems) == 1 and "nptype" in problems[0] and "numpy 1.24" in problems[0], problems


def test_checker_rejects_a_missing_name(tmp_path: Path) -> None:
    """The contract is only as good as its checker: a call that does not exist, or with one argument too many,
    must fail it (guards against a configuration that silently checks nothing)."""
    _need("mypy", _have_mypy())
    probe = tmp_path / "probe.py"
    probe.write_text(
        "def run(stream: int) -> None:\n"
        "    import tensorrt as trt\n"
        "    context = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(b'').create_execution_context()\n"
        "    context.execute_async_v4(stream)\n"
        "    context.set_tensor_address('x', 0, 1)\n"
    )
    stubs = apicheck.write_tensorrt_stubs(apicheck.load_list("10.3.0"), tmp_path / "stubs")
    code, output = apicheck.run_mypy([str(probe)], stubs, tmp_path / "mypy")
    assert code != 0
    assert '"IExecutionContext" has no attribute "execute_async_v4"' in output, output
    assert "set_tensor_address" in output and "Too many arguments" in output, output


def test_recorded_lists_are_whole() -> None:
    """Each list names where it came from and how to regenerate it, and holds the classes edgecls relies on."""
    for version, name in apicheck.TENSORRT_LISTS.items():
        api = apicheck.load_list(version)
        assert (ROOT / api["generated_by"]).is_file(), name
        assert str(api["version"]).startswith(version.rsplit(".", 1)[0] if version.count(".") > 1 else version)
        for cls in ("Builder", "IBuilderConfig", "Runtime", "ICudaEngine", "IExecutionContext", "OnnxParser"):
            assert cls in api["classes"], f"{name} lacks {cls}"
    for version, name in {**apicheck.CUDA_LISTS, **apicheck.PYCUDA_LISTS}.items():
        recorded = json.loads((apicheck.HERE / name).read_text())
        assert recorded["version"].startswith(version) and (ROOT / recorded["generated_by"]).is_file()


def _cuda_uses() -> list:
    uses: list = []
    for module in apicheck.CUDA_MODULES:
        found, _fallbacks = apicheck.module_uses(module)
        uses += found
    assert uses, f"no cuda.bindings use found in {apicheck.CUDA_MODULES}; has the helper moved?"
    return uses


def test_cuda_bindings_calls_match_installed() -> None:
    try:
        import cuda.bindings  # noqa: F401
    except ImportError:
        _need("cuda-bindings", False)
    problems = apicheck.check_uses_live(_cuda_uses())
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("version", list(apicheck.CUDA_LISTS))
def test_cuda_bindings_calls_match_recorded(version: str) -> None:
    recorded = json.loads((apicheck.HERE / apicheck.CUDA_LISTS[version]).read_text())
    problems = apicheck.check_uses_recorded(_cuda_uses(), recorded)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("version", list(apicheck.PYCUDA_LISTS))
def test_pycuda_calls_match_recorded(version: str) -> None:
    """pycuda is JetPack 5's binding and cannot be installed here: its uses are checked against its own sources."""
    recorded = json.loads((apicheck.HERE / apicheck.PYCUDA_LISTS[version]).read_text())
    uses: list = []
    for module in apicheck.CUDA_MODULES:
        uses += apicheck.module_uses(module, apicheck.PYCUDA_PREFIXES)[0]
    assert {".".join(use.chain) for use in uses} >= {"init", "Device.count", "Context.pop", "mem_alloc"}, uses
    problems = apicheck.check_uses_recorded(uses, recorded)
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------------------- the holes mypy leaves, closed

CUDA_PREFIX_SETS = {"cuda-python": ("cuda.bindings.",), "pycuda": apicheck.PYCUDA_PREFIXES}


@pytest.mark.parametrize("binding", list(CUDA_PREFIX_SETS))
def test_cuda_binding_objects_are_annotated(binding: str) -> None:
    """An object of a binding kept in an unannotated name would have its method calls go unchecked."""
    problems = []
    for module in apicheck.CUDA_MODULES:
        problems += apicheck.unannotated_binding_objects(module, CUDA_PREFIX_SETS[binding])
    assert not problems, "\n".join(problems)


def test_pycuda_objects_are_followed_through_their_annotations() -> None:
    uses = set()
    for module in apicheck.CUDA_MODULES:
        uses |= {".".join(use.chain) for use in apicheck.module_uses(module, apicheck.PYCUDA_PREFIXES)[0]}
    assert {"Device.retain_primary_context", "Stream.synchronize", "Stream.handle", "Context.push",
            "Context.detach", "DeviceAllocation.free", "HostAllocation.free"} <= uses, sorted(uses)


def test_tensorrt_guarded_names_exist_in_a_supported_version() -> None:
    lists = [apicheck.load_list(version) for version in apicheck.TENSORRT_LISTS]
    problems = []
    for module in apicheck.TENSORRT_MODULES:
        for use in apicheck.guarded_names(module, ("tensorrt",)):
            if not any(apicheck.tensorrt_name_exists(api, use.chain) for api in lists):
                problems.append(f"{use}: no supported TensorRT ({', '.join(apicheck.TENSORRT_LISTS)}) has it")
    assert not problems, "\n".join(problems)


def test_cuda_guarded_names_exist_in_a_supported_version() -> None:
    recorded = [json.loads((apicheck.HERE / name).read_text())
                for name in {**apicheck.CUDA_LISTS, **apicheck.PYCUDA_LISTS}.values()]
    problems = []
    for module in apicheck.CUDA_MODULES:
        for prefixes in CUDA_PREFIX_SETS.values():
            for use in apicheck.guarded_names(module, prefixes):
                relevant = [r for r in recorded if use.module in r["modules"]]
                if all(apicheck.check_uses_recorded([use], r) for r in relevant):
                    problems.append(f"{use}: in no recorded release of its binding")
    assert not problems, "\n".join(problems)


def test_tables_of_tensorrt_names_name_real_members() -> None:
    lists = {version: apicheck.load_list(version) for version in apicheck.TENSORRT_LISTS}
    problems = []
    for path, tables in apicheck.NAME_TABLES.items():
        for table, enum in tables.items():
            keys = apicheck.name_table_keys(path, table)
            assert keys, f"{path} has no table {table}"
            problems += [f"{path}: {table}[{key!r}] is no {enum} member of any supported TensorRT" for key in keys
                         if not any(key in api["enums"].get(enum, {}).get("members", {}) for api in lists.values())]
    assert not problems, "\n".join(problems)


def test_every_contract_mutant_still_applies() -> None:
    """tools/api/mutate_contract.py (`make contract-mutants`) proves the contract by mutation; each of its one-line
    bugs must still find its line, once, in the current code (run the script itself to see them caught)."""
    import mutate_contract

    assert len(mutate_contract.MUTANTS) >= 20
    for mutant in mutate_contract.MUTANTS:
        text = (ROOT / mutant.path).read_text()
        assert text.count(mutant.before) == 1, f"{mutant.path}: {mutant.before!r} matches {text.count(mutant.before)}"
        assert mutant.after != mutant.before
