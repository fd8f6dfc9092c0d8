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

import json
import re
import secrets
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

import _jupyter as J

ROOT = J.ROOT
LESSON = ROOT / "notebooks" / "01_the_problem.ipynb"
ARTIFACTS = J.ARTIFACTS
KERNEL_RUN_S = 120      # imports (torch) and the first plots, on a busy 2-core machine
UPDATE_S = 60           # one explorer update after a key press or a selection
ERROR_WORDS = ("Error", "Traceback")
_chromium, _environment, _stop, _tail = J.chromium, J.environment, J.stop, J.tail


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


#: The plot output an explorer updates (an <img> with alt text, outside the widget).
PLOT = ".jp-OutputArea-output img[alt^='Gradient flow'], .jp-OutputArea-output img[alt^='Weight scale']"


def _explorer_cell(page, i: int):
    return page.locator(".jp-CodeCell").filter(has=page.locator(".course-explorer")).nth(i)


def _plot(page, i: int):
    """The i-th explorer's plot as the learner sees it."""
    return _explorer_cell(page, i).locator(".jp-OutputArea-output img[alt]").first


_KERNEL_READY_JS = """async () => {
  const kernels = await (await fetch('/api/kernels')).json();
  return kernels.length > 0 && kernels.every(k => k.connections > 0 && k.execution_state === 'idle');
}"""
_ALL_RUN_JS = """() => [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')]
  .every(p => /\\[\\d+\\]/.test(p.textContent))"""


def _run_all(page) -> None:
    """Run > Run All Cells, as a learner would, once the kernel is connected and idle; again if
    the notebook went idle with cells left unrun (a click that came too early, on a loaded
    machine)."""
    page.wait_for_function(_KERNEL_READY_JS, polling=500)
    for _ in range(3):
        page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
        page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
        try:
            page.wait_for_function(_ALL_RUN_JS, polling=500, timeout=KERNEL_RUN_S * 1000)
            return
        except Exception:  # playwright's TimeoutError: some cells never ran
            continue
    raise AssertionError("Run All Cells did not run every cell")


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
    token, port = secrets.token_hex(16), J.free_port()
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
    proc = J.start(cmd, env, root_dir, log)
    page = None
    try:
        J.wait_for_server(f"{base}/api/status?token={token}", proc, log)
        server_ready = time.monotonic() - started
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, headless=True,
                                        args=J.CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1100})
                J.accept_kernel_dialogs(page)
                page.set_default_timeout(KERNEL_RUN_S * 1000)
                page.goto(f"{base}/lab/tree/explorers.ipynb?token={token}")
                page.wait_for_selector(".jp-Notebook .jp-Cell")
                page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']")

                _run_all(page)

                explorers = page.locator(".course-explorer")
                page.wait_for_function(f"document.querySelectorAll({json.dumps(PLOT)}).length >= 2")
                flow, init = explorers.nth(0), explorers.nth(1)
                flow_img, init_img = _plot(page, 0), _plot(page, 1)
                page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']")
                first = _png_digest(flow_img)
                assert _errors_shown(page) == []
                # One picture per explorer: its plot output (the widget's own image is hidden).
                for i in range(2):
                    assert _explorer_cell(page, i).locator("img:visible").count() == 1

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


# ------------------------------------------------------------------ saved, reloaded, accessible

FIGURE_ALT = "A test line rising from 0 to 1 over four steps"
_RELOAD_CELLS = [
    "import time\n\nimport matplotlib.pyplot as plt\n\nfrom course_lib import display as D\n\n"
    "D.install()",
    "from course_lib.widgets import gradient_flow_explorer\n\n"
    "gradient_flow_explorer(depth=6, width=32)",
    "fig, ax = plt.subplots(figsize=(4, 2.5))\nax.plot([0, 0.3, 0.7, 1])\n"
    f"D.set_alt(fig, {FIGURE_ALT!r})\nplt.show()",
    "fig, ax = plt.subplots(figsize=(4, 2.5))\nax.plot([3, 1])\nax.set_title('Falling')\n"
    "ax.set_xlabel('step')\nax.set_ylabel('loss');",
    "for _ in D.progress(range(5), desc='warm-up', unit='step'):\n    time.sleep(0.05)",
    "import course_lib.train as T\nfrom course_lib.data import load_digits, make_loader\n"
    "from course_lib.models import mlp\n\n"
    "x, y = load_digits()\n"
    "history = T.fit(mlp(64, 10, depth=2, width=32), make_loader(x[:256], y[:256]), 3, lr=0.05)",
]


