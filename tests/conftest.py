"""Fixtures for course_lib's unit tests."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from course_lib import seed_everything  # noqa: E402


@pytest.fixture(autouse=True)
def _seed_and_close_figures():
    seed_everything(0)
    yield
    plt.close("all")


@pytest.fixture
def digits_batch():
    from course_lib.data import load_digits

    x, y = load_digits()
    return x[:128], y[:128]


@pytest.fixture
def tiny_batch():
    return torch.randn(32, 8), torch.randint(0, 3, (32,))
