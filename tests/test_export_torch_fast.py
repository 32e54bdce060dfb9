"""edgecls.export's PyTorch side, in this process and fast: the three seams the torch-free fast tests replace
(`load_source`, `reference_logits`, `export_fp32`), on an untrained PaperNet two maps wide whose BatchNorm layers hold
statistics of their own (as training leaves them, so that folding them changes the weights), with the 8x8 crop and the
tiny data of tests/tiny_classifier.py."""

from __future__ import annotations

import errno
import tempfile
import warnings

import numpy as np
import onnx
import pytest

from conftest import refusal
from edgecls import export
from edgecls.artifacts import sha256_file
from edgecls.formats import ModelMetadata
from tiny_classifier import CROP, preprocessing, tiny_data

torch = pytest.importorskip("torch")

CONFIG = {"width": 2, "fc_width": 4, "crop_size": CROP}


@pytest.fixture(scope="module")
def data():
    return tiny_data()


@pytest.fixture(scope="module")
def checkpoint_path(data, tmp_path_factory):
    from edgecls.checkpoint import save_checkpoint
    from edgecls.models import create_model

    torch.manual_seed(0)
    model = create_model("new1", **CONFIG)
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, torch.nn.BatchNorm2d):
                layer.weight.uniform_(0.5, 1.5)
                layer.bias.uniform_(-0.3, 0.3)
                layer.running_mean.uniform_(-0.3, 0.3)
                layer.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("checkpoint") / "new1.pt"
    save_checkpoint(path, {"model": "new1", "model_config": CONFIG, "state_dict": model.state_dict(),
                           "preprocess": preprocessing().to_dict(), "data_fingerprint": data.fingerprint, "epoch": 0,
                           "epochs": 0})
    return path


def test_load_source_reads_the_checkpoint_the_export_names(checkpoint_path, tmp_path):
    checkpoint = export.load_source(checkpoint_path)
    assert (checkpoint.path, checkpoint.model_name, checkpoint.model_config) == (checkpoint_path, "new1", CONFIG)
    assert checkpoint.sha256 == sha256_file(checkpoint_path) and checkpoint.preprocess == preprocessing()
    assert refusal(export.load_source, tmp_path / "none.pt").startswith(f"checkpoint {tmp_path / 'none.pt'} does not "
                                                                        "exist")


def test_reference_logits_are_the_models_on_the_deployment_crop_parity_batch_images_at_a_time(checkpoint_path, data,
                                                                                             monkeypatch):
    checkpoint = export.load_source(checkpoint_path)
    model = checkpoint.build_model()
    batches = []
    model.register_forward_pre_hook(lambda module, inputs: batches.append(len(inputs[0])))
    monkeypatch.setattr(export, "PARITY_BATCH", 16)
    logits = export.reference_logits(model, data.test_images, checkpoint.preprocess)
    assert batches == [16, 16, 8]  # memory stays bounded: the 40 test images, 16 at a time
    with torch.no_grad():  # the model on the runtime's own preprocessing of the images
        expected = model(torch.from_numpy(checkpoint.preprocess(data.test_images))).numpy()
    assert logits.shape == (40, 10)
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)


def dims(value: onnx.ValueInfoProto) -> list:
    return [dim.dim_param or dim.dim_value for dim in value.type.tensor_type.shape.dim]


def test_export_fp32_writes_the_model_at_the_asked_opset_with_a_dynamic_batch_and_batchnorm_folded(checkpoint_path,
                                                                                                   data, tmp_path,
                                                                                                   monkeypatch):
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")  # export writes only where it is told: this stays empty
    checkpoint = export.load_source(checkpoint_path)
    model, meta = checkpoint.build_model(), checkpoint.model_metadata("fp32")
    out = tmp_path / "out" / "new1.onnx"
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        assert export.export_fp32(model, CROP, meta, str(out), opset=13) == out
    assert shown == []  # the TorchScript exporter's deprecation notice is not passed on to users
    assert sorted(p.name for p in out.parent.iterdir()) == ["new1.onnx"]  # its staging folder is gone
    assert list((tmp_path / "cwd").iterdir()) == []
    written = onnx.load(str(out))
    assert [entry.version for entry in written.opset_import if entry.domain in ("", "ai.onnx")] == [13]
    operators = [node.op_type for node in written.graph.node]
    assert "BatchNormalization" not in operators and operators.count("ConvTranspose") == 2  # every BatchNorm folded
    assert [(value.name, dims(value)) for value in (*written.graph.input, *written.graph.output)] == [
        (meta.input_name, ["batch", 3, CROP, CROP]), (meta.output_name, ["batch", 10])]
    assert ModelMetadata.read(out) == meta and written.doc_string == "edgecls new1 (fp32)"
    # It computes what the model does, however many images a call holds.
    expected = export.reference_logits(model, data.test_images, checkpoint.preprocess)
    for batch_size in (1, 3, 40):
        np.testing.assert_allclose(export.onnx_logits(out, data.test_images, batch_size=batch_size), expected,
                                   rtol=1e-4, atol=1e-5)


def test_a_full_disk_before_the_model_is_exported_is_one_line_and_makes_no_folder(checkpoint_path, tmp_path,
                                                                                  monkeypatch):
    checkpoint = export.load_source(checkpoint_path)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tempfile, "mkdtemp", full)
    out = tmp_path / "new" / "new1.onnx"
    assert refusal(export.export_fp32, checkpoint.build_model(), CROP, checkpoint.model_metadata(), out) == (
        f"no space left on the disk holding {out.parent} while writing the onnx-export staging folder; free space or "
        "choose another folder (files already there are unchanged)")
    assert not out.parent.exists()
