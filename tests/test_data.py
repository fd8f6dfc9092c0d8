import functools
import gzip
import http.server
import struct
import threading

import pytest
import torch

from course_lib import data
from course_lib.data import adding_problem, load_digits, load_mnist, make_loader, sequence_task


def write_idx_mnist(root, n_train=20, n_test=10):
    """A tiny MNIST in torchvision's raw folder layout (IDX files), with known pixels."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n in [("train", n_train), ("t10k", n_test)]:
        images = bytes((i * 7 + j) % 256 for i in range(n) for j in range(28 * 28))
        labels = bytes(i % 10 for i in range(n))
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, n, 28, 28) + images)
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + labels)
    return raw


def test_load_digits_train_and_test_split():
    x, y = load_digits(train=True)
    xt, yt = load_digits(train=False)
    assert x.shape == (1347, 64) and xt.shape == (450, 64)
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert set(y.tolist()) == set(range(10)) == set(yt.tolist())
    # the split is deterministic
    assert torch.equal(load_digits().x, x)


def test_load_digits_image_shape_and_bad_fraction():
    assert load_digits(flatten=False).x.shape == (1347, 1, 8, 8)
    with pytest.raises(ValueError, match="test_fraction"):
        load_digits(test_fraction=1.5)


def test_load_mnist_reads_idx_files_in_torchvision_layout(tmp_path, capsys):
    write_idx_mnist(tmp_path)
    ds = load_mnist(train=True, root=tmp_path, download=False)
    assert ds.name == "mnist"
    assert ds.x.shape == (20, 1, 28, 28) and ds.y.tolist() == [i % 10 for i in range(20)]
    assert ds.x[0, 0, 0, 1].item() == pytest.approx(1 / 255)
    assert "MNIST (train, 20 images)" in capsys.readouterr().out
    test = load_mnist(train=False, root=tmp_path, download=False, flatten=True, limit=4)
    assert test.x.shape == (4, 784)


def test_load_mnist_root_from_environment(tmp_path, monkeypatch):
    write_idx_mnist(tmp_path)
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path))
    assert data.default_data_dir() == tmp_path
    assert load_mnist(download=False, verbose=False).name == "mnist"


def test_load_mnist_falls_back_to_digits_and_says_why(tmp_path, capsys):
    ds = load_mnist(train=True, root=tmp_path / "empty", download=False)
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "MNIST unavailable" in out[0] and "download=False" in out[0]
    assert ds.name == "digits-8x8-upsampled"
    assert ds.x.shape == (1347, 1, 28, 28)


def test_load_mnist_download_failure_falls_back(tmp_path, monkeypatch, capsys):
    from torchvision.datasets import MNIST

    # a closed loopback port: the real download code runs and fails at once
    monkeypatch.setattr(MNIST, "mirrors", ["http://127.0.0.1:9/"])
    ds = load_mnist(train=False, root=tmp_path, download=True)
    assert ds.name == "digits-8x8-upsampled" and len(ds) == 450
    assert "MNIST unavailable" in capsys.readouterr().out


def test_load_mnist_downloads_gzipped_files_from_a_mirror(tmp_path, monkeypatch):
    """The real download path, against a mirror on a loopback HTTP server: torchvision fetches
    the .gz files, unpacks them and load_mnist reads them."""
    from torchvision.datasets import MNIST

    src = write_idx_mnist(tmp_path / "src")
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for f in src.iterdir():
        (mirror / (f.name + ".gz")).write_bytes(gzip.compress(f.read_bytes()))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(mirror))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setattr(MNIST, "mirrors", [f"http://127.0.0.1:{server.server_port}/"])
        monkeypatch.setattr(MNIST, "resources", [(name, None) for name, _ in MNIST.resources])
        ds = load_mnist(train=True, root=tmp_path / "cache", download=True, verbose=False)
    finally:
        server.shutdown()
        server.server_close()
    assert ds.name == "mnist" and len(ds) == 20
    assert (tmp_path / "cache" / "MNIST" / "raw" / "train-images-idx3-ubyte").exists()


def test_load_mnist_rejects_bad_limit():
    with pytest.raises(ValueError, match="limit"):
        load_mnist(limit=0, download=False)


def test_adding_problem_targets_are_the_marked_sums():
    x, y = adding_problem(64, 20, seed=3)
    assert x.shape == (64, 20, 2) and y.shape == (64, 1)
    assert torch.all(x[..., 1].sum(1) == 2)
    first_half = x[:, :10, 1].sum(1)
    assert torch.all(first_half == 1), "one marker in each half"
    assert torch.allclose((x[..., 0] * x[..., 1]).sum(1, keepdim=True), y)
    x2, y2 = adding_problem(64, 20, seed=3)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    _, y_big = adding_problem(20000, 10, seed=0)
    baseline = ((y_big - 1.0) ** 2).mean().item()
    assert baseline == pytest.approx(1 / 6, abs=0.01)


@pytest.mark.parametrize("kwargs", [dict(n=0, seq_len=5), dict(n=3, seq_len=1)])
def test_adding_problem_rejects_bad_sizes(kwargs):
    with pytest.raises(ValueError):
        adding_problem(**kwargs)


def test_make_loader_yields_whole_batches():
    x, y = torch.arange(10.0).unsqueeze(1), torch.arange(10)
    batches = list(make_loader(x, y, batch_size=4, shuffle=False))
    assert [len(b[0]) for b in batches] == [4, 4, 2]
    assert torch.equal(batches[0][1], torch.tensor([0, 1, 2, 3]))
    dropped = list(make_loader(x, y, batch_size=4, drop_last=True))
    assert [len(b[0]) for b in dropped] == [4, 4]
    seen = torch.cat([b[1] for b in make_loader(x, y, batch_size=3, seed=1)])
    assert sorted(seen.tolist()) == list(range(10))


def test_make_loader_bad_input():
    with pytest.raises(ValueError, match="same length"):
        make_loader(torch.zeros(3, 2), torch.zeros(4))
    with pytest.raises(ValueError, match="batch_size"):
        make_loader(torch.zeros(3, 2), torch.zeros(3), batch_size=0)


def test_failure_reason_keeps_the_cause_of_a_multiline_message():
    """torchvision's download error puts an empty-looking first line before the cause."""
    err = RuntimeError("Error downloading train-images-idx3-ubyte.gz:\n"
                       "Tried https://ossci-datasets.s3.amazonaws.com/mnist/, got:\n"
                       "<urlopen error [Errno -3] Temporary failure in name resolution>\n")
    reason = data.failure_reason(err)
    assert "\n" not in reason and reason.startswith("Error downloading train-images")
    assert reason.endswith("Temporary failure in name resolution>")


