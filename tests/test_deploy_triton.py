"""`edgecls deploy triton`: every config.pbtxt parsed strictly with Triton's own schema (tritonclient's
model_config_pb2), the repository layout Triton expects, plans refused for another device, the output folder never
half-written nor a foreign one overwritten; and the Python-backend models and the ensemble loaded and run by a real
tritonserver (the one nvidia-pytriton's wheel ships), answering like the in-process runtime."""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from google.protobuf import text_format
from PIL import Image
import tritonclient.grpc as grpcclient
from tritonclient.grpc import model_config_pb2  # Triton's own schema (the test extra installs tritonclient)
from tritonclient.utils import InferenceServerException

from edgecls.artifacts import sha256_file
from edgecls.cli import main
from edgecls.errors import EdgeclsError
from edgecls.formats import EngineManifest, ModelMetadata, TritonRepository
from edgecls.runtime import Classifier
from edgecls.runtime.images import decode
from edgecls.serving.repository import Options, PlanTarget, python_model_files, to_pbtxt, write_repository

TIMEOUT_S = 30  # the longest a request to the test server may take

CLASS_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(scope="module")
def export_dir(new2_export) -> Path:
    return new2_export.files["fp32"].parent


def make_plan(folder: Path, onnx_path: Path, batch=(1, 64, 256), dla_core=None) -> Path:
    """A plan file beside the manifest `edgecls build` writes for it. Its bytes are no engine: deploy copies a plan
    and reads its manifest, and never gives it to TensorRT."""
    plan = folder / "new2.plan"
    plan.write_bytes(os.urandom(4096))
    metadata = ModelMetadata.read(onnx_path)
    EngineManifest(tensorrt_version="10.3.0.30", gpu_name="Orin", compute_capability="8.7",
                   onnx_path=str(onnx_path), onnx_sha256=sha256_file(onnx_path), plan_sha256=sha256_file(plan),
                   precision=metadata.precision, batch=dict(zip(("min", "opt", "max"), batch)), model=metadata,
                   dla_core=dla_core).write(plan)
    return plan


def parse_config(path: Path):
    return parse_config_text(path.read_text())


def parse_config_text(text: str):
    """Triton's own schema, strictly: an unknown field or a wrong type is an error."""
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


ORIN = Options(target=PlanTarget(tensorrt="10.3", gpu="Orin"))


