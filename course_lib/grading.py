"""The instructor's workflow on nbgrader: release, autograde, export grades, feedback.

Run it as ``python -m course_lib.grading COMMAND`` (the Makefile wraps each command):

- ``release``: build the student version of every lesson with ``nbgrader generate_assignment``
  (solutions replaced by a stub, hidden tests removed) into ``course/release/<lesson>/`` and a flat
  copy in ``student/<lesson>.ipynb`` for self-paced learners;
- ``autograde SUBMISSIONS``: grade collected submissions laid out as
  ``SUBMISSIONS/<student>/<lesson>/<lesson>.ipynb`` (what ``nbgrader collect`` or
  ``nbgrader zip_collect`` produce), each in its own sandbox, several at once (``--jobs``);
- ``export``: write the grades as CSV, one row per student, lesson and graded part;
- ``feedback``: per-student HTML feedback (hidden tests not shown, rubrics not shown).

The lessons in ``notebooks/`` are the instructor's source. nbgrader wants one folder per
assignment, so ``release`` stages each lesson as ``course/source/<lesson>/<lesson>.ipynb``;
``course/`` is nbgrader's course directory (gradebook, autograded and feedback folders).

How ``autograde`` runs one submission (this process alone writes the gradebook):

1. nbgrader's own sanitizing preprocessors prepare the notebook (outputs cleared, locked and test
   cells restored from the source, hidden tests put back);
2. :mod:`course_lib.sandbox` executes it in a bubblewrap sandbox (no course files, no network,
   own PID namespace, limits on memory, processes, time, output and disk), with the grader's check
   that tests compare against the course's own references (:func:`~course_lib.grading_results.reference_guards`);
3. the returned notebook is validated, sanitized and stripped of hidden test code
   (:func:`~course_lib.grading_results.merge_executed`), the rubric of each written answer is put
   under it for the grader, and ``nbgrader autograde`` records the grades with the sandbox's
   outputs in place of its own execution (:class:`~course_lib.grading_results.ReplayExecution`);
4. the student's status is written to ``course/submission_status.json`` at once, so an interrupted
   batch loses nothing and a rerun skips the students already graded (``--force`` regrades).

What nbgrader does not do by itself is added here: a submission that is not valid notebook JSON
is graded zero with a note instead of an error; cells that were edited or deleted are detected by
comparing nbgrader's checksums with the released version, reported in the CSV and the feedback
(autograde itself restores edited test cells from the source, and a deleted test cell scores zero).
"""

from __future__ import annotations

import argparse
import csv
import html
import os
import shutil
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from course_lib import sandbox
from course_lib.grading_batch import WORK_DIR, Batch, integrity_problems
from course_lib.grading_status import STATUS_FILE, load_status, statuses
from course_lib.sandbox import Limits, SandboxUnavailable

__all__ = ["release", "autograde", "export_grades", "generate_feedback", "integrity_problems",
           "load_status", "make_api", "nbgrader_config", "main", "Limits", "SandboxUnavailable"]

COURSE_ID = "vanishing-gradients"
#: Per-cell time limit while autograding (seconds). Lessons train small models in single cells, so
#: this is generous; an infinite loop costs this much per cell that runs it.
DEFAULT_TIMEOUT_S = 120
#: Environment variable with an SQLAlchemy URL for the gradebook (default: course/gradebook.db).
GRADEBOOK_URL_VAR = "COURSE_GRADEBOOK_URL"


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


def _select(available: Sequence[str], wanted: Iterable[str] | None, what: str = "lesson") -> list[str]:
    if wanted is None:
        return list(available)
    wanted = list(wanted)
    unknown = [w for w in wanted if w not in available]
    if unknown:
        raise ValueError(f"unknown {what}(s) {unknown}; valid: {', '.join(available)}")
    return wanted


#: What a solution becomes in the student version: a stub that says what to do when its test cell
#: is run before the exercise is done (nbgrader's own stub raises a bare NotImplementedError()).
CODE_STUB = ('# YOUR CODE HERE\nraise NotImplementedError("not done yet: replace this line with your '
             'solution, then run the test cell below")')


