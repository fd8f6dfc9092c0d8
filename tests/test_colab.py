"""Colab: every lesson's first code cell installs the course package where it is missing.

The install path is tested offline, as on Colab: a wheel of this checkout's course_lib, a fresh
venv that sees the installed libraries (torch, matplotlib, ipykernel...: what Colab preinstalls)
but not course_lib, pip with no index; the tool's cell, pointed at the wheel instead of GitHub,
runs in a kernel of that venv, then the first code cells of lesson 00.
"""

from __future__ import annotations

import json
import re
import shutil
import site
import subprocess
import sys
import venv
from pathlib import Path

import nbformat
import pytest

import _jupyter as J

ROOT = J.ROOT
sys.path.insert(0, str(ROOT / "tools"))
import build_site  # noqa: E402
import colab_cell as C  # noqa: E402

NOTEBOOKS = sorted((ROOT / "notebooks").glob(C.LESSON_PATTERN))
IDS = [p.stem for p in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_every_lesson_holds_exactly_the_canonical_setup_cell(path):
    assert C.problems(nbformat.read(path, as_version=4)) == []


def test_apply_on_a_copy_of_the_lessons_gives_each_the_cell_first_and_is_idempotent(tmp_path):
    copy = tmp_path / "notebooks"
    shutil.copytree(ROOT / "notebooks", copy)
    for path in sorted(copy.glob(C.LESSON_PATTERN)):  # the lessons as they were without it
        nb = nbformat.read(path, as_version=4)
        nb.cells = [c for c in nb.cells if C.TAG not in c.metadata.get("tags", [])]
        nbformat.write(nb, path)
    stripped = {p.name: len(nbformat.read(p, as_version=4).cells) for p in copy.glob("*.ipynb")}
    assert C.main(["--check", str(copy)]) == 1
    assert C.main(["--apply", str(copy)]) == 0
    assert C.main(["--check", str(copy)]) == 0
    before = {p.name: p.read_bytes() for p in copy.glob("*.ipynb")}
    for path in sorted(copy.glob(C.LESSON_PATTERN)):
        nb = nbformat.read(path, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert code[0].source == C.SOURCE and code[0].metadata["tags"] == [C.TAG]
        assert "parameters" in code[1].metadata.get("tags", []), f"{path.name}: parameters moved"
        assert code[0].outputs == [] and code[0].execution_count is None
        assert len(nb.cells) == stripped[path.name] + 1
    assert C.main(["--apply", str(copy)]) == 0
    assert {p.name: p.read_bytes() for p in copy.glob("*.ipynb")} == before, "not idempotent"


def test_apply_replaces_an_outdated_or_duplicated_cell_in_place():
    old = nbformat.v4.new_code_cell("!pip install course_lib")
    old.metadata["tags"] = [C.TAG]
    extra = nbformat.v4.new_code_cell("# again")
    extra.metadata["tags"] = [C.TAG, "other"]
    params = nbformat.v4.new_code_cell("SEED = 0")
    params.metadata["tags"] = ["parameters"]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# L"), params, old, extra])
    assert C.problems(nb)
    assert C.apply(nb) is True
    assert [c.cell_type for c in nb.cells] == ["markdown", "code", "code"]
    assert nb.cells[1].source == C.SOURCE and nb.cells[1]["id"] == old["id"]
    assert nb.cells[2] is params
    assert C.apply(nb) is False and C.problems(nb) == []


def test_check_and_bad_paths_say_what_is_wrong(tmp_path, capsys):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("SEED = 0")])
    nbformat.write(nb, tmp_path / "00_x.ipynb")
    assert C.main(["--check", str(tmp_path)]) == 1
    assert "no code cell tagged 'colab-setup'" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        C.main(["--apply", str(tmp_path / "missing")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no lessons"):
        C.lesson_paths([tmp_path / "empty"])


def test_the_cell_does_nothing_where_course_lib_is_installed(tmp_path):
    out = subprocess.run([sys.executable, "-c", C.SOURCE + "\nprint('done')"],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path,
                         env={**J.environment(tmp_path / "home"), "PIP_NO_INDEX": "1"})
    assert out.returncode == 0, out.stderr
    assert out.stdout == "done\n" and out.stderr == ""


def test_the_cell_installs_course_lib_from_a_wheel_and_lesson_00_runs(tmp_path, monkeypatch):
    """The Colab path, offline: a fresh venv without course_lib, the cell, lesson 00's first cells."""
    from nbclient import NotebookClient

    # 1. A wheel of this checkout's course_lib (built outside the work tree).
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "course_lib", src / "course_lib",
                    ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-index",
                            "--no-build-isolation", "--quiet", "--wheel-dir", str(tmp_path / "dist"),
                            str(src)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("course_lib-*.whl")

    # 2. A fresh venv that sees the installed libraries (a filtered view of this environment's
    #    site-packages, without course_lib) as Colab's preinstalled ones, pip among them.
    env_dir = tmp_path / "colab-venv"
    venv.EnvBuilder(with_pip=False, clear=True).create(env_dir)  # pip comes with the libraries
    python = env_dir / "bin" / "python"
    preinstalled = tmp_path / "preinstalled"
    preinstalled.mkdir()
    for site_dir in site.getsitepackages():
        for entry in Path(site_dir).iterdir():
            if "course_lib" not in entry.name and not (preinstalled / entry.name).exists():
                (preinstalled / entry.name).symlink_to(entry)
    target = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                            capture_output=True, text=True, check=True).stdout.strip()
    Path(target, "colab-preinstalled.pth").write_text(f"{preinstalled}\n")

    # 3. A kernel of that venv, started outside the work tree, without PYTHONPATH.
    monkeypatch.delenv("PYTHONPATH", raising=False)
    for var, value in J.environment(tmp_path / "home").items():
        if var != "PYTHONPATH":
            monkeypatch.setenv(var, value)
    monkeypatch.delenv("PYTHONPATH", raising=False)
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # nothing may come from the network
    kernels = tmp_path / "home" / "data" / "kernels" / "colab"
    kernels.mkdir(parents=True)
    (kernels / "kernel.json").write_text(json.dumps({
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Colab stand-in", "language": "python"}))
    probe = subprocess.run([str(python), "-c", "import importlib.util, torch, ipykernel, pip; "
                            "print(importlib.util.find_spec('course_lib'))"],
                           capture_output=True, text=True, cwd=tmp_path)
    assert probe.returncode == 0 and probe.stdout.strip() == "None", probe.stdout + probe.stderr

    # 4. Lesson 00 as Colab gets it (the tool's cell first), up to its first three code cells
    #    after the set-up cell; the cell installs from the wheel instead of GitHub.
    lesson = nbformat.read(ROOT / "notebooks" / "00_welcome.ipynb", as_version=4)
    C.apply(lesson)
    code = [c for c in lesson.cells if c.cell_type == "code"]
    assert code[0].source.count(C.REQUIREMENT) == 1
    code[0].source = code[0].source.replace(C.REQUIREMENT, f"course_lib @ {wheel.as_uri()}")
    check = nbformat.v4.new_code_cell("import course_lib\nprint(course_lib.__file__)")
    lesson.cells = code[:4] + [check, nbformat.v4.new_code_cell(code[0].source)]
    lesson.metadata["kernelspec"] = {"name": "colab", "display_name": "Colab stand-in",
                                     "language": "python"}
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    NotebookClient(lesson, timeout=300, kernel_name="colab",
                   resources={"metadata": {"path": str(run_dir)}}).execute()

    setup_out, second_out = lesson.cells[0].outputs, lesson.cells[-1].outputs
    assert setup_out == [] and second_out == [], f"the set-up cell is not quiet: {setup_out}"
    where = "".join(o.get("text", "") for o in lesson.cells[-2].outputs).strip()
    assert Path(where).is_relative_to(env_dir), f"course_lib imported from {where}"
    errors = [o for c in lesson.cells for o in c.outputs if o.output_type == "error"]
    assert not errors, errors


def test_readme_syllabus_opens_every_lesson_in_colab():
    readme = (ROOT / "README.md").read_text()
    config = build_site.read_config()
    for path in NOTEBOOKS:
        row = re.search(rf"^\| {path.name[:2]} \|.*$", readme, re.M)
        assert row, f"README: no syllabus row for {path.name}"
        url = build_site.launch_links(path.stem, config)["colab"]
        assert f"]({url})" in row.group(0), f"README: lesson {path.name[:2]} has no Colab link"
