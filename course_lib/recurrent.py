"""Recurrent nets and the gradient through time: dL/dh_t for every step t.

Backpropagation through time multiplies one Jacobian per step, ``W^T diag(f'(z_t))``; with a
fixed recurrent matrix ``W`` the gradient reaching step t therefore grows or shrinks roughly like
``rho(W) ** (T - t)``, where ``rho`` is the spectral radius (Bengio et al. 1994; Pascanu et al. 2013).

- :func:`spectral_radius`, :func:`random_recurrent_matrix`, :func:`unrolled_rnn_grad_norms`,
  :func:`growth_rate`: a bare recurrence ``h_t = f(W h_{t-1} + x_t)`` with a chosen radius.
- :class:`SequenceModel`: a one-layer tanh RNN, LSTM or GRU read out by a linear head at the last step.
- :func:`hidden_grad_norms`: ``||dL/dh_t||`` for every time step ``t`` of a SequenceModel.
- :func:`clip_by_norm` / :func:`clip_by_value`: gradient clipping written out, returning new tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.core import check_choice, check_positive_int

#: Activations of :func:`unrolled_rnn_grad_norms`.
RNN_ACTIVATIONS = ("linear", "tanh")


def spectral_radius(w: torch.Tensor) -> float:
    """Largest absolute eigenvalue of a square matrix."""
    if w.ndim != 2 or w.shape[0] != w.shape[1]:
        raise ValueError(f"need a square matrix, got shape {tuple(w.shape)}")
    return float(torch.linalg.eigvals(w.detach().double()).abs().max())


def random_recurrent_matrix(size: int, radius: float, seed: int = 0,
                            orthogonal: bool = False,
                            dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A ``size x size`` matrix with spectral radius ``radius``: Gaussian, or ``radius`` times a
    random orthogonal matrix (then every singular value equals ``radius`` too). Drawn in float64,
    returned as ``dtype`` (ask for float64 when ``radius ** seq_len`` leaves float32's range)."""
    size = check_positive_int("size", size)
    if not radius >= 0:
        raise ValueError(f"radius must be >= 0, got {radius!r}")
    gen = torch.Generator().manual_seed(int(seed))
    w = torch.randn(size, size, generator=gen, dtype=torch.float64)
    if orthogonal:
        q, r = torch.linalg.qr(w)
        w = q * torch.sign(torch.diagonal(r))
        return (w * radius).to(dtype)
    return (w * (radius / spectral_radius(w))).to(dtype)


def unrolled_rnn_grad_norms(w: torch.Tensor, seq_len: int, activation: str = "linear",
                            batch: int = 32, input_scale: float = 1.0,
                            seed: int = 0) -> torch.Tensor:
    """||dL/dh_t|| for t = 1..seq_len of the RNN ``h_t = f(W h_{t-1} + x_t)``, ``h_0 = 0``.

    The inputs x_t are Gaussian with std ``input_scale``; the loss is ``sum(h_T) / batch`` (it
    reads only the last state, so every earlier gradient arrived through time). Everything runs in
    ``w``'s dtype and device. Returns a tensor of shape (seq_len,), on the CPU.
    """
    if w.ndim != 2 or w.shape[0] != w.shape[1]:
        raise ValueError(f"w must be a square matrix, got shape {tuple(w.shape)}")
    seq_len = check_positive_int("seq_len", seq_len)
    batch = check_positive_int("batch", batch)
    check_choice("activation", activation, RNN_ACTIVATIONS)
    gen = torch.Generator().manual_seed(int(seed))
    size = w.shape[0]
    xs = torch.randn(seq_len, batch, size, generator=gen, dtype=w.dtype).to(w.device)
    xs = (xs * input_scale).requires_grad_()
    w = w.detach()
    h = torch.zeros(batch, size, dtype=w.dtype, device=w.device)
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


#: Recurrent cell names accepted by :class:`SequenceModel`.
CELLS: tuple[str, ...] = ("rnn", "lstm", "gru")


