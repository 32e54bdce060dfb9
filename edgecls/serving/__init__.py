"""Serving an exported model: `edgecls serve` (a Triton Inference Server in front of the edgecls runtime),
`edgecls deploy triton` (a model repository for a standalone Triton) and `edgecls bench --server` (parity, speed
and load measured over the wire)."""
