"""The course's plots: every drawing of course_lib lives here, the explorers' included.

Each function takes an optional ``ax`` (or ``axes``) to draw into and returns the ``Figure``.
Magnitudes that span decades are drawn on log scales, where values that are zero, negative or
not finite become gaps (:func:`positive`); every plot has a title, labelled axes, and alt text
(:func:`course_lib.display.set_alt`) that says in words what it shows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib import ticker
from matplotlib.figure import Figure

from course_lib.display import get_alt, install, set_alt
from course_lib.records import DESCRIPTIONS, LAYER_STATS, STATS, Profile, Trace

install()  # in a notebook, every figure shown carries its alt text (a no-op outside IPython)

_LOG_STATS = ("grad_norm", "signal_norm", "weight_norm", "update_ratio", "act_spread")


# -- shared pieces ----------------------------------------------------------------------------
def positive(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Values for a log axis: entries that are not positive and finite become NaN (gaps)."""
    arr = np.asarray(values, dtype=float)
    return np.where(np.isfinite(arr) & (arr > 0), arr, np.nan)


def log_axis(ax: Any, *series: Sequence[float], min_decades: float = 2.0) -> None:
    """A log y-axis with plain decade labels (1e-9), no minor ticks, and limits that span the
    data and at least ``min_decades``, so that a flat line looks flat."""
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(_decade_label))
    ax.yaxis.set_minor_locator(ticker.NullLocator())
    vals = np.concatenate([positive(s) for s in series]) if series else np.array([])
    vals = vals[np.isfinite(vals)]
    if len(vals) == 0:
        return
    lo, hi = float(vals.min()), float(vals.max())
    if math.log10(hi / lo) < min_decades:
        mid, half = math.sqrt(lo * hi), 10 ** (min_decades / 2)
        lo, hi = mid / half, mid * half
    ax.set_ylim(lo / 2, hi * 2)


def _decade_label(value: float, _pos: object = None) -> str:
    mantissa, exponent = f"{value:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def _figure(ax: Any, figsize: tuple[float, float]) -> tuple[Figure, Any, bool]:
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize)
        return fig, ax, True
    return ax.figure, ax, False


def _describe(fig: Figure, text: str, own: bool) -> None:
    """Set the alt text of a figure this function made; add a panel's to a caller's figure."""
    old = get_alt(fig)
    set_alt(fig, text if own or not old else f"{old} {text}")


def _span(values: np.ndarray) -> str:
    finite = values[np.isfinite(values) & (values > 0)]
    if len(finite) == 0:
        return "no positive values"
    return f"from {finite.min():.1e} to {finite.max():.1e}"


def _as_runs(runs: Any) -> dict[str, Profile]:
    if isinstance(runs, Profile):
        return {runs.label: runs}
    if isinstance(runs, Mapping) and runs and all(isinstance(v, (int, float, np.floating))
                                                  for v in runs.values()):
        return {"": Profile(runs)}
    if not isinstance(runs, Mapping) or not runs:
        raise ValueError("runs must be a Profile, a {layer: value} mapping, or a non-empty "
                         "{label: Profile} dict")
    out = {}
    for label, run in runs.items():
        if isinstance(run, Profile):
            out[str(label)] = run
        elif isinstance(run, Mapping):
            out[str(label)] = Profile(run)
        else:
            raise ValueError(f"run {label!r} is a {type(run).__name__}; a run must be a Profile "
                             "or a {layer: value} mapping (a Trace gives one with .profile())")
    return out


