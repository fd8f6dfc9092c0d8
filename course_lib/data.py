"""Data sets for the course: MNIST with an offline fallback, the 8x8 digits, the adding problem,
token tasks for small Transformers (copy, reverse, sort).

Every loader returns a :class:`Dataset` that unpacks like a tuple (``x, y = load_digits()``) and
also says which data it holds (``.name``) and why (``.note``).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler, TensorDataset

from course_lib.core import check_choice, check_positive_int

#: Environment variable that sets where MNIST is cached (default: ``~/.cache/vanishing-gradients``).
DATA_DIR_ENV = "COURSE_DATA_DIR"
_DOWNLOAD_TIMEOUT_S = 10.0


@dataclass
class Dataset:
    """Inputs ``x``, integer labels (or regression targets) ``y``, and where they came from."""

    x: torch.Tensor
    y: torch.Tensor
    name: str
    note: str = ""

    def __iter__(self) -> Iterator[torch.Tensor]:
        yield self.x
        yield self.y

    def __len__(self) -> int:
        return len(self.x)


def default_data_dir() -> Path:
    """The MNIST cache folder: ``$COURSE_DATA_DIR`` if set, else ``~/.cache/vanishing-gradients``."""
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env) if env else Path.home() / ".cache" / "vanishing-gradients"


def load_digits(train: bool = True, flatten: bool = True, test_fraction: float = 0.25,
                seed: int = 0) -> Dataset:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 real images, offline) as tensors.

    The images are split once, stratified by class, into a training part (75 % by default) and a
    test part; ``train`` picks one. Pixels are scaled from 0..16 to [0, 1] by a constant, not
    standardized per pixel: some pixels are 0 in every training image, and dividing by their
    standard deviation would blow stray test pixels up to huge values.

    Returns x of shape (n, 64) when ``flatten`` else (n, 1, 8, 8), float32, and y (n,) int64.
    """
    from sklearn.datasets import load_digits as _sk_load_digits
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    bunch = _sk_load_digits()
    images = bunch.images.astype(np.float32) / 16.0
    labels = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(images, labels, test_size=test_fraction,
                                              random_state=seed, stratify=labels)
    x_np, y_np = (x_tr, y_tr) if train else (x_te, y_te)
    x = torch.from_numpy(np.ascontiguousarray(x_np)).unsqueeze(1)
    x = x.flatten(1) if flatten else x
    split = "train" if train else "test"
    return Dataset(x, torch.from_numpy(y_np), name="digits-8x8",
                   note=f"scikit-learn 8x8 digits ({split}, {len(x)} images)")


