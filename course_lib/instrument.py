"""Measure any ``nn.Module`` per layer: one backward pass, or every few steps of a training run.

- :func:`gradient_norms` → a :class:`~course_lib.records.Profile` of ||dL/dW|| per layer;
- :func:`snapshot` → a one-step :class:`~course_lib.records.Trace` with every statistic;
- :class:`Recorder` → the statistics at every ``every``-th step of a training loop, one ``with``
  per step (``fit`` and ``train_policy`` use it through :func:`course_lib.train.optimizer_step`);
- :func:`grad_profile` → ||dL/dW|| per layer of the gradients already in ``.grad`` (or a copy);
- :func:`capture_activations`, :func:`first_nonfinite_output`;
- :func:`gradient_flow_data`: the gradient-flow explorer's numbers for a fresh MLP.

Layers are chosen at the source by :func:`course_lib.layers.select_layers` (main-path weights by
default) and ordered input to output by the forward pass. Per layer: ``grad_norm`` (||dL/dW||,
float64), ``signal_norm`` (||dL/dh|| of the layer's output, squares summed over its calls),
``weight_norm`` and ``update_ratio`` (||ΔW|| / ||W|| of an optimizer step). Per activation site
(:mod:`course_lib.hooks`): the statistics of :mod:`course_lib.stats`. A parameter without a
gradient (frozen, unused) gives NaN, never 0.

Statistics stay on the model's device until :meth:`Recorder.trace` copies them to the CPU at once.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from course_lib.core import check_bool, check_choice, check_positive_int
from course_lib.gradients import norms64
from course_lib.hooks import ActivationCapture, Hooks
from course_lib.layers import LAYER_SETS, activation_modules, layer_parameters, select_layers
from course_lib.records import ACTIVATION_STATS, LAYER_STATS, Profile, Trace
from course_lib.stats import grouped_norms, site_stats

Loss = Callable[[Any, torch.Tensor], torch.Tensor]


# -- what goes in and comes out of a model ----------------------------------------------------------
def default_loss(output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy when ``y`` holds class indices, mean squared error when it is float."""
    if not torch.is_floating_point(y) and not torch.is_complex(y):
        if output.ndim < 2:
            raise ValueError(f"class-index targets need logits of shape (n, classes), got "
                             f"{tuple(output.shape)}")
        if output.ndim > 2:  # (n, ..., classes) against (n, ...): e.g. a language model
            return F.cross_entropy(output.reshape(-1, output.shape[-1]), y.reshape(-1))
        return F.cross_entropy(output, y)
    if output.shape != y.shape:
        raise ValueError(f"float targets must match the output's shape: output "
                         f"{tuple(output.shape)}, y {tuple(y.shape)}; pass loss_fn for other cases")
    return F.mse_loss(output, y)


def output_tensor(output: Any) -> torch.Tensor:
    """The tensor a default loss reads from a model's output: the output itself, the first tensor
    of a tuple or list, or of a dict / dataclass (a Hugging Face ``ModelOutput``), preferring a
    ``logits`` entry.

    Raises:
        ValueError: the output holds no tensor (then pass a ``loss_fn`` that reads it).
    """
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):
        items = list(output.items())
    elif dataclasses.is_dataclass(output) and not isinstance(output, type):
        items = [(f.name, getattr(output, f.name)) for f in dataclasses.fields(output)]
    elif isinstance(output, (tuple, list)):
        items = list(enumerate(output))
    else:
        items = []
    items.sort(key=lambda kv: kv[0] != "logits")
    for _, value in items:
        if value is None:
            continue
        try:
            return output_tensor(value)
        except ValueError:
            continue
    raise ValueError(f"the model's output ({type(output).__name__}) holds no tensor; pass "
                     "loss_fn(output, y) that computes the loss from it")


def call_model(model: nn.Module, x: Any) -> Any:
    """``model(x)`` for a tensor, ``model(*x)`` for a tuple or list, ``model(**x)`` for a dict."""
    if isinstance(x, Mapping):
        return model(**x)
    if isinstance(x, (tuple, list)):
        return model(*x)
    return model(x)


