"""The serving pieces that need no server: which Python can serve and why another cannot (numpy 2, no PyTriton, a
libpython of its own), the serve settings and ports, server addresses, the one-line reasons of refused requests,
and Triton's batch counters read from its Prometheus text."""

from __future__ import annotations

import http.server
import socket
import threading

import pytest
from click.testing import CliRunner

from edgecls.cli import main
from edgecls.errors import EdgeclsError
from edgecls.serving import interpreter
from edgecls.serving.client import (LoadLevel, LoadSettings, _server_message, batch_counters, batching_between,
                                    parse_server)
from edgecls.serving.server import ServeSettings, choose_ports


def facts(tmp_path, **changes):
    """An interpreter that can serve: Python 3.11, numpy 1.26, PyTriton, its libpython where the loader looks."""
    libdir = tmp_path / "lib"
    libdir.mkdir(exist_ok=True)
    (libdir / "libpython3.11.so.1.0").write_bytes(b"")
    return {"python": "3.11.2", "executable": "/venv/bin/python", "version": [3, 11], "numpy": "1.26.4",
            "pytriton": "0.7.0", "libdir": str(libdir), "soname": "libpython3.11.so.1.0", "multiarch": "", **changes}


@pytest.fixture
def loader(tmp_path, monkeypatch):
    monkeypatch.setenv("LD_LIBRARY_PATH", str(tmp_path / "lib"))


def test_an_interpreter_that_can_serve_passes(tmp_path, loader):
    assert interpreter.problem(facts(tmp_path)) is None


@pytest.mark.parametrize("changes, reason", [
    ({"numpy": "2.4.6"}, "has numpy 2.4.6, and PyTriton 0.7 needs numpy < 2"),
    ({"pytriton": None, "pytriton_error": "No module named 'pytriton'"}, "has no nvidia-pytriton (No module named"),
    ({"version": [3, 9], "python": "3.9.2"}, "PyTriton's Triton stub exists for 3.10-3.12 only"),
    ({"soname": "libpython3.11.a"}, "has no shared libpython"),
])
def test_what_keeps_an_interpreter_from_serving_is_named_with_the_fix(tmp_path, loader, changes, reason):
    message = interpreter.problem(facts(tmp_path, **changes))
    assert reason in message and "make serve-venv" in message


def test_a_python_with_its_own_libpython_is_refused(tmp_path, loader):
    """The pyenv case: its libpython lives in its own folder, while the stub loads the one the loader finds first."""
    own = tmp_path / "pyenv" / "lib"
    own.mkdir(parents=True)
    (own / "libpython3.11.so.1.0").write_bytes(b"")
    message = interpreter.problem(facts(tmp_path, libdir=str(own), python="3.11.7"))
    assert f"uses its own {own / 'libpython3.11.so.1.0'}" in message
    assert f"finds {tmp_path / 'lib' / 'libpython3.11.so.1.0'}" in message and "make serve-venv" in message


def test_this_training_venv_is_not_a_serving_interpreter():
    """The venv the tests run in has numpy 2 and no PyTriton: serving is handed over, never attempted here."""
    assert interpreter.problem(interpreter.this_interpreter()) is not None


def test_serve_without_a_serving_interpreter_is_one_line(monkeypatch, tmp_path):
    model = tmp_path / "model.onnx"
    model.write_bytes(b"x")
    monkeypatch.setenv(interpreter.SERVE_PYTHON_ENV, str(tmp_path / "no-such-python"))
    result = CliRunner().invoke(main, ["serve", str(model)])
    assert result.exit_code == 2
    assert result.output.startswith("error: edgecls serve cannot run here") and "make serve-venv" in result.output
    assert f"{tmp_path / 'no-such-python'} does not exist" in result.output
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize("args, message", [
    (["--instances", "0"], "--instances 0 must be at least 1"),
    (["--http-port", "70000"], "--http-port 70000 is not a port number"),
    (["--http-port", "9000", "--grpc-port", "9000"], "ports must differ"),
    (["--preferred-batch-sizes", "8,x"], "--preferred-batch-sizes '8,x' is not a comma-separated list"),
    (["--preferred-batch-sizes", "0,8"], "--preferred-batch-sizes [0, 8] must be positive"),
    (["--queue-delay-us", "-1"], "--queue-delay-us -1 must be at least 0"),
])
def test_serve_options_are_refused_before_anything_starts(tmp_path, args, message):
    model = tmp_path / "model.onnx"
    model.write_bytes(b"x")
    result = CliRunner().invoke(main, ["serve", str(model), *args])
    assert result.exit_code == 2 and message in result.output, result.output


def test_settings_travel_to_the_serving_interpreter_unchanged():
    settings = ServeSettings("export/new2.onnx", threads=2, instances=3, max_batch=64, preferred_batch_sizes=(8, 32),
                             queue_delay_us=500, address="0.0.0.0", http_port=8000, grpc_port=8001, metrics_port=8002,
                             top_k=5, log="serve.log")
    from edgecls.cli.serve import serve

    context = serve.make_context("serve", settings.to_args())
    params = context.params
    again = ServeSettings(params["artifact"], provider=params["provider"], threads=params["threads"],
                          instances=params["instances"], max_batch=params["max_batch"],
                          preferred_batch_sizes=(8, 32) if params["preferred_batch_sizes"] == "8,32" else (),
                          queue_delay_us=params["queue_delay_us"], address=params["address"],
                          http_port=params["http_port"], grpc_port=params["grpc_port"],
                          metrics_port=params["metrics_port"], top_k=params["top_k"], log=params["log"])
    assert again == settings


