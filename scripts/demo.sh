#!/usr/bin/env bash
# The whole pipeline on the real CIFAR-10: train -> export fp32/fp16/int8 (+ TensorRT engines where TensorRT
# exists) -> bench every artifact -> one HTML page of it all. On a CUDA machine it trains the full default recipe;
# on a CPU-only machine a short run on a subset, so that every stage still runs for real in a few minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
DATA=${DATA:-../shared/data/cifar10-jpeg.tar.gz}
edgecls() { "$VENV/bin/edgecls" "$@"; }

if "$VENV/bin/python" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
    edgecls train --model new2 --data "$DATA"
else
    echo "demo: no CUDA GPU here: training new2 for 2 epochs on 10,000 training images on the CPU (a real run needs a GPU)"
    edgecls train --model new2 --data "$DATA" --epochs 2 --batch-size 128 --train-images 11000 --val-split 1000
fi
edgecls eval --checkpoint checkpoints/new2.pt --data "$DATA"
# int8 within an accuracy budget, judged on the held-out validation images (README: INT8 within an accuracy budget)
edgecls export --checkpoint checkpoints/new2.pt --data "$DATA" --fp16 --int8 --max-drop 0.5 --min-agreement 99
edgecls bench --all checkpoints/new2.pt --data "$DATA" --json results/demo-bench.json
edgecls report checkpoints/new2.pt --data "$DATA" -o reports/new2.html
echo "demo: the report is $(pwd)/reports/new2.html (open it in a browser)"
