import math

import pytest
import torch
from torch import nn

from course_lib.convnets import ConvResidualBlock, cnn, stream_grad_norms
from course_lib.models import fan_in_out, init_
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
    # main-path layers only: BatchNorm's gains are one-dimensional and are not layers
    assert not any("norm" in n for n in names)
    all_names = list(gradient_norms(m, torch.randn(4, 1, 12, 12), torch.tensor([0, 1, 2, 3]),
                                    layers="all"))
    assert any("norm" in n for n in all_names) == (norm == "batch")


def test_he_init_std_counts_the_kernel():
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 32, 3)
    assert fan_in_out(conv) == (144, 288)
    assert init_(conv, "kaiming_normal") is conv
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


@pytest.mark.parametrize("norm", [None, "batch"])
def test_residual_scale_multiplies_the_branch(norm):
    torch.manual_seed(0)
    block = ConvResidualBlock(4, "relu", norm, residual_scale=0.25)
    x = torch.randn(3, 4, 6, 6)
    branch = block.act(block.norm(block.conv(x)) if norm else block.conv(x))
    assert torch.allclose(block(x) - x, 0.25 * branch, atol=1e-6)
    assert ConvResidualBlock(4, "relu", norm).residual_scale == 1.0


def test_cnn_passes_residual_scale_and_keeps_the_default():
    torch.manual_seed(0)
    scaled = cnn(1, 10, 5, 4, residual=True, residual_scale=0.5)
    torch.manual_seed(0)
    unscaled = cnn(1, 10, 5, 4, residual=True)
    assert all(getattr(scaled, f"block{i}").residual_scale == 0.5 for i in range(2, 6))
    assert all(getattr(unscaled, f"block{i}").residual_scale == 1.0 for i in range(2, 6))
    x = torch.randn(2, 1, 8, 8)
    h = unscaled[:3](x)                       # conv1, act1, block2 input
    blk = unscaled.block3
    assert torch.equal(blk(h), h + blk.act(blk.conv(h)))          # default: x + branch, unchanged
    unscaled.load_state_dict(scaled.state_dict())
    feats_s = scaled[:-1](x).pow(2).mean()
    feats_u = unscaled[:-1](x).pow(2).mean()
    assert feats_s < feats_u, "a scaled branch should keep the stream smaller"


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), "0.5", None, True])
def test_bad_residual_scale(bad):
    with pytest.raises(ValueError, match="residual_scale"):
        cnn(1, 10, 3, 4, residual=True, residual_scale=bad)
    with pytest.raises(ValueError, match="residual_scale"):
        ConvResidualBlock(4, "relu", None, residual_scale=bad)


def test_stream_gradient_of_a_residual_cnn_matches_autograd_and_leaves_the_model_alone():
    torch.manual_seed(0)
    m = cnn(1, 10, 5, 4, norm="batch", residual=True, downsample=(1, 3), residual_scale=0.5)
    x, y = torch.randn(6, 1, 8, 8), torch.randint(0, 10, (6,))
    before = {k: v.clone() for k, v in m.state_dict().items()}
    g = stream_grad_norms(m, x, y)
    assert g.layers == ["stem", "block2", "block3", "block4", "block5"]
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items()), "BN statistics moved"
    assert all(p.grad is None for p in m.parameters())
    # the last block's output feeds the head: pool, flatten, out
    h = m[:-3](x).detach().requires_grad_()
    torch.nn.functional.cross_entropy(m[-3:](h), y).backward()
    assert g["block5"] == pytest.approx(float(h.grad.norm()), rel=1e-5)
    # a zero branch makes the block the identity: the gradient passes unchanged (pool3 keeps the norm)
    for block in (m.block4, m.block5):
        block.residual_scale = 0.0
    g0 = stream_grad_norms(m, x, y)
    assert g0["block3"] == pytest.approx(g0["block5"], rel=1e-5)


def test_stream_gradient_needs_a_residual_cnn():
    with pytest.raises(ValueError, match="residual"):
        stream_grad_norms(cnn(1, 10, 3, 4), torch.randn(2, 1, 8, 8), torch.tensor([0, 1]))
