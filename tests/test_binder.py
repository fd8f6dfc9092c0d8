"""binder/ must build the same course as requirements.txt, with PyTorch's CPU wheels."""

import os
import re
from pathlib import Path

ROOT = Path(__file__).parent.parent


def pins(path):
    found = {}
    for line in (ROOT / path).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            name, version = line.split("==")
            found[name.lower()] = version
    return found


def test_every_pin_is_exact():
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            assert re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][0-9A-Za-z.+]*", line), line


def test_binder_pins_match_requirements_with_cpu_torch():
    main, binder = pins("requirements.txt"), pins("binder/requirements.txt")
    assert main["torch"] == "2.14.1" and main["torchvision"] == "0.29.1"
    assert binder["torch"] == main["torch"] + "+cpu"
    assert binder["torchvision"] == main["torchvision"] + "+cpu"
    test_only = {"pytest", "playwright"}
    for name, version in main.items():
        if name in ("torch", "torchvision") or name in test_only:
            continue
        assert binder.get(name) == version, f"binder/requirements.txt: {name} should be =={version}"
    assert "download.pytorch.org/whl/cpu" in (ROOT / "binder/requirements.txt").read_text()


def test_binder_runtime_and_postbuild():
    assert (ROOT / "binder/runtime.txt").read_text().strip() == "python-3.11"
    post = ROOT / "binder/postBuild"
    assert os.access(post, os.X_OK) and "pip install" in post.read_text()
    assert "course_lib.grading release" in post.read_text(), "Binder must build the student version"


def test_readme_badge_opens_lesson_00_in_jupyterlab():
    readme = (ROOT / "README.md").read_text()
    badge = re.search(r"\(https://mybinder\.org/v2/gh/[^)]*\)", readme)
    assert badge and "urlpath=lab/tree/student/00_welcome.ipynb" in badge.group(0)