def nbgrader_config(course_dir: Path, timeout: int = DEFAULT_TIMEOUT_S, results_dir: Path | None = None):
    """The course's nbgrader settings (``nbgrader_config.py`` at the repository root says the same
    for Formgrader and the ``nbgrader`` command): execution is replaced by the sandbox's results,
    feedback hides hidden tests and rubrics."""
    from traitlets.config import Config

    course_dir = Path(course_dir).resolve()
    c = Config()
    c.CourseDirectory.root = str(course_dir)
    c.CourseDirectory.course_id = COURSE_ID
    if os.environ.get(GRADEBOOK_URL_VAR):  # e.g. one PostgreSQL gradebook for several graders
        c.CourseDirectory.db_url = os.environ[GRADEBOOK_URL_VAR]
    c.Execute.timeout = int(timeout)
    c.Execute.interrupt_on_timeout = True
    c.ClearSolutions.code_stub = {"python": CODE_STUB}
    c.Autograde.autograde_preprocessors = [
        "course_lib.grading_results.ReplayExecution",
        "nbgrader.preprocessors.IgnorePattern",
        "nbconvert.preprocessors.ClearMetadataPreprocessor",
        "nbgrader.preprocessors.LimitOutput",
        "nbgrader.preprocessors.SaveAutoGrades",
        "nbgrader.preprocessors.AssignLatePenalties",
        "nbgrader.preprocessors.CheckCellMetadata",
    ]
    c.ReplayExecution.results_dir = str(results_dir or course_dir / WORK_DIR / "results")
    c.GenerateFeedback.preprocessors = [
        "course_lib.grading_results.DropGraderNotes",
        "nbgrader.preprocessors.GetGrades",
        "nbgrader.preprocessors.ClearHiddenTests",
        "nbconvert.preprocessors.CSSHTMLHeaderPreprocessor",
    ]
    return c


def make_api(course_dir: Path, timeout: int = DEFAULT_TIMEOUT_S, results_dir: Path | None = None):
    """An ``nbgrader.apps.NbGraderAPI`` for ``course_dir`` with the course's settings."""
    from nbgrader.apps import NbGraderAPI

    _ensure_tools_on_path()
    Path(course_dir).mkdir(parents=True, exist_ok=True)
    return NbGraderAPI(config=nbgrader_config(course_dir, timeout, results_dir))


def _check(result: dict, what: str) -> None:
    if not result.get("success"):
        raise RuntimeError(f"{what} failed:\n" + _last_lines(result))


def _last_lines(result: dict, n: int = 5) -> str:
    return "\n".join((result.get("error") or result.get("log") or "").strip().splitlines()[-n:])


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
              timeout: int = DEFAULT_TIMEOUT_S, jobs: int | None = None, force: bool = False,
              students: Iterable[str] | None = None, limits: Limits | None = None,
              use_sandbox: bool = True, bwrap: str = "bwrap",
              log: Callable[[str], None] | None = None) -> dict[str, dict[str, str]]:
    """Grade every student's submission of each lesson; return ``{student: {lesson: status}}``.

    Status is ``graded`` (followed by ``; notes`` when cells were tampered with, the kernel died,
    a limit was hit...), ``missing``, ``unreadable: ...`` or ``failed: ...`` (a grader error; those
    are retried on the next run). A student on the ``roster`` (a file with one id per line or a CSV
    whose first column is the id) without a submission is ``missing`` and scores zero.

    ``jobs`` submissions run at once (default: the number of cores), each in its own sandbox with
    ``limits`` (default: :class:`~course_lib.sandbox.Limits` with ``timeout`` seconds per cell).
    Students already graded from the same file are skipped unless ``force``; ``students`` limits
    the run to some. ``log`` gets one line per submission as it is done. Without ``use_sandbox``
    student code runs with your own rights: only for trusted submissions. Raises
    :class:`~course_lib.sandbox.SandboxUnavailable` when the sandbox cannot start.
    """
    submissions_dir, course_dir = Path(submissions_dir).resolve(), Path(course_dir).resolve()
    if not submissions_dir.is_dir():
        raise ValueError(f"no submissions folder at {submissions_dir}")
    released = sorted(p.name for p in (course_dir / "release").glob("*") if p.is_dir())
    if not released:
        raise ValueError(f"nothing released in {course_dir}; run the release command first")
    chosen = _select(released, lessons)
    jobs = (os.cpu_count() or 1) if jobs is None else jobs
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a positive integer, got {jobs!r}")
    limits = limits or Limits(cell_timeout_s=int(timeout))
    everyone = sorted({p.name for p in submissions_dir.iterdir() if p.is_dir()} | set(_read_roster(roster)))
    odd = [s for s in everyone if s in (".", "..") or "/" in s or s.startswith("-")]
    if odd:
        raise ValueError(f"student ids must be plain folder names, got {odd}")
    chosen_students = _select(everyone, students, "student")
    if use_sandbox:
        problem = sandbox.sandbox_problem(bwrap)
        if problem:
            raise SandboxUnavailable(
                f"the grading sandbox cannot start here: {problem}. Student code would run with "
                "your rights and could read or change the course files. Install bubblewrap on a "
                "Linux machine with user namespaces, or pass --no-sandbox (use_sandbox=False) to "
                "grade trusted submissions without it.")
    api = make_api(course_dir, limits.cell_timeout_s, course_dir / WORK_DIR / "results")
    batch = Batch(api, submissions_dir, chosen, chosen_students, limits, jobs, force, use_sandbox,
                  bwrap, log or (lambda line: None))
    return statuses(batch.run())


