"""`make lab`: one command that opens lesson 00 of the student version, as root and as a user.

The tests read the commands make would run (``make -n``, with the set-up and the student build
taken as done), then start the very JupyterLab command line it prints on a free loopback port and
follow the URL the server prints.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

import _jupyter as J

ROOT = J.ROOT
LESSON_PATH = "student/00_welcome.ipynb"
NOBODY = 65534


def make_lab(args: str | None = None, uid: int | None = None) -> list[str]:
    """The commands ``make lab`` would run (``make -n``), as ``uid`` when given (needs root)."""
    if shutil.which("make") is None:
        pytest.skip("GNU make is not installed")
    cmd = ["make", "--no-print-directory", "-n", "-o", ".venv/.installed", "-o",
           "student/.built", "lab"] + ([f"ARGS={args}"] if args is not None else [])
    if uid is not None:
        if os.geteuid() != 0 or shutil.which("setpriv") is None:
            pytest.skip("running make as another user needs root and setpriv")
        cmd = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"] + cmd
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def lab_command(lines: list[str]) -> list[str]:
    found = [shlex.split(line) for line in lines if re.search(r"\bjupyter lab\b", line)]
    assert len(found) == 1, lines
    return found[0]


def test_make_lab_as_root_adds_allow_root_and_as_a_user_does_not():
    if os.geteuid() == 0:
        assert "--allow-root" in lab_command(make_lab())
        assert "--allow-root" not in lab_command(make_lab(uid=NOBODY))
    else:
        assert "--allow-root" not in lab_command(make_lab())


def test_make_lab_opens_lesson_00_of_the_student_version():
    cmd = lab_command(make_lab())
    assert f"--LabApp.default_url=/lab/tree/{LESSON_PATH}" in cmd
    assert Path(cmd[0]).name == "jupyter" and cmd[1] == "lab"


def test_make_lab_passes_options_through():
    cmd = lab_command(make_lab("--no-browser --port 8890"))
    assert cmd[-3:] == ["--no-browser", "--port", "8890"]


def test_make_lab_installs_the_widget_state_setting_where_jupyterlab_reads_overrides():
    lines = make_lab()
    copies = [shlex.split(line) for line in lines if line.startswith("cp ")]
    assert copies, f"make lab installs no settings override: {lines}"
    src, dest = copies[0][1], copies[0][2]
    assert json.loads((ROOT / src).read_text())[
        "@jupyter-widgets/jupyterlab-manager:plugin"]["saveState"] is True
    # JupyterLab reads <app dir>/settings/overrides.d/*.json; the app dir is <venv>/share/jupyter/lab.
    assert re.fullmatch(r"\.venv/share/jupyter/lab/settings/overrides\.d/[\w.-]+\.json", dest), dest


def test_the_url_jupyterlab_prints_opens_the_lesson(tmp_path):
    """Start the command make lab prints; the URL in its log leads to lesson 00."""
    root = tmp_path / "root"
    (root / "student").mkdir(parents=True)
    shutil.copy(ROOT / "notebooks" / "00_welcome.ipynb", root / LESSON_PATH)
    settings = tmp_path / "app-settings"
    (settings / "overrides.d").mkdir(parents=True)
    shutil.copy(ROOT / "binder" / "overrides.json", settings / "overrides.d" / "course.json")
    port = J.free_port()
    args = (f"--no-browser --ServerApp.ip=127.0.0.1 --ServerApp.port={port} "
            f"--ServerApp.port_retries=0 --ServerApp.root_dir={root} "
            f"--LabApp.app_settings_dir={settings}")
    cmd = lab_command(make_lab(args))
    cmd = [sys.executable, "-m", "jupyter"] + cmd[1:]  # the venv's jupyter, as .venv/bin/jupyter
    log = tmp_path / "lab.log"
    proc = J.start(cmd, J.environment(tmp_path / "home"), root, log)
    try:
        # The server makes its own token and prints it in the URL, as for a learner.
        url = J.wait_for_line(log, rf"http://127\.0\.0\.1:{port}/\S+", proc, J.SERVER_START_S)
        path, _, query = url.partition("?")
        assert path == f"http://127.0.0.1:{port}/lab/tree/{LESSON_PATH}", url
        token = dict(p.split("=", 1) for p in query.split("&") if "=" in p).get("token", "")
        assert len(token) >= 32, f"the printed URL carries no token: {url}"
        with urllib.request.urlopen(url, timeout=30) as page:
            assert page.status == 200 and b"JupyterLab" in page.read()
        api = f"http://127.0.0.1:{port}/api/contents/{LESSON_PATH}?token={token}&content=0"
        with urllib.request.urlopen(api, timeout=30) as answer:
            assert json.load(answer)["type"] == "notebook"
        plugin = "@jupyter-widgets/jupyterlab-manager:plugin"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/lab/api/settings/{plugin}"
                                    f"?token={token}", timeout=30) as answer:
            schema = json.load(answer)["schema"]  # overrides become the schema's defaults
        assert schema["properties"]["saveState"]["default"] is True, \
            "JupyterLab does not apply binder/overrides.json: widget state would not be saved"
    except AssertionError as err:
        raise AssertionError(f"{err}\n--- jupyter lab log ---\n{J.tail(log)}") from None
    finally:
        J.stop(proc)


def test_make_lab_installs_the_course_jupyterlab_extension_and_jupyterlab_loads_it(tmp_path):
    copies = [shlex.split(line) for line in make_lab() if line.startswith("cp -R ")]
    assert copies and copies[0][2].rstrip("/.") == "jupyterlab-a11y/dist", copies
    dest = copies[0][3].rstrip("/")
    assert dest == ".venv/share/jupyter/labextensions/vanishing-gradients-a11y", dest
    built = json.loads((ROOT / "jupyterlab-a11y" / "dist" / "package.json").read_text())
    assert (ROOT / "jupyterlab-a11y" / "dist" / built["jupyterlab"]["_build"]["load"]).exists()
    env = J.environment(tmp_path / "home")  # installs it into the throwaway data dir, as make does
    listed = subprocess.run([sys.executable, "-m", "jupyter", "labextension", "list"], env=env,
                            capture_output=True, text=True, timeout=120)
    line = [l for l in (listed.stdout + listed.stderr).splitlines() if "vanishing-gradients-a11y" in l]
    assert line and "enabled" in line[0] and "OK" in line[0], listed.stdout + listed.stderr