# -- per-layer profiles -----------------------------------------------------------------------
def gradient_flow(runs: Profile | Mapping[str, Any], stat: str | None = None,
                  title: str | None = None, ax: Any = None, log: bool = True) -> Figure:
    """Per-layer profile (input on the left, output on the right) of one run or several.

    ``runs`` is a :class:`~course_lib.records.Profile` (from :func:`course_lib.gradient_norms`,
    :meth:`Trace.profile`, a diagnosis report), a ``{layer: value}`` mapping, or
    ``{label: Profile}`` for runs side by side. ``stat`` labels the y-axis; by default the
    profiles' own.
    """
    runs = _as_runs(runs)
    stat = stat or next((p.stat for p in runs.values() if p.stat), "grad_norm")
    if stat not in STATS:
        raise ValueError(f"unknown stat {stat!r}; valid: {', '.join(map(repr, STATS))}")
    fig, ax, own = _figure(ax, (7.5, 4))
    names = [p.layers for p in runs.values()]
    for label, profile in runs.items():
        values = positive(profile.array) if log else profile.array
        ax.plot(range(1, len(profile) + 1), values, marker="o", ms=3, label=label or None)
    if log:
        log_axis(ax, *[p.array for p in runs.values()])
    same = all(n == names[0] for n in names)
    ax.set_xlabel("layer (input → output)" if same else "layer index (1 = input side)")
    ax.set_ylabel(DESCRIPTIONS[stat])
    ax.set_title(title or f"{DESCRIPTIONS[stat].split(' ||')[0].capitalize()} per layer")
    if same and len(names[0]) <= 16:
        ax.set_xticks(range(1, len(names[0]) + 1), names[0], rotation=45, ha="right", fontsize=8)
    if any(runs):
        ax.legend(fontsize=8)
    ax.grid(True, which="major", alpha=0.3)
    if own:
        fig.tight_layout()
    parts = [f"{label or 'the model'}: {len(p)} layers, {_span(p.array)}, first/last "
             f"{p.first_over_last():.1e}" if len(p) > 1 else f"{label}: {len(p)} layer"
             for label, p in runs.items()]
    _describe(fig, f"{ax.get_title()}: {DESCRIPTIONS[stat]} against layer, input to output"
              f"{', log scale' if log else ''}. " + "; ".join(parts) + ".", own)
    return fig


def grad_heatmap(trace: Trace, stat: str = "grad_norm", title: str | None = None,
                 ax: Any = None) -> Figure:
    """Layer-by-step heat map of log10(``stat``) over training (rows: layers, input at the top)."""
    if not isinstance(trace, Trace):
        raise ValueError(f"trace must be a Trace (History.trace), got {type(trace).__name__}")
    if stat not in LAYER_STATS:
        raise ValueError(f"unknown stat {stat!r}; valid: {', '.join(map(repr, LAYER_STATS))}")
    if len(trace) == 0:
        raise ValueError("the trace holds no recorded steps")
    values = trace.stats[stat]
    logv = np.log10(np.clip(values, 1e-30, None)).T
    fig, ax, own = _figure(ax, (8, 0.3 * len(trace.layers) + 1.8))
    steps = trace.steps
    im = ax.imshow(logv, aspect="auto", cmap="viridis", interpolation="nearest",
                   extent=(steps[0] - 0.5, steps[-1] + 0.5, len(trace.layers) - 0.5, -0.5))
    ax.set_yticks(range(len(trace.layers)), trace.layers, fontsize=8)
    ax.set_xlabel("training step")
    ax.set_ylabel("layer (input at top)")
    ax.set_title(title or f"log10 {DESCRIPTIONS[stat].split(' ||')[0]} over training")
    fig.colorbar(im, ax=ax, label=f"log10 {stat}")
    if own:
        fig.tight_layout()
    _describe(fig, f"{ax.get_title()}: heat map of log10 {DESCRIPTIONS[stat]}, layers "
              f"{trace.layers[0]} (top) to {trace.layers[-1]} (bottom) against training steps "
              f"{steps[0]} to {steps[-1]}; values {_span(values.ravel())}.", own)
    return fig


