"""Talking to a served edgecls model over the wire (KServe v2, HTTP or gRPC, through `tritonclient`): the model's
own metadata, logits of preprocessed batches or encoded images, load at a given concurrency, and the batches Triton
formed (from its Prometheus metrics).

Works with `edgecls serve` and with any Triton whose model config carries the edgecls metadata as the parameter
`edgecls` (see edgecls.serving.server). Loopback or not, every call has a timeout, and every load run is bounded in
time and in requests.
"""

from __future__ import annotations

import re
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Optional, Sequence
from urllib.parse import urlsplit

import numpy as np

from edgecls.errors import EdgeclsError, first_line
from edgecls.formats import METADATA_KEY, ModelMetadata
from edgecls.runtime.base import Closable

PROTOCOLS = ("http", "grpc")
REQUEST_TIMEOUT_S = 30.0  # one inference; a served model that takes longer is treated as gone
METRICS_PORT_PARAMETER = "edgecls_metrics_port"  # set by `edgecls serve`: where its Prometheus metrics are


@dataclass(frozen=True)
class ServerAddress:
    protocol: str  # http | grpc
    host: str
    port: int

    @property
    def target(self) -> str:
        """host:port, as tritonclient takes it."""
        return f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.protocol}://{self.target}"


def parse_server(url: str) -> ServerAddress:
    """`http://HOST:PORT` or `grpc://HOST:PORT` (a bare HOST:PORT is HTTP)."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme not in PROTOCOLS or not parts.hostname or port is None or parts.path not in ("", "/"):
        raise EdgeclsError(f"--server {url!r} is not a server address; give http://HOST:PORT or grpc://HOST:PORT")
    return ServerAddress(parts.scheme, parts.hostname, port)


class ServerError(EdgeclsError):
    """The server refused a request (its message, one line) or could not be reached."""


def _server_message(exc: Exception) -> str:
    """The reason a request failed, in one line. Triton's own refusals are one line; a failure inside the served
    model comes back from PyTriton as a Python traceback, whose edgecls error line says what was wrong."""
    text = exc.message() if callable(getattr(exc, "message", None)) else str(exc)
    text = str(text or exc)
    ours = re.findall(r"EdgeclsError: (.+)", text)
    if ours:
        return first_line(ours[-1], 300)
    text = re.sub(r"^\[request id: [^\]]*\] ", "", text.strip())
    return first_line(text.split(" NOTE: ")[0], 300)


class ServedModel(Closable):
    """One served model: its metadata, and inference on it. One connection; use one per thread."""

    def __init__(self, server: ServerAddress, model: str, timeout: float = REQUEST_TIMEOUT_S) -> None:
        self.server, self.model, self.timeout = server, model, timeout
        if server.protocol == "grpc":
            import tritonclient.grpc as client_module
        else:
            import tritonclient.http as client_module
        self._module = client_module
        try:
            if server.protocol == "grpc":
                self._client = client_module.InferenceServerClient(server.target)
            else:
                self._client = client_module.InferenceServerClient(server.target, connection_timeout=timeout,
                                                                   network_timeout=timeout)
        except Exception as exc:
            raise ServerError(f"cannot connect to {server} ({_server_message(exc)})") from exc

    def close(self) -> None:
        self._client.close()

    def config(self) -> dict[str, Any]:
        """The model's Triton config (JSON form), after checking that the server and the model are ready."""
        try:
            live = self._client.is_server_live()
        except Exception as exc:
            raise ServerError(f"no Triton server answers at {self.server} ({_server_message(exc)}); start one with "
                              "`edgecls serve ARTIFACT` or check --server") from exc
        if not live:
            raise ServerError(f"the Triton server at {self.server} is not live yet; wait for it, then retry")
        try:
            ready = self._client.is_model_ready(self.model)
        except Exception as exc:
            ready, reason = False, _server_message(exc)
        else:
            reason = "not ready"
        if not ready:
            raise ServerError(f"the server at {self.server} serves no ready model '{self.model}' ({reason}); "
                              "`edgecls serve` prints the names it serves")
        try:
            found = self._client.get_model_config(self.model, **({"as_json": True} if self._grpc else {}))
        except Exception as exc:
            raise ServerError(f"cannot read the config of '{self.model}' at {self.server} ({_server_message(exc)})") \
                from exc
        return found.get("config", found) if self._grpc else found

    @property
    def _grpc(self) -> bool:
        return self.server.protocol == "grpc"

    def metadata(self) -> tuple[ModelMetadata, dict[str, Any]]:
        """The edgecls metadata the model was exported with (config parameter `edgecls`), and the config."""
        config = self.config()
        raw = config.get("parameters", {}).get(METADATA_KEY, {}).get("string_value")
        where = f"model '{self.model}' at {self.server}"
        if raw is None:
            raise ServerError(f"{where} carries no edgecls metadata (config parameter '{METADATA_KEY}'); serve it "
                              "with `edgecls serve` or write the parameter with `edgecls deploy triton`")
        return ModelMetadata.from_json(raw, where), config

    def infer(self, name: str, data: np.ndarray, outputs: Sequence[str] = ("logits",)) -> dict[str, np.ndarray]:
        """Run one request with input `name` = `data`; the outputs asked for, by name."""
        from tritonclient.utils import np_to_triton_dtype

        module = self._module
        request = module.InferInput(name, list(data.shape), np_to_triton_dtype(data.dtype))
        if self._grpc:
            request.set_data_from_numpy(data)
        else:
            request.set_data_from_numpy(data, binary_data=True)
        wanted = [module.InferRequestedOutput(o) if self._grpc else module.InferRequestedOutput(o, binary_data=True)
                  for o in outputs]
        try:
            if self._grpc:
                result = self._client.infer(self.model, [request], outputs=wanted, client_timeout=self.timeout)
            else:
                result = self._client.infer(self.model, [request], outputs=wanted)
        except Exception as exc:
            raise ServerError(_server_message(exc)) from exc
        return {o: result.as_numpy(o) for o in outputs}


