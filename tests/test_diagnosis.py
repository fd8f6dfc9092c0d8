"""course_lib.diagnosis: the course's own models read as the lessons say, the evidence behind each
verdict, recurrent layers through time, and a model left as it was. Real architectures and
planted defects: tests/test_diagnose_calibration.py; practitioners' situations:
tests/test_diagnose_cases.py."""

import math

import pytest
import torch
from torch import nn

import course_lib
from course_lib import seed_everything
from course_lib.core import one_thread
from course_lib.data import adding_problem
from course_lib.diagnosis import KINDS, LESSONS, NOTE_KINDS, Finding, Report, diagnose
from course_lib.diagnosis_rules import (
    SENSITIVITY_VANISHING, SIGNAL_VANISHING, SPREAD_GROWTH, forward_trend, trend,
)
from course_lib.models import mlp


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


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


def test_trend_is_the_fitted_factor_raised_to_the_steps_it_spans():
    total, factor, n = trend([1e-4, 1e-3, 1e-2, 1e-1, 1.0])
    assert factor == pytest.approx(0.1) and n == 5 and total == pytest.approx(1e-4)
    total, factor, n = trend([float("nan"), 0.0, 2.0, 4.0])  # NaN and 0 are left out
    assert n == 2 and factor == pytest.approx(0.5)
    assert math.isnan(trend([1.0])[0])
    growth, n = forward_trend([1.0, 2.0, 4.0, 8.0])
    assert growth == pytest.approx(8.0) and n == 4


@pytest.mark.parametrize("kw", [
    dict(depth=10, width=64, activation="relu", init="kaiming_normal"),
    dict(depth=10, width=64, activation="tanh", init="xavier_normal"),
    dict(depth=10, width=64, activation="sigmoid", norm="batch"),
    dict(depth=10, width=64, activation="relu", norm="batch"),
    dict(depth=10, width=64, activation="relu", residual=True, residual_scale=10 ** -0.5),
], ids=["relu-he", "tanh-xavier", "sigmoid-batchnorm", "relu-batchnorm", "residual"])
def test_the_course_s_healthy_mlps_are_healthy(batch, kw):
    report = diagnose(build(**kw), *batch)
    assert report.healthy, str(report)
    assert report.findings == [] and report.kinds == [] and report.notes == []


def test_deep_sigmoid_default_init_vanishes_with_the_evidence(batch):
    report = diagnose(build(depth=10, width=64, activation="sigmoid"), *batch)
    assert report.kinds == ["vanishing"]
    f = report["vanishing"]
    assert f.evidence["signal_trend"] < SIGNAL_VANISHING and f.evidence["signal_factor"] < 0.3
    assert f.layers[0] == "fc1"
    assert {fix.lesson for fix in f.fixes} >= {"06", "07", "08", "09"}


@pytest.mark.parametrize("kw", [
    dict(depth=30, width=64, activation="relu", init="xavier_normal"),
    dict(depth=30, width=64, activation="tanh", init="normal", std=math.sqrt(0.5 / 64)),
], ids=["relu-xavier", "tanh-small-variance"])
def test_the_traps_vanish_although_the_first_over_last_ratio_reads_about_one(batch, kw):
    report = diagnose(build(**kw), *batch)
    assert 0.3 < report.grad_norm.first_over_last() < 3, "the easy metric should read about 1"
    f = report["vanishing"]
    assert report.kinds == ["vanishing"]
    assert f.evidence["signal_trend"] < SIGNAL_VANISHING
    assert f.evidence["spread_trend"] < 1e-3
    assert f.evidence["median_sensitivity"] < SENSITIVITY_VANISHING


def test_huge_init_explodes_and_suggests_clipping_only_beside_the_cause(batch):
    report = diagnose(build(depth=10, width=64, activation="relu", init="normal", std=1.0), *batch)
    assert report.kinds == ["exploding"]
    f = report["exploding"]
    assert f.evidence["signal_trend"] > 1e3 and f.evidence["spread_trend"] > SPREAD_GROWTH
    lessons = [fix.lesson for fix in f.fixes]
    assert "07" in lessons and lessons[-1] == "10"


def test_negative_biases_kill_relu_units_and_block_the_gradient(batch):
    model = build(depth=5, width=64, activation="relu", init="kaiming_normal")
    with torch.no_grad():
        for name in ("fc1", "fc2", "fc3", "fc4", "fc5"):
            getattr(model, name).bias.fill_(-5.0)
    report = diagnose(model, *batch)
    assert report.kinds == ["vanishing", "dead_units"]
    assert report["dead_units"].evidence["max_dead"] == 1.0
    assert "act1" in report["dead_units"].layers
    assert report.status["fc1"] == "blocked" and report.grad_norm["fc1"] == 0


def test_sigmoid_with_huge_weights_saturates(batch):
    report = diagnose(build(depth=4, width=64, activation="sigmoid", init="normal", std=1.0),
                      *batch)
    assert "saturation" in report.kinds
    assert report["saturation"].evidence["max_saturated"] > 0.25
    assert "02" in {fix.lesson for fix in report["saturation"].fixes}


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
    assert report["vanishing"].evidence["temporal_trend"] < 1e-10
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
    assert repr(report) == ("Report(vanishing; 11 layers, 10 activation sites, "
                            f"loss {report.loss:.4g})")
    assert set(report.kinds) <= set(KINDS) and set(report.note_kinds) <= set(NOTE_KINDS)
    assert all(fix.lesson in LESSONS for f in report.findings for fix in f.fixes)
    assert "vanishing" in report and "exploding" not in report
    with pytest.raises(KeyError, match="exploding"):
        report["exploding"]


def test_model_is_left_as_it_was(batch):
    model = build(depth=3, width=8, activation="relu", norm="batch").eval()
    before = [p.detach().clone() for p in model.parameters()]
    buffers = [b.detach().clone() for b in model.buffers()]
    x = batch[0].clone()
    diagnose(model, x, batch[1])
    assert not model.training
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(buffers, model.buffers()))
    assert torch.equal(x, batch[0]) and not batch[0].requires_grad
