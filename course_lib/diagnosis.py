"""Diagnose gradient problems of any ``nn.Module`` from one forward and backward pass.

:func:`diagnose` runs one batch through the model with :func:`course_lib.instrument.snapshot`,
plus a hook on the input of every recurrent layer, and reports four kinds of problem:

- ``vanishing``: the backpropagated signal ||dL/dh|| at the first layer is below
  :data:`VANISHING_DECAY` of the largest signal of any layer, or weight gradients are
  tiny next to the weights (||dL/dW|| / ||W|| below :data:`TINY_GRAD_RATIO`), or, in a recurrent
  layer, ||dL/dx_t|| at the first time step is below :data:`TEMPORAL_DECAY` of the last step's.
- ``exploding``: the signal at the first layer is above :data:`EXPLODING_GROWTH` times the
  signal at the last layer, a
  layer's ||dL/dW|| / ||W|| exceeds :data:`HUGE_GRAD_RATIO`, or the loss or a gradient is not finite.
- ``saturation``: more than :data:`SATURATED_FRACTION` of a sigmoid/tanh layer's outputs sit
  where the derivative is below 5 % of its peak.
- ``dead_units``: more than :data:`DEAD_FRACTION` of a layer's units output exactly zero for every
  example of the batch.

Why not the ratio of the first to the last layer's weight-gradient norm? Because it can read
about 1 while everything has vanished: the weight gradient of layer l is the product of the
signal arriving from above and the activation coming from below, and when both shrink by the same
factor per layer (ReLU with Xavier init, tanh with a small weight variance) the two decays cancel
in the ratio. The signal itself, and the gradient's size next to the weight's, do not cancel.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from course_lib.instrument import snapshot
from course_lib.layers import layer_parameters, select_layers

#: A finding ``vanishing`` when the first layer's signal is below this fraction of the largest.
VANISHING_DECAY = 1e-2
#: ... or when a layer's ||dL/dW|| / ||W|| is below this (absolute smallness).
TINY_GRAD_RATIO = 1e-5
#: A finding ``exploding`` when the first layer's signal is above this multiple of the last's.
EXPLODING_GROWTH = 1e3
#: ... or when a layer's ||dL/dW|| / ||W|| is above this (an SGD step at lr 1e-3 would move the
#: weights by more than their own size). Healthy conv stems read up to ~35 on raw N(0, 1) images.
HUGE_GRAD_RATIO = 1e3
#: Recurrent layers: ``vanishing`` when ||dL/dx_first|| / ||dL/dx_last|| is below this.
TEMPORAL_DECAY = 1e-4
#: ``saturation`` when more than this fraction of a sigmoid/tanh layer's outputs are saturated.
SATURATED_FRACTION = 0.25
#: ``dead_units`` when more than this fraction of a layer's units are zero for the whole batch.
DEAD_FRACTION = 0.6

KINDS: tuple[str, ...] = ("vanishing", "exploding", "saturation", "dead_units")

#: The lessons that teach each fix.
LESSONS: dict[str, str] = {
    "02": "02 · saturation",
    "03": "03 · initialization",
    "06": "06 · the ReLU family",
    "07": "07 · Xavier and He initialization",
    "08": "08 · normalization",
    "09": "09 · residual connections",
    "10": "10 · gradient clipping",
    "12": "12 · gating (LSTM, GRU)",
}

_RECURRENT = (nn.RNNBase,)


@dataclass(frozen=True)
class Fix:
    """One suggested fix and the lesson that teaches it (a key of :data:`LESSONS`)."""

    text: str
    lesson: str

    def __str__(self) -> str:
        return f"{self.text} (lesson {LESSONS.get(self.lesson, self.lesson)})"


@dataclass
class Finding:
    """One problem: its ``kind`` (see :data:`KINDS`), the ``layers`` it concerns, the numbers
    behind it (``evidence``), a one-line ``message`` and suggested ``fixes``."""

    kind: str
    layers: list[str]
    evidence: dict[str, float]
    message: str
    fixes: list[Fix] = field(default_factory=list)

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"


@dataclass
class Report:
    """What :func:`diagnose` measured (per layer) and found.

    ``layers``: per weight-bearing layer, input to output, a dict with ``grad_norm``,
    ``signal_norm``, ``weight_norm`` and ``grad_to_weight``. ``activations``: per activation
    module, ``mean``, ``std``, ``saturated``, ``dead``. ``temporal``: per recurrent layer, the
    norm of dL/dx_t per time step. ``loss``: the batch's loss.
    """

    findings: list[Finding]
    layers: dict[str, dict[str, float]]
    activations: dict[str, dict[str, float]]
    temporal: dict[str, list[float]]
    loss: float

    @property
    def healthy(self) -> bool:
        """True when nothing was found."""
        return not self.findings

    @property
    def kinds(self) -> list[str]:
        """The kinds of the findings, in :data:`KINDS` order, without repeats."""
        found = {f.kind for f in self.findings}
        return [k for k in KINDS if k in found]

    def __getitem__(self, kind: str) -> Finding:
        for f in self.findings:
            if f.kind == kind:
                return f
        raise KeyError(f"no {kind!r} finding; found: {self.kinds}")

    # -- rendering -----------------------------------------------------------------------------
    def _layer_rows(self) -> list[list[str]]:
        return [[name, _fmt(s["grad_norm"]), _fmt(s["signal_norm"]), _fmt(s["weight_norm"]),
                 _fmt(s["grad_to_weight"])] for name, s in self.layers.items()]

    def _act_rows(self) -> list[list[str]]:
        return [[name, f"{s['mean']:.3g}", f"{s['std']:.3g}", _pct(s["saturated"]), _pct(s["dead"])]
                for name, s in self.activations.items()]

    def __str__(self) -> str:
        lines = [f"Diagnosis: {'healthy' if self.healthy else ', '.join(self.kinds)} "
                 f"(loss {self.loss:.4g})"]
        for f in self.findings:
            lines.append(f"  [{f.kind}] {f.message}")
            lines.append(f"      layers: {', '.join(f.layers[:8])}"
                         + (f" (+{len(f.layers) - 8} more)" if len(f.layers) > 8 else ""))
            for fix in f.fixes:
                lines.append(f"      fix: {fix}")
        lines.append("")
        lines += _text_table(["layer", "||dL/dW||", "||dL/dh||", "||W||", "grad/weight"],
                             self._layer_rows())
        if self.activations:
            lines.append("")
            lines += _text_table(["activation", "mean", "std", "saturated", "dead"],
                                 self._act_rows())
        for name, steps in self.temporal.items():
            lines.append(f"\n{name}: ||dL/dx_t|| first step {_fmt(steps[0])}, "
                         f"last step {_fmt(steps[-1])} over {len(steps)} steps")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        e = html.escape
        status = ("<b style='color:green'>healthy</b>" if self.healthy else
                  "<b style='color:#b00'>" + e(", ".join(self.kinds)) + "</b>")
        parts = [f"<p>Diagnosis: {status} (loss {self.loss:.4g})</p>"]
        if self.findings:
            parts.append("<table><tr><th>kind</th><th>what</th><th>layers</th><th>fixes</th></tr>")
            for f in self.findings:
                layers = ", ".join(f.layers[:8]) + (" …" if len(f.layers) > 8 else "")
                fixes = "<br>".join(e(str(x)) for x in f.fixes)
                parts.append(f"<tr><td><b>{e(f.kind)}</b></td><td>{e(f.message)}</td>"
                             f"<td>{e(layers)}</td><td style='text-align:left'>{fixes}</td></tr>")
            parts.append("</table>")
        parts.append(_html_table(["layer", "||dL/dW||", "||dL/dh||", "||W||", "grad/weight"],
                                 self._layer_rows()))
        if self.activations:
            parts.append(_html_table(["activation", "mean", "std", "saturated", "dead"],
                                     self._act_rows()))
        return "\n".join(parts)


def _fmt(v: float) -> str:
    return "nan" if v is None or math.isnan(v) else f"{v:.2e}"


def _pct(v: float) -> str:
    return "-" if math.isnan(v) else f"{100 * v:.0f}%"


def _text_table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return [fmt.format(*header), fmt.format(*["-" * w for w in widths])] + [fmt.format(*r) for r in rows]


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


# -- measurements ------------------------------------------------------------------------------
def _temporal_hooks(model: nn.Module, store: dict[str, list[torch.Tensor]]) -> list:
    """Forward hooks on recurrent layers that keep dL/d(input) per time step."""
    handles = []
    for name, module in model.named_modules():
        if not isinstance(module, _RECURRENT):
            continue

        def hook(mod: nn.Module, inputs: tuple, output: object, name: str = name) -> None:
            x = inputs[0] if inputs else None
            if not isinstance(x, torch.Tensor) or not x.requires_grad or x.ndim < 2 \
                    or name in store:
                return
            time_dim = 1 if (x.ndim == 3 and getattr(mod, "batch_first", False)) else 0

            def grad_hook(g: torch.Tensor) -> None:
                g = g.detach().float().transpose(0, time_dim)  # (T, ...)
                store[name] = [float(v) for v in g.reshape(g.shape[0], -1).norm(dim=1)]

            x.register_hook(grad_hook)
            store[name] = []  # placeholder: first call only

        handles.append(module.register_forward_hook(hook))
    return handles


def _signal_extremes(names: list[str], signal: list[float]) -> tuple[float, str, float, str]:
    """Signal decay and growth seen from the input layer.

    ``decay`` = signal at the first layer / the largest signal of any layer (and that layer);
    ``growth`` = signal at the first layer / signal at the last layer (and the last layer).
    Comparing the input end with the output end, rather than every pair of layers, keeps small
    side branches (squeeze-and-excitation, normalization rescaling) from reading as problems.
    """
    valid = [(n, s) for n, s in zip(names, signal) if math.isfinite(s)]
    if len(valid) < 2:
        return 1.0, "", 1.0, ""
    first = valid[0][1]
    top_name, top = max(valid, key=lambda v: v[1])
    last_name, last = valid[-1]
    decay = first / top if top > 0 else 1.0
    growth = first / last if last > 0 else (math.inf if first > 0 else 1.0)
    return decay, top_name, growth, last_name


def _has_saturating(model: nn.Module) -> bool:
    return any(isinstance(m, (nn.Sigmoid, nn.Tanh)) for m in model.modules())


def diagnose(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> Report:
    """One forward and backward pass on ``(x, y)``; a :class:`Report` of what is wrong and what to do.

    Works on any ``nn.Module`` whose output (or the first tensor of it) ``loss_fn(output, y)``
    accepts; ``loss_fn`` defaults to cross-entropy for integer ``y`` and MSE for float ``y``.
    Use a batch of at least 16 examples: with fewer, a ReLU unit can be zero for the whole batch by
    chance. The model's gradients are overwritten; weights and train/eval mode are left as they are.

    Raises:
        ValueError: ``model`` is not an ``nn.Module``, ``x``/``y`` are not tensors with the same
            number of examples, ``loss_fn`` is not callable, or the model has no weights.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise ValueError(f"x and y must be torch.Tensors, got {type(x).__name__} and "
                         f"{type(y).__name__}")
    if x.ndim == 0 or y.ndim == 0 or x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must have the same number of examples (first dimension), got "
                         f"shapes {tuple(x.shape)} and {tuple(y.shape)}")
    if loss_fn is not None and not callable(loss_fn):
        raise ValueError(f"loss_fn must be None (cross-entropy for class indices, MSE for float "
                         f"targets) or a callable loss_fn(output, y), got {type(loss_fn).__name__}")
    if not select_layers(model):
        raise ValueError("the model has no layers with parameters to diagnose")

    if torch.is_floating_point(x):  # lets recurrent layers fed with raw data see dL/dx_t
        x = x.detach().clone().requires_grad_(True)
    temporal: dict[str, list[float]] = {}
    handles = _temporal_hooks(model, temporal)
    losses: list[float] = []

    def _loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        from course_lib.instrument import default_loss
        value = (loss_fn or default_loss)(out, target)
        losses.append(float(value.detach()) if isinstance(value, torch.Tensor)
                      and value.ndim == 0 else math.nan)
        return value

    try:
        trace = snapshot(model, x, y, _loss)
    finally:
        for h in handles:
            h.remove()
    temporal = {k: v for k, v in temporal.items() if v}

    modules = select_layers(model)
    grads, signals = trace.profile("grad_norm", 0), trace.profile("signal_norm", 0)
    layers: dict[str, dict[str, float]] = {}
    for name in trace.layers:
        with torch.no_grad():
            w = math.sqrt(sum(float(p.detach().float().norm()) ** 2
                              for p in layer_parameters(modules[name])))
        g = grads[name]
        layers[name] = {"grad_norm": g, "signal_norm": signals[name], "weight_norm": w,
                        "grad_to_weight": g / w if w > 0 else math.nan}
    acts = {name: {"mean": float(trace.stats["act_mean"][0, i]),
                   "std": float(trace.stats["act_std"][0, i]),
                   "saturated": float(trace.stats["saturated"][0, i]),
                   "dead": float(trace.stats["dead"][0, i])}
            for i, name in enumerate(trace.act_layers)}
    loss = losses[0] if losses else math.nan
    findings = _find(model, layers, acts, temporal, loss)
    return Report(findings=findings, layers=layers, activations=acts, temporal=temporal, loss=loss)


