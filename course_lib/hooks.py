"""Hooks that do one job: call a function on every forward call, and remove themselves.

- :class:`Hooks`: forward hooks on named modules; ``fn(name, module, inputs, output)`` runs on
  *every* call of each module (a ReLU module used twice in a block is seen twice). A context
  manager; :meth:`Hooks.remove` is idempotent.
- :class:`ActivationCapture`: every activation output of a model, from activation modules *and*
  from functional activations called inside ``forward`` (``torch.sigmoid``, ``torch.tanh``,
  ``F.relu``, ``F.gelu``, ``x.sigmoid()``, ...), the latter seen through a
  ``torch.overrides.TorchFunctionMode`` and named after the module that called them
  (``block3.sigmoid``; the second call of the same kind in one call of that module is
  ``block3.sigmoid#2``, so ``for fc in self.layers: x = torch.sigmoid(fc(x))`` gives one site per
  depth, while a cell called once per time step pools its steps into one site).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from course_lib.layers import ACTIVATION_TYPES, IdentityActivation, activation_modules

#: What kind of activation each module type is (the name used for saturation and dead units).
MODULE_KINDS: dict[type[nn.Module], str] = {
    nn.Sigmoid: "sigmoid", nn.Tanh: "tanh", nn.ReLU: "relu", nn.ReLU6: "relu6",
    nn.LeakyReLU: "leaky_relu", nn.PReLU: "prelu", nn.RReLU: "rrelu", nn.ELU: "elu",
    nn.CELU: "celu", nn.SELU: "selu", nn.GELU: "gelu", nn.SiLU: "silu", nn.Mish: "mish",
    nn.Softplus: "softplus", nn.Hardtanh: "hardtanh", nn.Hardswish: "hardswish",
    nn.Hardsigmoid: "hardsigmoid", nn.Softsign: "softsign", nn.Tanhshrink: "tanhshrink",
    nn.LogSigmoid: "logsigmoid", IdentityActivation: "identity",
}

#: Functional activations seen inside ``forward``, and their kind.
FUNCTIONAL_KINDS: dict[Callable, str] = {
    torch.sigmoid: "sigmoid", torch.Tensor.sigmoid: "sigmoid", F.sigmoid: "sigmoid",
    torch.tanh: "tanh", torch.Tensor.tanh: "tanh", F.tanh: "tanh",
    torch.relu: "relu", torch.Tensor.relu: "relu", F.relu: "relu", F.relu6: "relu6",
    F.leaky_relu: "leaky_relu", F.elu: "elu", F.celu: "celu", F.selu: "selu", torch.selu: "selu",
    F.gelu: "gelu", F.silu: "silu", F.mish: "mish", F.softplus: "softplus",
    F.hardtanh: "hardtanh", F.hardswish: "hardswish", F.hardsigmoid: "hardsigmoid",
    F.logsigmoid: "logsigmoid", F.softsign: "softsign",
}


def activation_kind(module: nn.Module) -> str:
    """The kind of an activation module (``"sigmoid"``, ``"relu"``, ...); its class name in lower
    case for an activation type the course does not name."""
    for cls in type(module).__mro__:
        if cls in MODULE_KINDS:
            return MODULE_KINDS[cls]
    return type(module).__name__.lower()


class Hooks:
    """Forward hooks on ``modules`` (``{name: module}``) that call ``fn(name, module, inputs,
    output)`` on every call; with ``pre=True``, forward pre-hooks that call ``fn(name, module,
    inputs)`` before it. ``fn``'s return value is ignored (it never replaces an input or an
    output). Removed on leaving the ``with`` block (also after an exception) or by
    :meth:`remove`, which may be called more than once."""

    def __init__(self, modules: Mapping[str, nn.Module] | Iterable[tuple[str, nn.Module]],
                 fn: Callable[..., None], *, pre: bool = False) -> None:
        items = modules.items() if isinstance(modules, Mapping) else modules
        self._handles = []
        for name, module in items:
            if not isinstance(module, nn.Module):
                raise ValueError(f"{name!r} is a {type(module).__name__}, not an nn.Module")
            if pre:
                self._handles.append(module.register_forward_pre_hook(_pre(fn, name)))
            else:
                self._handles.append(module.register_forward_hook(_post(fn, name)))

    def remove(self) -> None:
        """Remove every hook (idempotent)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> Hooks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __len__(self) -> int:
        return len(self._handles)


def _pre(fn: Callable[..., None], name: str) -> Callable:
    def hook(module: nn.Module, inputs: tuple) -> None:
        fn(name, module, inputs)  # a hook that returned a value would replace the inputs
    return hook


