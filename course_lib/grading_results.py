"""What crosses back from the grading sandbox, and what students and graders then see.

- :func:`merge_executed` validates the executor's answer against the notebook the grader sent
  (same cells, same sources; only outputs and execution counts are taken; outputs must be valid
  nbformat, unsafe HTML and scripts are removed with nbconvert's ``SanitizeHTML``) and hides the
  hidden tests (:func:`hide_hidden_tests`).
- :func:`hide_hidden_tests`: in a test cell with hidden tests, an error shows its message, where it
  happened (a visible line, or "a hidden test") and the points lost, never the traceback (which
  quotes the hidden code: nbgrader issue #917); any output line that quotes a hidden test line is
  replaced.
- :func:`reference_guards`: for each test cell, one line run before it in the kernel that fails
  the test when a name it uses, imported from ``course_lib`` by the lesson, is no longer the
  course's own object (a submission that redefines ``count_parameters`` cannot pass a test that
  compares against it).
- nbgrader preprocessors: :class:`ReplayExecution` takes the place of nbgrader's ``Execute`` in
  ``autograde`` (the outputs come from the sandbox, the grades are then saved by nbgrader itself),
  :class:`DropGraderNotes` removes the grader-only rubric cells from feedback, and
  :class:`RefuseUnsandboxed` stops Formgrader's own autograde button from running student code
  outside the sandbox.
"""

from __future__ import annotations

import ast
import copy
import json
import re
from pathlib import Path

import nbformat
from nbformat.notebooknode import NotebookNode
from traitlets import Unicode

from nbgrader.preprocessors import NbGraderPreprocessor

BEGIN_HIDDEN, END_HIDDEN = "BEGIN HIDDEN TESTS", "END HIDDEN TESTS"
#: Output lines quoting a hidden test line at least this long (stripped) are replaced.
MIN_QUOTED = 12
REDACTED = "[line removed: it quotes a hidden test]"
GRADER_ONLY = "grader-only"
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_CELL_FRAME = re.compile(r"Cell In\s*\[[^\]]*\],\s*line (\d+)")
_GUARD_SOURCE = """import importlib, sys
for _name, (_mod, _attr) in _refs.items():
    if _name not in _ns:
        continue
    _module = importlib.import_module(_mod)
    _origin = getattr(getattr(_module, "__spec__", None), "origin", None) or ""
    _expected = _module if _attr is None else getattr(_module, _attr, None)
    _claims = getattr(_expected, "__module__", None)
    _file = getattr(getattr(_expected, "__code__", None), "co_filename", None)
    if _file is None and isinstance(_expected, type):
        _file = getattr(sys.modules.get(_claims or ""), "__file__", None)
    _foreign = (_claims is None or _claims == "__main__" or _claims.startswith("course_lib")) and (
        _file is not None and not _file.startswith(_root))
    if _ns[_name] is not _expected or not _origin.startswith(_root) or _foreign:
        raise AssertionError(
            f"'{_name}' is no longer the course's own {_mod}{'.' + _attr if _attr else ''}: a test "
            "compares your work against it, so it must not be redefined or replaced")
"""


def _nbgrader(cell: NotebookNode) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def is_test_cell(cell: NotebookNode) -> bool:
    meta = _nbgrader(cell)
    return cell.cell_type == "code" and bool(meta.get("grade")) and not meta.get("solution")


def split_hidden(source: str) -> tuple[set[int], list[str]]:
    """Line numbers (1-based) inside a hidden-test region, markers included, and those lines."""
    numbers, lines, inside = set(), [], False
    for i, line in enumerate(source.split("\n"), start=1):
        if BEGIN_HIDDEN in line:
            inside = True
        if inside:
            numbers.add(i)
            lines.append(line)
        if END_HIDDEN in line:
            inside = False
    return numbers, lines


def hidden_lines(nb: NotebookNode) -> set[str]:
    """Every hidden test line of the notebook long enough to be recognised when quoted."""
    found = set()
    for cell in nb.cells:
        if cell.cell_type == "code":
            found.update(l.strip() for l in split_hidden(cell.source)[1] if len(l.strip()) >= MIN_QUOTED)
    return found | {BEGIN_HIDDEN, END_HIDDEN}


def _redact(text: str, secret: set[str]) -> str:
    if not any(s in text for s in secret):
        return text
    return "\n".join(REDACTED if any(s in line for s in secret) else line for line in text.split("\n"))


def _redact_output(output: NotebookNode, secret: set[str]) -> None:
    if output.output_type == "stream":
        output.text = _redact(output.text, secret)
    elif output.output_type == "error":
        output.evalue = _redact(output.evalue, secret)
        output.traceback = [_redact(t, secret) for t in output.traceback]
    else:
        for key, value in list(output.get("data", {}).items()):
            if isinstance(value, str):
                output.data[key] = _redact(value, secret)


