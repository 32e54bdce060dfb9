"""edgecls.reference on constructed data: which reference belongs to a model and data set, and how its rows are
matched to the test split at hand whatever order the data is read in."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from conftest import refusal
from edgecls import reference as references
from edgecls.data import Cifar10, digest_rows
from edgecls.formats import ExportSet, ModelMetadata, ReferenceLogits
from edgecls.preprocess import Preprocessing
from edgecls.reference import Reference

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
PREPROCESS = Preprocessing(mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26), class_names=CLASSES)
METADATA = ModelMetadata(model="new2", precision="int8", preprocess=PREPROCESS, checkpoint_sha256="c" * 64,
                         data_fingerprint="trained-on")
MODEL = Path("export/new2.int8.onnx")


def dataset(test_images: int = 6, seed: int = 0) -> Cifar10:
    rng = np.random.default_rng(seed)
    return Cifar10(train_images=rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8), train_labels=np.array([0, 1]),
                   test_images=rng.integers(0, 256, (test_images, 32, 32, 3), dtype=np.uint8),
                   test_labels=np.arange(test_images) % 10, class_names=list(CLASSES))


def saved_reference(data: Cifar10, order: np.ndarray, **changes) -> Reference:
    """What `from_file` gives for the test images of `data` in `order`: rows named by digest, not yet aligned."""
    logits = np.random.default_rng(1).normal(size=(len(order), 10)).astype(np.float32)
    fields = dict(source="new2.reference.npz", logits=logits, labels=data.test_labels[order], model="new2",
                  checkpoint_sha256="c" * 64, data_fingerprint=data.fingerprint,
                  digests=digest_rows(data.test_images[order]))
    return Reference(**{**fields, **changes})


def test_align_finds_each_row_in_a_test_split_read_in_another_order():
    data = dataset()
    order = np.array([4, 0, 5, 2])  # a subset, shuffled
    aligned = references.align(saved_reference(data, order), data)
    assert aligned.aligned and aligned.indices.dtype == np.int64
    np.testing.assert_array_equal(aligned.indices, order)
    assert not saved_reference(data, order).aligned
    twins = replace(data, test_images=np.concatenate([data.test_images[:3]] * 2), test_labels=np.arange(6) % 3)
    pairs = references.align(saved_reference(twins, np.array([0, 3, 1])), twins)
    np.testing.assert_array_equal(pairs.indices, [0, 3, 1])  # identical images are matched in turn, each once


def test_align_refuses_a_reference_of_other_images_or_labels():
    data, other = dataset(), dataset(seed=9)
    strangers = saved_reference(other, np.array([0, 1, 2]))
    assert refusal(references.align, strangers, data) == ("reference new2.reference.npz: 3 of its images are not in "
                                                          "this test split; pass the data it was made with (--data)")
    mismatch = "reference new2.reference.npz does not match this test split (6 images); pass the data it was made with " \
               "(--data)"
    relabelled = saved_reference(data, np.array([0, 1]), labels=np.array([0, 2]))
    assert refusal(references.align, relabelled, data) == mismatch
    unaligned = saved_reference(data, np.array([0, 1]), digests=None)
    assert refusal(references.align, unaligned, data) == mismatch
    for indices in ([0, 6], [-1, 1], [0]):  # outside the split at either end, or fewer rows than the reference's
        computed = saved_reference(data, np.array([0, 1]), digests=None, indices=np.array(indices))
        assert refusal(references.align, computed, data) == mismatch
    nothing = np.array([], dtype=np.int64)
    empty = saved_reference(data, np.array([0]), logits=np.zeros((0, 10)), labels=nothing, digests=None, indices=nothing)
    assert len(references.align(empty, data).indices) == 0
    no_rows = replace(saved_reference(data, np.array([0])), logits=np.zeros((0, 10)), labels=nothing,
                      digests=np.zeros((0, 16), np.uint8))
    assert references.align(no_rows, data).indices.dtype == np.int64  # indices numpy can index with, even of no rows
    kept = saved_reference(data, np.array([3, 5]), digests=None, indices=np.array([3, 5]))
    np.testing.assert_array_equal(references.align(kept, data).indices, [3, 5])


def test_check_refuses_a_reference_of_another_model_checkpoint_or_data():
    data = dataset()
    ours = saved_reference(data, np.arange(6), trained_on="trained-on")
    references.check(ours, METADATA, MODEL, data)
    assert refusal(references.check, replace(ours, model="new1"), METADATA, MODEL, data) == (
        f"reference new2.reference.npz is for model new1, but {MODEL} is new2; pass the reference of this model")
    assert refusal(references.check, replace(ours, checkpoint_sha256="e" * 64), METADATA, MODEL, data) == (
        f"reference new2.reference.npz comes from checkpoint {'e' * 12}, but {MODEL} from checkpoint {'c' * 12}; pass "
        "the matching reference or export again")
    assert refusal(references.check, replace(ours, data_fingerprint="f" * 16), METADATA, MODEL, data) == (
        f"reference new2.reference.npz was computed on another data set (fingerprint {'f' * 12}) than the test data "
        f"here ({data.fingerprint[:12]}); pass the data it was made with (--data)")
    assert refusal(references.check, replace(ours, trained_on="elsewhere"), METADATA, MODEL, data) == (
        f"reference new2.reference.npz was trained on another data set (elsewhere) than {MODEL} (trained-on); pass "
        "the reference of this model")
    fingerprinted = replace(METADATA, data_fingerprint="0123456789abcdef")
    assert refusal(references.check, replace(ours, trained_on="fedcba9876543210"), fingerprinted, MODEL, data) == (
        f"reference new2.reference.npz was trained on another data set (fedcba987654) than {MODEL} (0123456789ab); "
        "pass the reference of this model")  # fingerprints shortened to 12 characters, as everywhere
    assert refusal(references.check, replace(ours, logits=ours.logits[:, :9]), METADATA, MODEL, data) == (
        f"reference new2.reference.npz has 9 classes, {MODEL} has 10; pass the reference of this model")
    # What is unknown on either side is not held against the reference.
    references.check(replace(ours, checkpoint_sha256=None, data_fingerprint=None, trained_on=None), METADATA, MODEL, data)
    unknown_origin = replace(METADATA, checkpoint_sha256="", data_fingerprint="")
    references.check(replace(ours, checkpoint_sha256="e" * 64, trained_on="elsewhere"), unknown_origin, MODEL, data)


def test_a_saved_reference_is_loaded_checked_and_aligned(tmp_path):
    data = dataset()
    order = np.array([5, 4, 3, 2, 1, 0])
    saved = saved_reference(data, order)
    path = tmp_path / "new2.reference.npz"
    ReferenceLogits(saved.logits, saved.labels, saved.digests, model="new2", checkpoint_sha256="c" * 64,
                    data_fingerprint=data.fingerprint).write(path)
    loaded = references.load(path, data)
    assert (loaded.source, loaded.model, loaded.checkpoint_sha256, loaded.data_fingerprint) == \
        (str(path), "new2", "c" * 64, data.fingerprint)
    assert loaded.trained_on is None and loaded.indices is None
    np.testing.assert_array_equal(loaded.logits, saved.logits)
    np.testing.assert_array_equal(loaded.labels, saved.labels)
    np.testing.assert_array_equal(loaded.digests, saved.digests)
    resolved = references.resolve(str(path), METADATA, MODEL, data)
    np.testing.assert_array_equal(resolved.indices, order)
    np.testing.assert_array_equal(references.resolve(loaded, METADATA, MODEL, data).indices, order)
    assert refusal(references.resolve, path, replace(METADATA, model="alex1"), MODEL, data) == (
        f"reference {path} is for model new2, but {MODEL} is alex1; pass the reference of this model")
    assert refusal(references.load, tmp_path / "new2.reference.json", data) == (
        f"reference {tmp_path / 'new2.reference.json'} is neither a checkpoint (.pt) nor reference logits (.npz)")
    ExportSet("new2", "c" * 64, {}, complete=False).write(ExportSet.path_for(tmp_path, "new2"))
    assert "was interrupted while installing" in refusal(references.load, path, data)


def test_covers_only_the_checkpoints_own_logits_on_the_whole_split_in_order():
    data = dataset()
    whole = saved_reference(data, np.arange(6), digests=None, indices=np.arange(6))
    assert references.covers(whole, "c" * 64, data) is True
    assert references.covers(whole, "e" * 64, data) is False
    assert references.covers(replace(whole, indices=None), "c" * 64, data) is False
    assert references.covers(replace(whole, indices=np.array([1, 0, 2, 3, 4, 5])), "c" * 64, data) is False
    assert references.covers(replace(whole, indices=np.arange(5)), "c" * 64, data) is False


def test_find_looks_beside_the_model_then_beside_its_onnx_then_in_export(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    plan = tmp_path / "engines" / "new2.plan"
    places = {"beside": tmp_path / "engines", "onnx": tmp_path / "onnx", "sibling": tmp_path / "export",
              "cwd": tmp_path / "work" / "export"}
    for folder in places.values():
        folder.mkdir(parents=True)
    assert references.find(plan, "new2", str(places["onnx"] / "new2.onnx")) is None
    found = []
    for name in ("cwd", "sibling", "onnx", "beside"):  # each nearer one takes over
        (places[name] / "new2.reference.npz").write_bytes(b"")
        monkeypatch.chdir(tmp_path / "work")
        found.append(references.find(plan, "new2", str(places["onnx"] / "new2.onnx")))
    assert found == [Path("export/new2.reference.npz"), places["sibling"] / "new2.reference.npz",
                     places["onnx"] / "new2.reference.npz", places["beside"] / "new2.reference.npz"]
    (places["beside"] / "new2.reference.npz").unlink()
    assert references.find(plan, "new2") == places["sibling"] / "new2.reference.npz"  # no ONNX file to look beside
    assert references.find(plan, "new1", str(places["onnx"] / "new1.onnx")) is None


def test_a_checkpoint_reference_is_its_models_logits_on_the_whole_test_split(tmp_path):
    """The one test here that needs PyTorch: an untrained new1 saved as a checkpoint (no training: fast)."""
    torch = pytest.importorskip("torch")
    from edgecls.checkpoint import load_checkpoint, save_checkpoint
    from edgecls.evaluate import torch_logits
    from edgecls.models import create_model

    torch.manual_seed(0)
    data = dataset()
    path = tmp_path / "new1.pt"
    save_checkpoint(path, {"model": "new1", "model_config": {}, "state_dict": create_model("new1").state_dict(),
                           "preprocess": PREPROCESS.to_dict(), "data_fingerprint": "trained-on", "epoch": 0,
                           "epochs": 0})
    computed = references.load(path, data, device="cpu")
    checkpoint = load_checkpoint(path)
    expected = torch_logits(checkpoint.build_model(), data.test_images, checkpoint.preprocess)
    np.testing.assert_array_equal(computed.logits, expected)
    np.testing.assert_array_equal(computed.labels, data.test_labels)
    np.testing.assert_array_equal(computed.indices, np.arange(6))
    assert (computed.source, computed.model, computed.checkpoint_sha256, computed.data_fingerprint,
            computed.trained_on) == (str(path), "new1", checkpoint.sha256, data.fingerprint, "trained-on")
    assert references.covers(computed, checkpoint.sha256, data)
    assert "no such CUDA device here" in refusal(references.from_checkpoint, path, data, "cuda:99")
    new1 = replace(METADATA, model="new1", checkpoint_sha256=checkpoint.sha256)
    np.testing.assert_array_equal(references.resolve(path, new1, MODEL, data, "cpu").logits, expected)
    assert "no such CUDA device here" in refusal(references.resolve, path, new1, MODEL, data, "cuda:99")