def batch_size(x: Any) -> int:
    """Number of examples in ``x``: the first dimension of its first tensor."""
    if isinstance(x, torch.Tensor):
        if x.ndim == 0:
            raise ValueError("x is a 0-d tensor; it needs a batch dimension")
        return x.shape[0]
    values = list(x.values()) if isinstance(x, Mapping) else list(x) \
        if isinstance(x, (tuple, list)) else []
    for v in values:
        if isinstance(v, torch.Tensor) and v.ndim > 0:
            return v.shape[0]
    raise ValueError(f"x must be a tensor, or a tuple/list/dict holding tensors (model(*x) or "
                     f"model(**x)), got {type(x).__name__}")


def check_batch(model: nn.Module, x: Any, y: Any) -> None:
    """ValueError unless ``model`` is a module and ``x`` and ``y`` hold the same number of
    examples (``y`` may be None)."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    n = batch_size(x)
    if y is not None:
        if not isinstance(y, torch.Tensor):
            raise ValueError(f"y must be a torch.Tensor, got {type(y).__name__}")
        if y.ndim == 0 or y.shape[0] != n:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else f"{n} examples"
            raise ValueError(f"x and y must have the same number of examples (first dimension), "
                             f"got {shape} and {tuple(y.shape)}")


# -- the recorder -------------------------------------------------------------------------------
class Recorder:
    """Per-layer statistics at every ``every``-th step of a training loop.

    Use it as a context manager and wrap each step in :meth:`step`; a recorded step measures its
    forward pass (hooks attached for that step only), its gradients and its update::

        with Recorder(model, every=10) as rec:
            for i, (x, y) in enumerate(loader):
                with rec.step(i):
                    loss = loss_fn(model(x), y)
                    optimizer_step(opt, loss, params, recorder=rec)   # course_lib.train
        trace = rec.trace()

    Without :func:`course_lib.train.optimizer_step`, call :meth:`record_gradients` after
    ``backward()`` inside the step.

    Args:
        layers: the layer set (:data:`course_lib.layers.LAYER_SETS`).
        activations: record activation statistics; ``functional`` also sees functional
            activations (``torch.sigmoid`` in ``forward``: slower, for one-off measurements).
        signals: record ||dL/dh|| of each layer's output.
    """

    def __init__(self, model: nn.Module, *, every: int = 1, layers: str = "main",
                 activations: bool = True, signals: bool = True, functional: bool = False) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        check_choice("layer set", layers, LAYER_SETS)
        self.model = model
        self.every = check_positive_int("every", every)
        self.layer_set = layers
        self._want_acts = check_bool("activations", activations)
        self._want_signals = check_bool("signals", signals)
        self._functional = check_bool("functional", functional)
        self._modules = select_layers(model, layers)
        self._acts = activation_modules(model) if activations else {}
        if not self._modules:
            raise ValueError(f"the model has no {'main-path ' if layers == 'main' else ''}layers "
                             f"with parameters to measure (layer set {layers!r}; valid: "
                             f"{', '.join(map(repr, LAYER_SETS))})")
        self._order: list[str] = []
        self._sites: list[str] = []
        self._kinds: dict[str, str] = {}
        self._layout: tuple[list[str], list[nn.Parameter], torch.Tensor] | None = None
        self._one_each = False
        self._rows: list[dict[str, Any]] = []
        self._row: dict[str, Any] | None = None
        self._signals: dict[str, list[torch.Tensor]] = {}
        self._outputs: dict[str, list[torch.Tensor]] = {}
        self._hooks: list[Any] = []
        self._before: list[torch.Tensor] | None = None
        self._buffers: list[torch.Tensor] | None = None
        self._next = 0
        self._open = False

    # -- the context --------------------------------------------------------------------------
    def __enter__(self) -> Recorder:
        self._open = True
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def remove(self) -> None:
        """Remove every hook (also done on leaving the ``with`` block); idempotent."""
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        self._open = False

    @property
    def recording(self) -> bool:
        """Whether the step in progress is being recorded."""
        return self._row is not None

    @contextmanager
    def step(self, index: int | None = None) -> Iterator[bool]:
        """One training step (``index`` defaults to one more than the last). Recorded when
        ``index % every == 0``; yields whether it is. Hooks live only inside a recorded step."""
        index = self._next if index is None else int(index)
        self._next = index + 1
        if index % self.every != 0:
            yield False
            return
        self._start(index)
        try:
            yield True
        except BaseException:
            self._row = None
            raise
        finally:
            self.remove_step_hooks()
        self._finish()

    def remove_step_hooks(self) -> None:
        """Remove the hooks of the current step (idempotent)."""
        for h in self._hooks:
            h.remove()
        self._hooks.clear()

    def _start(self, index: int) -> None:
        self._row = {"step": index}
        self._signals, self._outputs = {}, {}
        first_call = self._layout is None

        def on_layer(name: str, module: nn.Module, inputs: tuple, output: Any) -> None:
            if first_call and name not in self._order:
                self._order.append(name)
            if not self._want_signals or not torch.is_grad_enabled():
                return
            try:
                out = output_tensor(output)
            except ValueError:
                return
            if out.requires_grad:
                out.register_hook(lambda g, n=name: self._signals.setdefault(n, []).append(
                    g.detach()))

        if first_call or self._want_signals:
            self._hooks.append(Hooks(self._modules, on_layer))
        if self._want_acts:
            def on_act(site: str, kind: str, output: torch.Tensor) -> None:
                if site not in self._kinds:
                    self._kinds[site] = kind
                    self._sites.append(site)
                self._outputs.setdefault(site, []).append(output.detach())

            self._hooks.append(ActivationCapture(self.model, on_act, functional=self._functional,
                                                 modules=self._acts).start())

    def _finish(self) -> None:
        row, self._row = self._row, None
        names, _, _ = self._ensure_layout()
        device = self._device()
        nan = torch.full((len(names),), math.nan, dtype=torch.float64, device=device)
        for stat in LAYER_STATS:
            row.setdefault(stat, nan)
        if self._signals:
            grads, owner = [], []
            for i, name in enumerate(names):
                for g in self._signals.get(name, ()):
                    grads.append(g)
                    owner.append(i)
            one_each = owner == list(range(len(names)))
            row["signal_norm"] = grouped_norms(
                norms64(grads), None if one_each else torch.tensor(owner, device=device),
                len(names))
        if self._want_acts:
            row["sites"] = list(self._sites)
            row["acts"] = site_stats(self._outputs, self._kinds, row["sites"], device)
        row.setdefault("loss", torch.full((), math.nan, dtype=torch.float64, device=device))
        self._signals, self._outputs = {}, {}
        self._rows.append(row)

    # -- the layer layout ---------------------------------------------------------------------
    def _device(self) -> torch.device:
        p = next(self.model.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    def _ensure_layout(self) -> tuple[list[str], list[nn.Parameter], torch.Tensor]:
        """Layers in forward order (uncalled ones folded into a called ancestor layer, or last),
        their measured parameters, and each parameter's layer index. Fixed at the first use."""
        if self._layout is None:
            called = [n for n in self._order if n in self._modules]
            owner_of: dict[str, str] = {}
            for name in self._modules:
                if name in called:
                    continue
                ancestors = [c for c in called if name.startswith(c + ".")]
                if ancestors:  # used functionally by its parent (MultiheadAttention.out_proj)
                    owner_of[name] = max(ancestors, key=len)
            names = called + [n for n in self._modules if n not in called and n not in owner_of]
            params, owner = [], []
            for name, module in self._modules.items():
                layer = owner_of.get(name, name)
                for p in layer_parameters(module, self.layer_set):
                    params.append(p)
                    owner.append(names.index(layer))
            self._layout = (names, params,
                            torch.tensor(owner, dtype=torch.long, device=self._device()))
            self._one_each = owner == list(range(len(names)))
        return self._layout

    @property
    def layers(self) -> list[str]:
        """The measured layers, input to output (known after the first recorded forward pass)."""
        return list(self._ensure_layout()[0]) if self._layout or self._order else \
            list(self._modules)

    # -- gradients and updates (called by optimizer_step, or by hand) --------------------------
    def record_loss(self, loss: torch.Tensor) -> None:
        """Keep the step's loss (a scalar tensor) with its statistics."""
        if self._row is not None:
            self._row["loss"] = loss.detach().double().reshape(())

    def record_gradients(self, loss: torch.Tensor | None = None) -> None:
        """After ``backward()`` in a recorded step: ||dL/dW|| per layer from the parameters'
        ``.grad`` (NaN for a layer none of whose parameters has a gradient)."""
        if self._row is None:
            return
        if loss is not None:
            self.record_loss(loss)
        names, params, owner = self._ensure_layout()
        have = [i for i, p in enumerate(params) if p.grad is not None]
        self._store_grad_norms(names, owner, have,
                               norms64([params[i].grad for i in have]) if have else None)

    def take_gradient_norms(self, params: Sequence[torch.Tensor], norms: torch.Tensor) -> None:
        """Per-layer ||dL/dW|| from per-parameter norms already computed (float64) for
        ``params``: how :func:`course_lib.train.optimizer_step` hands over its numbers."""
        if self._row is None:
            return
        names, mine, owner = self._ensure_layout()
        position = {id(p): i for i, p in enumerate(params)}
        have = [i for i, p in enumerate(mine) if id(p) in position]
        picked = norms[[position[id(mine[i])] for i in have]] if have else None
        self._store_grad_norms(names, owner, have, picked)

    def _store_grad_norms(self, names: list[str], owner: torch.Tensor, have: list[int],
                          norms: torch.Tensor | None) -> None:
        if norms is None:
            self._row["grad_norm"] = torch.full((len(names),), math.nan, dtype=torch.float64,
                                                device=self._device())
            return
        if self._one_each and len(have) == len(names):
            self._row["grad_norm"] = norms.to(owner.device)
            return
        self._row["grad_norm"] = grouped_norms(norms.to(owner.device), owner[have], len(names))

    def before_update(self) -> None:
        """Just before ``optimizer.step()`` in a recorded step: keep the weights."""
        if self._row is None:
            return
        _, params, _ = self._ensure_layout()
        if self._buffers is None:
            self._buffers = [p.detach().clone() for p in params]
        else:
            torch._foreach_copy_(self._buffers, [p.detach() for p in params])
        self._before = self._buffers

    def after_update(self) -> None:
        """Just after ``optimizer.step()``: ||ΔW|| / ||W|| and ||W|| per layer."""
        if self._row is None or self._before is None:
            return
        names, params, owner = self._ensure_layout()
        after = [p.detach() for p in params]
        torch._foreach_sub_(self._before, after)  # the buffers now hold -ΔW
        # ||W|| is never tiny (float32 is enough); ||ΔW|| of a vanishing layer is: float64
        owner = None if self._one_each else owner
        weight = grouped_norms(torch.stack(torch._foreach_norm(after)).double(), owner,
                               len(names))
        self._row["weight_norm"] = weight
        self._row["update_ratio"] = grouped_norms(norms64(self._before), owner, len(names)) \
            / weight.clamp_min(1e-300)
        self._before = None

    # -- the result ---------------------------------------------------------------------------
    def trace(self) -> Trace:
        """Everything recorded so far, copied to the CPU in one go."""
        names = self.layers
        sites = list(self._sites)
        n, rows = len(names), self._rows
        stats: dict[str, np.ndarray] = {}
        for stat in LAYER_STATS:
            stats[stat] = (torch.stack([_pad(r[stat], n) for r in rows]).cpu().numpy()
                           if rows else np.empty((0, n)))
        if rows and self._want_acts and sites:
            acts = torch.stack([_place(r["acts"], r["sites"], sites) for r in rows]).cpu().numpy()
        else:
            acts = np.full((len(rows), len(sites), len(ACTIVATION_STATS)), np.nan)
        for k, stat in enumerate(ACTIVATION_STATS):
            stats[stat] = acts[:, :, k].astype(np.float64)
        loss = (torch.stack([r["loss"] for r in rows]).cpu().numpy() if rows else np.empty(0))
        steps = np.array([r["step"] for r in rows], dtype=np.int64)
        return Trace(steps=steps, layers=names, act_layers=sites, stats=stats, loss=loss)


