import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from course_lib.instrument import (Recorder, call_model, capture_activations, default_loss,
                                   first_nonfinite_output, grad_profile, gradient_flow_data,
                                   gradient_norms, output_tensor, snapshot)
from course_lib.models import mlp
from course_lib.records import Profile


def manual_weight_grad_norms(model, x, y, loss_fn=F.cross_entropy):
    model.zero_grad()
    loss_fn(model(x), y).backward()
    return {n: m.weight.grad.norm().item() for n, m in model.named_modules()
            if isinstance(m, nn.Linear)}


def test_gradient_norms_is_a_profile_that_matches_manual_and_is_ordered(tiny_batch):
    x, y = tiny_batch
    model = mlp(8, 3, depth=4, width=16, activation="tanh")
    norms = gradient_norms(model, x, y)
    manual = manual_weight_grad_norms(model, x, y)
    assert isinstance(norms, Profile) and norms.stat == "grad_norm"
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
    assert gradient_norms(mlp(64, 10, 10, 64, "sigmoid"), x, y).first_over_last() < 1e-5


def test_works_on_torchvision_resnet_and_conv_layers():
    from torchvision.models import resnet18

    model = resnet18(weights=None, num_classes=5)
    norms = gradient_norms(model, torch.randn(2, 3, 32, 32), torch.tensor([0, 3]))
    assert list(norms)[0] == "conv1" and list(norms)[-1] == "fc"
    assert "bn1" not in norms and "layer1.0.conv1" in norms
    assert all(math.isfinite(v) and v > 0 for v in norms.values())
    every = gradient_norms(model, torch.randn(2, 3, 32, 32), torch.tensor([0, 3]), layers="all")
    assert "bn1" in every and len(every) > len(norms)


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
    g = trace.profile("grad_norm")
    w = torch.cat([model.rnn.weight_ih_l0.grad.flatten(), model.rnn.weight_hh_l0.grad.flatten()])
    assert g["rnn"] == pytest.approx(w.norm().item(), rel=1e-5)
    assert trace.profile("signal_norm")["rnn"] > 0


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
        assert trace.profile("signal_norm")[name] == pytest.approx(t.grad.norm().item(), rel=1e-5)
    assert trace.loss[0] == pytest.approx(F.cross_entropy(h, y).item(), rel=1e-6)


def test_a_layer_called_twice_counts_both_calls():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.act = nn.ReLU()
            self.out = nn.Linear(4, 2)

        def forward(self, x):
            return self.out(self.act(self.fc(self.act(self.fc(x)))))

    model = Twice()
    x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    trace = snapshot(model, x, y)
    h1 = model.fc(x)
    a1 = torch.relu(h1)
    h2 = model.fc(a1)
    h1.retain_grad(); h2.retain_grad()
    F.cross_entropy(model.out(torch.relu(h2)), y).backward()
    both = math.sqrt(h1.grad.norm().item() ** 2 + h2.grad.norm().item() ** 2)
    assert trace.profile("signal_norm")["fc"] == pytest.approx(both, rel=1e-5)
    pooled = torch.cat([a1, torch.relu(h2)]).detach()
    assert trace.profile("act_mean")["act"] == pytest.approx(pooled.mean().item(), rel=1e-5)


def test_saturation_and_dead_units_are_detected():
    sat = mlp(10, 2, depth=2, width=20, activation="sigmoid", init="normal", std=10.0)
    trace = snapshot(sat, torch.randn(64, 10) * 3, torch.randint(0, 2, (64,)))
    assert trace.profile("saturated")["act2"] > 0.8
    relu = snapshot(mlp(10, 2, 2, 20), torch.randn(8, 10), torch.zeros(8, dtype=torch.long))
    assert math.isnan(relu.profile("saturated")["act1"])  # not a saturating activation

    dead = mlp(10, 2, depth=2, width=20, activation="relu")
    with torch.no_grad():
        dead.fc2.bias[:] = 1e3     # every unit fires ...
        dead.fc2.bias[:5] = -1e3   # ... except 5 of 20, which never can
    trace = snapshot(dead, torch.randn(64, 10), torch.randint(0, 2, (64,)))
    assert trace.profile("dead")["act2"] == pytest.approx(5 / 20)
    leaky = mlp(10, 2, depth=2, width=20, activation="leaky_relu")
    with torch.no_grad():
        leaky.fc2.bias[:] = 1e3
        leaky.fc2.bias[:5] = -1e3
    assert snapshot(leaky, torch.randn(64, 10),
                    torch.randint(0, 2, (64,))).profile("dead")["act2"] == 0


