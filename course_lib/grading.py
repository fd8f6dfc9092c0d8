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
import hashlib
import html
import json
import os
import shutil
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from pathlib import Path

from course_lib import sandbox
from course_lib.sandbox import Limits, SandboxUnavailable

COURSE_ID = "vanishing-gradients"
#: Per-cell time limit while autograding (seconds). Lessons train small models in single cells, so
#: this is generous; an infinite loop costs this much per cell that runs it.
DEFAULT_TIMEOUT_S = 120
STATUS_FILE = "submission_status.json"
WORK_DIR = "autograde_work"
_PLACEHOLDER = "###"  # nbgrader's solution markers in a written answer


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


def nbgrader_config(course_dir: Path, timeout: int = DEFAULT_TIMEOUT_S, results_dir: Path | None = None):
    """The course's nbgrader settings (``nbgrader_config.py`` at the repository root says the same
    for Formgrader and the ``nbgrader`` command): execution is replaced by the sandbox's results,
    feedback hides hidden tests and rubrics."""
    from traitlets.config import Config

    course_dir = Path(course_dir).resolve()
    c = Config()
    c.CourseDirectory.root = str(course_dir)
    c.CourseDirectory.course_id = COURSE_ID
    c.Execute.timeout = int(timeout)
    c.Execute.interrupt_on_timeout = True
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


def _read_notebook(path: Path):
    import nbformat

    try:
        return nbformat.read(str(path), as_version=4)
    except Exception as err:  # invalid JSON, not a notebook, unreadable file
        raise ValueError(f"not a readable notebook ({type(err).__name__}: {str(err)[:100]})") from err


def integrity_problems(submitted: Path, released: Path) -> list[str]:
    """What a student changed that they should not have: locked and test cells edited (their
    nbgrader checksum differs from the released one) or deleted. Raises ValueError when the
    submission is not a readable notebook."""
    import nbformat
    from nbgrader.utils import compute_checksum

    nb = _read_notebook(submitted)
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


# -- status: one record per student and lesson, written as each finishes -------------------------

def load_status(course_dir: Path) -> dict[str, dict[str, dict]]:
    """``{student: {lesson: {"status": str, "sha256": str | None}}}`` from the status file."""
    path = Path(course_dir) / STATUS_FILE
    if not path.exists():
        return {}
    raw = json.loads(path.read_text())
    return {s: {l: (r if isinstance(r, dict) else {"status": r, "sha256": None}) for l, r in v.items()}
            for s, v in raw.items()}


def _statuses(records: dict[str, dict[str, dict]]) -> dict[str, dict[str, str]]:
    return {s: {l: r["status"] for l, r in v.items()} for s, v in records.items()}


def _save_status(course_dir: Path, records: dict) -> None:
    path = Path(course_dir) / STATUS_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(records, indent=1, sort_keys=True))
    os.replace(tmp, path)


def _is_link(path: Path, own_folder: Path) -> bool:
    """A submission that is, or lies under, a symbolic link (to another student's notebook, the
    instructor's source...) is not the student's own file."""
    if not (path.is_symlink() or path.exists()):
        return False
    try:
        return path.is_symlink() or not path.resolve().is_relative_to(own_folder.resolve()) \
            or own_folder.is_symlink()
    except OSError:
        return True


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- autograde -----------------------------------------------------------------------------------

@dataclass
class _Job:
    lesson: str
    student: str
    sha256: str
    sent: object                      # the sanitized notebook (nbformat NotebookNode)
    guards: dict[str, str]
    tampered: list[str] = field(default_factory=list)


def _sanitized(api, lesson: str, student: str, path: Path):
    """The submission as ``nbgrader autograde`` would execute it (its own preprocessors)."""
    from nbgrader.converters import Autograde
    from traitlets.utils.importstring import import_item

    nb = _read_notebook(path)
    resources = {"unique_key": lesson, "output_files_dir": f"{lesson}_files",
                 "nbgrader": {"student": student, "assignment": lesson, "notebook": lesson,
                              "db_url": api.coursedir.db_url}}
    for pp in Autograde(coursedir=api.coursedir, parent=api).sanitize_preprocessors:
        cls = import_item(pp) if isinstance(pp, str) else pp
        nb, resources = cls(parent=api)(nb, resources)
    return nb


