import pytest
import torch

from course_lib import seed_everything
from course_lib.rl import (discounted_returns, moving_average, normalize_advantages, policy_net,
                           reinforce_loss, train_policy)


def test_discounted_returns_by_hand():
    g = discounted_returns([1.0, 1.0, 1.0], 0.5)
    assert torch.allclose(g, torch.tensor([1.75, 1.5, 1.0]))
    with pytest.raises(ValueError):
        discounted_returns([1.0], 1.5)


def test_normalize_and_loss():
    a = normalize_advantages(torch.tensor([1.0, 2.0, 3.0]))
    assert abs(a.mean().item()) < 1e-6 and abs(a.std(unbiased=False).item() - 1) < 1e-5
    with pytest.raises(ValueError):
        normalize_advantages(torch.tensor([1.0]))
    lp = torch.tensor([-0.5, -1.0], requires_grad=True)
    loss = reinforce_loss(lp, torch.tensor([1.0, -1.0]))
    assert abs(loss.item() - (-0.25)) < 1e-6
    with pytest.raises(ValueError):
        reinforce_loss(lp, torch.ones(3))


def test_moving_average():
    assert moving_average([1, 2, 3, 4], 2).tolist() == [1.0, 1.5, 2.5, 3.5]


def _run(seed):
    seed_everything(seed)
    p = policy_net(4, 2, depth=2, width=16)
    return train_policy(p, episodes=8, batch_episodes=4, max_steps=50, seed=seed, progress=False,
                        clip_norm=0.5)


def test_train_policy_is_deterministic_and_records():
    h1, h2 = _run(0), _run(0)
    assert h1.returns == h2.returns and len(h1.returns) == 8
    assert h1.trace.layers == ["fc1", "fc2", "out"] and len(h1.trace) == 2
    assert (h1.trace.stats['grad_norm'] == h2.trace.stats['grad_norm']).all()


def test_train_policy_bad_arguments():
    p = policy_net(4, 2, depth=1, width=8)
    for kw in (dict(episodes=0), dict(lr=0), dict(gamma=2.0), dict(clip_norm=-1), dict(seed=-1),
               dict(env_id="NoSuchEnv-v0"), dict(env_id="Pendulum-v1")):
        with pytest.raises(ValueError):
            train_policy(p, progress=False, **kw)
    with pytest.raises(ValueError):
        policy_net(4, 2, activation="nope")