def test_activation_mean_std_and_spread():
    model = mlp(5, 2, depth=1, width=400, activation="identity", init="normal", std=1.0)
    with torch.no_grad():
        model.fc1.bias.uniform_(-3.0, 3.0)   # units differ by their bias ...
    x = torch.randn(256, 5) * 1e-3            # ... but hardly by the input
    trace = snapshot(model, x, torch.randint(0, 2, (256,)))
    h = model.fc1(x)
    assert trace.profile("act_mean")["act1"] == pytest.approx(h.mean().item(), rel=1e-4)
    assert trace.profile("act_std")["act1"] == pytest.approx(h.std().item(), rel=1e-4)
    spread = h.var(dim=0).mean().sqrt().item()
    assert trace.profile("act_spread")["act1"] == pytest.approx(spread, rel=1e-4)
    assert spread < 1e-2 < 1 < h.std().item(), "std sees the biases; the spread sees the signal"


def test_functional_activations_are_seen_and_named_after_their_module():
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2, self.out = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 2)
            self.act = nn.Sigmoid()

        def forward(self, x):
            return self.out(torch.tanh(self.fc2(self.act(self.fc1(x)))))

    model = Functional()
    trace = snapshot(model, torch.randn(16, 4), torch.randint(0, 2, (16,)))
    assert trace.act_layers == ["act", "tanh"]  # nn.Sigmoid's own torch.sigmoid not twice
    acts = capture_activations(model, torch.randn(16, 4))
    assert list(acts) == ["act", "tanh"]
    without = snapshot(model, torch.randn(16, 4), torch.randint(0, 2, (16,)), functional=False)
    assert without.act_layers == ["act"]


def test_recorder_records_every_nth_step_with_updates_and_removes_hooks(tiny_batch):
    x, y = tiny_batch
    model = mlp(8, 3, depth=2, width=6)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    hooked = lambda: sum(len(m._forward_hooks) for m in model.modules())  # noqa: E731
    with Recorder(model, every=2) as rec:
        for step in range(5):
            with rec.step(step) as recording:
                assert recording == (step % 2 == 0)
                assert (hooked() > 0) == recording, "hooks live only inside recorded steps"
                opt.zero_grad()
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                rec.record_gradients(loss)
                g = torch.stack([model.fc1.weight.grad.norm(), model.fc2.weight.grad.norm(),
                                 model.out.weight.grad.norm()]).double()
                rec.before_update()
                opt.step()
                rec.after_update()
        assert hooked() == 0
    trace = rec.trace()
    assert trace.steps.tolist() == [0, 2, 4]
    w = np.array([model.fc1.weight.norm().item(), model.fc2.weight.norm().item(),
                  model.out.weight.norm().item()])
    assert np.allclose(trace.stats["update_ratio"][-1], 0.1 * g.numpy() / w, rtol=1e-4)
    assert np.isfinite(trace.loss).all() and trace.profile("grad_norm", step=2).layers == \
        ["fc1", "fc2", "out"]


def test_recorder_hooks_removed_even_after_an_exception(tiny_batch):
    model = mlp(8, 3, depth=2, width=6)
    with pytest.raises(RuntimeError):
        with Recorder(model) as rec, rec.step(0):
            model(tiny_batch[0])
            raise RuntimeError("boom")
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    assert len(rec.trace()) == 0


def test_frozen_and_unused_parameters_read_nan_not_zero(tiny_batch):
    x, y = tiny_batch
    model = mlp(8, 3, depth=3, width=6)
    model.fc1.weight.requires_grad_(False)
    trace = snapshot(model, x, y)
    assert math.isnan(trace.profile("grad_norm")["fc1"])
    assert trace.profile("grad_norm")["fc2"] > 0


def test_multihead_attention_output_projection_is_part_of_its_layer():
    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Linear(4, 8)
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            h = self.embed(x)
            return self.head(self.attn(h, h, h)[0].mean(1))

    model = Attn()
    x, y = torch.randn(5, 6, 4), torch.randint(0, 3, (5,))
    g = gradient_norms(model, x, y)
    assert g.layers == ["embed", "attn", "head"], "out_proj is used by attn, not called on its own"
    expected = math.sqrt(model.attn.in_proj_weight.grad.norm() ** 2
                         + model.attn.out_proj.weight.grad.norm() ** 2)
    assert g["attn"] == pytest.approx(expected, rel=1e-5)


def test_inputs_and_outputs_real_models_use():
    class DictIn(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, pixels, scale=1.0):
            return {"hidden": pixels, "logits": self.fc(pixels) * scale}

    model = DictIn()
    x, y = torch.randn(6, 4), torch.randint(0, 3, (6,))
    a = gradient_norms(model, {"pixels": x, "scale": 2.0}, y)
    b = gradient_norms(model, (x, 2.0), y)
    assert a["fc"] == pytest.approx(b["fc"])
    c = gradient_norms(model, {"pixels": x}, y, loss_fn=lambda out, t: F.cross_entropy(out["logits"], t))
    model.zero_grad()
    F.cross_entropy(model.fc(x), y).backward()
    assert c["fc"] == pytest.approx(model.fc.weight.grad.norm().item(), rel=1e-5)
    assert output_tensor((None, torch.ones(1))).shape == (1,)
    with pytest.raises(ValueError, match="holds no tensor"):
        output_tensor({"text": "no tensors"})
    assert call_model(nn.Identity(), torch.ones(2)).shape == (2,)


