"""One selection rule for layers, shared by every tool: the same model gives the same layer list
in gradient_norms, the recorder (fit), diagnose, the plots and the explorer."""

import pytest
import torch
from torch import nn

from course_lib import diagnose
from course_lib.convnets import cnn
from course_lib.data import make_loader
from course_lib.instrument import gradient_flow_data, gradient_norms
from course_lib.layers import (IdentityActivation, activation_modules, layer_parameters,
                               select_layers)
from course_lib.models import mlp
from course_lib.plots import gradient_flow
from course_lib.recurrent import SequenceModel
from course_lib.train import fit


def _case(name):
    torch.manual_seed(0)
    if name == "mlp with batch norm":
        return (mlp(8, 3, 4, 16, norm="batch"), torch.randn(32, 8), torch.randint(0, 3, (32,)),
                ["fc1", "fc2", "fc3", "fc4", "out"])
    if name == "residual mlp with layer norm":
        return (mlp(8, 3, 4, 16, norm="layer", residual=True), torch.randn(32, 8),
                torch.randint(0, 3, (32,)), ["fc1", "block2.fc", "block3.fc", "block4.fc", "out"])
    if name == "cnn with batch norm":
        return (cnn(1, 3, 3, 4, norm="batch"), torch.randn(16, 1, 8, 8),
                torch.randint(0, 3, (16,)), ["conv1", "conv2", "conv3", "out"])
    return (SequenceModel("lstm", 2, 8), torch.randn(16, 5, 2), torch.randn(16, 1),
            ["rnn", "head"])


CASES = ["mlp with batch norm", "residual mlp with layer norm", "cnn with batch norm",
         "recurrent (lstm)"]


@pytest.mark.parametrize("case", CASES)
def test_one_model_gives_the_same_layers_everywhere(case):
    model, x, y, expected = _case(case)
    from_norms = gradient_norms(model, x, y).layers
    history = fit(model, make_loader(x, y, 16, drop_last=True), 1, lr=1e-3, progress=False,
                  record_every=1)
    from_recorder = history.trace.layers
    from_diagnose = list(diagnose(model, x, y).layers)
    fig = gradient_flow(history.trace.profile("grad_norm"))
    from_plot = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert from_norms == from_recorder == from_diagnose == from_plot == expected


@pytest.mark.parametrize("norm,residual", [("batch", False), ("layer", True)])
def test_the_explorer_uses_the_same_layers(norm, residual):
    explorer = gradient_flow_data(depth=4, width=16, activation="relu", norm=norm,
                                  residual=residual)["grad_norm"].layers
    model = mlp(64, 10, 4, 16, activation="relu", norm=norm, residual=residual)
    x, y = torch.rand(8, 64), torch.randint(0, 10, (8,))
    assert explorer == gradient_norms(model, x, y).layers == list(diagnose(model, x, y).layers)
    assert all("norm" not in n for n in explorer) and explorer[-1] == "out"


def test_main_path_leaves_out_gains_biases_slopes_and_tokens():
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.cls_token = nn.Parameter(torch.zeros(1, 1, 4))   # on a module with children
            self.embed = nn.Embedding(10, 4)
            self.norm = nn.LayerNorm(4)
            self.act = nn.PReLU()
            self.rnn = nn.GRU(4, 4)
            self.scale = nn.Parameter(torch.ones(4))              # a layer scale: 1-d

    names = list(select_layers(Model()))
    assert names == ["embed", "rnn"]
    assert set(select_layers(Model(), "all")) == {"Model", "embed", "norm", "rnn"}


def test_a_hand_written_cell_with_its_own_matrix_is_a_layer():
    class Cell(nn.Module):
        def __init__(self):
            super().__init__()
            self.W = nn.Parameter(torch.randn(4, 4))
            self.b = nn.Parameter(torch.zeros(4))

    cell = Cell()
    assert list(select_layers(cell)) == ["Cell"]
    assert layer_parameters(cell) == [cell.W]
    assert set(map(id, layer_parameters(cell, "all"))) == {id(cell.W), id(cell.b)}


def test_activation_modules_and_the_identity():
    model = mlp(3, 2, 2, 4, activation="identity")
    assert list(activation_modules(model)) == ["act1", "act2"]
    assert isinstance(model.act1, IdentityActivation)
    plain = nn.Sequential(nn.Linear(3, 3), nn.Identity())
    assert activation_modules(plain) == {}, "a placeholder nn.Identity is not an activation"


def test_bad_layer_set_and_model():
    with pytest.raises(ValueError, match="valid: 'main', 'all'"):
        select_layers(mlp(2, 2, 1, 2), "linear")
    with pytest.raises(ValueError, match="nn.Module"):
        select_layers("model")
