"""The instructor's workflow on nbgrader: release, autograde, export grades, feedback.

Run it as ``python -m course_lib.grading COMMAND`` (the Makefile wraps each command):

- ``release``: build the student version of every lesson with ``nbgrader generate_assignment``
  (solutions replaced by a stub, hidden tests removed) into ``course/release/<lesson>/`` and a flat
  copy in ``student/<lesson>.ipynb`` for self-paced learners;
- ``autograde SUBMISSIONS``: grade collected submissions laid out as
  ``SUBMISSIONS/<student>/<lesson>/<lesson>.ipynb`` (what ``nbgrader collect`` or
  ``nbgrader zip_collect`` produce), one student at a time, so that a broken submission never
  stops the batch;
- ``export``: write the grades as CSV, one row per student, lesson and graded part;
- ``feedback``: per-student HTML feedback (hidden tests not shown).

The lessons in ``notebooks/`` are the instructor's source. nbgrader wants one folder per
assignment, so ``release`` stages each lesson as ``course/source/<lesson>/<lesson>.ipynb``;
``course/`` is nbgrader's course directory (gradebook, autograded and feedback folders).

What nbgrader does not do by itself is added here: a submission that is not valid notebook JSON
is graded zero with a note instead of an error; cells that were edited or deleted are detected by
comparing nbgrader's checksums with the released version, reported in the CSV and the feedback
(autograde itself restores edited test cells from the source, and a deleted test cell scores zero).
"""

from __future__ import annotations

import argparse
import csv
import html
import json
import os
import shutil
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

COURSE_ID = "vanishing-gradients"
#: Per-cell time limit while autograding (seconds). Lessons train small models in single cells, so
#: this is generous; an infinite loop costs this much per cell that runs it.
DEFAULT_TIMEOUT_S = 120
STATUS_FILE = "submission_status.json"


def _ensure_tools_on_path() -> None:
    """nbgrader runs ``alembic`` (from this environment) to migrate its gradebook."""
    bindir = str(Path(sys.executable).parent)
    if bindir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")


def lesson_ids(notebooks_dir: Path) -> list[str]:
    """Lesson names (``00_welcome`` ...) found in ``notebooks_dir``."""
    notebooks_dir = Path(notebooks_dir)
    if not notebooks_dir.is_dir():
        raise ValueError(f"no notebooks folder at {notebooks_dir}")
    return sorted(p.stem for p in notebooks_dir.glob("[0-9][0-9]_*.ipynb"))


def _select(available: Sequence[str], wanted: Iterable[str] | None) -> list[str]:
    if wanted is None:
        return list(available)
    wanted = list(wanted)
    unknown = [w for w in wanted if w not in available]
    if unknown:
        raise ValueError(f"unknown lesson(s) {unknown}; valid: {', '.join(available)}")
    return wanted


def make_api(course_dir: Path, timeout: int = DEFAULT_TIMEOUT_S):
    """An ``nbgrader.apps.NbGraderAPI`` for ``course_dir`` with the course's settings."""
    from nbgrader.apps import NbGraderAPI
    from traitlets.config import Config

    _ensure_tools_on_path()
    course_dir = Path(course_dir).resolve()
    course_dir.mkdir(parents=True, exist_ok=True)
    c = Config()
    c.CourseDirectory.root = str(course_dir)
    c.CourseDirectory.course_id = COURSE_ID
    c.Execute.timeout = int(timeout)
    c.Execute.interrupt_on_timeout = True
    c.GenerateFeedback.preprocessors = [
        "nbgrader.preprocessors.GetGrades",
        "nbgrader.preprocessors.ClearHiddenTests",
        "nbconvert.preprocessors.CSSHTMLHeaderPreprocessor",
    ]
    return NbGraderAPI(config=c)


def _check(result: dict, what: str) -> None:
    if not result.get("success"):
        detail = (result.get("error") or result.get("log") or "").strip().splitlines()[-5:]
        raise RuntimeError(f"{what} failed:\n" + "\n".join(detail))


def release(notebooks_dir: Path = Path("notebooks"), course_dir: Path = Path("course"),
            student_dir: Path | None = Path("student"),
            lessons: Iterable[str] | None = None) -> list[Path]:
    """Build the student version of each lesson; return the paths of the student notebooks."""
    notebooks_dir, course_dir = Path(notebooks_dir), Path(course_dir)
    chosen = _select(lesson_ids(notebooks_dir), lessons)
    api = make_api(course_dir)
    out = []
    for lesson in chosen:
        staged = course_dir / "source" / lesson / f"{lesson}.ipynb"
        staged.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(notebooks_dir / f"{lesson}.ipynb", staged)
        _check(api.generate_assignment(lesson, force=True, create=True), f"release of {lesson}")
        released = course_dir / "release" / lesson / f"{lesson}.ipynb"
        if student_dir is not None:
            Path(student_dir).mkdir(parents=True, exist_ok=True)
            target = Path(student_dir) / f"{lesson}.ipynb"
            shutil.copyfile(released, target)
            out.append(target)
        else:
            out.append(released)
    return out


