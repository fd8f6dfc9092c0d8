"""The instructor's workflow end to end, on nbgrader: release, simulated class, autograde,
CSV export, feedback. Lesson 00 is the assignment (it is the quickest to execute)."""

import csv
import re
from pathlib import Path

import nbformat
import pytest

from course_lib import grading

ROOT = Path(__file__).parent.parent
LESSON = "00_welcome"

GOOD_1 = """def mlp_parameter_count(n_in, n_out, depth, width):
    return n_in * width + width + (depth - 1) * (width * width + width) + width * n_out + n_out
"""
GOOD_2 = """def first_over_last(norms):
    if len(norms) < 2:
        raise ValueError("need at least two layers")
    values = list(norms.values())
    return values[0] / values[-1]
"""


def _gid(cell):
    return cell.metadata.get("nbgrader", {}).get("grade_id")


def _submit(released, folder, student, sol1=GOOD_1, sol2=GOOD_2, edit=None):
    nb = nbformat.read(str(released), as_version=4)
    for cell in nb.cells:
        if _gid(cell) == "ex00-1-solution" and sol1 is not None:
            cell.source = sol1
        if _gid(cell) == "ex00-2-solution" and sol2 is not None:
            cell.source = sol2
    if edit is not None:
        edit(nb)
    path = folder / student / LESSON / f"{LESSON}.ipynb"
    path.parent.mkdir(parents=True)
    nbformat.write(nb, str(path))


def _tamper(nb):
    for cell in nb.cells:
        if _gid(cell) == "ex00-1-tests":
            cell.source = "assert True  # tests? what tests?"
    nb.cells = [c for c in nb.cells if _gid(c) != "ex00-2-tests"]


@pytest.fixture(scope="module")
def graded_class(tmp_path_factory):
    """Release lesson 00, simulate a class, autograde, export and make feedback once."""
    tmp = tmp_path_factory.mktemp("grading")
    course = tmp / "course"
    released = grading.release(ROOT / "notebooks", course, tmp / "student", [LESSON])[0]
    subs = tmp / "collected"
    _submit(released, subs, "alice")                                   # all correct
    _submit(released, subs, "bob", sol2="def first_over_last(norms):\n"
            "    v = list(norms.values())\n    return v[-1] / v[0]\n")   # exercise 2 wrong
    _submit(released, subs, "carol", sol1="raise RuntimeError('crash')\n")  # crashing cell
    _submit(released, subs, "dave", sol2="def first_over_last(norms):\n"
            "    while True:\n        pass\n")                           # infinite loop
    _submit(released, subs, "erin", sol1="def mlp_parameter_count(*args):\n    return 0\n",
            sol2="def first_over_last(norms):\n    return 0.0\n", edit=_tamper)  # tampered tests
    (subs / "frank" / LESSON).mkdir(parents=True)
    (subs / "frank" / LESSON / f"{LESSON}.ipynb").write_text('{"cells": [ not json')  # malformed
    _submit(released, subs, "gina", sol1=None, sol2=None)             # left the stubs
    roster = tmp / "roster.csv"
    roster.write_text("student_id\nalice\nbob\ncarol\ndave\nerin\nfrank\ngina\nhank\n")  # hank: missing
    # The looping student costs the whole timeout; 10 s was too short for importing torch on a loaded machine.
    status = grading.autograde(subs, course, [LESSON], roster=roster, timeout=30)
    csv_path = grading.export_grades(course, tmp / "grades.csv")
    pages = grading.generate_feedback(course, [LESSON])
    rows = list(csv.DictReader(open(csv_path)))
    scores = {(r["student_id"], r["part"]): float(r["score"]) for r in rows}
    return dict(tmp=tmp, course=course, released=released, status=status, rows=rows,
                scores=scores, pages=pages)


def test_student_version_has_stubs_and_no_hidden_tests(graded_class):
    text = graded_class["released"].read_text()
    assert "raise NotImplementedError()" in text
    assert "BEGIN SOLUTION" not in text and "HIDDEN TESTS" not in text
    assert "(depth - 1) * (width * width + width)" not in text, "solution code leaked"
    assert "not sorted names" not in text, "hidden test leaked"


