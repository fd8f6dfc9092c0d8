"""A hostile class: every submission below tries to break the grader, another student, the
instructor's files or the machine, and the batch must not care.

Two honest students are graded alone first (the baseline), then again among the hostile ones, all
in sandboxes with small limits, two at a time. Afterwards: the honest students have exactly their
baseline scores, each hostile student scores zero on the part it attacked (and full marks on its
honest part when the kernel survived) with the reason in its feedback, the released and source
notebooks, the lessons, the other submissions and the gradebook are intact, nothing of the
instructor's solutions or hidden tests appears in any output or feedback, and no connection reached
a port the test listens on. The assignment is the small probe of ``test_grading_probe``.
"""

from __future__ import annotations

import csv
import hashlib
import html
import re
import socket
import sqlite3
from pathlib import Path

import nbformat
import pytest

from course_lib import grading, sandbox
from course_lib.sandbox import Limits
from test_grading_probe import PROBE, SECRET_LINES, SOLUTION_2, STUDENT_1, make_probe_course, submit

LIMITS = Limits(memory_bytes=1536 * 1024**2, processes=64, cell_timeout_s=10,
                output_bytes=200_000, disk_bytes=32 * 1024**2)
WRONG_1 = ("def n_params(n_in, n_out, depth, width):\n"       # passes the visible test only
           "    return n_in * width + width + width * n_out + n_out\n")
HONEST = {"alice": (STUDENT_1, SOLUTION_2), "bob": (WRONG_1, SOLUTION_2)}


def hostile_sources(paths: dict[str, str], port: int) -> dict[str, dict]:
    """``{student: {"sol1": code, "expect": (part 1, part 2), "reason": text in feedback}}``."""
    targets = repr(sorted(paths.values()))
    return {
        "kill_parent": dict(sol1=(
            "import os, signal\n"
            "for pid in [os.getppid()] + [int(p) for p in os.listdir('/proc') if p.isdigit()]:\n"
            "    if pid != os.getpid():\n"
            "        try:\n"
            "            os.kill(pid, signal.SIGKILL)\n"
            "        except OSError as err:\n"
            "            print('kill', pid, type(err).__name__)\n"), expect=(0, 2), reason="PermissionError"),
        "overwrite": dict(sol1=(
            "import glob, os, shutil\n"
            f"targets = {targets}\n"
            "here, above = os.getcwd(), []\n"
            "while here != '/':\n"
            "    here = os.path.dirname(here)\n"
            "    above += [here] + glob.glob(here + '/*') + glob.glob(here + '/*/*.ipynb')\n"
            "for t in targets + above:\n"
            "    for p in [t] + glob.glob(t + '/**/*', recursive=t in targets):\n"
            "        for attack in (lambda p: open(p, 'w').write('{}'), os.remove, shutil.rmtree):\n"
            "            try:\n"
            "                attack(p)\n"
            "            except OSError as err:\n"
            "                pass\n"
            "print('attack done')\n"), expect=(0, 2), reason="NameError"),
        "read_source": dict(sol1=(
            "import glob\n"
            f"for t in {targets} + ['/proc/1/environ', '/etc/shadow', '/root']:\n"
            "    for p in [t] + glob.glob(t + '/**/*', recursive=True):\n"
            "        try:\n"
            "            print(open(p, errors='replace').read())\n"
            "        except OSError as err:\n"
            "            print(type(err).__name__, p)\n"), expect=(0, 2), reason="FileNotFoundError"),
        "leak_tests": dict(sol2=SOLUTION_2.replace(
            "    values =", "    print(get_ipython().user_ns['In'][-1])  # the test cell being run\n    values ="),
            sol1=STUDENT_1, expect=(1, 2), reason="it quotes a hidden test"),
        "memory": dict(sol1=(
            "def grab():\n"
            "    chunks = []\n"
            "    while True:\n"
            "        chunks.append(bytearray(64 * 2**20))\n"
            "grab()\n"), expect=(0, 2), reason="MemoryError"),
        "fork": dict(sol1=(
            "import os, time\n"
            "while True:\n"
            "    if os.fork() == 0:\n"
            "        time.sleep(600)\n"
            "        os._exit(0)\n"), expect=(0, 2), reason="BlockingIOError"),
        "print_forever": dict(sol1="while True:\n    print('spam ' * 200)\n", expect=(0, 2), reason="output cut"),
        "exit_kernel": dict(sol1="import os\nos._exit(3)\n", expect=(0, 0), reason="the kernel died"),
        "loop_forever": dict(sol1="while True:\n    pass\n", expect=(0, 2), reason="CellTimeoutError"),
        "sleep_forever": dict(sol1=(
            "import signal, time\n"
            "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
            "time.sleep(10**6)\n"), expect=(0, 0), reason="did not stop"),
        "network": dict(sol1=(
            "import socket\n"
            "for host in ['127.0.0.1', '1.1.1.1']:\n"
            "    try:\n"
            f"        socket.create_connection((host, {port}), timeout=3).sendall(b'pwned')\n"
            "        print('connected to', host)\n"
            "    except OSError as err:\n"
            "        print(host, type(err).__name__, err)\n"
            "raise RuntimeError('no network')\n"), expect=(0, 2), reason="no network"),
        "fill_disk": dict(sol1=(
            "with open('fill.bin', 'wb') as fh:\n"
            "    while True:\n"
            "        fh.write(b'0' * 2**20)\n"), expect=(0, 2), reason="No space left on device"),
        "shadow": dict(sol1="def n_params(*args):\n    return 0\n\ncount_parameters = lambda model: 0\n",
                       expect=(0, 2), reason="no longer the course's own"),
        "patch": dict(sol1=("import course_lib.models\n"
                            "course_lib.models.count_parameters = lambda model: 0\n"
                            "from course_lib.models import count_parameters\n"
                            "def n_params(*args):\n    return 0\n"),
                      expect=(0, 2), reason="no longer the course's own"),
        "symlink": dict(link_to="alice", expect=(0, 0), reason="link"),
    }


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _scores(csv_path: Path) -> dict[tuple[str, str], float]:
    return {(r["student_id"], r["part"]): float(r["score"]) for r in csv.DictReader(open(csv_path))}


