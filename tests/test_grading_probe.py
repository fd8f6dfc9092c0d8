"""A small purpose-made assignment for the grading tests, and fast checks of what it is built from.

The probe is laid out like a lesson (``90_probe.ipynb`` in a notebooks folder, nbgrader metadata,
hidden tests, a written answer with a model answer and a rubric) and imports the course's own
``course_lib.models`` like the lessons do, so a submission costs a kernel start and a PyTorch
import: a few seconds instead of a lesson's run time. The hostile-class test, the resume test and
the Formgrader browser test use it.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from course_lib import grading
from course_lib.grading_results import (course_imports, hide_hidden_tests, reference_guards,
                                        rubric_cells)

PROBE = "90_probe"
SETUP = "from course_lib.models import count_parameters, mlp\nimport torch\n"
SOLUTION_1 = ("def n_params(n_in, n_out, depth, width):\n"
              "    return n_in * width + width + (depth - 1) * (width * width + width) + width * n_out + n_out\n")
#: A correct answer written another way than the instructor's (honest students submit this).
STUDENT_1 = ("def n_params(n_in, n_out, depth, width):\n"
             "    sizes = [n_in] + [width] * depth + [n_out]\n"
             "    return sum(a * b + b for a, b in zip(sizes, sizes[1:]))\n")
SOLUTION_2 = ("def ratio(norms):\n"
              "    if len(norms) < 2:\n"
              "        raise ValueError(\"need two layers\")\n"
              "    values = list(norms.values())\n"
              "    return values[0] / values[-1]\n")
TESTS_1 = ("assert n_params(4, 2, 1, 3) == count_parameters(mlp(4, 2, 1, 3))\n"
           "### BEGIN HIDDEN TESTS\n"
           "for _args in [(3, 2, 7, 5), (1, 1, 2, 1)]:\n"
           "    assert n_params(*_args) == count_parameters(mlp(*_args)), f\"wrong count for mlp{_args}\"\n"
           "### END HIDDEN TESTS\n")
TESTS_2 = ("assert ratio({\"a\": 1.0, \"b\": 4.0}) == 0.25\n"
           "### BEGIN HIDDEN TESTS\n"
           "for _secret_input in ({}, {\"only_layer\": 1.0}):\n"
           "    try:\n"
           "        ratio(_secret_input)\n"
           "    except ValueError:\n"
           "        pass\n"
           "    else:\n"
           "        raise AssertionError(f\"ratio({_secret_input}) should raise ValueError\")\n"
           "### END HIDDEN TESTS\n")
ANSWER = ("**Model answer.** Depth multiplies per-layer factors, so the first layer's gradient "
          "shrinks geometrically.\n\n**Rubric (1 point).** 1 point: names the product of per-layer "
          "factors. No point for \"the learning rate is too small\".")
#: Lines that exist only in the instructor's source: they must never reach a student.
SECRET_LINES = ["(depth - 1) * (width * width + width)", "for _args in [(3, 2, 7, 5), (1, 1, 2, 1)]:",
                "for _secret_input in ({}, {\"only_layer\": 1.0}):",
                "raise AssertionError(f\"ratio({_secret_input}) should raise ValueError\")"]


def _meta(grade_id: str, *, grade=False, solution=False, locked=False, points=None) -> dict:
    meta = {"grade": grade, "grade_id": grade_id, "locked": locked, "schema_version": 3,
            "solution": solution, "task": False}
    if points is not None:
        meta["points"] = points
    return {"nbgrader": meta}


def _solution(body: str) -> str:
    head, rest = body.split("\n", 1)
    return f"{head}\n    ### BEGIN SOLUTION\n{rest.rstrip()}\n    ### END SOLUTION\n"


def probe_notebook() -> nbformat.NotebookNode:
    """The instructor's source of the probe assignment."""
    nb = new_notebook(cells=[
        new_markdown_cell("# Probe assignment\n\nA tiny lesson for the grading tests."),
        new_code_cell(SETUP),
        new_markdown_cell("### Exercise 1 (1 point)\n\nWrite `n_params(n_in, n_out, depth, width)`.",
                          metadata=_meta("p-1-prompt", locked=True)),
        new_code_cell(_solution(SOLUTION_1), metadata=_meta("p-1-solution", solution=True)),
        new_code_cell(TESTS_1, metadata=_meta("p-1-tests", grade=True, locked=True, points=1)),
        new_markdown_cell("### Exercise 2 (2 points)\n\nWrite `ratio(norms)`.",
                          metadata=_meta("p-2-prompt", locked=True)),
        new_code_cell(_solution(SOLUTION_2), metadata=_meta("p-2-solution", solution=True)),
        new_code_cell(TESTS_2, metadata=_meta("p-2-tests", grade=True, locked=True, points=2)),
        new_markdown_cell("### Exercise 3 (1 point, graded by hand)\n\nWhy do gradients vanish?",
                          metadata=_meta("p-3-prompt", locked=True)),
        new_markdown_cell(f"### BEGIN SOLUTION\n{ANSWER}\n### END SOLUTION",
                          metadata=_meta("p-3-answer", grade=True, solution=True, points=1)),
    ])
    nb.metadata["kernelspec"] = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
    return nb


