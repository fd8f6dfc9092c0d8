"""Gradient measures written out: norms, clipping by hand, cosine, and the per-step factor.

- :func:`norms64`: the L2 norm of each tensor in float64 (a float32 norm squares its entries and
  underflows to 0 below about 1e-19, while a deep sigmoid net's gradients reach 1e-35).
- :func:`total_norm`: the norm of several tensors taken together (what ``clip_grad_norm_``
  returns).
- :func:`clip_by_norm` / :func:`clip_by_value`: the rules of ``torch.nn.utils.clip_grad_norm_``
  and ``clip_grad_value_``, returning new tensors so that the original gradient stays to compare.
- :func:`cosine`: the angle between two gradients.
- :func:`per_step_factor`: the factor by which a quantity shrinks (< 1) or grows (> 1) per layer
  or per time step, going from the output back to the input (or from the last step back to the
  first): the number the course's per-layer analyses predict.
- :func:`geometric_fit`: ``values ~ scale * rate ** positions`` by least squares on a log scale,
  for quantities measured at arbitrary positions (a gradient against network depth).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from course_lib.core import check_choice

#: Ways :func:`per_step_factor` can estimate the factor.
FACTOR_METHODS: tuple[str, ...] = ("fit", "endpoints")


def _tensors(grads: Sequence[torch.Tensor], what: str = "grads") -> list[torch.Tensor]:
    grads = list(grads) if not isinstance(grads, torch.Tensor) else [grads]
    if not grads or not all(isinstance(g, torch.Tensor) for g in grads):
        raise ValueError(f"{what} must be a non-empty sequence of tensors")
    return grads


def norms64(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """L2 norm of each tensor, computed in float64, as one float64 tensor on their device.

    A float32 norm squares the entries in float32: it reads 0 for a deep sigmoid net's 1e-35
    gradients and overflows for entries above 1.8e19. (Taking float32 norms first and redoing
    only the unsafe ones is faster, but it moves a clipped run's coefficient in its last bits, and
    chaotic training runs then end elsewhere: the lessons' stored runs use these exact norms.)
    """
    tensors = [t.detach() for t in _tensors(tensors, "tensors")]
    return torch.stack(torch._foreach_norm(tensors, 2, dtype=torch.float64))


def total_norm(grads: Sequence[torch.Tensor]) -> float:
    """The L2 norm of all tensors in ``grads`` together, as if concatenated (in float64)."""
    return float(torch.linalg.vector_norm(norms64(grads)))


def clip_by_norm(grads: Sequence[torch.Tensor], clip_norm: float,
                 eps: float = 1e-6) -> list[torch.Tensor]:
    """New tensors: ``grads`` scaled by ``min(1, clip_norm / (total_norm + eps))``, the rule of
    ``torch.nn.utils.clip_grad_norm_``. The direction never changes."""
    if isinstance(clip_norm, bool) or not isinstance(clip_norm, (int, float)) or not clip_norm > 0:
        raise ValueError(f"clip_norm must be a positive number, got {clip_norm!r}")
    grads = _tensors(grads)
    total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    scale = torch.clamp(clip_norm / (total + eps), max=1.0)
    return [g * scale.to(g.dtype) for g in grads]


def clip_by_value(grads: Sequence[torch.Tensor], clip_value: float) -> list[torch.Tensor]:
    """New tensors: every entry clamped to ``[-clip_value, clip_value]``, the rule of
    ``torch.nn.utils.clip_grad_value_``. Large entries are cut more than small ones, so the
    direction changes."""
    if isinstance(clip_value, bool) or not isinstance(clip_value, (int, float)) \
            or not clip_value > 0:
        raise ValueError(f"clip_value must be a positive number, got {clip_value!r}")
    return [g.clamp(-clip_value, clip_value) for g in _tensors(grads)]


def cosine(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    """Cosine of the angle between two gradients given as lists of tensors (flattened together)."""
    a, b = _tensors(a, "a"), _tensors(b, "b")
    if [t.shape for t in a] != [t.shape for t in b]:
        raise ValueError("a and b must hold tensors of the same shapes")
    va = torch.cat([t.detach().double().flatten() for t in a])
    vb = torch.cat([t.detach().double().flatten() for t in b])
    denom = va.norm() * vb.norm()
    if denom == 0:
        raise ValueError("the cosine with a zero vector is undefined")
    return float(va @ vb / denom)


def _positive_values(values: Sequence[float] | np.ndarray | torch.Tensor) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        v = values.detach().double().cpu().flatten()
    else:
        v = torch.tensor(np.asarray(values, dtype=np.float64)).flatten()
    if len(v) < 2:
        raise ValueError(f"need at least two values for a per-step factor, got {len(v)}")
    if not bool(((v > 0) & torch.isfinite(v)).all()):
        raise ValueError(f"values must be positive and finite for a per-step factor, got "
                         f"{[float(x) for x in v[:8]]}{' ...' if len(v) > 8 else ''}")
    return v


def geometric_fit(values: Sequence[float] | np.ndarray | torch.Tensor,
                  positions: Sequence[float] | np.ndarray | None = None) -> tuple[float, float]:
    """``(rate, scale)`` with ``values ~ scale * rate ** positions``: a least-squares line through
    log(values) against ``positions`` (default 0, 1, 2, ...). ``rate`` is the factor per unit of
    position; for a first-layer gradient measured at several depths it is the factor per layer.

    Raises:
        ValueError: fewer than two values, a value that is not positive and finite, or positions
            of another length.
    """
    v = _positive_values(values)
    x = (torch.arange(len(v), dtype=torch.float64) if positions is None
         else torch.tensor(np.asarray(positions, dtype=np.float64)).flatten())
    if len(x) != len(v):
        raise ValueError(f"positions and values must have the same length, got {len(x)} and "
                         f"{len(v)}")
    design = torch.stack([x, torch.ones_like(x)], 1)
    slope, intercept = torch.linalg.lstsq(design, v.log().unsqueeze(1)).solution[:, 0].tolist()
    return math.exp(slope), math.exp(intercept)


def per_step_factor(values: Sequence[float] | np.ndarray | torch.Tensor,
                    method: str = "fit") -> float:
    """The factor per step by which ``values`` change going *back* from the last to the first.

    ``values`` are ordered input to output (layers) or first to last (time steps), so a factor
    below 1 means the quantity shrinks toward the input (vanishing) and above 1 that it grows
    (exploding): ``values[i] ~ values[-1] * factor ** (n - 1 - i)``.

    Args:
        method: ``"fit"``, a least-squares line through log(values) (robust to one odd layer), or
            ``"endpoints"``, ``(values[0] / values[-1]) ** (1 / (n - 1))``.

    Raises:
        ValueError: fewer than two values, a value that is not positive and finite, or an
            unknown method.
    """
    check_choice("method", method, FACTOR_METHODS)
    v = _positive_values(values)
    if method == "endpoints":
        return float((v[0] / v[-1]) ** (1.0 / (len(v) - 1)))
    return 1.0 / geometric_fit(v)[0]
