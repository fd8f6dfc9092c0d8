"""Interactive explorers for JupyterLab (ipywidgets 8): turn a knob, watch the gradient.

Each explorer comes in three layers, so that it can be tested without a browser:

- a plain **compute** function that returns a dict of numbers
  (:func:`gradient_flow_data`, :func:`init_data`, :func:`recurrent_data`);
- a **figure** helper that plots such a dict with matplotlib
  (:func:`gradient_flow_figure`, :func:`init_figure`, :func:`recurrent_figure`);
- the **explorer** itself, which returns an :class:`Explorer` widget: controls, the plot as an
  ``ipywidgets.Image`` (PNG bytes, redrawn on every change) and a one-line summary
  (:func:`gradient_flow_explorer`, :func:`init_explorer`, :func:`recurrent_explorer`).

Where widgets do not run (GitHub, nbviewer without widget state, a notebook reopened without a
kernel), an explorer's output still shows the plot of the state it was displayed in: its mime
bundle carries a static ``image/png`` next to the widget view, and front-ends that cannot render
the widget fall back to the picture.
"""

from __future__ import annotations

import base64
import functools
import html
import io
import math
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import ipywidgets as widgets
import numpy as np
import torch
from matplotlib import ticker
from matplotlib.figure import Figure

from course_lib.core import check_choice, check_positive_int
from course_lib.models import ACTIVATIONS, INITS, NORMS, make_activation, mlp
from course_lib.recurrent import random_recurrent_matrix, unrolled_rnn_grad_norms

#: Initializations offered by the gradient-flow explorer (``normal`` needs a std: see init_explorer).
EXPLORER_INITS: tuple[str, ...] = tuple(i for i in INITS if i != "normal")

#: Normalization names accepted by the explorers ("none" is the same as ``None``).
EXPLORER_NORMS: tuple[str, ...] = ("none", "batch", "layer")

#: Recurrent nonlinearities of :func:`recurrent_data`.
RNN_NONLINEARITIES: tuple[str, ...] = ("tanh", "linear")

#: Recurrent weight matrices of :func:`recurrent_data`.
RNN_WEIGHTS: tuple[str, ...] = ("gaussian", "orthogonal")

#: Reference gain per activation for :func:`init_data`: weights N(0, gain^2 / fan_in) with this
#: gain are the standard choice (He et al. 2015 for the ReLU family, LeCun et al. 1998 / Klambauer
#: et al. 2017 for SELU and linear, PyTorch's ``calculate_gain`` for tanh and sigmoid).
REFERENCE_GAINS: dict[str, tuple[float, str]] = {
    "sigmoid": (1.0, "calculate_gain('sigmoid') = 1"),
    "tanh": (5.0 / 3.0, "calculate_gain('tanh') = 5/3"),
    "relu": (math.sqrt(2.0), "He: √2"),
    "leaky_relu": (math.sqrt(2.0 / (1 + 0.01**2)), "He (leaky, slope 0.01): √(2/1.0001)"),
    "prelu": (math.sqrt(2.0 / (1 + 0.25**2)), "He (slope 0.25): √(2/1.0625)"),
    "elu": (math.sqrt(2.0), "He: √2 (ReLU's; approximate for ELU)"),
    "selu": (1.0, "LeCun: 1 (self-normalizing)"),
    "gelu": (math.sqrt(2.0), "He: √2 (ReLU's; approximate for GELU)"),
    "silu": (math.sqrt(2.0), "He: √2 (ReLU's; approximate for SiLU)"),
    "identity": (1.0, "LeCun: 1"),
}

#: PyTorch's default ``nn.Linear`` init, Var[w] = 1/(3 fan_in), as a gain: 1/√3.
PYTORCH_DEFAULT_GAIN = 1.0 / math.sqrt(3.0)

_PNG_DPI = 80


# --------------------------------------------------------------------------------------------
# checks and small helpers
# --------------------------------------------------------------------------------------------

def _check_norm(norm: str | None) -> str | None:
    """``None``/``"none"`` -> None; ``"batch"``/``"layer"`` unchanged; else ValueError."""
    check_choice("norm", norm, (None, *EXPLORER_NORMS))
    return None if norm in (None, "none") else norm


