"""The lessons' Colab set-up cell: its one source of truth, and the tool that puts it in place.

    python tools/colab_cell.py --apply notebooks/     # insert or update it in every lesson
    python tools/colab_cell.py --check notebooks/     # exit 1 unless every lesson holds it

On Google Colab a lesson opens without the course package; the set-up cell installs it from the
course's GitHub repository. Everywhere else (``make lab``, Binder, CI) ``course_lib`` is already
importable and the cell does nothing, silently. The cell is tagged ``colab-setup`` and is each
lesson's first code cell, before the papermill ``parameters`` cell. ``--apply`` is idempotent:
a lesson that already holds exactly this cell is not rewritten; an outdated or duplicated one is
replaced. A lesson changed by ``--apply`` must be re-executed (the new cell has no execution
count yet).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path

import nbformat

TAG = "colab-setup"
LESSON_PATTERN = "[0-9][0-9]_*.ipynb"
#: Where Colab installs the course package from (pip requirement).
REQUIREMENT = "course_lib @ git+https://github.com/vanishing-gradients-course/hands-on"

SOURCE = f"""\
# Set-up for Google Colab: installs the course package when it is missing. Elsewhere it does nothing.
import importlib, importlib.util, subprocess, sys
if importlib.util.find_spec("course_lib") is None:
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    "--root-user-action=ignore",
                    "{REQUIREMENT}"],
                   check=True)
    importlib.invalidate_caches()"""


def is_setup_cell(cell: nbformat.NotebookNode) -> bool:
    return cell.get("cell_type") == "code" and TAG in cell.get("metadata", {}).get("tags", [])


def problems(nb: nbformat.NotebookNode) -> list[str]:
    """What keeps ``nb`` from holding exactly the canonical set-up cell as its first code cell."""
    found = [i for i, c in enumerate(nb.cells) if is_setup_cell(c)]
    code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    if not found:
        return [f"no code cell tagged {TAG!r}"]
    out = []
    if len(found) > 1:
        out.append(f"{len(found)} cells tagged {TAG!r}")
    if found[0] != code[0]:
        out.append(f"the {TAG!r} cell is not the first code cell")
    if nb.cells[found[0]].source != SOURCE:
        out.append(f"the {TAG!r} cell differs from tools/colab_cell.py's SOURCE")
    return out


def apply(nb: nbformat.NotebookNode) -> bool:
    """Put the canonical set-up cell in ``nb`` (in place); return whether ``nb`` changed."""
    if not problems(nb):
        return False
    old = [c for c in nb.cells if is_setup_cell(c)]
    cell = nbformat.v4.new_code_cell(SOURCE)
    if old and "id" in old[0]:
        cell["id"] = old[0]["id"]  # keep the cell's identity when updating it
    cell.metadata["tags"] = [TAG]
    nb.cells = [c for c in nb.cells if not is_setup_cell(c)]
    first_code = next((i for i, c in enumerate(nb.cells) if c.cell_type == "code"), len(nb.cells))
    nb.cells.insert(first_code, cell)
    return True


def lesson_paths(paths: Iterable[Path]) -> list[Path]:
    """The lessons named by ``paths`` (notebook files, or folders searched for NN_name.ipynb)."""
    found = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(path.glob(LESSON_PATTERN))
        elif path.suffix == ".ipynb" and path.is_file():
            found.append(path)
        else:
            raise ValueError(f"{path} is neither a notebook nor a folder of lessons")
    if not found:
        raise ValueError(f"no lessons ({LESSON_PATTERN}) in {', '.join(map(str, paths))}")
    return found


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--apply", action="store_true", help="insert or update the cell")
    mode.add_argument("--check", action="store_true", help="exit 1 unless every lesson has it")
    mode.add_argument("--print", action="store_true", help="print the cell's source")
    p.add_argument("paths", nargs="*", type=Path, help="notebooks or folders of lessons")
    args = p.parse_args(argv)
    if args.print:
        print(SOURCE)
        return 0
    try:
        lessons = lesson_paths(args.paths or [Path("notebooks")])
    except ValueError as err:
        p.error(str(err))
    failed = 0
    for path in lessons:
        nb = nbformat.read(path, as_version=4)
        if args.apply:
            if apply(nb):
                nbformat.write(nb, path)
                print(f"{path}: set-up cell written (re-execute this lesson)")
        else:
            for problem in problems(nb):
                failed += 1
                print(f"{path}: {problem}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