EXPECTED = {  # student: (exercise 1 of 1 point, exercise 2 of 2 points)
    "alice": (1, 2), "bob": (1, 0), "carol": (0, 2), "dave": (1, 0),
    "erin": (0, 0), "frank": (0, 0), "gina": (0, 0), "hank": (0, 0),
}


@pytest.mark.parametrize("student", sorted(EXPECTED))
def test_each_student_gets_the_expected_score_per_part(graded_class, student):
    s = graded_class["scores"]
    one, two = EXPECTED[student]
    assert s[(student, "ex00-1-tests")] == one
    assert s[(student, "ex00-2-tests")] == two
    assert s[(student, "total")] == one + two


def test_statuses_explain_the_zeros(graded_class):
    status = {k: v[LESSON] for k, v in graded_class["status"].items()}
    assert status["alice"] == status["bob"] == status["dave"] == status["gina"] == "graded"
    assert status["hank"] == "missing"
    assert status["frank"].startswith("unreadable")
    assert "tampered" in status["erin"]
    assert "'ex00-1-tests' was modified" in status["erin"]
    assert "'ex00-2-tests' was deleted" in status["erin"]
    totals = {r["student_id"]: r for r in graded_class["rows"] if r["part"] == "total"}
    assert set(totals) == set(EXPECTED), "every student on the roster is in the CSV"
    assert all(r["max_score"] == "3" for r in totals.values())


def test_feedback_for_everyone_without_hidden_tests(graded_class):
    fb = graded_class["course"] / "feedback"
    for student in EXPECTED:
        page = fb / student / LESSON / f"{LESSON}.html"
        assert page.exists(), f"no feedback for {student}"
    alice = (fb / "alice" / LESSON / f"{LESSON}.html").read_text()
    assert "first_over_last" in alice and "for _bad in" not in alice
    assert re.search(r"3(\.0)?\s*/\s*3", alice), "alice's feedback shows her score"
    assert "could not be graded" in (fb / "frank" / LESSON / f"{LESSON}.html").read_text()
    assert "no submission" in (fb / "hank" / LESSON / f"{LESSON}.html").read_text()
    assert "was deleted" in (fb / "erin" / LESSON / f"{LESSON}.html").read_text()


def test_every_lesson_releases_without_solutions_or_hidden_tests(tmp_path):
    source = {p.stem: nbformat.read(str(p), as_version=4) for p in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))}
    released = grading.release(ROOT / "notebooks", tmp_path / "course", tmp_path / "student")
    assert [p.stem for p in released] == list(source)
    for path in released:
        nb = nbformat.read(str(path), as_version=4)
        text = path.read_text()
        assert "BEGIN SOLUTION" not in text and "BEGIN HIDDEN TESTS" not in text, path.name
        solutions = [c for c in source[path.stem].cells
                     if c.metadata.get("nbgrader", {}).get("solution") and c.cell_type == "code"]
        for cell in solutions:
            body = cell.source.split("### BEGIN SOLUTION")[1].split("### END SOLUTION")[0]
            for line in body.strip().splitlines():
                if len(line.strip()) > 12:
                    assert line.strip() not in text, f"{path.name}: solution line leaked: {line.strip()}"
        assert all(not o for c in nb.cells if c.cell_type == "code" for o in c.outputs)


def test_integrity_check_and_bad_input(tmp_path):
    released = grading.release(ROOT / "notebooks", tmp_path / "course", None, [LESSON])[0]
    assert grading.integrity_problems(released, released) == []
    bad = tmp_path / "bad.ipynb"
    bad.write_text("not json")
    with pytest.raises(ValueError, match="not a readable notebook"):
        grading.integrity_problems(bad, released)
    with pytest.raises(ValueError, match="unknown lesson.*valid: 00_welcome"):
        grading.release(ROOT / "notebooks", tmp_path / "course", None, ["99_nope"])
    with pytest.raises(ValueError, match="run the release command first"):
        grading.autograde(tmp_path, tmp_path / "empty-course")
    assert grading.main(["--course", str(tmp_path / "c2"), "feedback"]) == 2