def _post(fn: Callable[..., None], name: str) -> Callable:
    def hook(module: nn.Module, inputs: tuple, output: Any) -> None:
        fn(name, module, inputs, output)  # ... or the output
    return hook


class _FunctionalMode(TorchFunctionMode):
    """Passes the output of each functional activation to ``fn(kind, output)`` while ``active()``
    says so."""

    def __init__(self, fn: Callable[[str, torch.Tensor], None],
                 active: Callable[[], bool]) -> None:
        super().__init__()
        self._fn, self._active = fn, active

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (),
                           kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        kind = FUNCTIONAL_KINDS.get(func)
        if kind is not None and isinstance(out, torch.Tensor) and self._active():
            self._fn(kind, out)
        return out


class ActivationCapture:
    """While active (a ``with`` block), calls ``fn(site, kind, output)`` for every activation
    output of ``model``'s forward passes.

    ``site`` is the activation module's name for module activations (every call) and
    ``"<module>.<kind>"`` for a functional activation, where ``<module>`` is the innermost module
    that called it (just ``"<kind>"`` at the top level); the k-th call (k >= 2) of the same kind
    within one call of that module is ``"<module>.<kind>#k"``. A functional call made *inside* an
    activation module (``nn.Sigmoid`` calls ``torch.sigmoid``) is not counted twice. With
    ``functional=False`` only activation modules are seen, and no function mode is entered.
    ``modules`` may pass the activation modules (``{name: module}``) when the caller already
    has them.
    """

    def __init__(self, model: nn.Module, fn: Callable[[str, str, torch.Tensor], None], *,
                 functional: bool = True, modules: Mapping[str, nn.Module] | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model, self._fn, self._functional = model, fn, functional
        self._acts = dict(modules) if modules is not None else activation_modules(model)
        self._hooks: list[Hooks] = []
        self._mode: _FunctionalMode | None = None
        self._stack: list[str] = []
        self._counts: list[dict[str, int]] = []  # functional calls per kind, per open module call
        self._in_activation = 0

    def start(self) -> ActivationCapture:
        """Attach the hooks (and enter the function mode); :meth:`remove` undoes it."""
        kinds = {name: activation_kind(m) for name, m in self._acts.items()}

        def on_act(name: str, module: nn.Module, inputs: tuple, output: Any) -> None:
            if self._functional:
                self._in_activation -= 1
            if isinstance(output, torch.Tensor) and output.numel() > 0:
                self._fn(name, kinds[name], output)

        def act_pre(name: str, module: nn.Module, inputs: tuple) -> None:
            self._in_activation += 1

        try:
            if self._functional:
                names = {m: (n or "") for n, m in self.model.named_modules()}
                self._hooks.append(Hooks(((n, m) for m, n in names.items()), self._enter_module,
                                         pre=True))
                self._hooks.append(Hooks(((n, m) for m, n in names.items()), self._leave_module))
            if self._functional:  # to tell nn.Sigmoid's own torch.sigmoid from a functional one
                self._hooks.append(Hooks(self._acts, act_pre, pre=True))
            self._hooks.append(Hooks(self._acts, on_act))
            if self._functional:
                self._mode = _FunctionalMode(self._on_functional,
                                             lambda: self._in_activation == 0)
                self._mode.__enter__()
        except BaseException:
            self.remove()
            raise
        return self

    def _enter_module(self, name: str, module: nn.Module, inputs: tuple) -> None:
        self._stack.append(name)
        self._counts.append({})

    def _leave_module(self, name: str, module: nn.Module, inputs: tuple, output: Any) -> None:
        if self._stack:
            self._stack.pop()
            self._counts.pop()

    def _on_functional(self, kind: str, output: torch.Tensor) -> None:
        if not self._stack or output.numel() == 0:
            return  # outside the model's forward (e.g. in a loss function)
        owner, counts = self._stack[-1], self._counts[-1]
        counts[kind] = k = counts.get(kind, 0) + 1
        site = f"{owner}.{kind}" if owner else kind
        self._fn(site if k == 1 else f"{site}#{k}", kind, output)

    def remove(self) -> None:
        """Leave the function mode and remove every hook (idempotent)."""
        if self._mode is not None:
            mode, self._mode = self._mode, None
            mode.__exit__(None, None, None)
        for hooks in self._hooks:
            hooks.remove()
        self._hooks.clear()
        self._stack.clear()
        self._counts.clear()
        self._in_activation = 0

    def __enter__(self) -> ActivationCapture:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.remove()


def is_activation(module: nn.Module) -> bool:
    """Whether ``module`` is one of the activation types the course measures."""
    return isinstance(module, ACTIVATION_TYPES)