def test_failure_reason_is_never_empty_and_stays_short():
    assert data.failure_reason(RuntimeError("")) == "RuntimeError"
    assert data.failure_reason(OSError(" \n \n")) == "OSError"
    long = RuntimeError("start " + "x" * 500 + " the cause")
    reason = data.failure_reason(long, limit=80)
    assert len(reason) <= 80 and reason.startswith("start") and reason.endswith("the cause")
    with pytest.raises(ValueError, match="limit"):
        data.failure_reason(long, limit=5)


def test_load_mnist_fallback_line_says_why_a_download_failed(tmp_path, monkeypatch, capsys):
    """The printed line ends with the cause, not with torchvision's bare 'Error downloading X:'."""
    from torchvision.datasets import MNIST

    monkeypatch.setattr(MNIST, "mirrors", ["http://127.0.0.1:9/"])  # a closed loopback port
    load_mnist(train=False, root=tmp_path, download=True)
    line = capsys.readouterr().out.strip()
    reason = line.split("MNIST unavailable (", 1)[1].split("); using", 1)[0]
    assert not reason.endswith(":"), line
    assert "Tried http://127.0.0.1:9/" in reason and "refused" in reason.lower(), line


def test_sequence_task_targets_copy_reverse_and_sort_the_input():
    x, y = sequence_task(50, 6, vocab=7, task="copy", seed=3)
    assert x.shape == y.shape == (50, 6) and x.dtype == torch.int64
    assert torch.equal(x, y) and int(x.min()) >= 0 and int(x.max()) <= 6
    xr, yr = sequence_task(50, 6, vocab=7, task="reverse", seed=3)
    assert torch.equal(xr, x), "the same seed draws the same inputs whatever the task"
    assert torch.equal(yr[:, 0], x[:, 5]) and torch.equal(yr[:, 5], x[:, 0])
    _, ys = sequence_task(50, 6, vocab=7, task="sort", seed=3)
    assert bool((ys[:, 1:] >= ys[:, :-1]).all())
    assert torch.equal(ys.sort(1).values, x.sort(1).values)
    assert not torch.equal(sequence_task(50, 6, seed=4)[0], sequence_task(50, 6, seed=5)[0])


def test_sequence_task_rejects_bad_arguments():
    with pytest.raises(ValueError, match="valid: 'copy', 'reverse', 'sort'"):
        sequence_task(4, 5, task="shuffle")
    with pytest.raises(ValueError, match="seq_len must be an integer >= 2"):
        sequence_task(4, 1)
    with pytest.raises(ValueError, match="vocab must be an integer >= 2"):
        sequence_task(4, 5, vocab=1)
