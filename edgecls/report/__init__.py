"""`edgecls report`: one self-contained HTML page with a model's journey from training to the device.

    gather.py   reads the project's files for one checkpoint (the only module that knows their layout)
    compare.py  the original's and each artifact's answers: per class, confusion, parity, flipped images
    figures.py  the pictures (matplotlib, an optional extra) as embedded PNGs
    render.py   everything -> HTML

`build_report` ties them together; `edgecls.cli.report` is the command.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from edgecls.formats import Folders
from edgecls.report.compare import Answers, Flip

if TYPE_CHECKING:  # gather imports torch, which `import edgecls.report` need not
    from edgecls.report.gather import ReportInputs


@dataclass
class ReportResult:
    path: Path
    left_out: list[str]  # one line per missing input, naming the command that makes it
    notes: list[str]  # files found but not used, and why


def build_report(checkpoint: str | Path, output: str | Path, *, data: str | Path | None = None,
                 bench_files: Iterable[str | Path] = (), folders: Folders = Folders(),
                 results_dir: str | Path = "results", progress: bool = False) -> ReportResult:
    """Gather what exists for `checkpoint` (its files in `folders`, bench files in `results_dir` and `bench_files`),
    run its ONNX files on the test images of `data`, write the page."""
    from edgecls.artifacts import atomic_write
    from edgecls.report.figures import require_matplotlib
    from edgecls.report.gather import gather
    from edgecls.report.render import render

    require_matplotlib()
    inputs = gather(checkpoint, folders=folders, results_dir=results_dir, bench_files=bench_files)
    original, artifacts, flipped, unrun = answers(inputs, data, progress)
    page = render(inputs, original, artifacts, flipped, unrun)
    with atomic_write(output, "w") as handle:
        handle.write(page)
    notes = [note for section in inputs.notes.values() for note in section]
    return ReportResult(Path(output), list(inputs.missing.values()) + unrun, notes)


def answers(inputs: "ReportInputs", data: str | Path | None,
            progress: bool) -> tuple[Answers | None, list[Answers], dict[str, list[Flip]], list[str]]:
    """The original's answers, each artifact's, the flipped images of those run here, and a line for each artifact
    whose figures could not be had (no test images to run it on, or a plan with no bench file)."""
    from tqdm import tqdm

    from edgecls.report.compare import artifact_answers, bench_answers, flips, original_answers, run_onnx
    from edgecls.report.gather import test_images

    reference = inputs.reference
    if reference is None:
        return None, [], {}, []
    original = original_answers(reference, inputs.class_names)
    found: list[Answers] = []
    flipped: dict[str, list[Flip]] = {}
    unrun: list[str] = []
    images = test_images(inputs, data) if inputs.onnx_files else None
    if inputs.onnx_files and images is None:
        unrun.append("the ONNX files were not run here: no test images (pass --data, or set $EDGECLS_DATA)")
    if images is not None:
        for onnx in tqdm(inputs.onnx_files, desc="report: running the ONNX files", unit="file", disable=not progress):
            logits = run_onnx(onnx.path, images, progress)
            answer = artifact_answers(onnx.path.name, onnx.precision, f"run here on {len(images):,} test images",
                                      logits, reference, inputs.class_names)
            found.append(answer)
            flipped[answer.name] = flips(original, answer, images, reference.labels)
    run_here = {answer.name for answer in found}
    for artifact in [*inputs.onnx_files, *inputs.plans]:
        if artifact.path.name in run_here:
            continue
        run = inputs.latest_bench(artifact.path)
        if run is None:
            unrun.append(f"no figures for {artifact.path}: run `edgecls bench --engine {artifact.path} --json "
                         f"results/{artifact.path.name}.json`" + (" on the device" if artifact.path.suffix == ".plan"
                                                                  else ", or pass --data to run it here"))
        else:
            found.append(bench_answers(artifact.path.name, run.result, run.source))
    return original, found, flipped, unrun

