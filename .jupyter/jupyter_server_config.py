"""Jupyter Server configuration for the labs: opening, running and saving a lab leaves git clean.

Loaded by every Jupyter server whose config path includes this folder: `make lab` and tests/browser put it
on ``JUPYTER_CONFIG_PATH`` (binder/start does the same on Binder). It adds nothing to ~/.jupyter.

* Saving a lab (Ctrl+S, or JupyterLab's autosave) writes it output-free: no outputs, execution counts,
  widget state or kernel ``language_info``, so the paired ``.ipynb`` stays as committed and reopening a lab
  does not bring back dead widget views. This applies to jupytext-paired notebooks (every lab, and copies
  of one); other notebooks save as usual. Set ``ECHO_TUTOR_KEEP_OUTPUTS=1`` before starting JupyterLab to
  save the labs' outputs too.
* Jupytext writes the paired ``.py`` without a ``jupytext_version`` line, matching the committed headers.
  (This is not a repo-root jupytext.toml: the jupytext CLI records a configured filter in every notebook it
  writes, so ``make notebooks`` would add it to each ``.ipynb``.)
"""

import copy
import os
import warnings

c = get_config()  # noqa: F821 (defined by traitlets when it loads this file)

# The header filter jupytext applies when it writes a lab's .py. Jupytext records the filter it used in the
# notebook's own metadata, so the filter also drops that record from the .py.
JUPYTEXT_FILTER = "-jupytext.text_representation.jupytext_version,-jupytext.notebook_metadata_filter"
c.JupytextConfiguration.notebook_metadata_filter = JUPYTEXT_FILTER

# Cell metadata JupyterLab adds while a notebook is used (not authored content such as tags).
_VOLATILE_CELL_METADATA = ("execution", "collapsed", "scrolled", "ExecuteTime", "trusted")


def strip_outputs(model, path="", contents_manager=None, **kwargs):
    """Pre-save hook: save paired notebooks without outputs, execution counts, widget state or language_info."""
    if model.get("type") != "notebook" or not model.get("content"):
        return
    if not (model["content"].get("metadata", {}).get("jupytext") or {}).get("formats"):
        return  # not a paired lab: a notebook of the student's own keeps its outputs
    if os.environ.get("ECHO_TUTOR_KEEP_OUTPUTS", "").strip().lower() in ("1", "true", "yes", "on"):
        return
    nb = copy.deepcopy(model["content"])  # jupytext writes the paired .py from the same cells: leave them be
    meta = nb.setdefault("metadata", {})
    meta.pop("widgets", None)
    meta.pop("language_info", None)
    jt = meta.get("jupytext")
    if isinstance(jt, dict):
        if jt.get("notebook_metadata_filter") == JUPYTEXT_FILTER:
            jt.pop("notebook_metadata_filter")  # recorded by jupytext from the config above, not by the author
        jt.pop("text_representation", None)
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
        cell_meta = cell.get("metadata", {})
        for key in _VOLATILE_CELL_METADATA:
            cell_meta.pop(key, None)
    model["content"] = nb


c.ContentsManager.pre_save_hook = strip_outputs
# jupytext's contents manager is configured a second time with the same hook: that is not an override
warnings.filterwarnings("ignore", message=r"Overriding existing pre_save_hook \(strip_outputs\) with a new one \(strip_outputs\)")
