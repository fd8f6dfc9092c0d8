"""Policy-gradient reinforcement learning on Gymnasium, instrumented per layer.

:func:`train_policy` runs REINFORCE (Williams 1992) with a baseline: each update collects
``batch_episodes`` episodes, computes discounted returns-to-go, subtracts their batch mean and
divides by their standard deviation (the normalized advantage), and takes one Adam step on the
loss ``-mean(log pi(a|s) * A)``. Gradient-norm clipping (``clip_norm``) is optional, as in
Stable-Baselines3's A2C/PPO (``max_grad_norm=0.5``). The update is
:class:`course_lib.train.OptimizerStep`, the same step :func:`course_lib.train.fit` takes, and
per-layer gradient norms are recorded with :class:`course_lib.instrument.Recorder` at every
update (before clipping).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from course_lib.core import check_float, check_positive_int
from course_lib.display import progress as progress_bar
from course_lib.instrument import Recorder
from course_lib.models import mlp
from course_lib.records import Trace
from course_lib.train import OptimizerStep


@dataclass
class PolicyHistory:
    """What :func:`train_policy` returns.

    ``returns``: undiscounted return of every episode, in order; ``trace``: per-layer statistics
    per update (``trace.grad_norm`` is pre-clipping); ``total_grad_norm``: global gradient norm
    per update, before clipping; ``clipped``: fraction of updates whose norm exceeded ``clip_norm``.
    """

    returns: list[float] = field(default_factory=list)
    trace: Trace | None = None
    total_grad_norm: list[float] = field(default_factory=list)
    clipped: float = 0.0
    env_steps: int = 0
    seconds: float = 0.0

    def last_mean(self, n: int = 50) -> float:
        """Mean return over the last ``n`` episodes."""
        n = check_positive_int("n", n)
        if not self.returns:
            raise ValueError("no episodes recorded")
        return float(np.mean(self.returns[-n:]))


def policy_net(obs_dim: int = 4, n_actions: int = 2, depth: int = 2, width: int = 64,
               activation: str = "tanh", init: str = "orthogonal", norm: str | None = None,
               residual: bool = False, *, std: float | None = None) -> nn.Sequential:
    """A policy network mapping observations to action logits: :func:`course_lib.models.mlp`
    with ``depth`` hidden layers (``fc1``..., ``out``); same choices and ValueErrors."""
    return mlp(obs_dim, n_actions, depth, width, activation=activation, init=init, norm=norm,
               residual=residual, std=std)


def discounted_returns(rewards: Sequence[float] | torch.Tensor, gamma: float) -> torch.Tensor:
    """Returns-to-go G_t = r_t + gamma r_{t+1} + gamma^2 r_{t+2} + ... of one episode."""
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma!r}")
    r = torch.as_tensor(rewards, dtype=torch.float32).flatten()
    out = torch.empty_like(r)
    running = 0.0
    for t in range(len(r) - 1, -1, -1):
        running = float(r[t]) + gamma * running
        out[t] = running
    return out


def normalize_advantages(adv: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(adv - mean) / (std + eps): zero mean, unit standard deviation (population std)."""
    adv = torch.as_tensor(adv, dtype=torch.float32)
    if adv.numel() < 2:
        raise ValueError(f"need at least 2 advantages to normalize, got {adv.numel()}")
    return (adv - adv.mean()) / (adv.std(unbiased=False) + eps)


