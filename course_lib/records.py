"""The data types measurements come in: one per-layer type, a trace over steps, a history.

- :class:`Profile`: one number per layer, ordered input to output (a read-only mapping). Every
  tool that measures per layer hands one out: :func:`course_lib.gradient_norms`,
  :meth:`Trace.profile`, :func:`course_lib.diagnose`'s report. It knows the operations the
  course uses: the first/last ratio, the per-layer factor, plotting.
- :class:`Trace`: per-layer statistics at the recorded steps of a training run (NumPy arrays on
  the CPU) and the loss at each of those steps; it hands out profiles and per-layer series.
- :class:`History`: what :func:`course_lib.train.fit` measured per epoch, and its trace.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from course_lib.gradients import per_step_factor

#: Statistics of weight layers (one value per layer of the selected layer set).
LAYER_STATS: tuple[str, ...] = ("grad_norm", "signal_norm", "weight_norm", "update_ratio")
#: Statistics of activation sites (one value per activation module or functional call site).
ACTIVATION_STATS: tuple[str, ...] = ("act_mean", "act_std", "act_spread", "saturated", "dead")
#: Every statistic a :class:`Trace` holds.
STATS: tuple[str, ...] = LAYER_STATS + ACTIVATION_STATS

#: What each statistic is, in words (axis labels, reports).
DESCRIPTIONS: dict[str, str] = {
    "grad_norm": "weight-gradient norm ||dL/dW||",
    "signal_norm": "backpropagated signal ||dL/dh||",
    "weight_norm": "weight norm ||W||",
    "update_ratio": "update / weight ratio ||ΔW|| / ||W||",
    "act_mean": "activation mean",
    "act_std": "activation std (all entries)",
    "act_spread": "signal spread (per-unit std across the batch)",
    "saturated": "fraction of saturated outputs",
    "dead": "fraction of dead units",
}


class Profile(Mapping[str, float]):
    """One value per layer, ordered input to output: ``{layer: value}``, read-only.

    ``stat`` says what the values are (a key of :data:`DESCRIPTIONS`, or any short text);
    ``label`` names the run (the legend entry when several profiles are plotted together).
    """

    __slots__ = ("_layers", "_values", "stat", "label")

    def __init__(self, values: Mapping[str, float] | Iterable[tuple[str, float]],
                 stat: str = "", label: str = "") -> None:
        items = list(values.items()) if isinstance(values, Mapping) else list(values)
        layers = [str(k) for k, _ in items]
        if len(set(layers)) != len(layers):
            raise ValueError(f"layer names must be unique, got {layers}")
        try:
            vals = np.array([float(v) for _, v in items], dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise ValueError(f"profile values must be numbers ({err})") from None
        vals.setflags(write=False)
        self._layers: tuple[str, ...] = tuple(layers)
        self._values = vals
        self.stat = str(stat)
        self.label = str(label)

    # -- the mapping --------------------------------------------------------------------------
    def __getitem__(self, layer: str) -> float:
        try:
            return float(self._values[self._layers.index(layer)])
        except ValueError:
            raise KeyError(f"no layer {layer!r}; layers: {list(self._layers)}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._layers)

    def __len__(self) -> int:
        return len(self._layers)

    @property
    def layers(self) -> list[str]:
        """Layer names, input to output."""
        return list(self._layers)

    @property
    def array(self) -> np.ndarray:
        """The values as a read-only float64 array, input to output."""
        return self._values

    def __repr__(self) -> str:
        what = f"{self.stat}, " if self.stat else ""
        label = f"{self.label!r}: " if self.label else ""
        if len(self) <= 6:
            body = ", ".join(f"{k}={v:.3g}" for k, v in self.items())
        else:
            head = ", ".join(f"{k}={v:.3g}" for k, v in list(self.items())[:3])
            body = f"{head}, …, {self._layers[-1]}={self._values[-1]:.3g}"
        return f"Profile({label}{what}{len(self)} layers: {body})"

    # -- the course's operations --------------------------------------------------------------
    def ratio(self, numerator: str, denominator: str) -> float:
        """``self[numerator] / self[denominator]``; NaN when the denominator is 0 or either is not
        finite."""
        a, b = self[numerator], self[denominator]
        if b == 0 or not (math.isfinite(a) and math.isfinite(b)):
            return math.nan
        return a / b

    def first_over_last(self) -> float:
        """The first (input-side) layer's value over the last (output) layer's.

        Lesson 15 shows why this one number can mislead for weight gradients: read it next to
        :meth:`factor` and the signal ``||dL/dh||``."""
        if len(self) < 2:
            raise ValueError(f"a first/last ratio needs at least two layers, got {self.layers}")
        return self.ratio(self._layers[0], self._layers[-1])

    def factor(self, method: str = "fit") -> float:
        """The per-layer factor going from the output back to the input (below 1: shrinking
        toward the input), by a log-linear fit or from the endpoints; see
        :func:`course_lib.gradients.per_step_factor`."""
        return per_step_factor(self._values, method)

    def select(self, layers: Iterable[str]) -> Profile:
        """A profile of the named layers only, in this profile's order."""
        wanted = list(layers)
        unknown = [n for n in wanted if n not in self._layers]
        if unknown:
            raise ValueError(f"unknown layer(s) {unknown}; valid: {list(self._layers)}")
        return Profile([(n, self[n]) for n in self._layers if n in wanted], self.stat, self.label)

    def relabel(self, label: str) -> Profile:
        """The same values under another run label."""
        return Profile(zip(self._layers, self._values), self.stat, label)

    def plot(self, ax: Any = None, **kwargs: Any) -> Any:
        """Draw this profile with :func:`course_lib.plots.gradient_flow`; return the figure."""
        from course_lib.plots import gradient_flow

        return gradient_flow(self, ax=ax, **kwargs)


