"""edgecls serve on a real Triton Inference Server (nvidia-pytriton, in the serving venv), on free loopback ports:
answers identical to the in-process runtime over HTTP and gRPC, in both request forms; bad requests answered with
their reason and the server unharmed; dynamic batching seen in Triton's metrics; bench --server's gate and JSON;
a server killed under load; refusals before any server starts; every process ended with its test.

One server serves the whole module (starting one takes seconds); the tests that need a server of their own start
a small one and end it themselves.
"""

from __future__ import annotations

import io
import json
import signal
import socket
import struct
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from edgecls.cli import main
from edgecls.engines import unavailable_reason
from edgecls.runtime import Classifier
from edgecls.serving import interpreter
from edgecls.serving.client import (LoadLevel, ServedModel, ServerError, batch_counters, batching_between,
                                    parse_server, run_load)
from edgecls.serving.process import ServerProcess

MAX_BATCH = 16


def _serving_problem() -> str | None:
    python = interpreter.candidate()
    if python is None:
        return f"no serving interpreter here ({interpreter.FIX})"
    return interpreter.problem(interpreter.probe(python))


PROBLEM = _serving_problem()
pytestmark = pytest.mark.skipif(PROBLEM is not None, reason=f"edgecls serve cannot run here: {PROBLEM}")


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("EDGECLS_CACHE", str(tmp_path_factory.getbasetemp() / "serve_cache"))
    monkeypatch.delenv("EDGECLS_DATA", raising=False)


@pytest.fixture(scope="module")
def artifact(new2_export) -> Path:
    return new2_export.files["fp32"]


@pytest.fixture(scope="module")
def server(artifact):
    """The module's server: small batches, a queue delay long enough that concurrent requests batch. Stopped with
    SIGINT at the end of the module: exit code 0 and nothing of it left running."""
    process = ServerProcess([str(artifact), "--max-batch", str(MAX_BATCH), "--preferred-batch-sizes", "4,8",
                             "--queue-delay-us", "2000", "--top-k", "2"])
    yield process
    code = process.stop(signal.SIGINT)
    assert code == 0, process.output_tail()
    assert process.group_processes() == []


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def bomb_png(width: int = 9_000, height: int = 9_000) -> bytes:
    """A small PNG whose header claims width x height pixels (81 megapixels): refused from the header alone."""
    data = bytearray(png(np.zeros((8, 8, 3), np.uint8)))
    ihdr = 8 + 8  # signature, then length and type of the IHDR chunk
    data[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr - 4 : ihdr + 13]))
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", crc)
    return bytes(data)


def expected(artifact: Path, images: np.ndarray):
    with Classifier.load(artifact) as classifier:
        return classifier.classify(images), classifier.preprocess(images), classifier.metadata


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_served_answers_are_the_runtime_answers(server, artifact, tiny_cifar, protocol):
    images = tiny_cifar.test_images[:MAX_BATCH]
    predictions, inputs, metadata = expected(artifact, images)
    with ServedModel(parse_server(getattr(server, protocol)), "new2") as served:
        served_metadata, config = served.metadata()
        assert served_metadata == metadata  # names and preprocessing from the artifact's own metadata
        assert config["max_batch_size"] == MAX_BATCH
        out = served.infer(metadata.input_name, inputs, outputs=("logits", "probabilities", "classes"))
    np.testing.assert_allclose(out["logits"], predictions.logits, rtol=0, atol=1e-5)
    np.testing.assert_allclose(out["probabilities"], predictions.probabilities, rtol=0, atol=1e-6)
    assert [[name.decode() for name in row] for row in out["classes"]] == \
        [[name for name, _ in ranked] for ranked in predictions.top_k(2)]


def test_encoded_images_are_decoded_by_the_one_decoder(server, artifact, tiny_cifar):
    images = tiny_cifar.test_images[:5]
    predictions, _, _ = expected(artifact, images)
    jpeg = io.BytesIO()
    Image.fromarray(np.kron(images[0], np.ones((3, 3, 1), np.uint8))).save(jpeg, format="JPEG")  # 96 x 96: resized
    encoded = np.array([[png(image)] for image in images] + [[jpeg.getvalue()]], dtype=object)
    with ServedModel(parse_server(server.grpc), "new2_image") as served:
        out = served.infer("image", encoded, outputs=("logits", "classes"))
    np.testing.assert_allclose(out["logits"][:5], predictions.logits, rtol=0, atol=1e-5)
    with Classifier.load(artifact) as classifier:  # the large JPEG: what the runtime answers for the same file
        from edgecls.runtime.images import decode

        np.testing.assert_allclose(out["logits"][5], classifier.logits(decode(jpeg.getvalue()))[0], atol=1e-5)


