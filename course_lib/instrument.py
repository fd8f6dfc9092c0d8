"""Per-layer statistics of any ``nn.Module`` through forward and backward hooks.

What is measured, per *weight-bearing* layer (any module with parameters of its own that is not
an activation: Linear, Conv, RNN/LSTM/GRU, BatchNorm/LayerNorm, ...):

- ``grad_norm``: L2 norm of the gradient of its weights (parameters whose name starts with
  ``weight``, or all of its own parameters when none does);
- ``signal_norm``: L2 norm of dL/d(output of the layer), the backpropagated signal;
- ``weight_norm`` and ``update_ratio`` = ||w_after - w_before|| / ||w_after|| per optimizer step;

and per activation module (Sigmoid, Tanh, ReLU family, GELU, SiLU, ...):

- ``act_mean``, ``act_std`` of its output;
- ``saturated``: fraction of outputs where the local derivative is below 5 % of its peak
  (sigmoid/tanh only; NaN for other activations);
- ``dead``: fraction of units whose output is exactly zero for every example in the batch.

Statistics stay on the model's device as tensors; nothing is copied to the host until
:meth:`Recorder.trace` is called, so recording costs no host synchronization per layer per step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

#: Module types treated as activation functions (their outputs are the "activations").
ACTIVATION_TYPES: tuple[type[nn.Module], ...] = (
    nn.Sigmoid, nn.Tanh, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.CELU,
    nn.SELU, nn.GELU, nn.SiLU, nn.Mish, nn.Softplus, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid,
    nn.Identity,
)

#: Fraction of the derivative's peak below which a sigmoid/tanh unit counts as saturated.
SATURATION_THRESHOLD = 0.05


def _saturation_mask(module: nn.Module, out: torch.Tensor) -> torch.Tensor | None:
    """Boolean mask of saturated outputs, from the output alone; None for non-saturating types."""
    if isinstance(module, nn.Sigmoid):  # sigmoid' = s (1 - s), peak 1/4
        return out * (1 - out) < SATURATION_THRESHOLD * 0.25
    if isinstance(module, nn.Tanh):  # tanh' = 1 - t^2, peak 1
        return 1 - out * out < SATURATION_THRESHOLD
    return None


def default_loss(output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy when ``y`` holds class indices, mean squared error when it is float."""
    if not torch.is_floating_point(y) and not torch.is_complex(y):
        if output.ndim < 2:
            raise ValueError(f"class-index targets need logits of shape (n, classes), got "
                             f"{tuple(output.shape)}")
        return F.cross_entropy(output, y)
    if output.shape != y.shape:
        raise ValueError(f"float targets must match the output's shape: output "
                         f"{tuple(output.shape)}, y {tuple(y.shape)}; pass loss_fn for other cases")
    return F.mse_loss(output, y)


def _first_tensor(out: object) -> torch.Tensor | None:
    """The first tensor of a module's output (RNNs return (output, hidden))."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        for item in out:
            found = _first_tensor(item)
            if found is not None:
                return found
    return None


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules with parameters of their own that are not activations, in registration order."""
    found = []
    for name, module in model.named_modules():
        if isinstance(module, ACTIVATION_TYPES):
            continue
        if any(True for _ in module.parameters(recurse=False)):
            found.append((name or type(module).__name__, module))
    return found