def test_free_ports_are_chosen_and_a_taken_one_is_refused():
    chosen = choose_ports(ServeSettings("m.onnx"))
    assert len({chosen.http_port, chosen.grpc_port, chosen.metrics_port}) == 3
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(EdgeclsError, match=f"port {port} \\(--grpc-port\\) is in use on 127.0.0.1"):
            choose_ports(ServeSettings("m.onnx", grpc_port=port))


def test_server_addresses():
    assert str(parse_server("grpc://127.0.0.1:8001")) == "grpc://127.0.0.1:8001"
    assert parse_server("localhost:8000").protocol == "http"
    for bad in ("ftp://h:1", "http://host", "http://h:1/v2", "grpc://:80"):
        with pytest.raises(EdgeclsError, match="is not a server address"):
            parse_server(bad)


def test_load_options_are_checked_once_when_the_settings_are_made():
    load = LoadSettings.from_options("1,4", 2, 0.5, None)
    assert (load.concurrency, load.request_batch, load.duration, load.warmup) == ((1, 4), 2, 0.5, 1.0)
    assert load.level(4) == LoadLevel(4, 0.5, 1.0, load.max_requests)
    assert LoadSettings.from_options(None, 1, None, None) == LoadSettings()
    for options, message in ((("1,x", 1, None, None), "--concurrency '1,x' is not a comma-separated list"),
                             (("0,8", 1, None, None), "must list numbers from 1 to 256"),
                             (("8", 0, None, None), "--request-batch 0 must be at least 1"),
                             (("8", 1, 0.0, None), "load duration 0 s must be above 0")):
        with pytest.raises(EdgeclsError, match=message):
            LoadSettings.from_options(*options)
    for level, message in (((0, 1.0), "concurrency 0 must be at least 1"), ((1, 0.0), "load duration 0 s"),
                           ((1, 1.0, -1.0), "warm-up -1 s not below 0"), ((1, 1.0, 0.0, 0), "at least 1 request")):
        with pytest.raises(EdgeclsError, match=message):
            LoadLevel(*level)


def test_refusals_come_back_as_their_one_line_reason():
    traceback_text = ("Failed to process the request(s) for model 'new2_image_0_0', message: TritonModelException: "
                      "Traceback (most recent call last):\n  File \"x.py\", line 1\nedgecls.errors.EdgeclsError: "
                      "cannot decode image 0 of the request (not an image format Pillow reads); check it\n\nAt:\n  m.py")
    assert _server_message(Exception(traceback_text)) == ("cannot decode image 0 of the request (not an image format "
                                                          "Pillow reads); check it")
    triton = ("[request id: <id_unknown>] unexpected shape for input 'images' for model 'new2'. Expected [-1,3,28,28],"
              " got [2,3,27,28]. NOTE: Setting a non-zero max_batch_size in the model config requires a batch dimension")
    assert _server_message(Exception(triton)) == ("unexpected shape for input 'images' for model 'new2'. Expected "
                                                  "[-1,3,28,28], got [2,3,27,28].")


METRICS = """# HELP nv_inference_count Number of inferences performed
nv_inference_count{model="new2",version="1"} 120
nv_inference_count{model="new2_image",version="1"} 7
nv_inference_exec_count{model="new2",version="1"} 15
nv_inference_exec_count{model="new2_image",version="1"} 7
nv_inference_request_success{model="new2",version="1"} 120
nv_inference_request_failure{model="new2",reason="REJECTED",version="1"} 3
nv_inference_request_failure{model="new2",reason="BACKEND",version="1"} 1
"""


def test_batches_formed_come_from_tritons_metrics():
    class Metrics(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the http.server name)
            body = METRICS.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Metrics)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        counters = batch_counters(f"http://127.0.0.1:{server.server_address[1]}/metrics", "new2")
    finally:
        server.shutdown()
        server.server_close()
    assert counters == {"batches": 15, "images": 120, "requests_ok": 120, "requests_failed": 4}
    zero = dict.fromkeys(counters, 0.0)
    assert batching_between(zero, counters) == {"batches": 15, "images": 120, "mean_batch": 8.0, "requests_failed": 4}
    with pytest.raises(EdgeclsError, match="cannot read Triton's metrics at http://127.0.0.1:9/metrics"):
        batch_counters("http://127.0.0.1:9/metrics", "new2", timeout=2)


def test_a_level_no_request_of_which_is_answered_has_no_latency_rather_than_nan():
    import json

    import numpy as np

    from edgecls.serving.client import parse_server, run_load

    with socket.socket() as probe:  # a free loopback port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    row = run_load(parse_server(f"http://127.0.0.1:{port}"), "new2", "images", [np.zeros((1, 3, 28, 28), np.float32)],
                   LoadLevel(concurrency=2, duration=0.3, warmup=0.0, timeout=2.0))
    assert row["failed"] > 0 and row["timed_requests"] == 0 and row["first_failure"]
    assert [row[key] for key in ("p50_ms", "p90_ms", "p99_ms", "mean_ms")] == [None] * 4
    json.dumps(row, allow_nan=False)  # what the bench file holds: JSON without NaN
