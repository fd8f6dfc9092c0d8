"""A real browser drives JupyterLab: the explorers render, a control changes the plot, no errors.

The test starts ``jupyter lab`` on a free loopback port with a throwaway configuration and a random
token, opens a small notebook made of lesson 01's explorer cell and an initialization explorer,
runs all cells from the Run menu, then moves the depth slider with the keyboard and picks another
activation in a dropdown, and checks that each plot's PNG bytes changed and that no cell shows an
error. It drives Debian's chromium through Python's playwright package (the browser that
``playwright install`` would download is never used) and skips, saying why, where either is
missing. A screenshot is saved under ``test-artifacts/`` in every case.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
LESSON = ROOT / "notebooks" / "01_the_problem.ipynb"
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-dev-shm-usage"]
SERVER_START_S = 90     # the server answered in about 6 s on the course machine
KERNEL_RUN_S = 120      # imports (torch) and the first plots, on a busy 2-core machine
UPDATE_S = 60           # one explorer update after a key press or a selection
ERROR_WORDS = ("Error", "Traceback")


def _chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.skip("no chromium on PATH (shutil.which('chromium') is None); "
                    "install Debian's chromium to run the browser test")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as err:
        pytest.skip(f"the playwright Python package cannot be imported: {err}")
    return path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _explorer_cell_of_lesson_01() -> str:
    """The code cell of lesson 01 that shows the gradient-flow explorer (self-contained)."""
    cells = nbformat.read(LESSON, as_version=4).cells
    found = [c.source for c in cells if c.cell_type == "code" and "gradient_flow_explorer(" in c.source]
    assert found, f"{LESSON.name} has no cell calling gradient_flow_explorer()"
    return found[0]


def _write_notebook(path: Path) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata = {"kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python",
                                  "name": "python3"},
                   "language_info": {"name": "python"}}
    nb.cells = [
        nbformat.v4.new_markdown_cell("# Explorers, in a browser"),
        nbformat.v4.new_code_cell(_explorer_cell_of_lesson_01()),
        nbformat.v4.new_code_cell("from course_lib.widgets import init_explorer\n\n"
                                  "init_explorer(activation='tanh', depth=10, width=64)"),
    ]
    nbformat.write(nb, path)


def _environment(home: Path) -> dict[str, str]:
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
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in
                                         env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.pop("COURSE_DEVICE", None)
    return env


def _wait_for_server(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"jupyter lab exited with {proc.returncode}:\n{_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"jupyter lab did not answer within {SERVER_START_S} s:\n{_tail(log)}")


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


def _stop(proc: subprocess.Popen) -> None:
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


_PNG_DIGEST_JS = """
async (img) => {
  const bytes = await (await fetch(img.src)).arrayBuffer();
  const digest = await crypto.subtle.digest('SHA-256', bytes);
  return Array.from(new Uint8Array(digest)).map(b => b.toString(16).padStart(2, '0')).join('')
         + ':' + bytes.byteLength;
}
"""


def _png_digest(image) -> str:
    """SHA-256 and length of the bytes behind an <img> (its blob: URL), computed in the page."""
    return image.evaluate(_PNG_DIGEST_JS)


def _wait_for_new_plot(image, before: str, what: str) -> str:
    deadline = time.monotonic() + UPDATE_S
    while time.monotonic() < deadline:
        now = _png_digest(image)
        if now != before:
            return now
        time.sleep(0.25)
    raise AssertionError(f"the plot did not change within {UPDATE_S} s after {what}")


def _errors_shown(page) -> list[str]:
    texts = page.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'
                         ).all_inner_texts()
    found = [t for t in texts if any(w in t for w in ERROR_WORDS)]
    found += page.locator(".course-explorer-error").all_inner_texts()
    found += [t for t in page.locator(".jp-OutputArea-output").all_inner_texts()
              if "Error displaying widget" in t]
    return found


def test_explorers_run_and_react_in_jupyterlab(tmp_path):
    chromium = _chromium()
    from playwright.sync_api import sync_playwright

    started = time.monotonic()
    root_dir = tmp_path / "root"
    root_dir.mkdir()
    _write_notebook(root_dir / "explorers.ipynb")
    env = _environment(tmp_path / "home")
    token, port = secrets.token_hex(16), _free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "jupyter.log"
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "browser_explorers.png"
    shot.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root",
           "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root_dir}",
           "--LabApp.news_url=None",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(cmd, env=env, cwd=root_dir, stdout=log_file,
                                stderr=subprocess.STDOUT, start_new_session=True)
    page = None
    try:
        _wait_for_server(f"{base}/api/status?token={token}", proc, log)
        server_ready = time.monotonic() - started
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, headless=True,
                                        args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1100})
                page.set_default_timeout(KERNEL_RUN_S * 1000)
                page.goto(f"{base}/lab/tree/explorers.ipynb?token={token}")
                page.wait_for_selector(".jp-Notebook .jp-Cell")
                page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']")

                # Run > Run All Cells, as a learner would.
                page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
                page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()

                explorers = page.locator(".course-explorer")
                page.wait_for_function("document.querySelectorAll("
                                       "'.course-explorer img.widget-image').length >= 2")
                flow, init = explorers.nth(0), explorers.nth(1)
                flow_img, init_img = flow.locator("img.widget-image"), init.locator("img.widget-image")
                page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']")
                first = _png_digest(flow_img)
                assert _errors_shown(page) == []
                # The live widget replaces the static PNG fallback: no second copy of the plot.
                assert page.locator(".jp-OutputArea-output.jp-RenderedImage").count() == 0

                # Keyboard: focus the depth slider's handle and press the right arrow.
                readout = flow.locator(".widget-slider .widget-readout").first
                depth_before = readout.inner_text()
                flow.locator(".widget-slider .noUi-handle").first.focus()
                page.keyboard.press("ArrowRight")
                second = _wait_for_new_plot(flow_img, first, "ArrowRight on the depth slider")
                assert int(readout.inner_text()) == int(depth_before) + 1

                # Mouse-free selection: another activation in the init explorer's dropdown.
                before = _png_digest(init_img)
                init.locator(".widget-dropdown select").first.select_option("relu")
                _wait_for_new_plot(init_img, before, "selecting 'relu'")

                page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']")
                assert second != first
                errors = _errors_shown(page)
                assert errors == [], f"cells show errors: {errors}"
                page.screenshot(path=str(shot), full_page=True)
            finally:
                if page is not None and not shot.exists():
                    try:
                        page.screenshot(path=str(shot), full_page=True)
                    except Exception:  # the page may be gone; the log says why
                        pass
                browser.close()
    except AssertionError as err:
        raise AssertionError(f"{err}\n--- jupyter lab log (tail) ---\n{_tail(log)}") from None
    finally:
        _stop(proc)
    elapsed = time.monotonic() - started
    print(f"server ready in {server_ready:.1f} s; whole browser test {elapsed:.1f} s; "
          f"screenshot {shot}")