def _pad(t: torch.Tensor, width: int) -> torch.Tensor:
    if t.shape[0] == width:
        return t
    return torch.cat([t, torch.full((width - t.shape[0],), math.nan, dtype=t.dtype,
                                    device=t.device)])


def _place(acts: torch.Tensor, row_sites: list[str], sites: list[str]) -> torch.Tensor:
    """A row's activation statistics laid out on the trace's full site list (NaN elsewhere)."""
    if row_sites == sites:
        return acts
    out = torch.full((len(sites), acts.shape[1]), math.nan, device=acts.device)
    for i, s in enumerate(row_sites):
        out[sites.index(s)] = acts[i]
    return out


# -- one pass ---------------------------------------------------------------------------------
def snapshot(model: nn.Module, x: Any, y: torch.Tensor, loss_fn: Loss | None = None, *,
             layers: str = "main", functional: bool = True) -> Trace:
    """One forward and backward pass on ``(x, y)`` with every statistic recorded: a one-step
    :class:`~course_lib.records.Trace` (``trace.profile("grad_norm")``).

    ``x`` is a tensor, a tuple (``model(*x)``) or a dict (``model(**x)``). ``loss_fn(output, y)``
    receives the model's raw output (a tensor, tuple, dict or ``ModelOutput``); the default,
    :func:`default_loss`, reads :func:`output_tensor` of it. The model's gradients are
    overwritten; its weights and train/eval mode are left as they are.
    """
    check_batch(model, x, y)
    if loss_fn is not None and not callable(loss_fn):
        raise ValueError(f"loss_fn must be None or a callable loss_fn(output, y), got "
                         f"{type(loss_fn).__name__}")
    model.zero_grad(set_to_none=True)
    with Recorder(model, layers=layers, functional=functional) as rec, rec.step(0):
        out = call_model(model, x)
        loss = loss_fn(out, y) if loss_fn is not None else default_loss(output_tensor(out), y)
        if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
            shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
            raise ValueError(f"loss_fn must return a scalar tensor, got {shape}")
        loss.backward()
        rec.record_gradients(loss)
    return rec.trace()