def _check_float(what: str, value: object, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{what} must be a number in [{low}, {high}], got {value!r}")
    value = float(value)
    if not low <= value <= high:
        raise ValueError(f"{what} must be in [{low}, {high}], got {value!r}")
    return value


def _check_seed(seed: object) -> int:
    return check_positive_int("seed", seed, minimum=0)


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run PyTorch on one thread inside the block, then restore the previous setting.

    The explorers' tensors are tiny (256 x 128): on a busy machine, intra-op threads cost far more
    in synchronization than they save (measured: a 256x128 @ 128x128 matmul took 0.2 ms on one
    thread and 10 ms on two while other processes kept the cores busy).
    """
    previous = torch.get_num_threads()
    if previous != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if previous != 1:
            torch.set_num_threads(previous)


def _digits_batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` training images of the 8x8 digits (the lessons' fixed probe batch)."""
    from course_lib.data import load_digits

    x, y = load_digits(train=True)
    return x[:n], y[:n]


def _positive(values: list[float]) -> np.ndarray:
    """Values for a log axis: non-positive and non-finite entries become NaN (gaps)."""
    arr = np.asarray(values, dtype=float)
    return np.where(np.isfinite(arr) & (arr > 0), arr, np.nan)


def _log_limits(ax: Any, *series: list[float], min_decades: float = 2.0) -> None:
    """Log y-limits spanning the data and at least ``min_decades``, so a flat line looks flat."""
    vals = np.concatenate([_positive(s) for s in series]) if series else np.array([])
    vals = vals[np.isfinite(vals)]
    if len(vals) == 0:
        return
    lo, hi = float(vals.min()), float(vals.max())
    span = math.log10(hi / lo) if lo > 0 else 0.0
    if span < min_decades:
        mid = math.sqrt(lo * hi)
        half = 10 ** (min_decades / 2)
        lo, hi = mid / half, mid * half
    ax.set_ylim(lo / 2, hi * 2)


def _log_axis(ax: Any) -> None:
    """Log y-scale with plain decade labels (1e-9) and no minor ticks: cheap to draw."""
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(_decade_label))
    ax.yaxis.set_minor_locator(ticker.NullLocator())


def _decade_label(value: float, _pos: object = None) -> str:
    text = f"{value:.0e}"  # '1e-09'
    mantissa, exponent = text.split("e")
    return f"{mantissa}e{int(exponent)}"


def _fmt_ratio(ratio: float) -> str:
    """A gradient ratio for a title; an exact 0 is float32 underflow, said so."""
    if ratio == 0:
        return "0 (underflow)"
    return f"{ratio:.0e}" if math.isfinite(ratio) else "n/a"


def _ratio(first: float, last: float) -> float:
    if last == 0 or not math.isfinite(first) or not math.isfinite(last):
        return math.nan
    return first / last


