"""The paper's experiments at this project's scale, as named recipes run on resumable grids.

One module per experiment, each made of a frozen recipe dataclass with its named ``RECIPES``, ``cells(recipe)``
(the grid's typed cells), the cell function, ``summarize`` (records -> the summary files) and ``run(recipe,
out_dir, grid=..., **overrides)``, e.g. ``cliff.run("cliff/lab", "runs/cliff")``:

* ``cliff``     the memory cliff: accuracy per (model, KV pairs, gap)          ``RECIPES["cliff/lab"]``, ...
* ``transfer``  six retrieval tasks and NIAH length generalisation             ``RECIPES["transfer/lab"]``, ...
* ``ablation``  SKA's power order K, spectral norm and prefix mask over seeds  ``RECIPES["ablation/lab"]``, ...
* ``ssm_cliff`` a trained pure Mamba-2's cliff, predicted from its decay    ``RECIPES["ssm_cliff/lab"]``, ...
* ``echokv``    EchoKV-lite on SmolLM2 against its baselines                   ``RECIPES["echokv/full"]``, ...
* ``convert``   SmolLM2's attention converted into fixed-state mixers          ``RECIPES["convert/full"]``, ...
* ``passkey``   which part of a converted SmolLM2 carries a pass key           ``RECIPES["passkey/lab"]``, ...

(``echokv``, ``convert`` and ``passkey`` need the ``echokv`` extra to run; ``registry`` imports them all.)

Beside them: ``figures`` (plotly figures, one colour per preset), ``stats`` (paired differences, the labs'
interval rule and verdict), ``paper`` (the paper's numbers by preset name), ``diagnostics`` (looking inside trained models),
``common`` (the lab task at a grid point, recipe lookup), ``registry`` (all recipes). Every ``run`` its cells through
:func:`echo_tutor.grid.run_grid` (``grid=GridOptions(...)``: locally or on Ray), appends each record to
``<out_dir>/records.jsonl`` as it finishes, and builds its summary files from the records; a rerun into the
same ``out_dir`` only runs the cells not recorded yet. See ``docs/architecture.md``.
"""

from . import ablation, cliff, ssm_cliff, transfer
from .ablation import (
    ABLATION_CONFIGS,
    LAB_ABLATION_CONFIGS,
    AblationConfig,
    AblationRecipe,
    ablation_tasks,
)
from .cliff import CLIFF_GAPS, CLIFF_PAIRS, CLIFF_PRESETS, CliffRecipe, as_decoded
from .common import TRAINED_GAP_MAX, VOCAB, lab_task, lab_task_args
from .diagnostics import (
    ablate_mixer,
    model_state_bytes,
    recall_breakdown,
    hold_decay,
    retention_after,
    ssm_decay,
    tool_trace_by_writes,
)
from .figures import PRESET_COLORS, cliff_figure, state_figure
from .paper import PAPER, paper_acc
from .registry import EXPERIMENTS, RECIPES
from .stats import bootstrap_ci, mean_ci, paired, paired_ci, proportion_ci, t_ci, verdict
from .transfer import (
    NIAH_LENGTHS,
    TRANSFER_PRESETS,
    TRANSFER_TASKS,
    TransferRecipe,
    transfer_task,
    transfer_task_args,
)

__all__ = [
    "cliff", "transfer", "ablation", "ssm_cliff", "EXPERIMENTS", "RECIPES", "CliffRecipe", "TransferRecipe", "AblationRecipe",
    "AblationConfig", "transfer_task", "transfer_task_args", "ablation_tasks",
    "CLIFF_PRESETS", "CLIFF_PAIRS", "CLIFF_GAPS", "TRANSFER_TASKS", "TRANSFER_PRESETS", "NIAH_LENGTHS",
    "ABLATION_CONFIGS", "LAB_ABLATION_CONFIGS", "TRAINED_GAP_MAX", "VOCAB", "lab_task", "lab_task_args",
    "PRESET_COLORS", "cliff_figure", "state_figure", "PAPER", "paper_acc", "paired", "paired_ci", "bootstrap_ci",
    "mean_ci", "t_ci", "proportion_ci", "verdict",
    "ablate_mixer", "model_state_bytes", "recall_breakdown", "ssm_decay", "retention_after", "hold_decay", "tool_trace_by_writes",
]