def _find(model: nn.Module, layers: dict[str, dict[str, float]], acts: dict[str, dict[str, float]],
          temporal: dict[str, list[float]], loss: float) -> list[Finding]:
    findings: list[Finding] = []
    names = list(layers)
    signal = [layers[n]["signal_norm"] for n in names]
    ratio = [layers[n]["grad_to_weight"] for n in names]
    recurrent = any(isinstance(m, _RECURRENT) for m in model.modules())
    saturating = _has_saturating(model)

    # exploding first: non-finite numbers make every other rule meaningless
    nonfinite = [n for n in names if not math.isfinite(layers[n]["grad_norm"])]
    decay, d_to, growth, g_to = _signal_extremes(names, signal)
    first = next((n for n, v in zip(names, signal) if math.isfinite(v)), names[0])
    huge = [n for n, r in zip(names, ratio) if math.isfinite(r) and r > HUGE_GRAD_RATIO]
    if not math.isfinite(loss) or nonfinite or growth > EXPLODING_GROWTH or huge:
        evidence = {"signal_growth": growth, "max_grad_to_weight": max(
            (r for r in ratio if math.isfinite(r)), default=math.nan), "loss": loss,
            "nonfinite_layers": float(len(nonfinite))}
        parts = []
        if nonfinite or not math.isfinite(loss):
            parts.append(f"loss {loss:.3g}, {len(nonfinite)} layers with non-finite gradients")
        if growth > EXPLODING_GROWTH:
            parts.append(f"the signal ||dL/dh|| grows {growth:.1e}x from {g_to} back to {first}")
        if huge:
            parts.append(f"||dL/dW||/||W|| up to {evidence['max_grad_to_weight']:.1e}")
        fixes = [Fix("scale the initial weights to the fan-in (He for ReLU, Xavier for tanh)", "07"),
                 Fix("add normalization layers (BatchNorm/LayerNorm)", "08"),
                 Fix("clip the gradient norm to cap steps while you fix the cause", "10")]
        if recurrent:
            fixes.append(Fix("use an orthogonal or smaller recurrent init", "03"))
        findings.append(Finding("exploding", sorted(set(nonfinite + huge + ([first] if growth > EXPLODING_GROWTH else [])),
                                                    key=names.index),
                                evidence, "; ".join(parts), fixes))
        return findings + _activation_findings(acts, saturating)

    tiny = [n for n, r in zip(names, ratio) if math.isfinite(r) and r < TINY_GRAD_RATIO]
    below = []
    if decay < VANISHING_DECAY:
        ref = layers[d_to]["signal_norm"]
        below = [n for n in names[:names.index(d_to)]
                 if layers[n]["signal_norm"] < VANISHING_DECAY * ref]
        below = below or [first]
    if below or tiny:
        evidence = {"signal_decay": decay,
                    "min_grad_to_weight": min((r for r in ratio if math.isfinite(r)),
                                              default=math.nan),
                    "first_over_last_grad": layers[names[0]]["grad_norm"]
                    / max(layers[names[-1]]["grad_norm"], 1e-45)}
        parts = []
        if below:
            parts.append(f"the signal ||dL/dh|| reaching {first} is {decay:.1e} of {d_to}'s")
        if tiny:
            parts.append(f"{len(tiny)} layers have ||dL/dW||/||W|| below {TINY_GRAD_RATIO:.0e} "
                         f"(min {evidence['min_grad_to_weight']:.1e})")
        fixes = []
        if saturating:
            fixes.append(Fix("replace sigmoid/tanh in hidden layers by ReLU-family units", "06"))
        fixes += [Fix("use He init for ReLU, Xavier for tanh: Var[w] = 2/fan_in or "
                      "2/(fan_in+fan_out)", "07"),
                  Fix("add BatchNorm/LayerNorm before the activations", "08"),
                  Fix("add residual connections so the gradient has an identity path", "09")]
        findings.append(Finding("vanishing", sorted(set(below + tiny), key=names.index), evidence,
                                "; ".join(parts), fixes))

    slow = {n: steps for n, steps in temporal.items()
            if len(steps) > 1 and steps[-1] > 0 and steps[0] / steps[-1] < TEMPORAL_DECAY}
    if slow:
        worst = min(slow, key=lambda n: slow[n][0] / slow[n][-1])
        r = slow[worst][0] / slow[worst][-1]
        per_step = r ** (1 / (len(slow[worst]) - 1)) if r > 0 else 0.0
        evidence = {"temporal_decay": r, "per_step_factor": per_step,
                    "steps": float(len(slow[worst]))}
        message = (f"over {len(slow[worst])} time steps ||dL/dx_t|| falls to {r:.1e} of the last "
                   f"step's (x{per_step:.2f} per step) in {worst}")
        fixes = [Fix("use gated cells (LSTM or GRU; forget-gate bias 1)", "12"),
                 Fix("initialize the recurrent weights orthogonally", "03"),
                 Fix("shorten the sequences (truncated BPTT) or add skip connections in time", "09")]
        if "vanishing" in [f.kind for f in findings]:
            f = findings[[f.kind for f in findings].index("vanishing")]
            f.layers += [n for n in slow if n not in f.layers]
            f.evidence.update(evidence)
            f.message += "; " + message
            f.fixes += [x for x in fixes if x not in f.fixes]
        else:
            findings.append(Finding("vanishing", list(slow), evidence, message, fixes))
    return findings + _activation_findings(acts, saturating)


