import dataclasses
import json
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from edgecls.artifacts import atomic_write
from edgecls.checkpoint import load_checkpoint
from edgecls.cli import main
from edgecls.errors import EdgeclsError
from edgecls.evaluate import torch_logits
from edgecls.train import TrainRequest, random_crop_flip
from edgecls.train import train as run_training

FAST = dict(epochs=3, batch_size=50, lr=0.05, val_split=40, device="cpu", progress=False)
# The same on small_cifar (100 training images: 10 held out for validation, 4 steps of 20 an epoch), for the tests
# whose behaviour does not depend on how much the model learns: a fifth of the cost.
SMALL = dict(epochs=3, batch_size=20, lr=0.05, val_split=10, device="cpu", progress=False)


def train(model_name, data, on_epoch_end=None, **options):
    """A training run as the tests ask for it: the request made from keyword options, then run."""
    return run_training(TrainRequest(model_name, **options), data, on_epoch_end)


def test_random_crop_flip_takes_real_windows():
    images = torch.arange(4 * 3 * 32 * 32, dtype=torch.int64).reshape(4, 3, 32, 32)
    crops = random_crop_flip(images, 28, torch.Generator().manual_seed(1))
    assert crops.shape == (4, 3, 28, 28)
    for image, crop in zip(images, crops):
        windows = [image[:, t : t + 28, l : l + 28] for t in range(5) for l in range(5)]
        assert any(torch.equal(crop, w) or torch.equal(crop, w.flip(-1)) for w in windows)
    many = random_crop_flip(images.repeat(50, 1, 1, 1), 28, torch.Generator().manual_seed(2))
    flipped = [bool(c[0, 0, 0] > c[0, 0, 1]) for c in many]  # values rise left to right unless mirrored
    assert 0 < sum(flipped) < len(flipped)


