"""A hostile class: every submission below tries to break the grader, another student, the
instructor's files or the machine, and the batch must not care.

Two honest students are graded alone first (the baseline), then again among the hostile ones, all
in sandboxes with small limits, three at a time. The attacks (:func:`attacks`): kill the grader and
every process in sight, read the instructor's source, the gradebook and other files and print
them, overwrite or delete every file above the working folder and the course's own files, open
network connections (one to a port this test listens on), fill the disk, allocate memory past the
limit, fork without end, print without end, exit the kernel, loop, sleep forever ignoring the
interrupt, rebind or patch the course function a test compares against, print the hidden tests
while they run, and submit a link to another student's notebook. Several go in one submission
where the kernel survives the first. Afterwards: the honest students have exactly their
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


def attacks(paths: dict[str, str], port: int) -> dict[str, str]:
    """The code of each attack (it replaces a solution cell)."""
    targets = repr(sorted(paths.values()))
    return {
        "kill_parent": (
            "import os, signal\n"
            "for pid in [os.getppid()] + [int(p) for p in os.listdir('/proc') if p.isdigit()]:\n"
            "    if pid != os.getpid():\n"
            "        try:\n"
            "            os.kill(pid, signal.SIGKILL)\n"
            "        except OSError as err:\n"
            "            print('kill', pid, type(err).__name__)\n"),
        "read_source": (
            "import glob\n"
            f"for t in {targets} + ['/proc/1/environ', '/etc/shadow', '/root']:\n"
            "    for p in [t] + glob.glob(t + '/**/*', recursive=True):\n"
            "        try:\n"
            "            print(open(p, errors='replace').read())\n"
            "        except OSError as err:\n"
            "            print(type(err).__name__, p)\n"),
        "overwrite": (
            "import glob, os, shutil\n"
            f"targets, refused = {targets}, set()\n"
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
            "                refused.add(err.strerror)\n"
            "print('refused:', sorted(refused))\n"),
        "network": (
            "import socket\n"
            "for host in ['127.0.0.1', '1.1.1.1']:\n"
            "    try:\n"
            f"        socket.create_connection((host, {port}), timeout=3).sendall(b'pwned')\n"
            "        print('connected to', host)\n"
            "    except OSError as err:\n"
            "        print(host, type(err).__name__, err)\n"),
        "fill_disk": (
            "with open('fill.bin', 'wb') as fh:\n"
            "    while True:\n"
            "        fh.write(b'0' * 2**20)\n"),
        "memory": (
            "def grab():\n"
            "    chunks = []\n"
            "    while True:\n"
            "        chunks.append(bytearray(64 * 2**20))\n"
            "grab()\n"),
        "fork": (
            "import os, time\n"
            "while True:\n"
            "    if os.fork() == 0:\n"
            "        time.sleep(600)\n"
            "        os._exit(0)\n"),
        "print_forever": "while True:\n    print('spam ' * 200)\n",
        "exit_kernel": "import os\nos._exit(3)\n",
        "loop_forever": "while True:\n    pass\n",
        "sleep_forever": ("import signal, time\n"
                          "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
                          "time.sleep(10**6)\n"),
        "shadow": "def n_params(*args):\n    return 0\n\ncount_parameters = lambda model: 0\n",
        "patch_setup": ("import course_lib.models\n"   # in the (editable) import cell
                        "course_lib.models.count_parameters = lambda model: 0\n"
                        "from course_lib.models import count_parameters, mlp\n"),
        "leak_tests": SOLUTION_2.replace(
            "    values =", "    print(get_ipython().user_ns['In'][-1])  # the test cell being run\n    values ="),
    }


def hostile_class_spec(paths: dict[str, str], port: int) -> dict[str, dict]:
    """``{student: {"sol1", "sol2", "setup": code, "expect": (part 1, part 2), "reasons": texts
    that feedback or status must show}}``; a student whose kernel survives keeps an honest part."""
    a = attacks(paths, port)
    return {
        # As root the kernel has its own user and cannot signal the grader's executor; as an
        # ordinary user it can stop its own grading (and scores zero saying so), nothing more.
        "burglar": dict(sol1=a["kill_parent"], sol2=a["read_source"], expect=(0, 0),
                        reasons=("PermissionError", "FileNotFoundError") if sandbox.running_as_root()
                        else ("ended without a result",)),
        "vandal": dict(sol1=a["overwrite"], sol2=a["network"], expect=(0, 0),
                       reasons=("refused:", "Network is unreachable")),
        "hog": dict(sol1=a["fill_disk"], sol2=a["memory"], expect=(0, 0),
                    reasons=("No space left on device", "MemoryError")),
        "forker": dict(sol1=a["fork"], expect=(0, 2), reasons=("Resource temporarily unavailable",)),
        "printer": dict(sol1=a["print_forever"], expect=(0, 2), reasons=("output cut",)),
        "exiter": dict(sol1=a["exit_kernel"], expect=(0, 0), reasons=("the kernel died",)),
        "looper": dict(sol1=a["loop_forever"], expect=(0, 2), reasons=("CellTimeoutError",)),
        "sleeper": dict(sol1=a["sleep_forever"], expect=(0, 0), reasons=("did not stop",)),
        "shadow": dict(sol1=a["shadow"], expect=(0, 2), reasons=("no longer the course's own",)),
        "patcher": dict(setup=a["patch_setup"], sol1=a["shadow"].split("\n\n")[0] + "\n", expect=(0, 2),
                        reasons=("no longer the course's own",)),
        "leaker": dict(sol1=STUDENT_1, sol2=a["leak_tests"], expect=(1, 2),
                       reasons=("it quotes a hidden test",)),
        "linker": dict(link_to="alice", expect=(0, 0), reasons=("a link to another file",)),
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
    hostile = hostile_class_spec(paths, listener.getsockname()[1])
    for student, spec in hostile.items():
        if "link_to" in spec:
            target = subs / spec["link_to"] / PROBE / f"{PROBE}.ipynb"
            (subs / student / PROBE).mkdir(parents=True)
            (subs / student / PROBE / f"{PROBE}.ipynb").symlink_to(target)
        else:
            submit(released, subs, student, spec.get("sol1", STUDENT_1), spec.get("sol2", SOLUTION_2),
                   setup=spec.get("setup"))
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


@pytest.mark.parametrize("student", sorted(hostile_class_spec({}, 0)))
def test_hostile_student_scores_zero_on_the_attacked_part_with_a_reason(hostile_class, student):
    spec = hostile_class["hostile"][student]
    scores = hostile_class["scores"]
    assert (scores[(student, "p-1-tests")], scores[(student, "p-2-tests")]) == spec["expect"]
    status = hostile_class["status"][student][PROBE]
    page = hostile_class["course"] / "feedback" / student / PROBE / f"{PROBE}.html"
    assert page.exists(), f"no feedback for {student}: {status}"
    shown = html.unescape(page.read_text()) + status
    for reason in spec["reasons"]:
        assert reason in shown, f"{student}: the reason '{reason}' is not shown ({status})"


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