def test_capture_activations_and_first_nonfinite_output():
    model = mlp(4, 2, depth=3, width=5, norm="batch")
    acts = capture_activations(model, torch.randn(6, 4))
    assert list(acts) == ["act1", "act2", "act3"] and acts["act1"].shape == (6, 5)
    model = mlp(4, 2, depth=3, width=5)
    assert first_nonfinite_output(model, torch.randn(3, 4)) is None
    with torch.no_grad():
        model.fc2.weight[0, 0] = float("inf")
    assert first_nonfinite_output(model, torch.randn(3, 4)) == "fc2"


@pytest.mark.parametrize("args,match", [
    (("not a model", torch.randn(2, 3), torch.zeros(2)), "nn.Module"),
    ((mlp(3, 2, 1, 4), "text", torch.zeros(2)), "x must be a tensor"),
    ((mlp(3, 2, 1, 4), torch.randn(2, 3), torch.zeros(3, dtype=torch.long)), "same number of examples"),
    ((mlp(3, 2, 1, 4), torch.randn(2, 3), torch.zeros(2, 5)), "match the output's shape"),
])
def test_bad_input_is_a_clear_error(args, match):
    with pytest.raises(ValueError, match=match):
        gradient_norms(*args)


def test_bad_loss_and_bad_layer_set(tiny_batch):
    x, y = tiny_batch
    model = mlp(8, 3, 1, 4)
    with pytest.raises(ValueError, match="scalar"):
        snapshot(model, x, y, loss_fn=lambda o, t: F.cross_entropy(o, t, reduction="none"))
    with pytest.raises(ValueError, match="valid: 'main', 'all'"):
        gradient_norms(model, x, y, layers="weights")
    with pytest.raises(ValueError, match="no main-path layers"):
        Recorder(nn.Sequential(nn.ReLU(), nn.LayerNorm(3)))


def test_default_loss_and_trace_validation():
    assert default_loss(torch.zeros(2, 3), torch.tensor([0, 1])).item() == pytest.approx(math.log(3))
    lm = default_loss(torch.zeros(2, 5, 7), torch.zeros(2, 5, dtype=torch.long))
    assert lm.item() == pytest.approx(math.log(7))
    trace = snapshot(mlp(3, 2, 1, 4), torch.randn(2, 3), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="unknown stat 'gradnorm'"):
        trace.profile("gradnorm")
    with pytest.raises(ValueError, match="step 5 was not recorded"):
        trace.profile("grad_norm", step=5)


def test_tiny_gradients_do_not_underflow_to_zero(digits_batch):
    """A 40-layer sigmoid net's first-layer gradient is about 1e-35: small, but not zero."""
    torch.manual_seed(0)
    x, y = digits_batch
    model = mlp(64, 10, depth=40, width=64, activation="sigmoid")
    norms = gradient_norms(model, x, y)
    assert 0 < norms["fc1"] < 1e-25
    assert norms["fc1"] == pytest.approx(model.fc1.weight.grad.double().norm().item(), rel=1e-6)


def test_gradient_flow_data_deep_sigmoid_loses_the_signal_forward_and_backward():
    d = gradient_flow_data(depth=10, width=64, activation="sigmoid", init="default")
    assert d["grad_norm"].layers == [f"fc{i}" for i in range(1, 11)] + ["out"]
    assert d["first_over_last"] < 1e-6
    spread, std = d["act_spread"].array, d["act_std"].array
    assert spread[-1] / spread[0] < 1e-5, "the input's imprint fades layer by layer"
    assert 0.3 < std[-1] / std[0] < 3, "while the std over all entries stays flat"
    assert math.isclose(d["loss"], math.log(10), rel_tol=0.05)
    healthy = gradient_flow_data(depth=10, width=64, activation="relu", init="kaiming_normal")
    assert 0.1 < healthy["first_over_last"] < 10


def test_grad_profile_reads_the_gradients_in_place_or_a_copy(tiny_batch):
    x, y = tiny_batch
    model = mlp(8, 3, depth=2, width=6, norm="layer")
    ref = gradient_norms(model, x, y)
    here = grad_profile(model)
    assert here.layers == ["fc1", "fc2", "out"] and np.allclose(here.array, ref.array, rtol=1e-6)
    halved = {n: p.grad / 2 for n, p in model.named_parameters()}
    assert np.allclose(grad_profile(model, halved).array, ref.array / 2, rtol=1e-6)
    with pytest.raises(ValueError, match="unknown parameter name"):
        grad_profile(model, {"fc9.weight": torch.ones(1)})