_RELEASED_ONCE: list[Path] = []  # nbgrader's release takes seconds: made once, then copied


def make_probe_course(tmp: Path) -> tuple[Path, Path]:
    """``tmp/notebooks`` with the probe source and ``tmp/course`` with it released (nbgrader's
    ``generate_assignment``, run once per test session and copied); return (course folder,
    released notebook)."""
    if not _RELEASED_ONCE:
        first = Path(tempfile.mkdtemp(prefix="probe-release-"))
        atexit.register(shutil.rmtree, first, True)
        (first / "notebooks").mkdir()
        nbformat.write(probe_notebook(), str(first / "notebooks" / f"{PROBE}.ipynb"))
        grading.release(first / "notebooks", first / "course", None, [PROBE])
        _RELEASED_ONCE.append(first)
    for name in ("notebooks", "course"):
        shutil.copytree(_RELEASED_ONCE[0] / name, tmp / name)
    return tmp / "course", tmp / "course" / "release" / PROBE / f"{PROBE}.ipynb"


def submit(released: Path, folder: Path, student: str, sol1: str | None = STUDENT_1,
           sol2: str | None = SOLUTION_2, answer: str | None = "Products of small factors.",
           setup: str | None = None) -> Path:
    """Write ``folder/student/90_probe/90_probe.ipynb``: the released notebook with these answers
    (None keeps the stub); ``setup`` replaces the (editable) import cell."""
    nb = nbformat.read(str(released), as_version=4)
    for cell in nb.cells:
        gid = cell.metadata.get("nbgrader", {}).get("grade_id")
        if gid == "p-1-solution" and sol1 is not None:
            cell.source = sol1
        elif gid == "p-2-solution" and sol2 is not None:
            cell.source = sol2
        elif gid == "p-3-answer" and answer is not None:
            cell.source = answer
        elif cell.cell_type == "code" and cell.source.strip() == SETUP.strip() and setup is not None:
            cell.source = setup
    path = folder / student / PROBE / f"{PROBE}.ipynb"
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))
    return path


def test_probe_release_has_stubs_and_no_secret(tmp_path):
    _, released = make_probe_course(tmp_path)
    text = released.read_text()
    assert "raise NotImplementedError(" in text and "YOUR ANSWER HERE" in text
    for line in SECRET_LINES + ["Rubric (1 point)"]:
        assert line not in text, line


def test_reference_guards_cover_the_course_names_each_test_uses():
    source = probe_notebook()
    assert course_imports(source) == {"count_parameters": ("course_lib.models", "count_parameters"),
                                      "mlp": ("course_lib.models", "mlp")}
    guards = reference_guards(source, source, Path(grading.__file__).parent)
    assert set(guards) == {"p-1-tests"}, "exercise 2's tests use no course_lib name"
    guard = guards["p-1-tests"]
    assert "count_parameters" in guard and "\n" not in guard, "one line in front of the test"
    namespace: dict = {}
    exec("from course_lib.models import count_parameters, mlp", namespace)
    exec(guard, namespace)  # the course's own names pass
    exec("count_parameters = lambda model: 0", namespace)
    with pytest.raises(AssertionError, match="'count_parameters' is no longer the course's own"):
        exec(guard, namespace)
    import course_lib.models

    original = course_lib.models.count_parameters
    exec("import course_lib.models as m; m.count_parameters = lambda model: 0; "
         "from course_lib.models import count_parameters", namespace)
    try:
        with pytest.raises(AssertionError, match="no longer the course's own"):
            exec(guard, namespace)  # patched in the module itself
    finally:  # put the function back (a reload would make new classes and break isinstance)
        course_lib.models.count_parameters = original