def figure_png(fig: Figure, dpi: int = _PNG_DPI) -> bytes:
    """A figure's PNG bytes (works for figures made with or without pyplot)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def _new_figure(figsize: tuple[float, float], ncols: int, pyplot: bool) -> tuple[Figure, list]:
    """A figure with ``ncols`` axes; outside pyplot (no global registry) unless ``pyplot``."""
    if pyplot:
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, ncols, figsize=figsize, squeeze=False)
    else:
        fig = Figure(figsize=figsize)
        axes = fig.subplots(1, ncols, squeeze=False)
    return fig, list(axes[0])


# --------------------------------------------------------------------------------------------
# gradient flow (lesson 01 and later)
# --------------------------------------------------------------------------------------------

def gradient_flow_data(depth: int = 10, width: int = 128, activation: str = "sigmoid",
                       init: str = "default", norm: str | None = None, residual: bool = False,
                       seed: int = 0, batch_size: int = 128) -> dict[str, Any]:
    """Per-layer gradient norm and activation std of a fresh :func:`course_lib.models.mlp`.

    One forward and backward pass (:func:`course_lib.instrument.snapshot`, cross-entropy) on a
    fixed batch: the first ``batch_size`` training images of the 8x8 digits. The model is built
    from ``seed`` without touching the global random state.

    Args:
        depth, width, activation, init, norm, residual: as in :func:`course_lib.models.mlp`
            (``init`` one of :data:`EXPLORER_INITS`; ``norm`` None, "none", "batch" or "layer").

    Returns:
        a dict with ``layers`` (names of the ``nn.Linear`` layers, input to output),
        ``grad_norm`` (||dL/dW|| of each, summed in float64 so that tiny norms do not
        underflow), ``act_layers`` and ``act_std`` (std of each
        activation function's output), ``first_over_last`` (first-layer over output-layer
        gradient norm), ``loss`` and the arguments under ``params``.

    Raises:
        ValueError: a bad argument, with the valid choices listed.
    """
    from course_lib.instrument import snapshot

    depth = check_positive_int("depth", depth)
    width = check_positive_int("width", width)
    batch_size = check_positive_int("batch_size", batch_size, minimum=2)
    check_choice("activation", activation, ACTIVATIONS)
    check_choice("init", init, EXPLORER_INITS)
    norm = _check_norm(norm)
    if not isinstance(residual, (bool, np.bool_)):
        raise ValueError(f"residual must be True or False, got {residual!r}")
    residual = bool(residual)
    seed = _check_seed(seed)

    x, y = _digits_batch(batch_size)
    losses: list[float] = []

    def loss_fn(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = torch.nn.functional.cross_entropy(out, target)
        losses.append(float(loss.detach()))
        return loss

    with _one_thread():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = mlp(x.shape[1], 10, depth, width, activation=activation, init=init,
                        norm=norm, residual=residual)
        trace = snapshot(model, x, y, loss_fn=loss_fn)
    # Norms in float64 from the gradients themselves: squaring a float32 norm of 1e-26 (depth 30)
    # underflows to 0, although the gradient's entries are still well inside float32's range.
    linear = [(name, m) for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    grads = [float(m.weight.grad.double().norm()) for _, m in linear]
    linear = [name for name, _ in linear]
    acts = trace.at(0, "act_std")
    return {
        "layers": linear,
        "grad_norm": grads,
        "act_layers": list(acts),
        "act_std": list(acts.values()),
        "first_over_last": _ratio(grads[0], grads[-1]),
        "loss": losses[-1],
        "params": dict(depth=depth, width=width, activation=activation, init=init,
                       norm=norm, residual=residual, seed=seed, batch_size=batch_size),
    }


def _describe_mlp(p: Mapping[str, Any]) -> str:
    extras = [p["init"] + " init"]
    if p["norm"]:
        extras.append(f"{p['norm']} norm")
    if p["residual"]:
        extras.append("residual")
    return f"{p['depth']} × {p['width']} {p['activation']}, " + ", ".join(extras)


def _draw_gradient_flow(data: Mapping[str, Any], axes: list) -> None:
    ax_g, ax_a = axes
    grads, stds = data["grad_norm"], data["act_std"]
    ax_g.plot(range(1, len(grads) + 1), _positive(grads), marker="o", ms=3, color="C0")
    _log_axis(ax_g)
    _log_limits(ax_g, grads)
    ax_g.set_xlim(0, len(grads) + 1)
    ax_g.set_xlabel("linear layer (input → output)")
    ax_g.set_ylabel("weight-gradient norm ||dL/dW||")
    ratio = data["first_over_last"]
    ax_g.set_title(f"Gradient per layer (first / output = {_fmt_ratio(ratio)})", fontsize=10)
    zeros = sum(1 for g in grads if g == 0)
    if zeros:
        ax_g.text(0.02, 0.04, f"{zeros} layer(s) get exactly 0: their gradient entries fell "
                  "below float32's range",
                  transform=ax_g.transAxes, fontsize=8, color="C3")
    ax_a.plot(range(1, len(stds) + 1), _positive(stds), marker="o", ms=3, color="C1")
    _log_axis(ax_a)
    _log_limits(ax_a, stds)
    ax_a.set_xlabel("hidden layer (input → output)")
    ax_a.set_ylabel("activation std")
    ax_a.set_title("Activation std per layer", fontsize=10)
    for ax in axes:
        ax.grid(True, which="major", alpha=0.3)
        ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    ax_g.figure.suptitle(f"At initialization: {_describe_mlp(data['params'])}", fontsize=11)


def gradient_flow_figure(depth: int = 10, width: int = 128, activation: str = "sigmoid",
                         init: str = "default", norm: str | None = None, residual: bool = False,
                         seed: int = 0, *, data: Mapping[str, Any] | None = None) -> Figure:
    """Plot :func:`gradient_flow_data` (computed here unless ``data`` is given); log scales."""
    data = data if data is not None else gradient_flow_data(depth, width, activation, init, norm,
                                                            residual, seed)
    fig, axes = _new_figure((10, 3.8), 2, pyplot=True)
    _draw_gradient_flow(data, axes)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------
# initialization scale (lesson 03)
# --------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=32)
def _init_forward(activation: str, gain: float, depth: int, width: int, seed: int,
                  batch_size: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Activation std per layer and (up to 4096 of) the last layer's values; a pure function,
    memoized so that moving only the gain does not recompute the reference curve."""
    act = make_activation(activation)
    with torch.no_grad(), _one_thread():
        gen = torch.Generator().manual_seed(seed)
        h = torch.randn(batch_size, width, generator=gen)
        stds = []
        for _ in range(depth):
            w = torch.randn(width, width, generator=gen).mul_(gain / math.sqrt(width))
            h = act(h @ w.T)
            stds.append(float(h.std()))
        return tuple(stds), tuple(h.flatten()[:4096].tolist())


