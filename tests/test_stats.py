"""course_lib.stats: activation statistics as pure functions."""

import math

import pytest
import torch

from course_lib.stats import ACTIVATION_FIELDS, activation_stats, grouped_norms, saturation_mask


def test_activation_stats_match_their_definitions():
    torch.manual_seed(0)
    a = torch.randn(50, 8) * 2 + 1
    b = torch.relu(torch.randn(50, 8))
    b[:, :3] = 0  # three dead units
    stats = activation_stats([a, b], "relu")
    assert stats.shape == (2, len(ACTIVATION_FIELDS)) and stats.dtype == torch.float64
    mean, std, spread, sat, dead = stats[0].tolist()
    assert mean == pytest.approx(a.mean().item(), rel=1e-5)
    assert std == pytest.approx(a.std().item(), rel=1e-5)
    assert spread == pytest.approx(a.var(dim=0).mean().sqrt().item(), rel=1e-5)
    assert math.isnan(sat)
    assert stats[1, 4].item() == pytest.approx(3 / 8)


def test_spread_survives_a_large_common_mean():
    torch.manual_seed(0)
    tiny = 0.5 + 1e-6 * torch.randn(256, 64)  # sigmoid outputs that barely depend on the input
    spread = activation_stats([tiny], "sigmoid")[0, 2].item()
    assert spread == pytest.approx(tiny.double().var(dim=0).mean().sqrt().item(), rel=0.05)


def test_conv_units_are_channels_and_saturation_reads_the_output():
    x = torch.rand(4, 3, 5, 5)
    x[:, 1] = 0
    assert activation_stats([x], "relu")[0, 4].item() == pytest.approx(1 / 3)
    s = torch.tensor([0.001, 0.5, 0.999])
    assert saturation_mask(s, "sigmoid").tolist() == [True, False, True]
    assert saturation_mask(torch.tensor([0.0, 0.9999]), "tanh").tolist() == [False, True]
    assert saturation_mask(s, "relu") is None


def test_grouped_norms_sum_squares_per_group_and_mark_empty_groups():
    norms = torch.tensor([3.0, 4.0, 1.0], dtype=torch.float64)
    out = grouped_norms(norms, torch.tensor([0, 0, 2]), 3)
    assert out[0].item() == pytest.approx(5.0) and math.isnan(out[1]) and out[2].item() == 1.0
    assert torch.equal(grouped_norms(norms, None, 3), norms)
    with pytest.raises(ValueError, match="empty"):
        activation_stats([], "relu")


def test_spread_of_float64_outputs_keeps_float64_precision():
    """A spread of 1e-10 around 0.5 (a deep sigmoid net run in float64) is below float32's
    resolution there (about 6e-8): it must be measured in float64, not rounded away."""
    torch.manual_seed(0)
    tiny = 0.5 + 1e-10 * torch.randn(256, 64, dtype=torch.float64)
    spread = activation_stats([tiny], "sigmoid")[0, 2].item()
    assert spread == pytest.approx(tiny.var(dim=0).mean().sqrt().item(), rel=1e-6)
    assert 0.5e-10 < spread < 2e-10