def test_every_config_parses_with_tritons_schema_and_says_what_the_files_say(export_dir, tmp_path):
    onnx_files = [export_dir / "new2.onnx", export_dir / "new2.fp16.onnx", export_dir / "new2.int8.onnx"]
    plan = make_plan(tmp_path, onnx_files[2])
    code, output = cli("deploy", "triton", *map(str, onnx_files), str(plan), "-o", str(tmp_path / "repo"),
                       "--target-trt", "10.3", "--target-gpu", "orin", "--ensemble", "--preferred-batch-sizes", "8,32",
                       "--queue-delay-us", "250", "--instances", "2", "--top-k", "3")
    assert code == 0, output
    repo = tmp_path / "repo"
    configs = {path.parent.name: parse_config(path) for path in repo.glob("*/config.pbtxt")}
    given = dict(zip(["new2_fp32_onnx", "new2_fp16_onnx", "new2_int8_onnx", "new2_int8_trt"], [*onnx_files, plan]))
    inference = list(given)
    assert sorted(configs) == sorted([*inference, *(f"{n}_ensemble" for n in inference), "new2_preprocess",
                                      "new2_postprocess"])
    assert TritonRepository.read(repo / TritonRepository.FILE_NAME).models.keys() == configs.keys()
    crop = ModelMetadata.read(onnx_files[0]).preprocess.crop_size
    for name in inference:
        config = configs[name]
        assert config.name == name
        stored = repo / name / "1" / ("model.plan" if name.endswith("trt") else "model.onnx")
        assert stored.read_bytes() == given[name].read_bytes()
        assert (repo / name / "labels.txt").read_text().splitlines() == CLASS_NAMES
        [tensor_in], [tensor_out] = config.input, config.output
        assert (tensor_in.name, list(tensor_in.dims), tensor_in.data_type) == ("images", [3, crop, crop],
                                                                              model_config_pb2.TYPE_FP32)
        assert (tensor_out.name, list(tensor_out.dims), tensor_out.label_filename) == ("logits", [10], "labels.txt")
        assert list(config.dynamic_batching.preferred_batch_size) == [8, 32]
        assert config.dynamic_batching.max_queue_delay_microseconds == 250
        [group] = config.instance_group
        assert group.count == 2
        kinds = model_config_pb2.ModelInstanceGroup
        if name.endswith("trt"):
            assert (config.platform, config.max_batch_size, group.kind) == ("tensorrt_plan", 256, kinds.KIND_GPU)
        else:
            assert (config.platform, config.max_batch_size, group.kind) == ("onnxruntime_onnx", 64, kinds.KIND_CPU)
        ensemble = configs[f"{name}_ensemble"]
        assert ensemble.platform == "ensemble" and ensemble.max_batch_size == config.max_batch_size
        steps = ensemble.ensemble_scheduling.step
        assert [step.model_name for step in steps] == ["new2_preprocess", name, "new2_postprocess"]
        # every tensor a step reads is the ensemble's input or another step's output
        made = {"image"} | {value for step in steps for value in step.output_map.values()}
        assert all(value in made for step in steps for value in step.input_map.values())
        assert [(o.name, list(o.dims)) for o in ensemble.output] == [("logits", [10]), ("probabilities", [10]),
                                                                     ("classes", [3])]
        # every output comes from the last step and feeds none: Triton's pruning of the steps a request does not
        # need then keeps what each output needs
        outputs = {o.name for o in ensemble.output}
        assert set(steps[-1].output_map.values()) == outputs
        assert not outputs & {value for step in steps for value in step.input_map.values()}
    pre, post = configs["new2_preprocess"], configs["new2_postprocess"]
    assert pre.backend == post.backend == "python"
    assert pre.input[0].data_type == model_config_pb2.TYPE_STRING and list(pre.output[0].dims) == [3, crop, crop]
    assert pre.max_batch_size == 256  # the largest of the models it feeds
    for name, config in configs.items():  # every model carries its export's own record, not a restatement
        recorded = ModelMetadata.from_json(config.parameters["edgecls"].string_value, name)
        source = given.get(name.replace("_ensemble", ""), onnx_files[0])
        assert recorded == ModelMetadata.read(source if source.suffix == ".onnx" else onnx_files[2]), name
    assert post.parameters["edgecls_top_k"].string_value == "3"
    for name in ("new2_preprocess", "new2_postprocess"):
        assert (repo / name / "1" / "model.py").is_file()
        assert all((repo / name / "1" / relative).is_file() for relative in python_model_files())


def test_pbtxt_strings_survive_any_characters():
    """Class names, metadata JSON and paths may hold quotes, backslashes and any Unicode."""
    text = 'caf\u00e9 "quoted" back\\slash \u732b\ttab'
    config = parse_config_text(to_pbtxt({"name": "m", "parameters": [{"key": "k", "value": {"string_value": text}}]}))
    assert config.parameters["k"].string_value == text


def test_onnx_on_gpu_and_onnx_in_the_python_backend(export_dir, tmp_path):
    write_repository([export_dir / "new2.onnx"], tmp_path / "gpu", Options(onnx_device="gpu", max_batch=16))
    config = parse_config(tmp_path / "gpu" / "new2_fp32_onnx" / "config.pbtxt")
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert config.max_batch_size == 16 and not config.dynamic_batching.preferred_batch_size
    write_repository([export_dir / "new2.onnx"], tmp_path / "py", Options(onnx_backend="python"))
    config = parse_config(tmp_path / "py" / "new2_fp32_onnx" / "config.pbtxt")
    assert (config.backend, config.platform) == ("python", "")
    assert config.parameters["edgecls_role"].string_value == "onnxruntime"
    assert (tmp_path / "py" / "new2_fp32_onnx" / "1" / "model.onnx").is_file()