def activation_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Activation modules (see :data:`ACTIVATION_TYPES`) in registration order."""
    return [(name or type(m).__name__, m) for name, m in model.named_modules()
            if isinstance(m, ACTIVATION_TYPES)]


def _weights_of(module: nn.Module) -> list[torch.Tensor]:
    params = dict(module.named_parameters(recurse=False))
    weights = [p for n, p in params.items() if n.startswith("weight")]
    return weights or list(params.values())


@dataclass
class Trace:
    """Per-layer statistics over recorded steps (CPU tensors, one row per recorded step).

    ``layers`` name the weight-bearing layers and ``act_layers`` the activation modules, both
    ordered input to output (by their first call in the forward pass).
    """

    steps: torch.Tensor
    layers: list[str]
    grad_norm: torch.Tensor
    signal_norm: torch.Tensor
    weight_norm: torch.Tensor
    update_ratio: torch.Tensor
    act_layers: list[str] = field(default_factory=list)
    act_mean: torch.Tensor = field(default_factory=lambda: torch.empty(0, 0))
    act_std: torch.Tensor = field(default_factory=lambda: torch.empty(0, 0))
    saturated: torch.Tensor = field(default_factory=lambda: torch.empty(0, 0))
    dead: torch.Tensor = field(default_factory=lambda: torch.empty(0, 0))

    def __len__(self) -> int:
        return len(self.steps)

    def at(self, row: int = -1, stat: str = "grad_norm") -> dict[str, float]:
        """One recorded step's ``stat`` as ``{layer: value}``, input to output."""
        names = self.act_layers if stat in ("act_mean", "act_std", "saturated", "dead") else self.layers
        if stat not in ("grad_norm", "signal_norm", "weight_norm", "update_ratio", "act_mean",
                        "act_std", "saturated", "dead"):
            raise ValueError(f"unknown stat {stat!r}; valid: 'grad_norm', 'signal_norm', "
                             "'weight_norm', 'update_ratio', 'act_mean', 'act_std', 'saturated', "
                             "'dead'")
        values = getattr(self, stat)
        if len(values) == 0:
            raise ValueError("the trace holds no recorded steps")
        return {n: float(v) for n, v in zip(names, values[row])}


