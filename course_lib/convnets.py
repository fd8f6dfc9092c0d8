"""Convolutional network builder: plain, BatchNorm and residual CNNs with readable layer names.

Layers are named ``conv1`` ... ``convN`` (with ``norm1``..., ``act1``...) in plain nets and
``conv1``, ``block2`` ... ``blockN`` (each ``block.conv``, ``block.norm``, ``block.act``) in residual
nets, followed by ``pool`` (global average pooling), ``flatten`` and ``out`` (the classifier), so
that :mod:`course_lib.instrument` and :mod:`course_lib.plots` label them the way the lessons do.

:func:`stream_grad_norms` measures what the per-layer tools cannot see in a residual net: the
gradient on the residual stream itself, between the blocks.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.core import check_bool, check_choice, check_float, check_positive_int
from course_lib.models import ACTIVATIONS, check_init, init_, make_activation
from course_lib.records import Profile

#: Normalization names for :func:`cnn` (``None``: no normalization layer).
CONV_NORMS: tuple[str | None, ...] = (None, "batch")


class ConvResidualBlock(nn.Module):
    """``x + residual_scale * act(norm(conv(x)))`` with a 3x3 same-padding conv: an identity skip
    path around one conv layer, so the block's Jacobian is ``I + residual_scale * dF/dx`` (He et al.
    2016). ``residual_scale < 1`` (e.g. ``1/sqrt(depth)``) keeps the stream from growing with depth."""

    def __init__(self, channels: int, activation: str, norm: str | None, *,
                 residual_scale: float = 1.0) -> None:
        super().__init__()
        self.residual_scale = check_float("residual_scale", residual_scale, low=0.0)
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=norm is None)
        if norm == "batch":
            self.norm = nn.BatchNorm2d(channels)
        self.act = make_activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        if hasattr(self, "norm"):
            h = self.norm(h)
        h = self.act(h)
        return x + self.residual_scale * h


def cnn(in_channels: int, num_classes: int, depth: int, channels: int, norm: str | None = None,
        residual: bool = False, activation: str = "relu", init: str = "kaiming_normal", *,
        std: float | None = None, downsample: tuple[int, ...] = (),
        residual_scale: float = 1.0) -> nn.Sequential:
    """A CNN with ``depth`` 3x3 conv layers of ``channels`` channels, global average pooling and a
    linear classifier (``out``).

    Each conv layer is ``Conv2d(3x3, padding 1) -> [BatchNorm2d] -> activation``. With
    ``residual=True`` the conv layers after the first (which changes the channel count) become
    :class:`ConvResidualBlock` s. ``downsample`` lists layer numbers (2..depth) after which a 2x2
    max-pool (``pool{i}``) halves the resolution, to keep deep nets cheap.

    Args:
        norm: ``None`` or ``"batch"`` (BatchNorm2d before the activation; convs then drop their
            bias).
        activation: one of :data:`course_lib.models.ACTIVATIONS`.
        init: one of :data:`course_lib.models.INITS`, applied to every conv and to ``out`` by
            :func:`course_lib.models.init_` (``std`` for ``normal``).
        residual_scale: factor on each residual branch, ``x + residual_scale * branch(x)``
            (finite, >= 0: 0 starts each branch switched off, as ReZero and SkipInit do; only
            used with ``residual=True``). ``1/sqrt(depth)`` keeps the
            stream's variance from growing with depth, as in :func:`course_lib.models.mlp`.

    Raises:
        ValueError: an unknown name or a bad size, with the valid choices listed.
    """
    in_channels = check_positive_int("in_channels", in_channels)
    num_classes = check_positive_int("num_classes", num_classes)
    depth = check_positive_int("depth", depth)
    channels = check_positive_int("channels", channels)
    check_choice("norm", norm, CONV_NORMS)
    check_choice("activation", activation, ACTIVATIONS)
    check_init(init, std)
    check_bool("residual", residual)
    residual_scale = check_float("residual_scale", residual_scale, low=0.0)
    bad = [d for d in downsample if not isinstance(d, int) or not 1 <= d <= depth]
    if bad:
        raise ValueError(f"downsample holds layer numbers in 1..{depth}, got {bad}")

    layers: OrderedDict[str, nn.Module] = OrderedDict()
    layers["conv1"] = nn.Conv2d(in_channels, channels, 3, padding=1, bias=norm is None)
    if norm == "batch":
        layers["norm1"] = nn.BatchNorm2d(channels)
    layers["act1"] = make_activation(activation)
    if 1 in downsample:
        layers["pool1"] = nn.MaxPool2d(2)
    for i in range(2, depth + 1):
        if residual:
            layers[f"block{i}"] = ConvResidualBlock(channels, activation, norm,
                                                       residual_scale=residual_scale)
        else:
            layers[f"conv{i}"] = nn.Conv2d(channels, channels, 3, padding=1, bias=norm is None)
            if norm == "batch":
                layers[f"norm{i}"] = nn.BatchNorm2d(channels)
            layers[f"act{i}"] = make_activation(activation)
        if i in downsample:
            layers[f"pool{i}"] = nn.MaxPool2d(2)
    layers["pool"] = nn.AdaptiveAvgPool2d(1)
    layers["flatten"] = nn.Flatten()
    layers["out"] = nn.Linear(channels, num_classes)
    model = nn.Sequential(layers)
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            init_(module, init, activation=activation, std=std)
    return model


def stream_grad_norms(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor,
                      loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
                      ) -> Profile:
    """``||dL/dh||`` on the residual stream of a residual :func:`cnn`, from one forward and
    backward pass: at the input of the first :class:`ConvResidualBlock` (``"stem"``) and at the
    output of every block (``"block2"`` ... ), input to output.

    The per-layer tools measure ``dL/dW`` and the gradient at each conv's output, which in a
    residual net sits inside the branch; this is the gradient the skip path carries. The ratio of
    two neighbouring entries is the block's gain going down, ``||dL/dh_{l-1}|| / ||dL/dh_l||``
    (a max-pool between two blocks passes each output's gradient to one input and keeps the norm).
    The model runs in its current mode; BatchNorm running statistics and parameter gradients are
    left as they were. ``loss_fn`` defaults to cross-entropy.

    Raises:
        ValueError: not an ``nn.Sequential`` with at least one :class:`ConvResidualBlock`.
    """
    if not isinstance(model, nn.Sequential) or not any(
            isinstance(m, ConvResidualBlock) for m in model.children()):
        raise ValueError("model must be a residual cnn(..., residual=True): an nn.Sequential "
                         "with ConvResidualBlock children")
    loss_fn = loss_fn or F.cross_entropy
    buffers = {k: v.clone() for k, v in model.state_dict().items()
               if "running_" in k or "num_batches_tracked" in k}
    names, stream = [], []
    h = x
    for name, layer in model.named_children():
        if isinstance(layer, ConvResidualBlock) and not names:
            names.append("stem")
            stream.append(h)
        h = layer(h)
        if isinstance(layer, ConvResidualBlock):
            names.append(name)
            stream.append(h)
    grads = torch.autograd.grad(loss_fn(h, y), stream)
    model.load_state_dict(buffers, strict=False)
    norms = [float(torch.linalg.vector_norm(g, dtype=torch.float64)) for g in grads]
    return Profile(zip(names, norms), "stream gradient ||dL/dh||")