def init_data(activation: str = "tanh", gain: float = 1.0, depth: int = 20, width: int = 128,
              seed: int = 0, batch_size: int = 128) -> dict[str, Any]:
    """Activation std per layer when weights are N(0, gain^2 / fan_in), biases zero.

    The input is a fixed standard-normal batch of ``batch_size`` vectors of size ``width``; every
    one of the ``depth`` layers is ``activation(W h)`` with a square ``width`` x ``width`` matrix.
    ``gain`` multiplies the LeCun scale 1/√fan_in: 1 is LeCun, √2 is He, 1/√3 ≈ 0.58 is what
    PyTorch's default ``nn.Linear`` init amounts to. The same random matrices are also run at the
    activation's reference gain (:data:`REFERENCE_GAINS`) for comparison.

    Returns:
        a dict with ``layer`` (1..depth), ``act_std`` at ``gain``, ``reference_gain``,
        ``reference_label``, ``reference_std`` (act std at the reference gain), ``last`` (up to
        4096 of the last layer's activations at ``gain``, for a histogram), ``params``.

    Raises:
        ValueError: a bad argument, with the valid choices listed.
    """
    check_choice("activation", activation, ACTIVATIONS)
    gain = _check_float("gain", gain, 1e-3, 100.0)
    depth = check_positive_int("depth", depth)
    width = check_positive_int("width", width)
    batch_size = check_positive_int("batch_size", batch_size, minimum=2)
    seed = _check_seed(seed)

    ref_gain, ref_label = REFERENCE_GAINS[activation]
    stds, last = _init_forward(activation, gain, depth, width, seed, batch_size)
    ref_stds, _ = _init_forward(activation, ref_gain, depth, width, seed, batch_size)
    return {
        "layer": list(range(1, depth + 1)),
        "act_std": list(stds),
        "reference_gain": ref_gain,
        "reference_label": ref_label,
        "reference_std": list(ref_stds),
        "last": list(last),
        "params": dict(activation=activation, gain=gain, depth=depth, width=width, seed=seed,
                       batch_size=batch_size),
    }


def _draw_init(data: Mapping[str, Any], axes: list) -> None:
    ax_s, ax_h = axes
    p = data["params"]
    layers = data["layer"]
    ax_s.plot(layers, _positive(data["act_std"]), marker="o", ms=3, color="C0",
              label=f"gain {p['gain']:.2f}")
    ax_s.plot(layers, _positive(data["reference_std"]), ls="--", color="0.5",
              label=f"gain {data['reference_gain']:.2f} ({data['reference_label']})")
    _log_axis(ax_s)
    _log_limits(ax_s, data["act_std"], data["reference_std"])
    ax_s.set_xlabel("layer (input → output)")
    ax_s.set_ylabel("activation std")
    ax_s.set_title(f"{p['activation']}: activation std per layer", fontsize=10)
    ax_s.legend(fontsize=8, loc="best")
    ax_s.grid(True, which="major", alpha=0.3)
    ax_s.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    last = np.asarray(data["last"], dtype=float)
    last = last[np.isfinite(last)]
    ax_h.hist(last if len(last) else [0.0], bins=60, color="C0", alpha=0.8)
    ax_h.xaxis.set_major_locator(ticker.MaxNLocator(5))
    ax_h.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _pos: f"{v:.2g}"))
    ax_h.set_xlabel(f"activation value at layer {p['depth']}")
    ax_h.set_ylabel("count")
    ax_h.set_title(f"Last layer's activations (std {data['act_std'][-1]:.2g})", fontsize=10)
    ax_s.figure.suptitle(f"Weights N(0, gain² / fan_in), gain {p['gain']:.2f}; "
                         f"{p['depth']} layers of width {p['width']}", fontsize=11)


