import math

import pytest
import torch

from course_lib.data import load_digits, make_loader
from course_lib.models import mlp
from course_lib.train import History, NonFiniteError, evaluate, fit, make_optimizer


@pytest.fixture
def digits_loaders():
    x, y = load_digits()
    xt, yt = load_digits(train=False)
    return make_loader(x, y, 64), make_loader(xt, yt, 256, shuffle=False)


def test_fit_learns_the_digits_and_records(digits_loaders):
    train, val = digits_loaders
    model = mlp(64, 10, depth=2, width=32, activation="relu", init="kaiming_normal")
    h = fit(model, train, 5, lr=0.05, val_loader=val, progress=False, record_every=5)
    assert isinstance(h, History) and h.epochs == 5
    assert h.train_loss[-1] < h.train_loss[0] and h.val_acc[-1] > 0.85
    assert len(h.step_loss) == 5 * 22
    steps = h.trace.steps.tolist()
    assert steps[0] == 0 and steps[1] == 5 and len(steps) == math.ceil(110 / 5)
    assert h.trace.layers == ["fc1", "fc2", "out"] and h.trace.grad_norm.shape == (len(steps), 3)
    assert torch.isfinite(h.trace.update_ratio).all() and (h.trace.update_ratio > 0).all()
    assert h.trace.act_layers == ["act1", "act2"]


def test_fit_without_recording(digits_loaders):
    h = fit(mlp(64, 10, 1, 16), digits_loaders[0], 1, record=False, progress=False)
    assert h.trace is None and h.val_loss == []


def test_fit_regression_reports_nan_accuracy():
    x = torch.randn(64, 3)
    y = x.sum(1, keepdim=True)
    h = fit(mlp(3, 1, 1, 16), make_loader(x, y, 16), 3, lr=0.01, progress=False)
    assert math.isnan(h.train_acc[0]) and h.train_loss[-1] < h.train_loss[0]


def test_clip_norm_bounds_the_step():
    torch.manual_seed(0)
    x, y = torch.randn(32, 5) * 100, torch.randint(0, 2, (32,))
    model = mlp(5, 2, 2, 8, init="normal", std=3.0)
    before = [p.detach().clone() for p in model.parameters()]
    fit(model, make_loader(x, y, 32), 1, lr=0.1, momentum=0.0, clip_norm=0.01, progress=False)
    step = torch.sqrt(sum(((p - b) ** 2).sum() for p, b in zip(model.parameters(), before)))
    assert step.item() <= 0.1 * 0.01 * 1.0001


def test_nan_loss_stops_with_step_and_layer():
    torch.manual_seed(0)
    x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    x[40, 2] = float("nan")   # the third batch of 16 holds a NaN input
    model = mlp(4, 3, 3, 8)
    with pytest.raises(NonFiniteError) as info:
        fit(model, make_loader(x, y, 16, shuffle=False), 2, progress=False)
    err = info.value
    assert err.epoch == 1 and err.step == 2
    assert "epoch 1, batch 3 (step 2)" in str(err)
    assert "fc1" in str(err) and err.layer == "fc1"


def test_exploding_training_is_stopped():
    torch.manual_seed(0)
    x, y = torch.randn(256, 10), torch.randint(0, 2, (256,))
    model = mlp(10, 2, depth=8, width=32, activation="relu", init="normal", std=1.5)
    with pytest.raises(NonFiniteError, match="non-finite"):
        fit(model, make_loader(x, y, 32), 20, lr=1.0, progress=False)


def test_fit_accepts_an_optimizer_instance(digits_loaders):
    model = mlp(64, 10, 1, 16)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    h = fit(model, digits_loaders[0], 2, optimizer=opt, progress=False)
    assert h.train_loss[1] < h.train_loss[0]


@pytest.mark.parametrize("kwargs,match", [
    (dict(epochs=0), "epochs"), (dict(optimizer="lbfgs"), "unknown optimizer 'lbfgs'.*'adam'"),
    (dict(clip_norm=-1.0), "clip_norm"), (dict(record_every=0), "record_every"), (dict(lr=0.0), "lr"),
])
def test_fit_bad_arguments(digits_loaders, kwargs, match):
    args = dict(epochs=1, progress=False)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        fit(mlp(64, 10, 1, 8), digits_loaders[0], **args)


def test_empty_loader_is_an_error():
    with pytest.raises(ValueError, match="no batches"):
        fit(mlp(2, 2, 1, 2), [], 1, progress=False)
    with pytest.raises(ValueError, match="no data"):
        evaluate(mlp(2, 2, 1, 2), [])


def test_make_optimizer_choices():
    model = mlp(2, 2, 1, 2)
    for name, cls in [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam),
                      ("adamw", torch.optim.AdamW), ("rmsprop", torch.optim.RMSprop)]:
        assert isinstance(make_optimizer(model, name, 0.1), cls)


def test_evaluate_restores_training_mode(digits_loaders):
    model = mlp(64, 10, 1, 16, norm="batch")
    model.train()
    loss, acc = evaluate(model, digits_loaders[1])
    assert model.training and loss > 0 and 0 <= acc <= 1
