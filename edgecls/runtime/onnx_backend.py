"""ONNX Runtime backend: any exported edgecls .onnx file, on the execution provider asked for (CPU by default)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgecls.defaults import ONNX_PROVIDERS
from edgecls.errors import EdgeclsError, first_line
from edgecls.formats import METADATA_KEY, ExportSet, ModelMetadata
from edgecls.runtime.base import GraphIO, Runner, TensorInfo, check_threads

# ONNX Runtime's tensor type names, as numpy's
_ONNX_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
               "tensor(uint8)": "uint8", "tensor(int8)": "int8", "tensor(int64)": "int64", "tensor(int32)": "int32"}


class OnnxRunner(Runner):
    backend = "onnxruntime"

    def __init__(self, path: str | Path, provider: str = "cpu", threads: int | None = None) -> None:
        super().__init__(path)
        if not isinstance(provider, str):
            raise EdgeclsError(f"provider must be a name such as {', '.join(map(repr, ONNX_PROVIDERS))}, "
                               f"got {provider!r}")
        self.provider = ONNX_PROVIDERS.get(provider.lower(), provider)
        self.threads = check_threads(threads)
        self.session: Any = None

    def _open(self) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise EdgeclsError("onnxruntime is not installed; `pip install onnxruntime` to run .onnx models") from exc
        if not self.path.is_file():
            raise EdgeclsError(f"model file {self.path} does not exist; check the path or run `edgecls export`")
        available = ort.get_available_providers()
        if self.provider not in available:
            raise EdgeclsError(
                f"ONNX Runtime provider {self.provider} is not available here; choose one of {', '.join(available)}"
            )
        options = ort.SessionOptions()
        if self.threads:
            options.intra_op_num_threads = self.threads
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=[self.provider])
        except Exception as exc:  # onnxruntime raises its own classes for truncated or foreign files
            raise EdgeclsError(
                f"{self.path} is not a readable ONNX model ({first_line(exc)}); re-export it with `edgecls export`"
            ) from exc
        raw = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        self.metadata = ModelMetadata.from_json(raw, str(self.path))
        ExportSet.check_member(self.path, self.metadata.model)  # not a file of an interrupted or later export
        # activate() checks the graph against the metadata (`check_graph`) before the runner is used
        found = self.graph_io().inputs.get(self.input_name)
        batch_dim = found.dims[0] if found is not None and found.dims else None
        if batch_dim is not None:  # exported with a fixed batch: feed exactly that
            self.min_batch = self.max_batch = batch_dim

    def graph_io(self) -> GraphIO:
        # ONNX Runtime names dynamic dimensions with strings (or None); fixed ones are ints. Its inputs are the
        # graph's required ones (initializers are not listed).
        def info(arg: Any) -> TensorInfo:
            dims = tuple(d if isinstance(d, int) and d > 0 else None for d in (arg.shape or ()))
            return TensorInfo(_ONNX_TYPES.get(arg.type, str(arg.type)), dims)

        return GraphIO({i.name: info(i) for i in self.session.get_inputs()},
                       {o.name: info(o) for o in self.session.get_outputs()})

    def _close(self) -> None:
        self.session = None

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [self.output_name]
        return dict(zip(names, self.session.run(names, feed)))

    def model_only(self, feed: dict[str, np.ndarray]) -> Callable[[], None] | None:
        if self.provider != "CPUExecutionProvider":
            return None  # on a GPU provider session.run includes the copies; they cannot be told apart here
        names = [self.output_name]

        def run() -> None:
            self.session.run(names, feed)

        return run

    def describe(self) -> dict[str, Any]:
        threads = self.threads
        if threads is None and self.session is not None:
            threads = self.session.get_session_options().intra_op_num_threads
        return {
            "backend": self.backend,
            "provider": self.provider,
            "device": "cpu" if self.provider == "CPUExecutionProvider" else "gpu",
            # 0 means ONNX Runtime's own default (one thread per physical core)
            "threads": threads or 0,
            "cpu_count": os.cpu_count(),
        }
