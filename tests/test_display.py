"""course_lib.display: alt text travels with a figure."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pytest

from course_lib.display import get_alt, set_alt


def test_alt_text_is_attached_and_normalised():
    fig, _ = plt.subplots()
    assert get_alt(fig) is None
    assert set_alt(fig, "  Gradient norm per layer,\n log scale ") is fig
    assert get_alt(fig) == "Gradient norm per layer, log scale"
    plt.close(fig)


@pytest.mark.parametrize("bad", ["", "   ", None, 3])
def test_alt_text_must_say_something(bad):
    fig, _ = plt.subplots()
    with pytest.raises(ValueError, match="alt text"):
        set_alt(fig, bad)
    plt.close(fig)


def test_alt_text_needs_a_figure():
    with pytest.raises(ValueError, match="Figure"):
        set_alt("not a figure", "text")
