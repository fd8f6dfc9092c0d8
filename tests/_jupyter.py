"""Helpers the JupyterLab tests share: a throwaway configuration, a server on a free loopback port,
Debian's Chromium through playwright (skipping, saying why, where either is missing)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-dev-shm-usage"]
SERVER_START_S = 90     # the server answered in about 6 s on the course machine


def chromium() -> str:
    """Path of Debian's chromium, or skip; also skips without the playwright package."""
    path = shutil.which("chromium")
    if path is None:
        pytest.skip("no chromium on PATH (shutil.which('chromium') is None); "
                    "install Debian's chromium to run the browser test")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as err:
        pytest.skip(f"the playwright Python package cannot be imported: {err}")
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environment(home: Path) -> dict[str, str]:
    """A throwaway Jupyter/IPython/matplotlib configuration; the kernel imports this checkout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "JPY_"))}
    dirs = {"JUPYTER_CONFIG_DIR": "config", "JUPYTER_DATA_DIR": "data",
            "JUPYTER_RUNTIME_DIR": "runtime", "IPYTHONDIR": "ipython",
            "MPLCONFIGDIR": "matplotlib", "XDG_CONFIG_HOME": "xdg-config",
            "XDG_CACHE_HOME": "xdg-cache", "XDG_DATA_HOME": "xdg-data",
            "XDG_RUNTIME_DIR": "xdg-runtime", "HOME": "home"}
    for var, sub in dirs.items():
        (home / sub).mkdir(parents=True, exist_ok=True)
        env[var] = str(home / sub)
    os.chmod(home / "xdg-runtime", 0o700)
    # No news pop-up, no update check: nothing that wants the network.
    settings = home / "config" / "lab" / "user-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True, exist_ok=True)
    (settings / "notification.jupyterlab-settings").write_text(
        '{"fetchNews": "false", "checkForUpdates": false}')
    # Start the notebook's kernel without asking, even when the kernel list arrives late (a
    # loaded machine): otherwise a "Select Kernel" dialog can block the test's clicks.
    tracker = home / "config" / "lab" / "user-settings" / "@jupyterlab" / "notebook-extension"
    tracker.mkdir(parents=True, exist_ok=True)
    (tracker / "tracker.jupyterlab-settings").write_text('{"autoStartDefaultKernel": true}')
    # The course's JupyterLab extension (accessible slider names), installed as `make lab` does.
    shutil.copytree(ROOT / "jupyterlab-a11y" / "dist",
                    home / "data" / "labextensions" / "vanishing-gradients-a11y", dirs_exist_ok=True)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in
                                         env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.pop("COURSE_DEVICE", None)
    return env


def accept_kernel_dialogs(page) -> None:
    """Should JupyterLab still ask which kernel to start, take the one it proposes."""
    page.add_locator_handler(page.locator(".jp-Dialog", has_text="Select Kernel"),
                             lambda dialog: dialog.locator("button", has_text="Select").click())


def tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


def start(cmd: list[str], env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen:
    """Start ``cmd`` (a jupyter server) in its own process group, output to ``log``."""
    with open(log, "wb") as log_file:
        return subprocess.Popen(cmd, env=env, cwd=cwd, stdout=log_file, stderr=subprocess.STDOUT,
                                start_new_session=True)


def wait_for_server(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"jupyter exited with {proc.returncode}:\n{tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"jupyter did not answer within {SERVER_START_S} s:\n{tail(log)}")


def wait_for_line(log: Path, pattern: str, proc: subprocess.Popen, seconds: float = 30) -> str:
    """The first match of ``pattern`` in ``log`` (the server writes its URLs after it answers)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = re.search(pattern, tail(log, 100_000))
        if found:
            return found.group(0)
        if proc.poll() is not None:
            break
        time.sleep(0.25)
    raise AssertionError(f"no line matching {pattern!r} in the server log:\n{tail(log)}")


def stop(proc: subprocess.Popen) -> None:
    """Terminate the server we started (it shuts its kernels down), then kill its group."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the group we started: server and its kernels
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