def metrics_url(server: ServerAddress, config: dict[str, Any], given: Optional[str]) -> Optional[str]:
    """Where the server's Prometheus metrics are: as given, else the port `edgecls serve` recorded; None if unknown."""
    if given:
        return given if "://" in given else f"http://{given}"
    port = config.get("parameters", {}).get(METRICS_PORT_PARAMETER, {}).get("string_value")
    return f"http://{server.host}:{port}/metrics" if port else None


_METRIC = re.compile(r'^(nv_inference_\w+)\{([^}]*)\}\s+([0-9.eE+-]+)$')


def batch_counters(url: str, model: str, timeout: float = 10.0) -> dict[str, float]:
    """Triton's counters for `model` (all versions): executions (batches formed), inferences (images), requests that
    succeeded and failed, from its Prometheus text."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            text = response.read().decode("utf-8", errors="replace")
    except (urllib.error.URLError, OSError) as exc:
        raise ServerError(f"cannot read Triton's metrics at {url} ({first_line(exc)}); pass --metrics URL") from exc
    wanted = {"nv_inference_exec_count": "batches", "nv_inference_count": "images",
              "nv_inference_request_success": "requests_ok", "nv_inference_request_failure": "requests_failed"}
    counters = dict.fromkeys(wanted.values(), 0.0)
    for line in text.splitlines():
        found = _METRIC.match(line.strip())
        if found and found.group(1) in wanted and f'model="{model}"' in found.group(2):
            counters[wanted[found.group(1)]] += float(found.group(3))
    return counters


def batching_between(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """The batches Triton formed between two readings of `batch_counters`, and their mean size."""
    batches = after["batches"] - before["batches"]
    images = after["images"] - before["images"]
    return {"batches": int(batches), "images": int(images), "mean_batch": images / batches if batches else None,
            "requests_failed": int(after["requests_failed"] - before["requests_failed"])}


# ----------------------------------------------------------------------------------------------- load

@dataclass(frozen=True)
class LoadSettings:
    concurrency: tuple = (1, 8, 32, 64)
    duration: float = 5.0  # seconds per concurrency level
    warmup: float = 1.0
    request_batch: int = 1  # images per request
    max_requests: int = 200_000  # per level: a bound whatever the speed

    def __post_init__(self) -> None:
        if not self.concurrency or min(self.concurrency) < 1 or max(self.concurrency) > 256:
            raise EdgeclsError(f"--concurrency {list(self.concurrency)} must list numbers from 1 to 256")
        if self.duration <= 0 or self.warmup < 0 or self.duration > 600:
            raise EdgeclsError(f"load duration {self.duration:g} s must be above 0 and at most 600 s")
        if self.request_batch < 1:
            raise EdgeclsError(f"--request-batch {self.request_batch} must be at least 1")

    @classmethod
    def from_options(cls, concurrency: Optional[str], request_batch: int, duration: Optional[float],
                     warmup: Optional[float]) -> LoadSettings:
        """`edgecls bench --server`'s options: `--concurrency 1,8,32` as text; None: the default."""
        try:
            levels = tuple(int(part) for part in concurrency.split(",")) if concurrency else cls.concurrency
        except ValueError:
            raise EdgeclsError(f"--concurrency {concurrency!r} is not a comma-separated list of numbers, e.g. 1,8,32,64")
        overrides = {"duration": duration, "warmup": warmup}
        return cls(concurrency=levels, request_batch=request_batch,
                   **{key: value for key, value in overrides.items() if value is not None})

    def level(self, concurrency: int) -> LoadLevel:
        return LoadLevel(concurrency, self.duration, self.warmup, self.max_requests)

    def to_dict(self) -> dict[str, Any]:
        return {"concurrency": list(self.concurrency), "duration_s": self.duration, "warmup_s": self.warmup,
                "request_batch": self.request_batch, "max_requests": self.max_requests}


