"""The instructor's workflow end to end, on nbgrader: release, simulated class, autograde (in the
sandbox when it can start here), CSV export, feedback; the command line, the nbgrader
configuration at the repository root, ``make release``, resuming an interrupted batch, refusing to
grade without the sandbox. Lesson 00 is the class's assignment (the quickest lesson); the faster
probe assignment of ``test_grading_probe`` serves the resume and sandbox tests."""

import csv
import os
import re
import shutil
import subprocess
from pathlib import Path

import nbformat
import pytest

from course_lib import grading, sandbox
from course_lib.sandbox import Limits, SandboxUnavailable
from test_grading_probe import PROBE, make_probe_course, submit

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
    _submit(released, subs, "ivan", sol2="def first_over_last(norms):\n"     # fails a hidden test only
            "    if len(norms) < 2:\n        raise ValueError('two layers needed')\n"
            "    values = [norms[k] for k in sorted(norms)]\n    return values[0] / values[-1]\n")
    _submit(released, subs, "erin", sol1="def mlp_parameter_count(*args):\n    return 0\n",
            sol2="def first_over_last(norms):\n    return 0.0\n", edit=_tamper)  # tampered tests
    (subs / "frank" / LESSON).mkdir(parents=True)
    (subs / "frank" / LESSON / f"{LESSON}.ipynb").write_text('{"cells": [ not json')  # malformed
    _submit(released, subs, "gina", sol1=None, sol2=None)             # left the stubs
    roster = tmp / "roster.csv"
    roster.write_text("student_id\nalice\nbob\ncarol\nerin\nfrank\ngina\nhank\nivan\n")  # hank: missing
    # An infinite loop is in the hostile class (test_grading_hostile), which runs the quick probe.
    status = grading.autograde(subs, course, [LESSON], roster=roster, timeout=60, jobs=2,
                               use_sandbox=not sandbox.sandbox_problem())
    csv_path = grading.export_grades(course, tmp / "grades.csv")
    pages = grading.generate_feedback(course, [LESSON])
    rows = list(csv.DictReader(open(csv_path)))
    scores = {(r["student_id"], r["part"]): float(r["score"]) for r in rows}
    return dict(tmp=tmp, course=course, released=released, status=status, rows=rows,
                scores=scores, pages=pages)


def test_student_version_has_stubs_and_no_hidden_tests(graded_class):
    text = graded_class["released"].read_text()
    assert "raise NotImplementedError(\\\"not done yet: replace this line" in text, \
        "a stub says what to do when its test cell is run early"
    assert "BEGIN SOLUTION" not in text and "HIDDEN TESTS" not in text
    assert "(depth - 1) * (width * width + width)" not in text, "solution code leaked"
    assert "not sorted names" not in text, "hidden test leaked"


