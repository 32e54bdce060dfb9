#!/usr/bin/env python3
"""Everything only a GPU shows, in one run (issue #9): data load, training time, images/s and accuracy of the
`fast` recipe (3 seeds, mean and spread) and of the `best` recipe, cuDNN's benchmark mode measured, then `eval`,
`export` and `bench` on CUDA with every variant's parity, and the CUDA-only promises of the code.

    PYTHONUNBUFFERED=1 python3 benchmarks/device_check.py --data data/cifar10-jpeg.tar.gz --json $OUT/device-check.json
    python3 benchmarks/device_check.py --smoke --data DIR      # small and quick, on the CPU too: what CI runs

Checkpoints, exports and the decoded-data cache go to --out (results/device-check); the figures to --json.

Needs PyTorch, ONNX, ONNX Runtime, numpy, click, tqdm and pillow, nothing from the network and no TensorRT. It is
meant to finish in under 8 minutes on one H100/H200: optional stages (more seeds, the best recipe, an epoch sweep,
the CUDA tests) are skipped when they would not fit in --budget-seconds. Each stage runs on its own: a failure is
recorded in the JSON with its error and the next stage runs. The JSON is rewritten after every stage, so a run cut
short keeps what it measured; a table of the figures is printed at the end.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repository's edgecls, installed or not

import torch  # noqa: E402

from edgecls.artifacts import library_versions, utc_now, write_json  # noqa: E402
from edgecls.checkpoint import load_checkpoint  # noqa: E402
from edgecls.data import Cifar10, load_cifar10  # noqa: E402
from edgecls.defaults import DEFAULT_VAL_SPLIT  # noqa: E402
from edgecls.device import gpu_name, pick_device  # noqa: E402
from edgecls.errors import EdgeclsError, first_line  # noqa: E402
from edgecls.evaluate import torch_logits  # noqa: E402
from edgecls.metrics import accuracy  # noqa: E402
from edgecls.recipes import training_plan  # noqa: E402
from edgecls.train import TrainRequest, TrainResult, train  # noqa: E402

DATA_CANDIDATES = ("data/cifar10-jpeg.tar.gz", "../shared/data/cifar10-jpeg.tar.gz")
# Issue #9's goals, single center crop on the 10,000 test images.
FAST_GOAL, FAST_SECONDS, FAST_MOONSHOT_SECONDS = 87.2, 15.0, 8.0
BEST_GOAL, BEST_MOONSHOT = 89.5, 90.5
MODEL = "new2"


@dataclass(frozen=True)
class Scale:
    """How big each stage is: the full check, or the smoke check CI runs on the CPU."""

    train_images: Optional[int]  # None: all
    test_images: Optional[int]
    epochs: Optional[int]  # None: each recipe's own
    batch_size: Optional[int]
    val_split: int
    seeds: int
    all_train_run: bool  # also the fast recipe on every training image (no validation split), as the paper trained
    sweep_epochs: tuple[int, ...]  # other epoch counts of the fast recipe, to see accuracy against time
    benchmark_epochs: int  # epochs of each cuDNN benchmark-mode run
    calibration_size: int
    bench_all: tuple[str, ...]  # timing options of `bench --all` and of `bench --engine` on the checkpoint
    bench_checkpoint: tuple[str, ...]


FULL = Scale(None, None, None, None, DEFAULT_VAL_SPLIT, 3, True, (32, 48), 4, 1024, (),
             ("--batch-sizes", "1,1024", "--duration", "0.5", "--warmup", "0.2"))
SMOKE = Scale(200, 100, 1, 50, 50, 2, False, (), 1, 64, ("--batch-sizes", "1,8", "--duration", "0.05", "--warmup", "0.01"),
              ("--batch-sizes", "1,8", "--duration", "0.05", "--warmup", "0.01"))


class StageFailed(Exception):
    """A stage's own check failed (as opposed to a crash); its message is the reason."""