def test_hidden_failure_shows_message_and_points_not_code():
    nb = probe_notebook()
    cell = nb.cells[4]
    cell.outputs = [nbformat.v4.new_output("error", ename="AssertionError", evalue="wrong count for mlp(3, 2, 7, 5)",
                                           traceback=["\x1b[0;31mAssertionError\x1b[0m Traceback",
                                                      "Cell \x1b[0;32mIn[5], line 5\x1b[0m",
                                                      "      4 for _args in [(3, 2, 7, 5), (1, 1, 2, 1)]:",
                                                      "----> 5     assert n_params(*_args) == ..."])]
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", name="stdout",
                                                  text="for _args in [(3, 2, 7, 5), (1, 1, 2, 1)]:\nok\n")]
    hide_hidden_tests(nb, {"p-1-tests": 1})
    shown = "\n".join(cell.outputs[0].traceback)
    assert "AssertionError: wrong count for mlp(3, 2, 7, 5)" in shown
    assert "in a hidden test" in shown and "scored 0 of 1 point" in shown
    assert "for _args" not in shown and "n_params(*_args)" not in shown
    assert nb.cells[1].outputs[0].text.endswith("\nok\n") and "for _args" not in nb.cells[1].outputs[0].text
    assert rubric_cells(nb)["p-3-answer"].metadata["tags"] == ["grader-only"]


def test_submit_writes_the_answers_and_the_import_cell(tmp_path):
    _, released = make_probe_course(tmp_path)
    path = submit(released, tmp_path / "subs", "x", sol1="A = 1", sol2="B = 2", answer="C", setup="D = 4")
    sources = [c.source for c in nbformat.read(str(path), as_version=4).cells]
    assert {"A = 1", "B = 2", "C", "D = 4"} <= set(sources) and SETUP.strip() not in sources


def test_what_comes_back_from_the_sandbox_is_validated_before_it_is_recorded():
    import copy
    import json

    from course_lib.grading_results import merge_executed

    sent = probe_notebook()

    def payload(nb) -> bytes:
        return json.dumps({"notebook": nb, "notes": ["a note"]}).encode()

    returned = copy.deepcopy(sent)
    returned.cells[1].outputs = [nbformat.v4.new_output(
        "display_data", data={"text/html": "<script>steal()</script><b>bold</b>",
                              "application/javascript": "steal()", "text/plain": "ok"})]
    merged, notes = merge_executed(sent, payload(returned))
    out = merged.cells[1].outputs[0]
    assert notes == ["a note"] and out.data["text/plain"] == "ok"
    assert "application/javascript" not in out.data and "<script>" not in out.data["text/html"]
    assert merged.cells[4].source == sent.cells[4].source, "sources are the grader's, not the sandbox's"
    forged = copy.deepcopy(sent)
    forged.cells[4].source = "pass  # the tests, rewritten"
    with pytest.raises(ValueError, match="cell 4 came back changed"):
        merge_executed(sent, payload(forged))
    fewer = copy.deepcopy(sent)
    fewer.cells = fewer.cells[:3]
    with pytest.raises(ValueError, match="other cells"):
        merge_executed(sent, payload(fewer))
    bogus = copy.deepcopy(sent)
    bogus.cells[1].outputs = [{"output_type": "bogus"}]
    with pytest.raises(ValueError, match="not valid"):
        merge_executed(sent, payload(bogus))
    with pytest.raises(ValueError, match="no readable notebook"):
        merge_executed(sent, b"{ not json")
