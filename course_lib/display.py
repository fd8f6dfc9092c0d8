"""How the course's outputs are shown in a notebook: alt text for figures, progress bars that
leave a line of text behind.

Alt text
    A figure's alt text says in words what it shows. :func:`set_alt` attaches it to a matplotlib
    ``Figure`` and :func:`get_alt` reads it back; every plot function in :mod:`course_lib.plots`
    sets one, and a lesson's own figure sets its own with ``set_alt(fig, "...")``.
    :func:`install` makes it reach the notebook: every figure the kernel displays (``plt.show()``,
    a figure as a cell's last expression, ``display(fig)``) then carries its alt text twice:

    - as ``{"image/png": {"alt": ...}}`` in the output's metadata, the place the Jupyter
      community settled on (nbconvert's classic template reads it; the course's audit checks it);
    - as a ``text/html`` ``<img alt="...">`` of the same PNG. JupyterLab 4.6's image renderer,
      nbconvert 7.17's default (lab) HTML template and MyST-NB ignore the metadata, but all three
      prefer ``text/html`` over ``image/png`` and keep the attribute, so a screen reader finds it.

    A figure without :func:`set_alt` gets a description made from its titles and axis labels.

Progress bars
    :func:`progress` is a tqdm bar. In a notebook it is tqdm's widget while it runs and, once it
    closes, its output is replaced by one line of text (``training: 20/20 epoch [00:03, ...]``),
    so a saved notebook holds no widget that needs a live kernel (JupyterLab would show "Error
    displaying widget: model not found" after a reload) and no stale ``0%|`` line. Outside a
    notebook it is plain tqdm.
"""

from __future__ import annotations

import base64
import html
import importlib.util
from collections.abc import Iterable, Mapping
from typing import Any

import ipywidgets
from matplotlib.figure import Figure
from tqdm.notebook import tqdm as _notebook_tqdm
from traitlets import Unicode
from tqdm.std import tqdm as _std_tqdm

_ATTR = "_course_alt_text"
_PNG = "image/png"
_HTML = "text/html"


# --------------------------------------------------------------------------------------------
# alt text
# --------------------------------------------------------------------------------------------

def set_alt(fig: Figure, text: str) -> Figure:
    """Attach alt text (what the figure shows, in one or two sentences) to ``fig``; return it."""
    if not isinstance(fig, Figure):
        raise ValueError(f"fig must be a matplotlib Figure, got {type(fig).__name__}")
    if not isinstance(text, str) or not text.strip():
        raise ValueError("alt text must be a non-empty string saying what the figure shows")
    setattr(fig, _ATTR, " ".join(text.split()))
    return fig


def get_alt(fig: Figure) -> str | None:
    """The alt text attached to ``fig`` with :func:`set_alt`, or None."""
    return getattr(fig, _ATTR, None)


def describe(fig: Figure) -> str:
    """A description of ``fig`` made from its titles and axis labels (the fallback alt text)."""
    if not isinstance(fig, Figure):
        raise ValueError(f"fig must be a matplotlib Figure, got {type(fig).__name__}")
    parts = []
    suptitle = fig._suptitle.get_text().strip() if getattr(fig, "_suptitle", None) else ""
    if suptitle:
        parts.append(suptitle)
    axes = [ax for ax in fig.get_axes() if ax.get_visible() and ax.get_label() != "<colorbar>"]
    for i, ax in enumerate(axes, 1):
        title = " ".join(t.get_text() for t in (ax.title, ax._left_title, ax._right_title)
                         if t.get_text()).strip()
        x, y = ax.get_xlabel().strip(), ax.get_ylabel().strip()
        axes_text = f"{y} against {x}" if x and y else (y or x)
        panel = ", ".join(p for p in (title, axes_text) if p)
        if panel:
            parts.append(f"panel {i}: {panel}" if len(axes) > 1 else panel)
    text = "; ".join(parts)
    n = len(axes)
    return f"Plot: {text}" if text else f"A figure with {n} panel{'s' if n != 1 else ''}"


