import json
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
from edgecls.train import random_crop_flip, train

FAST = dict(epochs=3, batch_size=50, lr=0.05, val_split=40, device="cpu", progress=False)


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


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tiny_cifar, tmp_path):
    whole = train("new1", tiny_cifar, out_dir=tmp_path / "whole", **FAST)

    class Interrupt(Exception):
        pass

    def stop_after_first(entry):
        if entry.epoch == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        train("new1", tiny_cifar, out_dir=tmp_path / "split", on_epoch_end=stop_after_first, **FAST)
    assert load_checkpoint(tmp_path / "split" / "new1.pt").epoch == 1
    resumed = train("new1", tiny_cifar, out_dir=tmp_path / "split", resume=True, **FAST)

    a, b = load_checkpoint(whole.checkpoint).state_dict, load_checkpoint(resumed.checkpoint).state_dict
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [h.loss for h in resumed.history] == [h.loss for h in whole.history]


def test_resume_refuses_other_settings(trained_checkpoint, tiny_cifar, tmp_path):
    train("new1", tiny_cifar, out_dir=tmp_path, **{**FAST, "epochs": 1})
    with pytest.raises(EdgeclsError, match="already finished"):
        train("new1", tiny_cifar, out_dir=tmp_path, resume=True, **{**FAST, "epochs": 1})
    with pytest.raises(EdgeclsError, match="other settings.*epochs"):
        train("new1", tiny_cifar, out_dir=tmp_path, resume=True, **FAST)
    with pytest.raises(EdgeclsError, match="no checkpoint"):
        train("new2", tiny_cifar, out_dir=tmp_path, resume=True, **FAST)


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


def test_cli_train_and_eval(tiny_data_dir, tmp_path):
    runner = CliRunner()
    out = tmp_path / "ckpt"
    result = runner.invoke(main, ["train", "--model", "new1", "--data", str(tiny_data_dir), "--epochs", "3",
                                  "--batch-size", "50", "--device", "cpu", "--out", str(out), "--eval-every", "1",
                                  "--val-split", "40"])
    assert result.exit_code == 0, result.output
    assert "validation accuracy" in result.output and "test accuracy" in result.output
    assert (out / "new1.pt").exists() and (out / "new1.best.pt").exists()
    log = [json.loads(line) for line in (out / "new1.log.jsonl").read_text().splitlines()]
    best = load_checkpoint(out / "new1.best.pt")  # chosen on the validation split, not on the test split
    assert best.val_accuracy == max(entry["val_accuracy"] for entry in log)
    assert best.epoch == 1 + [entry["val_accuracy"] for entry in log].index(best.val_accuracy)
    evaluated = runner.invoke(main, ["eval", "--checkpoint", str(out / "new1.pt"), "--data", str(tiny_data_dir),
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



def test_the_validation_split_is_held_out_and_found_again_in_any_order(tiny_cifar, tiny_data_dir, tmp_path):
    from edgecls.data import image_digests, load_cifar10

    result = train("new1", tiny_cifar, out_dir=tmp_path, **{**FAST, "epochs": 1})
    checkpoint = load_checkpoint(result.checkpoint)
    assert checkpoint.validation["size"] == 40 and checkpoint.train_args["val_split"] == 40
    held_out = checkpoint.validation_indices(tiny_cifar)
    assert len(set(held_out.tolist())) == 40
    # The preprocessing statistics come from the other 360 images only: the model never saw these 40.
    rest = np.delete(tiny_cifar.train_images, held_out, axis=0)
    expected_mean = rest.reshape(-1, 3).mean(axis=0) / 255
    np.testing.assert_allclose(checkpoint.preprocess.mean, expected_mean, rtol=1e-6)
    # The same images are found by digest in another form of the data (an image folder, in another order).
    reordered = load_cifar10(tiny_data_dir, cache=False)
    found = checkpoint.validation_indices(reordered)
    assert sorted(image_digests(reordered.train_images[found])) == sorted(image_digests(tiny_cifar.train_images[held_out]))
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
