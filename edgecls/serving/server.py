"""`edgecls serve`: an exported model behind a real Triton Inference Server, through nvidia-pytriton.

PyTriton starts the `tritonserver` binary its wheel ships and binds Python callables as Triton models; here each
callable is an edgecls `Classifier` (ONNX Runtime or TensorRT: whatever the runtime runs), one per instance. Two
models are bound, both named from the artifact's own metadata:

- `<name>`: preprocessed float32 N x 3 x crop x crop (the artifact's preprocessing) -> logits, probabilities and the
  top-k class names; Triton batches concurrent requests dynamically up to the artifact's maximum batch;
- `<name>_image`: encoded image files (BYTES, one per row) decoded and preprocessed here by edgecls's one decoder
  with its limits; one request per execution, so a request that cannot be decoded fails alone.

Every served model carries the artifact's edgecls metadata (class names, preprocessing, checkpoint) as the config
parameter `edgecls`, which `edgecls bench --server` reads. Runs only under an interpreter that `interpreter.problem`
accepts (numpy < 2, PyTriton, the system's libpython); it imports PyTriton inside `serve`.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from edgecls.errors import EdgeclsError, first_line
from edgecls.serving.batching import check_batching
from edgecls.formats import METADATA_KEY, ModelMetadata
from edgecls.runtime import Classifier, softmax
from edgecls.serving.client import METRICS_PORT_PARAMETER

IMAGE_INPUT = "image"  # the encoded-image model's input: one encoded file (BYTES) per row
IMAGE_SUFFIX = "_image"
START_ATTEMPTS = 3
PORT_OPTIONS = ("--http-port", "--grpc-port", "--metrics-port")


def served_name(metadata: ModelMetadata) -> str:
    """The Triton model name of an artifact: the model's own name, with the precision unless fp32 (new2, new2_int8)."""
    return metadata.model if metadata.precision == "fp32" else f"{metadata.model}_{metadata.precision}"


@dataclass(frozen=True)
class ServeSettings:
    """What `edgecls serve` was asked for; `to_args` gives the same settings back as command-line options."""

    artifact: str
    provider: str = "cpu"
    threads: Optional[int] = None
    instances: int = 1
    max_batch: Optional[int] = None  # None: the artifact's maximum (the plan's profile; 256 for ONNX files)
    preferred_batch_sizes: tuple = ()
    queue_delay_us: int = 100
    address: str = "127.0.0.1"
    http_port: Optional[int] = None  # None: a free port, printed at start
    grpc_port: Optional[int] = None
    metrics_port: Optional[int] = None
    top_k: int = 3
    log: Optional[str] = None  # tritonserver's log file (None: a temporary one, removed at exit)

    def __post_init__(self) -> None:
        check_batching(instances=self.instances, max_batch=self.max_batch, preferred=self.preferred_batch_sizes,
                       queue_delay_us=self.queue_delay_us, top_k=self.top_k)
        for option, port in zip(PORT_OPTIONS, (self.http_port, self.grpc_port, self.metrics_port)):
            if port is not None and not 1 <= port <= 65535:
                raise EdgeclsError(f"{option} {port} is not a port number (1-65535)")
        ports = [p for p in (self.http_port, self.grpc_port, self.metrics_port) if p is not None]
        if len(set(ports)) != len(ports):
            raise EdgeclsError(f"the HTTP, gRPC and metrics ports must differ, got {ports}")

    def to_args(self) -> list[str]:
        args = [self.artifact, "--provider", self.provider, "--instances", str(self.instances),
                "--queue-delay-us", str(self.queue_delay_us), "--address", self.address, "--top-k", str(self.top_k)]
        optional = {"--threads": self.threads, "--max-batch": self.max_batch, "--http-port": self.http_port,
                    "--grpc-port": self.grpc_port, "--metrics-port": self.metrics_port, "--log": self.log}
        args += [item for option, value in optional.items() if value is not None for item in (option, str(value))]
        if self.preferred_batch_sizes:
            args += ["--preferred-batch-sizes", ",".join(map(str, self.preferred_batch_sizes))]
        return args


@dataclass
class Endpoints:
    address: str
    http_port: int
    grpc_port: int
    metrics_port: int

    def lines(self) -> list[str]:
        host = "127.0.0.1" if self.address in ("0.0.0.0", "") else self.address
        return [f"HTTP     http://{host}:{self.http_port}", f"gRPC     grpc://{host}:{self.grpc_port}",
                f"metrics  http://{host}:{self.metrics_port}/metrics"]


