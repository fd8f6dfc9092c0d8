"""One autograding batch: every chosen student and lesson, ``jobs`` sandboxes at a time.

:class:`Batch` does, per submission: check it (missing, a link, unreadable, tampered), copy it into
``course/submitted``, prepare it with nbgrader's own sanitizing preprocessors, execute it in a
sandbox (:mod:`course_lib.sandbox`, on a worker thread), validate what comes back
(:func:`~course_lib.grading_results.merge_executed`), have ``nbgrader autograde`` record the
grades (:class:`~course_lib.grading_results.ReplayExecution` puts the sandbox's outputs in place
of nbgrader's own execution), and write the student's status (:mod:`course_lib.grading_status`).
Only the thread that calls :meth:`Batch.run` touches the gradebook; worker threads only wait for
their sandbox.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from course_lib import sandbox
from course_lib.grading_results import merge_executed, not_run, reference_guards, rubric_cells, with_rubrics
from course_lib.grading_status import Records, load_status, save_record
from course_lib.sandbox import Limits

WORK_DIR = "autograde_work"


def read_notebook(path: Path) -> nbformat.NotebookNode:
    """The notebook at ``path``; ValueError when it is not a readable notebook."""
    try:
        return nbformat.read(str(path), as_version=4)
    except Exception as err:  # invalid JSON, not a notebook, unreadable file
        raise ValueError(f"not a readable notebook ({type(err).__name__}: {str(err)[:100]})") from err


def integrity_problems(submitted: Path, released: Path) -> list[str]:
    """What a student changed that they should not have: locked and test cells edited (their
    nbgrader checksum differs from the released one) or deleted. Raises ValueError when the
    submission is not a readable notebook."""
    from nbgrader.utils import compute_checksum

    nb = read_notebook(submitted)
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


def is_link(path: Path, own_folder: Path) -> bool:
    """Whether a submission is, or lies under, a symbolic link (to another student's notebook, the
    instructor's source...): then it is not the student's own file."""
    if not (path.is_symlink() or path.exists()):
        return False
    try:
        return (path.is_symlink() or own_folder.is_symlink()
                or not path.resolve().is_relative_to(own_folder.resolve()))
    except OSError:
        return True


@dataclass
class Job:
    """One submission to execute."""

    lesson: str
    student: str
    sha256: str
    sent: nbformat.NotebookNode       # prepared by nbgrader's sanitizing preprocessors
    guards: dict[str, str]            # {grade_id: reference check run before that test cell}
    rubrics: dict = field(default_factory=dict)   # {grade_id: grader-only markdown cell}
    tampered: list[str] = field(default_factory=list)

    @property
    def code_cells(self) -> int:
        return sum(c.cell_type == "code" for c in self.sent.cells)


class Batch:
    """Grade ``students`` x ``lessons`` of ``submissions_dir`` into the course of ``api``."""

    def __init__(self, api, submissions_dir: Path, lessons: list[str], students: list[str],
                 limits: Limits, jobs: int, force: bool, use_sandbox: bool, bwrap: str,
                 log: Callable[[str], None]) -> None:
        self.api, self.submissions_dir = api, submissions_dir
        self.course_dir = Path(api.coursedir.root)
        self.lessons, self.students, self.limits, self.jobs = lessons, students, limits, jobs
        self.force, self.use_sandbox, self.bwrap, self.log = force, use_sandbox, bwrap, log
        self.work = self.course_dir / WORK_DIR
        self.results_dir = self.work / "results"
        self.in_place = submissions_dir == self.course_dir / "submitted"
        self.records: Records = load_status(self.course_dir)
        self.runner = sandbox.Runner()
        self.slots = list(range(jobs))
        self.slot_lock = threading.Lock()
        self.package_dir = sandbox.package_dir()
        self._sanitizers: list | None = None  # nbgrader's sanitizing preprocessors, made once

    # -- the loop ---------------------------------------------------------------------------------
    def run(self) -> Records:
        """Grade everything; on Ctrl-C or an error, stop every sandbox and re-raise. Every student
        finished before that is on record."""
        with self.api.gradebook as gb:
            for student in self.students:
                gb.update_or_create_student(student)
        queue = self.prepared()
        running: dict = {}
        try:
            with ThreadPoolExecutor(max_workers=self.jobs) as pool:
                def top_up() -> None:  # a few jobs ahead: cores stay busy, memory stays small
                    while len(running) < 2 * self.jobs:
                        job = next(queue, None)
                        if job is None:
                            return
                        running[pool.submit(self.execute, job)] = job

                try:
                    top_up()
                    while running:
                        done, _ = wait(running, return_when=FIRST_COMPLETED)
                        for future in done:
                            job = running.pop(future)
                            try:
                                result = future.result()
                            except Exception as err:  # the grader's own failure: retried next run
                                self.finish(job.lesson, job.student,
                                            f"failed: {type(err).__name__}: {str(err)[:200]}", job.sha256)
                                continue
                            self.record(job, result)
                        top_up()
                except BaseException:
                    self.runner.stop_all()
                    for future in running:
                        future.cancel()
                    raise
        finally:
            shutil.rmtree(self.work / "plain", ignore_errors=True)
        return self.records

    def finish(self, lesson: str, student: str, status: str, sha: str | None) -> None:
        self.records = save_record(self.course_dir, student, lesson, {"status": status, "sha256": sha})
        self.log(f"{student:20s} {lesson:28s} {status}")

    # -- before: check and prepare -----------------------------------------------------------------
    def prepared(self) -> Iterator[Job]:
        """Jobs to run, lesson by lesson; what needs no execution is recorded on the way."""
        for lesson in self.lessons:
            source = nbformat.read(str(self.course_dir / "source" / lesson / f"{lesson}.ipynb"), as_version=4)
            rubrics = rubric_cells(source)
            for student in self.students:
                job = self.prepare(lesson, student, source)
                if job is not None:
                    job.rubrics = rubrics
                    yield job

    def prepare(self, lesson: str, student: str, source: nbformat.NotebookNode) -> Job | None:
        src = self.submissions_dir / student / lesson / f"{lesson}.ipynb"
        dest_dir = self.course_dir / "submitted" / student / lesson
        if is_link(src, self.submissions_dir / student):
            self._drop(dest_dir)
            self.finish(lesson, student, "unreadable: the submission is a link to another file", None)
            return None
        sha = hashlib.sha256(src.read_bytes()).hexdigest() if src.is_file() else None
        old = self.records.get(student, {}).get(lesson)
        if (not self.force and old is not None and old.get("sha256") == sha
                and not old["status"].startswith("failed")):
            self.log(f"{student:20s} {lesson:28s} {old['status']} (already graded; --force regrades)")
            return None
        if sha is None:
            self._drop(dest_dir)
            self.finish(lesson, student, "missing", None)
            return None
        released = self.course_dir / "release" / lesson / f"{lesson}.ipynb"
        try:
            problems = integrity_problems(src, released)
        except ValueError as err:
            self._drop(dest_dir)
            self.finish(lesson, student, f"unreadable: {err}", sha)
            return None
        if not self.in_place:
            self._drop(dest_dir)
            dest_dir.mkdir(parents=True)
            shutil.copyfile(src, dest_dir / f"{lesson}.ipynb")
            if (src.parent / "timestamp.txt").is_file():
                shutil.copyfile(src.parent / "timestamp.txt", dest_dir / "timestamp.txt")
        try:
            sent = self.sanitized(lesson, student, dest_dir / f"{lesson}.ipynb")
        except Exception as err:
            self.finish(lesson, student, f"failed: preparing the notebook: {type(err).__name__}: {str(err)[:150]}", sha)
            return None
        return Job(lesson, student, sha, sent, reference_guards(source, sent, self.package_dir), tampered=problems)

    def _drop(self, dest_dir: Path) -> None:
        if not self.in_place:
            shutil.rmtree(dest_dir, ignore_errors=True)

    def sanitized(self, lesson: str, student: str, path: Path) -> nbformat.NotebookNode:
        """The submission as ``nbgrader autograde`` would execute it (its own preprocessors)."""
        if self._sanitizers is None:
            from nbgrader.converters import Autograde
            from traitlets.utils.importstring import import_item

            self._sanitizers = [(import_item(pp) if isinstance(pp, str) else pp)(parent=self.api)
                                for pp in Autograde(coursedir=self.api.coursedir, parent=self.api).sanitize_preprocessors]
        nb = read_notebook(path)
        resources = {"unique_key": lesson, "output_files_dir": f"{lesson}_files",
                     "nbgrader": {"student": student, "assignment": lesson, "notebook": lesson,
                                  "db_url": self.api.coursedir.db_url}}
        for preprocessor in self._sanitizers:
            nb, resources = preprocessor(nb, resources)
        return nb

    # -- during: a worker thread waits for one sandbox ----------------------------------------------
    def execute(self, job: Job) -> sandbox.JobResult:
        with self.slot_lock:
            slot = self.slots.pop()
        try:
            limits, env, home = self.limits, None, None
            if not self.use_sandbox:  # a private home for the unsandboxed kernel
                home = self.work / "plain" / f"{job.student}-{job.lesson}"
                shutil.rmtree(home, ignore_errors=True)
                home.mkdir(parents=True)
                env = dict(os.environ, HOME=str(home))
            kernel_home = str(home / "home") if home else sandbox.HOME
            request = json.dumps({
                "notebook": job.sent, "cell_timeout": limits.cell_timeout_s,
                "output_bytes": limits.output_bytes, "guards": job.guards,
                "kernel_prefix": sandbox.kernel_prefix(limits, slot, self.use_sandbox),
                "kernel_env": sandbox.kernel_env(limits, kernel_home), "python": sandbox.python_path(),
                "cwd": kernel_home + "/work", "sandboxed": self.use_sandbox,
            }).encode()
            cmd = sandbox.bwrap_command(limits, self.bwrap) if self.use_sandbox else sandbox.plain_command(limits)
            return self.runner.run(cmd, request, limits.notebook_timeout_s(job.code_cells),
                                   len(request) + 2 * limits.output_bytes + 1_000_000, env=env)
        finally:
            with self.slot_lock:
                self.slots.append(slot)

    # -- after: validate and record ----------------------------------------------------------------
    def record(self, job: Job, result: sandbox.JobResult) -> None:
        guard_lines = {gid: 1 for gid in job.guards}
        if result.returncode == 0 and result.stdout:
            try:
                merged, notes = merge_executed(job.sent, result.stdout, guard_lines)
            except ValueError as err:
                merged, notes = not_run(job.sent, str(err)), [f"not run: {err}"]
        elif not result.started:  # nothing of the student's ran: the grader's failure, retried
            self.finish(job.lesson, job.student, "failed: the kernel did not start: "
                        + self.describe_failure(result, job), job.sha256)
            return
        else:
            reason = self.describe_failure(result, job)
            merged, notes = not_run(job.sent, reason), [f"not run: {reason}"]
        merged = with_rubrics(merged, job.rubrics)
        target = self.results_dir / job.student / f"{job.lesson}.ipynb"
        target.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(merged, str(target))
        outcome = self.api.autograde(job.lesson, job.student, force=True, create=True)
        target.unlink()
        if not outcome.get("success"):
            last = ((outcome.get("error") or outcome.get("log") or "").strip().splitlines() or ["unknown error"])[-1]
            self.finish(job.lesson, job.student, f"failed: autograde: {last[:200]}", job.sha256)
            return
        notes += ["tampered: " + "; ".join(job.tampered)] if job.tampered else []
        self.finish(job.lesson, job.student, "; ".join(["graded"] + notes), job.sha256)

    def describe_failure(self, result: sandbox.JobResult, job: Job) -> str:
        if result.timed_out:
            return (f"the notebook ran past its time limit of "
                    f"{self.limits.notebook_timeout_s(job.code_cells)} s and was stopped")
        if result.overflow:
            return "the grading sandbox returned more output than allowed"
        last = (result.stderr_tail.strip().splitlines() or [""])[-1][:200]
        code = result.returncode
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        return f"the grading sandbox ended without a result ({how}){': ' + last if last else ''}"
