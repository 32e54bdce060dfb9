"""`edgecls deploy ...`: what a serving stack needs to run an exported model (a Triton model repository, a
DeepStream nvinfer configuration), written from the export's own metadata."""

from __future__ import annotations

from typing import Optional

import click

from edgecls.defaults import TRITON_ONNX_MAX_BATCH, TRITON_QUEUE_DELAY_US, TRITON_TOP_K
from edgecls.cli.common import DATA_HELP, check_input_file


@click.group("deploy")
def deploy() -> None:
    """Write the files a serving stack needs to run an exported edgecls model."""


@deploy.command("triton")
@click.argument("models", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("-o", "--output", default="model_repository", show_default=True, type=click.Path(file_okay=False),
              help="The repository folder: created, or replaced when it is one deploy wrote; never another folder.")
@click.option("--max-batch", type=click.IntRange(1), help="Largest batch Triton forms.  [default: a plan's profile "
                                                          f"maximum; {TRITON_ONNX_MAX_BATCH} for ONNX]")
@click.option("--preferred-batch-sizes", "preferred_batch", help="Batch sizes the dynamic batcher aims for, comma-separated, e.g. 16,32.")
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
    from edgecls.serving.batching import parse_batch_sizes
    from edgecls.serving.repository import Options, PlanTarget, write_repository

    options = Options(max_batch=max_batch, preferred_batch=parse_batch_sizes(preferred_batch),
                      queue_delay_us=queue_delay_us, instances=instances, onnx_device=onnx_device,
                      onnx_backend=onnx_backend, ensemble=ensemble, top_k=top_k,
                      target=PlanTarget(tensorrt=target_trt, gpu=target_gpu, compute=target_compute))
    written = write_repository(models, output, options)
    for name, model in written.models.items():
        source = f" from {model['source']}" if model["source"] else ""
        click.echo(f"{written.folder}/{name}: {model['kind']}{source}")
    click.echo(f"wrote {written.folder}: tritonserver --model-repository {written.folder.absolute()}")


COMMANDS = [deploy]


@deploy.command("deepstream")
@click.argument("onnx_file")
@click.option("-o", "--out", "out_dir", default="deepstream", show_default=True,
              help="Folder for the ONNX file, the nvinfer and deepstream-app configs, the labels and the agreement.")
@click.option("--data", help=DATA_HELP + " Its test split measures the emulated agreement.")
@click.option("--reference", help="The original model's logits (.npz) or checkpoint. Default: <model>.reference.npz "
                                  "beside the ONNX file.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]),
              help="nvinfer's network-mode: fp32 or fp16 from the fp32 export, int8 from the int8 export.  "
                   "[default: the file's]")
@click.option("--mode", type=click.Choice(["primary", "secondary"]), default="primary", show_default=True,
              help="primary: classify whole frames; secondary: classify a detector's objects.")
@click.option("--batch-size", type=int, help="nvinfer's batch-size.  [default: 1 primary, 16 secondary]")
@click.option("--maintain-aspect-ratio/--stretch", default=False, show_default=True,
              help="Scale frames with their aspect ratio kept (black padding) or stretched to the network input.")
@click.option("--symmetric-padding", is_flag=True, help="With --maintain-aspect-ratio: pad on both sides, not "
                                                        "right/bottom.")
@click.option("--scaling-filter", type=click.IntRange(0, 5), default=1, show_default=True,
              help="nvinfer's scaling-filter: 0 nearest, 1 bilinear (emulated); 2-5 GPU cubic, super, Lanczos / VIC "
                   "taps (written, not emulated).")
@click.option("--crop-in-graph/--no-crop-in-graph", default=True, show_default=True,
              help="Network input at the model's resize size with its centre crop inside the graph (edgecls's own "
                   "preprocessing), or at the crop size (nvinfer squeezes the whole frame into it).")
@click.option("--classifier-threshold", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Lowest probability nvinfer reports as a label.")
@click.option("--operate-on-gie-id", type=int, default=1, show_default=True,
              help="Secondary mode: the gie-unique-id of the detector whose objects are classified.")
@click.option("--operate-on-class-ids", help="Secondary mode: only the detector's classes with these ids, e.g. 0;2.")
def deepstream(onnx_file: str, out_dir: str, data: str | None, reference: str | None, precision: str | None,
               mode: str, batch_size: int | None, maintain_aspect_ratio: bool, symmetric_padding: bool,
               scaling_filter: int, crop_in_graph: bool, classifier_threshold: float, operate_on_gie_id: int,
               operate_on_class_ids: str | None) -> None:
    """A DeepStream Gst-nvinfer classifier config for an exported model, with a folded ONNX file that makes nvinfer's
    normalization exactly edgecls's, a labels file and a sample deepstream-app config; prints the top-1 agreement
    of nvinfer's preprocessing, emulated on the test images, with the original model.

    Example: edgecls deploy deepstream export/new2.onnx --precision fp16 --data ../shared/data/cifar10-jpeg.tar.gz
    """
    from edgecls.deepstream import DeepStreamRequest, Scaling, deploy_deepstream

    check_input_file(onnx_file, "ONNX file")
    if reference is not None:
        check_input_file(reference, "reference")
    request = DeepStreamRequest(precision=precision, mode=mode, batch_size=batch_size,
                                scaling=Scaling(maintain_aspect_ratio, symmetric_padding, scaling_filter),
                                crop_in_graph=crop_in_graph, classifier_threshold=classifier_threshold,
                                operate_on_gie_id=operate_on_gie_id, operate_on_class_ids=operate_on_class_ids,
                                reference=reference)
    report = deploy_deepstream(onnx_file, out_dir, data, request)
    for line in report.lines():
        click.echo(line)
