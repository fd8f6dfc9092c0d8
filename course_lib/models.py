"""Model builders and initialization: a multilayer perceptron with every knob the course turns.

Layers get readable names (``fc1`` ... ``fcN``, ``out``; ``block3.fc`` in residual nets) so that the
instrumentation and the plots speak the same language as the lessons.

- :func:`init_`: one initialization function for ``nn.Linear`` and ``nn.ConvNd`` (fills the layer
  in place and returns it, as ``torch.nn.init`` does), used by every builder of the course.
- :func:`mlp`, :class:`ResidualBlock`: the MLP builder.
- :func:`init_data`: the initialization explorer's numbers (activation std through random layers).
"""

from __future__ import annotations

import functools
import math
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from course_lib.core import (check_bool, check_choice, check_float, check_positive_int,
                             one_thread)
from course_lib.layers import IdentityActivation

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
    "identity": IdentityActivation,
}

#: Initialization names. ``default`` keeps PyTorch's own init (``kaiming_uniform_`` with
#: a = sqrt(5), i.e. U[-1/sqrt(fan_in), 1/sqrt(fan_in)], Var[w] = 1/(3 fan_in): *not* He init;
#: biases are drawn from the same range, not zeroed).
INITS: tuple[str, ...] = ("default", "normal", "lecun_normal", "xavier_uniform", "xavier_normal",
                          "kaiming_uniform", "kaiming_normal", "orthogonal")

#: Initializations an explorer offers (``normal`` needs a std: see the initialization explorer).
EXPLORER_INITS: tuple[str, ...] = tuple(i for i in INITS if i != "normal")

#: Normalization names (``None`` means no normalization layer).
NORMS: tuple[str | None, ...] = (None, "batch", "layer")

#: Reference gain per activation for :func:`init_data`: weights N(0, gain^2 / fan_in) with this
#: gain are the standard choice (He et al. 2015 for the ReLU family, LeCun et al. 1998 /
#: Klambauer et al. 2017 for SELU and linear, PyTorch's ``calculate_gain`` for tanh and sigmoid).
REFERENCE_GAINS: dict[str, tuple[float, str]] = {
    "sigmoid": (1.0, "calculate_gain('sigmoid') = 1"),
    "tanh": (5.0 / 3.0, "calculate_gain('tanh') = 5/3"),
    "relu": (math.sqrt(2.0), "He: √2"),
    "leaky_relu": (math.sqrt(2.0 / (1 + 0.01**2)), "He (leaky, slope 0.01): √(2/1.0001)"),
    "prelu": (math.sqrt(2.0 / (1 + 0.25**2)), "He (slope 0.25): √(2/1.0625)"),
    "elu": (math.sqrt(2.0), "He: √2 (ReLU's; approximate for ELU)"),
    "selu": (1.0, "LeCun: 1 (self-normalizing)"),
    "gelu": (math.sqrt(2.0), "He: √2 (ReLU's; approximate for GELU)"),
    "silu": (math.sqrt(2.0), "He: √2 (ReLU's; approximate for SiLU)"),
    "identity": (1.0, "LeCun: 1"),
}

#: PyTorch's default ``nn.Linear`` init, Var[w] = 1/(3 fan_in), as a gain: 1/√3.
PYTORCH_DEFAULT_GAIN = 1.0 / math.sqrt(3.0)

_LAYER_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def make_activation(name: str) -> nn.Module:
    """A fresh activation module for ``name`` (one of :data:`ACTIVATIONS`)."""
    check_choice("activation", name, ACTIVATIONS)
    return ACTIVATIONS[name]()


def check_norm(norm: str | None) -> str | None:
    """``None`` or ``"none"`` -> None; ``"batch"`` / ``"layer"`` unchanged; else ValueError."""
    check_choice("norm", norm, (*NORMS, "none"))
    return None if norm in (None, "none") else norm


def check_init(init: str, std: float | None = None) -> None:
    """ValueError unless ``init`` is one of :data:`INITS` (``"normal"`` with a positive std)."""
    check_choice("init", init, INITS)
    if init == "normal":
        check_float("std (needed by init 'normal')", std, positive=True)


def fan_in_out(layer: nn.Module) -> tuple[int, int]:
    """(fan_in, fan_out) of a ``nn.Linear`` or ``nn.ConvNd``: a conv counts its kernel,
    fan_in = in_channels * kh * kw."""
    if not isinstance(layer, _LAYER_TYPES):
        raise ValueError(f"layer must be nn.Linear or nn.Conv1d/2d/3d, got {type(layer).__name__}")
    fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(layer.weight)
    return int(fan_in), int(fan_out)