class Recorder:
    """Hooks that record per-layer statistics; use as a context manager to remove them on exit.

    A training step with recording looks like::

        with Recorder(model) as rec:
            for step, (x, y) in enumerate(loader):
                rec.capture = True            # compute forward statistics on this step
                loss = loss_fn(model(x), y)
                opt.zero_grad(); loss.backward()
                rec.record_gradients()
                rec.snapshot_weights(); opt.step(); rec.record_updates()
                rec.end_step(step)
        trace = rec.trace()
    """

    def __init__(self, model: nn.Module, activations: bool = True, signals: bool = True) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self._capture = True
        self._entered = False
        self._want_acts = activations
        self._want_signals = signals
        self._weight_modules = dict(weight_layers(model))
        self._act_modules = dict(activation_layers(model)) if activations else {}
        if not self._weight_modules:
            raise ValueError("the model has no layers with parameters to instrument")
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._order: list[str] = []
        self._act_order: list[str] = []
        self._act_now: dict[str, torch.Tensor] = {}
        self._signal_now: dict[str, list[torch.Tensor]] = {}
        self._rows: list[dict[str, torch.Tensor]] = []
        self._row: dict[str, torch.Tensor] = {}
        self._before: list[torch.Tensor] | None = None
        self._params: list[torch.Tensor] = []
        self._groups: torch.Tensor | None = None
        self._buffers: list[torch.Tensor] | None = None
        self._indices: dict[tuple, torch.Tensor] = {}

    # -- hooks ---------------------------------------------------------------------------------
    @property
    def capture(self) -> bool:
        """Whether forward passes are measured. Off, the hooks are detached, so the steps that
        are not recorded run at full speed."""
        return self._capture

    @capture.setter
    def capture(self, on: bool) -> None:
        on = bool(on)
        if self._entered and on != self._capture:
            self._attach() if on else self._detach()
        self._capture = on

    def _attach(self) -> None:
        for name, module in self._weight_modules.items():
            self._handles.append(module.register_forward_hook(self._weight_hook(name)))
        for name, module in self._act_modules.items():
            self._handles.append(module.register_forward_hook(self._act_hook(name, module)))

    def _detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> Recorder:
        self._entered = True
        if self._capture:
            self._attach()
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def remove(self) -> None:
        """Remove every hook this recorder attached (also done on leaving the ``with`` block)."""
        self._detach()
        self._entered = False

    def _weight_hook(self, name: str) -> Callable:
        def hook(module: nn.Module, inputs: object, output: object) -> None:
            if name not in self._order:
                self._order.append(name)
            if not (self.capture and self._want_signals):
                return
            out = _first_tensor(output)
            if out is None or not out.requires_grad:
                return

            def grad_hook(grad: torch.Tensor) -> None:
                self._signal_now.setdefault(name, []).append(grad.detach())

            out.register_hook(grad_hook)

        return hook

    def _act_hook(self, name: str, module: nn.Module) -> Callable:
        def hook(mod: nn.Module, inputs: object, output: object) -> None:
            if name not in self._act_order:
                self._act_order.append(name)
            if not self.capture or name in self._act_now:
                return
            out = _first_tensor(output)
            if out is not None and out.numel() > 0:
                self._act_now[name] = out.detach()

        return hook

    def _activation_stats(self, acts: list[str], device: torch.device) -> torch.Tensor:
        """(len(acts), 4): mean, std, saturated fraction, dead fraction; batched by shape."""
        result = torch.full((len(acts), 4), math.nan, device=device)
        groups: dict[tuple, list[int]] = {}
        for i, name in enumerate(acts):
            out = self._act_now.get(name)
            if out is not None:
                kind = type(self._act_modules[name])
                groups.setdefault((tuple(out.shape), out.dtype, kind), []).append(i)
        for (shape, _, kind), idx in groups.items():
            x = torch.stack([self._act_now[acts[i]] for i in idx]).float()  # (G, N, ...)
            flat = x.reshape(len(idx), -1)
            std, mean = torch.std_mean(flat, dim=1) if flat.shape[1] > 1 else \
                (torch.zeros(len(idx), device=x.device), flat.mean(dim=1))
            sat = _saturation_mask(self._act_modules[acts[idx[0]]], flat)
            sat_frac = sat.float().mean(dim=1) if sat is not None else torch.full_like(mean, math.nan)
            if x.ndim >= 4:  # (G, N, C, ...): a unit is a channel
                units = x.transpose(1, 2).reshape(len(idx), shape[1], -1)
            elif x.ndim == 3:  # (G, N, F): a unit is a feature
                units = x.transpose(1, 2)
            else:
                units = x.reshape(len(idx), 1, -1)
            dead = (units == 0).all(dim=2).float().mean(dim=1)
            result[self._index(idx, device)] = torch.stack([mean, std, sat_frac, dead], 1)
        return result

    # -- per-step recording --------------------------------------------------------------------
    def _layer_params(self) -> tuple[list[torch.Tensor], torch.Tensor]:
        """All weight tensors in layer order and, for each, the index of its layer."""
        if self._groups is None or len(self._params) == 0:
            params, groups = [], []
            for i, name in enumerate(self.layers):
                for p in _weights_of(self._weight_modules[name]):
                    params.append(p)
                    groups.append(i)
            self._params = params
            device = params[0].device if params else torch.device("cpu")
            self._groups = torch.tensor(groups, dtype=torch.long, device=device)
        return self._params, self._groups

    def _grouped_norm(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        _, groups = self._layer_params()
        # float64: a float32 norm squares its entries and underflows to 0 below about 1e-19,
        # while the gradients of a deep sigmoid net reach 1e-35 and are still numbers.
        norms = torch.stack(torch._foreach_norm([t.double() for t in tensors]))
        sq = torch.zeros(len(self.layers), dtype=torch.float64,
                         device=norms.device).index_add_(0, groups, norms * norms)
        return sq.sqrt()

    @property
    def layers(self) -> list[str]:
        """Weight-bearing layers, input to output (call order; uncalled ones last)."""
        rest = [n for n in self._weight_modules if n not in self._order]
        return self._order + rest

    @property
    def act_layers(self) -> list[str]:
        """Activation modules, input to output (call order; uncalled ones last)."""
        rest = [n for n in self._act_modules if n not in self._act_order]
        return self._act_order + rest

    def record_gradients(self) -> torch.Tensor:
        """After ``backward()``: store and return the per-layer weight-gradient norms (on device)."""
        params, _ = self._layer_params()
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        norms = self._grouped_norm(grads)
        self._row["grad_norm"] = norms
        return norms

    def snapshot_weights(self) -> None:
        """Just before ``optimizer.step()``: keep a copy of the weights for the update ratio."""
        params, _ = self._layer_params()
        if self._buffers is None:
            self._buffers = [p.detach().clone() for p in params]
        else:
            torch._foreach_copy_(self._buffers, [p.detach() for p in params])
        self._before = self._buffers

    def record_updates(self) -> None:
        """Just after ``optimizer.step()``: store ||delta w|| / ||w|| per layer."""
        if self._before is None:
            raise RuntimeError("call snapshot_weights() before the optimizer step")
        params, _ = self._layer_params()
        after = [p.detach() for p in params]
        delta = torch._foreach_sub(after, self._before)
        wn = self._grouped_norm(after)
        self._row["weight_norm"] = wn
        self._row["update_ratio"] = self._grouped_norm(delta) / wn.clamp_min(1e-30)
        self._before = None

    def end_step(self, step: int) -> None:
        """Close the current step's row (whatever was measured) and start a new one."""
        layers, acts = self.layers, self.act_layers
        ref = next(self.model.parameters())
        nan_l = torch.full((len(layers),), math.nan, dtype=torch.float64, device=ref.device)
        row = {
            "step": int(step),
            "grad_norm": self._row.get("grad_norm", nan_l),
            "weight_norm": self._row.get("weight_norm", nan_l),
            "update_ratio": self._row.get("update_ratio", nan_l),
        }
        row["signal_norm"] = self._signal_norms(layers, nan_l)
        if acts:
            row["acts"] = self._activation_stats(acts, ref.device)
        self._rows.append(row)
        self._row, self._signal_now, self._act_now = {}, {}, {}

    def _index(self, idx: list[int], device: torch.device) -> torch.Tensor:
        """An index tensor on ``device``, made once (no host-to-device copy per step)."""
        key = (tuple(idx), str(device))
        if key not in self._indices:
            self._indices[key] = torch.tensor(idx, dtype=torch.long, device=device)
        return self._indices[key]

    def _signal_norms(self, layers: list[str], nan_l: torch.Tensor) -> torch.Tensor:
        """Norm of dL/d(output) per layer (squares summed over repeated calls)."""
        grads, owner = [], []
        for i, name in enumerate(layers):
            for g in self._signal_now.get(name, ()):
                grads.append(g.double())
                owner.append(i)
        if not grads:
            return nan_l
        norms = torch.stack(torch._foreach_norm(grads))
        idx = self._index(owner, norms.device)
        sq = torch.zeros(len(layers), dtype=torch.float64, device=norms.device).index_add_(0, idx, norms * norms)
        seen = torch.zeros(len(layers), dtype=torch.bool, device=norms.device)
        seen[idx] = True
        return torch.where(seen, sq.sqrt(), nan_l)

    def trace(self) -> Trace:
        """Everything recorded so far, copied to the CPU in one go."""
        layers, acts = self.layers, self.act_layers
        n_l, n_a = len(layers), len(acts)
        rows = self._rows

        def stack(key: str, width: int) -> torch.Tensor:
            if not rows:
                return torch.empty(0, width)
            return torch.stack([self._pad(r[key], width) for r in rows]).cpu()

        act = (torch.stack([self._pad2(r["acts"], n_a) for r in rows]).cpu()
               if rows and n_a else torch.empty(len(rows), n_a, 4))
        return Trace(
            steps=torch.tensor([r["step"] for r in rows], dtype=torch.long),
            layers=layers, grad_norm=stack("grad_norm", n_l), signal_norm=stack("signal_norm", n_l),
            weight_norm=stack("weight_norm", n_l), update_ratio=stack("update_ratio", n_l),
            act_layers=acts, act_mean=act[..., 0], act_std=act[..., 1], saturated=act[..., 2],
            dead=act[..., 3],
        )

    @staticmethod
    def _pad(t: torch.Tensor, width: int) -> torch.Tensor:
        """Rows recorded before every layer had run are shorter: pad them with NaN."""
        if t.shape[0] == width:
            return t
        return torch.cat([t, torch.full((width - t.shape[0],), math.nan, dtype=t.dtype, device=t.device)])

    @staticmethod
    def _pad2(t: torch.Tensor, width: int) -> torch.Tensor:
        if t.shape[0] == width:
            return t
        pad = torch.full((width - t.shape[0], t.shape[1]), math.nan, device=t.device)
        return torch.cat([t, pad])


def _check_batch(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None) -> None:
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if y is not None:
        if not isinstance(y, torch.Tensor):
            raise ValueError(f"y must be a torch.Tensor, got {type(y).__name__}")
        if x.ndim == 0 or y.ndim == 0 or x.shape[0] != y.shape[0]:
            raise ValueError(f"x and y must have the same number of examples (first dimension), "
                             f"got shapes {tuple(x.shape)} and {tuple(y.shape)}")


def snapshot(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> Trace:
    """One forward and backward pass on (x, y) with every statistic recorded: a one-row Trace.

    The model's gradients are overwritten; its weights and train/eval mode are left as they are.
    ``loss_fn(output, y)`` defaults to :func:`default_loss`.
    """
    _check_batch(model, x, y)
    loss_fn = loss_fn or default_loss
    model.zero_grad(set_to_none=True)
    with Recorder(model) as rec:
        out = model(x)
        out = _first_tensor(out)
        if out is None:
            raise ValueError("the model's output holds no tensor")
        loss = loss_fn(out, y)
        if loss.ndim != 0:
            raise ValueError(f"loss_fn must return a scalar, got shape {tuple(loss.shape)}")
        loss.backward()
        rec.record_gradients()
        rec.end_step(0)
    return rec.trace()


def gradient_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                   loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
                   ) -> dict[str, float]:
    """Weight-gradient norm of every weight-bearing layer after one backward pass, input to output.

    ``loss_fn`` defaults to cross-entropy when ``y`` holds class indices (MSE for float targets).
    """
    return snapshot(model, x, y, loss_fn).at(0, "grad_norm")


def _forward_with_hooks(model: nn.Module, x: torch.Tensor,
                        hooks: list[tuple[nn.Module, Callable]]) -> None:
    """One no-grad forward pass with temporary forward hooks, removed whatever happens."""
    handles = [module.register_forward_hook(hook) for module, hook in hooks]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()


def capture_activations(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Outputs of every activation module for input ``x`` (no gradients), input to output."""
    _check_batch(model, x, None)
    captured: dict[str, torch.Tensor] = {}

    def keep(name: str) -> Callable:
        def hook(m: nn.Module, i: object, o: object) -> None:
            out = _first_tensor(o)
            if out is not None and name not in captured:
                captured[name] = out.detach().cpu()
        return hook

    _forward_with_hooks(model, x, [(m, keep(name)) for name, m in activation_layers(model)])
    return captured


def first_nonfinite_output(model: nn.Module, x: torch.Tensor) -> str | None:
    """Name of the first module (in call order) whose forward output is NaN or infinite."""
    found: list[str] = []

    def check(name: str) -> Callable:
        def hook(m: nn.Module, i: object, o: object) -> None:
            out = _first_tensor(o)
            if not found and out is not None and torch.is_floating_point(out) \
                    and not bool(torch.isfinite(out).all()):
                found.append(name)
        return hook

    leaves = [(m, check(name)) for name, m in model.named_modules()
              if name and not any(True for _ in m.children())]
    _forward_with_hooks(model, x, leaves)
    return found[0] if found else None