def _failure_line(traceback: list[str]) -> int | None:
    """The line of the test cell where the error happened (the outermost cell frame)."""
    for entry in traceback:
        m = _CELL_FRAME.search(_ANSI.sub("", entry))
        if m:
            return int(m.group(1))
    return None


def _hidden_failure(output: NotebookNode, cell: NotebookNode, guard_lines: int) -> NotebookNode:
    hidden, _ = split_hidden(cell.source)
    points = _nbgrader(cell).get("points", 0)
    line = _failure_line(output.traceback)
    if line is not None:
        line -= guard_lines
    src = cell.source.split("\n")
    if line is not None and line < 1:
        where = "in the grader's check that the tests use the course's own references"
    elif line is not None and line not in hidden and line <= len(src):
        where = f"in the visible tests, line {line}: {src[line - 1].strip()}"
    else:
        where = "in a hidden test (its code is not shown)"
    message = f"{output.ename}: {output.evalue}" if output.evalue else output.ename
    return NotebookNode(output_type="error", ename=output.ename, evalue=output.evalue, traceback=[
        message, where, f"This part scored 0 of {points:g} point{'s' if points != 1 else ''}."])


def hide_hidden_tests(nb: NotebookNode, guard_lines: dict[str, int] | None = None) -> NotebookNode:
    """Rewrite errors of test cells that hold hidden tests and remove quoted hidden lines from
    every output (in place; returns ``nb``). ``guard_lines``: lines run before a test cell."""
    guard_lines = guard_lines or {}
    secret = hidden_lines(nb)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        if is_test_cell(cell) and split_hidden(cell.source)[0]:
            gid = _nbgrader(cell).get("grade_id")
            cell.outputs = [_hidden_failure(o, cell, guard_lines.get(gid, 0)) if o.output_type == "error" else o
                            for o in cell.outputs]
        for output in cell.outputs:
            _redact_output(output, secret)
    return nb


def merge_executed(sent: NotebookNode, payload: bytes,
                   guard_lines: dict[str, int] | None = None) -> tuple[NotebookNode, list[str]]:
    """The notebook ``sent`` with the outputs the executor returned in ``payload``, validated,
    sanitized, hidden tests hidden; and the executor's notes. Raises ValueError when the payload is
    not what the executor writes."""
    from nbconvert.preprocessors.sanitize import SanitizeHTML

    try:
        doc = json.loads(payload)
        returned = nbformat.from_dict(doc["notebook"])
        notes = [str(n)[:300] for n in doc.get("notes", [])][:20]
    except Exception as err:
        raise ValueError(f"the sandbox returned no readable notebook ({type(err).__name__})") from err
    cells = returned.get("cells")
    if not isinstance(cells, list) or len(cells) != len(sent.cells):
        raise ValueError("the sandbox returned a notebook with other cells than were sent")
    merged = copy.deepcopy(sent)
    for index, (mine, theirs) in enumerate(zip(merged.cells, cells)):
        if not isinstance(theirs, dict) or theirs.get("cell_type") != mine.cell_type \
                or theirs.get("source") != mine.source:
            raise ValueError(f"cell {index} came back changed")
        if mine.cell_type == "code":
            outputs = theirs.get("outputs", [])
            count = theirs.get("execution_count")
            if not isinstance(outputs, list):
                raise ValueError(f"cell {index}: outputs are not a list")
            mine.outputs = [nbformat.from_dict(o) for o in outputs]
            mine.execution_count = count if isinstance(count, int) and not isinstance(count, bool) else None
    try:
        nbformat.validate(merged)
    except nbformat.ValidationError as err:
        raise ValueError(f"the returned outputs are not valid: {str(err).splitlines()[0][:200]}") from err
    sanitizer = SanitizeHTML()
    for cell in merged.cells:
        if cell.cell_type == "code":
            cell.outputs = sanitizer.sanitize_code_outputs(cell.outputs)
    return hide_hidden_tests(merged, guard_lines), notes


def not_run(sent: NotebookNode, reason: str) -> NotebookNode:
    """``sent`` with every code cell failed for ``reason`` (nothing came back from the sandbox)."""
    nb = copy.deepcopy(sent)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = [NotebookNode(output_type="error", ename="NotGraded", evalue=reason,
                                         traceback=[f"Not graded: {reason}"])]
            cell.execution_count = None
    return hide_hidden_tests(nb)


# -- the course's references ---------------------------------------------------------------------

def course_imports(source_nb: NotebookNode) -> dict[str, tuple[str, str | None]]:
    """Names the lesson binds at top level from ``course_lib`` outside solution cells:
    ``{name: (module, attribute or None)}``."""
    names: dict[str, tuple[str, str | None]] = {}
    for cell in source_nb.cells:
        if cell.cell_type != "code" or _nbgrader(cell).get("solution"):
            continue
        try:
            tree = ast.parse(cell.source)
        except SyntaxError:
            continue
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                    and node.module.split(".")[0] == "course_lib":
                for alias in node.names:
                    if alias.name != "*":
                        names[alias.asname or alias.name] = (node.module, alias.name)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "course_lib":
                        if alias.asname:
                            names[alias.asname] = (alias.name, None)
                        else:
                            names["course_lib"] = ("course_lib", None)
    return names


