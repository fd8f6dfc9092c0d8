"""Recurrent nets and the gradient through time: dL/dh_t for every step t.

Backpropagation through time multiplies one Jacobian per step, ``W^T diag(f'(z_t))``; with a
fixed recurrent matrix ``W`` the gradient reaching step t therefore grows or shrinks roughly like
``rho(W) ** (T - t)``, where ``rho`` is the spectral radius (Bengio et al. 1994; Pascanu et al. 2013).

- :func:`spectral_radius`, :func:`random_recurrent_matrix`, :func:`unrolled_rnn_grad_norms`:
  a bare recurrence ``h_t = f(W h_{t-1} + x_t)`` with a chosen radius; :func:`recurrent_data`,
  the recurrent explorer's numbers.
- :class:`SequenceModel`: a one-layer tanh RNN, LSTM or GRU read out by a linear head at the last step.
- :func:`hidden_grad_norms`: ``||dL/dh_t||`` for every time step ``t`` of a SequenceModel;
  :func:`state_grad_norms` adds ``||dL/dc_t||``, the LSTM's cell state.
- :func:`gate_values`: the gates of a trained LSTM or GRU at every step.

The per-step factor of such a series is :func:`course_lib.gradients.per_step_factor`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.core import check_choice, check_float, check_positive_int, one_thread

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
                            batch_size: int = 32, input_scale: float = 1.0,
                            seed: int = 0) -> torch.Tensor:
    """||dL/dh_t|| for t = 1..seq_len of the RNN ``h_t = f(W h_{t-1} + x_t)``, ``h_0 = 0``.

    The inputs x_t are Gaussian with std ``input_scale``; the loss is ``sum(h_T) / batch`` (it
    reads only the last state, so every earlier gradient arrived through time). Everything runs in
    ``w``'s dtype and device; the norms are taken in float64. Returns a float64 tensor of shape
    (seq_len,), on the CPU.
    """
    if w.ndim != 2 or w.shape[0] != w.shape[1]:
        raise ValueError(f"w must be a square matrix, got shape {tuple(w.shape)}")
    seq_len = check_positive_int("seq_len", seq_len)
    batch = check_positive_int("batch_size", batch_size)
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
    # norms in float64: a float32 norm squares its entries and underflows below about 1e-19
    return torch.stack([torch.linalg.vector_norm(s.grad, dtype=torch.float64)
                        for s in states]).detach().cpu()


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


# -- the recurrent explorer's numbers -------------------------------------------------------------
#: Recurrent weight matrices of :func:`recurrent_data`.
RNN_WEIGHTS: tuple[str, ...] = ("gaussian", "orthogonal")


def recurrent_data(seq_len: int = 50, radius: float = 0.9, activation: str = "tanh",
                   hidden_size: int = 64, weights: str = "gaussian", seed: int = 0,
                   batch_size: int = 32, input_scale: float = 0.1) -> dict[str, Any]:
    """||dL/dh_t|| over time in a vanilla RNN ``h_t = f(W h_{t-1} + x_t)``, ``h_0 = 0``.

    ``W`` (hidden_size x hidden_size) is a random matrix rescaled to spectral radius ``radius``
    (``gaussian``: i.i.d. normal entries; ``orthogonal``: a random orthogonal matrix, so every
    singular value equals ``radius`` too). ``f`` is tanh or the identity (``linear``). Inputs
    ``x_t`` are Gaussian with std ``input_scale``: small inputs (0.1) start tanh in its
    near-linear range, so what you see at small radius is the recurrent matrix, not saturation by
    the input. The loss reads only the last state, ``L = sum(h_T) / batch_size``, so dL/dh_t
    measures how much step t can still learn from the end of the sequence. The computation is
    :func:`unrolled_rnn_grad_norms` in float64 (``radius ** seq_len`` can exceed float32's range).

    Returns:
        a dict with ``t`` (1..seq_len), ``grad_norm`` (||dL/dh_t|| over the batch),
        ``reference`` (``radius ** (T - t)`` scaled to ``grad_norm`` at t = T: the linear
        prediction), ``first_over_last`` and ``params``.

    Raises:
        ValueError: a bad argument, with the valid choices listed.
    """
    seq_len = check_positive_int("seq_len", seq_len, minimum=2)
    radius = check_float("radius", radius, 0.0, 10.0)
    check_choice("activation", activation, RNN_ACTIVATIONS)
    hidden_size = check_positive_int("hidden_size", hidden_size, minimum=2)
    check_choice("weights", weights, RNN_WEIGHTS)
    seed = check_positive_int("seed", seed, minimum=0)
    batch_size = check_positive_int("batch_size", batch_size)
    input_scale = check_float("input_scale", input_scale, 0.0, 100.0)
    with one_thread():
        w = random_recurrent_matrix(hidden_size, radius, seed,
                                    orthogonal=weights == "orthogonal", dtype=torch.float64)
        with torch.enable_grad():
            norms = unrolled_rnn_grad_norms(w, seq_len, activation, batch_size=batch_size,
                                            input_scale=input_scale, seed=seed).tolist()
    last = norms[-1]
    reference = [last * radius ** (seq_len - 1 - t) if radius > 0
                 else (last if t == seq_len - 1 else 0.0) for t in range(seq_len)]
    first_over_last = norms[0] / last if last != 0 else float("nan")
    return {
        "t": list(range(1, seq_len + 1)),
        "grad_norm": norms,
        "reference": reference,
        "first_over_last": first_over_last,
        "params": dict(seq_len=seq_len, radius=radius, activation=activation,
                       hidden_size=hidden_size, weights=weights, seed=seed,
                       batch_size=batch_size, input_scale=input_scale),
    }


# -- gates and the cell state ---------------------------------------------------------------------
#: The gates :func:`gate_values` returns for each gated cell, in PyTorch's order.
GATES: dict[str, tuple[str, ...]] = {"lstm": ("input", "forget", "candidate", "output"),
                                     "gru": ("reset", "update", "candidate")}


def _written_out(model: SequenceModel, x: torch.Tensor
                 ) -> tuple[dict[str, list[torch.Tensor]], list[torch.Tensor],
                            list[torch.Tensor], torch.Tensor]:
    """Unroll ``model`` with its update equations written out (PyTorch's gate order), so that
    every gate, every ``h_t`` and every LSTM cell state ``c_t`` is a node of the graph (the fused
    ``nn.LSTM`` hands out ``h_t`` and ``c_t`` side by side, so the ``c_t`` it returns never sees
    the gradient that comes through ``h_t = o_t * tanh(c_t)``). Returns the gates per step, the
    hidden states and cell states (each (n, H); no cell states for a GRU or RNN) and the
    read-out of the last step."""
    rnn, cell = model.rnn, model.cell
    h = x.new_zeros(x.shape[0], model.hidden_size)
    c = torch.zeros_like(h)
    gates: dict[str, list[torch.Tensor]] = {name: [] for name in GATES.get(cell, ())}
    hs, cs = [], []
    for t in range(x.shape[1]):
        gx = x[:, t] @ rnn.weight_ih_l0.T + rnn.bias_ih_l0
        gh = h @ rnn.weight_hh_l0.T + rnn.bias_hh_l0
        if cell == "lstm":
            i, f, g, o = (gx + gh).chunk(4, dim=-1)
            values = (torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o))
            c = values[1] * c + values[0] * values[2]
            h = values[3] * torch.tanh(c)
            cs.append(c)
        elif cell == "gru":
            xr, xz, xn = gx.chunk(3, dim=-1)
            hr, hz, hn = gh.chunk(3, dim=-1)
            r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
            values = (r, z, torch.tanh(xn + r * hn))
            h = (1 - z) * values[2] + z * h
        else:
            values = ()
            h = torch.relu(gx + gh) if rnn.nonlinearity == "relu" else torch.tanh(gx + gh)
        for name, v in zip(gates, values):
            gates[name].append(v)
        hs.append(h)
    return gates, hs, cs, model.head(h)


def gate_values(model: SequenceModel, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The gates of a gated :class:`SequenceModel` at every step on ``x``, each of shape
    (T, n, H), computed from the layer's weights (no gradient).

    LSTM: ``input`` i, ``forget`` f, ``candidate`` g (tanh) and ``output`` o, with
    ``c_t = f * c_{t-1} + i * g`` and ``h_t = o * tanh(c_t)``. GRU: ``reset`` r, ``update`` z and
    ``candidate`` n = tanh(W_n x_t + b_in + r * (U_n h_{t-1} + b_hn)), with
    ``h_t = (1 - z) * n + z * h_{t-1}`` (PyTorch's conventions).

    Raises:
        ValueError: not a SequenceModel, a cell without gates (valid: 'lstm', 'gru'), or a bad
            input shape.
    """
    if not isinstance(model, SequenceModel):
        raise ValueError(f"model must be a SequenceModel, got {type(model).__name__}")
    check_choice("cell with gates", model.cell, tuple(GATES))
    _check_input(model, x)
    with torch.no_grad():
        gates, _, _, _ = _written_out(model, x)
    return {name: torch.stack(values) for name, values in gates.items()}


def state_grad_norms(model: SequenceModel, x: torch.Tensor, y: torch.Tensor,
                     loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
                     ) -> dict[str, torch.Tensor]:
    """``||dL/dh_t||`` and, for an LSTM, ``||dL/dc_t||`` of its cell state, for t = 1..T, from
    one backward pass: ``{"h": (T,), "c": (T,)}`` (``"c"`` for an LSTM only), float64 norms.

    Both are *total* gradients (everything the loss at the last step sends back to that step):
    ``dL/dc_t`` includes the part that comes through ``h_t = o_t * tanh(c_t)``, so the layer is
    unrolled with its equations written out. No parameter gradient is left behind. ``loss_fn``
    defaults to mean squared error.

    Raises:
        ValueError: not a SequenceModel, or a bad input shape.
    """
    if not isinstance(model, SequenceModel):
        raise ValueError(f"model must be a SequenceModel, got {type(model).__name__}")
    _check_input(model, x)
    loss_fn = loss_fn or F.mse_loss
    _, hs, cs, out = _written_out(model, x)
    grads = torch.autograd.grad(loss_fn(out, y), hs + cs)
    norms = torch.stack([torch.linalg.vector_norm(g, dtype=torch.float64) for g in grads])
    norms = norms.detach().cpu()
    result = {"h": norms[:len(hs)]}
    if cs:
        result["c"] = norms[len(hs):]
    return result