@pytest.fixture(scope="module")
def hostile_class(tmp_path_factory):
    problem = sandbox.sandbox_problem()
    if problem:
        pytest.skip(f"the grading sandbox cannot start here: {problem}")
    tmp = tmp_path_factory.mktemp("hostile")
    course, released = make_probe_course(tmp)
    base_course, _ = make_probe_course(tmp / "baseline")
    base_subs, subs = tmp / "baseline-subs", tmp / "subs"
    for student, (s1, s2) in HONEST.items():
        submit(released, base_subs, student, s1, s2)
        submit(released, subs, student, s1, s2)
    grading.autograde(base_subs, base_course, jobs=2, limits=LIMITS)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(5)
    listener.setblocking(False)
    paths = {"course": str(course), "submissions": str(subs), "notebooks": str(tmp / "notebooks"),
             "gradebook": str(course / "gradebook.db"), "alice": str(subs / "alice")}
    hostile = hostile_sources(paths, listener.getsockname()[1])
    for student, spec in hostile.items():
        if "link_to" in spec:
            target = subs / spec["link_to"] / PROBE / f"{PROBE}.ipynb"
            (subs / student / PROBE).mkdir(parents=True)
            (subs / student / PROBE / f"{PROBE}.ipynb").symlink_to(target)
        else:
            submit(released, subs, student, spec.get("sol1", STUDENT_1), spec.get("sol2", SOLUTION_2))
    before = {name: _digest(course / name) for name in ("release", "source")}
    before["notebooks"] = _digest(tmp / "notebooks")
    before["subs"] = _digest(subs)
    status = grading.autograde(subs, course, jobs=3, limits=LIMITS)  # 3: the timeouts leave cores idle
    try:
        connection = listener.accept()
    except BlockingIOError:
        connection = None
    listener.close()
    grading.export_grades(course, tmp / "grades.csv")
    grading.export_grades(base_course, tmp / "baseline.csv")
    feedback = grading.generate_feedback(course)
    return dict(tmp=tmp, course=course, subs=subs, status=status, hostile=hostile, before=before,
                connection=connection, scores=_scores(tmp / "grades.csv"),
                baseline=_scores(tmp / "baseline.csv"), feedback=feedback)