def test_the_python_models_carry_what_they_import(export_dir, tmp_path):
    """The copy of edgecls beside model.py imports on its own (no other edgecls on the path), without torch or onnx."""
    write_repository([export_dir / "new2.onnx"], tmp_path / "repo", Options(onnx_backend="python", ensemble=True))
    version = tmp_path / "repo" / "new2_preprocess" / "1"
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import edgecls.runtime.images, edgecls.runtime.onnx_backend, "
            "edgecls.formats; assert edgecls.__file__.startswith(sys.argv[1]), edgecls.__file__; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'onnx')); assert not bad, bad")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    subprocess.run([sys.executable, "-c", code, str(version)], check=True, env=env, cwd=tmp_path)


# ----------------------------------------------------------------------------------------------- plans and targets

def test_a_plan_is_refused_for_another_device_in_one_line(export_dir, tmp_path):
    plan = make_plan(tmp_path, export_dir / "new2.onnx")  # TensorRT 10.3.0.30 on Orin, compute 8.7
    out = str(tmp_path / "repo")
    cases = {("10.3.0.26", "Orin"): "the TensorRT version differs",
             ("8.6", "Orin"): "the TensorRT version differs",
             ("10.3", "NVIDIA A100-SXM4-40GB"): "the GPU differs",
             ("10.4", "Xavier"): "the TensorRT version and the GPU differ"}
    for (version, gpu), differs in cases.items():
        code, output = cli("deploy", "triton", str(plan), "-o", out, "--target-trt", version, "--target-gpu", gpu)
        assert code == 2 and output.count("\n") == 1 and output.startswith("error: "), output
        assert differs in output and "TensorRT 10.3.0.30 for Orin (compute 8.7)" in output and "rebuild" in output
    code, output = cli("deploy", "triton", str(plan), "-o", out, "--target-trt", "10.3.0.30", "--target-gpu", "Orin",
                       "--target-compute", "7.2")
    assert code == 2 and "the compute capability differs" in output
    code, output = cli("deploy", "triton", str(plan), "-o", out)
    assert code == 2 and "--target-trt VERSION --target-gpu NAME" in output, output
    assert not Path(out).exists()  # nothing written by a refused deploy
    code, output = cli("deploy", "triton", str(plan), "-o", out, "--target-trt", "10.3.0", "--target-gpu", "ORIN",
                       "--target-compute", "8.7")
    assert code == 0, output


def test_plan_batch_limits(export_dir, tmp_path):
    plan = make_plan(tmp_path, export_dir / "new2.onnx", batch=(1, 8, 32))
    with pytest.raises(EdgeclsError, match="--max-batch 64 is above the 32 images"):
        write_repository([plan], tmp_path / "a", Options(max_batch=64, target=ORIN.target))
    with pytest.raises(EdgeclsError, match="--preferred-batch-sizes 64 is above the largest batch"):
        write_repository([plan], tmp_path / "a", Options(preferred_batch=(16, 64), target=ORIN.target))
    plan = make_plan(tmp_path, export_dir / "new2.onnx", batch=(8, 8, 8), dla_core=0)
    with pytest.raises(EdgeclsError, match="accepts batches of 8 to 8 images.*a DLA plan takes one batch size"):
        write_repository([plan], tmp_path / "a", ORIN)
    assert not (tmp_path / "a").exists()


def test_a_changed_plan_or_a_foreign_file_is_refused(export_dir, tmp_path):
    plan = make_plan(tmp_path, export_dir / "new2.onnx")
    plan.write_bytes(b"other bytes")
    with pytest.raises(EdgeclsError, match="does not match its manifest"):
        write_repository([plan], tmp_path / "a", ORIN)
    (tmp_path / "weights.pt").write_bytes(b"x")
    code, output = cli("deploy", "triton", str(tmp_path / "weights.pt"), "-o", str(tmp_path / "a"))
    assert code == 2 and "not from this file" in output
    code, output = cli("deploy", "triton", str(export_dir / "new2.onnx"), str(export_dir / "new2.onnx"),
                       "-o", str(tmp_path / "a"))
    assert code == 2 and "would all be Triton model new2_fp32_onnx" in output


# ----------------------------------------------------------------------------------------------- the output folder

