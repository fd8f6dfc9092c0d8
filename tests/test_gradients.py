"""course_lib.gradients: norms, clipping written out, cosine, the per-step factor."""

import math

import pytest
import torch

from course_lib.gradients import (clip_by_norm, clip_by_value, cosine, geometric_fit, norms64,
                                  per_step_factor, total_norm)


def test_clipping_by_norm_matches_torch_and_keeps_the_direction():
    grads = [torch.randn(3, 4) * 10, torch.randn(5) * 10]
    params = [torch.zeros_like(g, requires_grad=True) for g in grads]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    returned = torch.nn.utils.clip_grad_norm_(params, 1.0)
    mine = clip_by_norm(grads, 1.0)
    assert all(torch.equal(m, p.grad) for m, p in zip(mine, params))
    assert total_norm(grads) == pytest.approx(float(returned), rel=1e-6)
    assert total_norm(mine) == pytest.approx(1.0, rel=1e-4)
    assert cosine(mine, grads) == pytest.approx(1.0)
    small = [torch.full((2,), 0.1)]
    assert torch.equal(clip_by_norm(small, 1.0)[0], small[0])


def test_clipping_by_value_matches_torch_and_turns_the_direction():
    grads = [torch.randn(3, 4) * 10, torch.randn(5) * 10]
    params = [torch.zeros_like(g, requires_grad=True) for g in grads]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    torch.nn.utils.clip_grad_value_(params, 0.5)
    assert all(torch.equal(m, p.grad) for m, p in zip(clip_by_value(grads, 0.5), params))
    assert cosine(clip_by_value(grads, 0.5), grads) < 0.99


@pytest.mark.parametrize("bad", [0, -1.0, True, "1"])
def test_clipping_thresholds_must_be_positive(bad):
    grads = [torch.ones(3)]
    with pytest.raises(ValueError, match="clip_norm must be a positive number"):
        clip_by_norm(grads, bad)
    with pytest.raises(ValueError, match="clip_value must be a positive number"):
        clip_by_value(grads, bad)


def test_bad_gradient_lists():
    with pytest.raises(ValueError, match="non-empty sequence of tensors"):
        clip_by_norm([], 1.0)
    with pytest.raises(ValueError, match="zero vector"):
        cosine([torch.zeros(2)], [torch.ones(2)])
    with pytest.raises(ValueError, match="same shapes"):
        cosine([torch.ones(2)], [torch.ones(3)])


def test_norms64_keeps_gradients_that_float32_squares_would_lose():
    tiny = torch.full((100,), 1e-30)
    assert torch.linalg.vector_norm(tiny).item() == 0.0  # float32: the squares underflow
    assert norms64([tiny])[0].item() == pytest.approx(1e-29, rel=1e-6)


def test_per_step_factor_of_a_geometric_sequence_both_ways():
    grows_to_the_end = [0.5 ** (9 - i) for i in range(10)]
    assert per_step_factor(grows_to_the_end) == pytest.approx(0.5)
    assert per_step_factor(grows_to_the_end, "endpoints") == pytest.approx(0.5)
    assert per_step_factor(torch.tensor([0.01, 0.1, 1.0]), "endpoints") == pytest.approx(0.1)
    assert per_step_factor([8.0, 4.0, 2.0, 1.0]) == pytest.approx(2.0)


def test_the_fit_resists_one_odd_value_where_the_endpoints_do_not():
    values = [0.5 ** (9 - i) for i in range(10)]
    values[0] *= 100  # one odd input-side layer
    assert abs(per_step_factor(values) - 0.5) < abs(per_step_factor(values, "endpoints") - 0.5)


@pytest.mark.parametrize("values,match", [([1.0], "at least two"), ([0.0, 1.0], "positive"),
                                          ([1.0, math.nan], "positive and finite")])
def test_per_step_factor_bad_input(values, match):
    with pytest.raises(ValueError, match=match):
        per_step_factor(values)
    with pytest.raises(ValueError, match="valid: 'fit', 'endpoints'"):
        per_step_factor([1.0, 2.0], method="mean")


def test_geometric_fit_over_arbitrary_positions():
    depths = [2, 5, 10, 20]
    rate, scale = geometric_fit([3.0 * 0.8 ** d for d in depths], depths)
    assert rate == pytest.approx(0.8) and scale == pytest.approx(3.0)
    with pytest.raises(ValueError, match="same length"):
        geometric_fit([1.0, 2.0], [1, 2, 3])
