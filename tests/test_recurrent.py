"""Unit tests of course_lib.recurrent."""


import pytest
import torch

from course_lib.gradients import per_step_factor
from course_lib.recurrent import (CELLS, GATES, SequenceModel, forget_gate_bias, gate_values,
                                  hidden_grad_norms, state_grad_norms,
                                  hidden_states, random_recurrent_matrix, recurrent_data,
                                  spectral_radius, unrolled_rnn_grad_norms)


def test_random_recurrent_matrix_has_the_radius():
    for radius in (0.5, 1.0, 1.3):
        assert spectral_radius(random_recurrent_matrix(40, radius, seed=1)) == pytest.approx(radius, rel=1e-4)
    q = random_recurrent_matrix(30, 0.9, orthogonal=True)
    assert torch.allclose(torch.linalg.svdvals(q), torch.full((30,), 0.9), atol=1e-5)


def test_linear_rnn_gradient_follows_the_radius_exactly_for_orthogonal_w():
    for radius in (0.8, 1.0, 1.2):
        w = random_recurrent_matrix(16, radius, orthogonal=True)
        norms = unrolled_rnn_grad_norms(w, 30)
        assert per_step_factor(norms) == pytest.approx(radius, rel=1e-3)
        assert per_step_factor(norms, "endpoints") == pytest.approx(radius, rel=1e-3)
        assert norms[0] / norms[-1] == pytest.approx(radius ** 29, rel=1e-3)


def test_tanh_rnn_gradient_is_damped_by_the_derivative():
    w = random_recurrent_matrix(32, 1.5, seed=2)
    linear = per_step_factor(unrolled_rnn_grad_norms(w, 40)[:20])
    tanh = per_step_factor(unrolled_rnn_grad_norms(w, 40, activation="tanh")[:20])
    assert tanh < linear


@pytest.mark.parametrize("call,match", [
    (lambda: spectral_radius(torch.zeros(2, 3)), "square"),
    (lambda: random_recurrent_matrix(0, 1.0), "size"),
    (lambda: random_recurrent_matrix(3, -1.0), "radius"),
    (lambda: unrolled_rnn_grad_norms(torch.eye(3), 5, activation="relu"), "valid: 'linear', 'tanh'"),
    (lambda: unrolled_rnn_grad_norms(torch.eye(3), 0), "seq_len"),
    (lambda: recurrent_data(activation="relu"), "valid: 'linear', 'tanh'"),
    (lambda: recurrent_data(weights="unitary"), "valid: 'gaussian', 'orthogonal'"),
    (lambda: recurrent_data(radius=-0.5), "radius"),
])
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("cell", CELLS)
def test_shapes_and_unrolled_output_matches_forward(cell):
    model = SequenceModel(cell, 2, 8, output_size=3)
    x = torch.randn(5, 7, 2)
    assert model(x).shape == (5, 3)
    hs, out = hidden_states(model, x)
    assert len(hs) == 7 and hs[0].shape == (1, 5, 8)
    assert torch.allclose(out, model(x), atol=1e-6)


def test_bad_input_lists_valid_cells():
    with pytest.raises(ValueError, match="'rnn', 'lstm', 'gru'"):
        SequenceModel("transformer", 2, 8)
    with pytest.raises(ValueError, match="hidden_size"):
        SequenceModel("rnn", 2, 0)
    with pytest.raises(ValueError, match="lstm"):
        SequenceModel("gru", 2, 8, forget_bias=1.0)
    with pytest.raises(ValueError, match="shape"):
        SequenceModel("rnn", 2, 8)(torch.randn(5, 2))
    with pytest.raises(ValueError, match="channels"):
        SequenceModel("rnn", 2, 8)(torch.randn(5, 4, 3))


def test_vanilla_rnn_is_tanh_and_forget_bias_is_set():
    assert SequenceModel("rnn", 2, 4).rnn.nonlinearity == "tanh"
    model = SequenceModel("lstm", 2, 4, forget_bias=2.5)
    assert torch.allclose(forget_gate_bias(model), torch.full((4,), 2.5))
    with pytest.raises(ValueError):
        forget_gate_bias(SequenceModel("gru", 2, 4))


def test_hidden_grad_norms_match_autograd_and_last_step():
    model = SequenceModel("rnn", 2, 6)
    x, y = torch.randn(4, 9, 2), torch.randn(4, 1)
    norms = hidden_grad_norms(model, x, y)
    assert norms.shape == (9,) and bool((norms > 0).all())
    assert all(p.grad is None for p in model.parameters()), "parameter gradients are cleared"
    # last step: dL/dh_T = W_head^T dL/dout
    out = model(x)
    g_out = 2 * (out - y) / out.numel()
    expected = (g_out @ model.head.weight).norm()
    assert torch.allclose(norms[-1], expected.detach(), rtol=1e-5)
    # first step, by autograd through a leaf initial state is not needed: check against torch.autograd.grad
    hs, out2 = hidden_states(model, x)
    g = torch.autograd.grad(torch.nn.functional.mse_loss(out2, y), hs[0])[0]
    assert torch.allclose(norms[0], g.norm(), rtol=1e-5)