def test_bad_requests_are_refused_with_their_reason_and_harm_nothing(server, artifact, tiny_cifar):
    good = tiny_cifar.test_images[:3]
    predictions, inputs, metadata = expected(artifact, good)
    tensors = ServedModel(parse_server(server.http), "new2")
    images = ServedModel(parse_server(server.grpc), "new2_image")
    bad = [
        (tensors, metadata.input_name, inputs.astype(np.float64), "FP64"),
        (tensors, metadata.input_name, inputs[:, :, :27], "unexpected shape"),
        (tensors, metadata.input_name, np.zeros((MAX_BATCH + 1, *inputs.shape[1:]), np.float32),
         f"batch-size must be <= {MAX_BATCH}"),
        (tensors, metadata.input_name, inputs[:0], "Expected 9408, got 0"),
        (images, "image", np.array([[b"not an image at all"]], dtype=object), "cannot decode image 0 of the request"),
        (images, "image", np.array([[png(good[0])], [bomb_png()]], dtype=object),
         "image 1 of the request is 9000x9000 pixels, more than the 64 megapixels"),
        (images, "image", np.array([[png(good[0])]] * (MAX_BATCH + 1), dtype=object), "batch-size must be <="),
    ]
    try:
        for served, name, data, reason in bad:
            with pytest.raises(ServerError, match=reason.replace("(", r"\(")):
                served.infer(name, data)
            # the next good request, on each model, is answered correctly
            np.testing.assert_allclose(tensors.infer(metadata.input_name, inputs)["logits"], predictions.logits,
                                       atol=1e-5)
            answer = images.infer("image", np.array([[png(image)] for image in good], dtype=object))
            np.testing.assert_allclose(answer["logits"], predictions.logits, atol=1e-5)
    finally:
        tensors.close()
        images.close()


def test_a_client_that_leaves_mid_request_changes_nothing(server, artifact, tiny_cifar):
    predictions, inputs, metadata = expected(artifact, tiny_cifar.test_images[:2])
    address = parse_server(server.http)
    for _ in range(3):  # half a request body, then the connection closed
        with socket.create_connection((address.host, address.port), timeout=5) as sock:
            sock.sendall(b"POST /v2/models/new2/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 100000\r\n\r\n{\"inputs\": [{\"name\": ")
    with ServedModel(address, "new2") as served:
        np.testing.assert_allclose(served.infer(metadata.input_name, inputs)["logits"], predictions.logits, atol=1e-5)
        assert served.config()  # still live and ready


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_concurrent_requests_are_batched_dynamically(server, artifact, tiny_cifar, protocol):
    _, inputs, metadata = expected(artifact, tiny_cifar.test_images[:8])
    before = batch_counters(server.metrics, "new2")
    row = run_load(parse_server(getattr(server, protocol)), "new2", metadata.input_name,
                   [inputs[i : i + 1] for i in range(8)], LoadLevel(concurrency=8, duration=1.5, warmup=0.2))
    after = batch_counters(server.metrics, "new2")
    batching = batching_between(before, after)
    assert row["complete"] and row["failed"] == 0 and row["lost"] == 0 and row["timed_requests"] > 0
    assert batching["images"] == row["answered"] == row["sent"]  # Triton counted every request the clients sent
    assert batching["mean_batch"] > 1  # eight clients, 2 ms queue delay: Triton formed batches of several requests
    assert row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"]


def test_bench_server_passes_its_gate_and_writes_the_bench_json(server, new2_export, tiny_data_dir, tmp_path):
    out = tmp_path / "served.json"
    result = CliRunner().invoke(main, ["bench", "--server", server.grpc, "--model", "new2", "--data",
                                       str(tiny_data_dir), "--reference", str(new2_export.reference),
                                       "--concurrency", "1,4", "--duration", "0.5", "--warmup", "0.1",
                                       "--min-agreement", "100", "--max-drop", "0", "--json", str(out)])
    assert result.exit_code == 0, result.output
    figures = json.loads(out.read_text())
    assert figures["complete"] is True and figures["gates"]["passed"] is True
    assert figures["parity"]["agreement"] == 100.0 and figures["parity"]["images"] == 100
    assert figures["parity"]["max_abs_logit_diff"] < 1e-4
    assert [row["concurrency"] for row in figures["load"]] == [1, 4]
    assert all(row["failed"] == row["lost"] == 0 and row["timed_requests"] > 0 and row["batching"]["batches"] > 0
               for row in figures["load"])
    assert figures["server"]["metrics"] == server.metrics
    assert "parity vs" in result.output and "mean batch" in result.output
    # the report page takes this file as a bench file and shows the served figures
    from edgecls.formats import BenchResult
    from edgecls.report.gather import BenchRun
    from edgecls.report.render import _served

    [run] = BenchResult.read_all(out)  # the report's own reader: every field typed
    assert run.server == figures["server"] and run.load == figures["load"] and run.complete
    html = _served(BenchRun(out, run), "served")
    assert "model &#x27;new2&#x27; over grpc" in html and "top-1 agreement 100.00%" in html
    for row in figures["load"]:
        assert f'<td class="n">{row["images_per_s"]:,.1f}</td>' in html


