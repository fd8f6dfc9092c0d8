"""The explorers, without a browser: their compute functions (instrument, models, recurrent), their
drawings (plots) and the widgets (widgets)."""

import base64
import math
import time

import ipywidgets
import pytest
import torch
from matplotlib.figure import Figure

from course_lib import widgets as W
from course_lib.instrument import gradient_flow_data, gradient_norms
from course_lib.models import ACTIVATIONS, PYTORCH_DEFAULT_GAIN, REFERENCE_GAINS, init_data, mlp
from course_lib.plots import draw_gradient_flow, draw_init, draw_recurrent
from course_lib.recurrent import recurrent_data

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def cpu_seconds(fn, repeat=3):
    """Best-of-``repeat`` CPU time of ``fn()`` (the machine may be shared: CPU, not wall)."""
    best = math.inf
    for _ in range(repeat):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best


# ---------------------------------------------------------------- gradient flow

def test_gradient_flow_data_shape_and_claims():
    d = gradient_flow_data(depth=10, width=64, activation="sigmoid", init="default")
    assert d["grad_norm"].layers == [f"fc{i}" for i in range(1, 11)] + ["out"]
    assert len(d["grad_norm"]) == 11 and len(d["act_std"]) == 10 and len(d["act_spread"]) == 10
    assert d["first_over_last"] < 1e-6, "deep sigmoid with default init should vanish"
    assert math.isclose(d["loss"], math.log(10), rel_tol=0.05), "loss at init is about ln 10"
    healthy = gradient_flow_data(depth=10, width=64, activation="relu", init="kaiming_normal")
    assert 0.1 < healthy["first_over_last"] < 10
    assert d["params"]["norm"] is None and healthy["params"]["init"] == "kaiming_normal"


def test_gradient_flow_data_matches_instrument_on_the_same_model():
    d = gradient_flow_data(depth=4, width=32, activation="tanh", init="xavier_normal", seed=3,
                             batch_size=64)
    from course_lib.data import load_digits

    x, y = load_digits(train=True)
    torch.manual_seed(3)
    model = mlp(64, 10, 4, 32, activation="tanh", init="xavier_normal")
    ref = gradient_norms(model, x[:64], y[:64])
    assert d["grad_norm"].layers == ref.layers
    assert list(d["grad_norm"].values()) == pytest.approx(list(ref.values()), rel=1e-4)


@pytest.mark.parametrize("norm,residual", [("batch", False), ("layer", True), ("none", True)])
def test_gradient_flow_data_norm_and_residual(norm, residual):
    d = gradient_flow_data(depth=6, width=32, activation="relu", init="kaiming_normal",
                             norm=norm, residual=residual)
    # the main-path layers (nn.Linear here), whatever the normalization or block structure
    assert len(d["grad_norm"]) == 7 and all(g > 0 for g in d["grad_norm"].values())
    assert (d["grad_norm"].layers[1] == "block2.fc") == residual


def test_gradient_flow_data_is_deterministic_and_leaves_global_state_alone():
    threads = torch.get_num_threads()
    state = torch.get_rng_state()
    a = gradient_flow_data(depth=5, width=16, seed=1)
    assert torch.equal(state, torch.get_rng_state()), "the global RNG must not move"
    assert torch.get_num_threads() == threads, "the thread setting must be restored"
    assert dict(a["grad_norm"]) == dict(gradient_flow_data(depth=5, width=16, seed=1)["grad_norm"])
    assert dict(a["grad_norm"]) != dict(gradient_flow_data(depth=5, width=16, seed=2)["grad_norm"])


def test_gradient_flow_compute_is_fast_at_depth_50():
    gradient_flow_data(depth=2, width=8)  # warm-up: imports, data
    seconds = cpu_seconds(lambda: gradient_flow_data(depth=50, width=256, activation="tanh",
                                                       norm="layer", residual=True))
    # measured about 0.1-0.3 s of CPU on the 2-core course machine; the bound is generous
    assert seconds < 2.0, f"gradient_flow_data at depth 50 took {seconds:.2f} s of CPU"


@pytest.mark.parametrize("kwargs,match", [
    (dict(activation="sigmoidd"), r"unknown activation 'sigmoidd'; valid: .*'relu'"),
    (dict(init="normal"), r"unknown init 'normal'; valid: .*'kaiming_normal'"),
    (dict(norm="group"), r"unknown norm 'group'; valid: .*'batch'"),
    (dict(depth=0), r"depth must be an integer >= 1"),
    (dict(width=2.5), r"width must be an integer"),
    (dict(residual="yes"), r"residual must be True or False"),
    (dict(seed=-1), r"seed must be an integer >= 0"),
])
def test_gradient_flow_data_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        gradient_flow_data(**kwargs)


def test_gradient_flow_drawing():
    fig = draw_gradient_flow(gradient_flow_data(depth=8, width=32))
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    for ax in fig.axes:
        assert ax.get_yscale() == "log" and ax.get_title() and ax.get_xlabel() and ax.get_ylabel()
    assert len(fig.axes[1].lines) == 2, "activation std and signal spread"
    data = gradient_flow_data(depth=3, width=8)
    line = draw_gradient_flow(data).axes[0].lines[0]
    assert list(line.get_ydata()) == pytest.approx(list(data["grad_norm"].values()))


