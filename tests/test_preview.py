"""`make preview`: a lab executed (FAST, solutions on) and rendered to static HTML with its figures, the figures of
widgets as they were when the run ended, and controls as their values."""

import json
import pathlib

import pytest

pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbconvert")

from echo_tutor.errors import BadArgumentError  # noqa: E402
from echo_tutor.labs import preview  # noqa: E402

CELLS = [
    "import plotly.graph_objects as go, ipywidgets as widgets\nfrom IPython.display import display\n"
    "go.Figure(go.Scatter(y=[1, 3, 2], name='shown')).show()",
    "fw = go.FigureWidget(go.Bar(y=[2, 1]))\ns = widgets.IntSlider(value=3, description='gap')\n"
    "display(widgets.VBox([s, fw]))",
    "fw.data[0].y = [7, 8]  # a control's callback redraws the figure after it was displayed\ns.value = 5",
    "print('done')",
]


def _write(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in CELLS])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "99_demo.ipynb"
    nbformat.write(nb, path)
    return path


@pytest.mark.slow
def test_a_lab_renders_with_its_figures_as_left(tmp_path):
    row = preview.render_lab(_write(tmp_path), tmp_path / "out", timeout=120, markdown=True)
    page = (tmp_path / "out" / "99_demo.html").read_text()
    assert row["figures"] == 2 and page.count("Plotly.newPlot") == 2
    assert '<script src="plotly.min.js"></script>' in page
    assert "widget-view+json" not in page and "ECHO_TUTOR_PREVIEW" not in page
    data = [json.loads(m) for m in __import__("re").findall(r'"y":(\[[^\]]*\])', page)]
    assert [1, 3, 2] in data and [7, 8] in data, "the FigureWidget is drawn as it was at the end of the run"
    assert "gap: <b>5</b>" in page, "a control shows its last value"
    assert "done" in page
    text = (tmp_path / "out" / "99_demo.md").read_text()
    assert "done" in text and "[figure or control" in text and "Plotly.newPlot" not in text


def test_bad_lab_names_are_refused(tmp_path):
    with pytest.raises(BadArgumentError, match="no lab numbered"):
        preview.render_labs(["42"], tmp_path)
    with pytest.raises(BadArgumentError, match="src must be a lab's .ipynb"):
        preview.render_lab(pathlib.Path(tmp_path / "nope.ipynb"), tmp_path)


@pytest.mark.slow
def test_a_real_lab_renders(tmp_path):
    rows = preview.render_labs(["04"], tmp_path)
    assert rows[0]["figures"] >= 3
    assert (tmp_path / "index.html").exists() and (tmp_path / "plotly.min.js").stat().st_size > 1_000_000
    import re

    page = (tmp_path / "04_koopman_spectra.html").read_text()
    assert not re.search(r'href="[^"#:]*\.md[#"]', page), "no link left to a Markdown file of the repository"
    for href in re.findall(r'href="(docs/[^"#]*)', page):
        assert (tmp_path / href).exists(), href


def test_links_to_the_repository_become_pages_of_the_preview(tmp_path):
    """A published preview must not answer the labs' ledger links with a 404 (second review, B3)."""
    from echo_tutor.labs.publish import github_anchor, publish_links

    root, out = tmp_path / "repo", tmp_path / "repo" / "preview"
    (root / "docs").mkdir(parents=True)
    (root / "notebooks").mkdir()
    (root / "docs" / "claims.md").write_text('# Ledger\n\n| id | claim |\n|---|---|\n| <a id="E2"></a>E2 | a cliff |\n\n'
                                            "See the [guide](course.md#a-four-week-module).\n")
    (root / "docs" / "course.md").write_text("## A four-week module\n\nWeeks; the [key](instructor/answers.md).\n")
    (root / "docs" / "instructor").mkdir()
    (root / "docs" / "instructor" / "answers.md").write_text("# Answers\n")
    (root / "notebooks" / "02_lab.py").write_text("x = 1\n")
    (root / "pkg").mkdir()
    (root / "pkg" / "lab02.py").write_text("x = 1\n")
    out.mkdir()
    page = out / "02_lab.html"
    page.write_text('<a href="../docs/claims.md#E2">E2</a> <a href="../pkg/lab02.py">source</a> <a href="#top">top</a> '
                    '<a href="02_lab.py">this lab</a>')
    done = publish_links(out, [(page, root / "notebooks")], root)
    assert done == ["docs/claims.md", "docs/course.md"]
    text = page.read_text()
    assert '<a href="docs/claims.html#E2">E2</a>' in text and 'href="#top"' in text
    assert '<span title="in the repository: pkg/lab02.py">source</span>' in text  # code: named, not linked
    assert '<a href="02_lab.html">this lab</a>' in text  # a lab's source: its preview page
    ledger = (out / "docs" / "claims.html").read_text()
    assert '<a id="E2"></a>' in ledger and 'href="course.html#a-four-week-module"' in ledger
    guide = (out / "docs" / "course.html").read_text()
    assert 'id="a-four-week-module"' in guide
    assert not (out / "docs" / "instructor").exists() and "for instructors, in the repository" in guide
    assert github_anchor("Lab 02: Build SKA yourself") == "lab-02-build-ska-yourself"