def _used_names(source: str) -> set[str]:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return set()
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}


def reference_guards(source_nb: NotebookNode, test_nb: NotebookNode, package_dir: Path) -> dict[str, str]:
    """``{grade_id: one line of code}`` for every test cell of ``test_nb`` that uses a name the
    lesson imports from ``course_lib`` (see the module docstring)."""
    imports = course_imports(source_nb)
    guards = {}
    for cell in test_nb.cells:
        if not is_test_cell(cell):
            continue
        refs = {n: imports[n] for n in sorted(_used_names(cell.source) & set(imports))}
        if refs:
            env = f"{{'_ns': globals(), '_refs': {refs!r}, '_root': {str(package_dir) + '/'!r}}}"
            guards[_nbgrader(cell)["grade_id"]] = (
                f"exec(compile({_GUARD_SOURCE!r}, '<course reference check>', 'exec'), {env})")
    return guards


# -- rubrics for the grader ----------------------------------------------------------------------

def rubric_cells(source_nb: NotebookNode) -> dict[str, NotebookNode]:
    """For each hand-graded answer cell of the source (model answer and rubric), a markdown cell
    tagged ``grader-only`` to show under the student's answer in Formgrader."""
    cells = {}
    for cell in source_nb.cells:
        meta = _nbgrader(cell)
        if cell.cell_type == "markdown" and meta.get("grade") and meta.get("solution"):
            text = cell.source.replace("### BEGIN SOLUTION", "").replace("### END SOLUTION", "").strip()
            cells[meta["grade_id"]] = nbformat.v4.new_markdown_cell(
                f"**For the grader of `{meta['grade_id']}` (not shown to students)**\n\n{text}",
                metadata={"tags": [GRADER_ONLY], "deletable": False, "editable": False})
    return cells


def with_rubrics(nb: NotebookNode, rubrics: dict[str, NotebookNode]) -> NotebookNode:
    """``nb`` with each rubric cell inserted right after the answer cell it belongs to."""
    cells = []
    for cell in nb.cells:
        cells.append(cell)
        gid = _nbgrader(cell).get("grade_id")
        if gid in rubrics and _nbgrader(cell).get("solution"):
            cells.append(copy.deepcopy(rubrics[gid]))
    nb.cells = cells
    return nb


# -- nbgrader preprocessors ----------------------------------------------------------------------

class ReplayExecution(NbGraderPreprocessor):
    """In ``nbgrader autograde``, instead of executing: take the outputs that the sandbox produced
    (validated by :func:`merge_executed`, stored in ``results_dir/<student>/<notebook>.ipynb``)."""

    results_dir = Unicode("", help="Folder of the validated executed notebooks").tag(config=True)

    def preprocess(self, nb, resources):
        info = resources["nbgrader"]
        path = Path(self.results_dir) / info["student"] / f"{info['notebook']}.ipynb"
        if not self.results_dir or not path.exists():
            raise RuntimeError(f"no sandboxed execution result at {path}")
        done = nbformat.read(str(path), as_version=4)
        plain = [c for c in done.cells if GRADER_ONLY not in c.metadata.get("tags", [])]
        if len(plain) != len(nb.cells) or any(
                a.cell_type != b.cell_type or a.source != b.source for a, b in zip(plain, nb.cells)):
            raise RuntimeError("the executed notebook does not match the submission")
        for mine, theirs in zip(nb.cells, plain):
            if mine.cell_type == "code":
                mine.outputs = theirs.outputs
                mine.execution_count = theirs.execution_count
        extra = {id(c) for c in done.cells if GRADER_ONLY in c.metadata.get("tags", [])}
        merged, it = [], iter(nb.cells)
        for cell in done.cells:
            merged.append(cell if id(cell) in extra else next(it))
        nb.cells = merged
        return nb, resources


class DropGraderNotes(NbGraderPreprocessor):
    """Remove the cells tagged ``grader-only`` (rubrics) from what students see."""

    def preprocess(self, nb, resources):
        nb.cells = [c for c in nb.cells if GRADER_ONLY not in c.metadata.get("tags", [])]
        return nb, resources


class RefuseUnsandboxed(NbGraderPreprocessor):
    """Takes the place of ``Execute`` for nbgrader's own autograde (Formgrader's button, the
    ``nbgrader autograde`` command): student code runs only in the grading sandbox."""

    def preprocess(self, nb, resources):
        raise RuntimeError("this course autogrades in a sandbox: run `make autograde "
                           "SUBMISSIONS=...` (python -m course_lib.grading autograde) instead")