def integrity_problems(submitted: Path, released: Path) -> list[str]:
    """What a student changed that they should not have: locked and test cells edited (their
    nbgrader checksum differs from the released one) or deleted. Raises ValueError when the
    submission is not a readable notebook."""
    import nbformat
    from nbgrader.utils import compute_checksum

    try:
        nb = nbformat.read(str(submitted), as_version=4)
    except Exception as err:  # invalid JSON, not a notebook, unreadable file
        raise ValueError(f"not a readable notebook ({type(err).__name__}: {str(err)[:100]})") from err
    ref = nbformat.read(str(released), as_version=4)
    cells = {c.metadata.get("nbgrader", {}).get("grade_id"): c for c in nb.cells
             if c.metadata.get("nbgrader", {}).get("grade_id")}
    problems = []
    for cell in ref.cells:
        meta = cell.metadata.get("nbgrader", {})
        if not (meta.get("locked") or (meta.get("grade") and not meta.get("solution"))):
            continue
        gid = meta["grade_id"]
        if gid not in cells:
            problems.append(f"cell '{gid}' was deleted")
        elif compute_checksum(cells[gid]) != meta.get("checksum", compute_checksum(cell)):
            problems.append(f"cell '{gid}' was modified")
    return problems


def _read_roster(roster: Path | None) -> list[str]:
    if roster is None:
        return []
    ids = []
    for line in Path(roster).read_text().splitlines():
        first = line.split(",")[0].strip()
        if first and first.lower() not in ("student_id", "id"):
            ids.append(first)
    return ids


def autograde(submissions_dir: Path, course_dir: Path = Path("course"),
              lessons: Iterable[str] | None = None, roster: Path | None = None,
              timeout: int = DEFAULT_TIMEOUT_S) -> dict[str, dict[str, str]]:
    """Grade every student's submission of each lesson; return ``{student: {lesson: status}}``.

    Status is ``graded``, ``graded; tampered: ...``, ``missing``, ``unreadable: ...`` or
    ``autograde failed: ...``. A student on the ``roster`` (a file with one id per line or a CSV
    whose first column is the id) without a submission is ``missing`` and scores zero.
    """
    submissions_dir, course_dir = Path(submissions_dir).resolve(), Path(course_dir).resolve()
    if not submissions_dir.is_dir():
        raise ValueError(f"no submissions folder at {submissions_dir}")
    released = sorted(p.name for p in (course_dir / "release").glob("*") if p.is_dir())
    if not released:
        raise ValueError(f"nothing released in {course_dir}; run the release command first")
    chosen = _select(released, lessons)
    api = make_api(course_dir, timeout)
    students = sorted({p.name for p in submissions_dir.iterdir() if p.is_dir()}
                      | set(_read_roster(roster)))
    status_path = course_dir / STATUS_FILE
    status = json.loads(status_path.read_text()) if status_path.exists() else {}
    in_place = submissions_dir == (course_dir / "submitted")
    with api.gradebook as gb:
        for student in students:
            gb.update_or_create_student(student)
    for lesson in chosen:
        reference = course_dir / "release" / lesson / f"{lesson}.ipynb"
        for student in students:
            src = submissions_dir / student / lesson / f"{lesson}.ipynb"
            dest_dir = course_dir / "submitted" / student / lesson
            state = status.setdefault(student, {})
            if not src.exists():
                state[lesson] = "missing"
                if not in_place:
                    shutil.rmtree(dest_dir, ignore_errors=True)
                continue
            try:
                problems = integrity_problems(src, reference)
            except ValueError as err:
                state[lesson] = f"unreadable: {err}"
                if not in_place:
                    shutil.rmtree(dest_dir, ignore_errors=True)
                continue
            if not in_place:
                dest_dir.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dest_dir / f"{lesson}.ipynb")
            result = api.autograde(lesson, student, force=True, create=True)
            if not result.get("success"):
                last = (result.get("error") or "").strip().splitlines()[-1:] or ["unknown error"]
                state[lesson] = f"autograde failed: {last[0][:200]}"
            elif problems:
                state[lesson] = "graded; tampered: " + "; ".join(problems)
            else:
                state[lesson] = "graded"
    status_path.write_text(json.dumps(status, indent=1, sort_keys=True))
    return status


