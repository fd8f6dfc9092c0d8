"""course_lib: the plumbing behind *Vanishing Gradients, Hands-On*.

The notebooks import this package so that they can stay about ideas:

- :mod:`course_lib.data`: MNIST (with an offline fallback), the 8x8 digits, the adding problem.
- :mod:`course_lib.models`: MLP builder with a choice of activation, initialization, normalization
  and residual connections.
- :mod:`course_lib.instrument`: per-layer gradient and activation statistics through hooks.
- :mod:`course_lib.train`: a small training loop with recording, clipping and a NaN guard.
- :mod:`course_lib.plots`: gradient-flow plots, heat maps, histograms, training curves.
- :func:`course_lib.diagnose`: one forward/backward pass, a report of what is wrong and what to do.

Only :func:`seed_everything` and :func:`get_device` live at the top level; the submodules are
imported lazily so that ``import course_lib`` stays cheap.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

from course_lib.core import get_device, seed_everything

__all__ = ["seed_everything", "get_device", "diagnose", "data", "models", "instrument", "train",
           "plots"]
__version__ = "0.1.0"

_SUBMODULES = {"data", "models", "instrument", "train", "plots", "widgets", "diagnosis",
               "convnets", "recurrent", "rl"}


def diagnose(model: Any, x: Any, y: Any = None, loss_fn: Any = None) -> Any:
    """Diagnose gradient problems of any ``nn.Module`` on one batch: see
    :func:`course_lib.diagnosis.diagnose`."""
    from course_lib.diagnosis import diagnose as _diagnose

    return _diagnose(model, x, y, loss_fn=loss_fn)


def _install_display() -> None:
    """Inside an IPython kernel, make every figure shown carry its alt text
    (:func:`course_lib.display.install`), however a lesson draws it; elsewhere do nothing and
    import nothing more."""
    ipython = sys.modules.get("IPython")
    if ipython is not None and ipython.get_ipython() is not None:
        from course_lib.display import install

        install()


_install_display()


def __getattr__(name: str) -> Any:
    """Import submodules on first use (``course_lib.plots`` pulls in matplotlib)."""
    if name in _SUBMODULES:
        return importlib.import_module(f"course_lib.{name}")
    raise AttributeError(f"module 'course_lib' has no attribute {name!r}")