def test_default_lstm_vanishes_faster_than_with_forget_bias():
    torch.manual_seed(0)
    x, y = torch.rand(64, 30, 2), torch.rand(64, 1)
    plain = per_step_factor(hidden_grad_norms(SequenceModel("lstm", 2, 16), x, y))
    torch.manual_seed(0)
    biased = per_step_factor(hidden_grad_norms(SequenceModel("lstm", 2, 16, forget_bias=3.0), x, y))
    assert plain < 0.7 and biased > 0.8, (plain, biased)


def test_recurrent_data_follows_the_radius_in_a_linear_rnn():
    d = recurrent_data(seq_len=30, radius=1.2, activation="linear", weights="orthogonal")
    assert d["first_over_last"] == pytest.approx(1.2 ** 29, rel=1e-6)
    assert d["grad_norm"][0] == pytest.approx(d["reference"][0], rel=1e-6)
    assert d["params"]["hidden_size"] == 64 and len(d["t"]) == 30


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_gate_values_rebuild_the_layers_hidden_states(cell):
    torch.manual_seed(0)
    model = SequenceModel(cell, 2, 5)
    x = torch.randn(3, 7, 2)
    gates = gate_values(model, x)
    assert list(gates) == list(GATES[cell]) and all(g.shape == (7, 3, 5) for g in gates.values())
    hs, _ = hidden_states(model, x)
    h, c = torch.zeros(3, 5), torch.zeros(3, 5)
    for t in range(7):                       # the documented update equations, from the gates
        if cell == "lstm":
            c = gates["forget"][t] * c + gates["input"][t] * gates["candidate"][t]
            h = gates["output"][t] * torch.tanh(c)
        else:
            h = (1 - gates["update"][t]) * gates["candidate"][t] + gates["update"][t] * h
        assert torch.allclose(h, hs[t][0], atol=1e-6), f"step {t}"


def test_gate_values_follow_the_forget_bias_and_refuse_a_plain_rnn():
    x = torch.rand(16, 10, 2)
    biased = gate_values(SequenceModel("lstm", 2, 8, forget_bias=3.0), x)["forget"]
    assert float(biased.min()) > 0.8, "sigma(3) = 0.95, give or take the small weights"
    with pytest.raises(ValueError, match="valid: 'lstm', 'gru'"):
        gate_values(SequenceModel("rnn", 2, 8), x)


def test_state_grad_norms_match_hidden_grad_norms_and_the_cell_path():
    torch.manual_seed(1)
    model = SequenceModel("lstm", 2, 6)
    x, y = torch.randn(4, 9, 2), torch.randn(4, 1)
    norms = state_grad_norms(model, x, y)
    assert set(norms) == {"h", "c"} and norms["c"].shape == (9,) and norms["h"].dtype == torch.float64
    assert torch.allclose(norms["h"].float(), hidden_grad_norms(model, x, y), rtol=1e-5)
    assert all(p.grad is None for p in model.parameters())
    # the cell path: dL/dc_t = dL/dc_{t+1} * f_{t+1} + dL/dh_t * o_t * tanh'(c_t), so at the last
    # step ||dL/dc_T|| = ||dL/dh_T * o_T * (1 - tanh(c_T)^2)||
    gates = gate_values(model, x)
    hs, out = hidden_states(model, x)
    g_h = torch.autograd.grad(torch.nn.functional.mse_loss(out, y), hs[-1])[0][0]
    tanh_c = hs[-1][0].detach() / gates["output"][-1]
    expected = (g_h * gates["output"][-1] * (1 - tanh_c ** 2)).norm()
    assert float(norms["c"][-1]) == pytest.approx(float(expected), rel=1e-4)
    assert set(state_grad_norms(SequenceModel("gru", 2, 6), x, y)) == {"h"}


def test_state_grad_norms_follow_the_layer_for_a_relu_rnn():
    torch.manual_seed(2)
    model = SequenceModel("rnn", 2, 6)
    model.rnn = torch.nn.RNN(2, 6, nonlinearity="relu", batch_first=True)
    x, y = torch.randn(4, 7, 2), torch.randn(4, 1)
    assert torch.allclose(state_grad_norms(model, x, y)["h"].float(), hidden_grad_norms(model, x, y), rtol=1e-5)