def test_the_output_folder_is_replaced_only_when_deploy_wrote_it(export_dir, tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    code, output = cli("deploy", "triton", str(export_dir / "new2.onnx"), "-o", str(foreign))
    assert code == 2 and "is not an edgecls model repository" in output and output.count("\n") == 1
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    (tmp_path / "file").write_text("x")
    code, output = cli("deploy", "triton", str(export_dir / "new2.onnx"), "-o", str(tmp_path / "file"))
    assert code == 2 and "is a file" in output

    repo = tmp_path / "repo"
    (repo).mkdir()  # an empty folder is taken
    write_repository([export_dir / "new2.onnx", export_dir / "new2.fp16.onnx"], repo)
    assert {p.name for p in repo.iterdir()} == {"new2_fp32_onnx", "new2_fp16_onnx", TritonRepository.FILE_NAME}
    write_repository([export_dir / "new2.int8.onnx"], repo)  # its own repository: replaced whole
    assert {p.name for p in repo.iterdir()} == {"new2_int8_onnx", TritonRepository.FILE_NAME}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "mine", "repo"]  # no staging folder left

    (repo / TritonRepository.FILE_NAME).write_text("{not json")  # a damaged record: deploy no longer knows the folder
    code, output = cli("deploy", "triton", str(export_dir / "new2.onnx"), "-o", str(repo))
    assert code == 2 and output.count("\n") == 1 and "unreadable" in output and "remove its folder" in output, output
    assert (repo / "new2_int8_onnx" / "config.pbtxt").is_file()
    (tmp_path / "link").symlink_to(repo)
    code, output = cli("deploy", "triton", str(export_dir / "new2.onnx"), "-o", str(tmp_path / "link"))
    assert code == 2 and "is a symbolic link" in output


def test_a_record_of_another_kind_is_not_taken_for_a_repository(export_dir, tmp_path):
    folder = tmp_path / "repo"
    folder.mkdir()
    (folder / TritonRepository.FILE_NAME).write_text('{"format": "edgecls-calibration", "format_version": 1}')
    with pytest.raises(EdgeclsError, match="was not written by `edgecls deploy triton`; choose another output folder"):
        write_repository([export_dir / "new2.onnx"], folder)
    assert [p.name for p in folder.iterdir()] == [TritonRepository.FILE_NAME]


