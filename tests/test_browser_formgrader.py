"""A real browser drives Formgrader: it finds the course from the repository root, lists the
assignment, opens a submission for manual grading and shows the rubric under the written answer.

The test lays out a repository root in a temporary folder: this checkout's ``nbgrader_config.py``
and a ``course/`` with the probe assignment (``test_grading_probe``) released and one submission
autograded (in the sandbox when it can start here). It starts ``jupyter lab`` in that root, as
``make lab`` does, on a free loopback port with a throwaway configuration and a random token, and
drives Debian's chromium through Python's playwright package. It skips, saying why, where either
is missing. A screenshot is saved under ``test-artifacts/``.
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

import pytest

from course_lib import grading, sandbox
from course_lib.sandbox import Limits
from test_grading_probe import ANSWER, PROBE, make_probe_course, submit

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-dev-shm-usage"]
SERVER_START_S = 90
PAGE_S = 60
STUDENT_ANSWER = "Each layer multiplies the gradient by a factor below one."


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


def _environment(home: Path) -> dict[str, str]:
    """Throwaway Jupyter settings; the server imports this checkout's course_lib."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "JPY_"))}
    for var, sub in {"JUPYTER_CONFIG_DIR": "config", "JUPYTER_DATA_DIR": "data",
                     "JUPYTER_RUNTIME_DIR": "runtime", "IPYTHONDIR": "ipython",
                     "MPLCONFIGDIR": "matplotlib", "XDG_CONFIG_HOME": "xdg-config",
                     "XDG_CACHE_HOME": "xdg-cache", "HOME": "home"}.items():
        (home / sub).mkdir(parents=True, exist_ok=True)
        env[var] = str(home / sub)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
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
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the group we started: the server and its children
    except (ProcessLookupError, PermissionError):
        pass


def test_formgrader_finds_the_course_from_the_root_and_shows_the_rubric_by_the_answer(tmp_path):
    chromium = _chromium()
    from playwright.sync_api import sync_playwright

    root = tmp_path / "repo"
    root.mkdir()
    shutil.copy(ROOT / "nbgrader_config.py", root / "nbgrader_config.py")
    course, released = make_probe_course(root)
    subs = tmp_path / "collected"
    submit(released, subs, "alice", answer=STUDENT_ANSWER)
    status = grading.autograde(subs, course, jobs=1, limits=Limits(cell_timeout_s=60),
                               use_sandbox=not sandbox.sandbox_problem())
    assert status == {"alice": {PROBE: "graded"}}

    env = _environment(tmp_path / "home")
    token, port = secrets.token_hex(16), _free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "jupyter.log"
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "browser_formgrader.png"
    shot.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root",
           "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
           f"--IdentityProvider.token={token}", "--LabApp.news_url=None",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    with open(log, "wb") as log_file:  # started in the root with no --root-dir, like `make lab`
        proc = subprocess.Popen(cmd, env=env, cwd=root, stdout=log_file, stderr=subprocess.STDOUT,
                                start_new_session=True)
    page = None
    try:
        _wait_for_server(f"{base}/api/status?token={token}", proc, log)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1300, "height": 1000})
                page.set_default_timeout(PAGE_S * 1000)
                # Formgrader's assignment list: the course was found through nbgrader_config.py.
                page.goto(f"{base}/formgrader/manage_assignments?token={token}")
                page.wait_for_selector(f"text={PROBE}")
                assert "not a subdirectory" not in page.content()
                # Manual grading: the assignment's notebook, then the student's submission.
                page.goto(f"{base}/formgrader/gradebook/{PROBE}/{PROBE}?token={token}")
                page.locator("a[href*='/formgrader/submissions/']").first.click()
                page.wait_for_selector("text=Student's answer")
                answer = page.locator(f"text={STUDENT_ANSWER}").first
                rubric = page.locator("text=Rubric (1 point)").first
                answer.wait_for()
                rubric.wait_for()
                assert page.locator("input.score#p-3-answer").count() == 1, "the answer is graded here"
                a_box, r_box = answer.bounding_box(), rubric.bounding_box()
                assert a_box and r_box and 0 < r_box["y"] - a_box["y"] < 600, "the rubric sits under the answer"
                assert "not shown to students" in page.content()
                page.screenshot(path=str(shot), full_page=True)
            finally:
                if page is not None and not shot.exists():
                    try:
                        page.screenshot(path=str(shot), full_page=True)
                    except Exception:
                        pass
                browser.close()
    except AssertionError as err:
        raise AssertionError(f"{err}\n--- jupyter lab log (tail) ---\n{_tail(log)}") from None
    finally:
        _stop(proc)
    grading.generate_feedback(course)
    feedback = (course / "feedback" / "alice" / PROBE / f"{PROBE}.html").read_text()
    assert STUDENT_ANSWER in feedback
    assert "Rubric (1 point)" not in feedback and ANSWER.split(".")[0] not in feedback, \
        "students do not see the rubric or the model answer"
