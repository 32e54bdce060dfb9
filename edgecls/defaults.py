"""Every default and every list of choices, in one light module (no torch, no onnx): the stages use them and
the CLI shows them in its help without importing the stages."""

from __future__ import annotations

# Where artifacts go, relative to the working folder.
CHECKPOINT_DIR = "checkpoints"
EXPORT_DIR = "export"
ENGINES_DIR = "engines"
CALIBRATION_DIR = "calibration"

# The network input: random crops of this size in training, the center crop at evaluation and deployment.
CROP_SIZE = 28
# Training images held out of training (seeded), on which every accuracy decision is made: best.pt, int8 budget.
# Unless --val-split says: VAL_SPLIT_PERCENT of the training images, at most DEFAULT_VAL_SPLIT (CIFAR-10's 50,000 give
# the paper's 5,000; a set of 2,000 photos, 200).
DEFAULT_VAL_SPLIT = 5000
VAL_SPLIT_PERCENT = 10
# Unless --batch-size says: on a data set too small for the recipe's batch, the batch is halved (down to
# MIN_FITTED_BATCH) until an epoch has MIN_STEPS_PER_EPOCH steps (CIFAR-10 keeps every recipe's: 43 and more).
MIN_STEPS_PER_EPOCH = 16
MIN_FITTED_BATCH = 32
# A checkpoint that records no held-out split: its int8 budget is judged on DEFAULT_VAL_SPLIT training images
# chosen with this seed (which training saw).
VALIDATION_SEED = 0

# Export.
DEFAULT_OPSET = 17  # the newest opset TensorRT 8.5 (JetPack 5) parses
MAX_OPSET = 21
PRECISIONS = ("fp32", "fp16", "int8")

# INT8 calibration.
QUANT_TARGETS = ("trt", "cpu")
CALIBRATION_METHODS = ("percentile", "minmax", "entropy")
DEFAULT_METHOD = "percentile"
DEFAULT_CALIBRATION_SIZE = 1024
DEFAULT_CALIBRATION_SEED = 0
# INT8 within a budget: the CPU throughput in its report (ONNX Runtime, the model alone, alternating rounds).
INT8_THROUGHPUT_BATCH = 64
INT8_THROUGHPUT_SECONDS = 1.5
INT8_THROUGHPUT_ROUNDS = 3

# TensorRT engines.
DEFAULT_BATCH_PROFILE = (1, 64, 256)  # min, opt, max
DEFAULT_WORKSPACE_MIB = 1024

# Bench: one model in detail, or every artifact of a model (`--all`) in one quicker table.
BENCH_BATCH_SIZES = (1, 8, 64, 256)
BENCH_DURATION_S = 2.0
BENCH_WARMUP_S = 0.5
BENCH_ALL_BATCH_SIZES = (1, 256)
BENCH_ALL_DURATION_S = 0.5
BENCH_ALL_WARMUP_S = 0.2
# The largest batch bench times (engines may accept less: their profile's maximum). ONNX Runtime's activations grow
# with the batch: bench of new2 peaked at 1.1 GB at 1024 (data set included), above 4 GB at 4096
# (benchmarks/bench_memory.py).
BENCH_MAX_BATCH = 1024
ONNX_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
                  "tensorrt": "TensorrtExecutionProvider"}

# `edgecls deploy triton`: the largest batch Triton forms for an ONNX file (which takes any), how long a request may
# wait for others to join its batch, how many class names the ensemble returns per image.
TRITON_ONNX_MAX_BATCH = 64
TRITON_QUEUE_DELAY_US = 100
TRITON_TOP_K = 5
