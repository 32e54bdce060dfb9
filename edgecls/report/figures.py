"""The report's pictures, as `data:` URIs of PNG images to embed in the page (no file beside it, no network).

matplotlib is an optional extra (`edgecls[report]`): it is imported inside the functions that draw, never at
module import, and only `Figure` objects are used (no pyplot, no GUI backend, no global state). The thumbnails of
the gallery need only Pillow.
"""

from __future__ import annotations

import base64
import io
from typing import Any, Sequence

import numpy as np

from edgecls.errors import EdgeclsError

INSTALL_HINT = "edgecls report needs matplotlib: pip install 'edgecls[report]'"
DPI = 100
MARKERS = "osD^vP*X"


def require_matplotlib() -> None:
    """Fail in one line, before any long work, when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise EdgeclsError(INSTALL_HINT) from exc


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _png(figure: Any) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})  # no version string or URL inside
    return _data_uri(buffer.getvalue())


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _color(index: int) -> Any:
    from matplotlib import colormaps

    return colormaps["tab10"](index % 10)


def thumbnail(image: np.ndarray, scale: int = 3) -> str:
    """A small image enlarged with nearest-neighbour sampling, so its pixels stay visible as they are."""
    from PIL import Image

    buffer = io.BytesIO()
    picture = Image.fromarray(image)
    picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST).save(buffer, format="PNG")
    return _data_uri(buffer.getvalue())


def training_curves(epochs: Sequence[dict[str, Any]]) -> str:
    """Loss, learning rate and accuracy per epoch (accuracy only when the log has some)."""
    numbers = [e["epoch"] for e in epochs]
    accuracies = {key: [(e["epoch"], e[key]) for e in epochs if e.get(key) is not None]
                  for key in ("test_accuracy", "val_accuracy")}
    accuracies = {key: points for key, points in accuracies.items() if points}
    panels = 2 + bool(accuracies)
    figure = _figure(4.2 * panels, 3.0)
    axes = figure.subplots(1, panels)
    series = [("training loss (mean per epoch)", [e["loss"] for e in epochs]),
              ("learning rate (at the epoch's end)", [e["lr"] for e in epochs])]
    for ax, (title, values) in zip(axes, series):
        ax.plot(numbers, values, marker="o", markersize=3)
        ax.set_title(title, fontsize=10)
    for index, (key, points) in enumerate(accuracies.items()):
        x, y = zip(*points)
        axes[2].plot(x, y, marker="o", markersize=3, color=_color(index + 2), label=key.replace("_", " "))
    if accuracies:
        axes[2].set_title("accuracy (%)", fontsize=10)
        axes[2].legend(fontsize=8)
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    return _png(figure)


def accuracy_and_confusion(per_class: dict[str, float | None], confusion: np.ndarray) -> str:
    """Per-class accuracy bars beside the confusion matrix, counts written in its cells."""
    names = list(per_class)
    figure = _figure(11.0, 4.6)
    left, right = figure.subplots(1, 2, width_ratios=[1, 1.35])
    values = [per_class[n] if per_class[n] is not None else 0.0 for n in names]
    left.barh(names, values, color=_color(0))
    left.invert_yaxis()
    left.set_xlim(0, 100)
    left.set_xlabel("accuracy (%)")
    left.set_title("per-class accuracy", fontsize=10)
    for y, value in enumerate(values):
        left.text(min(value + 1, 88), y, f"{value:.1f}", va="center", fontsize=8)
    image = right.imshow(confusion, cmap="Blues")
    _label_matrix(right, names, confusion, lambda v: f"{v:d}", confusion.max() / 2)
    right.set_title("confusion matrix (rows: true class, columns: answer)", fontsize=10)
    figure.colorbar(image, ax=right, shrink=0.8)
    return _png(figure)


def confusion_differences(differences: dict[str, np.ndarray], names: Sequence[str]) -> str:
    """Artifact minus original confusion matrix, one panel per artifact: where the answers moved."""
    count = len(differences)
    figure = _figure(5.2 * count, 4.8)
    axes = np.atleast_1d(figure.subplots(1, count))
    for ax, (title, difference) in zip(axes, differences.items()):
        limit = max(1, int(np.abs(difference).max()))
        ax.imshow(difference, cmap="RdBu", vmin=-limit, vmax=limit)
        _label_matrix(ax, names, difference, lambda v: f"{v:+d}" if v else "", limit / 2)
        ax.set_title(title, fontsize=10)
    return _png(figure)


def _label_matrix(ax: Any, names: Sequence[str], values: np.ndarray, text: Any, dark_above: float) -> None:
    ticks = range(len(names))
    ax.set_xticks(ticks, names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(ticks, names, fontsize=8)
    for (row, col), value in np.ndenumerate(values):
        ax.text(col, row, text(int(value)), ha="center", va="center", fontsize=7,
                color="white" if abs(value) > dark_above else "black")


def per_class_deltas(deltas: dict[str, dict[str, float]]) -> str:
    """Per-class accuracy of each artifact minus the original's, in points, grouped by class."""
    names = list(next(iter(deltas.values())))
    width = 0.8 / len(deltas)
    figure = _figure(11.0, 3.4)
    ax = figure.subplots()
    for index, (label, values) in enumerate(deltas.items()):
        x = np.arange(len(names)) + (index - (len(deltas) - 1) / 2) * width
        ax.bar(x, [values[n] for n in names], width, label=label, color=_color(index + 1))
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(names)), names, fontsize=9)
    ax.set_ylabel("Δ accuracy (points)")
    ax.set_title("per-class accuracy, artifact minus original", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _png(figure)


def speed(points: Sequence[dict[str, Any]]) -> str:
    """Accuracy against latency (top) and throughput (bottom), one column per batch size: one point per artifact
    and bench file, coloured by artifact and labelled with its letter in the legend, shaped by machine.
    (Letters, not names: names of neighbouring points would write over each other.)"""
    from matplotlib.lines import Line2D

    series = list(dict.fromkeys(p["series"] for p in points))
    machines = list(dict.fromkeys(p["machine"] for p in points))
    batches = sorted({p["batch_size"] for p in points})
    figure = _figure(max(10.0, 3.3 * len(batches)), 6.6)
    axes = figure.subplots(2, len(batches), sharey=True, squeeze=False)
    for column, batch in enumerate(batches):
        for row, (key, label) in enumerate((("p50_ms", "latency p50 (ms per batch)"),
                                            ("images_per_s", "throughput (images/s)"))):
            ax = axes[row][column]
            here = sorted((p for p in points if p["batch_size"] == batch), key=lambda p: (p["accuracy"], p[key]))
            for index, point in enumerate(here):
                number = series.index(point["series"])
                ax.scatter(point[key], point["accuracy"], s=45, color=_color(number),
                           marker=MARKERS[machines.index(point["machine"]) % len(MARKERS)], zorder=3)
                # Above and below in turn, so that close neighbours at the same accuracy stay apart.
                ax.annotate(_letter(number), (point[key], point["accuracy"]), textcoords="offset points",
                            xytext=(4, 4 if index % 2 == 0 else -10), fontsize=8, weight="bold")
            ax.margins(x=0.3, y=0.15)
            _x_scale(ax, [p[key] for p in here])
            ax.set_xlabel(label, fontsize=9)
            ax.grid(alpha=0.3, which="both")
            if row == 0:
                ax.set_title(f"batch {batch}", fontsize=10)
            if column == 0:
                ax.set_ylabel("test accuracy (%)", fontsize=9)
    handles = [Line2D([], [], color=_color(i), marker="o", linestyle="", label=f"{_letter(i)}: {name}")
               for i, name in enumerate(series)]
    handles += [Line2D([], [], color="gray", marker=MARKERS[i % len(MARKERS)], linestyle="", label=f"on {name}")
                for i, name in enumerate(machines)]
    figure.legend(handles=handles, loc="outside lower center", ncols=min(3, len(handles)), fontsize=8)
    return _png(figure)


def _letter(index: int) -> str:
    return chr(ord("A") + index % 26)


def _x_scale(ax: Any, values: Sequence[float]) -> None:
    """Log scale, with plain numbers (200, not 2×10²), where the values span a decade or more; linear below that,
    where a log axis would show the same picture with fewer labelled ticks."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    span = max(values) / min(values)
    if span >= 10:
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.xaxis.set_minor_formatter(FuncFormatter(_round_tick) if span < 100 else NullFormatter())
    ax.tick_params(axis="x", which="both", labelsize=7)


def _round_tick(value: float, _: Any) -> str:
    """Labels for the minor ticks of a log axis: 2, 3 and 5 times a power of ten only."""
    leading = value / 10 ** np.floor(np.log10(value))
    return f"{value:g}" if round(leading) in (2, 3, 5) and abs(leading - round(leading)) < 1e-6 else ""


def tensor_ranges(ranges: Sequence[Any]) -> str:
    """Each calibrated tensor's [low, high] as a horizontal bar, in graph order."""
    figure = _figure(11.0, 0.9 + 0.24 * len(ranges))
    ax = figure.subplots()
    y = np.arange(len(ranges))
    ax.barh(y, [r.high - r.low for r in ranges], left=[r.low for r in ranges], color=_color(0))
    ax.set_yticks(y, [r.tensor for r in ranges], fontsize=7)
    ax.invert_yaxis()
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel("calibrated range: the values each tensor's int8 grid spans")
    ax.grid(axis="x", alpha=0.3)
    return _png(figure)


def sensitivity(layers: Sequence[str], values: Sequence[float], decisions: Sequence[str], label: str) -> str:
    """One bar per layer (the cost of quantizing it alone), coloured by the decision taken for it."""
    kinds = list(dict.fromkeys(decisions))
    figure = _figure(11.0, 0.9 + 0.26 * len(layers))
    ax = figure.subplots()
    y = np.arange(len(layers))
    ax.barh(y, values, color=[_color(kinds.index(d)) for d in decisions])
    ax.set_yticks(y, layers, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(label)
    ax.grid(axis="x", alpha=0.3)
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color=_color(i), label=kind) for i, kind in enumerate(kinds)], fontsize=8)
    return _png(figure)