def _api(base: str, token: str, path: str, method: str = "GET", body: dict | None = None):
    request = urllib.request.Request(f"{base}{path}", method=method,
                                     headers={"Authorization": f"token {token}",
                                              "Content-Type": "application/json"},
                                     data=None if body is None else json.dumps(body).encode())
    with urllib.request.urlopen(request, timeout=30) as answer:
        text = answer.read()
    return json.loads(text) if text else None


def _wait_saved(base: str, token: str, name: str) -> dict:
    """The notebook as saved, once it holds the widget state and the progress summaries."""
    deadline = time.monotonic() + UPDATE_S
    while time.monotonic() < deadline:
        nb = _api(base, token, f"/api/contents/{name}?content=1")["content"]
        texts = json.dumps(nb["cells"])
        if "widgets" in nb["metadata"] and "training: 3/3 epoch" in texts:
            return nb
        time.sleep(0.5)
    raise AssertionError("the notebook was not saved with its widget state and summaries")


def _check_reopened(page, last_plot: str, what: str) -> None:
    """What a learner sees in the reopened notebook: the explorer's last plot, the figures with
    their alt text, the progress summaries, and no widget error."""
    page.wait_for_selector(".jp-Notebook .jp-Cell")
    page.wait_for_function(f"document.querySelectorAll({json.dumps(PLOT)}).length >= 1",
                           timeout=KERNEL_RUN_S * 1000)
    img = page.locator(PLOT).first
    deadline = time.monotonic() + UPDATE_S
    while _png_digest(img) != last_plot and time.monotonic() < deadline:
        time.sleep(0.25)
    assert _png_digest(img) == last_plot, f"{what}: the explorer does not show its last plot"
    # JupyterLab renders the cells below the explorer a moment later (much later on a loaded
    # machine): wait for the last cell's output before reading them all.
    try:
        page.wait_for_function(
            "alt => document.body.innerText.includes('training: 3/3 epoch')"
            " && document.querySelector(`.jp-OutputArea-output img[alt=\"${alt}\"]`) !== null",
            arg=FIGURE_ALT, timeout=UPDATE_S * 1000)
    except Exception:  # playwright's TimeoutError: the asserts below say what is missing
        pass
    errors = [t for t in page.locator(".jp-OutputArea-output").all_inner_texts()
              if "Error displaying widget" in t or "model not found" in t]
    assert errors == [], f"{what}: {errors}"
    assert page.locator(f'.jp-OutputArea-output img[alt="{FIGURE_ALT}"]').count() == 1, what
    outputs = "\n".join(page.locator(".jp-OutputArea-output").all_inner_texts())
    assert re.search(r"warm-up: 5/5 step \[", outputs), f"{what}: no progress summary"
    assert re.search(r"training: 3/3 epoch \[", outputs), f"{what}: no summary of fit()'s bar"
    assert "0%|" not in outputs and page.locator(".widget-hprogress").count() == 0, what


