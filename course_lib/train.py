"""A small, honest training loop: recording, clipping, validation and a NaN guard."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from course_lib.core import check_choice, check_positive_int
from course_lib.instrument import Recorder, Trace, default_loss, first_nonfinite_output, weight_layers

#: Optimizer names accepted by :func:`fit` (or pass a ``torch.optim.Optimizer``).
OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")


class NonFiniteError(FloatingPointError):
    """Raised by :func:`fit` when the loss or a gradient becomes NaN or infinite."""

    def __init__(self, message: str, epoch: int, step: int, layer: str | None) -> None:
        super().__init__(message)
        self.epoch, self.step, self.layer = epoch, step, layer


@dataclass
class History:
    """What :func:`fit` measured: per-epoch curves, per-step losses, per-layer statistics."""

    train_loss: list[float] = field(default_factory=list)
    train_acc: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_acc: list[float] = field(default_factory=list)
    step_loss: list[float] = field(default_factory=list)
    trace: Trace | None = None
    seconds: float = 0.0

    @property
    def epochs(self) -> int:
        return len(self.train_loss)


def make_optimizer(model: nn.Module, optimizer: str, lr: float, momentum: float = 0.0,
                   weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """Build one of :data:`OPTIMIZERS` over the model's trainable parameters."""
    check_choice("optimizer", optimizer, OPTIMIZERS)
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr!r}")
    params = [p for p in model.parameters() if p.requires_grad]
    if optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.RMSprop(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


def _is_classification(out: torch.Tensor, y: torch.Tensor) -> bool:
    return not torch.is_floating_point(y) and out.ndim == 2


def evaluate(model: nn.Module, loader: Iterable, loss_fn: Callable | None = None,
             device: torch.device | str | None = None) -> tuple[float, float]:
    """Mean loss and accuracy (NaN for regression) of ``model`` over ``loader``, in eval mode."""
    loss_fn = loss_fn or default_loss
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64)
    correct = torch.zeros((), dtype=torch.float64)
    n, classify = 0, True
    with torch.no_grad():
        for x, y in loader:
            if device is not None:
                x, y = x.to(device), y.to(device)
            out = model(x)
            total = total.to(out.device) + loss_fn(out, y).double() * len(x)
            if _is_classification(out, y):
                correct = correct.to(out.device) + (out.argmax(1) == y).sum().double()
            else:
                classify = False
            n += len(x)
    model.train(was_training)
    if n == 0:
        raise ValueError("the loader yielded no data")
    return float(total) / n, (float(correct) / n if classify else math.nan)


def _locate_nonfinite(model: nn.Module, x: torch.Tensor) -> str:
    """Say where the first non-finite value is: gradient by layer (input side first), or output."""
    parts = []
    for name, module in weight_layers(model):
        grads = [p.grad for p in module.parameters(recurse=False) if p.grad is not None]
        if any(not bool(torch.isfinite(g).all()) for g in grads):
            parts.append(f"first non-finite gradient in layer '{name}'")
            break
        # Finite entries whose squares overflow float32: the norm (what fit checks) is infinite.
        if any(not bool(torch.isfinite(torch.linalg.vector_norm(g))) for g in grads):
            parts.append(f"first gradient whose norm overflows in layer '{name}' (entries finite)")
            break
    try:
        bad_out = first_nonfinite_output(model, x)
    except Exception:  # the model itself may fail on the bad weights; the gradient note suffices
        bad_out = None
    if bad_out is not None:
        parts.append(f"first non-finite forward output at '{bad_out}'")
    return "; ".join(parts) if parts else "no single layer found (weights may have overflowed)"


