"""The lessons' shape: what every notebook must have for a learner and for nbgrader.

nbval (run over notebooks/ by the same pytest command) executes them; these tests read them as
JSON and check the structure that DEVELOPERS.md asks of every lesson."""

import re
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))
IDS = [p.stem for p in NOTEBOOKS]


def load(path):
    return nbformat.read(path, as_version=4)


def nbgrader(cell):
    return cell.metadata.get("nbgrader", {})


def test_lessons_are_numbered_without_gaps():
    numbers = [int(p.name[:2]) for p in NOTEBOOKS]
    assert numbers and numbers == list(range(len(numbers))), numbers


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_lesson_opens_with_objectives_prerequisites_and_time(path):
    first = load(path).cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# ")
    assert re.search(r"^## Learning objectives", first.source, re.M), f"{path.name}: no objectives heading"
    for word in ("Prerequisites", "Time"):
        assert f"**{word}" in first.source, f"{path.name}: the opening cell lacks '{word}'"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_lesson_ends_with_takeaways_and_references(path):
    text = "\n".join(c.source for c in load(path).cells if c.cell_type == "markdown")
    assert re.search(r"^## Key takeaways", text, re.M), f"{path.name}: no '## Key takeaways'"
    assert re.search(r"^## References", text, re.M), f"{path.name}: no '## References'"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_the_colab_setup_cell_then_the_papermill_parameters_cell_come_first(path):
    code = [c for c in load(path).cells if c.cell_type == "code"]
    assert "colab-setup" in code[0].metadata.get("tags", []), f"{path.name}: no Colab set-up cell first"
    assert "parameters" in code[1].metadata.get("tags", []), f"{path.name}: no 'parameters' cell next"
    assert "SEED" in code[1].source


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_stored_executed_top_to_bottom_without_errors(path):
    code = [c for c in load(path).cells if c.cell_type == "code"]
    counts = [c.execution_count for c in code]
    assert counts == list(range(1, len(code) + 1)), f"{path.name}: not run top to bottom: {counts}"
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, f"{path.name}: stored error output {errors[0].get('ename')}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_claims_are_asserted_and_numbers_checked(path):
    cells = load(path).cells
    lesson_code = [c.source for c in cells if c.cell_type == "code" and not nbgrader(c)]
    assert any(re.search(r"^\s*assert ", s, re.M) for s in lesson_code), f"{path.name}: no asserted claim"
    assert any("# NBVAL_CHECK_OUTPUT" in s for s in lesson_code), f"{path.name}: no output-checked cell"


@pytest.mark.parametrize("path", [p for p in NOTEBOOKS if p.name[:2] != "00"], ids=IDS[1:])
def test_lesson_has_graded_exercises(path):
    cells = load(path).cells
    tests = [c for c in cells if nbgrader(c).get("grade") and not nbgrader(c).get("solution")]
    solutions = [c for c in cells if nbgrader(c).get("solution") and c.cell_type == "code"]
    assert len(tests) >= 2 and len(solutions) >= 2, f"{path.name}: needs at least two auto-graded exercises"
    assert all(nbgrader(c).get("points", 0) > 0 for c in tests)
    assert all("### BEGIN HIDDEN TESTS" in c.source for c in tests), "each test cell has hidden tests"
    assert all("### BEGIN SOLUTION" in c.source for c in solutions)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_grade_ids_are_unique_and_well_formed(path):
    ids = [nbgrader(c)["grade_id"] for c in load(path).cells if nbgrader(c)]
    assert len(ids) == len(set(ids)), f"{path.name}: duplicate grade_id"
    assert all(re.fullmatch(r"[A-Za-z0-9_-]+", i) for i in ids)


#: The course's parts (DEVELOPERS.md): lesson numbers of each.
PARTS = {"the problem": range(1, 2), "causes": range(2, 6), "solutions": range(6, 11),
         "case studies": range(11, 15), "capstone": range(15, 16)}


@pytest.mark.parametrize("part", PARTS)
def test_each_part_has_a_written_question_with_a_rubric(part):
    lessons = [p for p in NOTEBOOKS if int(p.name[:2]) in PARTS[part]]
    assert len(lessons) == len(PARTS[part]), f"part '{part}': lessons missing"
    written = [c for p in lessons for c in load(p).cells
               if c.cell_type == "markdown" and nbgrader(c).get("grade") and nbgrader(c).get("solution")]
    assert written, f"part '{part}' has no manually graded answer cell"
    assert all(nbgrader(c).get("points", 0) > 0 for c in written)
    assert all("**Model answer.**" in c.source and "**Rubric" in c.source for c in written), \
        f"part '{part}': each written question needs a model answer and a rubric"


def test_readme_syllabus_links_every_lesson():
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    rows = re.findall(r"^\| (\d\d) \| \[[^]]+\]\(notebooks/([^)]+)\)", readme, re.M)
    assert [f"{n} {name}" for n, name in rows] == [f"{p.name[:2]} {p.name}" for p in NOTEBOOKS]