def test_saved_notebook_reopens_with_last_plot_alt_text_and_no_widget_errors(tmp_path):
    """Run a small notebook, move the explorer, save, shut the kernel down, reload (a new kernel
    starts), then reload again with no kernel at all: every time the explorer shows its last plot,
    the figures keep their alt text and the progress bars are one line of text."""
    chromium = _chromium()
    from playwright.sync_api import sync_playwright

    started = time.monotonic()
    root_dir, name = tmp_path / "root", "reload.ipynb"
    root_dir.mkdir()
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# Saved and reloaded")]
                                  + [nbformat.v4.new_code_cell(c) for c in _RELOAD_CELLS])
    nb.metadata = {"kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python",
                                  "name": "python3"}, "language_info": {"name": "python"}}
    nbformat.write(nb, root_dir / name)
    settings = tmp_path / "app-settings" / "overrides.d"   # what `make lab` installs
    settings.mkdir(parents=True)
    overrides = json.loads((ROOT / "binder" / "overrides.json").read_text())
    # No autosave: a save that starts while the test reads the file back can make the server
    # restore its backup (jupyter_server's atomic write) and lose the save.
    overrides["@jupyterlab/docmanager-extension:plugin"] = {"autosave": False}
    (settings / "course.json").write_text(json.dumps(overrides))
    env = _environment(tmp_path / "home")
    token, port = secrets.token_hex(16), J.free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "jupyter.log"
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "browser_reload.png"
    shot.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root",
           "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root_dir}",
           f"--LabApp.app_settings_dir={settings.parent}", "--LabApp.news_url=None",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    proc = J.start(cmd, env, root_dir, log)
    page = None
    try:
        J.wait_for_server(f"{base}/api/status?token={token}", proc, log)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, headless=True,
                                        args=J.CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1300, "height": 1400})
                J.accept_kernel_dialogs(page)
                page.set_default_timeout(KERNEL_RUN_S * 1000)
                url = f"{base}/lab/tree/{name}?token={token}"
                page.goto(url)
                page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']")
                _run_all(page)
                page.wait_for_function("document.body.innerText.includes('training: 3/3 epoch')")
                page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']")
                assert _errors_shown(page) == []

                # Live: move the explorer so that its last plot is not its first.
                explorer = page.locator(".course-explorer").first
                img = _plot(page, 0)
                first = _png_digest(img)
                explorer.locator(".widget-slider .noUi-handle").first.focus()
                page.keyboard.press("ArrowRight")
                last = _wait_for_new_plot(img, first, "ArrowRight on the depth slider")
                page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']")
                # Accessible names: every slider handle (the course's JupyterLab extension),
                # the explorer's plot and the figures (alt).
                handles = page.locator(".course-explorer .widget-slider .noUi-handle")
                names = handles.evaluate_all("hs => hs.map(h => [h.getAttribute('aria-label'),"
                                             " h.closest('.widget-slider')"
                                             ".querySelector('.widget-label').textContent])")
                assert names and all(n == label and n for n, label in names), names
                assert page.get_by_role("slider", name="depth").count() == 1
                assert page.get_by_role("img", name=re.compile(r"depth 7\b")).count() == 1
                assert page.locator(f'img[alt="{FIGURE_ALT}"]').count() == 1
                assert page.locator('img[alt^="Plot: Falling"]').count() == 1
                _check_reopened(page, last, "live")

                # Save, shut the kernel down, reload: JupyterLab starts a new kernel.
                page.locator(".jp-Notebook").first.click()
                page.keyboard.press("Control+s")
                # Read the file only once JupyterLab says the save is done (the tab is no longer
                # dirty): a read during the write sees half a file, and the server then restores
                # its backup over the save.
                page.wait_for_function(
                    "() => document.querySelector('.lm-TabBar-tab.jp-mod-dirty') === null",
                    timeout=UPDATE_S * 1000)
                saved = _wait_saved(base, token, name)
                views = [o for c in saved["cells"] for o in c.get("outputs", [])
                         if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
                assert len(views) == 1, "only the explorer should be a widget in the saved notebook"
                explorer_out = next(c["outputs"] for c in saved["cells"]
                                    if "gradient_flow_explorer(" in "".join(c["source"]))
                plot = explorer_out[-1]
                assert "image/png" in plot["data"] and "depth 7" in plot["metadata"]["image/png"]["alt"]
                for session in _api(base, token, "/api/sessions"):
                    _api(base, token, f"/api/sessions/{session['id']}", "DELETE")
                page.goto(url)
                page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']")
                _check_reopened(page, last, "reopened with a new kernel")

                # No kernel at all: the same server restarted with no kernel it may start.
                _stop(proc)
                proc = J.start(cmd + ["--KernelSpecManager.allowed_kernelspecs=no-such-kernel"],
                               env, root_dir, log)
                J.wait_for_server(f"{base}/api/status?token={token}", proc, log)
                page.remove_locator_handler(page.locator(".jp-Dialog", has_text="Select Kernel"))
                page.goto(url)
                page.wait_for_selector(".jp-Notebook .jp-Cell")
                try:  # JupyterLab asks which kernel to use: none
                    page.locator(".jp-Dialog button", has_text="No Kernel").click(timeout=15_000)
                except Exception:  # playwright's TimeoutError: no dialog this time
                    pass
                _check_reopened(page, last, "reopened without a kernel")
                assert _api(base, token, "/api/kernels") == [], "a kernel was started"

                # An untrusted copy (as a lesson is after a git clone): JupyterLab sanitizes the
                # HTML outputs; the figures must still show, with their alt text.
                copy = _api(base, token, f"/api/contents/{name}?content=1")["content"]
                copy["cells"].insert(0, nbformat.v4.new_markdown_cell("A copy from elsewhere"))
                _api(base, token, "/api/contents/untrusted.ipynb", "PUT",
                     {"type": "notebook", "format": "json", "content": copy})
                # In a workspace of its own, so that the saved notebook's tab (restored in the
                # default workspace) does not hold a second copy of every output.
                page.goto(f"{base}/lab/workspaces/copy/tree/untrusted.ipynb?token={token}")
                try:
                    page.locator(".jp-Dialog button", has_text="No Kernel").click(timeout=15_000)
                except Exception:  # playwright's TimeoutError: no dialog this time
                    pass
                figure = page.locator(f'.jp-OutputArea-output img[alt="{FIGURE_ALT}"]:visible')
                figure.wait_for()
                assert figure.evaluate("i => i.complete && i.naturalWidth > 0"), "figure not shown"
                _check_reopened(page, last, "an untrusted copy")
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
    print(f"reload test {time.monotonic() - started:.1f} s; screenshot {shot}")