def init_figure(activation: str = "tanh", gain: float = 1.0, depth: int = 20, width: int = 128,
                seed: int = 0, *, data: Mapping[str, Any] | None = None) -> Figure:
    """Plot :func:`init_data`: std per layer (log scale) and the last layer's histogram."""
    data = data if data is not None else init_data(activation, gain, depth, width, seed)
    fig, axes = _new_figure((10, 3.8), 2, pyplot=True)
    _draw_init(data, axes)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------
# recurrent nets (lessons 05 and 12)
# --------------------------------------------------------------------------------------------

def _rnn_gradient_norms(seq_len: int, radius: float, nonlinearity: str, hidden: int,
                        weights: str, seed: int, batch_size: int,
                        input_scale: float) -> list[float]:
    """||dL/dh_t|| for t = 1..seq_len in float64 (see :func:`recurrent_data`)."""
    w = random_recurrent_matrix(hidden, radius, seed, orthogonal=weights == "orthogonal",
                                dtype=torch.float64)
    with torch.enable_grad():
        norms = unrolled_rnn_grad_norms(w, seq_len, nonlinearity, batch=batch_size,
                                        input_scale=input_scale, seed=seed)
    return norms.tolist()


def recurrent_data(seq_len: int = 50, radius: float = 0.9, nonlinearity: str = "tanh",
                   hidden: int = 64, weights: str = "gaussian", seed: int = 0,
                   batch_size: int = 32, input_scale: float = 0.1) -> dict[str, Any]:
    """||dL/dh_t|| over time in a vanilla RNN ``h_t = f(W h_{t-1} + x_t)``, ``h_0 = 0``.

    ``W`` (hidden x hidden) is a random matrix rescaled to spectral radius ``radius``
    (``gaussian``: i.i.d. normal entries; ``orthogonal``: a random orthogonal matrix, so every
    singular value equals ``radius`` too). ``f`` is tanh or the identity (``linear``). Inputs
    ``x_t`` are Gaussian with std ``input_scale``: small inputs (0.1) start tanh in its
    near-linear range, so what you see at small radius is the recurrent matrix, not saturation by
    the input. The loss reads only the last state, ``L = sum(h_T) / batch``, so dL/dh_t measures
    how much step t can still learn from the end of the sequence. The computation is
    :func:`course_lib.recurrent.unrolled_rnn_grad_norms` in float64 (``radius ** seq_len`` can
    exceed float32's range).

    Returns:
        a dict with ``t`` (1..seq_len), ``grad_norm`` (||dL/dh_t|| over the batch),
        ``reference`` (``radius ** (T - t)`` scaled to ``grad_norm`` at t = T: the linear
        prediction), ``first_over_last`` and ``params``.

    Raises:
        ValueError: a bad argument, with the valid choices listed.
    """
    seq_len = check_positive_int("seq_len", seq_len, minimum=2)
    radius = _check_float("radius", radius, 0.0, 10.0)
    check_choice("nonlinearity", nonlinearity, RNN_NONLINEARITIES)
    hidden = check_positive_int("hidden", hidden, minimum=2)
    check_choice("weights", weights, RNN_WEIGHTS)
    seed = _check_seed(seed)
    batch_size = check_positive_int("batch_size", batch_size)
    input_scale = _check_float("input_scale", input_scale, 0.0, 100.0)

    with _one_thread():
        norms = _rnn_gradient_norms(seq_len, radius, nonlinearity, hidden, weights, seed,
                                    batch_size, input_scale)
    last = norms[-1]
    reference = [last * radius ** (seq_len - 1 - t) if radius > 0 else (last if t == seq_len - 1
                 else 0.0) for t in range(seq_len)]
    return {
        "t": list(range(1, seq_len + 1)),
        "grad_norm": norms,
        "reference": reference,
        "first_over_last": _ratio(norms[0], last),
        "params": dict(seq_len=seq_len, radius=radius, nonlinearity=nonlinearity, hidden=hidden,
                       weights=weights, seed=seed, batch_size=batch_size,
                       input_scale=input_scale),
    }


