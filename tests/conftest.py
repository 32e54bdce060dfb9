"""Shared fixtures: a small synthetic CIFAR-like data set and briefly trained checkpoints of each model."""

from __future__ import annotations

import json
import os
import pickle
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import pytest
import tqdm
from PIL import Image

from edgecls.data import Cifar10
from edgecls.errors import EdgeclsError

if TYPE_CHECKING:
    from edgecls.export import ExportReport
    from edgecls.formats import ModelMetadata

# mutmut forks a child per mutant from this process: tqdm's monitor thread and its multiprocessing lock, made by the
# parent's first progress bar, would be copied mid-state into the child and can hang it. A plain thread lock and no
# monitor thread fork cleanly.
tqdm.tqdm.monitor_interval = 0
tqdm.tqdm.set_lock(threading.RLock())

CLASS_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def synthetic_cifar(train_per_class: int = 40, test_per_class: int = 10, seed: int = 0) -> Cifar10:
    """Each class is a smooth random colour pattern; images are noisy, shifted copies of it, so it is learnable."""
    rng = np.random.default_rng(seed)
    patterns = rng.uniform(40, 215, size=(10, 4, 4, 3))
    patterns = patterns.repeat(8, axis=1).repeat(8, axis=2)  # 32 x 32 blocks

    def draw(per_class: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.repeat(np.arange(10), per_class)
        shifts = rng.integers(-2, 3, size=(len(labels), 2))
        images = np.stack([np.roll(patterns[c], tuple(s), axis=(0, 1)) for c, s in zip(labels, shifts)])
        images = images + rng.normal(0, 20, size=images.shape)
        order = rng.permutation(len(labels))
        return np.clip(images, 0, 255).astype(np.uint8)[order], labels[order].astype(np.int64)

    train_images, train_labels = draw(train_per_class)
    test_images, test_labels = draw(test_per_class)
    return Cifar10(train_images=train_images, train_labels=train_labels, test_images=test_images,
                   test_labels=test_labels, class_names=list(CLASS_NAMES), source="synthetic")


def write_image_folder(data: Cifar10, root: Path, suffix: str = ".png") -> Path:
    for split, images, labels in (("train", data.train_images, data.train_labels), ("test", data.test_images, data.test_labels)):
        for index, (image, label) in enumerate(zip(images, labels)):
            folder = root / split / data.class_names[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{index:05d}{suffix}")
    return root


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keep the decoded-data cache of the tests out of the user's ~/.cache."""
    os.environ["EDGECLS_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def tiny_cifar() -> Cifar10:
    return synthetic_cifar()


@pytest.fixture(scope="session")
def tiny_data_dir(tiny_cifar: Cifar10, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny_cifar as a PNG image-folder tree (lossless, so loading it gives tiny_cifar's exact pixels)."""
    return write_image_folder(tiny_cifar, tmp_path_factory.mktemp("tiny_data"))


@pytest.fixture(scope="session")
def small_cifar() -> Cifar10:
    """A quarter of tiny_cifar's size (10 training and 4 test images a class), for the tests whose behaviour does not
    depend on how much a model learns (resuming, refusals, files written, steps counted): a CPU epoch on it costs a
    fifth of one on tiny_cifar."""
    return synthetic_cifar(train_per_class=10, test_per_class=4, seed=1)


@pytest.fixture(scope="session")
def small_data_dir(small_cifar: Cifar10, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """small_cifar as a PNG image-folder tree (its exact pixels, like tiny_data_dir)."""
    return write_image_folder(small_cifar, tmp_path_factory.mktemp("small_data"))


def made_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], Any]) -> Any:
    """`build(folder)`, run once for the whole test run, even when pytest-xdist splits it over several processes: the
    first process to ask builds it under a file lock, in a folder all of them share, and leaves the result pickled
    there; the others wait for it and read it. (Under xdist each worker has its own basetemp; their parent is the
    run's.)"""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / f"shared-{name}"
    with FileLock(f"{root}.lock"):
        result = root / "result.pickle"
        if result.is_file():
            return pickle.loads(result.read_bytes())
        root.mkdir(exist_ok=True)
        value = build(root)
        result.write_bytes(pickle.dumps(value))
        return value


@pytest.fixture(scope="session")
def trained_checkpoint(tiny_cifar: Cifar10, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Factory: the path of a checkpoint of `model_name` trained for a few CPU epochs on tiny_cifar (made once per run,
    shared by the xdist workers: read only)."""
    from edgecls.train import TrainRequest, train

    made: dict[str, Path] = {}

    def build(model_name: str, out: Path) -> Path:
        request = TrainRequest(model_name, epochs=3, batch_size=50, lr=0.05, val_split=40, device="cpu", out_dir=out,
                               progress=False)
        return train(request, tiny_cifar).checkpoint

    def make(model_name: str = "new2") -> Path:
        if model_name not in made:
            made[model_name] = made_once(tmp_path_factory, f"ckpt_{model_name}", lambda out: build(model_name, out))
        return made[model_name]

    return make


@pytest.fixture(scope="session")
def exported_models(trained_checkpoint: Callable[[str], Path], tiny_cifar: Cifar10,
                    tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], "ExportReport"]:
    """Factory: the fp32 + fp16 + int8 (trt) export of a briefly trained model on tiny_cifar, made once per model
    for the whole run (shared by the xdist workers). Tests only read these files; a test that changes one works on a
    copy."""
    from edgecls.export import ExportRequest, export_model
    from edgecls.quantize import CalibrationSettings

    made: dict[str, "ExportReport"] = {}

    def build(model_name: str, root: Path) -> "ExportReport":
        request = ExportRequest(trained_checkpoint(model_name), root / "export", fp16=True, int8=True,
                                calibration=CalibrationSettings(size=200), calibration_dir=root / "calibration")
        return export_model(request, data=tiny_cifar, progress=False)

    def make(model_name: str) -> "ExportReport":
        if model_name not in made:
            made[model_name] = made_once(tmp_path_factory, f"export_{model_name}", lambda root: build(model_name, root))
        return made[model_name]

    return make


@pytest.fixture(scope="session")
def new2_export(exported_models: Callable[[str], "ExportReport"]) -> "ExportReport":
    """The shared export of new2: `.files[precision]`, `.reference` (the .npz), all in one export/ folder."""
    return exported_models("new2")


def edit_json(record: dict, dotted: str, value: Any) -> dict:
    """`record` (a copy) with the field at `dotted` ("throughput.images_per_s", "layers.0.sqnr_db") set to `value`, or
    removed when `value` is ...."""
    record = json.loads(json.dumps(record))
    *parents, last = dotted.split(".")
    inner = record
    for key in parents:
        inner = inner[int(key)] if isinstance(inner, list) else inner[key]
    if value is ...:
        del inner[last]
    else:
        inner[int(last) if isinstance(inner, list) else last] = value
    return record


@pytest.fixture
def edited() -> Callable[[dict, str, Any], dict]:
    """`edit_json`: a JSON record with one field changed or removed, as a person editing the file would."""
    return edit_json



# ----------------------------------------------------------------------------------------------- shared helpers
# Plain functions that test files import (`from conftest import refusal`), and fixtures they share.

def refusal(call: Callable[..., Any], *args: Any) -> str:
    """The one-line message of the EdgeclsError that `call(*args)` raises."""
    with pytest.raises(EdgeclsError) as info:
        call(*args)
    message = str(info.value)
    assert "\n" not in message and message
    return message


def run_cli(*args: str) -> tuple[int, str]:
    """`edgecls ARGS...` in this process: its exit code and its output (stdout and stderr together)."""
    from click.testing import CliRunner

    from edgecls.cli import main

    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def use_private_cache(monkeypatch: pytest.MonkeyPatch, folder: Path) -> Path:
    """Point edgecls's data cache at `folder` and forget any inherited $EDGECLS_DATA."""
    monkeypatch.setenv("EDGECLS_CACHE", str(folder))
    monkeypatch.delenv("EDGECLS_DATA", raising=False)
    return folder


@pytest.fixture(scope="module")
def export_dir(new2_export: "ExportReport") -> Path:
    """The shared export/ folder of new2 (fp32, fp16, int8 and the reference), made from tiny_cifar in memory: read
    only."""
    return new2_export.files["fp32"].parent


GOLDEN = Path(__file__).parent / "golden"


def assert_golden(text: str, name: str, what: str) -> None:
    """`text` equals the committed tests/golden/`name` (`what` says what it is in the failure, which shows the first
    lines of a unified diff). EDGECLS_UPDATE_GOLDEN=1 rewrites the file instead, for an intended change."""
    import difflib
    import os

    expected_path = GOLDEN / name
    if os.environ.get("EDGECLS_UPDATE_GOLDEN") == "1":
        expected_path.parent.mkdir(exist_ok=True)
        expected_path.write_text(text, encoding="utf-8")
    expected = expected_path.read_text(encoding="utf-8")
    if text != expected:
        diff = "".join(list(difflib.unified_diff(expected.splitlines(True), text.splitlines(True), str(expected_path),
                                                 f"{what} now", n=1))[:80])
        pytest.fail(f"the {what} differs from {expected_path} (after an intended change, regenerate with "
                    f"EDGECLS_UPDATE_GOLDEN=1 and review the diff):\n{diff}", pytrace=False)


def save_graph(nodes: list, initializers: list, meta: "ModelMetadata", path: Path) -> Path:
    """`nodes` as an edgecls-style graph (float input `meta.input_name` N x 3 x 28 x 28, output `meta.output_name`
    N x 10) carrying `meta`, written to `path` (its folder made if new)."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info(meta.input_name, TensorProto.FLOAT, ["batch", 3, 28, 28])],
        [helper.make_tensor_value_info(meta.output_name, TensorProto.FLOAT, ["batch", 10])], initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta.embed(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    return path
