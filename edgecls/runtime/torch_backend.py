"""A PyTorch checkpoint behind the runners' interface, so the bench measures a .pt with the same code as an .onnx or
a .plan. Needs torch (the training machine's extra); `edgecls.runtime` imports it only for `.pt` files."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgecls.errors import EdgeclsError
from edgecls.runtime.base import Runner


class TorchRunner(Runner):
    """A checkpoint run by PyTorch (eager or CUDA graph, fp32 or fp16), behind the runtime's runner interface.

    fp32 is full float32: TF32 is turned off around every run (PyTorch lets cuDNN use it for float32 convolutions
    by default). `edgecls.runtime.open_runner` returns one for a `.pt` file; importing the runtime never imports
    this module, so the runtime stays torch-free on a device.
    """

    backend = "pytorch"

    def __init__(self, path: str | Path, device: str | None = None, precision: str = "fp32", cuda_graph: bool = False,
                 threads: int | None = None):
        super().__init__(path)
        self.device_name, self.precision, self.cuda_graph, self.threads = device, precision, cuda_graph, threads
        self._graphs: dict[tuple[int, ...], tuple[Any, Any, Any]] = {}

    def _open(self) -> None:
        import torch

        from edgecls.checkpoint import load_checkpoint
        from edgecls.device import pick_device

        if self.threads:
            torch.set_num_threads(self.threads)
        checkpoint = load_checkpoint(self.path)
        self.device = pick_device(self.device_name)
        if self.device.type != "cuda" and (self.cuda_graph or self.precision == "fp16"):
            raise EdgeclsError(f"CUDA graphs and fp16 need a CUDA device, not {self.device}")
        self.dtype = torch.float16 if self.precision == "fp16" else torch.float32
        self.model = checkpoint.build_model().to(self.device, self.dtype)
        self.metadata = checkpoint.model_metadata(self.precision)

    def _close(self) -> None:
        self.model, self._graphs = None, {}

    def _flags(self) -> Any:
        """cuDNN's algorithm search for the fixed input shapes; no TF32 in fp32 (set around each run, not for the
        whole process, since runners of other precisions live beside this one in the bench)."""
        from edgecls.device import backend_flags

        return backend_flags(cudnn_benchmark=self.device.type == "cuda",
                             tf32=False if self.precision == "fp32" else None)

    def _forward(self, batch: Any) -> Any:
        """Logits of a device tensor already in the model's dtype; replays a CUDA graph when asked for one."""
        import torch

        with self._flags():
            if not self.cuda_graph:
                with torch.inference_mode():
                    return self.model(batch)
            key = tuple(batch.shape)
            if key not in self._graphs:
                self._graphs[key] = self._capture(key)
            graph, static_in, static_out = self._graphs[key]
            static_in.copy_(batch)
            graph.replay()
            return static_out

    def _capture(self, shape: tuple[int, ...]) -> tuple[Any, Any, Any]:
        import torch

        with torch.cuda.device(self.device):  # the graph belongs to the runner's GPU, not the current one
            static_in = torch.zeros(shape, device=self.device, dtype=self.dtype)
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side), torch.no_grad():  # warm-up on a side stream, as graph capture requires
                for _ in range(3):
                    self.model(static_in)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph), torch.no_grad():
                static_out = self.model(static_in)
        return graph, static_in, static_out

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        batch = torch.from_numpy(feed[self.input_name]).to(self.device, self.dtype)
        logits = self._forward(batch).float().cpu().numpy()
        return {self.output_name: logits}

    def _on_device(self, feed: dict[str, np.ndarray]) -> Any:
        """The input placed where the model reads it, with the run's graph captured (for this shape) untimed."""
        import torch

        batch = torch.from_numpy(feed[self.input_name]).to(self.device, self.dtype)
        self._forward(batch)
        return batch

    def model_only(self, feed: dict[str, np.ndarray]) -> Callable[[], None] | None:
        from edgecls.device import synchronize

        batch = self._on_device(feed)

        def run() -> None:
            self._forward(batch)
            synchronize(self.device)

        return run

    def pipelined(self, feed: dict[str, np.ndarray]) -> tuple[Callable[[], None], Callable[[], None]] | None:
        from edgecls.device import synchronize

        batch = self._on_device(feed)
        return (lambda: self._forward(batch)), (lambda: synchronize(self.device))

    def describe(self) -> dict[str, Any]:
        import torch

        info: dict[str, Any] = {"backend": self.backend, "device": str(self.device), "precision": self.precision,
                                "mode": "cuda-graph" if self.cuda_graph else "eager",
                                "threads": torch.get_num_threads()}
        if self.device.type == "cuda":
            info["gpu_name"] = torch.cuda.get_device_name(self.device)
            if self.precision == "fp32":
                info["tf32"] = False
        return info