def _draw_recurrent(data: Mapping[str, Any], axes: list) -> None:
    (ax,) = axes
    p = data["params"]
    ax.plot(data["t"], _positive(data["grad_norm"]), color="C0", lw=2,
            label=f"measured ({p['nonlinearity']})")
    ax.plot(data["t"], _positive(data["reference"]), color="0.5", ls="--",
            label=f"radius^(T−t) = {p['radius']:.2f}^(T−t)")
    _log_axis(ax)
    _log_limits(ax, data["grad_norm"], data["reference"])
    ax.set_xlabel("time step t")
    ax.set_ylabel("||dL/dh_t||, L = sum(h_T) / batch")
    ax.set_title(f"Vanilla {p['nonlinearity']} RNN, {p['weights']} W with spectral radius "
                 f"{p['radius']:.2f}: step 1 / step T = {_fmt_ratio(data['first_over_last'])}",
                 fontsize=10)
    ax.legend(fontsize=8, loc="best")
    ax.grid(True, which="major", alpha=0.3)
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))


def recurrent_figure(seq_len: int = 50, radius: float = 0.9, nonlinearity: str = "tanh",
                     hidden: int = 64, weights: str = "gaussian", seed: int = 0, *,
                     data: Mapping[str, Any] | None = None) -> Figure:
    """Plot :func:`recurrent_data`: gradient norm over time on a log scale."""
    data = data if data is not None else recurrent_data(seq_len, radius, nonlinearity, hidden,
                                                        weights, seed)
    fig, axes = _new_figure((9, 3.6), 1, pyplot=True)
    _draw_recurrent(data, axes)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------
# the widget
# --------------------------------------------------------------------------------------------

#: Fixed margins for the explorers' figures (``tight_layout`` would draw every figure twice).
_MARGINS = {1: dict(left=0.09, right=0.98, bottom=0.14, top=0.9),
            2: dict(left=0.08, right=0.98, bottom=0.14, top=0.84, wspace=0.25)}


def _render_png(draw: Callable[[Mapping[str, Any], list], None], data: Mapping[str, Any],
                figsize: tuple[float, float], ncols: int) -> bytes:
    """Draw ``data`` on a figure outside pyplot and return its PNG bytes."""
    fig, axes = _new_figure(figsize, ncols, pyplot=False)
    draw(data, axes)
    fig.subplots_adjust(**_MARGINS[ncols])
    return figure_png(fig)