def choose_ports(settings: ServeSettings) -> Endpoints:
    """The ports asked for, each checked free on the address; a free port for each one not asked for."""
    held: list[socket.socket] = []
    chosen: list[int] = []
    try:
        for option, port in zip(PORT_OPTIONS, (settings.http_port, settings.grpc_port, settings.metrics_port)):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port in TIME_WAIT is free for Triton too
            try:
                sock.bind((settings.address, port or 0))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise EdgeclsError(f"port {port} ({option}) is in use on {settings.address}; choose another, or "
                                       "leave the option out for a free port") from exc
                raise EdgeclsError(f"cannot listen on {settings.address}:{port or 0} ({exc.strerror}); check "
                                   "--address") from exc
            chosen.append(sock.getsockname()[1])
    finally:
        for sock in held:  # released just before Triton binds them
            sock.close()
    return Endpoints(settings.address, *chosen)


def _outputs(logits: np.ndarray, class_names: Sequence[str], top_k: int) -> dict[str, np.ndarray]:
    """Each model's outputs: logits and probabilities (float32, one per class), classes (the top-k names, BYTES)."""
    probabilities = softmax(logits).astype(np.float32)
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :top_k]
    names = np.array([[class_names[c].encode() for c in row] for row in order], dtype=object)
    return {"logits": logits.astype(np.float32), "probabilities": probabilities, "classes": names}


def tensor_callable(classifier: Classifier, top_k: int) -> Callable[[list], list]:
    """One instance of `<name>`: the requests Triton batched together, run as one batch."""
    input_name = classifier.metadata.input_name
    names = classifier.class_names

    def infer(requests: list) -> list:
        sizes = [len(request[input_name]) for request in requests]
        batch = np.concatenate([request[input_name] for request in requests]) if len(requests) > 1 \
            else requests[0][input_name]
        outputs = _outputs(classifier.run_preprocessed(np.ascontiguousarray(batch, dtype=np.float32)), names, top_k)
        bounds = np.cumsum([0] + sizes)
        return [{key: value[start:end] for key, value in outputs.items()} for start, end in zip(bounds, bounds[1:])]

    return infer


def image_callable(classifier: Classifier, top_k: int) -> Callable[[list], list]:
    """One instance of `<name>_image`: each request's encoded images decoded, fitted and classified."""
    from edgecls.runtime.images import decode

    preprocess, names = classifier.preprocess, classifier.class_names

    def infer(requests: list) -> list:
        responses = []
        for request in requests:
            rows = request[IMAGE_INPUT].reshape(len(request[IMAGE_INPUT]), -1)[:, 0]
            fitted = np.stack([preprocess.fit(decode(bytes(item), name=f"{index} of the request"))
                               for index, item in enumerate(rows)])
            responses.append(_outputs(classifier.logits(fitted), names, top_k))
        return responses

    return infer


def _with_metadata(triton: Any, metadata: ModelMetadata, metrics_port: int) -> None:
    """Put the artifact's metadata (and where the metrics are) into every bound model's config as the parameters
    `edgecls` and `edgecls_metrics_port`. PyTriton 0.7 (pinned) has no option for config parameters: this fills the
    config it generates before the server loads it."""
    for model in triton._model_manager.models:
        parameters = model._get_triton_model_config().backend_parameters
        parameters[METADATA_KEY] = json.dumps(metadata.to_dict())
        parameters[METRICS_PORT_PARAMETER] = str(metrics_port)


def load_classifiers(settings: ServeSettings) -> list[Classifier]:
    """One Classifier per instance, each warmed up once (the first run of a session is the slow one).

    On the CPU each instance runs ONNX Runtime on one thread unless --threads says otherwise: its own thread pool
    spins between runs, and between requests that spinning tripled the server's CPU time per request on 2 cores,
    CPU that tritonserver, the stubs and the clients needed (benchmarks/bench_serve.py). More cores: more instances."""
    threads = settings.threads or (1 if settings.provider.lower() in ("cpu", "cpuexecutionprovider") else None)
    classifiers: list[Classifier] = []
    try:
        for _ in range(settings.instances):
            classifier = Classifier.load(settings.artifact, provider=settings.provider, threads=threads,
                                         batch_size=settings.max_batch)
            classifiers.append(classifier)
            crop = classifier.preprocess.crop_size
            classifier.run_preprocessed(np.zeros((1, 3, crop, crop), np.float32))
    except BaseException:
        for classifier in classifiers:
            classifier.close()
        raise
    return classifiers


