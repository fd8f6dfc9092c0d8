"""The course website (tools/build_site.py, Jupyter Book): built offline from notebooks/, every
lesson with its outputs and launch buttons, exercises without solutions, no broken link or anchor;
a browser opens three lesson pages and checks that their figures render.
"""

from __future__ import annotations

import functools
import html
import http.server
import json
import re
import sys
import threading
from pathlib import Path

import nbformat
import pytest

import _jupyter as J

ROOT = J.ROOT
sys.path.insert(0, str(ROOT / "tools"))
import build_site as S  # noqa: E402

NOTEBOOKS = sorted((ROOT / "notebooks").glob(S.LESSON_PATTERN))
IDS = [p.stem for p in NOTEBOOKS]
CONFIG = S.read_config()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The whole site, built once from notebooks/ into a temporary folder."""
    out = tmp_path_factory.mktemp("site")
    lessons = S.stage(ROOT / "notebooks", out / "_build" / "source")
    return S.build(out / "_build" / "source", out), lessons


def nbgrader(cell):
    return cell.get("metadata", {}).get("nbgrader", {})


def _code(source, **nbgrader_meta):
    cell = nbformat.v4.new_code_cell(source)
    if nbgrader_meta:
        cell.metadata["nbgrader"] = {"grade_id": f"id{len(source)}", "schema_version": 3,
                                     "locked": False, "points": 1, "solution": False,
                                     "grade": False, **nbgrader_meta}
    return cell


# ------------------------------------------------------------------ preparing a lesson (no build)

def test_student_view_strips_solutions_hidden_tests_and_model_answers_but_keeps_outputs():
    figure = nbformat.v4.new_output("display_data", data={"image/png": "iVBORw0KGgo=",
                                                          "text/plain": "<Figure>"},
                                    metadata={"image/png": {"alt": "A falling line"}})
    lesson = _code("x = 1\nplt.plot([3, 2, 1])")
    lesson.outputs = [figure]
    solution = _code("def f():\n    ### BEGIN SOLUTION\n    return 42  # secret\n    ### END SOLUTION",
                     solution=True)
    solution.outputs = [nbformat.v4.new_output("stream", text="solution output")]
    tests = _code("assert f() is not None\n### BEGIN HIDDEN TESTS\nassert f() == 42\n"
                  "### END HIDDEN TESTS", grade=True)
    answer = nbformat.v4.new_markdown_cell("**Model answer.** Because.\n\n**Rubric** (2 points)")
    answer.metadata["nbgrader"] = {"grade_id": "written", "solution": True, "grade": True,
                                   "points": 2, "schema_version": 3, "locked": False}
    explorer = _code("explorer()")
    explorer.outputs = [nbformat.v4.new_output("display_data", data={
        S.WIDGET_VIEW: {"model_id": "abc", "version_major": 2, "version_minor": 0},
        "image/png": "iVBORw0KGgo=", "text/plain": "Explorer(...)"})]
    bar = _code("fit()")
    bar.outputs = [nbformat.v4.new_output("display_data", data={
        S.WIDGET_VIEW: {"model_id": "def", "version_major": 2, "version_minor": 0},
        "text/plain": "  0%|          | 0/20"})]
    setup = _code("import course_lib")
    setup.metadata["tags"] = [S.COLAB_TAG]
    nb = nbformat.v4.new_notebook(cells=[setup, lesson, solution, tests, answer, explorer, bar])
    nb.metadata["kernelspec"] = {"name": "python3", "language": "python", "display_name": "P"}
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}

    out = S.student_view(nb)
    text = json.dumps(out)
    for secret in ("return 42", "f() == 42", "Model answer", "Rubric", "BEGIN SOLUTION",
                   "HIDDEN TESTS", "solution output", "0%|", S.WIDGET_VIEW):
        assert secret not in text, secret
    assert "raise NotImplementedError()" in out.cells[2].source
    assert "assert f() is not None" in out.cells[3].source
    assert out.cells[4].source == "YOUR ANSWER HERE"
    assert out.cells[1].outputs[0].data["image/png"] == "iVBORw0KGgo="
    assert 'alt="A falling line"' in out.cells[1].outputs[0].data["text/html"]
    assert out.cells[5].outputs[0].data["image/png"] == "iVBORw0KGgo="
    assert out.cells[6].outputs == []
    assert "remove-cell" in out.cells[0].metadata["tags"]
    assert "widgets" not in out.metadata


def test_lessons_are_found_by_their_pattern_and_titled_by_their_first_heading(tmp_path):
    def write(name, *markdown):
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(m) for m in markdown])
        nbformat.write(nb, tmp_path / name)

    write("01_second.ipynb", "Some text", "## Lesson 1: *Second* one\n\nmore")
    write("00_first.ipynb", "# First")
    write("notes.ipynb", "# Not a lesson")
    write("02_untitled.ipynb", "no heading here")
    found = S.find_lessons(tmp_path)
    assert [(l.number, l.stem, l.title) for l in found] == [
        ("00", "00_first", "First"), ("01", "01_second", "Lesson 1: *Second* one"),
        ("02", "02_untitled", "Untitled")]
    with pytest.raises(ValueError, match="no notebooks folder"):
        S.find_lessons(tmp_path / "notes.ipynb")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no lessons"):
        S.find_lessons(tmp_path / "empty")


def test_alt_text_of_a_stored_figure_is_the_img_alt_on_its_page(tmp_path):
    """A small book from one made-up lesson: MyST-NB puts the figure's <img alt> on the page."""
    from course_lib.display import image_bundle

    stored = next(o for p in NOTEBOOKS for c in nbformat.read(p, as_version=4).cells
                  if c.cell_type == "code" for o in c.get("outputs", [])
                  if "image/png" in o.get("data", {}))
    data, md = image_bundle(stored.data["image/png"], "Gradient norm falls 10x per layer")
    cell = _code("plot()")
    cell.outputs = [nbformat.v4.new_output("display_data", data={**data, "text/plain": "<Fig>"},
                                           metadata=md)]
    cell.execution_count = 1
    lesson = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# 00 · Made up"),
                                             cell])
    lesson.metadata = {"kernelspec": {"name": "python3", "language": "python",
                                      "display_name": "Python 3"},
                       "language_info": {"name": "python"}}
    (tmp_path / "notebooks").mkdir()
    nbformat.write(lesson, tmp_path / "notebooks" / "00_made_up.ipynb")
    S.stage(tmp_path / "notebooks", tmp_path / "_build" / "source")
    page = (S.build(tmp_path / "_build" / "source", tmp_path) / "00_made_up.html").read_text()
    assert re.search(r'<img src="data:image/png;base64,[^"]+" alt="Gradient norm falls 10x '
                     r'per layer"', page), "the alt text did not reach the page"


