import math

import numpy as np
import pytest
import torch

from course_lib.data import load_digits, make_loader
from course_lib.models import mlp
from course_lib.train import History, NonFiniteError, OptimizerStep, evaluate, fit, make_optimizer


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
    assert h.trace.layers == ["fc1", "fc2", "out"]
    assert h.trace.stats["grad_norm"].shape == (len(steps), 3)
    ratio = h.trace.stats["update_ratio"]
    assert np.isfinite(ratio).all() and (ratio > 0).all()
    assert h.trace.act_layers == ["act1", "act2"]
    # the loss is recorded with the statistics, and equals the per-step loss of that step
    assert np.allclose(h.trace.loss, [h.step_loss[s] for s in steps], rtol=1e-6)


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
    assert err.epoch == 1 and err.step == 2 and err.kind == "gradient"
    assert "epoch 1, batch 3" in str(err) and "step 2" in str(err)
    assert "'fc1'" in str(err) and err.layer == "fc1"
    assert err.output_layer == "fc1", "the NaN input first shows in fc1's output"
    assert all(torch.isfinite(p).all() for p in model.parameters()), "stopped before the update"


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


def test_gradient_norm_overflow_with_finite_entries_is_named():
    model = mlp(4, 2, 1, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    step = OptimizerStep(model, opt)
    x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    model.fc1.weight.register_hook(lambda g: torch.full_like(g, 1e38))  # finite entries ...
    loss = torch.nn.functional.cross_entropy(model(x), y)             # ... norm 4e38 > 3.4e38
    with pytest.raises(NonFiniteError) as info:
        step(loss, 7, measure=True)   # the norms are computed: checked before the update
    assert info.value.kind == "gradient norm overflow" and info.value.step == 7
    assert info.value.layer == "fc1"
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_bad_update_on_an_unchecked_step_is_named_at_the_next_step():
    model = mlp(4, 2, 1, 4)
    step = OptimizerStep(model, torch.optim.SGD(model.parameters(), lr=1.0))
    x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    handle = model.fc1.weight.register_hook(lambda g: torch.full_like(g, float("nan")))
    step(torch.nn.functional.cross_entropy(model(x), y), 0)  # only the (finite) loss is checked
    handle.remove()
    with pytest.raises(NonFiniteError) as info:
        step(torch.nn.functional.cross_entropy(model(x), y), 1)
    assert info.value.step == 1 and info.value.kind == "weights" and info.value.layer == "fc1"


def test_optimizer_step_clips_from_the_total_it_returns():
    torch.manual_seed(0)
    model = mlp(5, 2, 2, 8, init="normal", std=3.0)
    x, y = torch.randn(32, 5) * 100, torch.randint(0, 2, (32,))
    twin = mlp(5, 2, 2, 8)
    twin.load_state_dict(model.state_dict())
    loss_fn = torch.nn.functional.cross_entropy
    total = OptimizerStep(model, torch.optim.SGD(model.parameters(), lr=0.1), clip_norm=0.5)(
        loss_fn(model(x), y), 0)
    opt = torch.optim.SGD(twin.parameters(), lr=0.1)
    opt.zero_grad()
    loss_fn(twin(x), y).backward()
    expected = torch.nn.utils.clip_grad_norm_(twin.parameters(), 0.5)
    opt.step()
    assert float(total) == pytest.approx(float(expected), rel=1e-5)
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


def test_fit_records_the_same_gradient_norms_as_a_snapshot():
    from course_lib.instrument import gradient_norms

    torch.manual_seed(0)
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    model = mlp(6, 3, 3, 8, norm="layer")
    before = gradient_norms(model, x, y)
    h = fit(model, make_loader(x, y, 32, shuffle=False), 1, lr=1e-3, progress=False,
            record_every=1)
    assert h.trace.profile("grad_norm", step=0).layers == before.layers
    assert np.allclose(h.trace.profile("grad_norm", step=0).array, before.array, rtol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here: the check that "
                    "fit makes no host synchronization on unrecorded steps needs a GPU")
def test_fit_makes_no_host_sync_on_unrecorded_steps_on_cuda():
    device = torch.device("cuda")
    model = mlp(64, 10, 4, 64, init="kaiming_normal").to(device)
    x, y = torch.randn(256, 64, device=device), torch.randint(0, 10, (256,), device=device)
    batches = [(x[i:i + 64], y[i:i + 64]) for i in range(0, 256, 64)]
    fit(model, batches, 1, progress=False, record=False)  # warm-up
    torch.cuda.set_sync_debug_mode("error")
    try:
        opt = make_optimizer(model, "sgd", 0.01, momentum=0.9)
        step = OptimizerStep(model, opt)
        for i, (xb, yb) in enumerate(batches):
            step(torch.nn.functional.cross_entropy(model(xb), yb), i)
    finally:
        torch.cuda.set_sync_debug_mode(0)


def test_a_scheduler_sets_the_learning_rate_of_every_step(digits_loaders):
    warmup = lambda opt: torch.optim.lr_scheduler.LinearLR(opt, 0.1, 1.0, total_iters=10)  # noqa: E731
    h = fit(mlp(64, 10, 1, 8), digits_loaders[0], 1, lr=0.05, scheduler=warmup, progress=False)
    assert len(h.lr) == 22 and h.lr[0] == pytest.approx(0.005) and h.lr[-1] == pytest.approx(0.05)
    assert h.lr[5] == pytest.approx(0.005 + 5 * 0.0045)
    with pytest.raises(ValueError, match="scheduler"):
        fit(mlp(64, 10, 1, 8), digits_loaders[0], 1, scheduler="cosine", progress=False)
