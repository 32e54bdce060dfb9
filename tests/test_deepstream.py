"""edgecls deploy deepstream: the folded ONNX makes nvinfer's normalization exactly edgecls's; the emulated nvinfer
scaling follows gstnvinfer.cpp's geometry; the nvinfer and deepstream-app configs say what nvinfer needs."""

from __future__ import annotations

import configparser
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from edgecls.cli import main
from edgecls.deepstream import SAMPLE_DETECTOR, Scaling, emulate_nvinfer, nvinfer_normalization, nvinfer_scale
from edgecls.errors import EdgeclsError
from edgecls.formats import ModelMetadata
from edgecls.onnx_graph import fold_normalization_for_nvinfer
from edgecls.preprocess import center_crop
from edgecls.runtime import load


def probabilities(model: onnx.ModelProto, inputs: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["probabilities"], {"images": inputs})[0]


def first_conv_weight(model: onnx.ModelProto) -> np.ndarray:
    conv = next(node for node in model.graph.node if node.op_type == "Conv")
    return next(numpy_helper.to_array(init) for init in model.graph.initializer if init.name == conv.input[1])


def test_the_folded_graph_sees_exactly_edgecls_normalization(new2_export, tiny_cifar):
    path = new2_export.files["fp32"]
    source = onnx.load(str(path))
    before = first_conv_weight(source).copy()
    metadata = ModelMetadata.read(path)
    preprocess = metadata.preprocess
    images = tiny_cifar.test_images
    with load(path) as classifier:
        expected = classifier.classify(images).probabilities

    # The written form: 32 x 32 input, the centre crop inside the graph; nvinfer's scaling of 32 x 32 frames is the
    # identity, so its whole preprocessing is y = (x - 255 * mean) / 255.
    folded = fold_normalization_for_nvinfer(source, preprocess, "images", "logits", crop_in_graph=True)
    onnx.checker.check_model(folded, full_check=True)
    assert [d.dim_value for d in folded.graph.input[0].type.tensor_type.shape.dim[1:]] == [3, 32, 32]
    got = probabilities(folded, emulate_nvinfer(images, 32, Scaling(), preprocess))
    np.testing.assert_allclose(got, expected, atol=2e-6)
    assert np.array_equal(got.argmax(axis=1), expected.argmax(axis=1))

    # Without the crop in the graph, nvinfer's normalization of edgecls's own crops gives the same answers too.
    squeezed = fold_normalization_for_nvinfer(source, preprocess, "images", "logits", crop_in_graph=False)
    scale, offsets = nvinfer_normalization(preprocess)
    crops = center_crop(images, 28).transpose(0, 3, 1, 2).astype(np.float32)
    nvinfer_input = np.float32(scale) * (crops - np.asarray(offsets, np.float32).reshape(1, 3, 1, 1))
    np.testing.assert_allclose(probabilities(squeezed, nvinfer_input), expected, atol=2e-6)

    # 1/std went into the first convolution's input channels; the source model is untouched.
    np.testing.assert_allclose(first_conv_weight(folded),
                               before / np.asarray(preprocess.std, np.float32).reshape(1, 3, 1, 1), rtol=1e-6)
    assert np.array_equal(first_conv_weight(source), before)
    assert not folded.metadata_props  # not an edgecls export: the runtime must not preprocess its input again


def test_graphs_that_cannot_be_folded_are_refused(new2_export):
    fp16 = onnx.load(str(new2_export.files["fp16"]))  # its input goes through a Cast first
    preprocess = ModelMetadata.read(new2_export.files["fp16"]).preprocess
    with pytest.raises(EdgeclsError, match="feeds Cast, not one Conv"):
        fold_normalization_for_nvinfer(fp16, preprocess, "images", "logits")


def test_nvinfer_scaling_geometry():
    rng = np.random.default_rng(0)
    square = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    for scaling_filter in (0, 1):
        assert np.array_equal(nvinfer_scale(square, 32, 32, Scaling(scaling_filter=scaling_filter)), square)
        assert np.array_equal(nvinfer_scale(square, 32, 32, Scaling(True, True, scaling_filter)), square)
    # Odd sizes are rounded down to even (GST_ROUND_DOWN_2): the last row and column are not seen.
    odd = rng.integers(0, 256, (33, 33, 3), dtype=np.uint8)
    assert np.array_equal(nvinfer_scale(odd, 32, 32, Scaling()), odd[:32, :32])
    # A wide frame with its aspect kept: 40 x 20 -> 32 x 16, black below it, or 8 rows above and below.
    wide = np.full((20, 40, 3), 200, np.uint8)
    kept = nvinfer_scale(wide, 32, 32, Scaling(maintain_aspect_ratio=True))
    assert (kept[:16] == 200).all() and (kept[16:] == 0).all()
    centred = nvinfer_scale(wide, 32, 32, Scaling(maintain_aspect_ratio=True, symmetric_padding=True))
    assert (centred[8:24] == 200).all() and (centred[:8] == 0).all() and (centred[24:] == 0).all()
    # Nearest with half-pixel centres: 4 -> 2 samples pixels 1 and 3.
    row = np.arange(4, dtype=np.uint8).reshape(1, 4, 1).repeat(2, axis=0).repeat(3, axis=2)
    assert nvinfer_scale(row, 2, 2, Scaling(scaling_filter=0))[0, :, 0].tolist() == [1, 3]
    # Bilinear with half-pixel centres is OpenCV's INTER_LINEAR (up to its fixed-point rounding).
    cv2 = pytest.importorskip("cv2")
    expected = cv2.resize(square, (56, 56), interpolation=cv2.INTER_LINEAR).astype(int)
    assert np.abs(nvinfer_scale(square, 56, 56, Scaling()).astype(int) - expected).max() <= 1
    with pytest.raises(EdgeclsError, match="not emulated"):
        nvinfer_scale(square, 32, 32, Scaling(scaling_filter=3))