def test_link_checker_reports_missing_pages_and_anchors(tmp_path):
    (tmp_path / "a.html").write_text(
        '<h1 id="top">A</h1><a href="b.html#there">ok</a><a href="b.html#nowhere">bad anchor</a>'
        '<a href="missing.html">bad page</a><a href="#top">self</a><img src="img/x.png">'
        '<a href="https://example.org/#x">external</a><img src="data:image/png;base64,AA">')
    (tmp_path / "b.html").write_text('<section id="there">B</section><a href="a.html">back</a>')
    problems = S.check_links(tmp_path)
    assert len(problems) == 3, problems
    assert any("#nowhere" in p for p in problems) and any("missing.html" in p for p in problems)
    assert any("img/x.png" in p for p in problems)


# ------------------------------------------------------------------ the built site

def test_site_has_no_broken_internal_link_or_anchor(site):
    html_dir, _ = site
    assert S.check_links(html_dir) == []


def test_syllabus_page_links_every_lesson_with_colab_and_binder(site):
    html_dir, lessons = site
    assert [l.stem for l in lessons] == IDS
    index = (html_dir / "index.html").read_text()
    assert "Syllabus" in index
    for lesson in lessons:
        links = S.launch_links(lesson.stem, CONFIG)
        assert f'href="{lesson.stem}.html"' in index, lesson.stem
        assert links["colab"] in index and links["binder"].replace("&", "&amp;") in index


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_lesson_page_has_title_outputs_and_launch_buttons(site, path):
    html_dir, _ = site
    page = html_dir / f"{path.stem}.html"
    text = page.read_text()
    nb = S.student_view(nbformat.read(path, as_version=4))
    title = S.lesson_title(nb, "")
    assert f"<title>{title.replace('&', '&amp;')}" in text or title in S.page_text(page)
    expected = sum(1 for c in nb.cells if c.cell_type == "code" for o in c.outputs
                   if any(k.startswith("image/") for k in o.get("data", {})))
    figures = re.findall(r'<img[^>]+src="(?:_images/|data:image/)', text)
    assert len(figures) == expected, f"{path.name}: {len(figures)} figures on the page, {expected} stored"
    alts = [o.metadata["image/png"]["alt"] for c in nb.cells if c.cell_type == "code"
            for o in c.outputs if o.get("metadata", {}).get("image/png", {}).get("alt")]
    for alt in alts:  # the alt text stored with a figure is the alt attribute on the page
        assert f'alt="{html.escape(alt, quote=True)}"' in text, f"{path.name}: alt text lost: {alt}"
    links = S.launch_links(path.stem, CONFIG)
    assert links["colab"] in text and links["binder"].replace("&", "&amp;") in text


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_lesson_page_shows_exercises_without_solutions_or_hidden_tests(site, path):
    html_dir, _ = site
    text = S.page_text(html_dir / f"{path.stem}.html")
    for marker in ("BEGIN SOLUTION", "END SOLUTION", "HIDDEN TESTS", "MARK SCHEME",
                   "Model answer."):
        assert marker not in text, f"{path.name}: {marker!r} on the page"
    source = nbformat.read(path, as_version=4)
    secret = []
    for cell in source.cells:
        body = cell.source
        for begin, end in (("### BEGIN SOLUTION", "### END SOLUTION"),
                           ("### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS")):
            secret += [part.split(end)[0] for part in body.split(begin)[1:]]
        if cell.cell_type == "markdown" and nbgrader(cell).get("solution"):
            secret.append(body)
    # A solution line may also be lesson text (a prompt quoting it): only lines that the student
    # version itself does not hold count as leaked.
    student = " ".join(c.source for c in S.student_view(nbformat.read(path, as_version=4)).cells)
    student, flat = " ".join(student.replace("`", "").split()), " ".join(text.split())
    for block in secret:
        for line in block.strip().splitlines():
            line = " ".join(line.split())
            if len(line) > 12 and line not in student:
                assert line not in flat, f"{path.name}: solution line on the page: {line}"
    if any(nbgrader(c).get("solution") and c.cell_type == "code" for c in source.cells):
        assert "raise NotImplementedError()" in text, f"{path.name}: exercises not shown"


