import pytest
import torch
from matplotlib.figure import Figure

from course_lib import plots
from course_lib.data import make_loader
from course_lib.display import get_alt
from course_lib.instrument import capture_activations, gradient_norms, snapshot
from course_lib.models import mlp
from course_lib.train import fit


@pytest.fixture
def history():
    x, y = torch.randn(64, 6), torch.randint(0, 3, (64,))
    return fit(mlp(6, 3, 3, 8), make_loader(x, y, 16), 2, progress=False, record_every=1,
               val_loader=make_loader(x, y, 64, shuffle=False))


def labelled(ax):
    return ax.get_title() and ax.get_xlabel() and ax.get_ylabel()


def test_gradient_flow_single_and_several_runs(tiny_batch):
    x, y = tiny_batch
    a = gradient_norms(mlp(8, 3, 4, 16, "sigmoid"), x, y)
    b = snapshot(mlp(8, 3, 4, 16, "relu"), x, y).profile("grad_norm")
    fig = plots.gradient_flow(a)
    ax = fig.axes[0]
    assert isinstance(fig, Figure) and ax.get_yscale() == "log" and labelled(ax)
    assert [t.get_text() for t in ax.get_xticklabels()] == list(a)
    assert "first/last" in get_alt(fig) and "log scale" in get_alt(fig)
    assert a.plot() is not None
    fig = plots.gradient_flow({"sigmoid": a, "relu": b}, title="two runs")
    assert len(fig.axes[0].lines) == 2 and fig.axes[0].get_title() == "two runs"
    fig = plots.gradient_flow({"deep": a, "shallow": gradient_norms(mlp(8, 3, 1, 4), x, y)})
    assert "index" in fig.axes[0].get_xlabel()


def test_grad_heatmap_and_profile(history):
    fig = plots.grad_heatmap(history.trace)
    assert isinstance(fig, Figure) and labelled(fig.axes[0]) and get_alt(fig)
    assert fig.axes[0].images[0].get_array().shape == (4, len(history.trace))
    fig = plots.profile_over_steps(history.trace, ["fc1", "out"])
    assert len(fig.axes[0].lines) == 2 and fig.axes[0].get_yscale() == "log"


def test_activation_histograms():
    model = mlp(6, 3, 3, 8, "tanh")
    fig = plots.activation_histograms(capture_activations(model, torch.randn(50, 6)))
    assert len(fig.axes[0].lines) == 3 and labelled(fig.axes[0])


def test_training_curves(history):
    fig = plots.training_curves({"a": history, "b": history}, title="t")
    assert len(fig.axes) == 2 and all(labelled(ax) for ax in fig.axes)
    assert "a: final training loss" in get_alt(fig)
    assert len(fig.axes[0].lines) == 4  # train and validation for each run
    assert isinstance(plots.training_curves(history), Figure)


@pytest.mark.parametrize("call,match", [
    (lambda: plots.gradient_flow({}), "empty"),
    (lambda: plots.gradient_flow({"a": 1.0}, stat="bogus"), "unknown stat 'bogus'"),
    (lambda: plots.gradient_flow({"run": [1, 2]}), "a run must be a Profile"),
    (lambda: plots.grad_heatmap({"a": 1}), "Trace"),
    (lambda: plots.activation_histograms({}), "empty"),
    (lambda: plots.training_curves(42), "History"),
])
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_heatmap_bad_stat_and_unknown_layer(history):
    with pytest.raises(ValueError, match="valid"):
        plots.grad_heatmap(history.trace, stat="act_mean")
    with pytest.raises(ValueError, match="unknown stat"):
        plots.profile_over_steps(history.trace, ["fc1"], stat="bogus")
    with pytest.raises(ValueError, match="unknown layer"):
        plots.profile_over_steps(history.trace, ["fc9"])


def test_every_plot_draws_into_a_given_axis_and_describes_its_panel(history, tiny_batch):
    import matplotlib.pyplot as plt

    x, y = tiny_batch
    fig, axes = plt.subplots(1, 4)
    plots.gradient_flow(gradient_norms(mlp(8, 3, 2, 4), x, y), ax=axes[0])
    plots.profile_over_steps(history.trace, ax=axes[1])
    plots.grad_heatmap(history.trace, ax=axes[2])
    plots.activation_histograms(capture_activations(mlp(8, 3, 2, 4), x), ax=axes[3])
    assert all(ax.has_data() for ax in axes)
    alt = get_alt(fig)
    assert "per layer" in alt and "heat map" in alt and "histograms" in alt


def test_log_axes_leave_gaps_for_zero_and_non_finite_values():
    import math

    assert list(plots.positive([1.0, 0.0, -1.0, math.inf, 2.0])[[0, 4]]) == [1.0, 2.0]
    assert all(math.isnan(v) for v in plots.positive([0.0, -1.0, math.inf, math.nan]))