def test_a_failure_while_writing_leaves_the_old_repository_whole(export_dir, tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    write_repository([export_dir / "new2.onnx"], repo)
    before = {p.relative_to(repo): p.read_bytes() for p in repo.rglob("*") if p.is_file()}

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("edgecls.serving.repository._labels", full_disk)
    with pytest.raises(EdgeclsError, match="no space left on the disk holding .*files already there are unchanged"):
        write_repository([export_dir / "new2.fp16.onnx"], repo)
    assert {p.relative_to(repo): p.read_bytes() for p in repo.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]


# ----------------------------------------------------------------------------------------------- a real tritonserver

def serving_python() -> Path:
    """The interpreter of the serving venv (`make serve-venv`: ./.venv-serve, or $EDGECLS_SERVE_PYTHON), which has
    nvidia-pytriton (its tritonserver, with the Python backend), numpy < 2, onnxruntime and Pillow. Skips only where
    that venv cannot be made (no system python3.10-3.12, for which PyTriton ships the Python-backend stub)."""
    named = os.environ.get("EDGECLS_SERVE_PYTHON")
    python = Path(named) if named else Path(__file__).resolve().parents[1] / ".venv-serve" / "bin" / "python"
    if python.is_file():
        return python
    if not any(Path(f"/usr/bin/python3.{minor}").is_file() for minor in (10, 11, 12)):
        pytest.skip("no system python3.10-3.12, so no serving venv (PyTriton's tritonserver) can be made here")
    pytest.fail(f"no serving venv at {python}: run `make serve-venv`, or set EDGECLS_SERVE_PYTHON to its python")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class TritonServer:
    """PyTriton's tritonserver on a model repository, loopback only, in its own process group, always stopped."""

    def __init__(self, python: Path, repository: Path, workdir: Path) -> None:
        found = subprocess.run([str(python), "-c", "import pytriton, sys; print(pytriton.__path__[0]); "
                                "print(f'{sys.version_info[0]}.{sys.version_info[1]}')"],
                               capture_output=True, text=True, check=True).stdout.split()
        package, version = Path(found[0]), found[1]
        backends = workdir / "backends"
        shutil.copytree(package / "tritonserver" / "backends", backends)
        shutil.copy(package / "tritonserver" / "python_backend_stubs" / version / "triton_python_backend_stub",
                    backends / "python")
        self.port = free_port()
        env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
        # The Python backend's stub finds its Python (and site-packages) through the first python3 on PATH.
        env["PATH"] = f"{python.parent}:{env['PATH']}"
        env["LD_LIBRARY_PATH"] = str(package.parent / "nvidia_pytriton.libs")
        self.log = workdir / "tritonserver.log"
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [str(package / "tritonserver" / "bin" / "tritonserver"), f"--model-repository={repository}",
                 f"--backend-directory={backends}", "--allow-http=false", "--allow-metrics=false",
                 "--grpc-address=127.0.0.1", f"--grpc-port={self.port}", "--exit-timeout-secs=5"],
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def wait_ready(self, client, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"tritonserver exited ({self.process.returncode}):\n{self.log.read_text()}")
            try:
                if client.is_server_ready():
                    return
            except Exception:  # noqa: BLE001 - not listening yet
                pass
            time.sleep(0.5)
        raise AssertionError(f"tritonserver not ready in {timeout} s:\n{self.log.read_text()}")

    def stop(self) -> None:
        """SIGTERM to the process group (the server and its Python-backend stubs), SIGKILL if it lingers."""
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def client(export_dir, tmp_path_factory):
    """A repository with the fp32 ONNX run by edgecls's runtime in the Python backend (PyTriton's tritonserver has no
    onnxruntime backend) and the ensemble, served by a real tritonserver on a free loopback port."""
    python = serving_python()
    root = tmp_path_factory.mktemp("triton")
    write_repository([export_dir / "new2.onnx"], root / "repo",
                     Options(onnx_backend="python", ensemble=True, top_k=3, preferred_batch=(4,), max_batch=8,
                             queue_delay_us=300_000))  # long enough for concurrent requests to be batched
    server = TritonServer(python, root / "repo", root)
    try:
        connection = grpcclient.InferenceServerClient(f"127.0.0.1:{server.port}")
        server.wait_ready(connection)
        yield connection
        connection.close()
    finally:
        server.stop()
        try:
            os.killpg(server.process.pid, 0)
            left = True
        except ProcessLookupError:
            left = False
        assert not left, "tritonserver's process group is still running"


def encoded(image: np.ndarray, format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=format)
    return buffer.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels and holds none: the decoder must refuse it from its header alone."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + \
        chunk(b"IEND", b"")


def bytes_input(blobs: list[bytes]):
    tensor = grpcclient.InferInput("image", [len(blobs), 1], "BYTES")
    tensor.set_data_from_numpy(np.array(blobs, dtype=np.object_).reshape(-1, 1))
    return tensor


def test_the_ensemble_answers_encoded_images_like_the_runtime(client, export_dir, tiny_cifar):
    for name in ("new2_preprocess", "new2_fp32_onnx", "new2_postprocess", "new2_fp32_onnx_ensemble"):
        assert client.is_model_ready(name), name
    rng = np.random.default_rng(0)
    images = [*tiny_cifar.test_images[:6],  # 32 x 32 RGB
              rng.integers(0, 256, (45, 70, 3), dtype=np.uint8),  # another size: resized and cropped
              rng.integers(0, 256, (40, 40), dtype=np.uint8)]  # gray
    blobs = [encoded(image) for image in images]
    result = client.infer("new2_fp32_onnx_ensemble", [bytes_input(blobs)], client_timeout=TIMEOUT_S)
    with Classifier.load(export_dir / "new2.onnx") as classifier:
        expected = classifier.classify([decode(blob) for blob in blobs])
    np.testing.assert_allclose(result.as_numpy("logits"), expected.logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected.probabilities, rtol=1e-5, atol=1e-6)
    names = [[name.decode() for name in row] for row in result.as_numpy("classes")]
    assert names == [[name for name, _ in row] for row in expected.top_k(3)]
    # One output alone (Triton prunes the steps it does not need), and Triton's own classification extension, which
    # reads labels.txt (label_filename): the same names, as "score:index:label".
    alone = client.infer("new2_fp32_onnx_ensemble", [bytes_input(blobs)], client_timeout=TIMEOUT_S,
                         outputs=[grpcclient.InferRequestedOutput("classes")])
    assert [[name.decode() for name in row] for row in alone.as_numpy("classes")] == names
    labelled = client.infer("new2_fp32_onnx_ensemble", [bytes_input(blobs)], client_timeout=TIMEOUT_S,
                            outputs=[grpcclient.InferRequestedOutput("logits", class_count=2)])
    top = [[entry.decode().split(":")[2] for entry in row] for row in labelled.as_numpy("logits")]
    assert top == [[name for name, _ in row] for row in expected.top_k(2)]


def test_a_bad_image_is_answered_with_its_reason_and_the_next_request_is_served(client, export_dir, tiny_cifar):
    bad = bytes_input([encoded(tiny_cifar.test_images[0]), b"not an image"])
    with pytest.raises(InferenceServerException, match="cannot decode image 1 of the request"):
        client.infer("new2_fp32_onnx_ensemble", [bad], client_timeout=TIMEOUT_S)
    bomb = "image 0 of the request is 9000x9000 pixels, more than the 64 megapixels"  # refused from its header
    with pytest.raises(InferenceServerException, match=bomb):
        client.infer("new2_fp32_onnx_ensemble", [bytes_input([png_header(9000, 9000)])],
                     client_timeout=TIMEOUT_S)
    good = client.infer("new2_fp32_onnx_ensemble", [bytes_input([encoded(tiny_cifar.test_images[1])])],
                        client_timeout=TIMEOUT_S)
    with Classifier.load(export_dir / "new2.onnx") as classifier:
        expected = classifier.classify(tiny_cifar.test_images[1:2])
    assert good.as_numpy("classes")[0][0].decode() == expected.names[0]


def executions(client, model: str) -> tuple[int, int]:
    """How many requests the model has answered and in how many runs (Triton's statistics)."""
    [stats] = client.get_inference_statistics(model).model_stats
    return stats.inference_stats.success.count, stats.execution_count


def test_the_model_answers_preprocessed_tensors_and_batches_them(client, export_dir, tiny_cifar):
    with Classifier.load(export_dir / "new2.onnx") as classifier:
        batch = classifier.preprocess(tiny_cifar.test_images[:8])
        expected = classifier.run_preprocessed(batch)
    tensor = grpcclient.InferInput("images", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch)
    logits = client.infer("new2_fp32_onnx", [tensor], client_timeout=TIMEOUT_S).as_numpy("logits")
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
    # four requests of two images at once: Triton batches them (preferred size 4), each gets its own rows back
    before = executions(client, "new2_fp32_onnx")
    answers: dict[int, np.ndarray] = {}

    def answer(index: int):
        return lambda result, error: answers.__setitem__(index, error if error else result.as_numpy("logits"))

    for index in range(4):
        part = grpcclient.InferInput("images", [2, *batch.shape[1:]], "FP32")
        part.set_data_from_numpy(batch[2 * index : 2 * index + 2])
        client.async_infer("new2_fp32_onnx", [part], answer(index), client_timeout=TIMEOUT_S)
    deadline = time.monotonic() + TIMEOUT_S
    while len(answers) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    for index in range(4):
        np.testing.assert_allclose(answers[index], expected[2 * index : 2 * index + 2], rtol=1e-5, atol=1e-5)
    requests, runs = (now - then for now, then in zip(executions(client, "new2_fp32_onnx"), before))
    assert requests == 4 and runs < 4, (requests, runs)
    # over the model's max_batch_size (8): refused by Triton itself, naming the limit
    tensor = grpcclient.InferInput("images", [9, *batch.shape[1:]], "FP32")
    tensor.set_data_from_numpy(np.concatenate([batch, batch[:1]]))
    with pytest.raises(InferenceServerException, match="batch-size must be <= 8"):
        client.infer("new2_fp32_onnx", [tensor], client_timeout=TIMEOUT_S)
