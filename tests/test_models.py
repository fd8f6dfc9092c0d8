import math

import pytest
import torch
from torch import nn

from course_lib.models import ACTIVATIONS, INITS, ResidualBlock, count_parameters, init_, mlp


def linears(model):
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def test_mlp_structure_and_names():
    model = mlp(64, 10, depth=3, width=32)
    names = [n for n, _ in model.named_children()]
    assert names == ["fc1", "act1", "fc2", "act2", "fc3", "act3", "out"]
    assert model(torch.randn(5, 64)).shape == (5, 10)
    assert count_parameters(model) == 64 * 32 + 32 + 2 * (32 * 32 + 32) + 32 * 10 + 10


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_every_activation_builds_and_runs(activation):
    model = mlp(4, 2, depth=2, width=8, activation=activation)
    assert model(torch.randn(3, 4)).shape == (3, 2)


@pytest.mark.parametrize("norm,cls", [("batch", nn.BatchNorm1d), ("layer", nn.LayerNorm)])
def test_norm_layers_sit_before_the_activation(norm, cls):
    model = mlp(4, 2, depth=2, width=8, norm=norm)
    names = [n for n, _ in model.named_children()]
    assert names == ["fc1", "norm1", "act1", "fc2", "norm2", "act2", "out"]
    assert isinstance(model.norm1, cls)


def test_residual_blocks_add_the_identity():
    model = mlp(4, 2, depth=4, width=8, residual=True, norm="layer")
    blocks = [m for m in model.modules() if isinstance(m, ResidualBlock)]
    assert len(blocks) == 3
    block = blocks[0]
    with torch.no_grad():
        block.fc.weight.zero_()
        block.fc.bias.fill_(-5.0)  # ReLU of a constant negative: the branch outputs zero
    block_plain = ResidualBlock(8, "relu", None)
    with torch.no_grad():
        block_plain.fc.weight.zero_()
        block_plain.fc.bias.fill_(-1.0)
    x = torch.randn(3, 8)
    assert torch.equal(block_plain(x), x)


def test_residual_scale_scales_the_branch():
    block = ResidualBlock(6, "identity", None, residual_scale=0.5)
    x = torch.randn(2, 6)
    assert torch.allclose(block(x), x + 0.5 * block.fc(x))


@pytest.mark.parametrize("init,expected_var", [
    ("lecun_normal", lambda fi, fo: 1 / fi),
    ("xavier_normal", lambda fi, fo: 2 / (fi + fo)),
    ("xavier_uniform", lambda fi, fo: 2 / (fi + fo)),
    ("kaiming_normal", lambda fi, fo: 2 / fi),
    ("kaiming_uniform", lambda fi, fo: 2 / fi),
    ("default", lambda fi, fo: 1 / (3 * fi)),
])
def test_init_variances_match_the_formulas(init, expected_var):
    torch.manual_seed(0)
    layer = nn.Linear(400, 300)
    init_(layer, init)
    var = layer.weight.var().item()
    assert var == pytest.approx(expected_var(400, 300), rel=0.05)
    if init != "default":
        assert torch.count_nonzero(layer.bias) == 0


def test_kaiming_and_default_differ_by_a_factor_of_six():
    a, b = nn.Linear(500, 500), nn.Linear(500, 500)
    init_(b, "kaiming_normal")
    assert b.weight.var().item() / a.weight.var().item() == pytest.approx(6.0, rel=0.05)


def test_kaiming_for_leaky_relu_uses_the_slope():
    layer = nn.Linear(1000, 1000)
    init_(layer, "kaiming_normal", activation="leaky_relu")
    assert layer.weight.var().item() == pytest.approx(2 / (1 + 0.01**2) / 1000, rel=0.05)


def test_normal_and_orthogonal_inits():
    model = mlp(50, 5, depth=2, width=50, init="normal", std=0.1)
    assert linears(model)[1].weight.std().item() == pytest.approx(0.1, rel=0.05)
    ortho = mlp(50, 5, depth=2, width=50, init="orthogonal")
    w = linears(ortho)[1].weight
    assert torch.allclose(w @ w.T, torch.eye(50), atol=1e-5)


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ValueError, match="unknown activation 'swish'.*'relu'"):
        mlp(4, 2, 2, 8, activation="swish")
    with pytest.raises(ValueError, match="unknown init 'he'.*'kaiming_normal'"):
        mlp(4, 2, 2, 8, init="he")
    with pytest.raises(ValueError, match="unknown norm 'group'.*'batch', 'layer'"):
        mlp(4, 2, 2, 8, norm="group")
    msg = str(pytest.raises(ValueError, mlp, 4, 2, 2, 8, init="bogus").value)
    assert all(repr(name) in msg for name in INITS)


@pytest.mark.parametrize("kwargs,match", [
    (dict(depth=0), "depth"), (dict(width=-3), "width"), (dict(in_features=2.5), "in_features"),
    (dict(init="normal"), "std"), (dict(init="normal", std=-1.0), "std"),
    (dict(residual="yes"), "residual"), (dict(residual=True, residual_scale=-0.5), "residual_scale"),
])
def test_bad_sizes_and_arguments(kwargs, match):
    args = dict(in_features=4, out_features=2, depth=2, width=8)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        mlp(**args)


def test_prelu_has_one_learnable_slope_per_layer():
    model = mlp(4, 2, depth=3, width=8, activation="prelu")
    slopes = [m.weight for m in model.modules() if isinstance(m, nn.PReLU)]
    assert len(slopes) == 3 and all(s.numel() == 1 and math.isclose(s.item(), 0.25) for s in slopes)


def test_make_activation_fresh_modules_and_bad_name():
    from course_lib.models import make_activation

    a, b = make_activation("prelu"), make_activation("prelu")
    assert a is not b and isinstance(a, nn.PReLU)
    with pytest.raises(ValueError, match="unknown activation 'Relu'.*'relu'"):
        make_activation("Relu")


def test_one_init_function_fills_linear_and_conv_and_returns_the_layer():
    torch.manual_seed(0)
    for layer, fan_in in [(nn.Linear(300, 200), 300), (nn.Conv2d(20, 40, 3), 180),
                          (nn.Conv1d(30, 10, 5), 150)]:
        assert init_(layer, "kaiming_normal") is layer
        assert layer.weight.var().item() == pytest.approx(2 / fan_in, rel=0.1)
        assert torch.count_nonzero(layer.bias) == 0
    with pytest.raises(ValueError, match="nn.Linear or nn.Conv"):
        init_(nn.LSTM(3, 4), "kaiming_normal")


def test_xavier_gain_scales_the_variance():
    torch.manual_seed(0)
    layer = init_(nn.Linear(400, 400), "xavier_normal", gain=5 / 3)
    assert layer.weight.var().item() == pytest.approx((5 / 3) ** 2 * 2 / 800, rel=0.05)
    with pytest.raises(ValueError, match="gain"):
        init_(nn.Linear(4, 4), "orthogonal", gain=-1.0)
