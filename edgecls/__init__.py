"""edgecls: train a compact CIFAR-10 classifier, export it, build TensorRT engines, verify parity.

Importing the package imports nothing heavy: `edgecls.runtime` must stay usable without torch.
"""

__version__ = "0.1.0"
