"""Which layers the course measures: one selection rule that every tool shares.

``select_layers(model)`` decides, at the source, the layers that :func:`course_lib.gradient_norms`,
the :class:`~course_lib.instrument.Recorder`, :func:`course_lib.diagnose`, the plots and the
explorers report, so one model gives the same layer list everywhere.

- ``which="main"`` (the default): the *main-path* layers, the modules that own a weight of two or
  more dimensions (Linear, ConvNd, Embedding, RNN/LSTM/GRU and their cells, MultiheadAttention's
  input projection, a hand-written cell's ``nn.Parameter`` matrix). Norm gains, biases, PReLU
  slopes and layer scales are one-dimensional and therefore out: they rescale the signal but are
  not the matrices whose products make gradients vanish or explode. This is the rule of Karpathy's
  makemore part 3 (``p.ndim == 2``), extended to convolution kernels.
- ``which="all"``: every module that owns parameters, normalization layers included.

A layer's measured parameters are its weights of two or more dimensions (``"main"``) or all its
own parameters (``"all"``). Only parameters named ``*weight*`` count in a module that has child
modules, so that a model's position embeddings and class tokens, which sit on the root module,
do not turn the whole model into one "layer".

Names are the ones ``model.named_modules()`` gives (``fc1``, ``layer1.0.conv2``); the order
input to output is the order of the forward pass, which the measuring tools learn from their
hooks (see :func:`course_lib.instrument.snapshot`).
"""

from __future__ import annotations

from torch import nn

from course_lib.core import check_choice

#: The layer sets :func:`select_layers` knows.
LAYER_SETS: tuple[str, ...] = ("main", "all")

class IdentityActivation(nn.Identity):
    """The identity used as a network's activation function (a linear network). A plain
    ``nn.Identity`` is a placeholder in many real models and is not an activation."""


#: Module types treated as activation functions (their outputs are "the activations").
ACTIVATION_TYPES: tuple[type[nn.Module], ...] = (
    nn.Sigmoid, nn.Tanh, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.CELU,
    nn.SELU, nn.GELU, nn.SiLU, nn.Mish, nn.Softplus, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid,
    nn.Softsign, nn.Tanhshrink, nn.LogSigmoid, IdentityActivation,
)


def layer_parameters(module: nn.Module, which: str = "main") -> list[nn.Parameter]:
    """The parameters of ``module`` (its own, not its children's) that the layer set measures."""
    check_choice("layer set", which, LAYER_SETS)
    own = list(module.named_parameters(recurse=False))
    if which == "all":
        return [p for _, p in own]
    has_children = any(True for _ in module.children())
    return [p for name, p in own if p.ndim >= 2 and (not has_children or "weight" in name)]


def select_layers(model: nn.Module, which: str = "main") -> dict[str, nn.Module]:
    """The layers ``which`` selects, ``{name: module}`` in registration order.

    Activation modules (:data:`ACTIVATION_TYPES`) are never layers, even PReLU with its slope.
    The root module is named by its class when it is a layer itself (a bare ``nn.Linear``).

    Raises:
        ValueError: ``which`` is not one of :data:`LAYER_SETS`, or ``model`` is not a module.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_choice("layer set", which, LAYER_SETS)
    chosen: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if isinstance(module, ACTIVATION_TYPES):
            continue
        if layer_parameters(module, which):
            chosen[name or type(module).__name__] = module
    return chosen


def activation_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Activation modules (:data:`ACTIVATION_TYPES`), ``{name: module}`` in registration order."""
    return {name or type(m).__name__: m for name, m in model.named_modules()
            if isinstance(m, ACTIVATION_TYPES)}