def test_honest_students_are_graded_exactly_as_without_the_hostile_ones(hostile_class):
    for student in HONEST:
        for part in ("p-1-tests", "p-2-tests", "p-3-answer", "total"):
            assert hostile_class["scores"][(student, part)] == hostile_class["baseline"][(student, part)], (student, part)
    assert hostile_class["scores"][("alice", "total")] == 3 and hostile_class["scores"][("bob", "total")] == 2


@pytest.mark.parametrize("student", sorted(hostile_sources({}, 0)))
def test_hostile_student_scores_zero_on_the_attacked_part_with_a_reason(hostile_class, student):
    spec = hostile_class["hostile"][student]
    scores = hostile_class["scores"]
    assert (scores[(student, "p-1-tests")], scores[(student, "p-2-tests")]) == spec["expect"]
    status = hostile_class["status"][student][PROBE]
    page = hostile_class["course"] / "feedback" / student / PROBE / f"{PROBE}.html"
    assert page.exists(), f"no feedback for {student}: {status}"
    shown = page.read_text() + status
    assert spec["reason"] in shown, f"{student}: the reason '{spec['reason']}' is not shown ({status})"


def test_course_files_and_other_submissions_are_intact(hostile_class):
    course, before = hostile_class["course"], hostile_class["before"]
    assert _digest(course / "release") == before["release"]
    assert _digest(course / "source") == before["source"]
    assert _digest(hostile_class["tmp"] / "notebooks") == before["notebooks"]
    assert _digest(hostile_class["subs"]) == before["subs"]
    with sqlite3.connect(course / "gradebook.db") as db:
        students = {row[0] for row in db.execute("select id from student")}
    assert students == set(HONEST) | set(hostile_class["hostile"])
    assert hostile_class["connection"] is None, "a submission reached a port on the grader's machine"
    assert not hostile_class["feedback"].failed


def _visible_text(page: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", page))


def _output_text(output) -> str:
    parts = [output.get("text", ""), output.get("evalue", ""), "\n".join(output.get("traceback", []))]
    parts += [v for v in output.get("data", {}).values() if isinstance(v, str)]
    return "\n".join(parts)


def test_nothing_of_the_instructors_files_reaches_outputs_or_feedback(hostile_class):
    course = hostile_class["course"]
    feedback = [_visible_text(p.read_text()) for p in (course / "feedback").rglob("*.html")]
    assert len(feedback) == len(HONEST) + len(hostile_class["hostile"])
    outputs = []
    for path in (course / "autograded").rglob("*.ipynb"):
        nb = nbformat.read(str(path), as_version=4)
        outputs += [_output_text(o) for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert any("it quotes a hidden test" in o for o in outputs), "the test-leaking student was not caught"
    for line in SECRET_LINES + ["BEGIN HIDDEN TESTS", "Rubric (1 point)", "SQLite format 3"]:
        assert not any(line in text for text in feedback), f"feedback shows the instructor's line: {line}"
        assert not any(line in text for text in outputs), f"an output shows the instructor's line: {line}"
    bob = _visible_text((course / "feedback" / "bob" / PROBE / f"{PROBE}.html").read_text())
    assert "wrong count for mlp(3, 2, 7, 5)" in bob and "in a hidden test" in bob
    assert "scored 0 of 1 point" in bob
