"""Build the course website with Jupyter Book from the stored, executed lessons in notebooks/.

    python tools/build_site.py            # what `make site` runs: site/_build/html/index.html
    python tools/build_site.py --check    # ... then check every internal link and anchor

Nothing is executed and nothing is downloaded: the pages show the outputs stored in the lessons.
Each lesson ``notebooks/NN_name.ipynb`` (found by that pattern, titled by its first heading) is
copied into ``site/_build/source/`` as a learner would see it, with its outputs:

- nbgrader's own preprocessors remove what a student never gets (the same markers nbgrader uses):
  solution regions (``### BEGIN/END SOLUTION``, or a whole solution cell) become nbgrader's stub,
  written answers (with their model answer and rubric) become "YOUR ANSWER HERE", hidden tests
  (``### BEGIN/END HIDDEN TESTS``) and mark schemes are dropped; the outputs of solution and test
  cells are cleared;
- widget outputs keep only their static image (a static site has no kernel), stale progress
  bars and the stored widget state are dropped, and the Colab set-up cell is hidden;
- a figure whose output has alt text only in its metadata gets the ``<img alt>`` the site shows.

Then ``site/_config.yml``, a table of contents and a syllabus page (``index.md``) go beside them
and ``jupyter-book build`` makes the HTML, with search and, on each lesson, launch buttons for
Colab and Binder (they open the published student version: see README, "The course website").
"""

from __future__ import annotations

import argparse
import html
import re
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import nbformat
import yaml

ROOT = Path(__file__).resolve().parent.parent
LESSON_PATTERN = "[0-9][0-9]_*.ipynb"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
HIDE_TAG = "remove-cell"       # MyST-NB: the cell is not shown on the page
COLAB_TAG = "colab-setup"      # tools/colab_cell.py's set-up cell


@dataclass(frozen=True)
class Lesson:
    path: Path
    number: str
    stem: str
    title: str


def lesson_title(nb: nbformat.NotebookNode, fallback: str) -> str:
    """The text of the notebook's first Markdown heading (any level), else ``fallback``."""
    for cell in nb.cells:
        if cell.cell_type != "markdown":
            continue
        for line in cell.source.splitlines():
            found = re.match(r"\s{0,3}#{1,6}\s+(.+?)\s*#*\s*$", line)
            if found:
                return found.group(1).strip()
    return fallback


def find_lessons(notebooks: Path) -> list[Lesson]:
    """Every ``NN_name.ipynb`` in ``notebooks``, in order, with its title."""
    notebooks = Path(notebooks)
    if not notebooks.is_dir():
        raise ValueError(f"no notebooks folder at {notebooks}")
    found = []
    for path in sorted(notebooks.glob(LESSON_PATTERN)):
        nb = nbformat.read(path, as_version=4)
        found.append(Lesson(path, path.name[:2], path.stem,
                            lesson_title(nb, path.stem[3:].replace("_", " ").capitalize())))
    if not found:
        raise ValueError(f"no lessons ({LESSON_PATTERN}) in {notebooks}")
    return found


# --------------------------------------------------------------------------------------------
# a lesson as a learner sees it, outputs kept
# --------------------------------------------------------------------------------------------

def _nbgrader(cell: nbformat.NotebookNode) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def _static_output(output: nbformat.NotebookNode) -> nbformat.NotebookNode | None:
    """An output as a static page can show it: widget views dropped (their image kept), alt text
    from the metadata put on an ``<img>``; None when nothing static is left."""
    data = output.get("data")
    if data is None:
        return output
    if WIDGET_VIEW in data:
        data = {k: v for k, v in data.items() if k != WIDGET_VIEW}
        if not any(k.startswith("image/") or k == "text/html" for k in data):
            return None  # a progress bar or a control: only its stale text/plain is left
        output["data"] = data
    alt = output.get("metadata", {}).get("image/png", {}).get("alt")
    if alt and "image/png" in data and "text/html" not in data:
        from course_lib.display import image_bundle

        data["text/html"] = image_bundle(data["image/png"], alt)[0]["text/html"]
    return output