def alt_text(fig: Figure) -> str:
    """``fig``'s alt text: the one set with :func:`set_alt`, else :func:`describe`'s."""
    return get_alt(fig) or describe(fig)


def image_bundle(png: bytes | str, alt: str, *, width: int | None = None,
                 height: int | None = None) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
    """A notebook mime bundle ``(data, metadata)`` for a PNG with alt text.

    ``png`` is the image's bytes or their base64 text. The bundle holds ``image/png`` (metadata
    ``alt``, and ``width``/``height`` when given) and a ``text/html`` ``<img>`` of the same
    picture with the ``alt`` attribute, which JupyterLab, nbconvert and the course website show.
    """
    if not isinstance(alt, str) or not alt.strip():
        raise ValueError("alt text must be a non-empty string saying what the image shows")
    if isinstance(png, (bytes, bytearray, memoryview)):
        b64 = base64.b64encode(bytes(png)).decode("ascii")
    elif isinstance(png, str) and png:
        b64 = png.replace("\n", "")
    else:
        raise ValueError(f"png must be PNG bytes or their base64 text, got {type(png).__name__}")
    alt = " ".join(alt.split())
    size = {k: int(v) for k, v in (("width", width), ("height", height)) if v is not None}
    attrs = "".join(f' {k}="{v}"' for k, v in size.items())
    tag = (f'<img src="data:image/png;base64,{b64}" alt="{html.escape(alt, quote=True)}"'
           f'{attrs} style="max-width: 100%; height: auto"/>')
    return {_PNG: b64, _HTML: tag}, {_PNG: {"alt": alt, **size}}


class AltImage(ipywidgets.Image):
    """An ``ipywidgets.Image`` whose ``tooltip`` becomes the picture's ``title``, and so its
    accessible name (what a screen reader announces for an ``<img>`` without ``alt``).

    ipywidgets 8.1.9's image view has no ``alt``, and its tooltip code reads the widget's
    ``description``, which ``Image`` lacks: setting a tooltip on a plain ``Image`` breaks the view
    in JupyterLab ("Click to show javascript error"). This subclass syncs an empty description,
    so the tooltip lands on the ``<img>`` as its title.
    """

    description = Unicode("").tag(sync=True)


def _figure_mimebundle(fig: Figure) -> tuple[dict, dict] | None:
    """The mime-bundle printer :func:`install` registers for matplotlib figures.

    It adds a ``text/html`` ``<img alt>`` and the ``alt`` metadata of ``image/png``; the PNG
    itself still comes from the ``image/png`` printer the inline backend registered (so
    ``%config InlineBackend`` settings apply). With no such printer (a terminal, an SVG-only
    configuration) it adds nothing.
    """
    from IPython import get_ipython

    shell = get_ipython()
    if shell is None:
        return None
    try:
        printer = shell.display_formatter.formatters[_PNG].lookup(fig)
    except KeyError:
        return None
    rendered = printer(fig)
    png, md = rendered if isinstance(rendered, tuple) else (rendered, {})
    if not png:
        return None
    md = md or {}
    data, meta = image_bundle(png, alt_text(fig), width=md.get("width"), height=md.get("height"))
    return {_HTML: data[_HTML]}, meta


def install(shell: Any = None) -> bool:
    """Make every matplotlib figure the IPython ``shell`` displays carry its alt text.

    Registers a mime-bundle printer for ``Figure`` on the shell's display formatter (the current
    shell when ``shell`` is None). Registering again replaces it, so calling this any number of
    times is safe; it survives matplotlib-inline re-registering its own ``image/png`` printer
    (``%matplotlib inline``, ``%config InlineBackend...``), which only touches per-mime-type
    printers. Returns False, doing nothing, outside IPython.
    """
    if shell is None:
        from IPython import get_ipython

        shell = get_ipython()
    if shell is None:
        return False
    formatter = getattr(getattr(shell, "display_formatter", None), "mimebundle_formatter", None)
    if formatter is None:
        raise ValueError(f"{type(shell).__name__} has no IPython display formatter")
    formatter.for_type(Figure, _figure_mimebundle)
    return True