class Explorer(widgets.VBox):
    """Controls, a plot (``ipywidgets.Image`` of PNG bytes) and a one-line summary.

    ``controls`` maps the compute function's argument names to widgets; every change of a
    control's value recomputes and redraws. ``data`` holds the last result, ``seconds``
    how long the last update took (compute and drawing), ``error`` the last error message
    (empty when the last update worked). Its mime bundle adds a static ``image/png`` of the
    current plot, which front-ends without widgets show instead.

    Displayed in a notebook (``_ipython_display_``), it makes two outputs: the widget (title,
    controls, summary) and the plot as a plain image with alt text (``image/png`` and an
    ``<img alt>``), which every redraw updates in place through a display handle. A saved
    notebook therefore keeps the last plot as an ordinary output: reopened without a kernel, or
    where the widget's state was not saved, the plot is still there.
    """

    def __init__(self, title: str, controls: Mapping[str, Any],
                 compute: Callable[..., dict[str, Any]],
                 draw: Callable[[Mapping[str, Any], list], None],
                 summary: Callable[[Mapping[str, Any]], str],
                 figsize: tuple[float, float], ncols: int,
                 convert: Mapping[str, Callable[[Any], Any]] | None = None) -> None:
        self.controls = dict(controls)
        from course_lib.display import AltImage

        # An Image whose tooltip (the alt text of the current plot) is the <img>'s title.
        self.image = AltImage(format="png", layout=widgets.Layout(max_width="100%"))
        self.status = widgets.HTML(layout=widgets.Layout(min_height="1.5em"))
        self.data: dict[str, Any] | None = None
        self.seconds = math.nan
        self.error = ""
        self._compute, self._draw, self._summary = compute, draw, summary
        self._figsize, self._ncols = figsize, ncols
        self._convert = dict(convert or {})
        self._title = title
        self._plot_handles: list[Any] = []  # display handles of the plot outputs
        box = widgets.HBox(list(self.controls.values()),
                           layout=widgets.Layout(flex_flow="row wrap", gap="4px 16px"))
        super().__init__([widgets.HTML(f"<b>{html.escape(title)}</b>"), box, self.image,
                          self.status])
        self.add_class("course-explorer")
        for control in self.controls.values():
            control.observe(self._on_change, names="value")
        self.update()

    @property
    def png(self) -> bytes:
        """The current plot's PNG bytes."""
        return bytes(self.image.value)

    def values(self) -> dict[str, Any]:
        """The controls' current values, as the compute function's arguments."""
        return {name: self._convert.get(name, lambda v: v)(c.value)
                for name, c in self.controls.items()}

    def _on_change(self, change: dict) -> None:
        self.update()

    def update(self) -> None:
        """Recompute and redraw from the controls' values; errors go to the summary line."""
        start = time.perf_counter()
        try:
            data = self._compute(**self.values())
            png = _render_png(self._draw, data, self._figsize, self._ncols)
        except Exception as err:  # shown to the learner, not swallowed silently
            self.error = f"{type(err).__name__}: {err}"
            self.status.value = (f"<span class='course-explorer-error' style='color:#b00020'>"
                                 f"{html.escape(self.error)}</span>")
            return
        self.data, self.error = data, ""
        self.image.value = png
        self.image.tooltip = self.alt_text  # the picture's accessible name (the img's title)
        if self._plot_handles:
            static, metadata = self._static_image()
            for handle in self._plot_handles:
                handle.update(static, metadata=metadata, raw=True)
        self.seconds = time.perf_counter() - start
        self.status.value = (f"<span class='course-explorer-summary'>"
                             f"{html.escape(self._summary(data))} "
                             f"<span style='color:#777'>({self.seconds:.2f} s)</span></span>")

    @property
    def alt_text(self) -> str:
        """What the current plot shows, in words: the title, the settings and the summary."""
        if self.data is None:
            return f"{self._title}: no plot yet"
        settings = ", ".join(f"{getattr(c, 'description', '') or name} {c.value}"
                             for name, c in self.controls.items())
        return f"{self._title}, plotted for {settings}. {self._summary(self.data)}"

    def _static_image(self) -> tuple[dict, dict]:
        """The current plot as ``image/png`` and ``text/html`` ``<img alt>``, with metadata."""
        from course_lib.display import image_bundle

        return image_bundle(self.png, self.alt_text) if self.image.value else ({}, {})

    def _repr_mimebundle_(self, **kwargs: Any) -> dict | None:
        """The widget view, plus the current plot as a static image with alt text for
        front-ends that cannot show widgets (GitHub, nbconvert, the course website)."""
        bundle = super()._repr_mimebundle_(**kwargs)
        if bundle is not None:
            bundle.update(self._static_image()[0])
        return bundle

    def _ipython_display_(self) -> None:
        """Two outputs: the widget, its picture hidden, and the plot as a plain image (alt text
        included) that :meth:`update` replaces on every redraw."""
        from IPython.display import display, publish_display_data

        widget = super()._repr_mimebundle_()
        if widget is None:
            return
        widget["text/plain"] = f"{self._title}: interactive controls (they need a running kernel)"
        self.image.layout.display = "none"  # the plot is the output below
        publish_display_data(widget)
        data, metadata = self._static_image()
        self._plot_handles.append(display(data, metadata=metadata, raw=True, display_id=True))



def _slider(kind: str, description: str, value: float, low: float, high: float,
            step: float) -> Any:
    cls = widgets.IntSlider if kind == "int" else widgets.FloatSlider
    return cls(value=value, min=low, max=high, step=step, description=description,
               continuous_update=False, style={"description_width": "initial"})


def _dropdown(description: str, options: Any, value: Any) -> Any:
    return widgets.Dropdown(options=options, value=value, description=description,
                            style={"description_width": "initial"},
                            layout=widgets.Layout(width="auto"))


