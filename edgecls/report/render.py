"""The page: gathered inputs and computed answers -> one self-contained HTML document.

Every figure is an embedded PNG and is followed by the numbers it was drawn from, as a table (folded away in a
`<details>` element where it is long), so a reader can copy them and a test can check them. Tables carry ids
(`training-epochs`, `per-class`, `parity`, ...). No script, no font, no stylesheet from elsewhere: the page opens
from a USB stick on a machine without network.
"""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from edgecls import __version__
from edgecls.artifacts import utc_now
from edgecls.formats import Int8Report
from edgecls.report import figures
from edgecls.report.compare import Answers, Flip
from edgecls.report.gather import BenchRun, ReportInputs

GALLERY_LIMIT = 24  # flipped images shown per artifact
SECTIONS = {"training": "Training", "model": "The model", "accuracy": "Accuracy", "parity": "Parity",
            "speed": "Speed", "quantization": "Quantization"}

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d232a; margin: 0; }
main { max-width: 1180px; margin: 0 auto; padding: 16px 24px 48px; }
header { background: #1d3557; color: #fff; padding: 14px 24px; }
header h1 { margin: 0 0 4px; font-size: 22px; } header p { margin: 0; opacity: .85; }
nav a { color: #fff; margin-right: 14px; } nav { margin-top: 8px; }
h2 { border-bottom: 2px solid #1d3557; padding-bottom: 4px; margin-top: 36px; }
h3 { margin: 22px 0 8px; font-size: 16px; }
table { border-collapse: collapse; margin: 8px 0 12px; font-size: 13px; }
th, td { border: 1px solid #d5dbe1; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #eef2f6; } table.facts th { font-weight: 500; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
tr.ours td { font-weight: 600; background: #fff8e1; }
img.figure { max-width: 100%; display: block; margin: 8px 0; }
p.missing { background: #fff4e5; border-left: 4px solid #f0a020; padding: 6px 10px; }
p.note { color: #55606b; font-size: 13px; }
details { margin: 4px 0 12px; } summary { cursor: pointer; color: #1d3557; }
.gallery { display: flex; flex-wrap: wrap; gap: 8px; }
figure.flip { margin: 0; padding: 6px; border: 1px solid #d5dbe1; border-radius: 4px; width: 112px; font-size: 11px; }
figure.flip img { width: 96px; height: 96px; image-rendering: pixelated; display: block; margin: 0 auto 4px; }
.right { color: #1b7f3b; } .wrong { color: #b3261e; }
code { background: #eef2f6; padding: 0 3px; border-radius: 3px; }
"""


def render(inputs: ReportInputs, original: Answers | None, artifacts: list[Answers], flipped: dict[str, list[Flip]],
           unrun: list[str]) -> str:
    """The whole page. `artifacts`: each artifact's answers; `flipped`: the flips of those run here, by name;
    `unrun`: a line for each artifact without figures, saying how to get them."""
    sections = {
        "training": _training(inputs),
        "model": _model(inputs),
        "accuracy": _accuracy(inputs, original, artifacts),
        "parity": _parity(inputs, original, artifacts, flipped, unrun),
        "speed": _speed(inputs),
        "quantization": _quantization(inputs),
    }
    sha = inputs.training.checkpoint.sha256
    nav = " ".join(f'<a href="#{key}">{title}</a>' for key, title in SECTIONS.items())
    body = "\n".join(f'<section id="{key}">\n<h2>{SECTIONS[key]}</h2>\n{content}\n'
                     + "".join(f'<p class="note">{_text(note)}</p>\n' for note in inputs.notes.get(key, []))
                     + "</section>" for key, content in sections.items())
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>edgecls report: {_e(inputs.model)} ({_e(inputs.checkpoint_path.name)})</title>
<style>{CSS}</style>
</head>
<body>
<header>
<h1>edgecls report: {_e(inputs.model)}</h1>
<p>{_e(inputs.checkpoint_path)} (sha256 {sha[:12]}), made by edgecls {__version__} at {utc_now()}</p>
<nav>{nav}</nav>
</header>
<main>
{body}
{_footer(inputs)}
</main>
</body>
</html>
"""


# ----------------------------------------------------------------------------------------------- sections

def _training(inputs: ReportInputs) -> str:
    run = inputs.training
    checkpoint = run.checkpoint
    facts: list[tuple[str, Any]] = [
        ("model", checkpoint.model_name),
        ("epochs", f"{checkpoint.epoch} of {checkpoint.epochs}"),
        ("test accuracy (single center crop)", _fmt(checkpoint.test_accuracy, ".2f", "%")),
        ("device", run.device or "not recorded"),
    ]
    if run.epochs:
        seconds = sum(e["seconds"] for e in run.epochs)
        images = sum(e["seconds"] * e["images_per_second"] for e in run.epochs)
        facts += [("training time (steps only)", f"{seconds:,.1f} s"), ("images/s", f"{images / seconds:,.0f}")]
    facts.append(("training arguments", ", ".join(f"{key.replace('_', ' ')} {value}"
                                                  for key, value in checkpoint.train_args.items() if key != "model")))
    facts += [("data fingerprint", checkpoint.data_fingerprint),
              ("versions", ", ".join(f"{k} {v}" for k, v in checkpoint.versions.items()))]
    parts = [_facts(facts, "training-facts")]
    if run.epochs is None:
        return "\n".join([*parts, _missing(inputs.missing["training log"])])
    accuracy_keys = [k for k in ("test_accuracy", "val_accuracy") if any(e.get(k) is not None for e in run.epochs)]
    rows = [[e["epoch"], _fmt(e["loss"], ".4f"), _fmt(e["lr"], ".4g"), _fmt(e["seconds"], ".1f"),
             _fmt(e["images_per_second"], ",.0f"), *(_fmt(e.get(k), ".2f") for k in accuracy_keys)]
            for e in run.epochs]
    headers = ["epoch", "loss", "lr", "seconds", "images/s", *(k.replace("_", " ") + " %" for k in accuracy_keys)]
    return "\n".join([
        *parts,
        _figure(figures.training_curves(run.epochs), "training loss, learning rate and accuracy per epoch"),
        _details(f"the {len(rows)} epochs of {run.log_path}", _table(headers, rows, "training-epochs")),
    ])


def _model(inputs: ReportInputs) -> str:
    headers = ["model", "paper name", "params", "fc params", "fc %", "MMACs", "paper params", "paper fc %"]
    rows = [[r.name, r.paper_name, f"{r.params:,}", f"{r.fc_params:,}", f"{r.fc_share:.1f}", f"{r.macs / 1e6:.1f}",
             f"{r.paper_params:,}", f"{r.paper_fc_share:.1f}"] for r in inputs.models]
    ours = [r.ours for r in inputs.models]
    return "\n".join([
        _p(f"Our count of each model beside the paper's Table 2 (as `edgecls models` prints it); "
           f"{inputs.model} is highlighted. Multiply-accumulates per {inputs.training.checkpoint.preprocess.crop_size}"
           f"-pixel crop."),
        _table(headers, rows, "model-table", highlight=ours),
    ])


def _accuracy(inputs: ReportInputs, original: Answers | None, artifacts: list[Answers]) -> str:
    if original is None:
        return _missing(inputs.missing["reference"])
    names = inputs.class_names
    images = len(inputs.reference.labels)
    parts = [_p(f"The original model answers {original.accuracy:.2f}% of {images:,} test images right "
                f"(its logits saved at export: {original.source})."),
             _figure(figures.accuracy_and_confusion(original.per_class, original.confusion),
                     "per-class accuracy and confusion matrix of the original model"),
             _details("the confusion matrix as a table",
                      _matrix_table(original.confusion, names, "confusion-original"))]
    with_classes = [a for a in artifacts if a.per_class]
    deltas = {a.name: {n: _delta(a.per_class.get(n), original.per_class[n]) for n in names} for a in with_classes}
    headers = ["class", "original %", *(f"Δ {a.name}" for a in with_classes)]
    rows = [[n, _fmt(original.per_class[n], ".2f"), *(_fmt(deltas[a.name][n], "+.2f") for a in with_classes)]
            for n in names]
    parts += [_h3("Per class: each artifact as a difference from the original (points)"),
              _table(headers, rows, "per-class")]
    if any(any(v for v in d.values()) for d in deltas.values()):
        drawn = {name: {n: v or 0.0 for n, v in d.items()} for name, d in deltas.items()}
        parts.append(_figure(figures.per_class_deltas(drawn), "per-class accuracy, each artifact minus the original"))
    run_here = [a for a in artifacts if a.confusion is not None]
    changed = {a.name: a.confusion - original.confusion for a in run_here if (a.predicted != original.predicted).any()}
    parts += [_p(f"{a.name}: every answer the same as the original's.") for a in run_here if a.name not in changed]
    if changed:
        parts += [_h3("Where the answers moved: confusion matrix of each artifact minus the original's"),
                  _p("Blue: more images in that cell than the original put there; red: fewer. The diagonal holds the "
                     "right answers, so red on it is accuracy lost."),
                  _figure(figures.confusion_differences(changed, names), "confusion matrix differences"),
                  _details("the differences as tables", "\n".join(
                      f"<p>{_e(name)}</p>" + _matrix_table(diff, names, f"confusion-diff-{i}", signed=True)
                      for i, (name, diff) in enumerate(changed.items())))]
    return "\n".join(parts)


def _parity(inputs: ReportInputs, original: Answers | None, artifacts: list[Answers], flipped: dict[str, list[Flip]],
            unrun: list[str]) -> str:
    parts = [_h3("Artifacts"), _artifact_table(inputs)] if inputs.onnx_files or inputs.plans else []
    if "onnx" in inputs.missing:
        parts.append(_missing(inputs.missing["onnx"]))
    if original is None:
        return "\n".join([*parts, _missing(inputs.missing["reference"])])
    headers = ["artifact", "precision", "images", "agreement %", "flips", "right → wrong", "wrong → right",
               "accuracy %", "Δ accuracy", "max |Δ logit|", "figures from"]
    rows = [[a.name, a.precision, f"{a.parity['images']:,}", _fmt(a.parity["agreement"], ".2f"), a.parity["flips"],
             a.parity["right_to_wrong"], a.parity["wrong_to_right"], _fmt(a.parity["accuracy"], ".2f"),
             _fmt(a.parity["accuracy_delta"], "+.2f"), _fmt(a.parity["max_abs_logit_diff"], ".3g"), a.source]
            for a in artifacts if a.parity]
    parts += [_h3("Each artifact against the original"),
              _table(headers, rows, "parity") if rows else _p("No artifact to compare."),
              *(_missing(line) for line in unrun)]
    for name, found in flipped.items():
        if found:
            parts.append(_gallery(name, found, inputs.class_names))
    return "\n".join(parts)


def _artifact_table(inputs: ReportInputs) -> str:
    rows = []
    for onnx in inputs.onnx_files:
        quantization = onnx.metadata.quantization
        facts = _settings(quantization) if quantization else ""
        rows.append([str(onnx.path), "ONNX", onnx.precision, _mb(onnx.path), facts])
    for plan in inputs.plans:
        m = plan.manifest
        facts = (f"TensorRT {m.tensorrt_version} on {m.gpu_name} (compute {m.compute_capability}), batch "
                 f"{m.batch['min']}:{m.batch['opt']}:{m.batch['max']}, built {m.built_at} in "
                 f"{_fmt(m.build_seconds, '.1f')} s from {m.onnx_path}; runs only there: its figures come from bench "
                 "files")
        rows.append([str(plan.path), "TensorRT plan", plan.precision, _mb(plan.path), facts])
    return _table(["file", "format", "precision", "MB", "facts"], rows, "artifacts")


def _gallery(name: str, found: list[Flip], class_names: Sequence[str]) -> str:
    kinds = {kind: sum(f.kind == kind for f in found) for kind in dict.fromkeys(f.kind for f in found)}
    shown = found[:GALLERY_LIMIT]
    cards = []
    for flip in shown:
        def answer(who: str, index: int) -> str:
            verdict = "right" if index == flip.label else "wrong"
            return f'<div class="{verdict}">{who}: {_e(class_names[index])}</div>'

        cards.append(f'<figure class="flip" data-row="{flip.row}" data-kind="{_e(flip.kind)}">'
                     f'<img src="{figures.thumbnail(flip.image)}" alt="test image {flip.row}">'
                     f'<div>#{flip.row}, true: <b>{_e(class_names[flip.label])}</b></div>'
                     f'{answer("original", flip.original)}{answer("this file", flip.artifact)}</figure>')
    counts = ", ".join(f"{count} {kind}" for kind, count in kinds.items())
    return "\n".join([_h3(f"Flipped images of {name}"),
                      _p(f"Showing {len(shown)} of {len(found)} flipped images ({counts}); right → wrong first. "
                         "# is the image's row in the reference logits."),
                      f'<div class="gallery" data-artifact="{_e(name)}" data-total="{len(found)}">'
                      f'{"".join(cards)}</div>'])


def speed_points(runs: Iterable[BenchRun]) -> list[dict[str, Any]]:
    """One point per artifact, variant and batch size of every bench file (end-to-end timings: what users get)."""
    points = []
    for run in runs:
        result = run.result
        for timing in result.timings:
            if timing["scope"] == "end-to-end":
                points.append({"series": f"{result.path.name} · {timing['variant']}",
                               "machine": run.machine, "batch_size": timing["batch_size"],
                               "p50_ms": timing["p50_ms"], "images_per_s": timing["images_per_s"],
                               "accuracy": result.accuracy})
    return points


def _speed(inputs: ReportInputs) -> str:
    if not inputs.bench:
        return _missing(inputs.missing["bench"])
    points = speed_points(inputs.bench)
    machines = sorted({run.machine for run in inputs.bench})
    parts = [_p(f"Measured on {'; '.join(machines)}. The figure shows end-to-end timings (preprocessing, transfers "
                "and softmax included); the tables below list every timing of each bench file."),
             _figure(figures.speed(points), "accuracy against latency and throughput") if points else ""]
    by_file: dict[Path, list[BenchRun]] = {}
    for run in inputs.bench:
        by_file.setdefault(run.source, []).append(run)
    headers = ["file", "variant", "scope", "batch", "p50 ms", "p90 ms", "p99 ms", "images/s", "accuracy %"]
    for index, (source, runs) in enumerate(by_file.items()):
        env = runs[0].result.environment
        versions = ", ".join(f"{k} {v}" for k, v in env.get("versions", {}).items())
        rows = [[str(run.result.path), t["variant"], t["scope"], t["batch_size"], _fmt(t["p50_ms"], ".3f"),
                 _fmt(t["p90_ms"], ".3f"), _fmt(t["p99_ms"], ".3f"), _fmt(t["images_per_s"], ",.1f"),
                 _fmt(run.result.accuracy, ".2f")] for run in runs for t in run.result.timings]
        parts += [_h3(str(source)),
                  _p(f"on {runs[0].machine}, {env.get('platform', '?')}; measured {env.get('measured_at', '?')}; "
                     f"{versions}"),
                  _table(headers, rows, f"bench-{index}") if rows else ""]  # a served bench has load rows instead
        parts += [_served(run, f"bench-{index}-served-{n}") for n, run in enumerate(runs) if run.result.load]
    return "\n".join(parts)


def _served(run: BenchRun, table_id: str) -> str:
    """A bench of a served model (`edgecls bench --server`): its parity over the wire and its load table."""
    result, server = run.result, run.result.server or {}
    found = result.parity
    parity = (f"top-1 agreement {found['agreement']:.2f}% with {found.get('reference', 'the reference')} on "
              f"{found['images']} images, max |Δ logit| {_fmt(found.get('max_abs_logit_diff'), '.3g')}"
              if found else "no reference to compare with")
    state = "" if result.complete else f" INCOMPLETE: {result.error}"
    headers = ["concurrency", "images per request", "requests timed", "failed", "lost", "p50 ms", "p90 ms", "p99 ms",
               "images/s", "batches formed", "mean batch"]
    rows = [[r["concurrency"], r["request_batch"], r["timed_requests"], r["failed"], r.get("lost", "?"),
             _fmt(r.get("p50_ms"), ".2f"), _fmt(r.get("p90_ms"), ".2f"), _fmt(r.get("p99_ms"), ".2f"),
             _fmt(r["images_per_s"], ",.1f"), (r.get("batching") or {}).get("batches", "-"),
             _fmt((r.get("batching") or {}).get("mean_batch"), ".2f")]
            for r in result.load]
    return "\n".join([_p(f"Served: {server.get('url', '?')} model '{server.get('model', '?')}' over "
                          f"{server.get('protocol', '?')}: accuracy {result.accuracy:.2f}%, {parity}.{state}"),
                      _table(headers, rows, table_id)])


def _quantization(inputs: ReportInputs) -> str:
    if "int8" in inputs.missing:
        return _missing(inputs.missing["int8"])
    parts = []
    int8 = next((f for f in inputs.onnx_files if f.precision == "int8"), None)
    if int8 is not None:
        settings = int8.metadata.quantization or {}
        parts.append(_p(f"{int8.path}: {_settings(settings)}"))
    if inputs.int8_layers:
        rows = [[layer.name, layer.op, layer.precision, layer.reason] for layer in inputs.int8_layers]
        kept = sum(layer.precision == "float" for layer in inputs.int8_layers)
        parts += [_h3(f"Layers: {len(rows) - kept} in int8, {kept} kept in float"),
                  _table(["layer", "op", "precision", "why float"], rows, "int8-layers")]
    if inputs.int8_report is not None:
        parts.append(_int8_report(inputs.int8_report, inputs.int8_report_path))
    elif inputs.calibration is not None:
        parts.append(_calibration(inputs))
    elif "calibration" in inputs.missing:
        parts.append(_missing(inputs.missing["calibration"]))
    return "\n".join(parts)


def _settings(settings: dict[str, Any]) -> str:
    """An int8 file's quantization settings in words: lists joined, nested limits inline, "none" for empty ones."""
    def value(item: Any) -> str:
        if isinstance(item, dict):
            return "(" + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in item.items() if v is not None) + ")"
        if isinstance(item, (list, tuple)):
            return ", ".join(map(str, item)) if item else "none"
        return "none" if item is None else str(item)

    return "; ".join(f"{key.replace('_', ' ')} {value(item)}" for key, item in settings.items())


def _int8_report(report: Int8Report, path: Path | None) -> str:
    """The int8 search's evidence: each layer's cost when quantized alone and the decision, then the result."""
    rows = [[layer.name, layer.op, f"{layer.parameters:,}", _fmt(layer.sqnr_db, ".1f"),
             _fmt(layer.alone.get("agreement"), ".2f", "%"), _fmt(layer.alone.get("accuracy_delta"), "+.2f"),
             layer.rank, layer.decision, layer.reason] for layer in report.layers]
    columns = ["layer", "op", "parameters", "SQNR dB", "agreement alone", "Δacc alone", "rank", "decision", "why"]
    parts = [_h3(f"Per-layer sensitivity ({path}): {report.sensitivity}"), _table(columns, rows, "int8-report"),
             _figure(figures.sensitivity([layer.name for layer in report.layers],
                                         [layer.sqnr_db for layer in report.layers],
                                         [layer.decision for layer in report.layers],
                                         "SQNR of the logits (dB) with the layer alone int8: lower costs more"),
                     "per-layer SQNR")]
    budget = ", ".join(f"{key.replace('_', ' ')} {value}" for key, value in report.budget.items() if value is not None)
    facts: list[tuple[str, Any]] = [
        ("budget", f"{budget} (judged on {report.validation.get('note', 'the validation images')})"),
        ("held", "yes" if report.passed else "no: nothing was installed"),
        ("result", f"{report.int8_layers} of {len(report.layers)} layers int8, {report.method} calibration, "
                   f"{len(report.candidates)} choices tried in {report.search_seconds:.0f} s")]
    for split in ("validation", "test"):
        figures_of = report.result.get(split)
        if figures_of:
            facts.append((split, f"accuracy {figures_of['accuracy']:.2f}% ({figures_of['accuracy_delta']:+.2f} vs "
                                 f"float), agreement {figures_of['agreement']:.2f}%, flips {figures_of['flips']} "
                                 f"(right→wrong {figures_of['right_to_wrong']}, wrong→right "
                                 f"{figures_of['wrong_to_right']}) on {figures_of['images']:,} images"))
    if report.throughput:
        speed = report.throughput
        facts.append((f"CPU throughput at batch {speed['batch_size']}",
                      f"{speed['images_per_s']['result']:,.0f} images/s = {speed['vs_fp32']:.2f}× fp32, "
                      f"{speed['vs_all_int8']:.2f}× all-int8"))
    return "\n".join(parts + [_h3("The result"), _facts(facts, "int8-final")])



def _calibration(inputs: ReportInputs) -> str:
    calibration = inputs.calibration
    record = calibration.record
    facts = ", ".join(f"{key} {record.get(key)}" for key in ("method", "size", "seed", "split", "created_at")
                      if key in record)
    rows = [[r.tensor, _fmt(r.low, ".4g"), _fmt(r.high, ".4g")] for r in calibration.ranges]
    return "\n".join([
        _h3(f"Calibrated tensor ranges ({calibration.path})"),
        _p(f"{facts}. A per-layer sensitivity table appears here once an int8 report "
           f"(calibration/{inputs.model}.int8-report.json) exists."),
        _figure(figures.tensor_ranges(calibration.ranges), "calibrated range of each tensor"),
        _details(f"the {len(rows)} ranges as a table",
                 _table(["tensor", "low", "high"], rows, "calibration-ranges")),
    ])


def _footer(inputs: ReportInputs) -> str:
    sources = "".join(f"<li>{_e(path)}</li>" for path in inputs.sources)
    return f'<h2 id="sources">Made from</h2>\n<ul>{sources}</ul>'


# ----------------------------------------------------------------------------------------------- helpers

def _e(value: Any) -> str:
    return html.escape(str(value))


def _text(line: str) -> str:
    """Escaped text with `code` spans, as the missing-input lines write commands."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(line))


def _p(line: str) -> str:
    return f"<p>{_text(line)}</p>"


def _h3(line: str) -> str:
    return f"<h3>{_e(line)}</h3>"


def _missing(line: str) -> str:
    return f'<p class="missing">Left out: {_text(line)}.</p>'


def _figure(uri: str, alt: str) -> str:
    return f'<img class="figure" src="{uri}" alt="{_e(alt)}">'


def _details(summary: str, content: str) -> str:
    return f"<details><summary>{_e(summary)}</summary>\n{content}\n</details>"


def _facts(pairs: Iterable[tuple[str, Any]], table_id: str) -> str:
    """A two-column table of name and value, the names as row headers."""
    rows = "".join(f"<tr><th>{_e(name)}</th><td>{_e(value)}</td></tr>" for name, value in pairs)
    return f'<table id="{table_id}" class="facts">{rows}</table>'


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]], table_id: str,
           highlight: Sequence[bool] = ()) -> str:
    head = "<tr>" + "".join(f"<th>{_e(h)}</th>" for h in headers) + "</tr>"
    body = []
    for index, row in enumerate(rows):
        cls = ' class="ours"' if index < len(highlight) and highlight[index] else ""
        cells = "".join(f'<td class="n">{_e(c)}</td>' if _numeric_text(c) else f"<td>{_e(c)}</td>" for c in row)
        body.append(f"<tr{cls}>{cells}</tr>")
    return f'<table id="{table_id}">{head}{"".join(body)}</table>'


def _matrix_table(matrix: np.ndarray, names: Sequence[str], table_id: str, signed: bool = False) -> str:
    spec = "+d" if signed else "d"
    rows = [[name, *(format(int(v), spec) for v in row)] for name, row in zip(names, matrix)]
    return _table(["true \\ answer", *names], rows, table_id)


def _numeric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _numeric_text(value: Any) -> bool:
    return _numeric(value) or bool(re.fullmatch(r"[+-]?[\d,]*\.?\d+(e[+-]?\d+)?%?", str(value)))


def _fmt(value: Any, spec: str, unit: str = "") -> str:
    return "–" if value is None else format(value, spec) + unit


def _delta(value: float | None, base: float | None) -> float | None:
    return None if value is None or base is None else value - base


def _mb(path: Path) -> str:
    return f"{path.stat().st_size / 1e6:.2f}"