def _describe_failure(result: sandbox.JobResult, limits: Limits, timeout_s: float) -> str:
    if result.timed_out:
        return f"the notebook ran past its time limit of {timeout_s:.0f} s and was stopped"
    if result.overflow:
        return "the grading sandbox returned more output than allowed"
    last = (result.stderr_tail.strip().splitlines() or [""])[-1][:200]
    code = result.returncode
    how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
    return f"the grading sandbox ended without a result ({how}){': ' + last if last else ''}"


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
    Students already graded from the same file are skipped unless ``force``. Without
    ``use_sandbox`` student code runs with your own rights: only for trusted submissions.
    Raises :class:`~course_lib.sandbox.SandboxUnavailable` when the sandbox cannot start.
    """
    import nbformat

    from course_lib.grading_results import merge_executed, not_run, reference_guards, rubric_cells, with_rubrics

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
    say = log or (lambda line: None)
    if use_sandbox:
        problem = sandbox.sandbox_problem(bwrap)
        if problem:
            raise SandboxUnavailable(
                f"the grading sandbox cannot start here: {problem}. Student code would run with "
                "your rights and could read or change the course files. Install bubblewrap on a "
                "Linux machine with user namespaces, or pass --no-sandbox (use_sandbox=False) to "
                "grade trusted submissions without it.")
    work = course_dir / WORK_DIR
    results_dir = work / "results"
    api = make_api(course_dir, limits.cell_timeout_s, results_dir)
    everyone = sorted({p.name for p in submissions_dir.iterdir() if p.is_dir()} | set(_read_roster(roster)))
    chosen_students = _select(everyone, students, "student")
    records = load_status(course_dir)
    in_place = submissions_dir == (course_dir / "submitted")
    with api.gradebook as gb:
        for student in chosen_students:
            gb.update_or_create_student(student)
    runner = sandbox.Runner()
    slots: list[int] = list(range(jobs))
    slot_lock = threading.Lock()
    package_dir = sandbox._package_dir()

    def finish(lesson: str, student: str, status: str, sha: str | None) -> None:
        records.setdefault(student, {})[lesson] = {"status": status, "sha256": sha}
        _save_status(course_dir, records)
        say(f"{student:20s} {lesson:28s} {status}")

    def execute(job: _Job) -> sandbox.JobResult:
        with slot_lock:
            slot = slots.pop()
        try:
            home = work / "plain" / f"{job.student}-{job.lesson}" if not use_sandbox else None
            env = None
            if home is not None:
                shutil.rmtree(home, ignore_errors=True)
                home.mkdir(parents=True)
                env = dict(os.environ, HOME=str(home))
            kenv = sandbox.kernel_env(limits, str(home / "home") if home else sandbox.HOME)
            request = json.dumps({
                "notebook": job.sent, "cell_timeout": limits.cell_timeout_s,
                "output_bytes": limits.output_bytes, "guards": job.guards,
                "kernel_prefix": sandbox.kernel_prefix(limits, slot, use_sandbox), "kernel_env": kenv,
                "python": sys.executable, "cwd": str(home / "home" / "work") if home else sandbox.WORKDIR,
            }).encode()
            cmd = sandbox.bwrap_command(limits, bwrap) if use_sandbox else sandbox.plain_command(limits)
            code_cells = sum(c.cell_type == "code" for c in job.sent.cells)
            return runner.run(cmd, request, limits.notebook_timeout_s(code_cells),
                              len(request) + 2 * limits.output_bytes + 1_000_000, env=env)
        finally:
            with slot_lock:
                slots.append(slot)

    def record(job: _Job, result: sandbox.JobResult) -> None:
        lesson, student = job.lesson, job.student
        guard_lines = {gid: 1 for gid in job.guards}
        notes: list[str] = []
        if result.returncode == 0 and result.stdout:
            try:
                merged, notes = merge_executed(job.sent, result.stdout, guard_lines)
            except ValueError as err:
                merged, notes = not_run(job.sent, str(err)), [f"not run: {err}"]
        else:
            reason = _describe_failure(result, limits, limits.notebook_timeout_s(
                sum(c.cell_type == "code" for c in job.sent.cells)))
            merged, notes = not_run(job.sent, reason), [f"not run: {reason}"]
        source = nbformat.read(str(course_dir / "source" / lesson / f"{lesson}.ipynb"), as_version=4)
        merged = with_rubrics(merged, rubric_cells(source))
        target = results_dir / student / f"{lesson}.ipynb"
        target.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(merged, str(target))
        outcome = api.autograde(lesson, student, force=True, create=True)
        target.unlink()
        if not outcome.get("success"):
            finish(lesson, student, "failed: autograde: " + (_last_lines(outcome, 1) or "unknown error")[:200], job.sha256)
            return
        extra = notes + (["tampered: " + "; ".join(job.tampered)] if job.tampered else [])
        finish(lesson, student, "; ".join(["graded"] + extra), job.sha256)

    try:
        for lesson in chosen:
            reference = course_dir / "release" / lesson / f"{lesson}.ipynb"
            source = nbformat.read(str(course_dir / "source" / lesson / f"{lesson}.ipynb"), as_version=4)
            pending: list[_Job] = []
            for student in chosen_students:
                src = submissions_dir / student / lesson / f"{lesson}.ipynb"
                dest_dir = course_dir / "submitted" / student / lesson
                if _is_link(src, submissions_dir / student):
                    if not in_place:
                        shutil.rmtree(dest_dir, ignore_errors=True)
                    finish(lesson, student, "unreadable: the submission is a link to another file", None)
                    continue
                sha = _sha256(src) if src.is_file() else None
                old = records.get(student, {}).get(lesson)
                if (not force and old is not None and old.get("sha256") == sha
                        and not old["status"].startswith("failed")):
                    say(f"{student:20s} {lesson:28s} {old['status']} (already graded; --force regrades)")
                    continue
                if sha is None:
                    if not in_place:
                        shutil.rmtree(dest_dir, ignore_errors=True)
                    finish(lesson, student, "missing", None)
                    continue
                try:
                    problems = integrity_problems(src, reference)
                except ValueError as err:
                    if not in_place:
                        shutil.rmtree(dest_dir, ignore_errors=True)
                    finish(lesson, student, f"unreadable: {err}", sha)
                    continue
                if not in_place:
                    shutil.rmtree(dest_dir, ignore_errors=True)
                    dest_dir.mkdir(parents=True)
                    shutil.copyfile(src, dest_dir / f"{lesson}.ipynb")
                    if (src.parent / "timestamp.txt").is_file():
                        shutil.copyfile(src.parent / "timestamp.txt", dest_dir / "timestamp.txt")
                try:
                    sent = _sanitized(api, lesson, student, dest_dir / f"{lesson}.ipynb")
                except Exception as err:
                    finish(lesson, student, f"failed: preparing the notebook: {type(err).__name__}: {str(err)[:150]}", sha)
                    continue
                pending.append(_Job(lesson, student, sha, sent, reference_guards(source, sent, package_dir), problems))
            if not pending:
                continue
            with ThreadPoolExecutor(max_workers=jobs) as pool:
                futures = {pool.submit(execute, job): job for job in pending}
                try:
                    for future in as_completed(futures):
                        job = futures[future]
                        try:
                            result = future.result()
                        except Exception as err:  # the grader's own failure: retried next time
                            finish(job.lesson, job.student, f"failed: {type(err).__name__}: {str(err)[:200]}", job.sha256)
                            continue
                        record(job, result)
                except BaseException:
                    runner.stop_all()
                    for future in futures:
                        future.cancel()
                    raise
    finally:
        shutil.rmtree(work / "plain", ignore_errors=True)
    return _statuses(records)


# -- export and feedback -------------------------------------------------------------------------

def export_grades(course_dir: Path = Path("course"), to: Path | None = None) -> Path:
    """Write ``student_id, assignment, part, score, max_score, status`` rows: one per graded part
    (nbgrader grade cell) and a ``total`` row per student and lesson. Missing and unreadable
    submissions score zero."""
    from nbgrader.api import MissingEntry

    course_dir = Path(course_dir).resolve()
    to = Path(to) if to is not None else course_dir / "grades.csv"
    status = _statuses(load_status(course_dir))
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
    status = _statuses(load_status(course_dir))
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