class NotHere(Exception):
    """The stage means nothing on this machine (e.g. a CUDA check on the CPU): recorded as skipped, with the reason."""


class DeviceCheck:
    def __init__(self, args: argparse.Namespace) -> None:
        self.scale = SMOKE if args.smoke else FULL
        self.budget = args.budget_seconds
        self.started = time.perf_counter()
        self.out = Path(args.out).resolve()  # the CLI stages run in the repository's root
        self.json_path = Path(args.json).resolve() if args.json else self.out / "device-check.json"
        self.device = pick_device(args.device)
        self.data_path = args.data
        self.data: Optional[Cifar10] = None
        self.cudnn_benchmark = True
        self.report: dict[str, Any] = {"started_at": utc_now(), "smoke": args.smoke, "budget_seconds": self.budget,
                                       "stages": {}, "runs": []}

    # ------------------------------------------------------------------------------------------ machinery
    @property
    def dataset(self) -> Cifar10:
        """The data, once the data stage has loaded it (the stages after it run only then)."""
        assert self.data is not None, "the data stage has not loaded the data"
        return self.data

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def stage(self, name: str, work: Callable[[], Any], estimate: Optional[float] = None,
              key: Optional[str] = None) -> Any:
        """Run one stage, recording its result (under `key` in the report), or its error, or why it was skipped;
        `estimate` (seconds) makes it optional: it runs only if it fits in what is left of the budget."""
        record: dict[str, Any] = {"status": "ok"}
        self.report["stages"][name] = record
        left = self.budget - self.elapsed()
        if estimate is not None and estimate > left:
            record.update(status="skipped", reason=f"needs about {estimate:.0f} s, {max(left, 0):.0f} s of the "
                                                   f"budget left")
            say(f"-- {name}: skipped ({record['reason']})")
            self.save()
            return None
        say(f"-- {name} (at {self.elapsed():.0f} s)")
        started = time.perf_counter()
        result = None
        try:
            result = work()
            if key:
                self.report[key] = result
        except NotHere as exc:
            record.update(status="skipped", reason=str(exc))
            say(f"   skipped: {exc}")
        except Exception as exc:  # one failed stage must not lose the others
            record.update(status="failed" if isinstance(exc, StageFailed) else "error",
                          error=f"{type(exc).__name__}: {first_line(exc, 400)}",
                          traceback=traceback.format_exc(limit=6)[-3000:])
            say(f"   {record['status']}: {record['error']}")
        record["seconds"] = round(time.perf_counter() - started, 2)
        self.save()
        return result

    def save(self) -> None:
        self.report["elapsed_seconds"] = round(self.elapsed(), 1)
        write_json(self.json_path, self.report)

    def cli(self, *args: str, expect: int = 0, timeout: float = 600, env: Optional[dict] = None) -> dict[str, Any]:
        """Run `python -m edgecls ARGS` as a user would; a StageFailed unless it exits with `expect`."""
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "edgecls", *args], cwd=ROOT, env=child_env(env),
                              capture_output=True, text=True, timeout=timeout)
        output = readable(done.stdout + done.stderr)
        result = {"command": "edgecls " + " ".join(args), "exit_code": done.returncode,
                  "seconds": round(time.perf_counter() - started, 2), "output": output[-4000:]}
        if done.returncode != expect:
            last = output.strip().splitlines()[-1] if output.strip() else "(no output)"
            raise StageFailed(f"`{result['command']}` exited {done.returncode}, expected {expect}: {last}")
        return result

    # ------------------------------------------------------------------------------------------ stages
    def environment(self) -> dict[str, Any]:
        import onnxruntime

        info: dict[str, Any] = {"device": str(self.device), "gpu": gpu_name(self.device), "cpu_count": os.cpu_count(),
                                "platform": platform.platform(), "onnxruntime_providers":
                                    onnxruntime.get_available_providers(),
                                "versions": library_versions("torch", "numpy", "onnx", "onnxruntime"),
                                "cuda": torch.version.cuda, "commit": git_commit()}
        if self.device.type == "cuda":
            properties = torch.cuda.get_device_properties(self.device)
            info.update(compute_capability=f"{properties.major}.{properties.minor}",
                        gpu_memory_gb=round(properties.total_memory / 2**30, 1),
                        multiprocessors=properties.multi_processor_count,
                        cudnn=torch.backends.cudnn.version())
        say(f"   {info['gpu']} ({info['device']}), torch {info['versions'].get('torch')}, CUDA {info['cuda']}, "
            f"{info['cpu_count']} CPUs")
        return info

    def load_data(self) -> dict[str, Any]:
        path = self.data_path or next((p for p in DATA_CANDIDATES if (ROOT / p).exists()), None)
        if path is None:
            raise StageFailed(f"no data: pass --data (looked for {', '.join(DATA_CANDIDATES)})")
        path = Path(path).resolve() if Path(path).exists() else ROOT / path  # relative to here, else to the repository
        cache = self.out / "cache"
        shutil.rmtree(cache, ignore_errors=True)  # ours alone: so that the first load really decodes
        os.environ["EDGECLS_CACHE"] = str(cache)  # the CLI stages reuse it
        started = time.perf_counter()
        load_cifar10(path)
        first = time.perf_counter() - started
        started = time.perf_counter()
        data = load_cifar10(path)
        cached = time.perf_counter() - started
        self.data_path = str(path)
        if self.scale.train_images or self.scale.test_images:
            data = data.subset(min(self.scale.train_images or 10**9, len(data.train_images)),
                               min(self.scale.test_images or 10**9, len(data.test_images)))
        self.data = data
        say(f"   {len(data.train_images):,} training / {len(data.test_images):,} test images; first load {first:.1f} s, "
            f"cached {cached:.2f} s")
        return {"source": self.data_path, "first_load_seconds": round(first, 2), "cached_load_seconds": round(cached, 2),
                "train_images": len(data.train_images), "test_images": len(data.test_images)}

    def training_run(self, name: str, recipe: str, seed: int = 0, val_split: Optional[int] = None,
                     epochs: Optional[int] = None, eval_every: int = 0) -> dict[str, Any]:
        """Train, then measure single-crop and mirrored accuracy; appended to the report's runs."""
        val_split = self.scale.val_split if val_split is None else val_split
        epochs = epochs or self.scale.epochs
        plan = training_plan(recipe, epochs, self.scale.batch_size)
        out = self.out / "runs" / name.replace(" ", "-")
        step = max(1, plan.epochs // 5)

        def progress(entry: Any) -> None:
            if entry.epoch % step == 0:
                say(f"   epoch {entry.epoch}/{plan.epochs}: loss {entry.loss:.3f}, {entry.seconds:.2f} s, "
                    f"{entry.images_per_second:,.0f} images/s")

        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        started = time.perf_counter()
        request = TrainRequest(MODEL, recipe=recipe, epochs=epochs, batch_size=self.scale.batch_size, seed=seed,
                               val_split=val_split, device=str(self.device), out_dir=out, eval_every=eval_every,
                               progress=False, cudnn_benchmark=self.cudnn_benchmark)
        result = train(request, self.dataset, on_epoch_end=progress)
        wall = time.perf_counter() - started
        run = self.describe_run(name, recipe, seed, val_split, plan, result, wall)
        self.report["runs"].append(run)
        say(f"   {name}: {run['test_accuracy']:.2f}% single, {run['mirrored_accuracy']:.2f}% mirrored, "
            f"{run['train_seconds']:.1f} s of training ({run['images_per_second']:,.0f} images/s), {wall:.0f} s in all")
        return run

    def describe_run(self, name: str, recipe: str, seed: int, val_split: int, plan: Any, result: TrainResult,
                     wall: float) -> dict[str, Any]:
        saved = load_checkpoint(result.checkpoint)
        mirrored = accuracy(torch_logits(saved.build_model().to(self.device), self.dataset.test_images, saved.preprocess,
                                         batch_size=1000, device=self.device, mirror=True), self.dataset.test_labels)
        seconds = [h.seconds for h in result.history]
        return {
            "name": name, "recipe": recipe, "seed": seed, "epochs": plan.epochs, "batch_size": plan.batch_size,
            "lr": plan.lr, "val_split": val_split, "ema": plan.ema, "flip": plan.flip, "checkpoint": str(result.checkpoint),
            "cudnn_benchmark": self.cudnn_benchmark, "train_seconds": round(result.train_seconds, 3),
            "warmup_seconds": round(result.warmup_seconds, 3), "wall_seconds": round(wall, 2),
            "images_per_second": round(result.images_per_second), "first_epoch_seconds": seconds[0],
            "median_epoch_seconds": statistics.median(seconds), "test_accuracy": result.test_accuracy,
            "mirrored_accuracy": mirrored, "last_weights_test_accuracy": result.live_test_accuracy,
            "val_accuracy": result.val_accuracy,
            "curve": [{"epoch": h.epoch, "test_accuracy": h.test_accuracy, "val_accuracy": h.val_accuracy}
                      for h in result.history if h.test_accuracy is not None],
            "peak_gpu_memory_mb": round(torch.cuda.max_memory_allocated(self.device) / 2**20)
            if self.device.type == "cuda" else None,
        }

    def benchmark_mode(self) -> dict[str, Any]:
        """cuDNN's benchmark mode on and off, on the same short fast-recipe run: the faster one is used from here."""
        if self.device.type != "cuda":
            raise NotHere("cuDNN's benchmark mode only matters on a CUDA device")
        epochs = self.scale.benchmark_epochs
        medians = {}
        for mode in (True, False):
            request = TrainRequest(MODEL, epochs=epochs, batch_size=self.scale.batch_size, val_split=self.scale.val_split,
                                   device=str(self.device), out_dir=self.out / "runs" / f"benchmark-{mode}",
                                   progress=False, cudnn_benchmark=mode)
            result = train(request, self.dataset)
            later = [h.seconds for h in result.history[1:]] or [result.history[0].seconds]
            medians["on" if mode else "off"] = statistics.median(later)
        self.cudnn_benchmark = medians["on"] <= medians["off"]
        say(f"   median epoch: {medians['on']:.3f} s with benchmark mode, {medians['off']:.3f} s without: "
            f"{'on' if self.cudnn_benchmark else 'off'} from here")
        return {"epochs": epochs, "median_epoch_seconds": medians, "chosen": "on" if self.cudnn_benchmark else "off"}

    def eval_stage(self, run: dict[str, Any]) -> dict[str, Any]:
        """`edgecls eval` must find the accuracy the training measured (when both saw the same test images; another
        process may pick other cuDNN algorithms, whose rounding can flip an image or two)."""
        result = self.cli("eval", "--checkpoint", run["checkpoint"], "--data", self.data_path, "--device",
                          str(self.device))
        found = re.search(r"test accuracy ([\d.]+)% on ([\d,]+) images", result["output"])
        if found is None:
            raise StageFailed(f"no accuracy in the output of `{result['command']}`")
        result["accuracy"], result["images"] = float(found[1]), int(found[2].replace(",", ""))
        flipped = abs(result["accuracy"] - run["test_accuracy"]) * result["images"] / 100
        if result["images"] == len(self.dataset.test_images) and flipped > 2.5:
            raise StageFailed(f"eval says {result['accuracy']:.2f}%, training measured {run['test_accuracy']:.2f}%")
        return result

    def export_stage(self, checkpoint: str) -> dict[str, Any]:
        return self.cli("export", "--checkpoint", checkpoint, "--data", self.data_path, "--out", str(self.out / "export"),
                        "--calibration-dir", str(self.out / "calibration"), "--fp16", "--int8",
                        "--calibration-size", str(self.scale.calibration_size))

    def bench_all_stage(self, checkpoint: str) -> dict[str, Any]:
        figures = self.out / "bench-all.json"
        result = self.cli("bench", "--all", checkpoint, "--data", self.data_path, "--device", str(self.device),
                          "--export-dir", str(self.out / "export"), "--engines-dir", str(self.out / "engines"),
                          "--json", str(figures), *self.scale.bench_all)
        rows = read_json(figures)["rows"]
        result["rows"] = [{key: row.get(key) for key in ("path", "format", "precision", "accuracy", "agreement",
                                                         "accuracy_delta", "p50_ms_batch1", "images_per_s", "status")}
                          for row in rows]
        return result

    def bench_checkpoint_stage(self, checkpoint: str) -> dict[str, Any]:
        figures = self.out / "bench-checkpoint.json"
        reference = self.out / "export" / f"{MODEL}.reference.npz"
        result = self.cli("bench", "--engine", checkpoint, "--data", self.data_path, "--device", str(self.device),
                          *(("--reference", str(reference)) if reference.exists() else ()), "--json", str(figures),
                          *self.scale.bench_checkpoint)
        details = read_json(figures)
        result["variants"] = [{"variant": v["variant"], "accuracy": v["accuracy"],
                               **({key: v["parity"][key] for key in ("reference", "agreement", "flips", "accuracy_delta",
                                                                     "max_abs_logit_diff")} if v["parity"] else {})}
                              for v in details["variants"]]
        result["timings"] = details["timings"]
        result["model"] = details["model"]
        self.report["bench_checkpoint"] = result  # kept even when the check below fails
        # fp32 (no TF32) must follow the CPU's float32 reference; fp16 may flip a few images in ten thousand.
        poor = [f"{v['variant']} {v['agreement']:.2f}%" for v in result["variants"]
                if "agreement" in v and v["agreement"] < (99.9 if v["variant"].endswith("fp32") else 99.0)]
        if poor:
            raise StageFailed(f"top-1 agreement with the reference too low: {', '.join(poor)}")
        return result

    def cuda_checks(self, run: dict[str, Any]) -> dict[str, Any]:
        """What only a CUDA run can show: its checkpoint loads on a machine without a GPU, and resuming it on the
        CPU is refused in one line."""
        if self.device.type != "cuda":
            raise NotHere("only a run on a CUDA device can show these")
        checks: dict[str, Any] = {}
        script = ("import sys, torch; record = torch.load(sys.argv[1], weights_only=True); found = []\n"
                  "def walk(v):\n"
                  "    if isinstance(v, torch.Tensor): found.append(v.device.type)\n"
                  "    elif isinstance(v, dict): [walk(x) for x in v.values()]\n"
                  "    elif isinstance(v, (list, tuple)): [walk(x) for x in v]\n"
                  "walk(record); print(len(found), sorted(set(found)), len(record['resume']['optimizer']['state']))")
        loaded = subprocess.run([sys.executable, "-c", script, run["checkpoint"]], capture_output=True, text=True,
                                env=child_env({"CUDA_VISIBLE_DEVICES": ""}), timeout=300)
        checks["loads_without_gpu"] = {"exit_code": loaded.returncode, "output": readable(loaded.stdout + loaded.stderr)[-600:],
                                       "passed": loaded.returncode == 0 and "['cpu']" in loaded.stdout}
        refused = self.cli("train", "--model", MODEL, "--data", self.data_path, "--out", str(Path(run["checkpoint"]).parent),
                           "--resume", "--device", "cpu", "--val-split", str(run["val_split"]), expect=2)
        errors = [line for line in refused["output"].splitlines() if line.startswith("error:")]
        checks["cpu_resume_refused"] = {"output": errors, "passed": len(errors) == 1 and "trained on cuda" in errors[0]}
        recorded = load_checkpoint(run["checkpoint"]).train_args.get("device")
        checks["device_in_train_args"] = {"device": recorded, "passed": recorded == "cuda"}
        failed = [name for name, check in checks.items() if not check["passed"]]
        if failed:
            raise StageFailed(f"failed: {', '.join(failed)}: {checks}")
        return checks

    def cuda_tests(self) -> dict[str, Any]:
        """The test suite's CUDA-only tests (skipped on machines without a GPU)."""
        if self.device.type != "cuda":
            raise NotHere("the CUDA tests skip themselves without a GPU")
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-k", "cuda",
                               "tests/test_train.py", "tests/test_bench.py"], cwd=ROOT, env=child_env(None),
                              capture_output=True, text=True, timeout=max(60.0, self.budget - self.elapsed() + 60))
        output = readable(done.stdout + done.stderr)
        result = {"exit_code": done.returncode, "seconds": round(time.perf_counter() - started, 1),
                  "summary": output.strip().splitlines()[-1] if output.strip() else "", "output": output[-3000:]}
        if done.returncode != 0:
            raise StageFailed(f"pytest exited {done.returncode}: {result['summary']}")
        return result

    # ------------------------------------------------------------------------------------------ the run
    def estimate(self, recipe: str, epochs: Optional[int] = None, val_split: Optional[int] = None) -> float:
        """Seconds a training run would take, from the measured wall time per sample of the first fast run."""
        first = next((run for run in self.report["runs"] if run["recipe"] == "fast"), None)
        if first is None:
            return float("inf")
        images = len(self.dataset.train_images)
        per_sample = first["wall_seconds"] / (first["epochs"] * (images - first["val_split"]))
        plan = training_plan(recipe, epochs or self.scale.epochs, self.scale.batch_size)
        val_split = self.scale.val_split if val_split is None else val_split
        samples = plan.epochs * (images - val_split) * plan.crops_per_image
        slower = 1.0 if plan.batch_size >= first["batch_size"] else 1.5  # smaller batches keep the GPU less busy
        return samples * per_sample * slower + 5

    def run(self) -> dict[str, Any]:
        self.stage("environment", self.environment, key="environment")
        self.stage("data", self.load_data, key="data")
        if self.data is None:
            return self.finish()
        self.stage("cudnn benchmark mode", self.benchmark_mode, estimate=30, key="benchmark_mode")
        first = self.stage("fast, seed 0", lambda: self.training_run("fast seed 0", "fast", seed=0))
        if first:
            checkpoint = first["checkpoint"]
            self.stage("eval", lambda: self.eval_stage(first), key="eval")
            self.stage("export", lambda: self.export_stage(checkpoint), key="export")
            self.stage("bench --all", lambda: self.bench_all_stage(checkpoint), key="bench_all")
            self.stage("bench checkpoint", lambda: self.bench_checkpoint_stage(checkpoint), key="bench_checkpoint")
            self.stage("CUDA checks", lambda: self.cuda_checks(first), estimate=20, key="cuda_checks")
        # In the order of what the goals need most: the seeds of the default recipe, then the best recipe.
        for seed in range(1, self.scale.seeds):
            self.stage(f"fast, seed {seed}", functools.partial(self.training_run, f"fast seed {seed}", "fast", seed=seed),
                       estimate=self.estimate("fast"))
        best_eval_every = 0 if self.scale.epochs else training_plan("best").epochs // 8  # its accuracy curve
        self.stage("best, all training images",
                   lambda: self.training_run("best all-train", "best", val_split=0, eval_every=best_eval_every),
                   estimate=self.estimate("best", val_split=0))
        if self.scale.all_train_run:
            self.stage("fast, all training images", lambda: self.training_run("fast all-train", "fast", val_split=0),
                       estimate=self.estimate("fast", val_split=0))
        for epochs in self.scale.sweep_epochs:
            self.stage(f"fast, {epochs} epochs",
                       functools.partial(self.training_run, f"fast {epochs} epochs", "fast", epochs=epochs),
                       estimate=self.estimate("fast", epochs=epochs))
        self.stage("CUDA tests", self.cuda_tests, estimate=90, key="cuda_tests")
        return self.finish()

    def finish(self) -> dict[str, Any]:
        self.report["summary"] = summarize(self.report["runs"])
        self.report["finished_at"] = utc_now()
        self.save()
        print(table(self.report), flush=True)
        say(f"figures written to {self.json_path}")
        return self.report