@dataclass(frozen=True)
class LoadLevel:
    """One load run of `run_load`: `concurrency` clients for `warmup` then `duration` seconds, at most `max_requests`
    timed, each request given `timeout` seconds."""

    concurrency: int
    duration: float
    warmup: float = 0.0
    max_requests: int = 200_000
    timeout: float = REQUEST_TIMEOUT_S

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise EdgeclsError(f"concurrency {self.concurrency} must be at least 1")
        if self.duration <= 0 or self.warmup < 0:
            raise EdgeclsError(f"load duration {self.duration:g} s must be above 0, warm-up {self.warmup:g} s not "
                               "below 0")
        if self.max_requests < 1 or self.timeout <= 0:
            raise EdgeclsError(f"a load run needs at least 1 request ({self.max_requests}) and a timeout above 0 "
                               f"({self.timeout:g} s)")


def run_load(server: ServerAddress, model: str, input_name: str, batches: Sequence[np.ndarray],
             level: LoadLevel) -> dict[str, Any]:
    """`level.concurrency` clients (threads, each its own connection) sending the `batches` in turn, back to back,
    for `level.warmup` then `level.duration` seconds (at most `level.max_requests` timed). Latency and images of the
    requests answered in the timed window; over the whole run, every request sent, answered and failed (a request
    neither answered nor failed when the clients have stopped is lost); a level where the server stops answering
    ends early and says so (`complete` false)."""
    concurrency, max_requests, timeout = level.concurrency, level.max_requests, level.timeout
    lock = threading.Lock()
    latencies: list[float] = []
    failures: list[str] = []
    totals = {"sent": 0, "answered": 0, "failed": 0, "timed": 0, "images": 0}
    stop = threading.Event()
    measuring = threading.Event()
    clients: list[ServedModel] = []
    try:
        for _ in range(concurrency):
            clients.append(ServedModel(server, model, timeout))
    except ServerError:
        for client in clients:
            client.close()
        raise

    def worker(index: int, client: ServedModel) -> None:
        turn = index
        while not stop.is_set():
            batch = batches[turn % len(batches)]
            turn += 1
            with lock:
                timed = measuring.is_set()
                if timed and totals["timed"] >= max_requests:
                    break
                totals["sent"] += 1
                totals["timed"] += timed
            begin = time.perf_counter()
            try:
                client.infer(input_name, batch)
            except ServerError as exc:
                with lock:
                    totals["failed"] += 1
                    failures.append(str(exc))
                if not _alive(server):
                    stop.set()
                continue
            took = time.perf_counter() - begin
            with lock:
                totals["answered"] += 1
                if timed and measuring.is_set():  # sent and answered inside the timed window
                    latencies.append(took)
                    totals["images"] += len(batch)

    threads = [threading.Thread(target=worker, args=(i, c), daemon=True) for i, c in enumerate(clients)]
    for thread in threads:
        thread.start()
    try:
        stop.wait(level.warmup)
        measuring.set()
        started = time.perf_counter()
        stop.wait(level.duration)
        with lock:
            elapsed = time.perf_counter() - started
            measuring.clear()
            done, count = list(latencies), totals["images"]
        gone = stop.is_set()
        stop.set()
        for thread in threads:  # each finishes the request it has in flight
            thread.join(timeout + 5)
    finally:
        stop.set()
        for client in clients:
            client.close()
    milliseconds = np.asarray(done) * 1e3
    # no request answered in the timed window: no latency to give (null in the bench file, "-" in the table)
    p50, p90, p99, mean = (*np.percentile(milliseconds, [50, 90, 99]), np.mean(milliseconds)) if done else [None] * 4
    return {"concurrency": concurrency, "request_batch": int(len(batches[0])), "timed_requests": len(done),
            "sent": totals["sent"], "answered": totals["answered"], "failed": totals["failed"],
            "lost": totals["sent"] - totals["answered"] - totals["failed"],
            "first_failure": failures[0] if failures else None, "p50_ms": _float(p50), "p90_ms": _float(p90),
            "p99_ms": _float(p99), "mean_ms": _float(mean), "images_per_s": count / elapsed,
            "seconds": elapsed, "complete": not gone}


def _float(value: Optional[float]) -> Optional[float]:
    return None if value is None else float(value)


def _alive(server: ServerAddress) -> bool:
    try:
        probe = ServedModel(server, "", timeout=2.0)
        try:
            return bool(probe._client.is_server_live())
        finally:
            probe.close()
    except Exception:
        return False


def served_logits(model: ServedModel, input_name: str, batch: np.ndarray, chunk: int) -> np.ndarray:
    """Logits of a preprocessed batch of any size, sent `chunk` images per request."""
    parts = [model.infer(input_name, batch[start : start + chunk])["logits"] for start in range(0, len(batch), chunk)]
    return np.concatenate(parts).astype(np.float32)
