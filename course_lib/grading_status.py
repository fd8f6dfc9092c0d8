"""The autograding status file, ``course/submission_status.json``: one record per student and
lesson, ``{"status": str, "sha256": str | None}``, written the moment that submission is done.

``status`` is ``graded`` (then ``; notes``), ``missing``, ``unreadable: ...`` or ``failed: ...``;
``sha256`` is the submitted file's, so a rerun knows whether the same file was already graded.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

STATUS_FILE = "submission_status.json"

Records = dict[str, dict[str, dict]]


def load_status(course_dir: Path) -> Records:
    """``{student: {lesson: {"status": str, "sha256": str | None}}}`` (empty without a file; the
    older ``{student: {lesson: status}}`` form is read too)."""
    path = Path(course_dir) / STATUS_FILE
    if not path.exists():
        return {}
    raw = json.loads(path.read_text())
    return {s: {l: (r if isinstance(r, dict) else {"status": r, "sha256": None}) for l, r in v.items()}
            for s, v in raw.items()}


def statuses(records: Records) -> dict[str, dict[str, str]]:
    """``{student: {lesson: status}}``."""
    return {s: {l: r["status"] for l, r in v.items()} for s, v in records.items()}


def save_record(course_dir: Path, student: str, lesson: str, record: dict) -> Records:
    """Add one record to the status file now and return them all. The file is re-read under a lock
    and replaced atomically, so a crash leaves a whole file and graders sharing ``course/`` (several
    machines, disjoint students) keep each other's records."""
    path = Path(course_dir) / STATUS_FILE
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        records = load_status(course_dir)
        records.setdefault(student, {})[lesson] = record
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(records, indent=1, sort_keys=True))
        os.replace(tmp, path)
    return records
