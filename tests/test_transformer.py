"""course_lib.transformer: the block equals PyTorch's, the fixes do what their papers say, the
measurements read what they claim."""

import math

import pytest
import torch
from torch import nn

from course_lib.data import sequence_task
from course_lib.instrument import gradient_norms
from course_lib.records import Profile
from course_lib.transformer import (Block, admin_init_, attention_gradients, linear_warmup,
                                    noam_rate, output_change, per_block,
                                    power_law_exponent, rank_collapse, sinusoidal_positions,
                                    stream_rms, token_accuracy, transformer)


@pytest.mark.parametrize("order, norm_first", [("post", False), ("pre", True)])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_block_computes_what_pytorchs_encoder_layer_computes(order, norm_first, activation):
    ref = nn.TransformerEncoderLayer(16, 4, 24, dropout=0.0, activation=activation,
                                     batch_first=True, norm_first=norm_first)
    with torch.no_grad():  # non-trivial LayerNorm gains, so that swapping norm1/norm2 shows
        for p in ref.parameters():
            p.add_(0.1 * torch.randn_like(p))
    block = Block(16, 4, 24, order=order, activation=activation)
    missing = block.load_state_dict(ref.state_dict(), strict=False)
    assert missing.missing_keys == ["residual_scale"] and not missing.unexpected_keys
    x = torch.randn(3, 7, 16)
    assert torch.allclose(block(x), ref(x), atol=1e-5)


def test_post_and_pre_orders_differ_on_the_same_weights():
    post, pre = Block(8, 2, order="post"), Block(8, 2, order="pre")
    pre.load_state_dict(post.state_dict())
    x = torch.randn(2, 5, 8)
    assert not torch.allclose(post(x), pre(x), atol=1e-3)
    # Post-LN ends in a LayerNorm: every token has mean 0 and std 1 (gain 1, bias 0 at init)
    out = post(x)
    assert torch.allclose(out.mean(-1), torch.zeros(2, 5), atol=1e-5)


def test_model_names_its_layers_after_blocks_and_sublayers():
    model = transformer(10, 3, 16, 2, order="pre", max_len=6)
    x, y = sequence_task(8, 6, 10, "reverse")
    g = gradient_norms(model, x, y)
    assert g.layers == ["embed"] + [f"block{i}.{s}" for i in (1, 2, 3)
                                    for s in ("self_attn", "linear1", "linear2")] + ["head"]
    assert model(x).shape == (8, 6, 10)
    assert isinstance(model.norm_f, nn.LayerNorm)
    assert transformer(10, 3, 16, 2, order="post").norm_f is None


def test_model_rejects_bad_arguments_and_inputs():
    with pytest.raises(ValueError, match="valid: 'post', 'pre', 'none'"):
        transformer(10, 2, order="middle")
    with pytest.raises(ValueError, match="heads must divide width"):
        transformer(10, 2, width=30, heads=4)
    with pytest.raises(ValueError, match="fix 'rezero' uses order 'none'"):
        transformer(10, 2, order="post", fix="rezero")
    with pytest.raises(ValueError, match="valid: None, 'deepnet'"):
        transformer(10, 2, fix="magic")
    with pytest.raises(ValueError, match="depth must be an integer >= 1"):
        transformer(10, 0)
    model = transformer(10, 1, 8, 2, max_len=4)
    with pytest.raises(ValueError, match="integer ids"):
        model(torch.randn(2, 4))
    with pytest.raises(ValueError, match="exceed max_len 4"):
        model(torch.zeros(2, 5, dtype=torch.long))


def test_xavier_init_gives_unit_gain_matrices_and_zero_biases():
    model = transformer(10, 2, 32, 4, init="xavier")
    b = model.block1
    q = b.self_attn.in_proj_weight.detach()[:32]
    bound = math.sqrt(6 / 64)  # Xavier-uniform of a 32 x 32 matrix
    assert float(q.abs().max()) <= bound and float(q.std()) > 0.8 * bound / math.sqrt(3)
    assert float(b.linear1.bias.detach().abs().max()) == 0.0
    default = transformer(10, 2, 32, 4, init="default")
    assert float(default.block1.linear1.bias.detach().abs().max()) > 0