def test_training_learns_and_writes_a_complete_checkpoint(trained_checkpoint, tiny_cifar):
    path = trained_checkpoint("new2")  # 3 CPU epochs on tiny_cifar, see conftest
    log = [json.loads(line) for line in (path.parent / "new2.log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in log] == [1, 2, 3] and all(e["images_per_second"] > 0 for e in log)
    assert log[-1]["loss"] < log[0]["loss"] * 0.8

    saved = load_checkpoint(path)
    assert saved.test_accuracy > 40  # chance is 10%
    assert saved.model_name == "new2" and saved.epoch == saved.epochs == 3
    assert saved.data_fingerprint == tiny_cifar.fingerprint
    assert list(saved.preprocess.class_names) == tiny_cifar.class_names
    assert saved.preprocess.crop_size == 28 and saved.preprocess.input_size == 32
    # The statistics of the images trained on: the training split without the 40 held out for validation.
    pixels = np.delete(tiny_cifar.train_images, saved.validation_indices(tiny_cifar), axis=0).reshape(-1, 3) / 255
    np.testing.assert_allclose(saved.preprocess.mean, pixels.mean(0), rtol=1e-6)
    np.testing.assert_allclose(saved.preprocess.std, pixels.std(0), rtol=1e-6)
    assert saved.train_args["batch_size"] == 50 and "torch" in saved.versions

    # round trip: the rebuilt model reproduces the accuracy measured at the end of training
    logits = torch_logits(saved.build_model(), tiny_cifar.test_images, saved.preprocess)
    assert 100 * np.mean(logits.argmax(1) == tiny_cifar.test_labels) == pytest.approx(saved.test_accuracy)


def test_evaluation_preprocessing_equals_the_deployment_preprocessing(trained_checkpoint, tiny_cifar):
    saved = load_checkpoint(trained_checkpoint("new2"))
    model = saved.build_model()
    torch_side = torch_logits(model, tiny_cifar.test_images[:16], saved.preprocess)
    with torch.no_grad():
        numpy_side = model(torch.from_numpy(saved.preprocess(tiny_cifar.test_images[:16]))).numpy()
    np.testing.assert_allclose(torch_side, numpy_side, rtol=1e-5, atol=1e-5)


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(small_cifar, tmp_path):
    whole = train("new1", small_cifar, out_dir=tmp_path / "whole", **SMALL)

    class Interrupt(Exception):
        pass

    def stop_after_first(entry):
        if entry.epoch == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        train("new1", small_cifar, out_dir=tmp_path / "split", on_epoch_end=stop_after_first, **SMALL)
    assert load_checkpoint(tmp_path / "split" / "new1.pt").epoch == 1
    resumed = train("new1", small_cifar, out_dir=tmp_path / "split", resume=True, **SMALL)

    a, b = load_checkpoint(whole.checkpoint).state_dict, load_checkpoint(resumed.checkpoint).state_dict
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [h.loss for h in resumed.history] == [h.loss for h in whole.history]


def test_resume_refuses_other_settings(small_cifar, tmp_path):
    train("new1", small_cifar, out_dir=tmp_path, **{**SMALL, "epochs": 1})
    with pytest.raises(EdgeclsError, match="already finished"):
        train("new1", small_cifar, out_dir=tmp_path, resume=True, **{**SMALL, "epochs": 1})
    with pytest.raises(EdgeclsError, match="other settings.*epochs"):
        train("new1", small_cifar, out_dir=tmp_path, resume=True, **SMALL)
    with pytest.raises(EdgeclsError, match="no checkpoint"):
        train("new2", small_cifar, out_dir=tmp_path, resume=True, **SMALL)


def test_bad_checkpoints_are_one_line_errors(trained_checkpoint, tmp_path):
    good = trained_checkpoint("new2").read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good[: len(good) // 2])
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    cases = {tmp_path / "missing.pt": "does not exist", truncated: "unreadable", foreign: "not an edgecls checkpoint",
             garbage: "unreadable"}
    for path, message in cases.items():
        with pytest.raises(EdgeclsError, match=message) as error:
            load_checkpoint(path)
        assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_failed_write_keeps_the_earlier_checkpoint(trained_checkpoint, tmp_path):
    target = tmp_path / "new2.pt"
    target.write_bytes(trained_checkpoint("new2").read_bytes())
    before = target.read_bytes()
    with pytest.raises(OSError, match="disk full"):
        with atomic_write(target) as handle:
            handle.write(b"half a checkpoint")
            raise OSError("disk full")
    assert target.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["new2.pt"]
    load_checkpoint(target)


def test_cli_train_and_eval(small_data_dir, tmp_path):
    runner = CliRunner()
    out = tmp_path / "ckpt"
    result = runner.invoke(main, ["train", "--model", "new1", "--data", str(small_data_dir), "--epochs", "3",
                                  "--batch-size", "20", "--device", "cpu", "--out", str(out), "--eval-every", "1",
                                  "--val-split", "10"])
    assert result.exit_code == 0, result.output
    assert "validation accuracy" in result.output and "test accuracy" in result.output
    assert (out / "new1.pt").exists() and (out / "new1.best.pt").exists()
    log = [json.loads(line) for line in (out / "new1.log.jsonl").read_text().splitlines()]
    best = load_checkpoint(out / "new1.best.pt")  # chosen on the validation split, not on the test split
    assert best.val_accuracy == max(entry["val_accuracy"] for entry in log)
    assert best.epoch == 1 + [entry["val_accuracy"] for entry in log].index(best.val_accuracy)
    evaluated = runner.invoke(main, ["eval", "--checkpoint", str(out / "new1.pt"), "--data", str(small_data_dir),
                                     "--device", "cpu", "--mirror"])
    assert evaluated.exit_code == 0, evaluated.output
    per_class = [l for l in evaluated.output.splitlines() if l.startswith("  ")]
    assert len(per_class) == 10
    assert f"{load_checkpoint(out / 'new1.pt').test_accuracy:.2f}%" in result.output


def test_cli_bad_input_exits_non_zero_with_one_line(tiny_data_dir, trained_checkpoint, tmp_path):
    runner = CliRunner()
    existing = tmp_path / "new2.pt"
    existing.write_bytes(trained_checkpoint("new2").read_bytes())
    before = existing.read_bytes()
    for args, message in (
        (["train", "--model", "vgg", "--data", str(tiny_data_dir), "--out", str(tmp_path)], "unknown model 'vgg'"),
        (["train", "--epochs", "0", "--data", str(tiny_data_dir), "--out", str(tmp_path)], "epochs must be at least 1"),
        (["train", "--device", "cuda:7", "--epochs", "1", "--data", str(tiny_data_dir), "--out", str(tmp_path)],
         "no such CUDA device"),
        (["train", "--lr", "-1", "--data", str(tiny_data_dir), "--out", str(tmp_path)], "learning rate must be positive"),
        (["train", "--data", str(tmp_path / "nothing"), "--out", str(tmp_path)], str(tmp_path / "nothing")),
        (["eval", "--checkpoint", str(tmp_path / "absent.pt"), "--data", str(tiny_data_dir)], "does not exist"),
        (["train", "--device", "meta", "--data", str(tiny_data_dir), "--out", str(tmp_path)],
         "edgecls runs on the CPU or a CUDA GPU, not on meta"),
        (["train", "--device", "mps", "--data", str(tiny_data_dir), "--out", str(tmp_path)], "not on mps"),
        (["eval", "--checkpoint", str(existing), "--device", "meta", "--data", str(tiny_data_dir)], "not on meta"),
        (["train", "--seed", "-1", "--data", str(tiny_data_dir), "--out", str(tmp_path)], "--seed -1 is negative"),
    ):
        result = runner.invoke(main, args)
        assert result.exit_code == 2, result.output
        assert message in result.output and result.output.count("\n") == 1
    # Known only once the data is read: after its progress bar, still one line.
    result = runner.invoke(main, ["train", "--val-split", "400", "--data", str(tiny_data_dir), "--out", str(tmp_path)])
    lines = [line for line in result.output.strip().split("\n") if "%|" not in line]
    assert result.exit_code == 2 and len(lines) == 1
    assert "--val-split 400 must be at least 0 and smaller than the 400 training images" in lines[0]
    assert existing.read_bytes() == before
    usage = runner.invoke(main, ["train", "--test-images", "0", "--data", str(tiny_data_dir), "--out", str(tmp_path)])
    assert usage.exit_code == 2 and "'--test-images': 0 is not in the range" in usage.output  # click's usage error



def test_the_validation_split_is_held_out_and_found_again_in_any_order(small_cifar, small_data_dir, tmp_path):
    from edgecls.data import image_digests, load_cifar10

    result = train("new1", small_cifar, out_dir=tmp_path, **{**SMALL, "epochs": 1})
    checkpoint = load_checkpoint(result.checkpoint)
    assert checkpoint.validation["size"] == 10 and checkpoint.train_args["val_split"] == 10
    held_out = checkpoint.validation_indices(small_cifar)
    assert len(set(held_out.tolist())) == 10
    # The preprocessing statistics come from the other 90 images only: the model never saw these 10.
    rest = np.delete(small_cifar.train_images, held_out, axis=0)
    expected_mean = rest.reshape(-1, 3).mean(axis=0) / 255
    np.testing.assert_allclose(checkpoint.preprocess.mean, expected_mean, rtol=1e-6)
    # The same images are found by digest in another form of the data (an image folder, in another order).
    reordered = load_cifar10(small_data_dir, cache=False)
    found = checkpoint.validation_indices(reordered)
    assert sorted(image_digests(reordered.train_images[found])) == sorted(image_digests(small_cifar.train_images[held_out]))
    assert checkpoint.val_accuracy is not None and result.val_accuracy == checkpoint.val_accuracy


class _RunsCode:
    """Unpickling this calls a function of the pickler's choice: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code ran"))


def test_a_checkpoint_that_would_run_code_is_refused_without_running_it(trained_checkpoint, tmp_path):
    record = torch.load(trained_checkpoint("new2"), weights_only=True)
    marker = tmp_path / "pwned"
    record["train_args"] = {"payload": _RunsCode(marker)}
    evil = tmp_path / "evil.pt"
    torch.save(record, evil)
    with pytest.raises(EdgeclsError, match="refuses to load"):
        load_checkpoint(evil)
    assert not marker.exists()


# ------------------------------------------------------------------------------------------ the loop's promises

def test_momentum_is_the_recorded_one_throughout_the_schedule():
    from edgecls.models import create_model
    from edgecls.recipes import training_plan
    from edgecls.train import make_optimizer

    plan = training_plan("fast", epochs=2)
    optimizer, scheduler = make_optimizer(create_model("new1"), plan, steps=40)
    rates = []
    for _ in range(40):
        assert [group["momentum"] for group in optimizer.param_groups] == [plan.momentum] * 2
        assert all(group["nesterov"] for group in optimizer.param_groups)
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert max(rates) == pytest.approx(plan.lr) and rates.index(max(rates)) == 7  # one cycle: peak after 20% of 40
    assert rates[-1] < plan.lr / 100


@pytest.fixture(scope="module")
def instrumented_runs(small_cifar, tmp_path_factory):
    """Two one-epoch runs that differ only in their number of steps per epoch (4 and 8), with every host read of a
    tensor counted and the end of the warm-up timed."""
    import edgecls.train as training

    reads = {"count": 0}
    patched = {}
    for name in ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            reads["count"] += 1
            return _original(self, *args, **kwargs)

        patched[name] = original
        setattr(torch.Tensor, name, counted)
    real_warm_up, warm_up_end = training.warm_up, {}

    def slow_warm_up(*args, **kwargs):
        seconds = real_warm_up(*args, **kwargs)
        time.sleep(0.5)
        warm_up_end["at"] = time.perf_counter()
        return seconds + 0.5

    training.warm_up = slow_warm_up
    runs = {}
    try:
        for batch_size in (25, 12):  # small_cifar's 100 training images: 4 and 8 steps
            reads["count"] = 0
            epoch_started = {}

            def when(entry):
                epoch_started[entry.epoch] = time.perf_counter() - entry.seconds

            result = train("new1", small_cifar, epochs=1, batch_size=batch_size, lr=0.05, val_split=0, device="cpu",
                           out_dir=tmp_path_factory.mktemp(f"run{batch_size}"), progress=False, on_epoch_end=when)
            runs[batch_size] = {"reads": reads["count"], "result": result, "warm_up_end": warm_up_end["at"],
                                "epoch_started": epoch_started[1]}
    finally:
        training.warm_up = real_warm_up
        for name, original in patched.items():
            setattr(torch.Tensor, name, original)
    return runs


def test_the_steps_never_wait_for_the_device(instrumented_runs):
    """Host reads of tensors (each one a GPU sync) do not grow with the steps: the losses are read once an epoch."""
    assert instrumented_runs[25]["result"].history[0].loss > 0
    assert instrumented_runs[25]["reads"] == instrumented_runs[12]["reads"] > 0


def test_the_warm_up_is_not_timed(instrumented_runs):
    for run in instrumented_runs.values():
        # the timed epoch began after the (slowed) warm-up had ended, and the warm-up is reported apart
        assert run["epoch_started"] >= run["warm_up_end"] - 1e-3
        assert run["result"].warmup_seconds >= 0.5
        assert run["result"].train_seconds == pytest.approx(run["result"].history[0].seconds)


def test_the_warm_up_leaves_every_state_as_it_was(tiny_cifar):
    from torch import nn

    from edgecls.models import create_model
    from edgecls.recipes import training_plan
    from edgecls.train import DeviceBatches, dataset_preprocessing, warm_up

    plan = training_plan("fast", epochs=1, batch_size=25)
    small = tiny_cifar.subset(100, 10)
    torch.manual_seed(3)
    model = create_model("new1")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    generator = torch.Generator().manual_seed(5)
    batches = DeviceBatches(small, dataset_preprocessing(small), plan, torch.device("cpu"), generator, seed=5)
    rng, drawn = torch.get_rng_state(), generator.get_state()
    warm_up(model, plan, batches, nn.CrossEntropyLoss(), steps=2)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng) and torch.equal(generator.get_state(), drawn)


def test_alternating_flips_mirror_each_image_every_other_drawing():
    from edgecls.data import Cifar10
    from edgecls.preprocess import Preprocessing
    from edgecls.recipes import training_plan
    from edgecls.train import DeviceBatches

    count = 60
    images = np.zeros((count, 32, 32, 3), np.uint8)
    images[..., 0] = np.arange(32, dtype=np.uint8)[None, None, :] * 8  # red rises left to right unless mirrored
    images[..., 1] = np.arange(count, dtype=np.uint8)[:, None, None]  # green names the image
    labels = np.arange(count) % 10
    data = Cifar10(images, labels, images[:10], labels[:10], [str(i) for i in range(10)], "constructed")
    identity = Preprocessing(mean=(0.0, 0.0, 0.0), std=(1 / 255,) * 3, class_names=tuple(data.class_names))

    def sides(plan, epoch):
        batches = DeviceBatches(data, identity, plan, torch.device("cpu"), torch.Generator().manual_seed(1), seed=1)
        seen = {}
        for batch, _ in batches.epoch(epoch):
            for crop in batch:
                seen.setdefault(int(crop[1, 0, 0]), []).append(bool(crop[0, 0, 0] > crop[0, 0, 1]))
        return seen

    plan = training_plan("fast", batch_size=20)
    first, second, third = (sides(plan, epoch) for epoch in range(3))
    assert sorted(first) == list(range(count))
    assert all(first[i] != second[i] and first[i] == third[i] for i in range(count))
    assert 0 < sum(side for [side] in first.values()) < count  # the first side is a seeded toss
    six_crops = sides(replace(plan, crops_per_image=6), 0)  # six drawings of each image per epoch: three each side
    assert all(len(drawn) == 6 and sum(drawn) == 3 for drawn in six_crops.values())
    assert random_flips_are_tossed(sides(replace(plan, flip="random"), 1), first)


def random_flips_are_tossed(seen: dict, alternating: dict) -> bool:
    return 0 < sum(side for [side] in seen.values()) < len(seen) and seen != alternating


def test_divergence_stops_at_the_first_bad_step_and_keeps_the_last_good_checkpoint(small_cifar, tmp_path, monkeypatch):
    import edgecls.train as training

    calls = {"count": 0}
    real_step = training.training_step
    steps_per_epoch = 90 // 20  # small_cifar without its 10 validation images, batch 20

    def poisoned(*args):
        loss = real_step(*args)
        calls["count"] += 1  # the first call is the warm-up's
        return loss * float("nan") if calls["count"] == 1 + steps_per_epoch + 3 else loss

    monkeypatch.setattr(training, "training_step", poisoned)
    with pytest.raises(EdgeclsError) as error:
        train("new1", small_cifar, out_dir=tmp_path, **SMALL)
    message = str(error.value)
    assert f"the loss became nan at epoch 2, step 3 of {steps_per_epoch}" in message
    assert "holds the last good epoch (1)" in message and "--lr" in message and "\n" not in message
    assert load_checkpoint(tmp_path / "new1.pt").epoch == 1
    assert len((tmp_path / "new1.log.jsonl").read_text().splitlines()) == 1


def test_a_diverging_learning_rate_is_one_line_and_the_earlier_checkpoint_stays(tiny_data_dir, trained_checkpoint,
                                                                                 tmp_path):
    earlier = tmp_path / "new1.pt"
    earlier.write_bytes(trained_checkpoint("new2").read_bytes())
    before = earlier.read_bytes()
    result = CliRunner().invoke(main, ["train", "--model", "new1", "--data", str(tiny_data_dir), "--epochs", "2",
                                       "--batch-size", "50", "--lr", "1e6", "--val-split", "40", "--device", "cpu",
                                       "--out", str(tmp_path)])
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and len(errors) == 1 and result.output.strip().endswith(errors[0]), result.output
    assert "training diverged: the loss became nan at epoch 1, step" in errors[0]
    assert f"{earlier} was left as it was" in errors[0] and "smaller learning rate (--lr" in errors[0]
    assert earlier.read_bytes() == before and not (tmp_path / "new1.log.jsonl").exists()


def test_resume_on_another_kind_of_device_is_one_line(small_cifar, tmp_path):
    from edgecls.checkpoint import save_checkpoint

    options = {**FAST, "epochs": 2, "val_split": 0}
    with pytest.raises(Interrupted):
        train("new1", small_cifar, out_dir=tmp_path, on_epoch_end=stop_after(1), **options)
    path = tmp_path / "new1.pt"
    record = torch.load(path, weights_only=True)
    assert record["train_args"]["device"] == "cpu"
    record["train_args"]["device"] = "cuda"  # as a run on a GPU writes it
    record["resume"]["cuda_rng"] = torch.zeros(16, dtype=torch.uint8)
    save_checkpoint(path, {k: v for k, v in record.items() if k not in ("format", "format_version")})
    with pytest.raises(EdgeclsError, match=r"was trained on cuda, this run is on cpu; resume on the same kind of "
                                           r"device \(--device\)") as error:
        train("new1", small_cifar, out_dir=tmp_path, resume=True, **options)
    assert "\n" not in str(error.value)


class Interrupted(Exception):
    pass


def stop_after(epochs: int):
    def stop(entry):
        if entry.epoch == epochs:
            raise Interrupted

    return stop


def test_every_torch_cuda_call_names_its_device():
    """With --device cuda:1 a bare torch.cuda.synchronize() or get_rng_state() acts on the current GPU, not ours."""
    import ast

    root = Path(__file__).resolve().parents[1]
    needs_device = {"synchronize": 1, "get_rng_state": 1, "set_rng_state": 2, "current_stream": 1, "Stream": 1,
                    "get_device_name": 1, "get_device_capability": 1, "get_device_properties": 1,
                    "max_memory_allocated": 1, "reset_peak_memory_stats": 1, "memory_allocated": 1}
    calls = 0
    for path in [*(root / "edgecls").rglob("*.py"), root / "benchmarks" / "device_check.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            function = node.func if isinstance(node, ast.Call) else None
            if (isinstance(function, ast.Attribute) and function.attr in needs_device
                    and ast.unparse(function.value) == "torch.cuda"):
                calls += 1
                given = len(node.args) + sum(k.arg in ("device", "new_state") for k in node.keywords)
                assert given >= needs_device[function.attr], f"{path.name}:{node.lineno}: {ast.unparse(node)}"
    assert calls >= 8  # train, device, torch_backend and the device check make such calls


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none here)")


@cuda
def test_a_cuda_run_saves_cpu_tensors_and_refuses_a_cpu_resume_in_one_line(tiny_cifar, tmp_path):
    import subprocess
    import sys

    device = f"cuda:{torch.cuda.device_count() - 1}"  # the last GPU: not the current one where there are several
    options = {**FAST, "epochs": 2, "device": device}
    with pytest.raises(Interrupted):
        train("new1", tiny_cifar, out_dir=tmp_path, on_epoch_end=stop_after(1), **options)
    path = tmp_path / "new1.pt"
    assert load_checkpoint(path).train_args["device"] == "cuda"
    # a plain torch.load (no map_location) on a machine without a GPU: every tensor, momentum buffers too, on the CPU
    script = ("import sys, torch; record = torch.load(sys.argv[1], weights_only=True); "
              "found = []; walk = lambda v: [walk(x) for x in (v.values() if isinstance(v, dict) else v)] "
              "if isinstance(v, (dict, list, tuple)) else found.append(v) if isinstance(v, torch.Tensor) else None; "
              "walk(record); assert found and all(t.device.type == 'cpu' for t in found); "
              "assert len(record['resume']['optimizer']['state']) > 0; print(len(found))")
    loaded = subprocess.run([sys.executable, "-c", script, str(path)], env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
                            capture_output=True, text=True)
    assert loaded.returncode == 0, loaded.stderr
    with pytest.raises(EdgeclsError, match="was trained on cuda, this run is on cpu") as error:
        train("new1", tiny_cifar, out_dir=tmp_path, resume=True, **{**options, "device": "cpu"})
    assert "\n" not in str(error.value)
    resumed = train("new1", tiny_cifar, out_dir=tmp_path, resume=True, **options)
    assert [h.epoch for h in resumed.history] == [1, 2] and resumed.test_accuracy > 20


def test_a_training_request_is_checked_when_it_is_made(tmp_path):
    """Every option is refused in one line when the request is made: before any data is read or file written."""
    for options, message in (({"model_name": "vgg"}, "unknown model 'vgg'"),
                             ({"model_name": "new1", "epochs": 0}, "epochs must be at least 1"),
                             ({"model_name": "new1", "seed": -2}, "--seed -2 is negative"),
                             ({"model_name": "new1", "eval_every": -1}, "--eval-every -1 is negative"),
                             ({"model_name": "new1", "device": "meta"}, "not on meta")):
        with pytest.raises(EdgeclsError, match=message):
            TrainRequest(out_dir=tmp_path / "out", **options)
    assert not (tmp_path / "out").exists()
    request = TrainRequest("new1", batch_size=256, out_dir=str(tmp_path), device="cpu")
    assert request.plan.batch_size == 256 and request.plan.lr == pytest.approx(0.4 * 256 / 1024)
    assert request.paths.last == tmp_path / "new1.pt" and request.train_args()["device"] == "cpu"
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.epochs = 5
