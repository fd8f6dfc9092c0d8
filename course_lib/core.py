"""Seeding, device choice and argument checking shared by every module."""

from __future__ import annotations

import os
import random
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import numpy as np
import torch


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python's, NumPy's and PyTorch's random number generators (CPU and CUDA).

    Returns a fresh ``torch.Generator`` seeded with ``seed`` for code (data loaders, data
    generators) that wants its own stream without touching the global one.
    """
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    seed = int(seed)
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    return torch.Generator().manual_seed(seed)


def get_device(prefer: str | None = None) -> torch.device:
    """The device the course runs on: CUDA when available, else the CPU.

    ``prefer`` may force ``"cpu"`` or ``"cuda"``; ``"cuda"`` without a GPU raises ``ValueError``.
    The environment variable ``COURSE_DEVICE`` does the same for a whole session.
    """
    choice = prefer if prefer is not None else os.environ.get("COURSE_DEVICE") or None
    if choice is None or choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    check_choice("device", choice, ("auto", "cpu", "cuda"))
    if choice == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but no CUDA device is available; use 'cpu'")
    return torch.device(choice)


def check_choice(what: str, value: object, valid: Iterable[object]) -> None:
    """Raise ``ValueError`` naming the valid options when ``value`` is not one of them."""
    valid = list(valid)
    if value not in valid:
        shown = ", ".join(repr(v) for v in valid)
        raise ValueError(f"unknown {what} {value!r}; valid: {shown}")


def check_positive_int(what: str, value: object, minimum: int = 1) -> int:
    """Return ``value`` as an int, or raise ``ValueError`` if it is not an integer >= minimum."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_bool(what: str, value: object) -> bool:
    """Return ``value``, or raise ``ValueError`` if it is not exactly True or False."""
    if not isinstance(value, bool):
        raise ValueError(f"{what} must be True or False, got {value!r}")
    return value


def check_float(what: str, value: object, low: float | None = None, high: float | None = None,
                *, positive: bool = False) -> float:
    """Return ``value`` as a float, or raise ``ValueError`` saying what range is valid.

    ``value`` must be a finite real number (not a bool), inside ``[low, high]`` where given, and
    above zero when ``positive``.
    """
    bounds = []
    if positive:
        bounds.append("> 0")
    if low is not None:
        bounds.append(f">= {low}")
    if high is not None:
        bounds.append(f"<= {high}")
    wanted = f"a finite number{' ' + ' and '.join(bounds) if bounds else ''}"
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{what} must be {wanted}, got {value!r}")
    value = float(value)
    if (value != value or value in (float("inf"), float("-inf")) or (positive and value <= 0)
            or (low is not None and value < low) or (high is not None and value > high)):
        raise ValueError(f"{what} must be {wanted}, got {value!r}")
    return value


@contextmanager
def one_thread() -> Iterator[None]:
    """Run PyTorch on one thread inside the block, then restore the previous setting.

    Tiny tensors (an explorer's 256 x 128 batch) run faster on one thread on a busy machine:
    measured, a 256x128 @ 128x128 matmul took 0.2 ms on one thread and 10 ms on two while other
    processes kept the cores busy.
    """
    previous = torch.get_num_threads()
    if previous != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if previous != 1:
            torch.set_num_threads(previous)
