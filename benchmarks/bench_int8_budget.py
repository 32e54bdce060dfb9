"""INT8 within an accuracy budget on the real CIFAR-10: what the search keeps, what it costs, how it ranks.

    .venv/bin/python benchmarks/bench_int8_budget.py --checkpoint checkpoints/new2.pt --data ../shared/data/cifar10-jpeg.tar.gz

For each target (trt, cpu), `export_model(..., int8=True, budget=Gate(--max-drop, --min-agreement))` exactly as
`edgecls export --int8 --max-drop 0.3 --min-agreement 99.5` runs it, then:
- how many layers stayed int8, which stayed float, the calibration method chosen;
- validation (the decisions) and test (only reported) accuracy, agreement and flips against PyTorch;
- the search's own time and the whole export's;
- ONNX Runtime CPU images/s of fp32, all-int8 and the result at batch 64 (alternating rounds, best of each);
- for comparison, the fixed rule of a plain `--int8` (first and last layers float, percentile) on the test split.
With --ranking-study, for the chosen method of the trt target: the greedy search run with three rankings (SQNR with
the layer alone int8 -- what the search uses --, agreement with the layer alone int8, and the agreement gained by
moving the layer alone back to float from all-int8), and how many int8 layers each keeps within the budget.
Goals (issue 11): test agreement >= 99.5% and test accuracy drop <= 0.3 points; the search in a few minutes on 2
cores; --target cpu >= 2.5x fp32 throughput at batch 64.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgecls.cli.export import int8_report_table  # noqa: E402
from edgecls.data import load_cifar10  # noqa: E402
from edgecls.export import ExportRequest, export_model  # noqa: E402
from edgecls.formats import CalibrationRecord, ModelMetadata  # noqa: E402
from edgecls.int8_budget import Candidate, ValidationImages, greedy, rank_layers, run_file, write_int8  # noqa: E402
from edgecls.metrics import Gate, parity  # noqa: E402
from edgecls.quantize import CalibrationSettings, PreparedModel  # noqa: E402
from edgecls.timing import cpu_throughput  # noqa: E402


def ranking_study(report, fp32: Path, dataset, checkpoint, gate: Gate, work: Path) -> dict:
    """The greedy search of the chosen method under three rankings: how many int8 layers each keeps."""
    assert report.calibration is not None
    record = CalibrationRecord.read(report.calibration)
    search = report.int8_search.report
    work.mkdir(parents=True, exist_ok=True)
    prepared = PreparedModel.create(fp32, ModelMetadata.read(fp32), search.target, work)
    validation = ValidationImages.choose(dataset, checkpoint.validation_indices(dataset),
                                         (checkpoint.validation or {}).get("seed"), record.size)
    float_logits = run_file(fp32, validation.images)
    names = [layer.name for layer in prepared.layers]
    evaluations = {"count": 0}

    def evaluate(method: str, float_layers: tuple[str, ...]) -> Candidate:
        evaluations["count"] += 1
        path = work / f"study-{evaluations['count']}.onnx"
        write_int8(prepared, record, float_layers, search.budget, path, fp32)
        figures = parity(run_file(path, validation.images), float_logits, validation.labels)
        return Candidate(method, float_layers, len(names) - len(float_layers), path, figures, gate.check(figures))

    by_name = {layer.name: layer for layer in search.layers}
    all_int8 = evaluate(record.method, ())
    gained = {name: evaluate(record.method, (name,)).figures.agreement - all_int8.figures.agreement for name in names}
    rankings = {
        "sqnr_alone_int8": rank_layers([by_name[name].sqnr_db for name in names]),
        "agreement_alone_int8": rank_layers([by_name[name].alone["agreement"] for name in names]),
        "agreement_gained_alone_float": rank_layers([-gained[name] for name in names]),
    }
    study: dict = {"gained_alone_float": gained, "rankings": {}}
    for key, order in rankings.items():
        tried = greedy(record.method, [names[i] for i in order], evaluate, best_int8=0, on_step=lambda _: None)
        study["rankings"][key] = {"order": [names[i] for i in order], "int8_layers": tried[-1].int8_layers,
                                  "passed": tried[-1].verdict.passed, "evaluations": len(tried),
                                  "validation_agreement": tried[-1].figures.agreement}
    return study


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default="checkpoints/new2.pt")
    parser.add_argument("--data", default=None, help="CIFAR-10 location (default: $EDGECLS_DATA, else ./data)")
    parser.add_argument("--max-drop", type=float, default=0.3)
    parser.add_argument("--min-agreement", type=float, default=99.5)
    parser.add_argument("--targets", default="trt,cpu")
    parser.add_argument("--seconds", type=float, default=4.0, help="per throughput measurement")
    parser.add_argument("--rounds", type=int, default=3, help="alternating throughput rounds; the best of each counts")
    parser.add_argument("--ranking-study", action="store_true", help="also compare rankings (about 15 more evaluations)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()

    from edgecls.checkpoint import load_checkpoint

    dataset = load_cifar10(args.data)
    checkpoint = load_checkpoint(args.checkpoint)
    gate = Gate(max_drop=args.max_drop, min_agreement=args.min_agreement)
    figures: dict = {"checkpoint": args.checkpoint, "test_accuracy": checkpoint.test_accuracy,
                     "val_accuracy": checkpoint.val_accuracy, "budget": {"max_drop": args.max_drop,
                                                                         "min_agreement": args.min_agreement}}
    goals: dict[str, bool] = {}
    with tempfile.TemporaryDirectory(prefix="bench-int8-budget-") as tmp:
        tmp_dir = Path(tmp)
        for target in args.targets.split(","):
            started = time.perf_counter()
            request = ExportRequest(args.checkpoint, tmp_dir / target / "export", int8=True, budget=gate,
                                    calibration=CalibrationSettings(target=target),
                                    calibration_dir=tmp_dir / target / "calibration")
            report = export_model(request, data=dataset)
            seconds = time.perf_counter() - started
            search = report.int8_search.report
            print(int8_report_table(search))
            entry = {"export_s": seconds, "search_s": search.search_seconds, "passed": report.passed,
                     "method": search.method, "int8_layers": search.int8_layers, "layers": len(search.layers),
                     "float_layers": search.float_layers, "validation": search.result["validation"],
                     "test": search.result["test"], "candidates": search.candidates}
            if report.passed:
                fp32, result = report.files["fp32"], report.files["int8"]
                all_int8 = tmp_dir / target / "all-int8.onnx"
                assert report.calibration is not None
                record = CalibrationRecord.read(report.calibration)
                prepared = PreparedModel.create(fp32, ModelMetadata.read(fp32), target, tmp_dir / target)
                write_int8(prepared, record, (), search.budget, all_int8, fp32)
                speeds = cpu_throughput({"fp32": fp32, "all_int8": all_int8, "result": result}, dataset.test_images,
                                        seconds=args.seconds, rounds=args.rounds)
                entry["throughput"] = {key: value for key, value in speeds.items() if key != "environment"}
                entry["environment"] = speeds["environment"]
                print(f"{target}: {speeds['images_per_s']['result']:,.0f} images/s at batch 64 = "
                      f"{speeds['vs_fp32']:.2f}x fp32 ({speeds['images_per_s']['fp32']:,.0f}), "
                      f"{speeds['vs_all_int8']:.2f}x all-int8 ({speeds['images_per_s']['all_int8']:,.0f})")
                # The fixed rule of a plain --int8, on the same checkpoint and test split, for comparison.
                request = ExportRequest(args.checkpoint, tmp_dir / target / "plain", int8=True,
                                        calibration=CalibrationSettings(target=target),
                                        calibration_dir=tmp_dir / target / "plain-calibration")
                plain = export_model(request, data=dataset)
                fixed = next(result.parity for result in plain.parity if result.precision == "int8")
                entry["fixed_rule_test"] = {"agreement": fixed.agreement, "accuracy_delta": fixed.accuracy_delta}
                print(f"{target}: fixed rule (first and last float, percentile): test agreement "
                      f"{fixed.agreement:.2f}%, Δacc {fixed.accuracy_delta:+.2f}")
                if args.ranking_study and target == "trt":
                    entry["ranking_study"] = ranking_study(report, fp32, dataset, checkpoint, gate, tmp_dir / "study")
                    for key, found in entry["ranking_study"]["rankings"].items():
                        print(f"ranking by {key}: {found['int8_layers']} int8 layers, passed {found['passed']}, "
                              f"{found['evaluations']} evaluations; order {found['order']}")
            figures[target] = entry
            test = entry["test"] or {}
            goals[f"{target}: passed on validation"] = report.passed
            goals[f"{target}: test agreement >= {args.min_agreement}% (got {test.get('agreement', 0):.2f}%)"] = \
                test.get("agreement", 0) >= args.min_agreement
            goals[f"{target}: test drop <= {args.max_drop} points (got {-test.get('accuracy_delta', -99):.2f})"] = \
                -test.get("accuracy_delta", -99) <= args.max_drop
            goals[f"{target}: search within a few minutes (got {search.search_seconds:.0f} s)"] = \
                search.search_seconds <= 300
            if target == "cpu" and "throughput" in entry:
                ratio = entry["throughput"]["vs_fp32"]
                goals[f"cpu: >= 2.5x fp32 at batch 64 (got {ratio:.2f}x)"] = ratio >= 2.5
    figures["goals"] = goals
    print()
    for goal, met in goals.items():
        print(f"{'met ' if met else 'MISS'}  {goal}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2, default=str) + "\n")
    return 0 if all(goals.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
