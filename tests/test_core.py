import random

import numpy as np
import pytest
import torch

from course_lib import get_device, seed_everything
from course_lib.core import check_bool


def test_seed_everything_makes_every_generator_repeat():
    seed_everything(123)
    a = (random.random(), np.random.rand(), torch.rand(3))
    seed_everything(123)
    b = (random.random(), np.random.rand(), torch.rand(3))
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])
    seed_everything(124)
    assert not torch.equal(torch.rand(3), b[2])


def test_seed_everything_returns_a_seeded_generator():
    g1, g2 = seed_everything(5), seed_everything(5)
    assert torch.equal(torch.rand(4, generator=g1), torch.rand(4, generator=g2))


@pytest.mark.parametrize("bad", [-1, 2**32, 1.5, "0", None, True])
def test_seed_everything_rejects_bad_seeds(bad):
    with pytest.raises(ValueError, match="seed"):
        seed_everything(bad)


def test_get_device_picks_cuda_only_when_available(monkeypatch):
    monkeypatch.delenv("COURSE_DEVICE", raising=False)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert get_device().type == expected
    assert get_device("cpu") == torch.device("cpu")
    monkeypatch.setenv("COURSE_DEVICE", "cpu")
    assert get_device() == torch.device("cpu")


def test_get_device_rejects_unknown_names():
    with pytest.raises(ValueError, match="valid: 'auto', 'cpu', 'cuda'"):
        get_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_get_device_cuda_without_gpu_is_a_clear_error():
    with pytest.raises(ValueError, match="no CUDA device"):
        get_device("cuda")


def test_check_bool_accepts_only_true_and_false():
    assert check_bool("residual", True) is True and check_bool("residual", False) is False
    for bad in (1, 0, "yes", None):
        with pytest.raises(ValueError, match="residual must be True or False"):
            check_bool("residual", bad)