def reinforce_loss(log_probs: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """The REINFORCE surrogate loss -mean(log pi(a_t|s_t) * A_t); advantages carry no gradient."""
    if log_probs.shape != advantages.shape:
        raise ValueError(f"log_probs and advantages must have the same shape, got "
                         f"{tuple(log_probs.shape)} and {tuple(advantages.shape)}")
    return -(log_probs * advantages.detach()).mean()


def _log_probs(policy: nn.Module, x: torch.Tensor, acts: torch.Tensor) -> torch.Tensor:
    """log pi(a_t | s_t) of the actions taken."""
    return torch.log_softmax(policy(x), -1).gather(1, acts[:, None]).squeeze(1)


def moving_average(values: Sequence[float], window: int = 20) -> np.ndarray:
    """Trailing moving average (shorter windows at the start), same length as ``values``."""
    window = check_positive_int("window", window)
    v = np.asarray(values, dtype=float)
    c = np.cumsum(np.insert(v, 0, 0.0))
    idx = np.arange(1, len(v) + 1)
    lo = np.maximum(idx - window, 0)
    return (c[idx] - c[lo]) / (idx - lo)


def train_policy(policy: nn.Module, env_id: str = "CartPole-v1", episodes: int = 200,
                 lr: float = 1e-2, gamma: float = 0.99, clip_norm: float | None = None,
                 seed: int = 0, batch_episodes: int = 4, max_steps: int = 500,
                 record: bool = True, progress: bool = True, desc: str | None = None
                 ) -> PolicyHistory:
    """Train ``policy`` (observation -> action logits) with REINFORCE and a normalized baseline.

    The ``batch_episodes`` episodes of an update run in lock step (one batched forward pass per
    time step). Seeded and deterministic for a given ``seed`` on the CPU: environment ``i`` is
    reset with ``seed + i`` once, and actions are sampled from a ``torch.Generator`` seeded with
    ``seed``.

    Args:
        episodes: total episodes (rounded up to whole batches of ``batch_episodes``).
        clip_norm: if set, clip the global gradient norm to this value before each step.
        max_steps: episode length cap (CartPole-v1's own limit is 500).
        record: record per-layer gradient norms at every update in ``PolicyHistory.trace``.

    Raises:
        ValueError: a bad argument, or an env whose action space is not discrete.
    """
    import gymnasium as gym

    episodes = check_positive_int("episodes", episodes)
    batch_episodes = check_positive_int("batch_episodes", batch_episodes)
    max_steps = check_positive_int("max_steps", max_steps)
    if not isinstance(policy, nn.Module):
        raise ValueError(f"policy must be a torch.nn.Module, got {type(policy).__name__}")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr!r}")
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma!r}")
    if clip_norm is not None:
        clip_norm = check_float("clip_norm", clip_norm, positive=True)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    try:
        envs = [gym.make(env_id) for _ in range(batch_episodes)]
    except Exception as err:
        valid = ", ".join(sorted(k for k in gym.registry if k.startswith(("CartPole", "Acrobot"))))
        raise ValueError(f"unknown env_id {env_id!r} ({err}); e.g. {valid}") from None
    if not isinstance(envs[0].action_space, gym.spaces.Discrete):
        for e in envs:
            e.close()
        raise ValueError(f"env {env_id!r} needs a discrete action space, got "
                         f"{envs[0].action_space}")

    device = next(policy.parameters()).device
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    opt = torch.optim.Adam(policy.parameters(), lr=lr)
    stepper = OptimizerStep(policy, opt, clip_norm=clip_norm)
    history = PolicyHistory()
    recorder = Recorder(policy, activations=False, signals=False) if record else None
    n_updates = -(-episodes // batch_episodes)
    start = time.perf_counter()
    first_reset = True
    n_clipped = 0
    bar = progress_bar(range(n_updates), desc=desc or "REINFORCE", unit="update",
                       disable=not progress)
    try:
        for update in bar:
            obs_batch, act_batch, adv_batch = [], [], []
            policy.eval()
            envs_obs = []
            for i, e in enumerate(envs):
                o, _ = e.reset(seed=int(seed) + i if first_reset else None)
                envs_obs.append(o)
            first_reset = False
            ep_obs = [[] for _ in envs]
            ep_act = [[] for _ in envs]
            ep_rew = [[] for _ in envs]
            alive = list(range(len(envs)))
            for _t in range(max_steps):
                o = torch.as_tensor(np.stack([envs_obs[i] for i in alive]), dtype=torch.float32)
                with torch.no_grad():
                    probs = torch.softmax(policy(o.to(device)).float().cpu(), -1)
                acts_now = torch.multinomial(probs, 1, generator=gen)[:, 0].tolist()
                still = []
                for k, i in enumerate(alive):
                    obs, r, terminated, truncated, _ = envs[i].step(acts_now[k])
                    ep_obs[i].append(o[k])
                    ep_act[i].append(acts_now[k])
                    ep_rew[i].append(float(r))
                    envs_obs[i] = obs
                    if not (terminated or truncated):
                        still.append(i)
                alive = still
                if not alive:
                    break
            for i in range(len(envs)):
                history.returns.append(float(sum(ep_rew[i])))
                history.env_steps += len(ep_rew[i])
                obs_batch += ep_obs[i]
                act_batch += ep_act[i]
                adv_batch.append(discounted_returns(ep_rew[i], gamma))
            policy.train()
            x = torch.stack(obs_batch).to(device)
            acts = torch.tensor(act_batch, device=device)
            adv = normalize_advantages(torch.cat(adv_batch)).to(device)
            if recorder is not None:
                with recorder.step(update):
                    loss = reinforce_loss(_log_probs(policy, x, acts), adv)
                    total = stepper(loss, update, recorder, measure=True)
            else:
                loss = reinforce_loss(_log_probs(policy, x, acts), adv)
                total = stepper(loss, update, measure=True)
            history.total_grad_norm.append(float(total))
            if clip_norm is not None:
                n_clipped += float(total) > clip_norm
            bar.set_postfix({"return": f"{np.mean(history.returns[-batch_episodes:]):.0f}"})
    finally:
        bar.close()
        for e in envs:
            e.close()
        if recorder is not None:
            recorder.remove()
    history.seconds = time.perf_counter() - start
    history.clipped = n_clipped / n_updates if clip_norm is not None else 0.0
    if recorder is not None:
        history.trace = recorder.trace()
    return history