def deploy(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["deploy", "deepstream", *args])
    return result.exit_code, result.stdout, result.stderr


def read_ini(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(path.read_text())
    return parser


def test_primary_config(new2_export, tiny_data_dir, tmp_path):
    out = tmp_path / "ds"
    code, stdout, stderr = deploy(str(new2_export.files["fp32"]), "-o", str(out), "--data", str(tiny_data_dir),
                                  "--precision", "fp16")
    assert code == 0, stderr
    metadata = ModelMetadata.read(new2_export.files["fp32"])
    prop = read_ini(out / "config_infer_new2.txt")["property"]
    assert prop["network-type"] == "1" and prop["process-mode"] == "1" and prop["network-mode"] == "2"
    assert float(prop["net-scale-factor"]) == pytest.approx(1 / 255, rel=1e-12)
    assert [float(v) for v in prop["offsets"].split(";")] == pytest.approx(
        [255 * m for m in metadata.preprocess.mean], abs=1e-5)
    assert prop["model-color-format"] == "0" and prop["batch-size"] == "1"
    assert prop["onnx-file"] == "new2.deepstream.onnx" and (out / prop["onnx-file"]).is_file()
    assert prop["model-engine-file"] == "new2.deepstream.onnx_b1_gpu0_fp16.engine"
    assert prop["output-blob-names"] == "probabilities" and "operate-on-gie-id" not in prop
    assert (prop["maintain-aspect-ratio"], prop["symmetric-padding"], prop["scaling-filter"]) == ("0", "0", "1")
    assert (out / prop["labelfile-path"]).read_text() == ";".join(metadata.preprocess.class_names) + "\n"
    app = read_ini(out / "deepstream_app_new2.txt")
    assert app["primary-gie"]["config-file"] == "config_infer_new2.txt" and app["source0"]["type"] == "3"
    assert app["sink0"]["enable"] == "1" and "secondary-gie0" not in app

    record = json.loads((out / "new2.deepstream-agreement.json").read_text())
    assert record["configured"]["agreement"] == 100.0 and record["configured"]["images"] == 100
    assert record["configured"]["max_abs_probability_diff"] < 1e-5
    # Every emulated option, on both network inputs: on 32 x 32 frames the aspect options change nothing.
    assert len(record["options"]) == 12
    squeezed = {o["agreement"] for o in record["options"] if not o["crop_in_graph"]}
    assert all(o["agreement"] == 100.0 for o in record["options"] if o["crop_in_graph"]) and len(squeezed) <= 2
    assert "emulated nvinfer, as configured: 32x32 input (crop in the graph), stretched, bilinear: top-1 agreement " \
           "100.00% on 100 images" in stdout
    assert "top-1 agreement 100.00%" in prop_comment(out / "config_infer_new2.txt")


def prop_comment(path: Path) -> str:
    return "\n".join(line for line in path.read_text().splitlines() if line.startswith("#"))


def test_secondary_config_and_int8(new2_export, tiny_data_dir, tmp_path):
    out = tmp_path / "ds"
    code, stdout, stderr = deploy(str(new2_export.files["int8"]), "-o", str(out), "--data", str(tiny_data_dir),
                                  "--mode", "secondary", "--operate-on-class-ids", "0;2", "--maintain-aspect-ratio",
                                  "--symmetric-padding", "--scaling-filter", "0")
    assert code == 0, stderr
    prop = read_ini(out / "config_infer_new2.txt")["property"]
    assert prop["process-mode"] == "2" and prop["operate-on-gie-id"] == "1" and prop["operate-on-class-ids"] == "0;2"
    assert prop["network-mode"] == "1" and prop["batch-size"] == "16" and prop["gie-unique-id"] == "2"
    assert prop["onnx-file"] == "new2.int8.deepstream.onnx"
    assert (prop["maintain-aspect-ratio"], prop["symmetric-padding"], prop["scaling-filter"]) == ("1", "1", "0")
    assert "int8-calib-file" in prop_comment(out / "config_infer_new2.txt")  # what DeepStream does without one
    app = read_ini(out / "deepstream_app_new2.txt")
    assert app["primary-gie"]["config-file"] == SAMPLE_DETECTOR
    assert app["secondary-gie0"]["config-file"] == "config_infer_new2.txt"
    assert app["secondary-gie0"]["operate-on-gie-id"] == "1"
    assert "aspect kept, padded on both sides, nearest: top-1 agreement" in stdout


def test_bad_deepstream_options_are_one_line(new2_export, tiny_data_dir, tmp_path):
    fp32, data = str(new2_export.files["fp32"]), str(tiny_data_dir)
    cases = [
        ([fp32, "--symmetric-padding"], "add --maintain-aspect-ratio"),
        ([fp32, "--precision", "int8"], "does not fit"),
        ([str(new2_export.files["fp16"])], "is the fp16 export; give the fp32 file with --precision fp16"),
        ([fp32, "--operate-on-class-ids", "cars"], "give class ids separated by ';'"),
        ([str(tmp_path / "none.onnx")], "does not exist"),
    ]
    for args, message in cases:
        code, stdout, stderr = deploy(*args, "-o", str(tmp_path / "ds"), "--data", data)
        assert code == 2 and stdout == "" and message in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert not (tmp_path / "ds").exists() or not any((tmp_path / "ds").iterdir())
