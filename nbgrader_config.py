"""nbgrader's settings for this course, read where Jupyter or ``nbgrader`` starts at the repository
root: Formgrader (JupyterLab's Nbgrader menu, e.g. after ``make lab``) then finds ``course/``.

The same settings as ``course_lib.grading.nbgrader_config`` (``tests/test_grading.py`` checks that
they agree), with one difference: nbgrader's own autograde (Formgrader's "autograde" button, the
``nbgrader autograde`` command) refuses to run, because student code must run in the grading
sandbox; autograde with ``make autograde SUBMISSIONS=...``. Feedback made from Formgrader hides
hidden tests and the grader-only rubric cells, as ``make feedback`` does.
"""

import os

c = get_config()  # noqa: F821 (provided by traitlets when it loads this file)

c.CourseDirectory.root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "course")
c.CourseDirectory.course_id = "vanishing-gradients"
if os.environ.get("COURSE_GRADEBOOK_URL"):  # one gradebook shared by several graders (README)
    c.CourseDirectory.db_url = os.environ["COURSE_GRADEBOOK_URL"]
c.ClearSolutions.code_stub = {  # the same stub as course_lib.grading.CODE_STUB
    "python": '# YOUR CODE HERE\nraise NotImplementedError("not done yet: replace this line with your '
              'solution, then run the test cell below")'}
c.Autograde.autograde_preprocessors = [
    "course_lib.grading_results.RefuseUnsandboxed",
    "nbgrader.preprocessors.IgnorePattern",
    "nbconvert.preprocessors.ClearMetadataPreprocessor",
    "nbgrader.preprocessors.LimitOutput",
    "nbgrader.preprocessors.SaveAutoGrades",
    "nbgrader.preprocessors.AssignLatePenalties",
    "nbgrader.preprocessors.CheckCellMetadata",
]
c.GenerateFeedback.preprocessors = [
    "course_lib.grading_results.DropGraderNotes",
    "nbgrader.preprocessors.GetGrades",
    "nbgrader.preprocessors.ClearHiddenTests",
    "nbconvert.preprocessors.CSSHTMLHeaderPreprocessor",
]
