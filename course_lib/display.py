"""How the course's outputs are shown in a notebook: alt text for figures.

A figure's alt text says in words what it shows; :func:`set_alt` attaches it to a matplotlib
``Figure`` and :func:`get_alt` reads it back. Every plot function in :mod:`course_lib.plots` sets
one; a lesson's own figure sets its own with ``set_alt(fig, "...")``.
"""

from __future__ import annotations

from matplotlib.figure import Figure

_ATTR = "_course_alt_text"


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