# --------------------------------------------------------------------------------------------
# progress bars
# --------------------------------------------------------------------------------------------

def in_notebook() -> bool:
    """True inside a Jupyter kernel with ipywidgets installed (tqdm.autonotebook's test)."""
    from IPython import get_ipython

    shell = get_ipython()
    return (shell is not None and "IPKernelApp" in getattr(shell, "config", {})
            and importlib.util.find_spec("ipywidgets") is not None)


def summary_line(bar: _std_tqdm) -> str:
    """One line saying what a tqdm bar did: ``desc: n/total unit [elapsed, rate, postfix]``."""
    d = dict(bar.format_dict)
    stopped = d.get("total") and d["n"] < d["total"]
    count = "{n_fmt}/{total_fmt}" if d.get("total") else "{n_fmt}"
    fmt = ("{desc}: " if d.get("prefix") else "") + count + " {unit} [{elapsed}, {rate_fmt}{postfix}]"
    d["bar_format"] = fmt
    line = _std_tqdm.format_meter(**d)
    return line + " (stopped early)" if stopped else line


class NotebookProgress(_notebook_tqdm):
    """tqdm's notebook bar, shown through a display handle; closing it replaces the widget with
    :func:`summary_line`'s text and closes the widget models, so nothing of it needs a kernel."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        from IPython.display import display

        self._handle = None
        super().__init__(*args, display=False, **kwargs)
        if not self.disable:
            self._handle = display(self.container, display_id=True)
            self.displayed = True

    def close(self) -> None:
        handle, self._handle = getattr(self, "_handle", None), None
        super().close()
        if handle is None:
            return
        handle.update({"text/plain": summary_line(self)}, raw=True)
        for widget in (*self.container.children, self.container):
            for part in (getattr(widget, "style", None), getattr(widget, "layout", None), widget):
                if part is not None:
                    part.close()


def progress(iterable: Iterable | None = None, *, desc: str | None = None, unit: str = "it",
             disable: bool = False, total: float | None = None) -> _std_tqdm:
    """A tqdm progress bar over ``iterable`` that leaves one line of text in a saved notebook.

    Use it as tqdm: iterate over it, ``update(n)``, ``set_postfix(loss=...)``, ``close()``, or
    ``with progress(total=n) as bar:``. In a notebook it is tqdm's live widget until it closes
    (the loop ends, ``close()``, the ``with`` block exits), then its output becomes a single
    line such as ``training: 20/20 epoch [00:03, 6.2 epoch/s, loss=0.12]``. Elsewhere it is
    ``tqdm.tqdm``.

    Raises:
        ValueError: ``unit`` is not a non-empty string, ``desc`` is not a string or None,
            ``total`` is negative, or ``iterable`` and ``total`` are both None.
    """
    if not isinstance(unit, str) or not unit:
        raise ValueError(f"unit must be a non-empty string such as 'it' or 'epoch', got {unit!r}")
    if desc is not None and not isinstance(desc, str):
        raise ValueError(f"desc must be a string or None, got {desc!r}")
    if total is not None and (isinstance(total, bool) or not isinstance(total, (int, float))
                              or total < 0):
        raise ValueError(f"total must be a non-negative number or None, got {total!r}")
    if iterable is None and total is None:
        raise ValueError("give an iterable or a total (for manual update())")
    kwargs: Mapping[str, Any] = dict(desc=desc, unit=unit, disable=bool(disable), total=total)
    if in_notebook() and not disable:
        return NotebookProgress(iterable, **kwargs)
    return _std_tqdm(iterable, **kwargs)