# -- export and feedback -------------------------------------------------------------------------

def export_grades(course_dir: Path = Path("course"), to: Path | None = None) -> Path:
    """Write ``student_id, assignment, part, score, max_score, status`` rows: one per graded part
    (nbgrader grade cell) and a ``total`` row per student and lesson. Missing and unreadable
    submissions score zero."""
    from nbgrader.api import MissingEntry

    course_dir = Path(course_dir).resolve()
    to = Path(to) if to is not None else course_dir / "grades.csv"
    status = statuses(load_status(course_dir))
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


@dataclass
class FeedbackReport:
    """What ``generate_feedback`` wrote, and for whom it failed (``{student/lesson: reason}``)."""

    pages: list[Path]
    failed: dict[str, str]

    def __iter__(self):  # lets ``list(generate_feedback(...))`` give the pages
        return iter(self.pages)

    def __len__(self) -> int:
        return len(self.pages)


def generate_feedback(course_dir: Path = Path("course"),
                      lessons: Iterable[str] | None = None) -> FeedbackReport:
    """HTML feedback per student and lesson in ``course/feedback/<student>/<lesson>/``.

    Autograded submissions get nbgrader's feedback (hidden tests and rubrics removed); missing and
    unreadable ones a page saying why they scored zero; tampered ones a warning at the top. A
    student whose feedback fails is reported in ``failed`` and the others still get theirs.
    """
    course_dir = Path(course_dir).resolve()
    if not (course_dir / STATUS_FILE).exists():
        raise ValueError(f"nothing autograded in {course_dir}; run the autograde command first")
    status = statuses(load_status(course_dir))
    all_lessons = sorted({lesson for s in status.values() for lesson in s})
    chosen = _select(all_lessons, lessons)
    api = make_api(course_dir)
    written, failed = [], {}
    for lesson in chosen:
        for student, states in sorted(status.items()):
            state = states.get(lesson)
            if state is None or state.startswith("failed"):
                continue
            page = course_dir / "feedback" / student / lesson / f"{lesson}.html"
            try:
                if state.startswith("graded"):
                    _check(api.generate_feedback(lesson, student, force=True), f"feedback for {student}/{lesson}")
                    notes = state.split("; ", 1)[1] if "; " in state else ""
                    if "tampered: " in notes:
                        text = page.read_text()
                        banner = ("<div style='border:2px solid #c00;padding:8px;margin:8px'><b>Note:</b> "
                                  + html.escape(notes.split("tampered: ", 1)[1])
                                  + ". Edited tests were restored before grading; deleted tests score zero.</div>")
                        page.write_text(text.replace("<body>", "<body>" + banner, 1))
                else:
                    page.parent.mkdir(parents=True, exist_ok=True)
                    reason = ("no submission was found" if state == "missing"
                              else f"the submission could not be graded: {state}")
                    page.write_text(_note_page(f"{lesson}: 0 points", f"This lesson scored zero because {reason}."))
            except Exception as err:  # one student's failure must not stop the others
                failed[f"{student}/{lesson}"] = (str(err).strip().splitlines() or [type(err).__name__])[-1][:300]
                continue
            written.append(page)
    return FeedbackReport(written, failed)