def _activation_findings(acts: dict[str, dict[str, float]], saturating: bool) -> list[Finding]:
    findings = []
    sat = {n: a["saturated"] for n, a in acts.items()
           if math.isfinite(a["saturated"]) and a["saturated"] > SATURATED_FRACTION}
    if sat:
        worst = max(sat.values())
        findings.append(Finding(
            "saturation", list(sat), {"max_saturated": worst, "layers_saturated": float(len(sat))},
            f"{len(sat)} sigmoid/tanh layers have more than {SATURATED_FRACTION:.0%} of outputs "
            f"where the derivative is below 5 % of its peak (worst {worst:.0%})",
            [Fix("see why saturated units pass no gradient", "02"),
             Fix("shrink the initial weights: Xavier init keeps pre-activations near 0", "07"),
             Fix("normalize pre-activations (BatchNorm/LayerNorm)", "08"),
             Fix("use ReLU-family activations in hidden layers", "06")]))
    dead = {n: a["dead"] for n, a in acts.items()
            if math.isfinite(a["dead"]) and a["dead"] > DEAD_FRACTION}
    if dead:
        worst = max(dead.values())
        findings.append(Finding(
            "dead_units", list(dead), {"max_dead": worst, "layers_dead": float(len(dead))},
            f"{len(dead)} layers have more than {DEAD_FRACTION:.0%} of units that output 0 for "
            f"every example (worst {worst:.0%})",
            [Fix("use leaky ReLU, ELU or GELU, which pass gradient for negative inputs", "06"),
             Fix("initialize biases to zero and weights with He init", "07"),
             Fix("check the initialization and the input scale (large negative pre-activations)",
                 "03"),
             Fix("normalize pre-activations so about half the units are active", "08")]))
    return findings
