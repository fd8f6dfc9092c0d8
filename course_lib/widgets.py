"""Interactive explorers for JupyterLab (ipywidgets 8): turn a knob, watch the gradient.

Each explorer is three layers, so that it can be tested without a browser:

- a plain **compute** function in the module of its topic, returning a dict of numbers
  (:func:`course_lib.instrument.gradient_flow_data`, :func:`course_lib.models.init_data`,
  :func:`course_lib.recurrent.recurrent_data`);
- a **drawing** function in :mod:`course_lib.plots` (:func:`~course_lib.plots.draw_gradient_flow`,
  :func:`~course_lib.plots.draw_init`, :func:`~course_lib.plots.draw_recurrent`);
- the **explorer** here, an :class:`Explorer` widget: controls, the plot as an
  ``ipywidgets.Image`` (PNG bytes, redrawn on every change) and a one-line summary
  (:func:`gradient_flow_explorer`, :func:`init_explorer`, :func:`recurrent_explorer`).

Where widgets do not run (GitHub, nbviewer without widget state, a notebook reopened without a
kernel), an explorer's output still shows the plot of the state it was displayed in: its mime
bundle carries a static ``image/png`` next to the widget view, and front-ends that cannot render
the widget fall back to the picture.
"""

from __future__ import annotations

import base64
import html
import io
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import ipywidgets as widgets
from matplotlib.figure import Figure

from course_lib.instrument import gradient_flow_data
from course_lib.models import (ACTIVATIONS, EXPLORER_INITS, PYTORCH_DEFAULT_GAIN, check_norm,
                               init_data)
from course_lib.plots import draw_gradient_flow, draw_init, draw_recurrent
from course_lib.recurrent import RNN_ACTIVATIONS, RNN_WEIGHTS, recurrent_data

#: Normalization names offered by the explorers ("none" is the same as ``None``).
EXPLORER_NORMS: tuple[str, ...] = ("none", "batch", "layer")

_PNG_DPI = 80


def figure_png(fig: Figure, dpi: int = _PNG_DPI) -> bytes:
    """A figure's PNG bytes (works for figures made with or without pyplot)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


#: Fixed margins for the explorers' figures (``tight_layout`` would draw every figure twice).
_MARGINS = {1: dict(left=0.09, right=0.98, bottom=0.14, top=0.9),
            2: dict(left=0.08, right=0.98, bottom=0.14, top=0.84, wspace=0.25)}


def _render_png(draw: Callable[[Mapping[str, Any], Any], Figure], data: Mapping[str, Any],
                figsize: tuple[float, float], ncols: int) -> bytes:
    """Draw ``data`` on a figure outside pyplot (no global registry) and return its PNG bytes."""
    fig = Figure(figsize=figsize)
    axes = list(fig.subplots(1, ncols, squeeze=False)[0])
    draw(data, axes if ncols > 1 else axes[0])
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
    normalization and residual connections against per-layer gradient norm, activation std and
    signal spread at initialization. The arguments are the starting state (checked: ValueError if bad).
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
        "norm": _dropdown("norm", list(EXPLORER_NORMS), check_norm(norm) or "none"),
        "residual": widgets.Checkbox(value=bool(residual), description="residual connections",
                                     indent=False),
    }

    def compute(**kw: Any) -> dict[str, Any]:
        return gradient_flow_data(**kw, seed=seed)

    def summary(d: Mapping[str, Any]) -> str:
        spread = d["act_spread"].array
        return (f"first-layer / output-layer gradient norm = {d['first_over_last']:.1e}; "
                f"last layer's signal spread = {spread[-1]:.1e}; loss at init = {d['loss']:.3f}")

    return Explorer("Gradient flow at initialization (one batch of 128 8x8 digits)", controls,
                            compute, draw_gradient_flow, summary, (10, 3.8), 2)


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

    return Explorer("Weight scale and activation std", controls, compute, draw_init,
                            summary, (10, 3.8), 2)


def recurrent_explorer(seq_len: int = 50, radius: float = 0.9, activation: str = "tanh",
                       hidden_size: int = 64, weights: str = "gaussian", seed: int = 0) -> Any:
    """An explorer of :func:`recurrent_data`: sequence length, spectral radius of the recurrent
    weight, tanh or linear, Gaussian or orthogonal W, against ||dL/dh_t|| over time.
    """
    recurrent_data(seq_len, radius, activation, hidden_size, weights, seed, batch_size=1)
    if not 5 <= seq_len <= 300 or not 0.1 <= radius <= 2.0:
        raise ValueError(f"the explorer covers seq_len 5..300 and radius 0.1..2; got seq_len "
                         f"{seq_len}, radius {radius}")
    controls = {
        "seq_len": _slider("int", "sequence length T", seq_len, 5, 300, 5),
        "radius": _slider("float", "spectral radius", radius, 0.1, 2.0, 0.05),
        "activation": _dropdown("activation", list(RNN_ACTIVATIONS), activation),
        "weights": _dropdown("W", list(RNN_WEIGHTS), weights),
    }

    def compute(**kw: Any) -> dict[str, Any]:
        return recurrent_data(**kw, hidden_size=hidden_size, seed=seed)

    def summary(d: Mapping[str, Any]) -> str:
        return (f"||dL/dh_1|| / ||dL/dh_T|| = {d['first_over_last']:.1e} over "
                f"T = {d['params']['seq_len']} steps")

    return Explorer("Gradients through time in a vanilla RNN", controls, compute,
                            draw_recurrent, summary, (9, 3.6), 1)
