"""`edgecls deploy ...`: what a serving stack needs to run an exported model (a Triton model repository, a
DeepStream nvinfer configuration), written from the export's own metadata."""

from __future__ import annotations

from typing import Optional

import click

from edgecls.defaults import TRITON_ONNX_MAX_BATCH, TRITON_QUEUE_DELAY_US, TRITON_TOP_K


@click.group("deploy")
def deploy() -> None:
    """Write the files a serving stack needs to run an exported edgecls model."""


@deploy.command("triton")
@click.argument("models", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("-o", "--output", default="model_repository", show_default=True, type=click.Path(file_okay=False),
              help="The repository folder: created, or replaced when it is one deploy wrote; never another folder.")
@click.option("--max-batch", type=click.IntRange(1), help="Largest batch Triton forms.  [default: a plan's profile "
                                                          f"maximum; {TRITON_ONNX_MAX_BATCH} for ONNX]")
@click.option("--preferred-batch", help="Batch sizes the dynamic batcher aims for, comma-separated, e.g. 16,32.")
@click.option("--queue-delay-us", type=click.IntRange(0), default=TRITON_QUEUE_DELAY_US, show_default=True,
              help="How long a request may wait for others to join its batch, in microseconds.")
@click.option("--instances", type=click.IntRange(1), default=1, show_default=True,
              help="Instances of each model (per GPU for GPU instances).")
@click.option("--onnx-device", type=click.Choice(["cpu", "gpu"]), default="cpu", show_default=True,
              help="Where ONNX models run (plans always run on the GPU).")
@click.option("--onnx-backend", type=click.Choice(["onnxruntime", "python"]), default="onnxruntime",
              show_default=True, help="Triton's onnxruntime backend, or edgecls's runtime in Triton's Python backend "
                                      "(for a Triton without the onnxruntime backend, such as PyTriton's).")
@click.option("--ensemble", is_flag=True,
              help="Also write Python-backend pre/postprocessing and an ensemble per model, so clients send encoded "
                   "images and get logits, probabilities and top-k class names.")
@click.option("--top-k", type=click.IntRange(1), default=TRITON_TOP_K, show_default=True,
              help="Class names the ensemble returns per image.")
@click.option("--target-trt", metavar="VERSION", help="TensorRT version of the Triton that runs the plans, e.g. 10.3 "
                                                      "(each component given must match the plan's manifest).")
@click.option("--target-gpu", metavar="NAME", help="GPU the plans run on, as the manifest names it, e.g. Orin.")
@click.option("--target-compute", metavar="X.Y", help="Its compute capability, e.g. 8.7 (optional).")
def triton_command(models: tuple[str, ...], output: str, max_batch: Optional[int], preferred_batch: Optional[str],
                   queue_delay_us: int, instances: int, onnx_device: str, onnx_backend: str, ensemble: bool,
                   top_k: int, target_trt: Optional[str], target_gpu: Optional[str],
                   target_compute: Optional[str]) -> None:
    """A model repository for a standalone Triton Inference Server (Triton's release on a Jetson, NVIDIA's
    container on a GPU server), from exported .onnx files and TensorRT .plan files.

    \b
    Example:
      edgecls deploy triton export/new2.onnx engines/new2.int8.plan \\
          --target-trt 10.3 --target-gpu Orin --ensemble -o model_repository
    """
    from edgecls.serving.repository import Options, PlanTarget, parse_sizes, write_repository

    options = Options(max_batch=max_batch, preferred_batch=parse_sizes(preferred_batch, "--preferred-batch"),
                      queue_delay_us=queue_delay_us, instances=instances, onnx_device=onnx_device,
                      onnx_backend=onnx_backend, ensemble=ensemble, top_k=top_k,
                      target=PlanTarget(tensorrt=target_trt, gpu=target_gpu, compute=target_compute))
    written = write_repository(models, output, options)
    for name, model in written.models.items():
        source = f" from {model['source']}" if model["source"] else ""
        click.echo(f"{written.folder}/{name}: {model['kind']}{source}")
    click.echo(f"wrote {written.folder}: tritonserver --model-repository {written.folder.absolute()}")


COMMANDS = [deploy]