def test_deepnet_scales_the_residual_and_shrinks_the_branches():
    depth = 8
    model = transformer(10, depth, 32, 4, order="post", fix="deepnet")
    alpha, beta = (2 * depth) ** 0.25, (8 * depth) ** -0.25
    assert torch.allclose(model.block1.residual_scale, torch.full((2,), alpha))
    w = model.block1.linear2.weight.detach()
    expected_std = beta * math.sqrt(2 / sum(w.shape))
    assert float(w.std()) == pytest.approx(expected_std, rel=0.1)


def test_rezero_blocks_start_as_the_identity():
    model = transformer(10, 4, 16, 2, order="none", fix="rezero")
    block = model.block2
    x = torch.randn(2, 5, 16)
    assert torch.equal(block(x), x)
    assert not hasattr(block, "norm1")


def test_admin_sets_each_residual_scale_to_the_accumulated_branch_variance():
    torch.manual_seed(0)
    model = transformer(10, 3, 16, 2, order="post", fix="admin", max_len=6)
    x, _ = sequence_task(32, 6, 10)
    omegas = admin_init_(model, x)
    assert len(omegas) == 6 and omegas[0] == 1.0
    assert all(b > a for a, b in zip(omegas[1:], omegas[2:])), "the sums grow sub-layer by layer"
    assert float(model.block3.residual_scale[1]) == pytest.approx(omegas[-1])
    with pytest.raises(ValueError, match="order='post'"):
        admin_init_(transformer(10, 2, 16, 2, order="pre"), x)


def test_per_block_picks_one_sublayer_per_block():
    p = Profile({"embed": 1.0, "block1.self_attn": 2.0, "block1.linear2": 3.0,
                 "block2.self_attn": 4.0, "block2.linear2": 5.0, "head": 6.0}, "grad_norm")
    got = per_block(p, "linear2")
    assert dict(got) == {"block1": 3.0, "block2": 5.0} and got.stat == "grad_norm"
    assert list(per_block(p, "self_attn").array) == [2.0, 4.0]
    with pytest.raises(ValueError, match="valid: 'self_attn', 'linear1', 'linear2'"):
        per_block(p, "norm1")
    with pytest.raises(ValueError, match="no layer '<block>.linear1'"):
        per_block(p, "linear1")


def test_rank_collapse_is_zero_for_identical_tokens_and_one_for_centred_ones():
    class Repeat(nn.TransformerEncoderLayer):  # a "block" that copies token 0 everywhere
        def forward(self, x):
            return x[:, :1].expand_as(x).clone()

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = Repeat(4, 1, 8, dropout=0.0, batch_first=True)

        def forward(self, x):
            return self.layer(x)

    x = torch.randn(3, 5, 4)
    x = x - x.mean(1, keepdim=True)
    r = rank_collapse(Model(), x)
    assert r.layers == ["input", "layer"]
    assert r["input"] == pytest.approx(1.0) and r["layer"] == pytest.approx(0.0, abs=1e-12)


def test_attention_only_stacks_collapse_and_skips_prevent_it():
    torch.manual_seed(0)
    x, _ = sequence_task(16, 8, 10)
    no_skip = rank_collapse(transformer(10, 6, 32, 4, order="none", mlp=False, skip=False), x)
    with_skip = rank_collapse(transformer(10, 6, 32, 4, order="pre", mlp=False), x)
    assert no_skip.array[-1] < 1e-3 * no_skip["input"]
    assert with_skip.array[-1] > 0.3 * with_skip["input"]
    with pytest.raises(ValueError, match="no Block"):
        rank_collapse(nn.Linear(3, 3), torch.randn(2, 3))


def test_stream_rms_grows_in_pre_ln_and_stays_at_one_in_post_ln():
    x, _ = sequence_task(16, 8, 10)
    pre = stream_rms(transformer(10, 12, 32, 4, order="pre"), x)
    post = stream_rms(transformer(10, 12, 32, 4, order="post"), x)
    assert pre.array[-1] > 1.5 * pre["input"]
    assert post.array[-1] == pytest.approx(1.0, rel=1e-3)


def test_token_accuracy_counts_positions():
    class Echo(nn.Module):
        def forward(self, x):
            return nn.functional.one_hot(x, 10).float()

    x = torch.tensor([[1, 2], [3, 4]])
    assert token_accuracy(Echo(), x, x) == 1.0
    assert token_accuracy(Echo(), x, torch.tensor([[1, 0], [0, 0]])) == 0.25
    with pytest.raises(ValueError, match="one shape"):
        token_accuracy(Echo(), x, x[:1])


