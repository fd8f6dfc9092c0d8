"""The course's plots. Each function returns its matplotlib ``Figure``.

Magnitudes that span decades (gradient norms) are drawn on log scales; every plot has a title and
labelled axes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure

from course_lib.instrument import Trace

_STATS = ("grad_norm", "signal_norm", "weight_norm", "update_ratio", "act_mean", "act_std",
          "saturated", "dead")
_LABELS = {
    "grad_norm": "weight-gradient norm ||dL/dW||",
    "signal_norm": "backpropagated signal ||dL/dh||",
    "weight_norm": "weight norm ||W||",
    "update_ratio": "update / weight ratio",
    "act_mean": "activation mean",
    "act_std": "activation std",
    "saturated": "fraction of saturated units",
    "dead": "fraction of dead units",
}


def _as_profile(run: Mapping[str, float] | Trace, stat: str) -> dict[str, float]:
    if isinstance(run, Trace):
        return run.at(0, stat)
    if isinstance(run, Mapping):
        return {str(k): float(v) for k, v in run.items()}
    raise ValueError(f"a run must be a {{layer: value}} mapping or a Trace, got {type(run).__name__}")


def gradient_flow(runs: Mapping[str, Mapping[str, float] | Trace] | Mapping[str, float] | Trace,
                  stat: str = "grad_norm", title: str | None = None, ax: plt.Axes | None = None,
                  log: bool = True) -> Figure:
    """Per-layer profile (input on the left, output on the right) of one run or several.

    ``runs`` is a ``{layer: value}`` dict (e.g. from :func:`course_lib.instrument.gradient_norms`),
    a :class:`Trace` (its first recorded step), or ``{label: one of those}`` for runs side by side.
    """
    if stat not in _STATS:
        raise ValueError(f"unknown stat {stat!r}; valid: {', '.join(map(repr, _STATS))}")
    if isinstance(runs, Trace) or (runs and all(isinstance(v, (int, float)) for v in runs.values())):
        runs = {"": runs}  # a single run
    if not runs:
        raise ValueError("runs is empty")
    if ax is None:
        fig, ax = plt.subplots(figsize=(7.5, 4))
    else:
        fig = ax.figure
    names: list[list[str]] = []
    for label, run in runs.items():
        profile = _as_profile(run, stat)
        values = np.array(list(profile.values()), dtype=float)
        if log:
            values = np.where(values > 0, values, np.nan)
        ax.plot(range(1, len(values) + 1), values, marker="o", ms=3, label=label or None)
        names.append(list(profile))
    if log:
        ax.set_yscale("log")
    same_layers = all(n == names[0] for n in names)
    ax.set_xlabel("layer (input → output)" if same_layers else "layer index (1 = input side)")
    ax.set_ylabel(_LABELS[stat])
    ax.set_title(title or f"{_LABELS[stat].split(' ||')[0].capitalize()} per layer")
    if same_layers and len(names[0]) <= 16:
        ax.set_xticks(range(1, len(names[0]) + 1), names[0], rotation=45, ha="right", fontsize=8)
    if any(label for label in runs):
        ax.legend(fontsize=8)
    ax.grid(True, which="major", alpha=0.3)
    fig.tight_layout()
    return fig


def grad_heatmap(trace: Trace, stat: str = "grad_norm", title: str | None = None) -> Figure:
    """Layer-by-step heat map of log10(``stat``) over training (rows: layers, input at the top)."""
    if not isinstance(trace, Trace):
        raise ValueError(f"trace must be a Trace (History.trace), got {type(trace).__name__}")
    if stat not in ("grad_norm", "signal_norm", "weight_norm", "update_ratio"):
        raise ValueError(f"unknown stat {stat!r}; valid: 'grad_norm', 'signal_norm', "
                         "'weight_norm', 'update_ratio'")
    values = getattr(trace, stat)
    if len(values) == 0:
        raise ValueError("the trace holds no recorded steps")
    logv = torch.log10(values.clamp_min(1e-30)).T.numpy()
    fig, ax = plt.subplots(figsize=(8, 0.3 * len(trace.layers) + 1.8))
    steps = trace.steps.numpy()
    im = ax.imshow(logv, aspect="auto", cmap="viridis", interpolation="nearest",
                   extent=(steps[0] - 0.5, steps[-1] + 0.5, len(trace.layers) - 0.5, -0.5))
    ax.set_yticks(range(len(trace.layers)), trace.layers, fontsize=8)
    ax.set_xlabel("training step")
    ax.set_ylabel("layer (input at top)")
    ax.set_title(title or f"log10 {_LABELS[stat].split(' ||')[0]} over training")
    fig.colorbar(im, ax=ax, label=f"log10 {stat}")
    fig.tight_layout()
    return fig


def activation_histograms(activations: Mapping[str, torch.Tensor], bins: int = 60,
                          title: str | None = None) -> Figure:
    """Overlaid per-layer histograms of activation values (as in Karpathy's makemore part 3).

    ``activations`` is ``{layer: tensor}``, e.g. from
    :func:`course_lib.instrument.capture_activations`. The legend gives each layer's mean, std and,
    for bounded activations, nothing more: read saturation off the peaks at the ends.
    """
    if not activations:
        raise ValueError("activations is empty")
    fig, ax = plt.subplots(figsize=(8, 4))
    for name, t in activations.items():
        v = t.detach().float().flatten().cpu()
        if v.numel() == 0:
            continue
        hist, edges = torch.histogram(v, bins=bins)
        density = (hist / hist.sum()).numpy()
        centers = ((edges[:-1] + edges[1:]) / 2).numpy()
        ax.plot(centers, density, label=f"{name}: mean {v.mean():+.2f}, std {v.std():.2f}")
    ax.set_xlabel("activation value")
    ax.set_ylabel("fraction of values")
    ax.set_title(title or "Activation distribution per layer")
    ax.legend(fontsize=7, ncol=2 if len(activations) > 6 else 1)
    fig.tight_layout()
    return fig


def training_curves(histories: Mapping[str, object] | object, title: str | None = None,
                    log_loss: bool = False) -> Figure:
    """Loss (left) and accuracy (right) per epoch for one :class:`~course_lib.train.History` or
    ``{label: History}``; validation curves are dashed."""
    from course_lib.train import History

    if isinstance(histories, History):
        histories = {"": histories}
    if not isinstance(histories, Mapping) or not histories:
        raise ValueError("histories must be a History or a non-empty {label: History} dict")
    has_acc = any(any(not math.isnan(a) for a in h.train_acc) for h in histories.values())
    fig, axes = plt.subplots(1, 2 if has_acc else 1, figsize=(11 if has_acc else 6, 3.8))
    axes = np.atleast_1d(axes)
    for i, (label, h) in enumerate(histories.items()):
        if not isinstance(h, History):
            raise ValueError(f"{label!r} is a {type(h).__name__}, not a History")
        color = f"C{i % 10}"
        epochs = range(1, h.epochs + 1)
        name = label or "train"
        axes[0].plot(epochs, h.train_loss, color=color, label=f"{name} (train)" if h.val_loss else name)
        if h.val_loss:
            axes[0].plot(epochs, h.val_loss, color=color, ls="--", label=f"{name} (validation)")
        if has_acc:
            axes[1].plot(epochs, h.train_acc, color=color, label=f"{name} (train)" if h.val_acc else name)
            if h.val_acc:
                axes[1].plot(epochs, h.val_acc, color=color, ls="--", label=f"{name} (validation)")
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
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def profile_over_steps(trace: Trace, layers: Sequence[str] | None = None, stat: str = "grad_norm",
                       title: str | None = None) -> Figure:
    """``stat`` of chosen layers (default: all) against training step, log scale where apt."""
    if not isinstance(trace, Trace):
        raise ValueError(f"trace must be a Trace, got {type(trace).__name__}")
    if stat not in _STATS:
        raise ValueError(f"unknown stat {stat!r}; valid: {', '.join(map(repr, _STATS))}")
    act = stat in ("act_mean", "act_std", "saturated", "dead")
    names = trace.act_layers if act else trace.layers
    chosen = list(layers) if layers is not None else names
    unknown = [n for n in chosen if n not in names]
    if unknown:
        raise ValueError(f"unknown layer(s) {unknown}; valid: {names}")
    values = getattr(trace, stat)
    fig, ax = plt.subplots(figsize=(7.5, 4))
    for n in chosen:
        ax.plot(trace.steps.numpy(), values[:, names.index(n)].numpy(), label=n)
    if stat in ("grad_norm", "signal_norm", "update_ratio", "weight_norm"):
        ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel(_LABELS[stat])
    ax.set_title(title or f"{_LABELS[stat].split(' ||')[0].capitalize()} during training")
    ax.legend(fontsize=7, ncol=2 if len(chosen) > 6 else 1)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return fig