def init_(layer: nn.Module, init: str, *, activation: str = "relu", std: float | None = None,
          gain: float | None = None) -> nn.Module:
    """Initialize one ``nn.Linear`` or ``nn.ConvNd`` in place and return it; biases become zero
    (except for ``default``, which leaves PyTorch's init untouched).

    - ``normal``: N(0, std^2), ``std`` required.
    - ``lecun_normal``: Var[w] = 1 / fan_in (LeCun et al. 1998; what SELU expects).
    - ``xavier_*``: Var[w] = gain^2 * 2 / (fan_in + fan_out) (Glorot & Bengio 2010); the uniform
      version draws from U[-a, a] with a = gain * sqrt(6 / (fan_in + fan_out)).
    - ``kaiming_*``: Var[w] = 2 / fan_in (He et al. 2015), 2 / ((1 + s^2) fan_in) for
      ``activation="leaky_relu"`` with slope s = 0.01.
    - ``orthogonal``: a (semi-)orthogonal matrix times ``gain`` (Saxe et al. 2014).

    Fans count a conv's kernel (:func:`fan_in_out`). ``gain`` defaults to 1.
    """
    check_init(init, std)
    fan_in_out(layer)  # checks the layer type
    if init == "default":
        return layer
    w = layer.weight
    g = 1.0 if gain is None else check_float("gain", gain, positive=True)
    with torch.no_grad():
        if init == "normal":
            nn.init.normal_(w, 0.0, float(std))
        elif init == "lecun_normal":
            nn.init.normal_(w, 0.0, g / math.sqrt(fan_in_out(layer)[0]))
        elif init == "xavier_uniform":
            nn.init.xavier_uniform_(w, gain=g)
        elif init == "xavier_normal":
            nn.init.xavier_normal_(w, gain=g)
        elif init in ("kaiming_uniform", "kaiming_normal"):
            slope = 0.01 if activation == "leaky_relu" else 0.0
            fn = nn.init.kaiming_uniform_ if init == "kaiming_uniform" else nn.init.kaiming_normal_
            fn(w, a=slope, mode="fan_in", nonlinearity="leaky_relu")
        elif init == "orthogonal":
            nn.init.orthogonal_(w, gain=g)
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)
    return layer


def _make_norm(norm: str | None, width: int) -> nn.Module | None:
    if norm == "batch":
        return nn.BatchNorm1d(width)
    if norm == "layer":
        return nn.LayerNorm(width)
    return None


class ResidualBlock(nn.Module):
    """``x + residual_scale * act(norm(fc(x)))``: one hidden layer with an identity skip path.

    The block's Jacobian is ``I + residual_scale * dF/dx``: the identity gives the gradient a path
    around the layer, although the branch term can still add to it or cancel part of it (He et
    al. 2016). This is the "ReLU before addition" arrangement of He et al. (2016b); their original
    block applies the activation *after* the addition.

    With ``preactivation=True`` the branch is ``fc(act(norm(x)))``: normalization and activation
    come *before* the weights (He et al. 2016b, "Identity mappings in deep residual networks").

    With ``postactivation=True`` the block is ``act(x + residual_scale * norm(fc(x)))``: the
    activation comes *after* the addition, as in He et al.'s original block (2016a) and in
    torchvision's and timm's ResNets, so the identity path passes through ``act`` too.
    """

    def __init__(self, width: int, activation: str, norm: str | None, *,
                 residual_scale: float = 1.0, preactivation: bool = False,
                 postactivation: bool = False) -> None:
        super().__init__()
        self.preactivation = check_bool("preactivation", preactivation)
        self.postactivation = check_bool("postactivation", postactivation)
        if preactivation and postactivation:
            raise ValueError("choose at most one of preactivation=True (act before the weights) "
                             "and postactivation=True (act after the addition)")
        self.residual_scale = check_float("residual_scale", residual_scale, low=0.0)
        self.fc = nn.Linear(width, width)
        norm_layer = _make_norm(norm, width)
        if norm_layer is not None:
            self.norm = norm_layer
        self.act = make_activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.preactivation:
            h = self.norm(x) if hasattr(self, "norm") else x
            return x + self.residual_scale * self.fc(self.act(h))
        h = self.fc(x)
        if hasattr(self, "norm"):
            h = self.norm(h)
        if self.postactivation:
            return self.act(x + self.residual_scale * h)
        return x + self.residual_scale * self.act(h)