# -- command line --------------------------------------------------------------------------------

def _parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    parser = argparse.ArgumentParser(prog="python -m course_lib.grading", description=__doc__.split("\n\n")[0])
    parser.add_argument("--course", type=Path, default=Path("course"), help="nbgrader course folder")
    sub = parser.add_subparsers(dest="command", required=True)
    subs = {}
    p = subs["release"] = sub.add_parser("release", help="build the student version of the lessons")
    p.add_argument("--notebooks", type=Path, default=Path("notebooks"))
    p.add_argument("--student-dir", type=Path, default=Path("student"))
    p.add_argument("lessons", nargs="*", help="default: every lesson")
    p = subs["autograde"] = sub.add_parser("autograde", help="grade collected submissions, each in a sandbox")
    p.add_argument("submissions", type=Path, help="SUBMISSIONS/<student>/<lesson>/<lesson>.ipynb")
    p.add_argument("lessons", nargs="*", help="default: every released lesson")
    p.add_argument("--roster", type=Path, help="student ids, one per line (missing ones score zero)")
    p.add_argument("--timeout", type=int, default=DEFAULT_TIMEOUT_S, help="seconds per cell")
    p.add_argument("--jobs", "-j", type=int, default=None, help="submissions at once (default: cores)")
    p.add_argument("--memory-gb", type=float, default=Limits.memory_bytes / 1024**3,
                   help="memory per process of a submission (default 2)")
    p.add_argument("--force", "--regrade", action="store_true", help="regrade students already graded")
    p.add_argument("--student", action="append", dest="students", help="only this student (repeatable)")
    p.add_argument("--no-sandbox", action="store_true",
                   help="run student code WITHOUT the sandbox, with your rights (trusted submissions only)")
    p = subs["export"] = sub.add_parser("export", help="grades as CSV")
    p.add_argument("--to", type=Path, default=None, help="default: COURSE/grades.csv")
    p = subs["feedback"] = sub.add_parser("feedback", help="per-student HTML feedback")
    p.add_argument("lessons", nargs="*")
    for p in subs.values():  # --course is accepted after the command too
        p.add_argument("--course", type=Path, default=None, dest="course_after", help=argparse.SUPPRESS)
    return parser, subs


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Options and lesson names in any order (``autograde SUBS --roster R 01_the_problem``)."""
    parser, subs = _parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    at = next((i for i, a in enumerate(argv) if a in subs), None)
    if at is None:
        return parser.parse_args(argv)  # prints usage or help and exits
    head = parser.parse_args(argv[:at] + [argv[at]] + (["."] if argv[at] == "autograde" else []))
    args = subs[argv[at]].parse_intermixed_args(argv[at + 1:])
    args.course = args.course_after if args.course_after is not None else head.course
    args.command = argv[at]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: ``python -m course_lib.grading {release,autograde,export,feedback}``."""
    args = parse_args(argv)
    try:
        if args.command == "release":
            for path in release(args.notebooks, args.course, args.student_dir, args.lessons or None):
                print(f"released {path}")
        elif args.command == "autograde":
            limits = Limits(cell_timeout_s=args.timeout, memory_bytes=int(args.memory_gb * 1024**3))
            status = autograde(args.submissions, args.course, args.lessons or None, args.roster,
                               args.timeout, args.jobs, args.force, args.students, limits,
                               use_sandbox=not args.no_sandbox, log=lambda line: print(line, flush=True))
            graded = sum(s.startswith("graded") for st in status.values() for s in st.values())
            print(f"{graded} submissions graded; statuses in {args.course / STATUS_FILE}")
        elif args.command == "export":
            print(f"grades written to {export_grades(args.course, args.to)}")
        else:
            report = generate_feedback(args.course, args.lessons or None)
            print(f"{len(report.pages)} feedback pages under {args.course / 'feedback'}")
            if report.failed:
                for who, why in sorted(report.failed.items()):
                    print(f"error: no feedback for {who}: {why}", file=sys.stderr)
                return 1
    except (ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
