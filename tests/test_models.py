import pytest
import torch
from click.testing import CliRunner

from edgecls.cli import main
from edgecls.errors import EdgeclsError
from edgecls.models import MODELS, create_model, model_stats

# Parameters counted by hand from Table 1 (convolutions without bias, batch-norm scale + shift, linear with bias).
EXPECTED = {
    #        params     fc params  maps after the last pooling
    "new2": (845_642, 68_362, (64, 2, 2)),
    "new1": (212_906, 17_802, (32, 2, 2)),
    "alex2": (8_820_116, 8_411_860, (256, 7, 7)),
    "alex1": (2_213_850, 2_111_098, (128, 7, 7)),
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_shapes_and_parameter_counts(name):
    model = create_model(name).eval()
    params, fc_params, feature_shape = EXPECTED[name]
    with torch.no_grad():
        assert model(torch.randn(5, 3, 28, 28)).shape == (5, 10)
        assert model.features(torch.randn(1, 3, 28, 28)).shape[1:] == feature_shape
    stats = model_stats(model)
    assert (stats.params, stats.fc_params) == (params, fc_params)


def test_new2_follows_table_1():
    model = create_model("new2")
    convs = [m for m in model.features if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    assert [type(m).__name__ for m in convs] == ["Conv2d"] * 4 + ["ConvTranspose2d"] * 2
    assert [m.out_channels for m in convs] == [64, 64, 128, 256, 128, 64]
    assert all(m.kernel_size == (3, 3) and m.stride == (1, 1) and m.padding == (1, 1) for m in convs)
    dropouts = [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts == [0.2, 0.2, 0.5, 0.5, 0.5]
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == 6


def test_new2_macs_match_a_hand_count():
    # output positions x output maps x input maps x 9 for each convolution, input positions for the deconvolutions
    convs = 28 * 28 * 64 * 3 * 9 + 28 * 28 * 64 * 64 * 9 + 14 * 14 * 128 * 64 * 9 + 14 * 14 * 256 * 128 * 9
    deconvs = 7 * 7 * 256 * 128 * 9 + 4 * 4 * 128 * 64 * 9
    assert model_stats(create_model("new2")).macs == convs + deconvs + 256 * 256 + 256 * 10


def test_paper_shares_for_the_baselines_are_close():
    for name in ("alex1", "alex2"):
        stats = model_stats(create_model(name))
        assert abs(stats.fc_share - MODELS[name].paper.fc_share) < 0.1
        assert abs(stats.params - MODELS[name].paper.params) / MODELS[name].paper.params < 0.002


def test_unknown_model_is_a_clear_error():
    with pytest.raises(EdgeclsError, match="unknown model 'vgg'"):
        create_model("vgg")


def test_models_command_lists_both_sets_of_figures():
    result = CliRunner().invoke(main, ["models"])
    assert result.exit_code == 0, result.output
    for name, (params, _, _) in EXPECTED.items():
        line = next(l for l in result.output.splitlines() if l.startswith(name + " "))
        assert f"{params:,}" in line and f"{MODELS[name].paper.params:,}" in line


@pytest.mark.parametrize("name", list(EXPECTED))
def test_models_take_the_data_s_number_of_classes(name):
    model = create_model(name, num_classes=3).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 28, 28)).shape == (2, 3)
    # only the output layer changes: 256 (or Fc1's width) x (10 - 3) weights and 7 biases fewer
    fc1 = model.classifier[1].out_features
    assert model_stats(model).params == EXPECTED[name][0] - (fc1 + 1) * 7
    for bad in (1, 0, -2, 2.5, True):
        with pytest.raises(EdgeclsError, match="2 classes or more"):
            create_model(name, num_classes=bad)