def serve(settings: ServeSettings, echo: Callable[[str], None] = print) -> None:
    """Run the server until SIGINT or SIGTERM; then stop it and every process it started, and return."""
    endpoints = choose_ports(settings)
    classifiers = load_classifiers(settings)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    log_folder = None if settings.log else tempfile.TemporaryDirectory(prefix="edgecls-serve-")
    log_file = Path(settings.log) if settings.log else Path(log_folder.name) / "tritonserver.log"
    triton = None
    try:
        for attempt in range(1, START_ATTEMPTS + 1):
            triton = _bound_triton(settings, classifiers, endpoints, log_file)
            try:
                triton.run()
                break
            except Exception as exc:  # tritonserver exited or timed out while starting: its log says why
                triton.stop()
                # PyTriton's second and later instances wait 1 s for the first one's handshake socket; on a busy
                # machine that can run out while loading. Another start usually succeeds.
                handshake = "Timeout occurred while waiting for config file" in str(exc) or (
                    settings.instances > 1 and "Model initialize error" in str(exc))
                if attempt < START_ATTEMPTS and handshake:
                    echo(f"Triton's model instances missed PyTriton's 1 s handshake (busy machine?); starting again "
                         f"({attempt + 1} of {START_ATTEMPTS})")
                    continue
                raise EdgeclsError(f"Triton did not start ({first_line(exc)}): {_log_tail(log_file)}") from exc
        metadata, max_batch = classifiers[0].metadata, classifiers[0].batch_size
        name, crop = served_name(metadata), metadata.preprocess.crop_size
        echo(f"serving {settings.artifact} as '{name}' (float32 N x 3 x {crop} x {crop}) and '{name}{IMAGE_SUFFIX}' "
             f"(encoded images), {settings.instances} instance(s), batches up to {max_batch}, queue delay "
             f"{settings.queue_delay_us} us")
        for line in endpoints.lines():
            echo(line)
        echo("stop with Ctrl-C (SIGINT) or SIGTERM")
        sys.stdout.flush()
        while not stop.wait(0.5):
            if not triton.is_alive():
                raise EdgeclsError("the Triton server (tritonserver) stopped by itself, killed or failed; serving "
                                   "ends here (run again, with --log FILE to keep its log)")
        echo("stopping")
    finally:
        if triton is not None:
            triton.stop()
        _remove_shared_memory()
        for classifier in classifiers:
            classifier.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if log_folder is not None:
            log_folder.cleanup()


def _bound_triton(settings: ServeSettings, classifiers: list[Classifier], endpoints: Endpoints, log_file: Path) -> Any:
    """A PyTriton server (not started yet) with the two models bound to `classifiers`."""
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    metadata, max_batch = classifiers[0].metadata, classifiers[0].batch_size
    too_big = [size for size in settings.preferred_batch_sizes if size > max_batch]
    if too_big:
        raise EdgeclsError(f"--preferred-batch-sizes {too_big} exceed the largest batch served ({max_batch}); "
                           "give sizes up to it")
    config = TritonConfig(http_address=settings.address, http_port=endpoints.http_port,
                          grpc_address=settings.address, grpc_port=endpoints.grpc_port,
                          metrics_address=settings.address, metrics_port=endpoints.metrics_port,
                          allow_gpu_metrics=False, log_verbose=0, log_file=log_file, exit_timeout_secs=5)
    crop = metadata.preprocess.crop_size
    classes = len(metadata.preprocess.class_names)
    top_k = min(settings.top_k, classes)
    outputs = [Tensor(name="logits", dtype=np.float32, shape=(classes,)),
               Tensor(name="probabilities", dtype=np.float32, shape=(classes,)),
               Tensor(name="classes", dtype=np.bytes_, shape=(top_k,))]
    name = served_name(metadata)
    triton = Triton(config=config)
    batcher = DynamicBatcher(max_queue_delay_microseconds=settings.queue_delay_us,
                             preferred_batch_size=list(settings.preferred_batch_sizes) or None)
    triton.bind(model_name=name, infer_func=[tensor_callable(c, top_k) for c in classifiers],
                inputs=[Tensor(name=metadata.input_name, dtype=np.float32, shape=(3, crop, crop))],
                outputs=outputs, config=ModelConfig(max_batch_size=max_batch, batcher=batcher), strict=True)
    # No dynamic batcher: one request per execution, so an undecodable image fails its own request only.
    triton.bind(model_name=name + IMAGE_SUFFIX, infer_func=[image_callable(c, top_k) for c in classifiers],
                inputs=[Tensor(name=IMAGE_INPUT, dtype=np.bytes_, shape=(1,))], outputs=outputs,
                config=ModelConfig(max_batch_size=max_batch, batcher=None), strict=True)
    _with_metadata(triton, metadata, endpoints.metrics_port)
    return triton


def _remove_shared_memory() -> None:
    """Remove this server's Python-backend shared-memory regions (PyTriton 0.7 names them /dev/shm/pytrtion<pid>-*):
    a tritonserver that was killed leaves them behind (4 MB each)."""
    for region in Path("/dev/shm").glob(f"pytrtion{os.getpid()}-*"):
        try:
            region.unlink()
        except OSError:
            pass


def _log_tail(log_file: Path) -> str:
    """The last error line of tritonserver's log (the reason it stopped), else its last line."""
    try:
        lines = [line.strip() for line in log_file.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log written"
    errors = [line for line in lines if line.startswith("E")]
    return first_line((errors or lines or ["no log lines"])[-1], 300)