def profile_over_steps(trace: Trace, layers: Sequence[str] | None = None,
                       stat: str = "grad_norm", title: str | None = None,
                       ax: Any = None) -> Figure:
    """``stat`` of chosen layers (default: all) against training step, log scale where apt."""
    if not isinstance(trace, Trace):
        raise ValueError(f"trace must be a Trace, got {type(trace).__name__}")
    names = trace.names(stat)
    chosen = list(layers) if layers is not None else names
    unknown = [n for n in chosen if n not in names]
    if unknown:
        raise ValueError(f"unknown layer(s) {unknown}; valid: {names}")
    fig, ax, own = _figure(ax, (7.5, 4))
    for n in chosen:
        series = trace.series(stat, n)
        ax.plot(trace.steps, positive(series) if stat in _LOG_STATS else series, label=n)
    if stat in _LOG_STATS:
        log_axis(ax, *[trace.series(stat, n) for n in chosen])
    ax.set_xlabel("training step")
    ax.set_ylabel(DESCRIPTIONS[stat])
    ax.set_title(title or f"{DESCRIPTIONS[stat].split(' ||')[0].capitalize()} during training")
    ax.legend(fontsize=7, ncol=2 if len(chosen) > 6 else 1)
    ax.grid(True, alpha=0.3)
    if own:
        fig.tight_layout()
    _describe(fig, f"{ax.get_title()}: {DESCRIPTIONS[stat]} against training step for "
              f"{', '.join(chosen[:8])}{' and more' if len(chosen) > 8 else ''}.", own)
    return fig


def activation_histograms(activations: Mapping[str, Any], bins: int = 60,
                          title: str | None = None, ax: Any = None) -> Figure:
    """Overlaid per-layer histograms of activation values (as in Karpathy's makemore part 3),
    from ``{site: tensor}`` (:func:`course_lib.instrument.capture_activations`)."""
    import torch

    if not activations:
        raise ValueError("activations is empty")
    fig, ax, own = _figure(ax, (8, 4))
    described = []
    for name, t in activations.items():
        v = torch.as_tensor(t).detach().float().flatten().cpu()
        if v.numel() == 0:
            continue
        hist, edges = torch.histogram(v, bins=bins)
        centers = ((edges[:-1] + edges[1:]) / 2).numpy()
        ax.plot(centers, (hist / hist.sum()).numpy(),
                label=f"{name}: mean {v.mean():+.2f}, std {v.std():.2f}")
        described.append(f"{name} (mean {v.mean():+.2f}, std {v.std():.2f})")
    ax.set_xlabel("activation value")
    ax.set_ylabel("fraction of values")
    ax.set_title(title or "Activation distribution per layer")
    ax.legend(fontsize=7, ncol=2 if len(activations) > 6 else 1)
    if own:
        fig.tight_layout()
    _describe(fig, f"{ax.get_title()}: histograms of activation values for "
              + ", ".join(described) + ".", own)
    return fig


def training_curves(histories: Any, title: str | None = None, log_loss: bool = False,
                    axes: Sequence[Any] | None = None) -> Figure:
    """Loss (left) and accuracy (right) per epoch of one history or ``{label: history}``
    (:class:`~course_lib.records.History`); validation curves are dashed."""
    from course_lib.records import History

    if isinstance(histories, History):
        histories = {"": histories}
    if not isinstance(histories, Mapping) or not histories:
        raise ValueError("histories must be a History or a non-empty {label: History} dict")
    for label, h in histories.items():
        if not isinstance(h, History):
            raise ValueError(f"{label!r} is a {type(h).__name__}, not a History")
    has_acc = any(any(not math.isnan(a) for a in h.train_acc) for h in histories.values())
    own = axes is None
    if own:
        fig, axes = plt.subplots(1, 2 if has_acc else 1, figsize=(11 if has_acc else 6, 3.8))
    axes = list(np.atleast_1d(axes))
    fig = axes[0].figure
    described = []
    for i, (label, h) in enumerate(histories.items()):
        color = f"C{i % 10}"
        epochs = range(1, h.epochs + 1)
        name = label or "train"
        axes[0].plot(epochs, h.train_loss, color=color,
                     label=f"{name} (train)" if h.val_loss else name)
        if h.val_loss:
            axes[0].plot(epochs, h.val_loss, color=color, ls="--", label=f"{name} (validation)")
        if has_acc:
            axes[1].plot(epochs, h.train_acc, color=color,
                         label=f"{name} (train)" if h.val_acc else name)
            if h.val_acc:
                axes[1].plot(epochs, h.val_acc, color=color, ls="--",
                             label=f"{name} (validation)")
        if h.epochs:
            acc = f", accuracy {h.train_acc[-1]:.2f}" if has_acc else ""
            val = f", validation accuracy {h.val_acc[-1]:.2f}" if h.val_acc and has_acc else ""
            described.append(f"{name}: final training loss {h.train_loss[-1]:.3g}{acc}{val}")
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("loss")
    axes[0].set_title("Loss")
    if log_loss:
        axes[0].set_yscale("log")
    if has_acc:
        axes[1].set_xlabel("epoch")
        axes[1].set_ylabel("accuracy")
        axes[1].set_title("Accuracy")
        axes[1].set_ylim(0, 1.02)
    for ax in axes:
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    if title:
        fig.suptitle(title)
    if own:
        fig.tight_layout()
    _describe(fig, f"{title + ': ' if title else ''}training curves, loss"
              f"{' and accuracy' if has_acc else ''} against epoch. " + "; ".join(described)
              + ".", own)
    return fig


