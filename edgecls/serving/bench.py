"""`edgecls bench --server URL --model NAME`: the served model measured over the wire, with the figures and the gate
of every other bench: accuracy and parity against the reference logits on the test split, then latency and
throughput at each concurrency, with the batches Triton formed meanwhile (from its metrics endpoint).

The test images are preprocessed here with the preprocessing the served model reports (its edgecls metadata), and
sent as float32 tensors: the served answers are those of the artifact on the same inputs, so parity measures the
serving path itself.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

import numpy as np

from edgecls import reference as references
from edgecls.bench import _num, data_summary, judge, no_reference_error, variant_record
from edgecls.data import Cifar10
from edgecls.errors import EdgeclsError
from edgecls.formats import BenchResult
from edgecls.metrics import Gate, accuracy, parity, per_class_accuracy
from edgecls.serving.client import (LoadSettings, ServedModel, ServerError, batch_counters, batching_between,
                                    metrics_url, parse_server, run_load)
from edgecls.timing import environment, timing_images

ACCURACY_REQUEST = 64  # images per request while measuring accuracy


def bench_server(url: str, model: str, dataset: Cifar10, reference: Any = None, *,
                 load: LoadSettings = LoadSettings(), gate: Gate = Gate(), metrics: Optional[str] = None,
                 progress: bool = False) -> BenchResult:
    """Accuracy, parity, load figures and the gate's verdict of a served model, as the `BenchResult` every bench
    hands on (with `server` and `load`). A server that stops answering during the load ends the run: the result then
    has `complete` false and `error` saying where."""
    server = parse_server(url)
    with ServedModel(server, model) as served:
        metadata, config = served.metadata()
        where = Path(f"{server}/{model}")  # names the served model in messages; no file
        dataset.check_fits(metadata.preprocess, where)
        strict = reference is not None
        notes: list[str] = []
        if reference is None:
            reference = references.find(Path(model), metadata.model)
        aligned = None
        if reference is not None:
            try:
                aligned = references.resolve(reference, metadata, where, dataset)
            except EdgeclsError as exc:
                if strict:
                    raise
                notes.append(f"reference not used: {exc}")
        if gate.active and aligned is None:
            raise no_reference_error(where)
        chunk = min(ACCURACY_REQUEST, int(config.get("max_batch_size") or ACCURACY_REQUEST))
        inputs = metadata.preprocess(dataset.test_images)  # 10,000 x 3 x 28 x 28 float32: 94 MB
        starts = range(0, len(inputs), chunk)
        if progress:
            from tqdm import tqdm

            starts = tqdm(starts, desc="accuracy over the wire", unit="request", leave=False)
        logits = np.concatenate([served.infer(metadata.input_name, inputs[s : s + chunk])["logits"] for s in starts])
    logits = logits.astype(np.float32)
    found = None if aligned is None else parity(logits[aligned.indices], aligned.logits, aligned.labels,
                                                aligned.source)
    variant = f"served {server.protocol}"
    variants = [variant_record(variant, logits, found, dataset)]
    counters_url = metrics_url(server, config, metrics)
    if counters_url is None:
        notes.append("batches formed not measured: the server did not say where its metrics are; pass --metrics URL")
    rows, error = [], None
    for concurrency in load.concurrency:
        batches = [inputs[i : i + load.request_batch] for i in range(0, 256 * load.request_batch, load.request_batch)]
        batches = [b for b in batches if len(b) == load.request_batch] or [timing_images(inputs, load.request_batch)]
        before = _counters(counters_url, model, notes)
        row = run_load(server, model, metadata.input_name, batches, load.level(concurrency))
        after = _counters(counters_url, model, notes) if row["complete"] else None
        row["batching"] = batching_between(before, after) if before and after else None
        row["variant"] = variant
        rows.append(row)
        if not row["complete"]:
            error = (f"the server at {server} stopped answering during the load at concurrency {concurrency} "
                     f"({row['first_failure'] or 'no answer'}); the run is incomplete")
            break
    record = {
        "model": {"path": str(where), "format": "served", "name": metadata.model, "precision": metadata.precision,
                  "size_mb": None, "checkpoint_sha256": metadata.checkpoint_sha256, "backend": "triton",
                  "served_name": model, "max_batch": config.get("max_batch_size")},
        "server": {"url": str(server), "protocol": server.protocol, "model": model, "metrics": counters_url,
                   "instances": sum(int(g.get("count", 1)) for g in config.get("instance_group", [])) or None,
                   "dynamic_batching": config.get("dynamic_batching")},
        "data": data_summary(dataset),
        "accuracy": accuracy(logits, dataset.test_labels),
        "per_class": per_class_accuracy(logits, dataset.test_labels, list(dataset.class_names)),
        "parity": asdict(found) if found else None,
        "variants": variants,
        "timings": [],
        "load": rows,
        "settings": load.to_dict(),
        "notes": notes,
        "gates": judge(gate, variants).to_dict(),
        "complete": error is None,
        "error": error,
        "environment": environment({"backend": "triton client"}),
    }
    return BenchResult.from_dict(record, str(where))  # checked as a reader would check it


def _counters(url: Optional[str], model: str, notes: list[str]) -> Optional[dict[str, float]]:
    if url is None:
        return None
    try:
        return batch_counters(url, model)
    except ServerError as exc:
        if str(exc) not in notes:
            notes.append(str(exc))
        return None


def format_served(result: BenchResult) -> str:
    """The terminal table of a served bench; every figure in it is in the JSON too."""
    served, data = result.server or {}, result.data
    lines = [f"{served['url']} model '{served['model']}': {result.model['name']} {result.model['precision']} "
             f"({served['instances'] or '?'} instance(s), batches up to {result.model['max_batch']})",
             f"data: {data['test_images']} test images from {data['source']}",
             f"accuracy over the wire: {result.accuracy:.2f}%"]
    found = result.parity
    if found:
        lines.append(f"parity vs {found['reference']} ({found['images']} images): top-1 agreement "
                     f"{found['agreement']:.2f}%, flips {found['flips']} (right->wrong {found['right_to_wrong']}, "
                     f"wrong->right {found['wrong_to_right']}), accuracy delta {found['accuracy_delta']:+.2f} points, "
                     f"max |delta logit| {found['max_abs_logit_diff']:.3g}")
    else:
        lines.append("parity: no reference (pass --reference, or run from the folder holding export/)")
    lines += [f"note: {note}" for note in result.notes]
    settings = result.settings
    lines.append(f"load ({settings['request_batch']} image(s) per request, {settings['duration_s']:g} s per level "
                 f"after {settings['warmup_s']:g} s warm-up):")
    lines.append(f"  {'concurrency':>11} {'requests':>9} {'failed':>6} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} "
                 f"{'images/s':>9} {'batches':>8} {'mean batch':>10}")
    for row in result.load:
        batching = row.get("batching") or {}
        lines.append(f"  {row['concurrency']:>11} {row['timed_requests']:>9} {row['failed']:>6} {_num(row['p50_ms'], '8.2f'):>8} "
                     f"{_num(row['p90_ms'], '8.2f'):>8} {_num(row['p99_ms'], '8.2f'):>8} "
                     f"{row['images_per_s']:>9.1f} {_num(batching.get('batches'), 'd'):>8} "
                     f"{_num(batching.get('mean_batch'), '10.2f'):>10}")
    gates = result.gates
    if gates and (gates["max_drop"] is not None or gates["min_agreement"] is not None):
        lines.append("gates: " + ("passed" if gates["passed"] else "FAILED: " + "; ".join(gates["failures"])))
    if not result.complete:
        lines.append(f"INCOMPLETE: {result.error}")
    return "\n".join(lines)
