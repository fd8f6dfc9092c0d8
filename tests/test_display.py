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


# ---------------------------------------------------------------- alt text reaches the notebook

import base64  # noqa: E402
import html  # noqa: E402
import re  # noqa: E402

import nbformat  # noqa: E402
from IPython.core.interactiveshell import InteractiveShell  # noqa: E402

from course_lib import display as D  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def shell():
    """An IPython shell with matplotlib-inline's PNG printer, as in a Jupyter kernel."""
    from matplotlib_inline.backend_inline import select_figure_formats

    ip = InteractiveShell.instance()
    select_figure_formats(ip, {"png"})
    yield ip
    ip.display_formatter.mimebundle_formatter.pop(plt.Figure, None)
    InteractiveShell.clear_instance()


def _img_alts(page):
    """The alt attribute of every <img> in an HTML page, unescaped."""
    from html.parser import HTMLParser

    class Imgs(HTMLParser):
        alts: list = []

        def handle_starttag(self, tag, attrs):
            if tag == "img":
                self.alts.append(dict(attrs).get("alt"))

    parser = Imgs()
    parser.alts = []
    parser.feed(page)
    return parser.alts


def _alt_of(html_text):
    found = re.search(r'alt="([^"]*)"', html_text)
    return html.unescape(found.group(1)) if found else None


def test_install_adds_an_img_with_alt_and_alt_metadata_to_every_figure(shell):
    assert D.install(shell) is True and D.install(shell) is True  # idempotent
    fig, ax = plt.subplots()
    ax.plot([1, 2])
    set_alt(fig, 'Line "up" & away')
    data, md = shell.display_formatter.format(fig)
    assert base64.b64decode(data["image/png"]).startswith(PNG_MAGIC)
    assert md["image/png"]["alt"] == 'Line "up" & away'
    assert _alt_of(data["text/html"]) == 'Line "up" & away'
    src = re.search(r'src="data:image/png;base64,([^"]+)"', data["text/html"]).group(1)
    assert src == data["image/png"], "the <img> shows the same PNG"
    assert data["text/plain"].startswith("<Figure size")


def test_the_alt_text_survives_matplotlib_inline_registering_its_printers_again(shell):
    from matplotlib_inline.backend_inline import select_figure_formats

    D.install(shell)
    select_figure_formats(shell, {"png"})  # what %matplotlib inline and %config do
    fig, _ = plt.subplots()
    set_alt(fig, "still here")
    data, md = shell.display_formatter.format(fig)
    assert md["image/png"]["alt"] == "still here" and _alt_of(data["text/html"]) == "still here"


def test_a_figure_without_alt_text_is_described_by_its_titles_and_labels(shell):
    D.install(shell)
    fig, (a, b) = plt.subplots(1, 2)
    fig.suptitle("Training")
    a.set_title("Loss")
    a.set_xlabel("epoch")
    a.set_ylabel("loss")
    b.set_ylabel("accuracy")
    data, md = shell.display_formatter.format(fig)
    assert md["image/png"]["alt"] == ("Plot: Training; panel 1: Loss, loss against epoch; "
                                      "panel 2: accuracy")
    bare, _ = plt.subplots()
    assert D.describe(bare) == "A figure with 1 panel"


def test_outside_ipython_install_does_nothing():
    from IPython import get_ipython

    assert get_ipython() is None
    assert D.install() is False


def test_without_a_png_printer_figures_are_left_alone(shell):
    shell.display_formatter.formatters["image/png"].pop(plt.Figure)
    D.install(shell)
    fig, _ = plt.subplots()
    data, md = shell.display_formatter.format(fig)
    assert "text/html" not in data and "image/png" not in md


def test_image_bundle_checks_its_input():
    data, md = D.image_bundle(b"\x89PNG...", "  A  plot ", width=100)
    assert md == {"image/png": {"alt": "A plot", "width": 100}}
    assert 'width="100"' in data["text/html"] and _alt_of(data["text/html"]) == "A plot"
    for png, alt in [(b"x", ""), (b"x", None), (None, "alt"), ("", "alt")]:
        with pytest.raises(ValueError):
            D.image_bundle(png, alt)