def student_view(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """``nb`` (changed in place) as a student gets it, with the lesson's outputs kept."""
    from nbgrader.preprocessors import ClearHiddenTests, ClearMarkScheme, ClearSolutions

    graded = {i for i, c in enumerate(nb.cells)
              if _nbgrader(c).get("solution") or _nbgrader(c).get("grade")}
    for pre in (ClearSolutions(), ClearHiddenTests(), ClearMarkScheme()):
        nb, _ = pre.preprocess(nb, {})
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        if i in graded:
            cell.outputs, cell.execution_count = [], None
        else:
            cell.outputs = [o for o in (_static_output(o) for o in cell.outputs) if o is not None]
        tags = cell.metadata.get("tags", [])
        if COLAB_TAG in tags and HIDE_TAG not in tags:
            cell.metadata["tags"] = [*tags, HIDE_TAG]
    nb.metadata.pop("widgets", None)
    return nb


# --------------------------------------------------------------------------------------------
# the book's sources
# --------------------------------------------------------------------------------------------

def read_config(path: Path = ROOT / "site" / "_config.yml") -> dict:
    return yaml.safe_load(Path(path).read_text())


def launch_links(stem: str, config: dict) -> dict[str, str]:
    """The Colab and Binder URLs of lesson ``stem``: the same the theme's launch buttons use."""
    repo = config["repository"]
    owner_name = urlsplit(repo["url"]).path.strip("/")
    path = f"{repo['path_to_book'].strip('/')}/{stem}.ipynb"
    buttons = config["launch_buttons"]
    return {
        "colab": f"{buttons['colab_url'].rstrip('/')}/github/{owner_name}/blob/"
                 f"{repo['branch']}/{path}",
        "binder": f"{buttons['binderhub_url'].rstrip('/')}/v2/gh/{owner_name}/{repo['branch']}"
                  f"?urlpath=lab/tree/{path}",
    }


def readme_summaries(readme: Path = ROOT / "README.md") -> dict[str, str]:
    """Lesson number -> the README syllabus's "what you learn" cell (empty if unreadable)."""
    rows = {}
    try:
        text = readme.read_text()
    except OSError:
        return rows
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and re.fullmatch(r"\d\d", cells[0]):
            rows[cells[0]] = cells[2]
    return rows


def syllabus(lessons: Iterable[Lesson], config: dict, intro: str,
             summaries: dict[str, str]) -> str:
    """The home page: the course's introduction and a table of every lesson with its links."""
    lines = [f"# {config['title']}", "", intro.strip(), "", "## Syllabus", "",
             "| # | lesson | what you learn | run it |", "|---|---|---|---|"]
    for lesson in lessons:
        links = launch_links(lesson.stem, config)
        what = summaries.get(lesson.number, "").replace("|", "\\|")
        lines.append(f"| {lesson.number} | [{lesson.title}]({lesson.stem}.ipynb) | {what} | "
                     f"[Open in Colab]({links['colab']}) · [Binder]({links['binder']}) |")
    return "\n".join(lines) + "\n"


def _write_if_changed(path: Path, text: str) -> None:
    """Write ``text`` unless ``path`` already holds it (Jupyter Book then rebuilds only what
    changed)."""
    if not path.exists() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def stage(notebooks: Path, source: Path, site: Path = ROOT / "site",
          readme: Path = ROOT / "README.md") -> list[Lesson]:
    """Write the book's sources into ``source``; return the lessons."""
    lessons = find_lessons(notebooks)
    config = read_config(site / "_config.yml")
    source.mkdir(parents=True, exist_ok=True)
    keep = {"_config.yml", "_toc.yml", "index.md"} | {f"{l.stem}.ipynb" for l in lessons}
    for old in source.iterdir():
        if old.is_file() and old.name not in keep:
            old.unlink()
    _write_if_changed(source / "_config.yml", (site / "_config.yml").read_text())
    toc = {"format": "jb-book", "root": "index",
           "chapters": [{"file": lesson.stem} for lesson in lessons]}
    _write_if_changed(source / "_toc.yml", yaml.safe_dump(toc, sort_keys=False))
    _write_if_changed(source / "index.md", syllabus(lessons, config, (site / "intro.md").read_text(),
                                                    readme_summaries(readme)))
    for lesson in lessons:
        nb = student_view(nbformat.read(lesson.path, as_version=4))
        _write_if_changed(source / f"{lesson.stem}.ipynb", nbformat.writes(nb) + "\n")
    return lessons


def build(source: Path, out: Path) -> Path:
    """Run ``jupyter-book build``; the HTML lands in ``out/_build/html``, which is returned."""
    cmd = [str(Path(sys.executable).with_name("jupyter-book")), "build", str(source),
           "--path-output", str(out), "--warningiserror", "--keep-going", "--quiet"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"jupyter-book build failed ({done.returncode}):\n"
                           f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
    return out / "_build" / "html"


# --------------------------------------------------------------------------------------------
# internal links and anchors
# --------------------------------------------------------------------------------------------

class _Links(HTMLParser):
    """Collects a page's ids and the URLs it refers to."""

    REFS = {"a": "href", "link": "href", "img": "src", "script": "src", "iframe": "src",
            "source": "src"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.ids: set[str] = set()
        self.refs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        for key in ("id", "name") if tag == "a" else ("id",):
            if a.get(key):
                self.ids.add(a[key])
        ref = a.get(self.REFS.get(tag, ""))
        if ref:
            self.refs.append(ref)


def check_links(html_dir: Path) -> list[str]:
    """Every broken internal link or anchor of the site in ``html_dir``, as 'page: url (why)'."""
    html_dir = Path(html_dir)
    pages = {}
    for page in sorted(html_dir.rglob("*.html")):
        if "_static" in page.relative_to(html_dir).parts:
            continue  # the theme's template fragments, not pages
        parser = _Links()
        parser.feed(page.read_text(errors="replace"))
        pages[page.resolve()] = parser
    problems = []
    for page, parser in pages.items():
        for ref in parser.refs:
            parts = urlsplit(ref)
            if parts.scheme or ref.startswith("//"):
                continue  # external (http, https, mailto, data: images): not ours to check
            target = page if not parts.path else (page.parent / unquote(parts.path)).resolve()
            if parts.path.endswith("/"):
                target = target / "index.html"
            name = f"{page.relative_to(html_dir.resolve())}: {ref}"
            if not target.exists():
                problems.append(f"{name} (no file {target})")
            elif parts.fragment and target.suffix == ".html":
                ids = pages[target].ids if target in pages else set()
                if unquote(parts.fragment) not in ids:
                    problems.append(f"{name} (no anchor #{parts.fragment})")
    return problems


def page_text(path: Path) -> str:
    """The text of an HTML page without its tags (code lines come back whole)."""
    class _Text(HTMLParser):
        def __init__(self) -> None:
            super().__init__(convert_charrefs=True)
            self.parts: list[str] = []

        def handle_data(self, data: str) -> None:
            self.parts.append(data)

    parser = _Text()
    parser.feed(Path(path).read_text(errors="replace"))
    return html.unescape("".join(parser.parts))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--notebooks", type=Path, default=ROOT / "notebooks",
                   help="folder of the executed lessons (default: notebooks/)")
    p.add_argument("--out", type=Path, default=ROOT / "site",
                   help="sources go to OUT/_build/source, the site to OUT/_build/html "
                        "(default: site/)")
    p.add_argument("--check", action="store_true",
                   help="then check every internal link and anchor; exit 1 if one is broken")
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))  # course_lib of this checkout (tools/ run as a script)
    start = time.perf_counter()
    lessons = stage(args.notebooks, args.out / "_build" / "source")
    html_dir = build(args.out / "_build" / "source", args.out)
    print(f"built {len(lessons)} lessons into {html_dir}/index.html "
          f"in {time.perf_counter() - start:.0f} s")
    if args.check:
        problems = check_links(html_dir)
        for problem in problems:
            print(f"broken link: {problem}")
        print(f"links: {len(problems)} broken")
        return 1 if problems else 0
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ValueError, RuntimeError) as err:
        print(f"build_site: {err}", file=sys.stderr)
        sys.exit(1)