EXPECTED = {  # student: (exercise 1 of 1 point, exercise 2 of 2 points)
    "alice": (1, 2), "bob": (1, 0), "carol": (0, 2), "ivan": (1, 0),
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
    assert status["alice"] == status["bob"] == status["ivan"] == status["gina"] == "graded"
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


def test_a_failing_hidden_test_shows_its_message_and_points_not_its_code(graded_class):
    page = (graded_class["course"] / "feedback" / "ivan" / LESSON / f"{LESSON}.html").read_text()
    text = re.sub(r"<[^>]+>", "", page).replace("&#39;", "'").replace("&quot;", '"')
    assert "use the dict's order, not sorted names" in text, "the hidden test's assertion message"
    assert "in a hidden test (its code is not shown)" in text
    assert "This part scored 0 of 2 points." in text
    for hidden in ("BEGIN HIDDEN TESTS", 'first_over_last({"a": 2.0, "b": 8.0})', "_Profile({"):
        assert hidden not in text and hidden not in page, hidden


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


# -- command line, configuration, Makefile -------------------------------------------------------

def test_lesson_names_and_options_are_accepted_anywhere_on_the_command_line():
    args = grading.parse_args(["autograde", "SUBS", "--roster", "R", "01_the_problem"])
    assert (args.command, args.submissions, args.roster, args.lessons) == (
        "autograde", Path("SUBS"), Path("R"), ["01_the_problem"])
    args = grading.parse_args(["--course", "c", "autograde", "--jobs", "3", "SUBS", "00_welcome",
                               "--force", "01_the_problem", "--no-sandbox"])
    assert args.course == Path("c") and args.jobs == 3 and args.force and args.no_sandbox
    assert args.lessons == ["00_welcome", "01_the_problem"]
    args = grading.parse_args(["feedback", "00_welcome", "--course", "elsewhere", "01_the_problem"])
    assert args.course == Path("elsewhere") and args.lessons == ["00_welcome", "01_the_problem"]
    with pytest.raises(SystemExit):
        grading.parse_args(["autograde", "SUBS", "--no-such-option"])


def test_nbgrader_config_at_the_root_finds_course_with_the_course_settings(monkeypatch):
    from traitlets.config.loader import PyFileConfigLoader

    cfg = PyFileConfigLoader("nbgrader_config.py", path=str(ROOT)).load_config()
    ours = grading.nbgrader_config(ROOT / "course")
    assert cfg.CourseDirectory.root == str(ROOT / "course")
    assert cfg.CourseDirectory.course_id == ours.CourseDirectory.course_id == grading.COURSE_ID
    assert list(cfg.GenerateFeedback.preprocessors) == list(ours.GenerateFeedback.preprocessors)
    assert cfg.ClearSolutions.code_stub == ours.ClearSolutions.code_stub == {"python": grading.CODE_STUB}
    # nbgrader's own autograde (Formgrader's button) must not run student code outside the sandbox
    assert cfg.Autograde.autograde_preprocessors[0] == "course_lib.grading_results.RefuseUnsandboxed"
    assert list(cfg.Autograde.autograde_preprocessors[1:]) == list(ours.Autograde.autograde_preprocessors[1:])
    assert "db_url" not in cfg.CourseDirectory, "the gradebook is course/gradebook.db by default"
    monkeypatch.setenv(grading.GRADEBOOK_URL_VAR, "postgresql://grader@db/course")
    shared = PyFileConfigLoader("nbgrader_config.py", path=str(ROOT)).load_config()
    assert shared.CourseDirectory.db_url == grading.nbgrader_config(ROOT / "course").CourseDirectory.db_url \
        == "postgresql://grader@db/course"


@pytest.mark.skipif(shutil.which("make") is None, reason="no make on PATH")
def test_make_release_rebuilds_when_course_or_student_is_missing(tmp_path):
    shutil.copy(ROOT / "Makefile", tmp_path)
    for name in ("notebooks/00_x.ipynb", "requirements.txt", "pyproject.toml", ".venv/.installed",
                 "course/release/00_x/00_x.ipynb", "student/00_x.ipynb", "student/.built"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("{}")

    def plan() -> str:
        return subprocess.run(["make", "-n", "-o", ".venv/.installed", "release"], cwd=tmp_path,
                              capture_output=True, text=True, check=True).stdout

    assert "course_lib.grading release" not in plan(), "up to date: nothing to do"
    shutil.rmtree(tmp_path / "course")
    assert "course_lib.grading release" in plan(), "course/ deleted"
    (tmp_path / "course/release/00_x").mkdir(parents=True)
    (tmp_path / "course/release/00_x/00_x.ipynb").write_text("{}")
    (tmp_path / "student/00_x.ipynb").unlink()
    assert "course_lib.grading release" in plan(), "a student notebook deleted"


# -- the sandbox and resuming, on the quick probe assignment --------------------------------------

FAST = Limits(cell_timeout_s=30, processes=128, output_bytes=500_000, disk_bytes=64 * 1024**2)


def _executors() -> list[str]:
    """Command lines of running grading executors (ours: the path is this worktree's)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(sandbox.EXECUTOR) in cmdline:
            found.append(cmdline)
    return found


def test_autograde_refuses_without_the_sandbox_unless_told(tmp_path, monkeypatch, capsys):
    course, released = make_probe_course(tmp_path)
    subs = tmp_path / "subs"
    submit(released, subs, "alice")
    with pytest.raises(SandboxUnavailable, match="--no-sandbox"):
        grading.autograde(subs, course, bwrap="no-such-bwrap-here")
    assert not (course / grading.STATUS_FILE).exists(), "nothing may run without the sandbox"
    monkeypatch.setattr(sandbox, "sandbox_problem", lambda bwrap="bwrap": "no user namespaces (simulated)")
    assert grading.main(["--course", str(course), "autograde", str(subs)]) == 2
    err = capsys.readouterr().err
    assert "cannot start here: no user namespaces (simulated)" in err and "--no-sandbox" in err
    status = grading.autograde(subs, course, jobs=1, limits=FAST, use_sandbox=False)
    assert status == {"alice": {PROBE: "graded"}}
    scores = {r["part"]: r["score"] for r in csv.DictReader(open(grading.export_grades(course)))}
    assert (scores["p-1-tests"], scores["p-2-tests"]) == ("1", "2")


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    """Two students; the batch is interrupted (as by Ctrl-C) when the first one is recorded, then
    run again."""
    tmp = tmp_path_factory.mktemp("resume")
    course, released = make_probe_course(tmp)
    subs = tmp / "subs"
    for student in ("ann", "ben"):
        submit(released, subs, student)
    use = not sandbox.sandbox_problem()
    first: list[str] = []

    def interrupt(line: str) -> None:
        first.append(line)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        grading.autograde(subs, course, jobs=1, limits=FAST, log=interrupt, use_sandbox=use)
    after_interrupt = grading.load_status(course)
    left = _executors()
    again: list[str] = []
    final = grading.autograde(subs, course, jobs=2, limits=FAST, log=again.append, use_sandbox=use)
    return dict(tmp=tmp, course=course, subs=subs, first=first, after_interrupt=after_interrupt,
                left=left, again=again, final=final, use=use)


def test_an_interrupted_batch_loses_nothing_and_a_rerun_resumes(resumed):
    assert len(resumed["first"]) == 1
    done = {s for s, lessons in resumed["after_interrupt"].items() if lessons.get(PROBE, {}).get("status") == "graded"}
    assert len(done) == 1, "the student finished before the interrupt is on record"
    assert resumed["left"] == [], "no sandbox outlives the interrupted batch"
    (student,) = done
    skipped = [line for line in resumed["again"] if "already graded" in line]
    assert len(skipped) == 1 and skipped[0].startswith(student)
    assert resumed["final"] == {s: {PROBE: "graded"} for s in ("ann", "ben")}
    totals = {r["student_id"]: r["score"] for r in csv.DictReader(open(grading.export_grades(resumed["course"])))
              if r["part"] == "total"}
    assert totals == {"ann": "3", "ben": "3"}


def test_regrading_is_asked_for_explicitly(resumed):
    lines: list[str] = []
    grading.autograde(resumed["subs"], resumed["course"], jobs=1, limits=FAST, log=lines.append,
                      students=["ben"], force=True, use_sandbox=resumed["use"])
    assert len(lines) == 1 and lines[0].startswith("ben") and "already graded" not in lines[0]
    with pytest.raises(ValueError, match="unknown student.*valid: ann, ben"):
        grading.autograde(resumed["subs"], resumed["course"], students=["zed"], use_sandbox=False)


def test_the_rubric_is_under_the_answer_for_the_grader_and_not_in_feedback(resumed):
    nb = nbformat.read(str(resumed["course"] / "autograded" / "ann" / PROBE / f"{PROBE}.ipynb"), as_version=4)
    ids = [c.metadata.get("nbgrader", {}).get("grade_id") for c in nb.cells]
    answer = ids.index("p-3-answer")
    assert "grader-only" in nb.cells[answer + 1].metadata.get("tags", [])
    assert "Rubric (1 point)" in nb.cells[answer + 1].source and "Model answer" in nb.cells[answer + 1].source
    grading.generate_feedback(resumed["course"])
    page = (resumed["course"] / "feedback" / "ann" / PROBE / f"{PROBE}.html").read_text()
    assert "Products of small factors" in page and "Rubric" not in page and "Model answer" not in page


def test_one_students_feedback_failure_is_reported_and_the_others_get_theirs(resumed, tmp_path, capsys):
    course = tmp_path / "course"
    shutil.copytree(resumed["course"], course)
    shutil.rmtree(course / "feedback", ignore_errors=True)
    broken = course / "autograded" / "ann" / PROBE / f"{PROBE}.ipynb"   # first in line
    broken.unlink()   # autograded notebooks are stored read-only: only root could write over one
    broken.write_text("not a notebook")
    report = grading.generate_feedback(course)
    assert list(report.failed) == [f"ann/{PROBE}"]
    assert [p.parent.parent.name for p in report.pages] == ["ben"], "the student after the failure"
    assert grading.main(["--course", str(course), "feedback"]) == 1
    assert f"no feedback for ann/{PROBE}" in capsys.readouterr().err


def test_a_grader_failure_before_student_code_runs_is_retried_not_scored(tmp_path, monkeypatch):
    course, released = make_probe_course(tmp_path)
    submit(released, tmp_path / "subs", "alice")
    monkeypatch.setattr(sandbox, "plain_command", lambda limits: ["false"])  # the executor never starts
    status = grading.autograde(tmp_path / "subs", course, jobs=1, use_sandbox=False)
    assert status["alice"][PROBE].startswith("failed: the kernel did not start")
    assert not (course / "autograded" / "alice").exists(), "no zero was recorded in the gradebook"
    import course_lib.grading_executor as executor

    assert executor.STARTED == sandbox.STARTED, "the grader listens for what the executor says"