def test_search_index_covers_every_lesson(site):
    html_dir, lessons = site
    assert (html_dir / "search.html").exists()
    index = (html_dir / "searchindex.js").read_text()
    for lesson in lessons:
        assert f'"{lesson.stem}"' in index, lesson.stem
    assert re.search(r'"gradient":', index), "the search index has no entry for 'gradient'"


# ------------------------------------------------------------------ in a browser

class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_three_lesson_pages_render_their_figures_in_a_browser(site):
    chromium = J.chromium()
    from playwright.sync_api import sync_playwright

    html_dir, lessons = site
    picks = [lessons[1], lessons[len(lessons) // 2], lessons[-1]]
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(html_dir)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    J.ARTIFACTS.mkdir(exist_ok=True)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, headless=True,
                                        args=J.CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1300, "height": 1000})
                for lesson in picks:
                    page.goto(f"{base}/{lesson.stem}.html", wait_until="load")
                    images = page.locator("article .cell_output img")
                    count = images.count()
                    assert count > 0, f"{lesson.stem}: no figure on the page"
                    sizes = images.evaluate_all(
                        "imgs => imgs.map(i => [i.complete, i.naturalWidth, i.naturalHeight])")
                    broken = [i for i, (done, w, h) in enumerate(sizes) if not (done and w and h)]
                    assert not broken, f"{lesson.stem}: figures {broken} of {count} did not render"
                    launch = page.locator("a[href*='colab.research.google.com']")
                    assert launch.count() >= 1, f"{lesson.stem}: no Colab launch button"
                    page.screenshot(path=str(J.ARTIFACTS / f"site_{lesson.stem}.png"))
            finally:
                browser.close()
    finally:
        server.shutdown()
        server.server_close()


def test_pages_workflow_publishes_the_site_and_the_branch_the_launch_buttons_open():
    import yaml

    flow = yaml.safe_load((ROOT / ".github" / "workflows" / "pages.yml").read_text())
    steps = flow["jobs"]["build"]["steps"]
    runs = "\n".join(s.get("run", "") for s in steps)
    branch, folder = CONFIG["repository"]["branch"], CONFIG["repository"]["path_to_book"]
    assert "tools/build_site.py --check" in runs, "the workflow does not build and check the site"
    assert f"git checkout -B {branch}" in runs and f"git push --force origin {branch}" in runs
    assert f"git add -f {folder}/*.ipynb" in runs, "the student notebooks are not published"
    upload = [s for s in steps if "upload-pages-artifact" in s.get("uses", "")]
    assert upload and upload[0]["with"]["path"] == "site/_build/html"