# ---------------------------------------------------------------- progress bars

def test_progress_outside_a_notebook_is_plain_tqdm(capsys):
    from tqdm.std import tqdm

    bar = D.progress(range(3), desc="work", unit="step")
    assert type(bar) is tqdm and not isinstance(bar, D.NotebookProgress)
    assert list(bar) == [0, 1, 2]
    assert "work: 100%" in capsys.readouterr().err
    with D.progress(total=4, desc="manual") as bar:
        bar.update(3)
        bar.set_postfix(loss=0.5)
    assert D.summary_line(bar).startswith("manual: 3/4 it [") and "loss=0.5" in D.summary_line(bar)
    assert D.summary_line(bar).endswith("(stopped early)")
    assert list(D.progress([1, 2], disable=True)) == [1, 2]


@pytest.mark.parametrize("kwargs,match", [(dict(unit=""), "unit"), (dict(desc=3), "desc"),
                                          (dict(total=-1), "total"), (dict(total=True), "total")])
def test_progress_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        D.progress(range(2), **kwargs)
    with pytest.raises(ValueError, match="iterable or a total"):
        D.progress()


def test_in_a_kernel_progress_and_figures_leave_text_and_images_with_alt(tmp_path):
    """A real kernel (nbclient): what a notebook stores after the bars close."""
    from nbclient import NotebookClient

    cells = [
        "import matplotlib.pyplot as plt\nfrom course_lib import display as D\nD.install()",
        "for _ in D.progress(range(4), desc='epochs', unit='epoch'):\n    pass",
        "with D.progress(total=3, desc='manual') as bar:\n    bar.update(1)",
        "fig, ax = plt.subplots()\nax.plot([1, 2])\nD.set_alt(fig, 'Two points')\nplt.show()",
        "from course_lib.widgets import gradient_flow_explorer\n"
        "ex = gradient_flow_explorer(depth=3, width=16)\nex",
        "ex.controls['depth'].value = 4",
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    NotebookClient(nb, timeout=120, resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [c.outputs for c in nb.cells]
    assert [o.data for o in outputs[1]] == [{"text/plain": outputs[1][0].data["text/plain"]}]
    assert re.fullmatch(r"epochs: 4/4 epoch \[00:0\d, .*\]", outputs[1][0].data["text/plain"])
    assert re.fullmatch(r"manual: 1/3 it \[.*\] \(stopped early\)",
                        outputs[2][0].data["text/plain"])
    (figure,) = outputs[3]
    assert figure.metadata["image/png"]["alt"] == "Two points"
    assert _alt_of(figure.data["text/html"]) == "Two points"
    widget, plot = outputs[4]
    assert "application/vnd.jupyter.widget-view+json" in widget.data
    assert "image/png" not in widget.data, "the plot is its own output, not a widget fallback"
    assert "depth 4" in plot.metadata["image/png"]["alt"], "the plot output follows the controls"
    assert _alt_of(plot.data["text/html"]) == plot.metadata["image/png"]["alt"]
    views = [o for outs in outputs for o in outs
             if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert len(views) == 1, "only the explorer's controls remain a widget"
    # nbconvert's HTML (its default 'lab' template ignores the metadata) shows the <img alt>.
    from nbconvert import HTMLExporter

    page, _ = HTMLExporter().from_notebook_node(nb)
    alts = _img_alts(page)
    assert "Two points" in alts and plot.metadata["image/png"]["alt"] in alts, alts


def test_importing_course_lib_in_a_kernel_installs_the_alt_text_printer(shell):
    """A lesson that never imports course_lib.plots still stores alt text with its figures."""
    import course_lib

    shell.display_formatter.mimebundle_formatter.pop(plt.Figure, None)
    course_lib._install_display()  # what `import course_lib` does when a kernel is running
    fig, ax = plt.subplots()
    ax.set_title("Loss")
    data, md = shell.display_formatter.format(fig)
    assert md["image/png"]["alt"].startswith("Plot: Loss")


def test_outside_a_kernel_importing_course_lib_imports_no_display_code():
    import subprocess
    import sys

    code = "import sys, course_lib; print('course_lib.display' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", "import course_lib must stay cheap outside a kernel"
