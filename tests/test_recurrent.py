import math

import pytest
import torch

from course_lib.recurrent import growth_rate, random_recurrent_matrix, spectral_radius, unrolled_rnn_grad_norms


def test_random_recurrent_matrix_has_the_radius():
    for radius in (0.5, 1.0, 1.3):
        assert spectral_radius(random_recurrent_matrix(40, radius, seed=1)) == pytest.approx(radius, rel=1e-4)
    q = random_recurrent_matrix(30, 0.9, orthogonal=True)
    assert torch.allclose(torch.linalg.svdvals(q), torch.full((30,), 0.9), atol=1e-5)


def test_linear_rnn_gradient_follows_the_radius_exactly_for_orthogonal_w():
    for radius in (0.8, 1.0, 1.2):
        w = random_recurrent_matrix(16, radius, orthogonal=True)
        norms = unrolled_rnn_grad_norms(w, 30)
        assert growth_rate(norms) == pytest.approx(radius, rel=1e-3)
        assert norms[0] / norms[-1] == pytest.approx(radius ** 29, rel=1e-3)


def test_tanh_rnn_gradient_is_damped_by_the_derivative():
    w = random_recurrent_matrix(32, 1.5, seed=2)
    linear = growth_rate(unrolled_rnn_grad_norms(w, 40)[:20])
    tanh = growth_rate(unrolled_rnn_grad_norms(w, 40, activation="tanh")[:20])
    assert tanh < linear


def test_growth_rate_of_a_geometric_sequence():
    norms = torch.tensor([0.5 ** (9 - i) for i in range(10)])  # grows towards the end
    assert growth_rate(norms) == pytest.approx(0.5)


@pytest.mark.parametrize("call,match", [
    (lambda: spectral_radius(torch.zeros(2, 3)), "square"),
    (lambda: random_recurrent_matrix(0, 1.0), "size"),
    (lambda: random_recurrent_matrix(3, -1.0), "radius"),
    (lambda: unrolled_rnn_grad_norms(torch.eye(3), 5, activation="relu"), "valid: 'linear', 'tanh'"),
    (lambda: unrolled_rnn_grad_norms(torch.eye(3), 0), "seq_len"),
    (lambda: growth_rate([1.0]), "two positive"),
])
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()