def export_grades(course_dir: Path = Path("course"), to: Path | None = None) -> Path:
    """Write ``student_id, assignment, part, score, max_score, status`` rows: one per graded part
    (nbgrader grade cell) and a ``total`` row per student and lesson. Missing and unreadable
    submissions score zero."""
    from nbgrader.api import MissingEntry

    course_dir = Path(course_dir).resolve()
    to = Path(to) if to is not None else course_dir / "grades.csv"
    status_path = course_dir / STATUS_FILE
    status = json.loads(status_path.read_text()) if status_path.exists() else {}
    api = make_api(course_dir)
    rows = []
    with api.gradebook as gb:
        for assignment in sorted(gb.assignments, key=lambda a: a.name):
            cells = [(nb.name, gc.name, gc.max_score)
                     for nb in assignment.notebooks for gc in nb.grade_cells]
            for student in sorted(gb.students, key=lambda s: s.id):
                state = status.get(student.id, {}).get(assignment.name, "missing")
                total = 0.0
                for nb_name, cell, max_score in cells:
                    score, note = 0.0, state
                    if state.startswith("graded"):
                        try:
                            grade = gb.find_grade(cell, nb_name, assignment.name, student.id)
                        except MissingEntry:
                            note = state + "; part not graded"
                        else:
                            score = float(grade.score or 0.0)
                            if grade.needs_manual_grade:
                                note = "needs manual grading"
                    total += score
                    rows.append([student.id, assignment.name, cell, f"{score:g}", f"{max_score:g}", note])
                max_total = sum(m for _, _, m in cells)
                rows.append([student.id, assignment.name, "total", f"{total:g}", f"{max_total:g}", state])
    to.parent.mkdir(parents=True, exist_ok=True)
    with open(to, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["student_id", "assignment", "part", "score", "max_score", "status"])
        writer.writerows(rows)
    return to


def _note_page(title: str, message: str) -> str:
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"</head><body><h1>{html.escape(title)}</h1><p>{html.escape(message)}</p></body></html>")


def generate_feedback(course_dir: Path = Path("course"),
                      lessons: Iterable[str] | None = None) -> list[Path]:
    """HTML feedback per student and lesson in ``course/feedback/<student>/<lesson>/``.

    Autograded submissions get nbgrader's feedback (hidden tests removed); missing and
    unreadable ones a page saying why they scored zero; tampered ones a warning at the top.
    """
    course_dir = Path(course_dir).resolve()
    status_path = course_dir / STATUS_FILE
    if not status_path.exists():
        raise ValueError(f"nothing autograded in {course_dir}; run the autograde command first")
    status = json.loads(status_path.read_text())
    all_lessons = sorted({lesson for s in status.values() for lesson in s})
    chosen = _select(all_lessons, lessons)
    api = make_api(course_dir)
    written = []
    for lesson in chosen:
        graded = [s for s, st in status.items() if st.get(lesson, "").startswith("graded")]
        for student in graded:
            _check(api.generate_feedback(lesson, student, force=True), f"feedback for {student}/{lesson}")
        for student, states in status.items():
            state = states.get(lesson)
            if state is None:
                continue
            page = course_dir / "feedback" / student / lesson / f"{lesson}.html"
            if state.startswith("graded"):
                if "tampered" in state:
                    text = page.read_text()
                    banner = ("<div style='border:2px solid #c00;padding:8px;margin:8px'><b>Note:</b> "
                              + html.escape(state.split("tampered: ", 1)[1])
                              + ". Edited tests were restored before grading; deleted tests score zero.</div>")
                    page.write_text(text.replace("<body>", "<body>" + banner, 1))
            else:
                page.parent.mkdir(parents=True, exist_ok=True)
                reason = ("no submission was found" if state == "missing"
                          else f"the submission could not be graded: {state}")
                page.write_text(_note_page(f"{lesson}: 0 points", f"This lesson scored zero because {reason}."))
            written.append(page)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: ``python -m course_lib.grading {release,autograde,export,feedback}``."""
    parser = argparse.ArgumentParser(prog="python -m course_lib.grading", description=__doc__.split("\n\n")[0])
    parser.add_argument("--course", type=Path, default=Path("course"), help="nbgrader course folder")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("release", help="build the student version of the lessons")
    p.add_argument("--notebooks", type=Path, default=Path("notebooks"))
    p.add_argument("--student-dir", type=Path, default=Path("student"))
    p.add_argument("lessons", nargs="*", help="default: every lesson")
    p = sub.add_parser("autograde", help="grade collected submissions")
    p.add_argument("submissions", type=Path, help="SUBMISSIONS/<student>/<lesson>/<lesson>.ipynb")
    p.add_argument("--roster", type=Path, help="student ids, one per line (missing ones score zero)")
    p.add_argument("--timeout", type=int, default=DEFAULT_TIMEOUT_S, help="seconds per cell")
    p.add_argument("lessons", nargs="*")
    p = sub.add_parser("export", help="grades as CSV")
    p.add_argument("--to", type=Path, default=None, help="default: COURSE/grades.csv")
    p = sub.add_parser("feedback", help="per-student HTML feedback")
    p.add_argument("lessons", nargs="*")
    args = parser.parse_args(argv)
    try:
        if args.command == "release":
            for path in release(args.notebooks, args.course, args.student_dir, args.lessons or None):
                print(f"released {path}")
        elif args.command == "autograde":
            status = autograde(args.submissions, args.course, args.lessons or None, args.roster, args.timeout)
            for student, states in sorted(status.items()):
                for lesson, state in sorted(states.items()):
                    print(f"{student:20s} {lesson:28s} {state}")
        elif args.command == "export":
            print(f"grades written to {export_grades(args.course, args.to)}")
        else:
            pages = generate_feedback(args.course, args.lessons or None)
            print(f"{len(pages)} feedback pages under {args.course / 'feedback'}")
    except (ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
