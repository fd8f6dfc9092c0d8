"""Diagnose gradient problems of any ``nn.Module`` from one forward and backward pass.

``diagnose(model, x, y)`` runs one batch through the model with
:func:`course_lib.instrument.snapshot` (the course's layer selection, hooks that see every call
and functional activations, and its statistics) and returns a :class:`Report`:

- *problems* (:data:`~course_lib.diagnosis_rules.KINDS`): ``vanishing``, ``exploding``,
  ``saturation``, ``dead_units``, each with the layers, the numbers behind it and fixes that fit
  the model, each naming the lesson that teaches it;
- *notes* (:data:`~course_lib.diagnosis_rules.NOTE_KINDS`): what is not being trained and why:
  ``frozen`` (``requires_grad=False``), ``unused`` (no gradient reaches the layer) and
  ``zero_init_branch`` (an exactly-zero or tiny gradient behind a zero- or small-initialised gate
  or scale: LoRA's B, ``zero_init_residual``, layer scale, Fixup, SkipInit, adaLN-Zero, a
  zero-initialised head). These layers are left out of the rules; they are never "vanishing".

It takes what real models take and return: ``x`` is a tensor (``model(x)``), a tuple
(``model(*x)``) or a dict (``model(**x)``); the output may be a tensor, a tuple, a dict or a
dataclass such as Hugging Face's ``ModelOutput``. ``loss_fn(output, y)`` receives the raw output;
without it the loss is cross-entropy (class indices) or MSE (float targets) on the output's
logits, or, with ``y=None``, the ``loss`` the model returns itself (``labels=`` in ``x``).

The rules are scale-free (a loss scaled by 1e-3 or summed over a big batch reads the same); their
thresholds, each with its justification, are in :mod:`course_lib.diagnosis_rules`, and the
calibration table (which rule fires on which model, and why) is in ``docs/diagnose.md``.

Recurrent layers (``nn.RNN``/``nn.LSTM``/``nn.GRU``) and cells called in a loop
(``nn.RNNCell``/``nn.LSTMCell``/``nn.GRUCell``) get a temporal analysis: ||dL/dx_t|| for every
time step (one step per call of a cell).

Why not the ratio of the first to the last layer's weight-gradient norm? Because it can read
about 1 while everything has vanished: the weight gradient of layer l is the product of the
signal arriving from above and the activation coming from below, and when both shrink by the same
factor per layer (ReLU with Xavier init, tanh with a small weight variance) the two decays cancel
in the ratio. The signal itself, the forward spread and the gradient's size next to the weights
and the loss do not cancel.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from course_lib.diagnosis_rules import (
    GATE_GAIN, KINDS, LESSONS, NOTE_KINDS, SMALL_GATE, Architecture, Finding, Fix, Measurements,
    find, statistics,
)
from course_lib.hooks import Hooks
from course_lib.instrument import batch_size, default_loss, output_tensor, snapshot
from course_lib.layers import layer_parameters, select_layers
from course_lib.records import Profile, Trace

__all__ = ["diagnose", "Report", "Finding", "Fix", "KINDS", "NOTE_KINDS", "LESSONS",
           "describe_architecture", "has_skip_connection"]

_RECURRENT = (nn.RNNBase, nn.RNNCellBase)
_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)
#: autograd nodes that apply a weight (a path through one is not an identity path)
_WEIGHT_OPS = ("Mm", "Addmm", "Bmm", "Convolution", "Embedding", "Linear", "Baddbmm", "Matmul")
#: per-layer statistics a report hands out as Profiles
LAYER_PROFILES = ("grad_norm", "signal_norm", "weight_norm", "grad_to_weight", "sensitivity")
SITE_PROFILES = ("act_mean", "act_std", "act_spread", "saturated", "dead")


# -- the report ---------------------------------------------------------------------------------
@dataclass
class Report:
    """What :func:`diagnose` measured and found.

    ``findings``: the problems (kinds in :data:`KINDS`); ``notes``: what is not being trained
    (kinds in :data:`NOTE_KINDS`); ``trace``: the one-step :class:`~course_lib.records.Trace`;
    ``status``: per layer, ``""`` (trained, measured), ``"frozen"``, ``"unused"``,
    ``"zero_init_branch"``, ``"blocked"`` or ``"nonfinite"``; ``temporal``: per recurrent layer
    or cell, ||dL/dx_t|| per time step as a Profile (``"t1"`` .. ``"tT"``); ``loss``.

    Per-layer numbers come as :class:`~course_lib.records.Profile` s: :meth:`profile`, or the
    properties ``grad_norm``, ``signal_norm``, ``weight_norm``, ``grad_to_weight`` and
    ``sensitivity`` (||dL/dW||·||W|| / |loss|); per activation site ``act_spread``,
    ``saturated``, ``dead`` (and ``act_mean``, ``act_std`` through :meth:`profile`).
    ``measures``: every number the rules compared with a threshold
    (:func:`course_lib.diagnosis_rules.statistics`), whether or not a rule fired.
    """

    findings: list[Finding]
    notes: list[Finding]
    trace: Trace
    weight: Profile
    status: dict[str, str]
    temporal: dict[str, Profile]
    loss: float
    architecture: Architecture = field(default_factory=Architecture)
    measures: dict[str, float] = field(default_factory=dict)

    # -- reading it ----------------------------------------------------------------------------
    @property
    def healthy(self) -> bool:
        """True when no problem was found (notes do not count)."""
        return not self.findings

    @property
    def kinds(self) -> list[str]:
        """The kinds of the problems found, in :data:`KINDS` order."""
        found = {f.kind for f in self.findings}
        return [k for k in KINDS if k in found]

    @property
    def note_kinds(self) -> list[str]:
        """The kinds of the notes, in :data:`NOTE_KINDS` order."""
        found = {f.kind for f in self.notes}
        return [k for k in NOTE_KINDS if k in found]

    def __getitem__(self, kind: str) -> Finding:
        for f in self.findings + self.notes:
            if f.kind == kind:
                return f
        raise KeyError(f"no {kind!r} finding; found: {self.kinds + self.note_kinds}")

    def __contains__(self, kind: object) -> bool:
        return kind in self.kinds or kind in self.note_kinds

    @property
    def layers(self) -> list[str]:
        """The measured layers, input to output."""
        return list(self.trace.layers)

    @property
    def activations(self) -> list[str]:
        """The activation sites (modules and functional calls), in the order first seen."""
        return list(self.trace.act_layers)

    def profile(self, stat: str) -> Profile:
        """One statistic per layer (:data:`LAYER_PROFILES`) or per activation site
        (:data:`SITE_PROFILES`) as a Profile."""
        if stat == "weight_norm":
            return self.weight
        if stat == "grad_to_weight":
            g = self.trace.profile("grad_norm")
            return Profile(((n, g[n] / w if w > 0 else math.nan) for n, w in self.weight.items()),
                           "||dL/dW|| / ||W||")
        if stat == "sensitivity":
            g = self.trace.profile("grad_norm")
            scale = abs(self.loss) if math.isfinite(self.loss) and self.loss != 0 else math.nan
            return Profile(((n, g[n] * w / scale) for n, w in self.weight.items()),
                           "||dL/dW||·||W|| / |loss|")
        if stat in ("grad_norm", "signal_norm") or stat in SITE_PROFILES:
            return self.trace.profile(stat)
        raise ValueError(f"unknown stat {stat!r}; valid: "
                         f"{', '.join(map(repr, LAYER_PROFILES + SITE_PROFILES))}")

    grad_norm = property(lambda self: self.profile("grad_norm"), doc="||dL/dW|| per layer.")
    signal_norm = property(lambda self: self.profile("signal_norm"), doc="||dL/dh|| per layer.")
    weight_norm = property(lambda self: self.weight, doc="||W|| per layer.")
    grad_to_weight = property(lambda self: self.profile("grad_to_weight"),
                              doc="||dL/dW|| / ||W|| per layer.")
    sensitivity = property(lambda self: self.profile("sensitivity"),
                           doc="||dL/dW||·||W|| / |loss| per layer (scale-free).")
    act_spread = property(lambda self: self.profile("act_spread"),
                          doc="Per-unit spread across the batch, per activation site.")
    saturated = property(lambda self: self.profile("saturated"),
                         doc="Saturated fraction per activation site (sigmoid/tanh).")
    dead = property(lambda self: self.profile("dead"), doc="Dead fraction per activation site.")

    # -- rendering -----------------------------------------------------------------------------
    def _verdict(self) -> str:
        return "healthy" if self.healthy else ", ".join(self.kinds)

    def __repr__(self) -> str:
        notes = f"; notes: {', '.join(self.note_kinds)}" if self.notes else ""
        return (f"Report({self._verdict()}{notes}; {len(self.layers)} layers, "
                f"{len(self.activations)} activation sites, loss {self.loss:.4g})")

    def _layer_rows(self, limit: int) -> list[list[str]]:
        g, s, r = self.grad_norm, self.signal_norm, self.sensitivity
        names = _shown(self.layers, limit)
        return [["…", "", "", "", ""] if n is None else
                [n, _fmt(g[n]), _fmt(s[n]), _fmt(r[n]), self.status.get(n, "")] for n in names]

    def _site_rows(self, limit: int) -> list[list[str]]:
        if not self.activations:
            return []
        sp, sat, dead = self.act_spread, self.saturated, self.dead
        names = _shown(self.activations, limit)
        return [["…", "", "", ""] if n is None else
                [n, _fmt(sp[n]), _pct(sat[n]), _pct(dead[n])] for n in names]

    def to_text(self, limit: int = 12) -> str:
        """The report as text: verdict, findings with fixes, notes, then short tables of at most
        ``limit`` layers and activation sites (the first and last ones)."""
        lines = [f"Diagnosis: {self._verdict()} (loss {self.loss:.4g})"]
        for f in self.findings:
            lines.append(f"  [{f.kind}] {f.message}")
            lines.append(f"      where: {_names(f.layers)}")
            lines += [f"      fix: {fix}" for fix in f.fixes]
        for f in self.notes:
            lines.append(f"  note [{f.kind}] {f.message}")
        lines.append("")
        lines += _text_table(["layer", "||dL/dW||", "||dL/dh||", "sensitivity", "status"],
                             self._layer_rows(limit))
        sites = self._site_rows(limit)
        if sites:
            lines.append("")
            lines += _text_table(["activation", "spread", "saturated", "dead"], sites)
        for name, steps in self.temporal.items():
            v = steps.array
            lines.append(f"\n{name}: ||dL/dx_t|| {_fmt(v[0])} at the first of {len(v)} steps, "
                         f"{_fmt(v[-1])} at the last")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_text()

    def _repr_html_(self) -> str:
        e = html.escape
        colour = "green" if self.healthy else "#b00"
        parts = [f"<p><b>Diagnosis: <span style='color:{colour}'>{e(self._verdict())}</span></b>"
                 f" (loss {self.loss:.4g}; {len(self.layers)} layers, {len(self.activations)} "
                 "activation sites)</p>"]
        rows = [(f.kind, f.message, _names(f.layers), "<br>".join(e(str(x)) for x in f.fixes))
                for f in self.findings]
        rows += [(f"note: {f.kind}", f.message, _names(f.layers), "") for f in self.notes]
        if rows:
            parts.append("<table><tr><th>finding</th><th>what</th><th>where</th><th>fixes</th>"
                         "</tr>" + "".join(
                             f"<tr><td><b>{e(k)}</b></td><td style='text-align:left'>{e(m)}</td>"
                             f"<td style='text-align:left'>{e(w)}</td>"
                             f"<td style='text-align:left'>{fx}</td></tr>"
                             for k, m, w, fx in rows) + "</table>")
        parts.append(_html_table(["layer", "||dL/dW||", "||dL/dh||", "sensitivity", "status"],
                                 self._layer_rows(12)))
        sites = self._site_rows(8)
        if sites:
            parts.append(_html_table(["activation", "spread", "saturated", "dead"], sites))
        return "\n".join(parts)


def _shown(names: list[str], limit: int) -> list[str | None]:
    if len(names) <= limit:
        return list(names)
    head = limit // 2
    return names[:head] + [None] + names[-(limit - head - 1):]


def _names(names: list[str], limit: int = 6) -> str:
    more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _fmt(v: float) -> str:
    return "nan" if v is None or not math.isfinite(v) else f"{v:.2e}"


def _pct(v: float) -> str:
    return "-" if not math.isfinite(v) else f"{100 * v:.0f}%"


def _text_table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" if i in (0, len(header) - 1) else f"{{:>{w}}}"
                    for i, w in enumerate(widths))
    return [fmt.format(*header).rstrip(), fmt.format(*["-" * w for w in widths])] + \
        [fmt.format(*r).rstrip() for r in rows]


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


# -- what goes in -------------------------------------------------------------------------------
def _check(model: Any, x: Any, y: Any, loss_fn: Any) -> None:
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(x, (torch.Tensor, tuple, list, Mapping)):
        raise ValueError(f"x must be a torch.Tensor (model(x)), a tuple or list (model(*x)) or a "
                         f"dict (model(**x)), got {type(x).__name__}")
    n = batch_size(x)
    if y is not None:
        if not isinstance(y, torch.Tensor):
            raise ValueError(f"y must be a torch.Tensor or None, got {type(y).__name__}")
        if y.ndim == 0 or y.shape[0] != n:
            raise ValueError(f"x and y must have the same number of examples (first dimension), "
                             f"got {n} and {tuple(y.shape)}")
    if loss_fn is not None and not callable(loss_fn):
        raise ValueError(f"loss_fn must be None (cross-entropy for class indices, MSE for float "
                         f"targets, the model's own loss when y is None) or a callable "
                         f"loss_fn(output, y), got {type(loss_fn).__name__}")
    if not select_layers(model):
        raise ValueError("the model has no layers with parameters to diagnose (a main-path "
                         "layer owns a weight of two or more dimensions)")


def _own_loss(output: Any) -> torch.Tensor:
    """The loss a model computed itself (``output.loss`` or ``output["loss"]``)."""
    loss = output.get("loss") if isinstance(output, Mapping) else getattr(output, "loss", None)
    if not isinstance(loss, torch.Tensor):
        raise ValueError(f"y is None and the model's output ({type(output).__name__}) holds no "
                         "loss: pass targets y, a loss_fn(output, y), or inputs that make the "
                         "model compute its loss (e.g. labels=... in the dict x)")
    return loss


def _make_loss(loss_fn: Callable | None, y: Any) -> Callable[[Any, Any], torch.Tensor]:
    if loss_fn is not None:
        return loss_fn
    if y is None:
        return lambda out, _: _own_loss(out)

    def loss(out: Any, target: torch.Tensor) -> torch.Tensor:
        try:
            logits = output_tensor(out)
        except ValueError:
            raise ValueError(f"the model's output ({type(out).__name__}) holds no tensor: pass "
                             "loss_fn(output, y) that computes the loss from it") from None
        return default_loss(logits, target)
    return loss


def _with_input_grad(x: Any) -> Any:
    """``x`` with its floating-point tensors as fresh leaves that require grad (so that a
    recurrent layer fed with raw data sees dL/dx_t); the caller's tensors are untouched."""
    if isinstance(x, torch.Tensor):
        return x.detach().clone().requires_grad_(True) if torch.is_floating_point(x) else x
    if isinstance(x, Mapping):
        return {k: _with_input_grad(v) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(_with_input_grad(v) for v in x)
    return x


# -- what the model is built of -----------------------------------------------------------------
def _walk(start: Any, budget: int, through_weights: bool) -> set[int]:
    """Autograd nodes reachable from ``start``: with ``through_weights=False`` only through nodes
    that apply no weight (and ``start`` itself if it applies none); with ``True``, the nodes
    reached after passing at least one weight."""
    found: set[int] = set()
    stack, seen = [(start, False)], set()
    while stack and budget > 0:
        node, passed = stack.pop()
        budget -= 1
        weight = any(op in type(node).__name__ for op in _WEIGHT_OPS)
        if not through_weights and weight:
            continue
        passed = passed or weight
        if not through_weights or passed:
            found.add(id(node))
        for nxt, _ in node.next_functions:
            if nxt is not None and (id(nxt), passed) not in seen:
                seen.add((id(nxt), passed))
                stack.append((nxt, passed))
    return found


def has_skip_connection(loss: torch.Tensor, max_joins: int = 256) -> bool:
    """Whether the autograd graph of ``loss`` holds a skip connection: an Add (residual) or Cat
    (dense) node one of whose inputs reaches, without passing a weight, a node that its other
    input reaches only through a weight (``x + F(x)``, ``cat([x, F(x)])``)."""
    if loss.grad_fn is None:
        return False
    joins, stack, seen = [], [loss.grad_fn], {id(loss.grad_fn)}
    while stack and len(seen) < 50_000 and len(joins) < max_joins:
        node = stack.pop()
        if type(node).__name__.startswith(("AddBackward", "CatBackward")):
            joins.append(node)
        for nxt, _ in node.next_functions:
            if nxt is not None and id(nxt) not in seen:
                seen.add(id(nxt))
                stack.append(nxt)
    for node in joins:
        inputs = [n for n, _ in node.next_functions if n is not None]
        for i, a in enumerate(inputs):
            identity = _walk(a, 64, through_weights=False)
            if not identity:
                continue
            for b in inputs[:i] + inputs[i + 1:]:
                if identity & _walk(b, 600, through_weights=True):
                    return True
    return False


def describe_architecture(model: nn.Module, skip: bool = False,
                          kinds: list[str] | None = None) -> Architecture:
    """What ``model`` is built of: normalization, attention, recurrent types (from its modules),
    whether most activation ``kinds`` saturate, and ``skip`` (measured by :func:`diagnose`)."""
    modules = list(model.modules())
    names = [type(m).__name__ for m in modules]
    kinds = kinds or []
    return Architecture(
        skip=skip,
        batchnorm=any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in modules),
        norm=any(isinstance(m, _NORM_TYPES) or "Norm" in n for m, n in zip(modules, names)),
        attention=any(isinstance(m, nn.MultiheadAttention) or "Attention" in n
                      for m, n in zip(modules, names)),
        saturating=bool(kinds) and sum(k in ("sigmoid", "tanh") for k in kinds) > len(kinds) / 2,
        vanilla_rnn=any(isinstance(m, (nn.RNN, nn.RNNCell)) for m in modules),
        lstm=any(isinstance(m, (nn.LSTM, nn.LSTMCell)) for m in modules),
        gru=any(isinstance(m, (nn.GRU, nn.GRUCell)) for m in modules),
    )