def test_gradient_flow_data_tiny_norms_do_not_underflow():
    # sigmoid, default init: a factor of about 0.14 per layer, so about 1e-26 at depth 30; a
    # float32 sum of squares would turn that into exactly 0
    d = gradient_flow_data(depth=30, width=128)
    assert all(g > 0 for g in d["grad_norm"].values())
    assert 1e-29 < d["first_over_last"] < 1e-23
    per_layer = d["first_over_last"] ** (1 / 30)
    assert per_layer == pytest.approx(0.14, rel=0.2)


def test_gradient_flow_drawing_marks_underflow():
    from course_lib.records import Profile

    data = gradient_flow_data(depth=3, width=8)
    grads = dict(data["grad_norm"])
    grads["fc1"] = 0.0  # what a gradient below float32's range looks like
    data["grad_norm"], data["first_over_last"] = Profile(grads, "grad_norm"), 0.0
    fig = draw_gradient_flow(data)
    texts = " ".join(t.get_text() for t in fig.axes[0].texts) + fig.axes[0].get_title()
    assert "underflow" in texts and "float32" in texts


# ---------------------------------------------------------------- initialization scale

def test_init_data_claims():
    he = init_data("relu", gain=math.sqrt(2), depth=30, width=128)
    assert 0.3 < he["act_std"][-1] < 3, "He gain keeps ReLU activations at scale"
    lecun = init_data("relu", gain=1.0, depth=30, width=128)
    assert lecun["act_std"][-1] < 1e-3, "gain 1 halves the ReLU signal's variance per layer"
    big = init_data("relu", gain=2.0, depth=30, width=128)
    assert big["act_std"][-1] > 1e3
    assert he["reference_gain"] == pytest.approx(math.sqrt(2))
    assert he["reference_std"] == he["act_std"], "gain √2 is the reference gain itself"
    assert len(he["layer"]) == 30 and len(he["last"]) == 4096


def test_init_data_first_layer_matches_theory():
    # identity activation: the std of layer 1 is gain * std(x) = gain (x ~ N(0, 1))
    for gain in (0.5, 1.0, 2.0):
        d = init_data("identity", gain=gain, depth=3, width=256)
        assert d["act_std"][0] == pytest.approx(gain, rel=0.05)
    # tanh saturates at large gain: std near 1, most units pinned at +-1
    d = init_data("tanh", gain=4.0, depth=10, width=128)
    assert 0.8 < d["act_std"][-1] < 1.0
    assert sum(abs(v) > 0.99 for v in d["last"]) / len(d["last"]) > 0.4


def test_init_data_reference_gains_cover_every_activation():
    assert set(REFERENCE_GAINS) == set(ACTIVATIONS)
    assert REFERENCE_GAINS["tanh"][0] == pytest.approx(torch.nn.init.calculate_gain("tanh"))
    assert REFERENCE_GAINS["relu"][0] == pytest.approx(torch.nn.init.calculate_gain("relu"))
    assert PYTORCH_DEFAULT_GAIN == pytest.approx(1 / math.sqrt(3))


@pytest.mark.parametrize("kwargs,match", [
    (dict(activation="swish"), r"unknown activation 'swish'; valid: .*'silu'"),
    (dict(gain=0), r"gain must be a finite number >= 0.001"),
    (dict(gain="big"), r"gain must be a finite number"),
    (dict(depth=-2), r"depth must be an integer >= 1"),
    (dict(batch_size=1), r"batch_size must be an integer >= 2"),
])
def test_init_data_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        init_data(**kwargs)


def test_init_drawing():
    fig = draw_init(init_data("tanh", gain=1.0, depth=5, width=32))
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    assert fig.axes[0].get_yscale() == "log" and len(fig.axes[0].lines) == 2
    assert all(ax.get_title() and ax.get_xlabel() and ax.get_ylabel() for ax in fig.axes)


# ---------------------------------------------------------------- recurrent

def test_recurrent_data_orthogonal_linear_is_exactly_radius_to_the_power():
    for radius in (0.8, 1.0, 1.3):
        d = recurrent_data(seq_len=40, radius=radius, activation="linear",
                             weights="orthogonal")
        assert d["first_over_last"] == pytest.approx(radius ** 39, rel=1e-6)
        assert d["grad_norm"] == pytest.approx(d["reference"], rel=1e-6)


def test_recurrent_data_tanh_never_exceeds_linear_and_caps_explosion():
    lin = recurrent_data(seq_len=60, radius=1.5, activation="linear", weights="orthogonal")
    tanh = recurrent_data(seq_len=60, radius=1.5, activation="tanh", weights="orthogonal")
    # |tanh'| <= 1, so each backward step shrinks at least as much as in the linear net
    assert all(t <= l * (1 + 1e-9) for t, l in zip(tanh["grad_norm"], lin["grad_norm"]))
    assert lin["first_over_last"] > 1e9 and tanh["first_over_last"] < 1e3
    small = recurrent_data(seq_len=100, radius=0.5, activation="tanh")
    assert small["first_over_last"] < 1e-20
    assert len(small["t"]) == 100 and small["t"][0] == 1


