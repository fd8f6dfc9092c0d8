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
    # Tests, the website builder and repo2docker itself are not needed inside Binder's image.
    test_only = {"pytest", "playwright", "jupyter-book", "jupyter-repo2docker"}
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


# ---------------------------------------------------------------- repo2docker and postBuild, run

import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import venv  # noqa: E402
from importlib import metadata  # noqa: E402

import nbformat  # noqa: E402
import pytest  # noqa: E402

LESSONS = sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _repo2docker() -> Path:
    exe = Path(sys.executable).with_name("repo2docker")
    if not exe.exists():
        pytest.skip("repo2docker is not installed (pip install jupyter-repo2docker)")
    return exe


def _swapped_requirements(dest: Path) -> Path:
    """binder/requirements.txt with PyTorch's CPU-wheel index and +cpu pins swapped for the
    builds this machine installs (the same versions)."""
    lines = []
    for line in (ROOT / "binder" / "requirements.txt").read_text().splitlines():
        if line.strip().startswith("--extra-index-url"):
            continue
        lines.append(re.sub(r"^(torch(?:vision)?==[0-9.]+)\+cpu$", r"\1", line.strip()))
    dest.write_text("\n".join(lines) + "\n")
    return dest


def _copy_of_the_repository(dest: Path) -> Path:
    """The files git tracks (or would: untracked, not ignored), as a fresh clone has them."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    for name in filter(None, (n.decode() for n in listed)):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def test_repo2docker_builds_from_binder_requirements_and_postbuild(tmp_path):
    """repo2docker's dry run prints the Dockerfile Binder would build from this repository."""
    out = subprocess.run([str(_repo2docker()), "--no-build", "--debug", str(ROOT)],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    dockerfile = out.stdout + out.stderr
    assert "python=3.11" in dockerfile, "runtime.txt's Python is not used"
    assert re.search(r'RUN \$\{KERNEL_PYTHON_PREFIX\}/bin/pip install --no-cache-dir '
                     r'-r "binder/requirements\.txt"', dockerfile), "binder/requirements.txt unused"
    assert "RUN ./binder/postBuild" in dockerfile, "postBuild is not run"
    assert "requirements.txt\"" not in dockerfile.replace('binder/requirements.txt"', ""), \
        "the top-level requirements.txt would be installed too"


def _fresh_venv_with_the_installed_libraries(tmp_path: Path) -> Path:
    """A new venv (no course_lib) whose site-packages see this environment's libraries, with
    their console scripts (alembic, jupyter...) generated for the new venv's python."""
    env_dir = tmp_path / "binder-venv"
    venv.EnvBuilder(with_pip=False, clear=True).create(env_dir)
    python = env_dir / "bin" / "python"
    view = tmp_path / "installed"
    view.mkdir()
    for site_dir in {Path(p) for p in sys.path if p.endswith("site-packages")}:
        for entry in site_dir.iterdir():
            if "course_lib" not in entry.name and not (view / entry.name).exists():
                (view / entry.name).symlink_to(entry)
    purelib = subprocess.run([str(python), "-c",
                              "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "installed-libraries.pth").write_text(f"{view}\n")
    for dist in metadata.distributions(path=[str(view)]):
        for ep in dist.entry_points.select(group="console_scripts"):
            module, _, attr = ep.value.partition(":")
            script = env_dir / "bin" / ep.name
            if not script.exists():
                call = f"{module}.{attr}" if attr else module
                script.write_text(f"#!{python}\nimport sys, {module}\nsys.exit({call}())\n")
                script.chmod(0o755)
    return env_dir


def test_postbuild_in_a_fresh_venv_builds_the_student_version(tmp_path):
    """postBuild, run as Binder runs it, in a venv that has binder/requirements.txt (resolved
    offline, CPU pins swapped for this machine's builds) but not the course."""
    env_dir = _fresh_venv_with_the_installed_libraries(tmp_path)
    python = env_dir / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHONPATH", "JUPYTER"))}
    env.update(PATH=f"{env_dir / 'bin'}{os.pathsep}{env['PATH']}", PIP_NO_INDEX="1",
               VIRTUAL_ENV=str(env_dir), HOME=str(tmp_path / "home"),
               JUPYTER_CONFIG_DIR=str(tmp_path / "jupyter"), IPYTHONDIR=str(tmp_path / "ipy"),
               MPLCONFIGDIR=str(tmp_path / "mpl"))
    # binder/requirements.txt is fully satisfied by what the venv sees: pip would install nothing.
    reqs = _swapped_requirements(tmp_path / "requirements.txt")
    resolved = subprocess.run([str(python), "-m", "pip", "install", "--dry-run", "--no-index",
                               "--report", str(tmp_path / "report.json"), "-r", str(reqs)],
                              env=env, capture_output=True, text=True, timeout=300)
    assert resolved.returncode == 0, resolved.stderr[-3000:]
    would_install = [i["metadata"]["name"] for i in json.loads(
        (tmp_path / "report.json").read_text())["install"]]
    assert would_install == [], f"binder/requirements.txt needs more than is installed: {would_install}"
    probe = subprocess.run([str(python), "-c", "import importlib.util as u; "
                            "print(u.find_spec('course_lib'))"], env=env, cwd=tmp_path,
                           capture_output=True, text=True)
    assert probe.stdout.strip() == "None", "the fresh venv already sees course_lib"

    repo = _copy_of_the_repository(tmp_path / "repo")
    done = subprocess.run(["bash", "binder/postBuild"], cwd=repo, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]

    student = sorted(p.stem for p in (repo / "student").glob("*.ipynb"))
    assert student == LESSONS, f"postBuild left student/ with {student}"
    for name in student:
        text = (repo / "student" / f"{name}.ipynb").read_text()
        assert "BEGIN SOLUTION" not in text and "BEGIN HIDDEN TESTS" not in text, name
    nb = nbformat.read(repo / "student" / f"{LESSONS[1]}.ipynb", as_version=4)
    assert any("raise NotImplementedError(" in c.source for c in nb.cells), "no exercise stubs"
    where = subprocess.run([str(python), "-c", "import course_lib; print(course_lib.__file__)"],
                           env=env, cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    assert Path(where).is_relative_to(repo), f"course_lib is not installed from the repository: {where}"
    extension = env_dir / "share/jupyter/labextensions/vanishing-gradients-a11y/package.json"
    assert json.loads(extension.read_text())["jupyterlab"]["_build"]["load"].endswith(".js")
    override = env_dir / "share/jupyter/lab/settings/overrides.d/vanishing-gradients.json"
    assert json.loads(override.read_text())[
        "@jupyter-widgets/jupyterlab-manager:plugin"]["saveState"] is True


@pytest.mark.skipif(os.environ.get("COURSE_SLOW_TESTS") != "1",
                    reason="slow (minutes, several GB): set COURSE_SLOW_TESTS=1 to install "
                           "binder/requirements.txt into an empty venv")
def test_binder_requirements_install_into_an_empty_venv(tmp_path):
    """The real install, from nothing: every pin of binder/requirements.txt (CPU pins swapped)."""
    env_dir = tmp_path / "empty-venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    reqs = _swapped_requirements(tmp_path / "requirements.txt")
    done = subprocess.run([str(env_dir / "bin" / "python"), "-m", "pip", "install", "--quiet",
                           "-r", str(reqs)], capture_output=True, text=True, timeout=3600)
    assert done.returncode == 0, done.stderr[-4000:]
    check = subprocess.run([str(env_dir / "bin" / "python"), "-m", "pip", "check"],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