class _Probe:
    """During the diagnosed pass: ||dL/dx_t|| per time step of every recurrent layer (its first
    call) and cell (one step per call)."""

    def __init__(self, model: nn.Module) -> None:
        self.recurrent = {n: m for n, m in model.named_modules() if isinstance(m, _RECURRENT)}
        self.steps: dict[str, dict[int, float]] = {}
        self._hooks = [Hooks(self.recurrent, self._on_recurrent)]

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()

    def _on_recurrent(self, name: str, module: nn.Module, inputs: tuple, output: Any) -> None:
        x = inputs[0] if inputs else None
        if not isinstance(x, torch.Tensor) or not x.requires_grad or not torch.is_grad_enabled():
            return
        store = self.steps.setdefault(name, {})
        if isinstance(module, nn.RNNCellBase):
            index = len(store)
            store[index] = math.nan

            def cell_hook(g: torch.Tensor, i: int = index) -> None:
                store[i] = float(g.detach().double().norm())
            x.register_hook(cell_hook)
            return
        if store or x.ndim < 2:
            return  # a layer's first call only
        time_dim = 1 if (x.ndim == 3 and module.batch_first) else 0

        def seq_hook(g: torch.Tensor) -> None:
            g = g.detach().double().transpose(0, time_dim)
            for t, v in enumerate(g.reshape(g.shape[0], -1).norm(dim=1).tolist()):
                store[t] = v
        store[-1] = math.nan  # marks the first call as taken
        x.register_hook(seq_hook)

    def temporal(self) -> dict[str, Profile]:
        out = {}
        for name, store in self.steps.items():
            values = [store[t] for t in sorted(store) if t >= 0]
            if len(values) >= 2:
                out[name] = Profile(((f"t{t + 1}", v) for t, v in enumerate(values)),
                                    "||dL/dx_t||", name)
        return out