def test_recurrent_data_gaussian_follows_radius_in_the_long_run():
    d = recurrent_data(seq_len=200, radius=0.9, activation="linear", weights="gaussian")
    per_step = d["first_over_last"] ** (1 / 199)
    assert per_step == pytest.approx(0.9, rel=0.05)


@pytest.mark.parametrize("kwargs,match", [
    (dict(activation="relu"), r"unknown activation 'relu'; valid: 'linear', 'tanh'"),
    (dict(weights="sparse"), r"unknown weights 'sparse'; valid: 'gaussian', 'orthogonal'"),
    (dict(seq_len=1), r"seq_len must be an integer >= 2"),
    (dict(radius=-1.0), r"radius must be a finite number >= 0.0"),
    (dict(hidden_size=1), r"hidden_size must be an integer >= 2"),
])
def test_recurrent_data_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        recurrent_data(**kwargs)


def test_recurrent_drawing():
    fig = draw_recurrent(recurrent_data(seq_len=20, radius=1.2))
    ax = fig.axes[0]
    assert isinstance(fig, Figure) and ax.get_yscale() == "log" and len(ax.lines) == 2
    assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel()


# ---------------------------------------------------------------- widgets

EXPLORERS = {
    "gradient_flow": (lambda: W.gradient_flow_explorer(depth=6, width=32),
                      [("depth", 12), ("activation", "relu"), ("init", "kaiming_normal"),
                       ("norm", "batch"), ("residual", True), ("width", 64)]),
    "init": (lambda: W.init_explorer(depth=6, width=32),
             [("gain", 1.5), ("activation", "relu"), ("depth", 9), ("width", 48)]),
    "recurrent": (lambda: W.recurrent_explorer(seq_len=20),
                  [("seq_len", 40), ("radius", 1.2), ("activation", "linear"),
                   ("weights", "orthogonal")]),
}


@pytest.mark.parametrize("name", EXPLORERS)
def test_explorer_shows_the_default_plot_and_updates_on_every_control(name):
    make, changes = EXPLORERS[name]
    ex = make()
    assert isinstance(ex, ipywidgets.VBox) and isinstance(ex, W.Explorer)
    assert ex.image in ex.children and ex.png.startswith(PNG_MAGIC)
    assert ex.error == "" and "course-explorer-summary" in ex.status.value
    assert set(ex.controls) == {n for n, _ in changes}
    for control, value in changes:
        before = ex.png
        ex.controls[control].value = value
        assert ex.error == "", ex.error
        assert ex.png != before, f"changing {control} did not redraw the plot"
        assert ex.data["params"][control] == value
    assert ex.values() == {n: c.value for n, c in ex.controls.items()}


def test_explorer_mimebundle_has_a_static_png_for_frontends_without_widgets():
    ex = W.gradient_flow_explorer(depth=3, width=16)
    bundle = ex._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert base64.b64decode(bundle["image/png"]) == ex.png
    assert bundle["text/plain"]


def test_explorer_update_time_depth_50():
    ex = W.gradient_flow_explorer(depth=10, width=128)
    seconds = cpu_seconds(lambda: setattr(ex.controls["depth"], "value",
                                          49 if ex.controls["depth"].value == 50 else 50))
    # compute + drawing: about 0.3 s of CPU measured on the busy 2-core machine; generous bound
    assert seconds < 3.0, f"one update at depth 50 took {seconds:.2f} s of CPU"
    assert ex.seconds > 0


def test_explorer_shows_errors_instead_of_failing_silently():
    calls = []

    def compute(depth):
        calls.append(depth)
        if depth > 3:
            raise ValueError("depth too large for this test")
        return gradient_flow_data(depth=depth, width=8, batch_size=8)

    control = ipywidgets.IntSlider(value=2, min=1, max=5)
    ex = W.Explorer("t", {"depth": control}, compute, draw_gradient_flow,
                    lambda d: "fine", (10, 3.8), 2)
    good = ex.png
    control.value = 4
    assert calls == [2, 4] and "depth too large" in ex.error
    assert "course-explorer-error" in ex.status.value and ex.png == good
    control.value = 3
    assert ex.error == "" and ex.png != good


@pytest.mark.parametrize("call,match", [
    (lambda: W.gradient_flow_explorer(activation="bogus"), r"valid: .*'tanh'"),
    (lambda: W.gradient_flow_explorer(depth=80), r"depth 1..50"),
    (lambda: W.init_explorer(gain=9.0), r"gain 0.1..4"),
    (lambda: W.init_explorer(activation="bogus"), r"valid: .*'selu'"),
    (lambda: W.recurrent_explorer(activation="gru"), r"valid: 'linear', 'tanh'"),
    (lambda: W.recurrent_explorer(seq_len=1000), r"seq_len 5..300"),
])
def test_explorer_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_figure_png():
    png = W.figure_png(draw_recurrent(recurrent_data(seq_len=5)))
    assert png.startswith(PNG_MAGIC)