def mlp(in_features: int, out_features: int, depth: int, width: int, activation: str = "relu",
        init: str = "default", norm: str | None = None, residual: bool = False, *,
        std: float | None = None, gain: float | None = None,
        residual_scale: float = 1.0, preactivation: bool = False,
        postactivation: bool = False) -> nn.Sequential:
    """A multilayer perceptron with ``depth`` hidden layers of ``width`` units.

    Each hidden layer is ``Linear -> [norm] -> activation``. With ``residual=True`` the hidden
    layers after the first (which changes the width) become :class:`ResidualBlock` s, the branch
    scaled by ``residual_scale``. The output layer is a plain ``Linear`` (logits).

    Args:
        activation: one of :data:`ACTIVATIONS`.
        init: one of :data:`INITS`, applied to every ``Linear`` by :func:`init_` (``std`` for
            ``normal``, ``gain`` for ``xavier_*``, ``lecun_normal`` and ``orthogonal``).
        norm: ``None``, ``"batch"`` (BatchNorm1d) or ``"layer"`` (LayerNorm), before the activation.
        preactivation: with ``residual=True``, pre-activation blocks (see :class:`ResidualBlock`).
        postactivation: with ``residual=True``, the activation after the addition (He et al.'s
            original block; see :class:`ResidualBlock`). The default is "ReLU before addition".

    Raises:
        ValueError: an unknown name or a bad size, with the valid choices listed.
    """
    in_features = check_positive_int("in_features", in_features)
    out_features = check_positive_int("out_features", out_features)
    depth = check_positive_int("depth", depth)
    width = check_positive_int("width", width)
    check_choice("activation", activation, ACTIVATIONS)
    check_init(init, std)
    check_choice("norm", norm, NORMS)
    check_bool("residual", residual)
    check_bool("preactivation", preactivation)
    check_float("residual_scale", residual_scale, low=0.0)
    check_bool("postactivation", postactivation)
    if preactivation and not residual:
        raise ValueError("preactivation=True needs residual=True (it arranges a residual block)")
    if postactivation and not residual:
        raise ValueError("postactivation=True needs residual=True (it arranges a residual block)")
    if preactivation and postactivation:
        raise ValueError("choose at most one of preactivation=True and postactivation=True")

    layers: OrderedDict[str, nn.Module] = OrderedDict()
    layers["fc1"] = nn.Linear(in_features, width)
    norm_layer = _make_norm(norm, width)
    if norm_layer is not None:
        layers["norm1"] = norm_layer
    layers["act1"] = make_activation(activation)
    for i in range(2, depth + 1):
        if residual:
            layers[f"block{i}"] = ResidualBlock(width, activation, norm,
                                                residual_scale=residual_scale,
                                                preactivation=preactivation,
                                                postactivation=postactivation)
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
            init_(module, init, activation=activation, std=std, gain=gain)
    return model


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# -- the initialization explorer's numbers -------------------------------------------------------
@functools.lru_cache(maxsize=32)
def _init_forward(activation: str, gain: float, depth: int, width: int, seed: int,
                  batch_size: int) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """Activation std and signal spread per layer, and (up to 4096 of) the last layer's values;
    a pure function, memoized so that moving only the gain does not recompute the reference."""
    act = make_activation(activation)
    with torch.no_grad(), one_thread():
        gen = torch.Generator().manual_seed(seed)
        h = torch.randn(batch_size, width, generator=gen)
        stds, spreads = [], []
        for _ in range(depth):
            w = torch.randn(width, width, generator=gen).mul_(gain / math.sqrt(width))
            h = act(h @ w.T)
            stds.append(float(h.std()))
            spreads.append(float(h.var(dim=0).mean().sqrt()))
        return tuple(stds), tuple(spreads), tuple(h.flatten()[:4096].tolist())


def init_data(activation: str = "tanh", gain: float = 1.0, depth: int = 20, width: int = 128,
              seed: int = 0, batch_size: int = 128) -> dict[str, Any]:
    """Activation std per layer when weights are N(0, gain^2 / fan_in), biases zero.

    The input is a fixed standard-normal batch of ``batch_size`` vectors of size ``width``; every
    one of the ``depth`` layers is ``activation(W h)`` with a square ``width`` x ``width`` matrix.
    ``gain`` multiplies the LeCun scale 1/√fan_in: 1 is LeCun, √2 is He, 1/√3 ≈ 0.58 is what
    PyTorch's default ``nn.Linear`` weight init amounts to. The same random matrices also run at
    the activation's reference gain (:data:`REFERENCE_GAINS`) for comparison.

    Returns:
        a dict with ``layer`` (1..depth), ``act_std`` and ``act_spread`` at ``gain``,
        ``reference_gain``, ``reference_label``, ``reference_std``, ``last`` (up to 4096 of the
        last layer's activations, for a histogram) and ``params``.

    Raises:
        ValueError: a bad argument, with the valid choices listed.
    """
    check_choice("activation", activation, ACTIVATIONS)
    gain = check_float("gain", gain, 1e-3, 100.0)
    depth = check_positive_int("depth", depth)
    width = check_positive_int("width", width)
    batch_size = check_positive_int("batch_size", batch_size, minimum=2)
    seed = check_positive_int("seed", seed, minimum=0)
    ref_gain, ref_label = REFERENCE_GAINS[activation]
    stds, spreads, last = _init_forward(activation, gain, depth, width, seed, batch_size)
    ref_stds, _, _ = _init_forward(activation, ref_gain, depth, width, seed, batch_size)
    return {
        "layer": list(range(1, depth + 1)),
        "act_std": list(stds),
        "act_spread": list(spreads),
        "reference_gain": ref_gain,
        "reference_label": ref_label,
        "reference_std": list(ref_stds),
        "last": list(last),
        "params": dict(activation=activation, gain=gain, depth=depth, width=width, seed=seed,
                       batch_size=batch_size),
    }