@dataclass
class Trace:
    """Per-layer statistics at the recorded steps of a run (NumPy arrays, on the CPU).

    ``steps``: the training step of each recorded row. ``layers``: the selected weight layers,
    input to output (forward order). ``act_layers``: the activation sites. ``stats``: for each
    name in :data:`STATS`, an array of shape (recorded steps, layers or activation sites); a value
    that was not measured is NaN. ``loss``: the loss at each recorded step.
    """

    steps: np.ndarray
    layers: list[str]
    act_layers: list[str]
    stats: dict[str, np.ndarray]
    loss: np.ndarray = field(default_factory=lambda: np.empty(0))

    def __len__(self) -> int:
        return len(self.steps)

    def _row(self, step: int) -> int:
        if len(self) == 0:
            raise ValueError("the trace holds no recorded steps")
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)):
            raise ValueError(f"step must be an integer, got {step!r}")
        if step < 0:
            if -step > len(self):
                raise ValueError(f"step {step} reaches before the first of {len(self)} recorded "
                                 "steps")
            return len(self) + int(step)
        hits = np.flatnonzero(self.steps == step)
        if len(hits) == 0:
            shown = ", ".join(str(s) for s in self.steps[:6])
            raise ValueError(f"step {step} was not recorded; recorded steps: {shown}"
                             f"{', …' if len(self) > 6 else ''} (negative values count from "
                             "the last recorded step)")
        return int(hits[0])

    def _check_stat(self, stat: str) -> np.ndarray:
        if stat not in self.stats:
            raise ValueError(f"unknown stat {stat!r}; valid: {', '.join(map(repr, self.stats))}")
        return self.stats[stat]

    def names(self, stat: str) -> list[str]:
        """The layers (or activation sites) that ``stat`` has a value for."""
        self._check_stat(stat)
        return list(self.act_layers if stat in ACTIVATION_STATS else self.layers)

    def profile(self, stat: str = "grad_norm", step: int = -1, label: str = "") -> Profile:
        """``stat`` per layer at one recorded ``step``: a training step number, or a negative
        index counting back from the last recorded step (``-1``, the default, is the last)."""
        values = self._check_stat(stat)
        row = self._row(step)
        return Profile(zip(self.names(stat), values[row]), stat, label)

    def series(self, stat: str, layer: str) -> np.ndarray:
        """``stat`` of one layer at every recorded step (see :attr:`steps`)."""
        names = self.names(stat)
        if layer not in names:
            raise ValueError(f"unknown layer {layer!r} for {stat!r}; valid: {names}")
        return self.stats[stat][:, names.index(layer)].copy()


@dataclass
class History:
    """What :func:`course_lib.train.fit` measured: per-epoch curves, per-step losses, the learning
    rate of each step (when a scheduler was used), the trace."""

    train_loss: list[float] = field(default_factory=list)
    train_acc: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_acc: list[float] = field(default_factory=list)
    step_loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    trace: Trace | None = None
    seconds: float = 0.0

    @property
    def epochs(self) -> int:
        """Number of completed epochs."""
        return len(self.train_loss)
