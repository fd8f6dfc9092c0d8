"""Model builders: a multilayer perceptron with every knob the course turns.

Layers get readable names (``fc1`` ... ``fcN``, ``out``; ``block3.fc`` in residual nets) so that the
instrumentation and the plots speak the same language as the lessons.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn

from course_lib.core import check_bool, check_choice, check_positive_int

#: Activation names and the module each builds.
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.01),
    "prelu": lambda: nn.PReLU(num_parameters=1, init=0.25),
    "elu": nn.ELU,
    "selu": nn.SELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "identity": nn.Identity,
}

#: Initialization names. ``default`` keeps PyTorch's own ``nn.Linear`` init (kaiming_uniform with
#: a=sqrt(5), i.e. Var[w] = 1/(3 fan_in): *not* He init).
INITS: tuple[str, ...] = ("default", "normal", "lecun_normal", "xavier_uniform", "xavier_normal",
                          "kaiming_uniform", "kaiming_normal", "orthogonal")

#: Normalization names (``None`` means no normalization layer).
NORMS: tuple[str | None, ...] = (None, "batch", "layer")


def make_activation(name: str) -> nn.Module:
    """A fresh activation module for ``name`` (one of :data:`ACTIVATIONS`)."""
    check_choice("activation", name, ACTIVATIONS)
    return ACTIVATIONS[name]()


def init_linear_(layer: nn.Linear, init: str, activation: str = "relu", std: float | None = None,
                 gain: float | None = None) -> None:
    """Initialize one ``nn.Linear`` in place; biases become zero (except for ``default``).

    - ``normal``: N(0, std^2), ``std`` required.
    - ``lecun_normal``: Var[w] = 1 / fan_in (LeCun et al. 1998; what SELU expects).
    - ``xavier_*``: Var[w] = gain^2 * 2 / (fan_in + fan_out) (Glorot & Bengio 2010), gain 1.
    - ``kaiming_*``: Var[w] = 2 / fan_in (He et al. 2015), or 2 / ((1 + a^2) fan_in) for leaky
      ReLU with slope a.
    - ``orthogonal``: a (semi-)orthogonal matrix times ``gain`` (Saxe et al. 2014), gain 1.
    """
    check_choice("init", init, INITS)
    if init == "default":
        return
    w = layer.weight
    if init == "normal":
        if std is None or not std > 0:
            raise ValueError(f"init 'normal' needs a positive std, got {std!r}")
        nn.init.normal_(w, 0.0, float(std))
    elif init == "lecun_normal":
        nn.init.normal_(w, 0.0, 1.0 / math.sqrt(w.shape[1]))
    elif init == "xavier_uniform":
        nn.init.xavier_uniform_(w, gain=1.0 if gain is None else gain)
    elif init == "xavier_normal":
        nn.init.xavier_normal_(w, gain=1.0 if gain is None else gain)
    elif init in ("kaiming_uniform", "kaiming_normal"):
        slope = 0.01 if activation == "leaky_relu" else 0.0
        fn = nn.init.kaiming_uniform_ if init == "kaiming_uniform" else nn.init.kaiming_normal_
        fn(w, a=slope, mode="fan_in", nonlinearity="leaky_relu")
    elif init == "orthogonal":
        nn.init.orthogonal_(w, gain=1.0 if gain is None else gain)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


def _make_norm(norm: str | None, width: int) -> nn.Module | None:
    if norm == "batch":
        return nn.BatchNorm1d(width)
    if norm == "layer":
        return nn.LayerNorm(width)
    return None


class ResidualBlock(nn.Module):
    """``x + scale * act(norm(fc(x)))``: one hidden layer with an identity skip path.

    The Jacobian of the block is ``I + scale * dF/dx``, so the gradient always has a path that
    no weight matrix or activation derivative can shrink (He et al. 2016).

    With ``preactivation=True`` the branch is ``fc(act(norm(x)))`` instead: normalization and
    activation come *before* the weights (He et al. 2016, "Identity mappings in deep residual
    networks"), so the branch's output is not forced positive by a ReLU and each branch sees a
    normalized input however large the sum ``x`` has grown.
    """

    def __init__(self, width: int, activation: str, norm: str | None, scale: float = 1.0,
                 preactivation: bool = False) -> None:
        super().__init__()
        self.preactivation = check_bool("preactivation", preactivation)
        self.fc = nn.Linear(width, width)
        norm_layer = _make_norm(norm, width)
        if norm_layer is not None:
            self.norm = norm_layer
        self.act = make_activation(activation)
        self.scale = float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.preactivation:
            h = self.norm(x) if hasattr(self, "norm") else x
            return x + self.scale * self.fc(self.act(h))
        h = self.fc(x)
        if hasattr(self, "norm"):
            h = self.norm(h)
        return x + self.scale * self.act(h)


def check_init_std(init: str, std: float | None) -> None:
    """Raise ``ValueError`` when ``init`` is ``"normal"`` and ``std`` is not a positive number."""
    if init == "normal" and (std is None or not std > 0):
        raise ValueError(f"init 'normal' needs a positive std, got {std!r}")


def mlp(in_features: int, out_features: int, depth: int, width: int, activation: str = "relu",
        init: str = "default", norm: str | None = None, residual: bool = False, *,
        std: float | None = None, gain: float | None = None,
        residual_scale: float = 1.0, preactivation: bool = False) -> nn.Sequential:
    """A multilayer perceptron with ``depth`` hidden layers of ``width`` units.

    Each hidden layer is ``Linear -> [norm] -> activation``. With ``residual=True`` the hidden
    layers after the first (which changes the width) become :class:`ResidualBlock` s, optionally
    with the branch scaled by ``residual_scale``. The output layer is a plain ``Linear`` (logits).

    Args:
        activation: one of :data:`ACTIVATIONS`.
        init: one of :data:`INITS`, applied to every ``Linear`` (``std`` for ``normal``,
            ``gain`` for ``xavier_*`` and ``orthogonal``).
        norm: ``None``, ``"batch"`` (BatchNorm1d) or ``"layer"`` (LayerNorm), before the activation.
        preactivation: with ``residual=True``, use pre-activation blocks ``x + scale *
            fc(act(norm(x)))`` (see :class:`ResidualBlock`); needs ``residual=True``.

    Raises:
        ValueError: an unknown name or a bad size, with the valid choices listed.
    """
    in_features = check_positive_int("in_features", in_features)
    out_features = check_positive_int("out_features", out_features)
    depth = check_positive_int("depth", depth)
    width = check_positive_int("width", width)
    check_choice("activation", activation, ACTIVATIONS)
    check_choice("init", init, INITS)
    check_choice("norm", norm, NORMS)
    check_bool("residual", residual)
    check_bool("preactivation", preactivation)
    if preactivation and not residual:
        raise ValueError("preactivation=True needs residual=True (it arranges a residual block)")
    check_init_std(init, std)

    layers: OrderedDict[str, nn.Module] = OrderedDict()
    layers["fc1"] = nn.Linear(in_features, width)
    norm_layer = _make_norm(norm, width)
    if norm_layer is not None:
        layers["norm1"] = norm_layer
    layers["act1"] = make_activation(activation)
    for i in range(2, depth + 1):
        if residual:
            layers[f"block{i}"] = ResidualBlock(width, activation, norm, scale=residual_scale,
                                               preactivation=preactivation)
        else:
            layers[f"fc{i}"] = nn.Linear(width, width)
            norm_layer = _make_norm(norm, width)
            if norm_layer is not None:
                layers[f"norm{i}"] = norm_layer
            layers[f"act{i}"] = make_activation(activation)
    layers["out"] = nn.Linear(width, out_features)
    model = nn.Sequential(layers)
    for module in model.modules():
        if isinstance(module, nn.Linear):
            init_linear_(module, init, activation=activation, std=std, gain=gain)
    return model


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
