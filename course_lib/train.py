"""A small, honest training loop: one shared optimizer step, recording, clipping, a NaN guard.

:class:`OptimizerStep` is the one optimizer step that :func:`fit` and
:func:`course_lib.rl.train_policy` share: backward, the gradient norms computed *once*, the NaN
guard and clipping from those same numbers, the update, and the hand-over to a
:class:`~course_lib.instrument.Recorder` on recorded steps.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.core import check_choice, check_float, check_positive_int
from course_lib.display import progress as progress_bar
from course_lib.gradients import norms64
from course_lib.instrument import Recorder, default_loss, first_nonfinite_output
from course_lib.layers import layer_parameters, select_layers
from course_lib.records import History

__all__ = ["OPTIMIZERS", "NonFiniteError", "OptimizerStep", "History", "make_optimizer",
           "evaluate", "fit"]

#: Optimizer names accepted by :func:`fit` (or pass a ``torch.optim.Optimizer``).
OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")

_FLOAT32_MAX = float(torch.finfo(torch.float32).max)

#: What a :class:`NonFiniteError` can say broke first.
NONFINITE_KINDS = ("loss", "gradient", "gradient norm overflow", "weights")


class NonFiniteError(FloatingPointError):
    """Training stopped because the loss or a gradient became NaN or infinite.

    Fields: ``step`` (the optimizer step where it was first seen), ``layer`` (the first layer,
    input side first, whose gradient is not finite, or None), ``kind`` (one of
    :data:`NONFINITE_KINDS`) and, from :func:`fit`, ``epoch`` and ``output_layer`` (the first
    module whose forward output is not finite on the failing batch, or None).
    """

    def __init__(self, message: str, *, step: int, layer: str | None, kind: str,
                 epoch: int | None = None, output_layer: str | None = None) -> None:
        super().__init__(message)
        self.step, self.layer, self.kind = step, layer, kind
        self.epoch, self.output_layer = epoch, output_layer


class OptimizerStep:
    """One optimizer step, shared by every training loop of the course.

    ``step(loss, index, recorder)`` runs ``zero_grad``, ``loss.backward()``, computes the
    gradient norms once, checks them and the loss (the NaN guard), clips the total norm to
    ``clip_norm`` if set, and calls ``optimizer.step()``. It returns the total gradient norm
    before clipping when it was computed (on recorded steps, when clipping, or with
    ``measure=True``), else None.

    What is checked: on every step the loss; on recorded steps and when clipping also every
    gradient, from the norms computed once for the recorder (float64, every trainable parameter)
    or for clipping. A non-finite gradient on another step breaks the weights in its update, so
    the next step's loss is not finite and the error names the layer whose weights broke (record
    every step, or clip, to stop one step earlier, before the update). Checking every gradient on
    every step would cost about 5 % of a small model's step; the loss costs nothing.

    On the CPU the guard checks before the update. On a GPU it makes no host synchronization on
    steps that are not recorded: it keeps the first failing step on the device and raises at the
    next recorded step or at :meth:`flush` (end of epoch).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, *,
                 clip_norm: float | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError(f"optimizer must be a torch.optim.Optimizer, got "
                             f"{type(optimizer).__name__}")
        self.clip_norm = None if clip_norm is None else check_float("clip_norm", clip_norm,
                                                                    positive=True)
        self.model, self.optimizer = model, optimizer
        self.params = [p for p in model.parameters() if p.requires_grad]
        device = self.params[0].device if self.params else torch.device("cpu")
        self._sync = device.type == "cpu"
        self._plain = self._sync and self.clip_norm is None  # checked by the loss alone
        self._first_bad = torch.full((), -1, dtype=torch.long, device=device)

    def __call__(self, loss: torch.Tensor, index: int, recorder: Recorder | None = None, *,
                 measure: bool = False) -> torch.Tensor | None:
        recording = recorder is not None and recorder.recording
        if self._plain and not (recording or measure):  # the common step, kept short
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if not math.isfinite(loss.item()):
                raise self._error(loss, index)
            self.optimizer.step()
            return None
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        total = None
        if recording or self.clip_norm is not None or measure:
            with_grad = [p for p in self.params if p.grad is not None]
            grads = [p.grad for p in with_grad]
            # float64: a float32 norm overflows once entries pass 1.8e19 (their squares do)
            norms = norms64(grads) if grads else torch.zeros(0, dtype=torch.float64)
            if recording:
                recorder.take_gradient_norms(with_grad, norms)
                recorder.record_loss(loss)
            total = torch.linalg.vector_norm(norms)
            # a total beyond float32's range breaks clipping and Adam's second moment even when
            # every entry is finite: count it as an overflow whatever dtype it was computed in
            finite = (total <= _FLOAT32_MAX) & torch.isfinite(loss.detach()).all()
        elif self._sync:
            if not math.isfinite(float(loss.detach())):
                raise self._error(loss, index)
            finite = None
        else:
            finite = torch.isfinite(loss.detach()).all()
        if finite is None:
            pass
        elif self._sync or recording:
            if not bool(finite):
                raise self._error(loss, index)
            if not self._sync and bool(self._first_bad >= 0):
                raise self._error(loss, int(self._first_bad), late=index)
        else:
            self._first_bad = torch.where(~finite & (self._first_bad < 0), index, self._first_bad)
        if self.clip_norm is not None:
            coef = torch.clamp(self.clip_norm / (total + 1e-6), max=1.0)
            torch._foreach_mul_(grads, coef.to(grads[0].dtype))
        if recording:
            recorder.before_update()
        self.optimizer.step()
        if recording:
            recorder.after_update()
        return total

    def flush(self) -> None:
        """Raise the error the guard kept on the device, if any (a no-op on the CPU)."""
        if not self._sync and bool(self._first_bad >= 0):
            raise self._error(None, int(self._first_bad), late=-1)

    def _error(self, loss: torch.Tensor | None, index: int, late: int | None = None
               ) -> NonFiniteError:
        """Say where it broke: the loss, or the first layer (input side first) whose gradient is
        not finite or whose gradient norm overflows while its entries are finite."""
        layer, kind = None, "loss"
        layers = select_layers(self.model, "all")
        broken = next((name for name, module in layers.items()
                       if any(not bool(torch.isfinite(p).all())
                              for p in layer_parameters(module, "all"))), None)
        if broken is not None:
            layer, kind = broken, "weights"
        elif late is None:
            for name, module in layers.items():
                grads = [p.grad for p in layer_parameters(module, "all") if p.grad is not None]
                if any(not bool(torch.isfinite(g).all()) for g in grads):
                    layer, kind = name, "gradient"
                    break
                if any(float(torch.linalg.vector_norm(g, dtype=torch.float64)) > _FLOAT32_MAX
                       for g in grads):
                    layer, kind = name, "gradient norm overflow"
                    break
        value = float(loss.detach()) if loss is not None else math.nan
        if loss is not None and not math.isfinite(value):
            kind = "loss" if layer is None else kind
        where = {"loss": "the loss", "gradient": f"the gradient of layer '{layer}'",
                 "weights": f"the weights of layer '{layer}', which are not finite (the "
                 "initialization or an earlier update made them so; an update breaks them when "
                 "its gradient is not finite or too large: record every step or clip to stop "
                 "before such an update)",
                 "gradient norm overflow": f"the gradient norm of layer '{layer}', which "
                 "exceeds float32's range although its entries are finite"}[kind]
        text = (f"non-finite values at step {index}: first in {where}; loss = {value:.4g}"
                if late is None else
                f"non-finite loss or gradient first at step {index}, detected "
                f"{'at the end of the epoch' if late < 0 else f'at step {late}'} (on a GPU the "
                "guard checks without synchronizing, at recorded steps and epoch ends)")
        return NonFiniteError(text, step=index, layer=layer, kind=kind)