# -- the explorers' drawings --------------------------------------------------------------------
def _axes(axes: Sequence[Any] | None, ncols: int, figsize: tuple[float, float]
          ) -> tuple[Figure, list, bool]:
    if axes is not None:
        axes = list(np.atleast_1d(axes))
        if len(axes) != ncols:
            raise ValueError(f"this drawing needs {ncols} axes, got {len(axes)}")
        return axes[0].figure, axes, False
    fig, grid = plt.subplots(1, ncols, figsize=figsize, squeeze=False)
    return fig, list(grid[0]), True


def _describe_mlp(p: Mapping[str, Any]) -> str:
    extras = [p["init"] + " init"]
    if p["norm"]:
        extras.append(f"{p['norm']} norm")
    if p["residual"]:
        extras.append("residual")
    return f"{p['depth']} × {p['width']} {p['activation']}, " + ", ".join(extras)


def draw_gradient_flow(data: Mapping[str, Any], axes: Sequence[Any] | None = None) -> Figure:
    """The gradient-flow explorer's picture of
    :func:`course_lib.instrument.gradient_flow_data`: gradient norm per layer (left) and the
    activations' std and signal spread per layer (right), log scales."""
    fig, (ax_g, ax_a), own = _axes(axes, 2, (10, 3.8))
    grads: Profile = data["grad_norm"]
    ax_g.plot(range(1, len(grads) + 1), positive(grads.array), marker="o", ms=3, color="C0")
    log_axis(ax_g, grads.array)
    ax_g.set_xlim(0, len(grads) + 1)
    ax_g.set_xlabel("weight layer (input → output)")
    ax_g.set_ylabel("weight-gradient norm ||dL/dW||")
    ratio = data["first_over_last"]
    ax_g.set_title(f"Gradient per layer (first / output = {_fmt_ratio(ratio)})", fontsize=10)
    zeros = int(np.sum(grads.array == 0))
    if zeros:
        ax_g.text(0.02, 0.04, f"{zeros} layer(s) get exactly 0: their gradient entries fell "
                  "below float32's range", transform=ax_g.transAxes, fontsize=8, color="C3")
    std, spread = data["act_std"], data["act_spread"]
    x = range(1, len(std) + 1)
    ax_a.plot(x, positive(std.array), marker="o", ms=3, color="C1", label="std of all entries")
    ax_a.plot(x, positive(spread.array), marker="s", ms=3, color="C2",
              label="signal spread (per unit, across the batch)")
    log_axis(ax_a, std.array, spread.array)
    ax_a.set_xlabel("activation layer (input → output)")
    ax_a.set_ylabel("activation std / spread")
    ax_a.set_title("What reaches each layer: activations", fontsize=10)
    ax_a.legend(fontsize=7, loc="lower left")
    for ax in (ax_g, ax_a):
        ax.grid(True, which="major", alpha=0.3)
        ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    fig.suptitle(f"At initialization: {_describe_mlp(data['params'])}", fontsize=11)
    if own:
        fig.tight_layout()
    last_spread = spread.array[-1] if len(spread) else math.nan
    _describe(fig, f"Gradient flow at initialization of a {_describe_mlp(data['params'])} "
              f"network. Left: weight-gradient norm per layer on a log scale, {_span(grads.array)};"
              f" the first layer gets {_fmt_ratio(ratio)} of the output layer's. Right: the "
              f"activations' std and their signal spread per layer; the last spread is "
              f"{last_spread:.1e}.", own)
    return fig


