"""course_lib.hooks: every call seen, functional activations seen, hooks removed."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from course_lib.hooks import ActivationCapture, Hooks, activation_kind


def _hooked(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_hooks_see_every_call_and_remove_idempotently():
    relu = nn.ReLU()
    model = nn.Sequential(nn.Linear(3, 3), relu, nn.Linear(3, 3), relu)
    calls = []
    with Hooks({"relu": relu}, lambda n, m, i, o: calls.append(n)) as hooks:
        model(torch.randn(2, 3))
        assert len(hooks) == 1
    assert calls == ["relu", "relu"] and _hooked(model) == 0
    hooks.remove()  # a second time is harmless


def test_a_hook_that_returns_something_changes_nothing():
    lin = nn.Linear(2, 2)
    x = torch.randn(1, 2)
    with Hooks({"lin": lin}, lambda n, m, i, o: "not a tensor"), \
            Hooks({"lin": lin}, lambda n, m, i: "nor this", pre=True):
        assert torch.equal(lin(x), F.linear(x, lin.weight, lin.bias))


def test_activation_capture_names_functional_calls_after_their_module():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x):
            return F.gelu(self.fc(x)) + x.sigmoid()

    model = nn.Sequential(Block(), nn.Tanh())
    seen = []
    with ActivationCapture(model, lambda site, kind, out: seen.append((site, kind))):
        model(torch.randn(2, 3))
        F.relu(torch.randn(2))  # outside the model: not an activation of it
    assert seen == [("0.gelu", "gelu"), ("0.sigmoid", "sigmoid"), ("1", "tanh")]
    assert _hooked(model) == 0


def test_functional_calls_in_a_loop_are_one_site_per_depth_and_a_cell_pools_its_steps():
    class Deep(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList(nn.Linear(3, 3) for _ in range(3))
            self.cell = Cell()

        def forward(self, x):
            for layer in self.layers:
                x = torch.sigmoid(layer(x))
            for _ in range(4):  # a cell called once per time step
                x = self.cell(x)
            return x

    class Cell(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x):
            return torch.tanh(self.fc(x))

    seen = []
    with ActivationCapture(Deep(), lambda site, kind, out: seen.append(site)) as cap:
        cap.model(torch.randn(2, 3))
    assert seen == ["sigmoid", "sigmoid#2", "sigmoid#3"] + ["cell.tanh"] * 4


def test_activation_capture_modules_only():
    model = nn.Sequential(nn.Linear(3, 3), nn.Sigmoid())
    seen = []
    with ActivationCapture(model, lambda s, k, o: seen.append(s), functional=False):
        model(torch.randn(2, 3))
        torch.sigmoid(torch.randn(2))
    assert seen == ["1"]


def test_activation_kind_and_bad_model():
    assert activation_kind(nn.LeakyReLU()) == "leaky_relu" and activation_kind(nn.Tanh()) == "tanh"
    with pytest.raises(ValueError, match="nn.Module"):
        ActivationCapture("model", print)
    with pytest.raises(ValueError, match="not an nn.Module"):
        Hooks({"x": 3}, print)
