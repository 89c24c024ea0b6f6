"""The JupyterLab config in .jupyter/ (no browser needed): saving a lab that has been run writes back exactly
the committed .ipynb and .py. tests/browser/test_labs_in_browser.py checks the same through a real save."""

import copy
import difflib
import json
import pathlib

import pytest

nbformat = pytest.importorskip("nbformat")
jupytext = pytest.importorskip("jupytext")
from jupytext.combine import combine_inputs_with_outputs  # noqa: E402
from jupytext.config import JupytextConfiguration  # noqa: E402
from traitlets.config.loader import PyFileConfigLoader  # noqa: E402

from browser_env import selected_labs  # noqa: E402

from .conftest import NOTEBOOKS, REPO  # noqa: E402

LABS = [NOTEBOOKS / f"{lab}.py" for lab in selected_labs()]  # ECHO_TUTOR_BROWSER_LABS applies here too


@pytest.fixture(scope="module")
def server_config():
    loader = PyFileConfigLoader("jupyter_server_config.py", path=str(REPO / ".jupyter"))
    return loader.load_config()


def _as_run_in_jupyterlab(nb: dict) -> dict:
    """What JupyterLab sends to the server after Run All: outputs, counts, widget state, language_info."""
    nb = copy.deepcopy(nb)
    nb["metadata"]["language_info"] = {"name": "python", "version": "3.11.7", "file_extension": ".py"}
    nb["metadata"]["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}, "version_major": 2}}
    for n, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code":
            cell["execution_count"] = n
            cell["outputs"] = [{"output_type": "stream", "name": "stdout", "text": "out\n"},
                               {"output_type": "display_data", "metadata": {},
                                "data": {"application/vnd.jupyter.widget-view+json": {"model_id": "x", "version_major": 2, "version_minor": 0}}}]
            cell["metadata"]["execution"] = {"iopub.status.busy": "2026-01-01T00:00:00Z"}
    return nb


@pytest.mark.parametrize("src", LABS, ids=lambda p: p.stem)
def test_saving_a_run_lab_writes_the_committed_files(src, server_config):
    hook = server_config.ContentsManager.pre_save_hook
    nb_filter = server_config.JupytextConfiguration.notebook_metadata_filter
    twin = src.with_suffix(".ipynb")
    # as jupytext's contents manager opens the pair with this config: inputs from the .py, cell ids (and
    # outputs) from the .ipynb, and the filter recorded in the notebook's metadata
    config = JupytextConfiguration(notebook_metadata_filter=nb_filter)
    inputs = jupytext.read(src, config=config)
    outputs = nbformat.read(twin, as_version=4)
    opened = json.loads(json.dumps(combine_inputs_with_outputs(inputs, outputs, fmt="py:percent")))
    opened["metadata"]["jupytext"].pop("text_representation", None)  # jupytext drops it for the .ipynb
    model_nb = _as_run_in_jupyterlab(opened)
    assert model_nb["metadata"]["jupytext"].get("notebook_metadata_filter") == nb_filter

    model = {"type": "notebook", "content": model_nb}
    hook(model=model, path=twin.name, contents_manager=None)
    saved = nbformat.writes(nbformat.from_dict(model["content"]), version=nbformat.NO_CONVERT) + "\n"
    if saved != twin.read_text():
        pytest.fail(f"{twin.name}: saving it after a run would change it (is it in sync with {src.name}? `make notebooks`):\n"
                    + "".join(list(difflib.unified_diff(twin.read_text().splitlines(True), saved.splitlines(True), "committed", "saved"))[:40]))
    assert model_nb["cells"] and any(c.get("outputs") for c in model_nb["cells"] if c["cell_type"] == "code"), \
        "the hook must not strip the cells jupytext writes the .py from"

    text = jupytext.writes(nbformat.from_dict(model_nb), fmt="py:percent", config=config)
    assert text == src.read_text(), f"{src.name}: jupytext would rewrite the header:\n" + "\n".join(text.splitlines()[:14])


def test_own_notebooks_keep_their_outputs(server_config):
    hook = server_config.ContentsManager.pre_save_hook
    nb = _as_run_in_jupyterlab({"cells": [{"cell_type": "code", "source": "1", "metadata": {}, "outputs": [], "execution_count": None}],
                                "metadata": {"kernelspec": {"name": "python3"}}, "nbformat": 4, "nbformat_minor": 5})
    model = {"type": "notebook", "content": nb}
    hook(model=model, path="Untitled.ipynb", contents_manager=None)
    assert model["content"]["cells"][0]["outputs"], "a notebook that is not a paired lab saves as usual"