class SequenceModel(nn.Module):
    """A one-layer recurrent network (batch first) with a linear read-out of the last hidden state.

    Args:
        cell: ``"rnn"`` (vanilla tanh RNN), ``"lstm"`` or ``"gru"``.
        input_size, hidden_size, output_size: sizes.
        forget_bias: LSTM only: the forget gate's total bias (``bias_ih`` part set to this value,
            ``bias_hh`` part to 0). ``None`` keeps PyTorch's default initialization.

    Raises:
        ValueError: unknown cell (valid ones listed), bad sizes, or ``forget_bias`` for a non-LSTM.
    """

    def __init__(self, cell: str, input_size: int, hidden_size: int, output_size: int = 1,
                 forget_bias: float | None = None) -> None:
        super().__init__()
        check_choice("cell", cell, CELLS)
        input_size = check_positive_int("input_size", input_size)
        hidden_size = check_positive_int("hidden_size", hidden_size)
        output_size = check_positive_int("output_size", output_size)
        if forget_bias is not None and cell != "lstm":
            raise ValueError(f"forget_bias applies to cell 'lstm' only, got cell {cell!r}")
        self.cell = cell
        self.hidden_size = hidden_size
        if cell == "rnn":
            self.rnn: nn.RNNBase = nn.RNN(input_size, hidden_size, nonlinearity="tanh",
                                          batch_first=True)
        elif cell == "lstm":
            self.rnn = nn.LSTM(input_size, hidden_size, batch_first=True)
        else:
            self.rnn = nn.GRU(input_size, hidden_size, batch_first=True)
        self.head = nn.Linear(hidden_size, output_size)
        if forget_bias is not None:
            set_forget_bias_(self, float(forget_bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (n, T, input_size) -> (n, output_size), read from the last hidden state."""
        _check_input(self, x)
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def _check_input(model: SequenceModel, x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 3:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a tensor of shape (n, T, input_size), got {shape}")
    if x.shape[-1] != model.rnn.input_size:
        raise ValueError(f"x has {x.shape[-1]} input channels, the model expects "
                         f"{model.rnn.input_size}")


def sequence_model(cell: str, input_size: int, hidden_size: int, output_size: int = 1,
                   forget_bias: float | None = None) -> SequenceModel:
    """Build a :class:`SequenceModel` (same arguments)."""
    return SequenceModel(cell, input_size, hidden_size, output_size, forget_bias)


def set_forget_bias_(model: SequenceModel, value: float) -> None:
    """Set an LSTM model's forget-gate bias to ``value`` in place (PyTorch gate order i, f, g, o)."""
    if not isinstance(model, SequenceModel) or model.cell != "lstm":
        raise ValueError("set_forget_bias_ needs a SequenceModel with cell 'lstm'")
    h = model.hidden_size
    with torch.no_grad():
        model.rnn.bias_ih_l0[h:2 * h].fill_(value)
        model.rnn.bias_hh_l0[h:2 * h].zero_()


def forget_gate_bias(model: SequenceModel) -> torch.Tensor:
    """The LSTM forget gate's total bias (``bias_ih + bias_hh``), shape (hidden_size,)."""
    if not isinstance(model, SequenceModel) or model.cell != "lstm":
        raise ValueError("forget_gate_bias needs a SequenceModel with cell 'lstm'")
    h = model.hidden_size
    return (model.rnn.bias_ih_l0[h:2 * h] + model.rnn.bias_hh_l0[h:2 * h]).detach()


def hidden_states(model: SequenceModel, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Unroll ``model`` one step at a time; return the hidden states ``[h_1..h_T]`` (each
    (1, n, H): the very tensors that the next step and the read-out take as input, so that
    ``h_t.grad`` after a backward pass is the total gradient at step t) and the output."""
    if not isinstance(model, SequenceModel):
        raise ValueError(f"model must be a SequenceModel, got {type(model).__name__}")
    _check_input(model, x)
    state = None
    hs = []
    for t in range(x.shape[1]):
        _, state = model.rnn(x[:, t:t + 1], state)
        h = state[0] if isinstance(state, tuple) else state  # (1, n, H)
        hs.append(h)
    return hs, model.head(hs[-1][0])


def hidden_grad_norms(model: SequenceModel, x: torch.Tensor, y: torch.Tensor,
                      loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
                      ) -> torch.Tensor:
    """``||dL/dh_t||`` for t = 1..T (shape (T,)), from one backward pass.

    The gradient at ``h_t`` is the *total* one: everything the loss at the last step sends back
    through the later steps. Parameter gradients left by the pass are cleared. ``loss_fn``
    defaults to mean squared error.
    """
    loss_fn = loss_fn or F.mse_loss
    was_training = model.training if isinstance(model, nn.Module) else True
    hs, out = hidden_states(model, x)
    for h in hs:
        h.retain_grad()
    loss = loss_fn(out, y)
    loss.backward()
    norms = torch.stack([h.grad.norm() for h in hs]).detach()
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return norms


def decay_per_step(norms: torch.Tensor) -> float:
    """Geometric-mean factor by which ``norms`` shrink per step going back from the last step:
    ``(norms[0] / norms[-1]) ** (1 / (T - 1))`` (below 1: vanishing)."""
    norms = torch.as_tensor(norms, dtype=torch.float64)
    if norms.ndim != 1 or len(norms) < 2:
        raise ValueError(f"norms must be 1-D with at least 2 entries, got shape {tuple(norms.shape)}")
    if not bool((norms > 0).all()):
        raise ValueError("norms must be positive")
    return float((norms[0] / norms[-1]) ** (1.0 / (len(norms) - 1)))


def _check_grads(grads: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    grads = list(grads)
    if not grads or not all(isinstance(g, torch.Tensor) for g in grads):
        raise ValueError("grads must be a non-empty sequence of tensors")
    return grads


def global_norm(grads: Sequence[torch.Tensor]) -> torch.Tensor:
    """The L2 norm of all tensors in ``grads`` taken together (as if concatenated)."""
    grads = _check_grads(grads)
    return torch.sqrt(sum((g.detach().double() ** 2).sum() for g in grads)).float()


def clip_by_norm(grads: Sequence[torch.Tensor], max_norm: float,
                 eps: float = 1e-6) -> list[torch.Tensor]:
    """New tensors: ``grads`` scaled by ``min(1, max_norm / (global_norm + eps))`` (the rule of
    ``torch.nn.utils.clip_grad_norm_``). The direction never changes."""
    if not max_norm > 0:
        raise ValueError(f"max_norm must be positive, got {max_norm!r}")
    grads = _check_grads(grads)
    scale = torch.clamp(max_norm / (global_norm(grads) + eps), max=1.0)
    return [g * scale.to(g.dtype) for g in grads]


def clip_by_value(grads: Sequence[torch.Tensor], clip_value: float) -> list[torch.Tensor]:
    """New tensors: every entry clamped to ``[-clip_value, clip_value]`` (the rule of
    ``torch.nn.utils.clip_grad_value_``). Large entries are cut more than small ones, so the
    direction changes."""
    if not clip_value > 0:
        raise ValueError(f"clip_value must be positive, got {clip_value!r}")
    return [g.clamp(-clip_value, clip_value) for g in _check_grads(grads)]


def cosine(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    """Cosine of the angle between two gradients given as lists of tensors (flattened together)."""
    a, b = _check_grads(a), _check_grads(b)
    if [t.shape for t in a] != [t.shape for t in b]:
        raise ValueError("a and b must hold tensors of the same shapes")
    va = torch.cat([t.detach().double().flatten() for t in a])
    vb = torch.cat([t.detach().double().flatten() for t in b])
    denom = va.norm() * vb.norm()
    if denom == 0:
        raise ValueError("cosine of a zero vector is undefined")
    return float(va @ vb / denom)