def _digits_as_mnist(train: bool, flatten: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The 8x8 digits upsampled to 28x28 so that MNIST-shaped models run on them unchanged."""
    x, y = load_digits(train=train, flatten=False)
    x = F.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False).clamp_(0.0, 1.0)
    return (x.flatten(1) if flatten else x), y


def failure_reason(err: BaseException, limit: int = 160) -> str:
    """One line that says why ``err`` happened, never empty.

    Error messages can span lines and put the cause last: torchvision's MNIST download raises
    ``"Error downloading train-images-idx3-ubyte.gz:\\nTried https://..., got:\\n<urlopen error
    ...>"``, whose first line alone says nothing. The non-empty lines are joined with spaces; a
    text longer than ``limit`` keeps its first and last lines (the cause) around an ellipsis, and
    is cut in the middle if still too long. An error with no text gives its type's name.

    Raises:
        ValueError: ``limit`` is not an integer >= 20.
    """
    limit = check_positive_int("limit", limit, minimum=20)
    lines = [" ".join(line.split()) for line in str(err).splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        return type(err).__name__
    text = " ".join(lines)
    if len(text) > limit and len(lines) > 1:
        text = f"{lines[0]} … {lines[-1]}"
    if len(text) > limit:
        head = limit // 3
        text = f"{text[:head].rstrip()} … {text[-(limit - head - 3):].lstrip()}"
    return text


def load_mnist(train: bool = True, root: str | os.PathLike | None = None, download: bool = True,
               flatten: bool = False, limit: int | None = None, verbose: bool = True) -> Dataset:
    """torchvision's MNIST, or the 8x8 digits upsampled to 28x28 when MNIST cannot be had.

    MNIST is read from ``root`` (default :func:`default_data_dir`, settable through
    ``$COURSE_DATA_DIR``) and downloaded there when ``download`` is true and the network allows.
    If that fails the function falls back to :func:`load_digits`, upsampled to 28x28 so the same
    models run, and prints one line saying which data set was loaded and why.

    Returns x of shape (n, 1, 28, 28) (or (n, 784) when ``flatten``) in [0, 1], y (n,) int64;
    ``limit`` keeps the first ``limit`` examples.
    """
    if limit is not None:
        limit = check_positive_int("limit", limit)
    root_path = Path(root) if root is not None else default_data_dir()
    split = "train" if train else "test"
    try:
        from torchvision.datasets import MNIST

        old_timeout = socket.getdefaulttimeout()
        socket.setdefaulttimeout(_DOWNLOAD_TIMEOUT_S)
        try:
            mnist = MNIST(str(root_path), train=train, download=download)
        finally:
            socket.setdefaulttimeout(old_timeout)
        x = mnist.data.unsqueeze(1).to(torch.float32).div_(255.0)
        y = mnist.targets.to(torch.int64)
        x = x.flatten(1) if flatten else x
        name, note = "mnist", f"MNIST ({split}, {len(x)} images) from {root_path}"
    except Exception as err:  # no network, no files, corrupt files: fall back, say why
        reason = failure_reason(err)
        if not download and not (root_path / "MNIST" / "raw").exists():
            reason = f"not found under {root_path} and download=False"
        x, y = _digits_as_mnist(train, flatten)
        name = "digits-8x8-upsampled"
        note = (f"MNIST unavailable ({reason}); using scikit-learn's 8x8 digits "
                f"upsampled to 28x28 ({split}, {len(x)} images) instead")
    if limit is not None:
        x, y = x[:limit], y[:limit]
    if verbose:
        print(f"Data: {note}")
    return Dataset(x, y, name=name, note=note)


def adding_problem(n: int, seq_len: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The adding problem (Hochreiter & Schmidhuber 1997; the variant of Le et al. 2015).

    Each of the ``n`` sequences has ``seq_len`` steps of two channels: a value drawn uniformly
    from [0, 1] and a marker that is 1 at exactly two positions (one in the first half, one in the
    second) and 0 elsewhere. The target is the sum of the two marked values. Predicting the mean
    (1.0) gives a mean squared error of 1/6 (about 0.167): the baseline a model must beat.

    Returns inputs (n, seq_len, 2) float32 and targets (n, 1) float32.
    """
    n = check_positive_int("n", n)
    seq_len = check_positive_int("seq_len", seq_len, minimum=2)
    gen = torch.Generator().manual_seed(int(seed))
    values = torch.rand(n, seq_len, generator=gen)
    half = seq_len // 2
    first = torch.randint(0, half, (n,), generator=gen)
    second = torch.randint(half, seq_len, (n,), generator=gen)
    markers = torch.zeros(n, seq_len)
    rows = torch.arange(n)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    inputs = torch.stack([values, markers], dim=-1)
    targets = (values[rows, first] + values[rows, second]).unsqueeze(1)
    return inputs, targets


def make_loader(x: torch.Tensor, y: torch.Tensor, batch_size: int = 64, shuffle: bool = True,
                drop_last: bool = False, seed: int = 0,
                device: torch.device | str | None = None) -> DataLoader:
    """A ``DataLoader`` that yields whole batches by slicing ``x`` and ``y`` (fast, no collate).

    Data are moved to ``device`` once, up front, so a GPU run has no per-batch copies. Use
    ``drop_last=True`` for training models with BatchNorm: a tiny last batch wrecks its statistics.
    """
    batch_size = check_positive_int("batch_size", batch_size)
    if len(x) != len(y):
        raise ValueError(f"x and y must have the same length, got {len(x)} and {len(y)}")
    if len(x) == 0:
        raise ValueError("x and y are empty")
    if device is not None:
        x, y = x.to(device), y.to(device)
    dataset = TensorDataset(x, y)
    base = (RandomSampler(dataset, generator=torch.Generator().manual_seed(int(seed)))
            if shuffle else SequentialSampler(dataset))
    sampler = BatchSampler(base, batch_size=batch_size, drop_last=drop_last)
    return DataLoader(dataset, sampler=sampler, batch_size=None)


#: The token tasks :func:`sequence_task` generates.
SEQUENCE_TASKS: tuple[str, ...] = ("copy", "reverse", "sort")


def sequence_task(n: int, seq_len: int, vocab: int = 10, task: str = "reverse",
                  seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A synthetic sequence-to-sequence task on random tokens, for small Transformers.

    Each of the ``n`` inputs is ``seq_len`` tokens drawn uniformly from ``0 .. vocab - 1``; the
    target has one token per position:

    - ``copy``: the input itself (a model with a residual path can learn it without attention);
    - ``reverse``: the input read backwards, ``y[:, i] = x[:, seq_len - 1 - i]`` (every output
      needs the token at another position: attention has to do the work);
    - ``sort``: the input's tokens in ascending order (every output depends on all inputs).

    Guessing a random token gives a cross-entropy of ``log(vocab)`` (2.30 for 10 tokens): the
    baseline a model must beat. Drawn from its own generator: the global random state is untouched.

    Returns inputs (n, seq_len) and targets (n, seq_len), both int64.
    """
    n = check_positive_int("n", n)
    seq_len = check_positive_int("seq_len", seq_len, minimum=2)
    vocab = check_positive_int("vocab", vocab, minimum=2)
    check_choice("task", task, SEQUENCE_TASKS)
    gen = torch.Generator().manual_seed(int(seed))
    x = torch.randint(0, vocab, (n, seq_len), generator=gen)
    if task == "copy":
        y = x.clone()
    elif task == "reverse":
        y = x.flip(1)
    else:
        y = x.sort(dim=1).values
    return x, y
