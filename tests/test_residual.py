"""Residual block arrangements (lesson 09): pre-activation ``x + scale * fc(act(norm(x)))``,
post-activation ``act(x + scale * norm(fc(x)))`` and the default "ReLU before addition"."""

import pytest
import torch
from torch import nn
from torch.func import jacrev

from course_lib.models import ResidualBlock, mlp


def test_preactivation_block_computes_fc_of_act_of_norm():
    torch.manual_seed(0)
    block = ResidualBlock(6, "relu", "layer", residual_scale=0.5, preactivation=True)
    nn.init.normal_(block.norm.weight)
    nn.init.normal_(block.norm.bias)
    x = torch.randn(4, 6)
    expected = x + 0.5 * block.fc(torch.relu(block.norm(x)))
    assert torch.allclose(block(x), expected)


def test_preactivation_without_norm_and_default_is_unchanged():
    torch.manual_seed(1)
    pre = ResidualBlock(5, "tanh", None, preactivation=True)
    x = torch.randn(3, 5)
    assert torch.allclose(pre(x), x + pre.fc(torch.tanh(x)))
    post = ResidualBlock(5, "tanh", None)               # the default: activation before the addition
    assert post.preactivation is False
    assert torch.allclose(post(x), x + torch.tanh(post.fc(x)))


def test_preactivation_block_is_identity_when_its_last_weights_are_zero():
    block = ResidualBlock(8, "relu", "batch", preactivation=True)
    nn.init.zeros_(block.fc.weight)
    nn.init.zeros_(block.fc.bias)
    x = torch.randn(16, 8)
    assert torch.equal(block(x), x)
    jac = jacrev(lambda v: block.eval()(v[None])[0])(x[0])
    assert torch.allclose(jac, torch.eye(8))


def test_mlp_preactivation_builds_preactivation_blocks_with_the_same_names():
    pre = mlp(64, 10, depth=5, width=16, activation="relu", init="kaiming_normal", norm="batch",
              residual=True, preactivation=True)
    post = mlp(64, 10, depth=5, width=16, activation="relu", init="kaiming_normal", norm="batch",
               residual=True)
    assert [n for n, _ in pre.named_modules()] == [n for n, _ in post.named_modules()]
    blocks = [m for m in pre.modules() if isinstance(m, ResidualBlock)]
    assert len(blocks) == 4 and all(b.preactivation for b in blocks)
    assert not any(b.preactivation for b in post.modules() if isinstance(b, ResidualBlock))
    assert pre(torch.randn(7, 64)).shape == (7, 10)


def test_mlp_preactivation_passes_the_scale():
    model = mlp(3, 2, depth=3, width=4, residual=True, preactivation=True, residual_scale=0.25)
    assert all(b.residual_scale == 0.25 for b in model.modules() if isinstance(b, ResidualBlock))


@pytest.mark.parametrize("kwargs, word", [
    (dict(residual=False, preactivation=True), "residual=True"),
    (dict(residual=True, preactivation="yes"), "preactivation"),
    (dict(residual=True, preactivation=1), "preactivation"),
])
def test_mlp_preactivation_bad_input(kwargs, word):
    with pytest.raises(ValueError, match=word):
        mlp(4, 2, depth=3, width=4, **kwargs)


def test_residual_block_rejects_a_non_bool_preactivation():
    with pytest.raises(ValueError, match="True or False"):
        ResidualBlock(4, "relu", None, preactivation="pre")


def test_postactivation_block_applies_the_activation_after_the_addition():
    torch.manual_seed(2)
    block = ResidualBlock(6, "relu", "batch", residual_scale=0.5, postactivation=True)
    x = torch.randn(8, 6)
    expected = torch.relu(x + 0.5 * block.norm(block.fc(x)))
    assert torch.allclose(block(x), expected)
    assert bool((block(x) >= 0).all()), "ReLU after the addition: the stream is never negative"
    default = ResidualBlock(6, "relu", "batch", residual_scale=0.5)
    default.load_state_dict(block.state_dict())
    assert bool((default(x) < 0).any()), "the default block adds ReLU(...) to x and keeps x's sign"


def test_postactivation_identity_path_passes_through_the_activation():
    block = ResidualBlock(5, "tanh", None, postactivation=True)
    nn.init.zeros_(block.fc.weight)
    nn.init.zeros_(block.fc.bias)
    x = torch.randn(5) * 2
    jac = jacrev(lambda v: block(v[None])[0])(x)
    assert torch.allclose(jac, torch.diag(1 - torch.tanh(x) ** 2), atol=1e-6), \
        "with a zero branch the Jacobian is diag(tanh'(x)), not I"


def test_mlp_postactivation_builds_postactivation_blocks():
    model = mlp(64, 10, depth=4, width=16, activation="relu", norm="batch", residual=True,
                postactivation=True, residual_scale=0.5)
    blocks = [m for m in model.modules() if isinstance(m, ResidualBlock)]
    assert len(blocks) == 3 and all(b.postactivation and not b.preactivation for b in blocks)
    assert all(b.residual_scale == 0.5 for b in blocks)
    assert model(torch.randn(7, 64)).shape == (7, 10)


@pytest.mark.parametrize("kwargs, word", [
    (dict(residual=False, postactivation=True), "residual=True"),
    (dict(residual=True, postactivation="yes"), "postactivation"),
    (dict(residual=True, preactivation=True, postactivation=True), "at most one"),
])
def test_mlp_postactivation_bad_input(kwargs, word):
    with pytest.raises(ValueError, match=word):
        mlp(4, 2, depth=3, width=4, **kwargs)


def test_residual_block_rejects_pre_and_post_activation_together():
    with pytest.raises(ValueError, match="at most one"):
        ResidualBlock(4, "relu", None, preactivation=True, postactivation=True)
