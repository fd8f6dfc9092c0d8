"""course_lib.diagnosis: healthy models read healthy, planted defects are found, bad input fails."""

import math

import pytest
import torch
import torchvision
from torch import nn

import course_lib
from course_lib import seed_everything
from course_lib.data import adding_problem
from course_lib.diagnosis import KINDS, LESSONS, Finding, Report, diagnose
from course_lib.models import mlp


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.rand(64, 16, generator=g), torch.randint(0, 4, (64,), generator=g)


def build(**kw):
    seed_everything(0)
    return mlp(16, 4, **kw)


class Seq(nn.Module):
    """A learner-style recurrent model: a recurrent layer, then a head on the last step."""

    def __init__(self, cell, hidden=16):
        super().__init__()
        self.rnn = cell(2, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


@pytest.mark.parametrize("kw", [
    dict(depth=10, width=64, activation="relu", init="kaiming_normal"),
    dict(depth=10, width=64, activation="tanh", init="xavier_normal"),
    dict(depth=10, width=64, activation="sigmoid", norm="batch"),
    dict(depth=10, width=64, activation="relu", norm="batch"),
], ids=["relu-he", "tanh-xavier", "sigmoid-batchnorm", "relu-batchnorm"])
def test_healthy_mlps_are_healthy(batch, kw):
    report = diagnose(build(**kw), *batch)
    assert report.healthy, str(report)
    assert report.findings == [] and report.kinds == []


def test_deep_sigmoid_default_init_vanishes(batch):
    report = diagnose(build(depth=10, width=64, activation="sigmoid"), *batch)
    assert "vanishing" in report.kinds
    f = report["vanishing"]
    assert f.evidence["signal_decay"] < 1e-6
    assert "fc1" in f.layers
    assert {fix.lesson for fix in f.fixes} >= {"06", "07", "08", "09"}


def test_trap_relu_xavier_vanishes_although_the_gradient_ratio_is_about_one(batch):
    report = diagnose(build(depth=30, width=64, activation="relu", init="xavier_normal"), *batch)
    f = report["vanishing"]
    assert 0.1 < f.evidence["first_over_last_grad"] < 10, "the easy metric should read about 1"
    assert f.evidence["signal_decay"] < 1e-3
    assert f.evidence["min_grad_to_weight"] < 1e-4


def test_trap_tanh_small_variance_vanishes(batch):
    model = build(depth=30, width=64, activation="tanh", init="normal", std=math.sqrt(0.5 / 64))
    report = diagnose(model, *batch)
    assert report.kinds == ["vanishing"]
    assert 0.1 < report["vanishing"].evidence["first_over_last_grad"] < 10


def test_huge_init_explodes(batch):
    report = diagnose(build(depth=10, width=64, activation="relu", init="normal", std=1.0), *batch)
    assert "exploding" in report.kinds
    assert report["exploding"].evidence["signal_growth"] > 1e3
    assert "10" in {fix.lesson for fix in report["exploding"].fixes}


def test_nonfinite_loss_is_exploding(batch):
    model = build(depth=3, width=8, activation="relu")
    with torch.no_grad():
        model.fc1.weight[0, 0] = float("inf")
    assert "exploding" in diagnose(model, *batch).kinds


def test_negative_biases_kill_relu_units(batch):
    model = build(depth=5, width=64, activation="relu", init="kaiming_normal")
    with torch.no_grad():
        for name in ("fc1", "fc2", "fc3", "fc4", "fc5"):
            getattr(model, name).bias.fill_(-5.0)
    report = diagnose(model, *batch)
    assert "dead_units" in report.kinds
    assert report["dead_units"].evidence["max_dead"] == 1.0
    assert "act1" in report["dead_units"].layers


def test_sigmoid_with_huge_weights_saturates(batch):
    report = diagnose(build(depth=4, width=64, activation="sigmoid", init="normal", std=1.0), *batch)
    assert "saturation" in report.kinds
    assert report["saturation"].evidence["max_saturated"] > 0.25
    assert "02" in {fix.lesson for fix in report["saturation"].fixes}


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v3_small"])
def test_torchvision_models_at_random_init_are_healthy(arch):
    seed_everything(0)
    model = getattr(torchvision.models, arch)(weights=None, num_classes=4)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 4, (8,))
    report = diagnose(model, x, y)
    assert report.healthy, str(report)
    assert len(report.layers) > 20


def test_recurrent_models_short_healthy_long_vanishing():
    x, y = adding_problem(32, 8, seed=0)
    for cell in (nn.RNN, nn.LSTM, nn.GRU):
        seed_everything(0)
        report = diagnose(Seq(cell), x, y)
        assert report.healthy, f"{cell.__name__}: {report}"
        assert len(report.temporal["rnn"]) == 8
    x, y = adding_problem(32, 100, seed=0)
    seed_everything(0)
    report = diagnose(Seq(nn.RNN), x, y)
    assert report.kinds == ["vanishing"]
    assert report["vanishing"].evidence["temporal_decay"] < 1e-4
    assert "12" in {fix.lesson for fix in report["vanishing"].fixes}


def test_time_first_recurrent_layer_and_custom_loss():
    class TimeFirst(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.GRU(3, 8)
            self.head = nn.Linear(8, 2)

        def forward(self, x):  # x: (batch, T, 3) -> (T, batch, 3) for the GRU
            out, _ = self.rnn(x.transpose(0, 1))
            return self.head(out[-1])

    seed_everything(0)
    x, y = torch.randn(16, 6, 3), torch.randint(0, 2, (16,))
    report = diagnose(TimeFirst(), x, y, loss_fn=nn.functional.cross_entropy)
    assert len(report.temporal["rnn"]) == 6
    assert report.healthy


def test_top_level_wrapper_and_rendering(batch):
    report = course_lib.diagnose(build(depth=10, width=32, activation="sigmoid"), *batch)
    assert isinstance(report, Report) and isinstance(report.findings[0], Finding)
    text, page = str(report), report._repr_html_()
    assert "vanishing" in text and "fc1" in text and "lesson" in text
    assert "<table>" in page and "vanishing" in page
    assert set(report.kinds) <= set(KINDS)
    assert all(fix.lesson in LESSONS for f in report.findings for fix in f.fixes)
    with pytest.raises(KeyError, match="exploding"):
        report["exploding"]


def test_model_is_left_as_it_was(batch):
    model = build(depth=3, width=8, activation="relu", norm="batch").eval()
    before = [p.detach().clone() for p in model.parameters()]
    x = batch[0].clone()
    diagnose(model, x, batch[1])
    assert not model.training
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert torch.equal(x, batch[0]) and not batch[0].requires_grad


def test_bad_input(batch):
    x, y = batch
    with pytest.raises(ValueError, match="nn.Module"):
        diagnose("model", x, y)
    with pytest.raises(ValueError, match="torch.Tensor"):
        diagnose(build(depth=2, width=8), x.numpy(), y)
    with pytest.raises(ValueError, match="same number of examples"):
        diagnose(build(depth=2, width=8), x, y[:3])
    with pytest.raises(ValueError, match="callable"):
        diagnose(build(depth=2, width=8), x, y, loss_fn="mse")
    with pytest.raises(ValueError, match="no layers with parameters"):
        diagnose(nn.Sequential(nn.ReLU()), x, y)
