"""The `model.py` of every Python-backend model `edgecls deploy triton` writes. It runs inside Triton's Python
backend, never in edgecls itself: deploy copies it into each such model's version folder, beside a copy of the
torch-free parts of edgecls it imports, so the repository needs no edgecls install (numpy, Pillow and, for the
`onnxruntime` role, onnxruntime in Triton's Python).

Its role, and the exported model's own metadata (names, class names, preprocessing), come from the model's
config.pbtxt parameters:
- `preprocess`: encoded image bytes -> the network input, with edgecls's one decoder (its limits included) and
  preprocessing;
- `onnxruntime`: the network input -> logits, the ONNX file beside this one run by edgecls's runtime (for a Triton
  without its onnxruntime backend, such as the one PyTriton ships);
- `postprocess`: logits -> the logits again, probabilities and the names of the top-k classes, most probable first.
"""

import json
import sys
from pathlib import Path

# The copy of edgecls beside this file comes first, whatever edgecls Triton's Python may also have installed.
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402  (Triton's Python backend provides it)

from edgecls.errors import EdgeclsError, first_line  # noqa: E402
from edgecls.formats import METADATA_KEY, ModelMetadata  # noqa: E402
from edgecls.runtime.classifier import Classifier, Predictions, softmax  # noqa: E402
from edgecls.runtime.images import decode  # noqa: E402
from edgecls.runtime.onnx_backend import OnnxRunner  # noqa: E402

IMAGE_INPUT = "image"  # preprocess: one encoded image per batch row
PROBABILITIES = "probabilities"  # postprocess: softmax of the logits
TOP_K = "classes"  # postprocess: the names of the k most probable classes


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        self.name = config["name"]
        self.role = parameters["edgecls_role"]
        self.metadata = ModelMetadata.from_json(parameters.get(METADATA_KEY), f"Triton model {self.name}")
        if self.role == "onnxruntime":
            folder = Path(args["model_repository"]) / args["model_version"]
            provider = "cuda" if args.get("model_instance_kind") == "GPU" else "cpu"
            self.classifier = Classifier(OnnxRunner(folder / "model.onnx", provider=provider))
        elif self.role == "postprocess":
            self.top_k = int(parameters["edgecls_top_k"])
        elif self.role != "preprocess":
            raise ValueError(f"{self.name}: unknown edgecls_role {self.role!r}")

    def execute(self, requests):
        run = getattr(self, "_" + self.role)
        if self.role == "onnxruntime":
            return run(requests)
        responses = []
        for request in requests:
            try:
                responses.append(pb_utils.InferenceResponse(output_tensors=run(request)))
            except Exception as exc:  # noqa: BLE001 - a bad request is answered with its reason; the others are served
                message = str(exc) if isinstance(exc, EdgeclsError) else f"{self.name}: {first_line(exc)}"
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message)))
        return responses

    def _preprocess(self, request):
        blobs = pb_utils.get_input_tensor_by_name(request, IMAGE_INPUT).as_numpy().reshape(-1)
        preprocess = self.metadata.preprocess
        # Each image is brought to the model's input size as soon as it is decoded, as the runtime does.
        fitted = [preprocess.fit(decode(bytes(blob), name=f"{i} of the request")) for i, blob in enumerate(blobs)]
        return [pb_utils.Tensor(self.metadata.input_name, preprocess(np.stack(fitted)))]

    def _postprocess(self, request):
        logits = pb_utils.get_input_tensor_by_name(request, self.metadata.output_name).as_numpy()
        probabilities = softmax(logits.astype(np.float32))
        predictions = Predictions(logits, probabilities, logits.argmax(axis=1), self.metadata.preprocess.class_names)
        names = [[name.encode() for name, _ in row] for row in predictions.top_k(self.top_k)]
        return [pb_utils.Tensor(self.metadata.output_name, logits),
                pb_utils.Tensor(PROBABILITIES, probabilities.astype(np.float32)),
                pb_utils.Tensor(TOP_K, np.array(names, dtype=np.object_))]

    def _onnxruntime(self, requests):
        """All requests Triton batched together, run as one batch; each gets its own rows back."""
        batches = [pb_utils.get_input_tensor_by_name(r, self.metadata.input_name).as_numpy() for r in requests]
        try:
            logits = self.classifier.run_preprocessed(np.concatenate(batches).astype(np.float32, copy=False))
        except Exception as exc:  # noqa: BLE001 - every request of the batch is told, the model keeps serving
            error = pb_utils.TritonError(f"{self.name}: {first_line(exc)}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        bounds = np.cumsum([len(batch) for batch in batches])[:-1]
        return [pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.metadata.output_name, part)])
                for part in np.split(logits, bounds)]

    def finalize(self):
        if self.role == "onnxruntime":
            self.classifier.close()