def make_optimizer(model: nn.Module, optimizer: str, lr: float, momentum: float = 0.0,
                   weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """Build one of :data:`OPTIMIZERS` over the model's trainable parameters."""
    check_choice("optimizer", optimizer, OPTIMIZERS)
    lr = check_float("lr", lr, positive=True)
    params = [p for p in model.parameters() if p.requires_grad]
    if optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.RMSprop(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


class _DefaultLoss:
    """:func:`~course_lib.instrument.default_loss`, resolved on the first batch: class logits
    against class indices go straight to ``F.cross_entropy`` on every later batch."""

    def __init__(self) -> None:
        self._fn: Callable | None = None

    def __call__(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self._fn is None:
            simple = (isinstance(out, torch.Tensor) and out.ndim == 2
                      and not torch.is_floating_point(y) and not torch.is_complex(y) and y.ndim == 1)
            self._fn = F.cross_entropy if simple else default_loss
        return self._fn(out, y)

    def resolved(self) -> Callable:
        """The loss function chosen on the first batch (itself before any batch)."""
        return self._fn or self


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


def fit(model: nn.Module, train_loader: Iterable, epochs: int, *, lr: float = 0.01,
        optimizer: str | torch.optim.Optimizer = "sgd", momentum: float = 0.9,
        weight_decay: float = 0.0, loss_fn: Callable | None = None,
        clip_norm: float | None = None, val_loader: Iterable | None = None, record: bool = True,
        record_every: int = 50, device: torch.device | str | None = None, progress: bool = True,
        desc: str | None = None,
        scheduler: Callable[[torch.optim.Optimizer], Any] | None = None) -> History:
    """Train ``model`` for ``epochs`` passes over ``train_loader`` and return a
    :class:`~course_lib.records.History`.

    Args:
        optimizer: a name from :data:`OPTIMIZERS` (built with ``lr``, ``momentum``,
            ``weight_decay``) or a ready ``torch.optim.Optimizer``.
        loss_fn: ``loss_fn(output, y)``; default cross-entropy for class labels, MSE for floats.
        clip_norm: if set, rescale the gradient to at most this global L2 norm before each step
            (the rule of ``torch.nn.utils.clip_grad_norm_``); recorded norms are pre-clipping.
        record: keep per-layer statistics (:class:`~course_lib.instrument.Recorder`) every
            ``record_every`` steps (step 0 included) in ``History.trace``. A recorded step costs
            about one more step (1.4 ms on a 10-layer width-128 MLP, batch 64, one thread); every
            50th, the default (as PyTorch Lightning logs), keeps ``fit`` within 1.08x of a bare
            loop (``make bench``); ask for every 10th or every step where a lesson reads the
            trace step by step.
        device: move the model and each batch there; default: where the model is.
        scheduler: ``scheduler(optimizer)`` builds a ``torch.optim.lr_scheduler`` (for example
            ``lambda opt: torch.optim.lr_scheduler.LinearLR(opt, 0.01, 1.0, total_iters=100)``
            for a warm-up); it is stepped after every optimizer step, and ``History.lr`` holds
            the learning rate of each step.

    Raises:
        NonFiniteError: the loss or a gradient became NaN/inf; the message and the error's
            fields name the epoch, the step, the first non-finite gradient layer and the first
            module whose output is not finite.
        ValueError: a bad argument, with the valid choices.
    """
    epochs = check_positive_int("epochs", epochs)
    record_every = check_positive_int("record_every", record_every)
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if device is not None:
        model.to(device)
    opt = (optimizer if isinstance(optimizer, torch.optim.Optimizer)
           else make_optimizer(model, optimizer, lr, momentum, weight_decay))
    stepper = OptimizerStep(model, opt, clip_norm=clip_norm)
    if scheduler is not None and not callable(scheduler):
        raise ValueError(f"scheduler must be None or a callable scheduler(optimizer) that returns "
                         f"a torch.optim.lr_scheduler, got {type(scheduler).__name__}")
    schedule = scheduler(opt) if scheduler is not None else None
    loss_fn = loss_fn or _DefaultLoss()
    history = History()
    recorder = Recorder(model, every=record_every) if record else None
    start = time.perf_counter()
    step = 0
    bar = progress_bar(range(epochs), desc=desc or "training", unit="epoch", disable=not progress)
    try:
        for epoch in bar:
            model.train()
            losses: list[torch.Tensor] = []
            sizes: list[int] = []
            outputs: list[torch.Tensor] = []
            targets: list[torch.Tensor] = []
            n_seen, classify = 0, None
            for batch, (x, y) in enumerate(train_loader):
                if device is not None:
                    x, y = x.to(device), y.to(device)
                try:
                    if recorder is not None:
                        with recorder.step(step):
                            out = model(x)
                            loss = loss_fn(out, y)
                            stepper(loss, step, recorder)
                    else:
                        out = model(x)
                        loss = loss_fn(out, y)
                        stepper(loss, step)
                except NonFiniteError as err:
                    raise _in_epoch(err, model, x, epoch, batch) from None
                if classify is None:  # decided on an epoch's first batch
                    classify = _is_classification(out, y)
                    if isinstance(loss_fn, _DefaultLoss):
                        loss_fn = loss_fn.resolved()
                if schedule is not None:
                    history.lr.append(opt.param_groups[0]["lr"])
                    schedule.step()
                n = len(x)
                losses.append(loss.detach())
                sizes.append(n)
                if classify:  # the logits, compared with y once per epoch (one argmax, not many)
                    outputs.append(out.detach())
                    targets.append(y)
                n_seen += n
                step += 1
            if n_seen == 0:
                raise ValueError("train_loader yielded no batches")
            try:
                stepper.flush()
            except NonFiniteError as err:
                raise _in_epoch(err, model, None, epoch, None) from None
            epoch_losses = torch.stack(losses).double().cpu()
            history.step_loss.extend(epoch_losses.tolist())
            weights = torch.tensor(sizes, dtype=torch.float64)
            history.train_loss.append(float((epoch_losses * weights).sum()) / n_seen)
            history.train_acc.append(
                float((torch.cat(outputs).argmax(1) == torch.cat(targets)).sum()) / n_seen
                if classify and outputs else math.nan)
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
            recorder.remove()
    history.seconds = time.perf_counter() - start
    if recorder is not None:
        history.trace = recorder.trace()
    return history


def _in_epoch(err: NonFiniteError, model: nn.Module, x: torch.Tensor | None, epoch: int,
              batch: int | None) -> NonFiniteError:
    """The guard's error with the epoch, the batch and the first non-finite forward output."""
    output_layer = None
    if x is not None:
        try:
            output_layer = first_nonfinite_output(model, x)
        except Exception:  # the model itself may fail on broken weights; the gradient note suffices
            output_layer = None
    where = f"epoch {epoch + 1}" + (f", batch {batch + 1}" if batch is not None else "")
    extra = f"; first non-finite forward output at '{output_layer}'" if output_layer else ""
    return NonFiniteError(f"training stopped at {where}: {err}{extra}", step=err.step,
                          layer=err.layer, kind=err.kind, epoch=epoch + 1,
                          output_layer=output_layer)