# -- gates --------------------------------------------------------------------------------------
def _gate_candidates(model: nn.Module) -> dict[str, nn.Parameter]:
    """Trainable non-bias parameters that are all zeros, or vectors (one non-trivial dimension)
    whose entries are all at most :data:`SMALL_GATE` in size."""
    found = {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not p.requires_grad or p.numel() == 0 or name.rsplit(".", 1)[-1] == "bias":
                continue
            top = float(p.detach().abs().max())
            vector = p.numel() == max(p.shape, default=1)
            if top == 0 or (vector and top <= SMALL_GATE):
                found[name] = p
    return found


def _open(p: nn.Parameter) -> None:
    """A zero or tiny gate opened: a scale or a vector to 1, a matrix to the default init."""
    if p.numel() == max(p.shape, default=1):
        p.fill_(1.0)
    else:
        fan_in = p[0].numel()
        p.normal_(0.0, 1.0 / math.sqrt(fan_in))


def _behind_gates(model: nn.Module, x: Any, y: Any, loss: Callable, grad: Profile,
                  candidates: dict[str, nn.Parameter]) -> tuple[list[str], list[str]]:
    """The layers whose gradient is exactly zero or tiny because of a gate, found by opening
    every candidate gate and measuring again (the model is restored afterwards), and the gates
    that mattered."""
    saved = {n: p.detach().clone() for n, p in candidates.items()}
    try:
        with torch.no_grad():
            for p in candidates.values():
                _open(p)
        opened = snapshot(model, x, y, loss, functional=False).profile("grad_norm")
    finally:
        with torch.no_grad():
            for n, p in candidates.items():
                p.copy_(saved[n])
        model.zero_grad(set_to_none=True)
    behind = [n for n in grad.layers if math.isfinite(grad[n]) and math.isfinite(opened[n])
              and opened[n] > 0 and (grad[n] == 0 or opened[n] >= GATE_GAIN * grad[n])]
    gates = sorted(saved, key=lambda n: float(saved[n].abs().max()) > 0) if behind else []
    return behind, gates


# -- diagnose -----------------------------------------------------------------------------------
def diagnose(model: nn.Module, x: Any, y: torch.Tensor | None = None,
             loss_fn: Callable[[Any, Any], torch.Tensor] | None = None) -> Report:
    """One forward and backward pass on ``(x, y)``; a :class:`Report` of what is wrong, what is
    not trained, and what to do.

    Args:
        x: a tensor (``model(x)``), a tuple or list (``model(*x)``) or a dict (``model(**x)``).
        y: targets; ``None`` when ``loss_fn`` does not need them or the model computes its own
            loss (``output.loss``, e.g. ``labels=`` in ``x``).
        loss_fn: ``loss_fn(output, y)`` on the model's raw output (tensor, tuple, dict or
            ``ModelOutput``); default cross-entropy for class indices, MSE for float targets, on
            the output's logits.

    Use a batch of at least 16 examples: with fewer, a ReLU unit can be zero for the whole batch
    by chance. The model's gradients are overwritten; its weights and train/eval mode are left as
    they are.

    Raises:
        ValueError: ``model`` is not an ``nn.Module``; ``x`` is not a tensor, tuple, list or dict
            of tensors; ``y`` does not match ``x``'s batch; ``loss_fn`` is not callable; the model
            has no weights; or the output holds no tensor (or, with ``y=None``, no loss).
    """
    _check(model, x, y, loss_fn)
    measured_loss = _make_loss(loss_fn, y)
    skip: list[bool] = []

    def loss(output: Any, target: Any) -> torch.Tensor:
        value = measured_loss(output, target)
        if not skip and isinstance(value, torch.Tensor):
            skip.append(has_skip_connection(value))
        return value

    probe = _Probe(model)
    x_in = _with_input_grad(x) if probe.recurrent else x
    try:
        trace = snapshot(model, x_in, y, loss, functional=True)
    finally:
        probe.remove()
    modules = select_layers(model)
    grad = trace.profile("grad_norm")
    status, weight, nonfinite = _layer_status(trace.layers, modules, grad)
    loss_value = float(trace.loss[0])

    notes: list[Finding] = []
    frozen = [n for n in trace.layers if status[n] == "frozen"]
    if frozen:
        notes.append(Finding("frozen", frozen, {"layers": float(len(frozen))},
                             f"{len(frozen)} layer(s) have requires_grad=False: not trained, by "
                             "your choice; left out of the rules"))
    unused = [n for n in trace.layers if status[n] == "unused"]
    if unused:
        notes.append(Finding("unused", unused, {"layers": float(len(unused))},
                             f"{len(unused)} layer(s) received no gradient (None): they are not "
                             "on the path from this input to the loss (an unused module, a "
                             "detach, or a branch this input does not take)"))
    zeros = [n for n in trace.layers if status[n] == "" and grad[n] == 0]
    candidates = _gate_candidates(model)
    small = [n for n, p in candidates.items() if float(p.detach().abs().max()) > 0]
    behind: list[str] = []
    if candidates and (zeros or small) and math.isfinite(loss_value):
        behind, gates = _behind_gates(model, x_in, y, measured_loss, grad, candidates)
        for n in behind:
            if status[n] == "":
                status[n] = "zero_init_branch"
        if behind:
            notes.append(Finding(
                "zero_init_branch", behind, {"layers": float(len(behind)),
                                             "gates": float(len(gates))},
                f"{len(behind)} layer(s) have a zero or tiny gradient behind zero- or "
                f"small-initialised gates or scales ({_names(gates, 4)}): by design (LoRA's B, "
                "zero-init residual, layer scale, SkipInit, adaLN-Zero, a zero head); they learn "
                "once the gate moves, and are left out of the rules"))
    blocked = [n for n in trace.layers if status[n] == "" and grad[n] == 0]
    for n in blocked:
        status[n] = "blocked"
    for n in nonfinite:
        status[n] = "nonfinite"

    usable = np.array([status[n] == "" for n in trace.layers])
    signal = np.where(usable, trace.profile("signal_norm").array, np.nan)
    grads = np.where(usable, grad.array, np.nan)
    kinds = _site_kinds(model, trace)
    measured = Measurements(
        layers=list(trace.layers), signal=signal, grad=grads, weight=weight.array,
        loss=loss_value, sites=list(trace.act_layers), kinds=kinds,
        spread=trace.profile("act_spread").array, saturated=trace.profile("saturated").array,
        dead=trace.profile("dead").array,
        temporal={n: p.array for n, p in probe.temporal().items()},
        arch=describe_architecture(model, bool(skip and skip[0]), kinds), nonfinite=nonfinite,
        blocked=blocked)
    findings = find(measured)
    return Report(findings=findings, notes=notes, trace=trace, weight=weight, status=status,
                  temporal=probe.temporal(), loss=loss_value, architecture=measured.arch,
                  measures=statistics(measured))


def _layer_status(layers: list[str], modules: dict[str, nn.Module], grad: Profile
                  ) -> tuple[dict[str, str], Profile, list[str]]:
    """Per layer: frozen / unused / "" from its parameters, ||W||, and the layers whose gradient
    holds a NaN or an infinity."""
    status, weights, nonfinite = {}, [], []
    with torch.no_grad():
        for name in layers:
            params = layer_parameters(modules[name]) if name in modules else []
            weights.append((name, math.sqrt(sum(float(p.detach().double().norm()) ** 2
                                                for p in params)) if params else math.nan))
            if params and not any(p.requires_grad for p in params):
                status[name] = "frozen"
            elif params and all(p.grad is None for p in params):
                status[name] = "unused"
            else:
                status[name] = ""
                if any(p.grad is not None and not bool(torch.isfinite(p.grad).all())
                       for p in params):
                    nonfinite.append(name)
    return status, Profile(weights, "weight_norm"), nonfinite


def _site_kinds(model: nn.Module, trace: Trace) -> list[str]:
    """The activation kind of every site of ``trace`` (``"owner.kind#k"`` names a functional
    site; a module site's kind comes from its module)."""
    from course_lib.hooks import activation_kind

    modules = dict(model.named_modules())
    kinds = []
    for site in trace.act_layers:
        if site in modules:
            kinds.append(activation_kind(modules[site]))
        else:
            kinds.append(site.rsplit(".", 1)[-1].split("#")[0])
    return kinds
