"""Recurrent nets and the gradient through time: dL/dh_t for every step t.

Backpropagation through time multiplies one Jacobian per step, ``W^T diag(f'(z_t))``; with a
fixed recurrent matrix ``W`` the gradient reaching step t therefore grows or shrinks roughly like
``rho(W) ** (T - t)``, where ``rho`` is the spectral radius (Bengio et al. 1994; Pascanu et al. 2013).
"""

from __future__ import annotations

import torch

from course_lib.core import check_choice, check_positive_int

#: Activations of :func:`unrolled_rnn_grad_norms`.
RNN_ACTIVATIONS = ("linear", "tanh")


def spectral_radius(w: torch.Tensor) -> float:
    """Largest absolute eigenvalue of a square matrix."""
    if w.ndim != 2 or w.shape[0] != w.shape[1]:
        raise ValueError(f"need a square matrix, got shape {tuple(w.shape)}")
    return float(torch.linalg.eigvals(w.detach().double()).abs().max())


def random_recurrent_matrix(size: int, radius: float, seed: int = 0,
                            orthogonal: bool = False) -> torch.Tensor:
    """A ``size x size`` matrix with spectral radius ``radius``: Gaussian, or ``radius`` times a
    random orthogonal matrix (then every singular value equals ``radius`` too)."""
    size = check_positive_int("size", size)
    if not radius >= 0:
        raise ValueError(f"radius must be >= 0, got {radius!r}")
    gen = torch.Generator().manual_seed(int(seed))
    w = torch.randn(size, size, generator=gen, dtype=torch.float64)
    if orthogonal:
        q, r = torch.linalg.qr(w)
        w = q * torch.sign(torch.diagonal(r))
        return (w * radius).float()
    return (w * (radius / spectral_radius(w))).float()


def unrolled_rnn_grad_norms(w: torch.Tensor, seq_len: int, activation: str = "linear",
                            batch: int = 32, input_scale: float = 1.0,
                            seed: int = 0) -> torch.Tensor:
    """||dL/dh_t|| for t = 1..seq_len of the RNN ``h_t = f(W h_{t-1} + x_t)``, ``h_0 = 0``.

    The inputs x_t are Gaussian with std ``input_scale``; the loss is ``sum(h_T) / batch`` (it
    reads only the last state, so every earlier gradient arrived through time). Returns a tensor of
    shape (seq_len,), on the CPU.
    """
    if w.ndim != 2 or w.shape[0] != w.shape[1]:
        raise ValueError(f"w must be a square matrix, got shape {tuple(w.shape)}")
    seq_len = check_positive_int("seq_len", seq_len)
    batch = check_positive_int("batch", batch)
    check_choice("activation", activation, RNN_ACTIVATIONS)
    gen = torch.Generator().manual_seed(int(seed))
    size = w.shape[0]
    xs = (torch.randn(seq_len, batch, size, generator=gen).to(w.device) * input_scale).requires_grad_()
    w = w.detach()
    h = torch.zeros(batch, size, device=w.device)
    states = []
    for t in range(seq_len):
        z = h @ w.T + xs[t]
        h = torch.tanh(z) if activation == "tanh" else z
        h.retain_grad()
        states.append(h)
    (h.sum() / batch).backward()
    return torch.stack([s.grad.norm() for s in states]).detach().cpu()


def growth_rate(norms: torch.Tensor) -> float:
    """Per-step factor by which ``norms`` grow going *back* in time (a log-linear fit)."""
    norms = torch.as_tensor(norms, dtype=torch.float64).flatten()
    if len(norms) < 2 or not bool((norms > 0).all()):
        raise ValueError("need at least two positive norms")
    steps_back = torch.arange(len(norms) - 1, -1, -1, dtype=torch.float64)
    design = torch.stack([steps_back, torch.ones_like(steps_back)], 1)
    slope = torch.linalg.lstsq(design, norms.log().unsqueeze(1)).solution[0, 0]
    return float(slope.exp())
