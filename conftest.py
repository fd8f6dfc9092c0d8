"""Test-session set-up shared by the unit tests and nbval: keep Jupyter, IPython, matplotlib and
the data cache out of $HOME, in one throwaway folder per test session."""

import os
import tempfile

_SCRATCH = tempfile.mkdtemp(prefix="course-tests-")
for _var, _sub in [("JUPYTER_CONFIG_DIR", "jupyter-config"), ("JUPYTER_DATA_DIR", "jupyter-data"),
                   ("JUPYTER_RUNTIME_DIR", "jupyter-runtime"), ("IPYTHONDIR", "ipython"),
                   ("MPLCONFIGDIR", "matplotlib"), ("XDG_CACHE_HOME", "cache"),
                   ("XDG_CONFIG_HOME", "config"), ("COURSE_DATA_DIR", "data")]:
    os.environ.setdefault(_var, os.path.join(_SCRATCH, _sub))
os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
