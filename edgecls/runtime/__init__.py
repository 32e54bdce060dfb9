"""The deployment runtime: classify images with an exported edgecls model (.onnx through ONNX Runtime, .plan
through TensorRT). It needs numpy and one backend, never torch, so it can be copied onto a Jetson.

    from edgecls.runtime import load
    with load("export/new2.onnx") as classifier:
        predictions = classifier.classify(images)   # uint8 H x W x C images, any size
        print(predictions.names, predictions.top_k(3))
"""

from edgecls.runtime.base import Runner
from edgecls.runtime.classifier import Classifier, Predictions, open_runner, softmax

load = Classifier.load

__all__ = ["Classifier", "Predictions", "Runner", "load", "open_runner", "softmax"]
