"""Statistics of tensors, as pure functions: activation statistics and grouped norms.

Everything here takes tensors and returns tensors on the same device (no host synchronization),
so that a recorder can call it during training and copy the results to the CPU once at the end.

Activation statistics of one site (an activation module or a functional call site), from its
outputs over the batch (all calls of the site pooled, as more examples):

- ``act_mean``, ``act_std``: mean and standard deviation over every entry (batch x units);
- ``act_spread``: the *signal spread*, the root-mean-square over units of each unit's standard
  deviation across the batch: how much the layer's output still depends on the input. It can be
  1e-9 while ``act_std`` reads 0.07, because ``act_std`` also counts the differences *between*
  units (their biases), which carry no information about the input;
- ``saturated``: fraction of outputs where a sigmoid's or tanh's derivative is below
  :data:`SATURATION_THRESHOLD` of its peak (NaN for other kinds);
- ``dead``: fraction of units whose output is exactly zero for every example.

A *unit* is a feature of a (batch, features) output, a channel of a (batch, channels, ...)
convolution output with 4 or more dimensions, and the last dimension of a (batch, sequence,
features) output.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

#: Fraction of the derivative's peak below which a sigmoid/tanh output counts as saturated.
SATURATION_THRESHOLD = 0.05

#: The statistics :func:`activation_stats` returns, in order.
ACTIVATION_FIELDS: tuple[str, ...] = ("act_mean", "act_std", "act_spread", "saturated", "dead")

#: Activation kinds whose derivative can be read off their output, and how.
SATURATING_KINDS: tuple[str, ...] = ("sigmoid", "tanh")


def saturation_mask(output: torch.Tensor, kind: str) -> torch.Tensor | None:
    """Where the derivative is below :data:`SATURATION_THRESHOLD` of its peak, read from the
    output alone (sigmoid' = s(1 - s), peak 1/4; tanh' = 1 - t^2, peak 1); None for other kinds."""
    if kind == "sigmoid":
        return output * (1 - output) < SATURATION_THRESHOLD * 0.25
    if kind == "tanh":
        return 1 - output * output < SATURATION_THRESHOLD
    return None


def _dead_fraction(x: torch.Tensor) -> torch.Tensor:
    """(G, N, ...) outputs -> (G,) fraction of units that are exactly 0 for every example."""
    zero = x == 0
    if x.ndim == 3:  # (G, N, F), the common case: a unit is dead when its largest |x| is 0
        return (x.abs().amax(dim=1) == 0).float().mean(dim=1)
    if x.ndim >= 5:  # (G, N, C, spatial...): a unit is a channel
        units = zero.transpose(1, 2).reshape(x.shape[0], x.shape[2], -1).all(dim=2)
    elif x.ndim == 4:  # (G, N, T, F): a unit is a feature (the last dimension)
        units = zero.reshape(x.shape[0], -1, x.shape[-1]).all(dim=1)
    elif x.ndim == 3:  # (G, N, F)
        units = zero.all(dim=1)
    else:  # (G, N): one unit
        units = zero.all(dim=1, keepdim=True)
    return units.float().mean(dim=1)


def activation_stats(outputs: Sequence[torch.Tensor], kind: str) -> torch.Tensor:
    """Statistics (:data:`ACTIVATION_FIELDS`, in order) of ``G`` sites of the same ``kind``
    whose outputs have the same shape: ``outputs`` is a list of G tensors (batch first), the
    result has shape (G, 5) on their device, float64.

    Variances are computed by two passes (each unit's mean, then the squared deviations from
    it): the signal spread of a deep sigmoid net is 1e-8 next to a mean of 0.5, which a one-pass
    formula (E[x^2] - E[x]^2) would lose to cancellation. float64 outputs are computed in float64
    (a spread of 1e-9 next to 0.5 is below float32's resolution of about 6e-8 there); other
    dtypes in float32. Outputs with fewer than two examples have NaN spread.
    """
    if not outputs:
        raise ValueError("outputs is empty")
    x = torch.stack([o.detach() for o in outputs])  # (G, N, ...)
    g, n = x.shape[0], (x.shape[1] if x.ndim > 1 else 1)
    d = x.reshape(g, n, -1)  # (G, N, P): P positions (units x spatial)
    d = d if d.dtype == torch.float64 else d.float()  # float64 outputs keep their precision
    unit_mean = d.mean(dim=1, keepdim=True)
    dev = d - unit_mean
    within = (dev * dev).sum(dim=1)  # (G, P): squared deviations across the batch
    mean = unit_mean.mean(dim=(1, 2))
    between = (unit_mean[:, 0] - mean[:, None]).pow(2).sum(dim=1) * n
    count = n * d.shape[2]
    std = ((within.sum(dim=1) + between) / max(count - 1, 1)).sqrt()
    spread = (within / (n - 1)).mean(dim=1).sqrt() if n > 1 else torch.full_like(mean, math.nan)
    sat = saturation_mask(x.reshape(g, -1), kind)
    sat_frac = sat.float().mean(dim=1) if sat is not None else torch.full_like(mean, math.nan)
    dead = _dead_fraction(x)
    return torch.stack([mean, std, spread, sat_frac, dead], dim=1).double()


def site_stats(outputs: dict[str, list[torch.Tensor]], kinds: dict[str, str],
               sites: Sequence[str], device: torch.device) -> torch.Tensor:
    """(len(sites), 5) statistics of every site in ``sites`` (NaN rows for sites without
    outputs). Each site's calls are pooled along the batch dimension; sites of the same kind and
    shape are computed together."""
    result = torch.full((len(sites), len(ACTIVATION_FIELDS)), math.nan, dtype=torch.float64,
                        device=device)
    groups: dict[tuple, list[tuple[int, torch.Tensor]]] = {}
    for i, site in enumerate(sites):
        calls = outputs.get(site)
        if not calls:
            continue
        pooled = calls[0] if len(calls) == 1 else _pool(calls)
        key = (tuple(pooled.shape), pooled.dtype, kinds[site])
        groups.setdefault(key, []).append((i, pooled))
    for (_, _, kind), members in groups.items():
        idx = torch.tensor([i for i, _ in members], device=device)
        result[idx] = activation_stats([t for _, t in members], kind).to(device)
    return result


def _pool(calls: list[torch.Tensor]) -> torch.Tensor:
    """Several calls of one site as one batch: concatenated along the batch dimension when their
    shapes agree beyond it, else flattened per example."""
    if all(c.shape[1:] == calls[0].shape[1:] for c in calls):
        return torch.cat(calls, dim=0)
    return torch.cat([c.reshape(-1) for c in calls]).unsqueeze(0)


def grouped_norms(norms: torch.Tensor, owner: torch.Tensor | None, groups: int) -> torch.Tensor:
    """Root-sum-square of ``norms`` per group: ``owner[i]`` is the group of ``norms[i]``
    (``owner=None``: norm ``i`` is group ``i``, one each). Groups with no member are NaN."""
    if owner is None:
        return norms
    sq = torch.zeros(groups, dtype=norms.dtype, device=norms.device)
    sq.index_add_(0, owner, norms * norms)
    seen = torch.zeros(groups, dtype=torch.bool, device=norms.device)
    seen[owner] = True
    return torch.where(seen, sq.sqrt(), torch.full_like(sq, math.nan))