def gradient_norms(model: nn.Module, x: Any, y: torch.Tensor, loss_fn: Loss | None = None, *,
                   layers: str = "main") -> Profile:
    """||dL/dW|| of every layer after one backward pass, input to output, as a
    :class:`~course_lib.records.Profile`. ``loss_fn`` defaults to cross-entropy for class indices
    and MSE for float targets; ``layers`` is the layer set (main-path weights by default)."""
    return snapshot(model, x, y, loss_fn, layers=layers, functional=False).profile("grad_norm")


def grad_profile(model: nn.Module, grads: Mapping[str, torch.Tensor] | None = None, *,
                 layers: str = "main") -> Profile:
    """||gradient|| per layer (in registration order) of the gradients in the parameters' ``.grad``,
    or of ``grads``, a ``{parameter name: tensor}`` dict such as ``dict(model.named_parameters())``
    would name them (a clipped copy, say). Layers without a gradient read NaN."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    names = {id(p): n for n, p in model.named_parameters()}
    if grads is not None:
        unknown = [n for n in grads if n not in names.values()]
        if unknown:
            raise ValueError(f"unknown parameter name(s) {unknown[:5]}; valid: "
                             f"{list(names.values())[:8]} ...")
    values = []
    for layer, module in select_layers(model, layers).items():
        tensors = [grads.get(names[id(p)]) if grads is not None else p.grad
                   for p in layer_parameters(module, layers)]
        tensors = [t for t in tensors if t is not None]
        values.append((layer, float(torch.linalg.vector_norm(norms64(tensors))) if tensors
                       else math.nan))
    return Profile(values, "grad_norm")


def capture_activations(model: nn.Module, x: Any, *,
                        functional: bool = True) -> dict[str, torch.Tensor]:
    """The outputs of every activation site for input ``x`` (no gradients), input to output, on
    the CPU; a site called several times gives its calls concatenated along the batch."""
    check_batch(model, x, None)
    captured: dict[str, list[torch.Tensor]] = {}

    def keep(site: str, kind: str, output: torch.Tensor) -> None:
        captured.setdefault(site, []).append(output.detach().cpu())

    with torch.no_grad(), ActivationCapture(model, keep, functional=functional):
        call_model(model, x)
    return {k: v[0] if len(v) == 1 else torch.cat(v) for k, v in captured.items()}


def first_nonfinite_output(model: nn.Module, x: Any) -> str | None:
    """Name of the first leaf module (in call order) whose forward output is NaN or infinite."""
    found: list[str] = []

    def check(name: str, module: nn.Module, inputs: tuple, output: Any) -> None:
        try:
            out = output_tensor(output)
        except ValueError:
            return
        if not found and torch.is_floating_point(out) and not bool(torch.isfinite(out).all()):
            found.append(name)

    leaves = {name: m for name, m in model.named_modules()
              if name and not any(True for _ in m.children())}
    with torch.no_grad(), Hooks(leaves, check):
        call_model(model, x)
    return found[0] if found else None


# -- the gradient-flow explorer's numbers --------------------------------------------------------
def gradient_flow_data(depth: int = 10, width: int = 128, activation: str = "sigmoid",
                       init: str = "default", norm: str | None = None, residual: bool = False,
                       seed: int = 0, batch_size: int = 128) -> dict[str, Any]:
    """Per-layer gradient norm and activation statistics of a fresh
    :func:`course_lib.models.mlp` at initialization.

    One forward and backward pass (:func:`snapshot`, cross-entropy) on a fixed batch: the first
    ``batch_size`` training images of the 8x8 digits. The model is built from ``seed`` without
    touching the global random state, on one thread.

    Returns:
        a dict with ``grad_norm`` (a Profile of the main-path layers), ``act_std`` and
        ``act_spread`` (Profiles over the activation modules), ``first_over_last``, ``loss``
        and the arguments under ``params``.

    Raises:
        ValueError: a bad argument, with the valid choices listed.
    """
    from course_lib.core import one_thread
    from course_lib.data import load_digits
    from course_lib.models import EXPLORER_INITS, check_norm, mlp

    depth = check_positive_int("depth", depth)
    width = check_positive_int("width", width)
    batch_size = check_positive_int("batch_size", batch_size, minimum=2)
    check_choice("init", init, EXPLORER_INITS)
    norm = check_norm(norm)
    residual = check_bool("residual", bool(residual) if isinstance(residual, np.bool_)
                          else residual)
    seed = check_positive_int("seed", seed, minimum=0)
    x, y = load_digits(train=True)
    x, y = x[:batch_size], y[:batch_size]
    with one_thread():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = mlp(x.shape[1], 10, depth, width, activation=activation, init=init,
                        norm=norm, residual=residual)
        trace = snapshot(model, x, y, functional=False)
    grads = trace.profile("grad_norm")
    return {
        "grad_norm": grads,
        "act_std": trace.profile("act_std"),
        "act_spread": trace.profile("act_spread"),
        "first_over_last": grads.first_over_last(),
        "loss": float(trace.loss[0]),
        "params": dict(depth=depth, width=width, activation=activation, init=init,
                       norm=norm, residual=residual, seed=seed, batch_size=batch_size),
    }
