import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from course_lib.instrument import (Recorder, capture_activations, default_loss,
                                   first_nonfinite_output, gradient_norms, snapshot, weight_layers)
from course_lib.models import mlp


def manual_weight_grad_norms(model, x, y, loss_fn=F.cross_entropy):
    model.zero_grad()
    loss_fn(model(x), y).backward()
    return {n: m.weight.grad.norm().item() for n, m in model.named_modules()
            if isinstance(m, nn.Linear)}


def test_gradient_norms_match_manual_and_are_ordered(tiny_batch):
    x, y = tiny_batch
    model = mlp(8, 3, depth=4, width=16, activation="tanh")
    norms = gradient_norms(model, x, y)
    manual = manual_weight_grad_norms(model, x, y)
    assert list(norms) == ["fc1", "fc2", "fc3", "fc4", "out"]
    for k in manual:
        assert norms[k] == pytest.approx(manual[k], rel=1e-5)


def test_gradient_norms_order_follows_the_forward_pass_not_registration():
    class Backwards(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(6, 2)   # registered first, called last
            self.body = nn.Linear(4, 6)

        def forward(self, x):
            return self.head(torch.tanh(self.body(x)))

    norms = gradient_norms(Backwards(), torch.randn(5, 4), torch.randint(0, 2, (5,)))
    assert list(norms) == ["body", "head"]


def test_gradient_norms_with_custom_loss_and_float_targets():
    model = mlp(3, 2, depth=2, width=5)
    x, y = torch.randn(7, 3), torch.randn(7, 2)
    default = gradient_norms(model, x, y)  # MSE for float targets
    manual = manual_weight_grad_norms(model, x, y, F.mse_loss)
    assert default["out"] == pytest.approx(manual["out"], rel=1e-5)
    doubled = gradient_norms(model, x, y, loss_fn=lambda o, t: 2 * F.mse_loss(o, t))
    assert doubled["out"] == pytest.approx(2 * manual["out"], rel=1e-5)


def test_sigmoid_depth_makes_gradients_vanish(digits_batch):
    torch.manual_seed(0)
    x, y = digits_batch
    norms = list(gradient_norms(mlp(64, 10, 10, 64, "sigmoid"), x, y).values())
    assert norms[0] / norms[-1] < 1e-5


def test_works_on_torchvision_resnet_and_conv_layers():
    from torchvision.models import resnet18

    model = resnet18(weights=None, num_classes=5)
    norms = gradient_norms(model, torch.randn(2, 3, 32, 32), torch.tensor([0, 3]))
    assert list(norms)[0] == "conv1" and list(norms)[-1] == "fc"
    assert "bn1" in norms and "layer1.0.conv1" in norms
    assert all(math.isfinite(v) and v > 0 for v in norms.values())


@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU, nn.RNN])
def test_works_on_recurrent_models(cell):
    class Seq(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = cell(3, 8, batch_first=True)
            self.head = nn.Linear(8, 1)

        def forward(self, x):
            out, _ = self.rnn(x)
            return self.head(out[:, -1])

    model = Seq()
    x, y = torch.randn(4, 6, 3), torch.randn(4, 1)
    trace = snapshot(model, x, y)
    assert trace.layers == ["rnn", "head"]
    g = trace.at(0, "grad_norm")
    w = torch.cat([model.rnn.weight_ih_l0.grad.flatten(), model.rnn.weight_hh_l0.grad.flatten()])
    assert g["rnn"] == pytest.approx(w.norm().item(), rel=1e-5)
    assert trace.at(0, "signal_norm")["rnn"] > 0


def test_signal_norm_is_the_gradient_wrt_the_layer_output(tiny_batch):
    x, y = tiny_batch
    model = mlp(8, 3, depth=2, width=6)
    trace = snapshot(model, x, y)
    outputs = {}
    h = x
    for name, module in model.named_children():
        h = module(h)
        if name in ("fc1", "fc2", "out"):
            h.retain_grad()
            outputs[name] = h
    F.cross_entropy(h, y).backward()
    for name, t in outputs.items():
        assert trace.at(0, "signal_norm")[name] == pytest.approx(t.grad.norm().item(), rel=1e-5)


def test_saturation_and_dead_units_are_detected():
    sat = mlp(10, 2, depth=2, width=20, activation="sigmoid", init="normal", std=10.0)
    trace = snapshot(sat, torch.randn(64, 10) * 3, torch.randint(0, 2, (64,)))
    assert trace.at(0, "saturated")["act2"] > 0.8
    assert math.isnan(snapshot(mlp(10, 2, 2, 20), torch.randn(8, 10), torch.zeros(8, dtype=torch.long))
                      .at(0, "saturated")["act1"])  # not a saturating activation

    dead = mlp(10, 2, depth=2, width=20, activation="relu")
    with torch.no_grad():
        dead.fc2.bias[:] = 1e3     # every unit fires ...
        dead.fc2.bias[:5] = -1e3   # ... except 5 of 20, which never can
    trace = snapshot(dead, torch.randn(64, 10), torch.randint(0, 2, (64,)))
    assert trace.at(0, "dead")["act2"] == pytest.approx(5 / 20)
    leaky = mlp(10, 2, depth=2, width=20, activation="leaky_relu")
    with torch.no_grad():
        leaky.fc2.bias[:] = 1e3
        leaky.fc2.bias[:5] = -1e3
    assert snapshot(leaky, torch.randn(64, 10), torch.randint(0, 2, (64,))).at(0, "dead")["act2"] == 0


def test_activation_mean_and_std():
    model = mlp(5, 2, depth=1, width=400, activation="identity", init="normal", std=1.0)
    with torch.no_grad():
        model.fc1.bias.fill_(3.0)
    x = torch.randn(256, 5)
    trace = snapshot(model, x, torch.randint(0, 2, (256,)))
    h = model.fc1(x)
    assert trace.at(0, "act_mean")["act1"] == pytest.approx(h.mean().item(), rel=1e-4)
    assert trace.at(0, "act_std")["act1"] == pytest.approx(h.std().item(), rel=1e-4)


def test_recorder_update_ratio_and_hook_removal(tiny_batch):
    x, y = tiny_batch
    model = mlp(8, 3, depth=2, width=6)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with Recorder(model) as rec:
        assert any(m._forward_hooks for m in model.modules())
        for step in range(3):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            g = rec.record_gradients()
            expected_delta = 0.1 * g
            rec.snapshot_weights()
            opt.step()
            rec.record_updates()
            rec.end_step(step)
    assert not any(m._forward_hooks for m in model.modules()), "hooks must be removed on exit"
    trace = rec.trace()
    assert len(trace) == 3 and trace.steps.tolist() == [0, 1, 2]
    w_norm = torch.stack([model.fc1.weight.norm(), model.fc2.weight.norm(), model.out.weight.norm()])
    assert torch.allclose(trace.update_ratio[-1], expected_delta / w_norm, rtol=1e-4)
    assert trace.grad_norm.device.type == "cpu"


def test_recorder_hooks_removed_even_after_an_exception(tiny_batch):
    model = mlp(8, 3, depth=2, width=6)
    with pytest.raises(RuntimeError):
        with Recorder(model):
            raise RuntimeError("boom")
    assert not any(m._forward_hooks for m in model.modules())


def test_recorder_capture_flag_skips_statistics(tiny_batch):
    x, y = tiny_batch
    model = mlp(8, 3, depth=2, width=6)
    with Recorder(model) as rec:
        rec.capture = False
        F.cross_entropy(model(x), y).backward()
        rec.end_step(0)
    trace = rec.trace()
    assert torch.isnan(trace.act_mean).all() and torch.isnan(trace.signal_norm).all()


def test_capture_activations_and_weight_layers():
    model = mlp(4, 2, depth=3, width=5, norm="batch")
    acts = capture_activations(model, torch.randn(6, 4))
    assert list(acts) == ["act1", "act2", "act3"] and acts["act1"].shape == (6, 5)
    names = [n for n, _ in weight_layers(model)]
    assert names == ["fc1", "norm1", "fc2", "norm2", "fc3", "norm3", "out"]


def test_first_nonfinite_output_names_the_layer():
    model = mlp(4, 2, depth=3, width=5)
    assert first_nonfinite_output(model, torch.randn(3, 4)) is None
    with torch.no_grad():
        model.fc2.weight[0, 0] = float("inf")
    assert first_nonfinite_output(model, torch.randn(3, 4)) == "fc2"


@pytest.mark.parametrize("args,match", [
    (("not a model", torch.randn(2, 3), torch.zeros(2)), "nn.Module"),
    ((mlp(3, 2, 1, 4), [1, 2], torch.zeros(2)), "x must be a torch.Tensor"),
    ((mlp(3, 2, 1, 4), torch.randn(2, 3), torch.zeros(3, dtype=torch.long)), "same number of examples"),
    ((mlp(3, 2, 1, 4), torch.randn(2, 3), torch.zeros(2, 5)), "match the output's shape"),
])
def test_bad_input_is_a_clear_error(args, match):
    with pytest.raises(ValueError, match=match):
        gradient_norms(*args)


def test_model_without_parameters_is_rejected():
    with pytest.raises(ValueError, match="no layers with parameters"):
        Recorder(nn.ReLU())


def test_default_loss_and_trace_at_validation():
    assert default_loss(torch.zeros(2, 3), torch.tensor([0, 1])).item() == pytest.approx(math.log(3))
    trace = snapshot(mlp(3, 2, 1, 4), torch.randn(2, 3), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="unknown stat 'gradnorm'"):
        trace.at(0, "gradnorm")


def test_recorder_detaches_hooks_while_not_capturing(tiny_batch):
    model = mlp(8, 3, depth=2, width=6)
    hooked = lambda: sum(len(m._forward_hooks) for m in model.modules())  # noqa: E731
    with Recorder(model) as rec:
        n = hooked()
        assert n == 5  # fc1, fc2, out, act1, act2
        rec.capture = False
        assert hooked() == 0
        rec.capture = True
        assert hooked() == n
    assert hooked() == 0


def test_tiny_gradients_do_not_underflow_to_zero(digits_batch):
    """A 40-layer sigmoid net's first-layer gradient is about 1e-35: small, but not zero."""
    torch.manual_seed(0)
    x, y = digits_batch
    model = mlp(64, 10, depth=40, width=64, activation="sigmoid")
    norms = gradient_norms(model, x, y)
    assert 0 < norms["fc1"] < 1e-25
    assert norms["fc1"] == pytest.approx(model.fc1.weight.grad.double().norm().item(), rel=1e-6)