def fit(model: nn.Module, train_loader: Iterable, epochs: int, *, lr: float = 0.01,
        optimizer: str | torch.optim.Optimizer = "sgd", momentum: float = 0.9,
        weight_decay: float = 0.0, loss_fn: Callable | None = None, clip_norm: float | None = None,
        val_loader: Iterable | None = None, record: bool = True, record_every: int = 10,
        device: torch.device | str | None = None, progress: bool = True,
        desc: str | None = None) -> History:
    """Train ``model`` for ``epochs`` passes over ``train_loader`` and return a :class:`History`.

    Args:
        optimizer: a name from :data:`OPTIMIZERS` (built with ``lr``, ``momentum``,
            ``weight_decay``) or a ready ``torch.optim.Optimizer``.
        loss_fn: ``loss_fn(output, y)``; default cross-entropy for class labels, MSE for floats.
        clip_norm: if set, rescale the gradient to at most this global L2 norm before each step
            (``torch.nn.utils.clip_grad_norm_``); the recorded gradient norms are pre-clipping.
        record: keep per-layer statistics (see :mod:`course_lib.instrument`) every
            ``record_every`` steps (step 0 included) in ``History.trace``. Recording every step
            costs little per step but a tiny model's step is itself tiny; every 10th keeps the
            overhead near 10 %.
        device: move each batch there (the model is moved too); default: where the model is.

    Raises:
        NonFiniteError: the loss or a gradient became NaN/inf; the message names the epoch, the
            step and the first non-finite layer.
        ValueError: a bad argument, with the valid choices.
    """
    epochs = check_positive_int("epochs", epochs)
    record_every = check_positive_int("record_every", record_every)
    if clip_norm is not None and not clip_norm > 0:
        raise ValueError(f"clip_norm must be positive or None, got {clip_norm!r}")
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if device is not None:
        model.to(device)
    opt = (optimizer if isinstance(optimizer, torch.optim.Optimizer)
           else make_optimizer(model, optimizer, lr, momentum, weight_decay))
    loss_fn = loss_fn or default_loss
    history = History()
    params = [p for p in model.parameters() if p.requires_grad]
    recorder = Recorder(model) if record else None
    start = time.perf_counter()
    step = 0
    bar = tqdm(range(epochs), desc=desc or "training", disable=not progress, leave=False,
               unit="epoch", dynamic_ncols=True)
    try:
        if recorder is not None:
            recorder.__enter__()
        for epoch in bar:
            model.train()
            loss_sum = torch.zeros((), dtype=torch.float64)
            correct = torch.zeros((), dtype=torch.float64)
            n_seen, classify, step_losses = 0, True, []
            for batch_idx, (x, y) in enumerate(train_loader):
                if device is not None:
                    x, y = x.to(device), y.to(device)
                rec_now = recorder is not None and step % record_every == 0
                if recorder is not None:
                    recorder.capture = rec_now
                out = model(x)
                loss = loss_fn(out, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if rec_now:
                    recorder.record_gradients()
                # One host sync per step (not per layer): is the loss and every gradient finite?
                grads = [p.grad for p in params if p.grad is not None]
                checks = [loss.detach().float().reshape(())]
                checks += [g.float() for g in torch._foreach_norm(grads)] if grads else []
                if not bool(torch.isfinite(torch.stack(checks)).all()):
                    where = _locate_nonfinite(model, x)
                    raise NonFiniteError(
                        f"training stopped: non-finite loss or gradient at epoch {epoch + 1}, "
                        f"batch {batch_idx + 1} (step {step}); loss = {float(loss.detach()):.4g}; {where}",
                        epoch=epoch + 1, step=step,
                        layer=where.split("'")[1] if "'" in where else None)
                if clip_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, clip_norm)
                if rec_now:
                    recorder.snapshot_weights()
                opt.step()
                if rec_now:
                    recorder.record_updates()
                    recorder.end_step(step)
                detached = loss.detach()
                step_losses.append(detached)
                loss_sum = loss_sum.to(detached.device) + detached.double() * len(x)
                if _is_classification(out, y):
                    correct = correct.to(out.device) + (out.detach().argmax(1) == y).sum().double()
                else:
                    classify = False
                n_seen += len(x)
                step += 1
            if n_seen == 0:
                raise ValueError("train_loader yielded no batches")
            history.step_loss.extend(torch.stack(step_losses).cpu().tolist())
            history.train_loss.append(float(loss_sum) / n_seen)
            history.train_acc.append(float(correct) / n_seen if classify else math.nan)
            postfix = {"loss": f"{history.train_loss[-1]:.3f}"}
            if val_loader is not None:
                vl, va = evaluate(model, val_loader, loss_fn, device)
                history.val_loss.append(vl)
                history.val_acc.append(va)
                postfix["val_loss"] = f"{vl:.3f}"
            bar.set_postfix(postfix)
    finally:
        bar.close()
        if recorder is not None:
            recorder.__exit__(None, None, None)
    history.seconds = time.perf_counter() - start
    if recorder is not None:
        history.trace = recorder.trace()
    return history
