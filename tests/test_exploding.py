"""The NaN guard of course_lib.train.fit names a layer also when a gradient's entries are finite
but its norm overflows float32 (lesson 05's blow-ups end this way for some seeds)."""

import math

import pytest
import torch
from torch import nn

from course_lib.data import load_digits
from course_lib.models import mlp
from course_lib.train import NonFiniteError, fit


def test_overflowing_gradient_norm_names_its_layer():
    model = nn.Sequential()
    model.add_module("fc1", nn.Linear(2, 2, bias=False))
    model.add_module("fc2", nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        model.fc1.weight.copy_(torch.eye(2))
        model.fc2.weight.fill_(7e18)       # loss 2.0e38 is finite, fc2's gradient 2.8e19 per entry
    x, y = torch.ones(1, 2), torch.zeros(1, 1)
    with pytest.raises(NonFiniteError) as info:
        fit(model, [(x, y)], 1, progress=False)
    assert math.isfinite(float(str(info.value).split("loss = ")[1].split(";")[0]))
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    assert info.value.layer == "fc1"       # fc1's: 2e38 per entry, a norm of 3.9e38 > 3.4e38
    assert info.value.kind == "gradient norm overflow" and "float32's range" in str(info.value)


def test_nan_gradient_is_still_reported_as_non_finite():
    model = nn.Sequential()
    model.add_module("fc1", nn.Linear(2, 1))
    with torch.no_grad():
        model.fc1.weight.fill_(float("nan"))
    with pytest.raises(NonFiniteError) as info:
        fit(model, [(torch.ones(1, 2), torch.zeros(1, 1))], 1, progress=False)
    assert info.value.layer == "fc1" and info.value.kind == "weights"
    assert "weights of layer 'fc1'" in str(info.value)


@pytest.mark.parametrize("seed", [0, 1])
def test_lesson_05_blow_up_names_a_layer(seed):
    """Lesson 05's set-up: ReLU, depth 10, width 64, std 1.5 sqrt(2/64), SGD lr 0.01."""
    torch.manual_seed(seed)
    x, y = load_digits(train=True)
    batches = [(x[i:i + 64], y[i:i + 64]) for i in range(0, 640, 64)]
    model = mlp(64, 10, depth=10, width=64, activation="relu", init="normal",
                std=1.5 * math.sqrt(2 / 64))
    with pytest.raises(NonFiniteError) as info:
        fit(model, batches, 1, lr=0.01, progress=False, record=False)
    assert info.value.step < 10
    assert info.value.layer in [f"fc{i}" for i in range(1, 11)] + ["out"]