def test_bench_server_refuses_what_it_cannot_measure(server, tiny_data_dir):
    runner = CliRunner()
    cases = [(["--server", "ftp://x:1", "--model", "new2"], "is not a server address"),
             (["--server", server.grpc, "--model", "nosuch"], "serves no ready model 'nosuch'"),
             (["--server", "http://127.0.0.1:9", "--model", "new2"], "no Triton server answers at http://127.0.0.1:9")]
    for args, message in cases:
        result = runner.invoke(main, ["bench", *args, "--data", str(tiny_data_dir)])
        assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output, result.output


def test_refusals_before_any_server_starts(artifact, tmp_path):
    """A port in use, a missing or foreign artifact, a plan built on another device: one line, exit code 2, nothing
    left running."""
    import hashlib

    from edgecls.formats import EngineManifest, ModelMetadata

    foreign = tmp_path / "foreign.onnx"
    foreign.write_bytes(b"this is not an ONNX file")
    plan = tmp_path / "new2.plan"
    plan.write_bytes(b"\x01" * 100)
    EngineManifest("10.3.0", "Orin", "8.7", str(artifact), "0" * 64, hashlib.sha256(plan.read_bytes()).hexdigest(),
                   "fp32", {"min": 1, "opt": 8, "max": 64}, ModelMetadata.read(artifact)).write(plan)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cases = [([str(artifact), "--http-port", str(port)], f"port {port} (--http-port) is in use on 127.0.0.1"),
                 ([str(tmp_path / "missing.onnx")], "does not exist"),
                 ([str(foreign)], "is not a readable ONNX model"),
                 ([str(plan)], "needs TensorRT 10.3.0 and a GPU" if unavailable_reason() else "Orin")]
        for args, message in cases:
            with pytest.raises(Exception) as failed:
                ServerProcess(args, startup_timeout=60)
            text = str(failed.value)
            assert "exited with code 2:" in text and message in text and "Traceback" not in text, text
            assert failed.value.args and "error: " in text


def test_a_server_killed_under_load_ends_the_bench_in_one_line(artifact, tiny_data_dir, new2_export, tmp_path):
    """Triton killed (SIGKILL) while bench --server runs: the bench ends with one line and an incomplete JSON;
    `edgecls serve` notices, says so and exits, leaving no process behind."""
    process = ServerProcess([str(artifact), "--max-batch", "8"])
    out = tmp_path / "broken.json"
    try:
        tritons = [pid for pid in process.group_processes()
                   if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].endswith(b"/bin/tritonserver")]
        assert len(tritons) == 1, process.group_processes()
        killer = threading.Timer(4.0, lambda: [_kill(pid) for pid in tritons])
        killer.start()
        result = CliRunner().invoke(main, ["bench", "--server", process.grpc, "--model", "new2", "--data",
                                           str(tiny_data_dir), "--reference", str(new2_export.reference),
                                           "--concurrency", "4,4,4,4", "--duration", "3", "--warmup", "0",
                                           "--json", str(out)])
        killer.join()
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output
        assert "stopped answering during the load" in result.output.strip().splitlines()[-1]
        figures = json.loads(out.read_text())
        assert figures["complete"] is False and "stopped answering" in figures["error"]
        code = process.process.wait(30)  # serve notices by itself
    finally:
        process.stop(timeout=60)
    assert code == 2, process.output_tail()
    assert any("stopped by itself" in line for line in process.lines), process.output_tail()
    assert process.group_processes() == []
    assert not list(Path("/dev/shm").glob(f"pytrtion{process.process.pid}-*"))  # the killed Triton's regions


def _kill(pid: int) -> None:
    import os

    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_start_and_stop_take_bounded_time_and_leave_nothing(artifact):
    """SIGTERM ends the server, its tritonserver and stubs, with exit code 0."""
    started = time.monotonic()
    process = ServerProcess([str(artifact), "--instances", "2", "--max-batch", "4"])
    try:
        with ServedModel(parse_server(process.http), "new2") as served:
            _, config = served.metadata()
        assert sum(group["count"] for group in config["instance_group"]) == 2
    finally:
        code = process.stop(signal.SIGTERM)
    assert code == 0, process.output_tail()
    assert process.group_processes() == []
    assert time.monotonic() - started < 120
