"""A lesson runs through papermill with overridden parameters, and the override takes effect."""

from pathlib import Path

import nbformat
import papermill

ROOT = Path(__file__).parent.parent


def test_papermill_overrides_lesson_parameters(tmp_path):
    out = tmp_path / "00_run.ipynb"
    papermill.execute_notebook(str(ROOT / "notebooks" / "00_welcome.ipynb"), str(out),
                               parameters={"SEED": 7, "CHECK_MNIST": False}, kernel_name="python3",
                               cwd=str(ROOT / "notebooks"), progress_bar=False)
    nb = nbformat.read(str(out), as_version=4)
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and "SEED = 7" in injected[0].source
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "loaded:" not in outputs, "CHECK_MNIST=False must skip loading MNIST"
    assert "device      cpu" in outputs or "device      cuda" in outputs