def gradient_flow_explorer(depth: int = 10, width: int = 128, activation: str = "sigmoid",
                           init: str = "default", norm: str | None = None,
                           residual: bool = False, seed: int = 0) -> Any:
    """An explorer of :func:`gradient_flow_data`: depth (1-50), width, activation, init,
    normalization and residual connections against per-layer gradient norm and activation std
    at initialization. The arguments are the starting state (checked: ValueError if bad).
    """
    gradient_flow_data(depth, width, activation, init, norm, residual, seed, batch_size=2)
    if not 1 <= depth <= 50 or not 8 <= width <= 256:
        raise ValueError(f"the explorer covers depth 1..50 and width 8..256, got depth {depth}, "
                         f"width {width}")
    controls = {
        "depth": _slider("int", "depth", depth, 1, 50, 1),
        "width": _slider("int", "width", width, 8, 256, 8),
        "activation": _dropdown("activation", list(ACTIVATIONS), activation),
        "init": _dropdown("init", list(EXPLORER_INITS), init),
        "norm": _dropdown("norm", list(EXPLORER_NORMS), _check_norm(norm) or "none"),
        "residual": widgets.Checkbox(value=bool(residual), description="residual connections",
                                     indent=False),
    }

    def compute(**kw: Any) -> dict[str, Any]:
        return gradient_flow_data(**kw, seed=seed)

    def summary(d: Mapping[str, Any]) -> str:
        return (f"first-layer / output-layer gradient norm = {d['first_over_last']:.1e}; "
                f"loss at init = {d['loss']:.3f}")

    return Explorer("Gradient flow at initialization (one batch of 128 8x8 digits)", controls,
                            compute, _draw_gradient_flow, summary, (10, 3.8), 2)


def init_explorer(activation: str = "tanh", gain: float = 1.0, depth: int = 20,
                  width: int = 128, seed: int = 0) -> Any:
    """An explorer of :func:`init_data`: activation, weight gain (std × √fan_in), depth and
    width against the activation std per layer, with the activation's reference gain dashed.
    """
    init_data(activation, gain, depth, width, seed, batch_size=2)
    if not 0.1 <= gain <= 4.0 or not 1 <= depth <= 50 or not 8 <= width <= 256:
        raise ValueError(f"the explorer covers gain 0.1..4, depth 1..50, width 8..256; got gain "
                         f"{gain}, depth {depth}, width {width}")
    controls = {
        "activation": _dropdown("activation", list(ACTIVATIONS), activation),
        "gain": _slider("float", "gain", gain, 0.1, 4.0, 0.05),
        "depth": _slider("int", "depth", depth, 1, 50, 1),
        "width": _slider("int", "width", width, 8, 256, 8),
    }

    def compute(**kw: Any) -> dict[str, Any]:
        return init_data(**kw, seed=seed)

    def summary(d: Mapping[str, Any]) -> str:
        return (f"activation std at layer 1 = {d['act_std'][0]:.2g}, at layer "
                f"{d['params']['depth']} = {d['act_std'][-1]:.2g} (reference gain "
                f"{d['reference_gain']:.2f}: {d['reference_std'][-1]:.2g}); PyTorch's default "
                f"nn.Linear init is gain {PYTORCH_DEFAULT_GAIN:.2f}")

    return Explorer("Weight scale and activation std", controls, compute, _draw_init,
                            summary, (10, 3.8), 2)


def recurrent_explorer(seq_len: int = 50, radius: float = 0.9, nonlinearity: str = "tanh",
                       hidden: int = 64, weights: str = "gaussian", seed: int = 0) -> Any:
    """An explorer of :func:`recurrent_data`: sequence length, spectral radius of the recurrent
    weight, tanh or linear, Gaussian or orthogonal W, against ||dL/dh_t|| over time.
    """
    recurrent_data(seq_len, radius, nonlinearity, hidden, weights, seed, batch_size=1)
    if not 5 <= seq_len <= 300 or not 0.1 <= radius <= 2.0:
        raise ValueError(f"the explorer covers seq_len 5..300 and radius 0.1..2; got seq_len "
                         f"{seq_len}, radius {radius}")
    controls = {
        "seq_len": _slider("int", "sequence length T", seq_len, 5, 300, 5),
        "radius": _slider("float", "spectral radius", radius, 0.1, 2.0, 0.05),
        "nonlinearity": _dropdown("nonlinearity", list(RNN_NONLINEARITIES), nonlinearity),
        "weights": _dropdown("W", list(RNN_WEIGHTS), weights),
    }

    def compute(**kw: Any) -> dict[str, Any]:
        return recurrent_data(**kw, hidden=hidden, seed=seed)

    def summary(d: Mapping[str, Any]) -> str:
        return (f"||dL/dh_1|| / ||dL/dh_T|| = {d['first_over_last']:.1e} over "
                f"T = {d['params']['seq_len']} steps")

    return Explorer("Gradients through time in a vanilla RNN", controls, compute,
                            _draw_recurrent, summary, (9, 3.6), 1)