# ---------------------------------------------------------------------------------------------- summary and table

def spread(values: list[float]) -> dict[str, Any]:
    return {"n": len(values), "mean": statistics.mean(values), "min": min(values), "max": max(values),
            "stdev": statistics.stdev(values) if len(values) > 1 else 0.0}


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The goals, judged on what was measured: the fast recipe over its seeds (default settings), the best recipe."""
    summary: dict[str, Any] = {}
    fast = [run for run in runs if run["name"].startswith("fast seed")]
    if fast:
        single, seconds = spread([r["test_accuracy"] for r in fast]), spread([r["train_seconds"] for r in fast])
        summary["fast"] = {"single": single, "mirrored": spread([r["mirrored_accuracy"] for r in fast]),
                           "train_seconds": seconds,
                           "goal_met": single["mean"] >= FAST_GOAL and seconds["mean"] <= FAST_SECONDS,
                           "moonshot_met": single["mean"] >= FAST_GOAL and seconds["mean"] <= FAST_MOONSHOT_SECONDS}
    best = [run for run in runs if run["recipe"] == "best"]
    if best:
        summary["best"] = {"single": best[0]["test_accuracy"], "mirrored": best[0]["mirrored_accuracy"],
                           "train_seconds": best[0]["train_seconds"], "goal_met": best[0]["test_accuracy"] >= BEST_GOAL,
                           "moonshot_met": best[0]["test_accuracy"] >= BEST_MOONSHOT}
    return summary


def _pct(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.2f}"


def table(report: dict[str, Any]) -> str:
    environment = report.get("environment") or {}
    lines = ["", f"device check{' (smoke)' if report['smoke'] else ''}: {environment.get('gpu', '?')}, torch "
                 f"{environment.get('versions', {}).get('torch', '?')}, {report.get('elapsed_seconds', 0):.0f} s in all"]
    data = report.get("data")
    if data:
        lines.append(f"data: {data['train_images']:,} training / {data['test_images']:,} test images; first load "
                     f"{data['first_load_seconds']:.1f} s, cached {data['cached_load_seconds']:.2f} s")
    mode = report.get("benchmark_mode")
    if mode:
        lines.append(f"cudnn.benchmark: median epoch {mode['median_epoch_seconds']['on']:.3f} s on, "
                     f"{mode['median_epoch_seconds']['off']:.3f} s off -> {mode['chosen']}")
    lines.append(f"{'run':22} {'epochs':>6} {'batch':>5} {'val':>5} {'train s':>8} {'images/s':>9} {'single %':>8} "
                 f"{'mirror %':>8} {'last w %':>8} {'1st ep s':>8}")
    for run in report["runs"]:
        lines.append(f"{run['name']:22} {run['epochs']:>6} {run['batch_size']:>5} {run['val_split']:>5} "
                     f"{run['train_seconds']:>8.2f} {run['images_per_second']:>9,} {_pct(run['test_accuracy']):>8} "
                     f"{_pct(run['mirrored_accuracy']):>8} {_pct(run['last_weights_test_accuracy']):>8} "
                     f"{run['first_epoch_seconds']:>8.2f}")
    summary = report.get("summary", {})
    if "fast" in summary:
        fast = summary["fast"]
        lines.append(f"fast over {fast['single']['n']} seeds: single {fast['single']['mean']:.2f}% "
                     f"(min {fast['single']['min']:.2f}, max {fast['single']['max']:.2f}, sd {fast['single']['stdev']:.2f}), "
                     f"mirrored {fast['mirrored']['mean']:.2f}%, {fast['train_seconds']['mean']:.1f} s: goal >= "
                     f"{FAST_GOAL}% in <= {FAST_SECONDS:g} s {'MET' if fast['goal_met'] else 'not met'}"
                     f"{' (moonshot <= 8 s met)' if fast['moonshot_met'] else ''}")
    if "best" in summary:
        best = summary["best"]
        lines.append(f"best: single {best['single']:.2f}%, mirrored {best['mirrored']:.2f}%, {best['train_seconds']:.0f} s: "
                     f"goal >= {BEST_GOAL}% {'MET' if best['goal_met'] else 'not met'}"
                     f"{' (moonshot met)' if best['moonshot_met'] else ''}")
    for run in report["runs"]:
        if run["curve"] and len(run["curve"]) > 1:
            lines.append(f"{run['name']} curve: " + ", ".join(f"{point['epoch']}: {point['test_accuracy']:.2f}"
                                                             for point in run["curve"]))
    if report.get("bench_all"):
        lines.append("bench --all:")
        for row in report["bench_all"]["rows"]:
            lines.append(f"  {Path(row['path']).name:18} {row['precision'] or '-':5} acc {_pct(row['accuracy']):>6} "
                         f"agree {_pct(row['agreement']):>6} p50 b1 {_num(row['p50_ms_batch1'], '.3f'):>7} ms "
                         f"{_num(row['images_per_s'], ',.0f'):>9} img/s  {row['status'][:60]}")
    if report.get("bench_checkpoint"):
        lines.append("bench checkpoint, every variant:")
        for variant in report["bench_checkpoint"]["variants"]:
            lines.append(f"  {variant['variant']:26} acc {variant['accuracy']:.2f} agree {_pct(variant.get('agreement'))} "
                         f"max |dlogit| {_num(variant.get('max_abs_logit_diff'), '.3g')}")
        for timing in report["bench_checkpoint"]["timings"]:
            if timing["scope"] == "model-only":
                lines.append(f"  {timing['variant']:26} batch {timing['batch_size']:>5}: p50 {timing['p50_ms']:.3f} ms, "
                             f"{timing['images_per_s']:,.0f} img/s, pipelined "
                             f"{_num(timing['pipelined_images_per_s'], ',.0f')} img/s")
    lines.append("stages: " + ", ".join(f"{name} {record['status']}" + (f" ({record['seconds']:.0f} s)" if "seconds" in record else "")
                                        for name, record in report["stages"].items()))
    return "\n".join(lines)


def _num(value: Optional[float], spec: str) -> str:
    return "-" if value is None else format(value, spec)


# ---------------------------------------------------------------------------------------------- helpers

def say(text: str) -> None:
    print(text, flush=True)


def child_env(extra: Optional[dict]) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, **(extra or {})}


def readable(output: str) -> str:
    """Captured output without progress-bar redraws."""
    return "\n".join(line.split("\r")[-1] for line in output.splitlines() if "%|" not in line.split("\r")[-1])


def read_json(path: Path) -> Any:
    import json

    return json.loads(path.read_text())


def git_commit() -> Optional[str]:
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--data", help=f"CIFAR-10 (any form `edgecls --data` takes). Default: $EDGECLS_DATA, else the first "
                                       f"of {', '.join(DATA_CANDIDATES)} found.")
    parser.add_argument("--out", default="results/device-check", help="Folder for checkpoints, exports and figures.")
    parser.add_argument("--json", help="Where the figures go (default: <out>/device-check.json).")
    parser.add_argument("--device", help="cuda, cuda:N or cpu (default: cuda when available).")
    parser.add_argument("--budget-seconds", type=float, default=440.0,
                        help="Skip optional stages that would end after this many seconds (default: 440).")
    parser.add_argument("--smoke", action="store_true",
                        help="Tiny sizes (200 training images, 1 epoch): checks that every stage runs, e.g. in CI.")
    args = parser.parse_args(argv)
    args.data = args.data or os.environ.get("EDGECLS_DATA")
    try:
        check = DeviceCheck(args)
    except EdgeclsError as exc:  # e.g. --device names no device here
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report = check.run()
    failed = [name for name, record in report["stages"].items() if record["status"] in ("error", "failed")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
