"""The Triton batching options that `edgecls serve` and `edgecls deploy triton` share (--instances, --max-batch,
--preferred-batch-sizes, --queue-delay-us, --top-k): read and checked one way for both commands."""

from __future__ import annotations

from typing import Optional, Sequence

from edgecls.errors import EdgeclsError


def parse_batch_sizes(text: Optional[str]) -> tuple[int, ...]:
    """--preferred-batch-sizes: '16,32' -> (16, 32); None -> ()."""
    if text is None:
        return ()
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        sizes = ()
    if not sizes:
        raise EdgeclsError(f"--preferred-batch-sizes {text!r} is not a comma-separated list of batch sizes, e.g. 16,32")
    return sizes


def check_batching(*, instances: int, max_batch: Optional[int], preferred: Sequence[int], queue_delay_us: int,
                   top_k: int) -> None:
    """One line naming the option for a value Triton cannot use, before any server starts or file is written."""
    if instances < 1:
        raise EdgeclsError(f"--instances {instances} must be at least 1")
    if max_batch is not None and max_batch < 1:
        raise EdgeclsError(f"--max-batch {max_batch} must be at least 1")
    if any(size < 1 for size in preferred):
        raise EdgeclsError(f"--preferred-batch-sizes {list(preferred)} must be positive")
    if queue_delay_us < 0:
        raise EdgeclsError(f"--queue-delay-us {queue_delay_us} must be at least 0 microseconds")
    if top_k < 1:
        raise EdgeclsError(f"--top-k {top_k} must be at least 1")