def draw_init(data: Mapping[str, Any], axes: Sequence[Any] | None = None) -> Figure:
    """The initialization explorer's picture of :func:`course_lib.models.init_data`: activation
    std per layer (log scale) at the chosen gain and at the reference gain, and the last layer's
    histogram."""
    fig, (ax_s, ax_h), own = _axes(axes, 2, (10, 3.8))
    p = data["params"]
    layers = data["layer"]
    ax_s.plot(layers, positive(data["act_std"]), marker="o", ms=3, color="C0",
              label=f"gain {p['gain']:.2f}")
    ax_s.plot(layers, positive(data["reference_std"]), ls="--", color="0.5",
              label=f"gain {data['reference_gain']:.2f} ({data['reference_label']})")
    log_axis(ax_s, data["act_std"], data["reference_std"])
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
    fig.suptitle(f"Weights N(0, gain² / fan_in), gain {p['gain']:.2f}; "
                 f"{p['depth']} layers of width {p['width']}", fontsize=11)
    if own:
        fig.tight_layout()
    _describe(fig, f"Activation std per layer of {p['depth']} random {p['activation']} layers of "
              f"width {p['width']}, log scale: at gain {p['gain']:.2f} it goes from "
              f"{data['act_std'][0]:.2g} to {data['act_std'][-1]:.2g}; at the reference gain "
              f"{data['reference_gain']:.2f} from {data['reference_std'][0]:.2g} to "
              f"{data['reference_std'][-1]:.2g}. Right: histogram of the last layer's "
              "activations.", own)
    return fig


def draw_recurrent(data: Mapping[str, Any], ax: Any = None) -> Figure:
    """The recurrent explorer's picture of :func:`course_lib.recurrent.recurrent_data`:
    ||dL/dh_t|| against t (log scale) with the linear prediction radius^(T-t)."""
    fig, ax, own = _figure(ax, (9, 3.6))
    p = data["params"]
    ax.plot(data["t"], positive(data["grad_norm"]), color="C0", lw=2,
            label=f"measured ({p['activation']})")
    ax.plot(data["t"], positive(data["reference"]), color="0.5", ls="--",
            label=f"radius^(T−t) = {p['radius']:.2f}^(T−t)")
    log_axis(ax, data["grad_norm"], data["reference"])
    ax.set_xlabel("time step t")
    ax.set_ylabel("||dL/dh_t||, L = sum(h_T) / batch")
    ax.set_title(f"Vanilla {p['activation']} RNN, {p['weights']} W with spectral radius "
                 f"{p['radius']:.2f}: step 1 / step T = {_fmt_ratio(data['first_over_last'])}",
                 fontsize=10)
    ax.legend(fontsize=8, loc="best")
    ax.grid(True, which="major", alpha=0.3)
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    if own:
        fig.tight_layout()
    _describe(fig, f"Gradient norm ||dL/dh_t|| against time step t, log scale, in a vanilla "
              f"{p['activation']} RNN with a {p['weights']} recurrent matrix of spectral radius "
              f"{p['radius']:.2f} over {p['seq_len']} steps; step 1 gets "
              f"{_fmt_ratio(data['first_over_last'])} of step T's, next to the dashed linear "
              "prediction radius^(T-t).", own)
    return fig


def _fmt_ratio(ratio: float) -> str:
    """A gradient ratio for a title; an exact 0 is float32 underflow, said so."""
    if ratio == 0:
        return "0 (underflow)"
    return f"{ratio:.0e}" if math.isfinite(ratio) else "n/a"