def test_linear_warmup_rises_to_the_base_rate_then_stays():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = linear_warmup(4)(opt)
    rates = []
    for _ in range(6):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert rates == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1, 0.1])
    with pytest.raises(ValueError, match="warmup_steps"):
        linear_warmup(0)


def test_noam_rate_peaks_at_the_end_of_warmup():
    d, w = 64, 100
    rates = [noam_rate(s, d, w) for s in range(1, 400)]
    assert max(rates) == rates[w - 1] == pytest.approx(d ** -0.5 * w ** -0.5)
    assert noam_rate(50, d, w) == pytest.approx(noam_rate(100, d, w) / 2)
    assert noam_rate(400, d, w) == pytest.approx(noam_rate(100, d, w) / 2)
    for bad in [dict(step=0), dict(d_model=0), dict(warmup_steps=-1), dict(step=1.5)]:
        args = dict(step=1, d_model=d, warmup_steps=w) | bad
        with pytest.raises(ValueError):
            noam_rate(**args)


def test_power_law_exponent_recovers_known_powers():
    sizes = [2, 4, 8, 16]
    assert power_law_exponent(sizes, [3 / math.sqrt(s) for s in sizes]) == pytest.approx(-0.5)
    assert power_law_exponent(sizes, [7.0] * 4) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="positive"):
        power_law_exponent(sizes, [1, 0, 1, 1])
    with pytest.raises(ValueError, match="same length"):
        power_law_exponent(sizes, [1, 2])


def test_sinusoidal_positions_follow_vaswani():
    table = sinusoidal_positions(5, 6)
    assert table.shape == (5, 6)
    assert table[3, 0] == pytest.approx(math.sin(3)) and table[3, 1] == pytest.approx(math.cos(3))
    assert table[2, 4] == pytest.approx(math.sin(2 / 10000 ** (4 / 6)))


def test_attention_gradients_split_the_joint_projection_into_query_key_value():
    torch.manual_seed(0)
    model = transformer(10, 2, 16, 2, order="pre", max_len=6)
    x, y = sequence_task(8, 6, 10, "reverse")
    parts = attention_gradients(model, x, y)
    whole = gradient_norms(model, x, y)
    for layer in ("block1.self_attn", "block2.self_attn"):
        q, k, v = (parts[p][layer] for p in ("query", "key", "value"))
        out_proj = float(getattr(model, layer.split(".")[0]).self_attn.out_proj.weight.grad.norm())
        assert math.sqrt(q**2 + k**2 + v**2 + out_proj**2) == pytest.approx(whole[layer], rel=1e-5)
    with pytest.raises(ValueError, match="no nn.MultiheadAttention"):
        attention_gradients(nn.Linear(3, 2), torch.randn(4, 3), torch.randn(4, 2))


def test_query_and_key_gradients_die_with_rank_collapse():
    torch.manual_seed(0)
    model = transformer(10, 6, 32, 4, order="none", mlp=False, skip=False, max_len=8).double()
    x, y = sequence_task(16, 8, 10, "reverse")
    parts = attention_gradients(model, x, y)
    assert parts["query"]["block6.self_attn"] < 1e-6 * parts["query"]["block1.self_attn"]
    assert parts["key"]["block6.self_attn"] < 1e-6 * parts["key"]["block1.self_attn"]
    assert parts["value"]["block6.self_attn"] > 1e-2 * parts["value"]["block1.self_attn"]


def test_output_change_grows_with_depth_in_post_ln_and_leaves_the_model_alone():
    x, y = sequence_task(16, 8, 10, "reverse")
    changes = {}
    for depth in (2, 12):
        torch.manual_seed(0)
        model = transformer(10, depth, 32, 4, order="post", max_len=8)
        before = [p.detach().clone() for p in model.parameters()]
        changes[depth] = output_change(model, x, y, lr=1e-4)
        assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
        assert all(p.grad is None for p in model.parameters())
    assert changes[12] > 3 * changes[2] > 0
    with pytest.raises(ValueError, match="lr must be a finite number > 0"):
        output_change(model, x, y, lr=0.0)
