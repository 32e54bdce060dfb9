"""`edgecls serve`: an exported model behind a Triton Inference Server (edgecls.serving.server)."""

from __future__ import annotations

import os
import sys
from typing import Optional

import click

from edgecls.cli.bench import PROVIDER_HELP
from edgecls.cli.common import check_input_file
from edgecls.errors import EdgeclsError

HANDED_OVER = "EDGECLS_SERVE_HANDED_OVER"  # set in the serving interpreter's environment: hand over once, never loop


@click.command("serve")
@click.argument("artifact")
@click.option("--instances", type=int, default=1, show_default=True,
              help="Model instances, each its own Classifier (ONNX Runtime session or TensorRT context).")
@click.option("--max-batch", type=int, help="Largest batch Triton forms.  [default: the artifact's maximum: the "
                                            "plan's profile, 256 for ONNX files]")
@click.option("--preferred-batch-sizes", metavar="SIZES",
              help="Comma-separated batch sizes the dynamic batcher prefers, e.g. 8,32.")
@click.option("--queue-delay-us", "queue_delay_us", type=int, default=100, show_default=True, metavar="MICROSECONDS",
              help="How long a request may wait in the queue for others to batch with.")
@click.option("--address", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0: every interface).")
@click.option("--http-port", type=int, help="HTTP port (KServe v2).  [default: a free port, printed]")
@click.option("--grpc-port", type=int, help="gRPC port (KServe v2).  [default: a free port, printed]")
@click.option("--metrics-port", type=int, help="Prometheus metrics port.  [default: a free port, printed]")
@click.option("--top-k", type=int, default=3, show_default=True, help="Class names returned per image.")
@click.option("--provider", default="cpu", show_default=True, help=PROVIDER_HELP)
@click.option("--threads", type=click.IntRange(min=1), help="ONNX Runtime threads per instance.  [default: 1 on the "
                                                           "CPU (use --instances for more cores); else ONNX Runtime's]")
@click.option("--log", help="Write tritonserver's log to this file (default: a temporary file, removed at exit).")
def serve(artifact: str, instances: int, max_batch: Optional[int], preferred_batch_sizes: Optional[str],
          queue_delay_us: int, address: str, http_port: Optional[int], grpc_port: Optional[int],
          metrics_port: Optional[int], top_k: int, provider: str, threads: Optional[int], log: Optional[str]) -> None:
    """Serve an exported model (.onnx, or a TensorRT .plan on its device) on Triton Inference Server.

    Two models answer over HTTP and gRPC (KServe v2): NAME takes preprocessed float32 N x 3 x H x W, NAME_image
    takes encoded image files; both return logits, probabilities and classes (the top-k class names). NAME, the class names
    and the preprocessing come from the artifact's metadata. Runs until Ctrl-C or SIGTERM, which stop the server and
    every process it started (exit 0).

    Example: edgecls serve export/new2.onnx --instances 2 --preferred-batch-sizes 16,32 --http-port 8000
    """
    from edgecls.serving import interpreter
    from edgecls.serving.batching import parse_batch_sizes
    from edgecls.serving.server import ServeSettings

    settings = ServeSettings(artifact=artifact, provider=provider, threads=threads, instances=instances,
                             max_batch=max_batch, queue_delay_us=queue_delay_us, address=address, http_port=http_port,
                             grpc_port=grpc_port, metrics_port=metrics_port, top_k=top_k, log=log,
                             preferred_batch_sizes=parse_batch_sizes(preferred_batch_sizes))
    check_input_file(artifact, "model file")
    here = interpreter.this_interpreter()
    problem = interpreter.problem(here)
    if problem is None:
        from edgecls.serving.server import serve as run_server

        run_server(settings, echo=click.echo)
        return
    python = interpreter.candidate()
    if os.environ.get(HANDED_OVER) or python is None:
        raise EdgeclsError(f"edgecls serve cannot run here: {problem}")
    there = interpreter.probe(python)
    problem_there = interpreter.problem(there)
    if problem_there is not None:
        raise EdgeclsError(f"edgecls serve cannot run here ({here['executable']}: no PyTriton), nor with {python}: "
                           f"{problem_there}")
    # This interpreter cannot host PyTriton: the serving venv's runs the same command, in this process's place (so
    # that signals reach the server directly), with this edgecls package first on its path.
    package_root = str(interpreter.repository_root())
    path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH", "")) if p)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(str(python), [str(python), "-m", "edgecls", "serve", *settings.to_args()],
              {**os.environ, "PYTHONPATH": path, HANDED_OVER: "1"})


COMMANDS = [serve]
