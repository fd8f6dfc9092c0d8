import math

import pytest
import torch
from torch import nn

from course_lib.convnets import cnn, fan_in_out, init_layer_
from course_lib.instrument import gradient_norms


@pytest.mark.parametrize("norm,residual", [(None, False), ("batch", False), (None, True), ("batch", True)])
def test_cnn_shapes_and_names(norm, residual):
    torch.manual_seed(0)
    m = cnn(1, 10, 4, 4, norm=norm, residual=residual, downsample=(2,))
    out = m(torch.randn(3, 1, 12, 12))
    assert out.shape == (3, 10)
    names = list(gradient_norms(m, torch.randn(4, 1, 12, 12), torch.tensor([0, 1, 2, 3])))
    assert names[0] == "conv1" and names[-1] == "out"
    assert ("block4.conv" in names) == residual and ("conv4" in names) != residual
    assert any("norm" in n for n in names) == (norm == "batch")


def test_he_init_std_counts_the_kernel():
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 32, 3)
    assert fan_in_out(conv) == (144, 288)
    init_layer_(conv, "kaiming_normal")
    assert abs(conv.weight.std().item() - math.sqrt(2 / 144)) < 0.01
    assert conv.bias.abs().max() == 0


def test_bad_input_lists_valid_choices():
    with pytest.raises(ValueError, match="valid"):
        cnn(1, 10, 3, 4, norm="layer")
    with pytest.raises(ValueError, match="valid"):
        cnn(1, 10, 3, 4, activation="swishy")
    with pytest.raises(ValueError, match="valid"):
        cnn(1, 10, 3, 4, init="he")
    with pytest.raises(ValueError):
        cnn(1, 10, 0, 4)
    with pytest.raises(ValueError):
        cnn(1, 10, 3, 4, init="normal")
    with pytest.raises(ValueError):
        cnn(1, 10, 3, 4, downsample=(9,))
    with pytest.raises(ValueError):
        fan_in_out(nn.ReLU())
