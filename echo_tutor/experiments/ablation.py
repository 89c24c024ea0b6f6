"""The power-filter ablation: SKA configurations (power order K, spectral norm, prefix mask) trained on the
same tasks with the same budget and seeds.

Recipes (``RECIPES``; the CLI's ``--fast`` / ``--scale`` pick one through ``PICK``):

* ``ablation/small`` (``--fast``, the shipped ``results_ablation.json``): the paper's 4-block echo layout
  shrunk to d=64 (4 heads, r=16), on short tasks (vocabulary 64: MQAR-gap with 4 pairs and gaps 32-128, tool
  traces of 10 writes), seven configurations, 500 steps, 3 seeds (about 20 CPU minutes).
* ``ablation/lab`` (the CLI's default; ``make kpower``, the shipped ``results_kpower.json``): the lab-scale
  echo on the lab recipe's MQAR-gap mixture, K = 0, 1, 2, 1,500 steps, 3 seeds; each record adds the accuracy
  at 16 pairs and gap 1024, the recall breakdown at 8 pairs and gap 256, and the evaluation history.
* ``ablation/synth1m`` (``--scale synth1m``): the synth1m-size echo, seven configurations, 2,000 steps (a GPU job).
"""

from __future__ import annotations

import dataclasses
import pathlib
import statistics
from collections.abc import Mapping
from typing import Any, NamedTuple

import torch

from .._checks import check_int, check_positive
from ..errors import BadArgumentError
from ..grid import Cell, GridOptions, run_grid
from ..models import LAB_RECIPE, build, presets_of
from ..tasks import Task, make_task
from ..train import TrainConfig, default_device, evaluate, save_records, train
from .common import check_int_list, check_names, finish, frozen, lab_task, pick, plain, resolve
from .diagnostics import recall_breakdown
from .command import Command, Option

__all__ = ["COMMAND", "AblationConfig", "AblationRecipe", "AblationCell", "RECIPES", "PICK", "ABLATION_CONFIGS",
           "LAB_ABLATION_CONFIGS", "recipe_for", "ablation_tasks", "cells", "ablation_cell", "summarize", "run"]


class AblationConfig(NamedTuple):
    """One SKA configuration of the ablation (a plain 4-tuple works too)."""

    name: str
    power_steps: int
    spectral_norm: bool
    prefix_mask: bool


ABLATION_CONFIGS = (
    AblationConfig("K=0 (ridge / mesa)", 0, True, False),
    AblationConfig("K=1", 1, True, False),
    AblationConfig("K=2 (paper)", 2, True, False),
    AblationConfig("K=4", 4, True, False),
    AblationConfig("K=2, no spectral norm", 2, False, False),
    AblationConfig("K=2, prefix mask", 2, True, True),
    AblationConfig("K=0, prefix mask", 0, True, True),
)
# The power order K at the lab scale (seed 0 of K=0 / K=2 ships as the ssm+ridge / echo-k2 checkpoints' twins).
LAB_ABLATION_CONFIGS = ABLATION_CONFIGS[:3]


def _check_configs(configs: Any) -> tuple[AblationConfig, ...]:
    if not isinstance(configs, (list, tuple)) or not configs:
        raise BadArgumentError("configs must be a non-empty list of (name, power_steps, spectral_norm, prefix_mask), "
                               f"got {configs!r}")
    out = []
    for c in configs:
        if (not isinstance(c, (list, tuple)) or len(c) != 4 or not isinstance(c[0], str)
                or isinstance(c[1], bool) or not isinstance(c[1], int) or c[1] < 0
                or not isinstance(c[2], bool) or not isinstance(c[3], bool)):
            raise BadArgumentError(f"configs must hold (name: str, power_steps: int >= 0, spectral_norm: bool, "
                                   f"prefix_mask: bool) tuples, got {c!r}")
        out.append(AblationConfig(*c))
    names = [c.name for c in out]
    if len(set(names)) != len(names):
        raise BadArgumentError(f"configs must have distinct names, got {names}")
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class AblationRecipe:
    """One ablation grid: the echo preset of ``scale`` (with ``model_overrides``), trained once per (task,
    config, seed) for ``steps`` steps. ``tasks`` maps task names to ``make_task`` arguments. ``eval_every``:
    evaluate every so many steps (None: at the end only). ``probes``: the final accuracy is a fresh
    256-example evaluation and each record adds the lab probes (16 pairs at gap 1024, the recall breakdown
    at 8 pairs and gap 256, the evaluation history); without, the final accuracy is training's last one."""

    name: str
    description: str
    scale: str
    configs: tuple[AblationConfig, ...]
    tasks: Mapping[str, Mapping[str, Any]]
    steps: int
    seeds: tuple[int, ...] = (0, 1, 2)
    eval_every: int | None = None
    eval_examples: int = 256
    model_overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    probes: bool = False
    batch_size: int = 16
    lr: float = 3e-3

    def __post_init__(self) -> None:
        presets_of(self.scale)  # checks the scale
        object.__setattr__(self, "configs", _check_configs(self.configs))
        if not isinstance(self.tasks, Mapping) or not self.tasks:
            raise BadArgumentError(f"tasks must map task names to make_task arguments, got {self.tasks!r}")
        object.__setattr__(self, "tasks", frozen(self.tasks))
        object.__setattr__(self, "model_overrides", frozen(self.model_overrides))
        object.__setattr__(self, "seeds", check_int_list("seeds", list(self.seeds), 0))
        for field in ("steps", "eval_examples", "batch_size"):
            check_int(field, getattr(self, field), min_value=1)
        if self.eval_every is not None:
            check_int("eval_every", self.eval_every, min_value=1)
        check_positive("lr", self.lr)

    def only(self, tasks: list[str] | None = None, powers: list[int] | None = None) -> "AblationRecipe":
        """This recipe on a subset of its tasks and of its configs (those with power order K in ``powers``)."""
        out = self
        if tasks is not None:
            keep = check_names("tasks", tasks, list(self.tasks), f"the tasks of {self.name}")
            out = dataclasses.replace(out, tasks={t: plain(self.tasks[t]) for t in keep})
        if powers is not None:
            configs = [c for c in self.configs if c.power_steps in powers]
            if not configs:
                raise BadArgumentError(f"powers: no config of {self.name} has K in {list(powers)} "
                                       f"(have {sorted({c.power_steps for c in self.configs})})")
            out = dataclasses.replace(out, configs=tuple(configs))
        return out


def _small_tasks(V: int, small: bool) -> dict[str, dict[str, Any]]:
    return {
        "mqar_gap": dict(name="mqar_gap", vocab_size=V, num_kv_pairs=4 if small else 8,
                         gap=[32, 64, 128] if small else [64, 256, 1024]),
        "tool_trace": dict(name="tool_trace", vocab_size=V, num_vars=4 if small else 6, num_ops=10 if small else 16,
                           num_queries=4 if small else 6),
    }


RECIPES: dict[str, AblationRecipe] = {r.name: r for r in (
    AblationRecipe("ablation/small", "the paper's echo layout at d=64 on short tasks, 7 configs, 500 steps, 3 seeds",
                   "synth1m", ABLATION_CONFIGS, _small_tasks(64, True), steps=500,
                   model_overrides=dict(d_model=64, n_heads=4, ska_rank=16, d_state=16)),
    AblationRecipe("ablation/lab", "the lab-scale echo on the lab recipe, K = 0, 1, 2, 1,500 steps, 3 seeds", "lab",
                   LAB_ABLATION_CONFIGS, {"mqar_gap": dict(LAB_RECIPE.task)}, steps=1500, eval_every=100,
                   eval_examples=128, probes=True),
    AblationRecipe("ablation/synth1m", "the synth1m-size echo, 7 configs, 2,000 steps, 3 seeds (a GPU job)", "synth1m",
                   ABLATION_CONFIGS, _small_tasks(128, False), steps=2000),
)}
# (scale, fast) -> recipe, each of that scale: no fast lab-scale ablation (ablation/lab is already CPU-sized)
PICK = {("lab", False): "ablation/lab", ("synth1m", True): "ablation/small", ("synth1m", False): "ablation/synth1m"}

COMMAND = Command("ablate", "power-filter ablation: K, spectral norm, prefix mask over seeds", "runs/ablation", (
    Option("--seeds", "the seeds of each config (the recipe's: 0 1 2)", "nonneg_int", nargs="+"),
    Option("--tasks", "a subset of the recipe's tasks (mqar_gap, tool_trace)", nargs="+", to="only"),
    Option("--steps", "training steps (the recipe's)", "positive_int"),
    Option("--powers", "only the configs with these power orders K (e.g. --powers 0 2)", "nonneg_int", nargs="+",
           to="only"),
    Option("--save-models", "save every trained model into --out-dir", to="run", flag_only=True),
), finished="ablation")


def recipe_for(scale: str = "lab", fast: bool = False) -> AblationRecipe:
    """The recipe the CLI's ``--scale`` and ``--fast`` pick (``PICK``: ``--scale synth1m --fast`` is
    ``ablation/small``, the synth1m layout shrunk to d=64)."""
    return pick("ablation", RECIPES, PICK, scale, fast)


def ablation_tasks(recipe: str | AblationRecipe = "ablation/small") -> dict[str, Task]:
    """The tasks of an ablation recipe, by name."""
    recipe = resolve(RECIPES, AblationRecipe, recipe, {})
    return {name: make_task(**plain(kw)) for name, kw in recipe.tasks.items()}


def _model_file(recipe: AblationRecipe, task: str, c: AblationConfig, seed: int) -> str:
    stem = f"{task}_" if len(recipe.tasks) > 1 else ""
    return f"{stem}K{c.power_steps}{'' if c.spectral_norm else '_nosn'}{'_mask' if c.prefix_mask else ''}_seed{seed}.pt"


_MODEL_KEYS = ("preset", "scale", "vocab_size", "overrides")


@dataclasses.dataclass(frozen=True)
class AblationCell(Cell):
    """One cell of the ablation grid (:func:`ablation_cell`): the echo preset with one SKA config and one seed,
    trained on one task.

    Fields (the recorded spec's keys):
        probes: the final accuracy is a fresh 256-example evaluation and the result adds the lab probes
            (:class:`AblationRecipe`); without, the final accuracy is training's last evaluation.
        task: ``make_task`` arguments (with ``"name"``).
        config, power_steps, spectral_norm, prefix_mask: the SKA configuration (:class:`AblationConfig`).
        seed: torch's seed and training's.
        model: ``{"preset", "scale", "vocab_size", "overrides"}``: ``build``'s arguments (``overrides``: its
            keyword arguments, beside the config's ``mixer_kwargs``).
        steps, batch_size, lr, eval_every, eval_examples: training (``eval_every``: the recipe's, or ``steps``).
        save_as: where the trained model is saved (an absolute path), or ``None``.
    """

    experiment = "ablation"
    probes: bool
    task: dict[str, Any]
    config: str
    power_steps: int
    spectral_norm: bool
    prefix_mask: bool
    seed: int
    model: dict[str, Any]
    steps: int
    batch_size: int
    lr: float
    eval_every: int
    eval_examples: int
    save_as: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_configs([(self.config, self.power_steps, self.spectral_norm, self.prefix_mask)])
        if not isinstance(self.model, dict) or sorted(self.model) != sorted(_MODEL_KEYS):
            raise BadArgumentError(f"model must have the keys {list(_MODEL_KEYS)}, got {self.model!r}")
        if not isinstance(self.probes, bool):
            raise BadArgumentError(f"probes must be a bool, got {self.probes!r}")


def cells(recipe: AblationRecipe, save_dir: pathlib.Path | None = None) -> list[AblationCell]:
    """The grid's cells, one per (task, config, seed): see :class:`AblationCell`. With ``save_dir`` each cell
    saves its model there (``K<k>[_nosn][_mask]_seed<s>.pt``, prefixed ``<task>_`` when there are several
    tasks)."""
    preset = "echo" if recipe.scale == "lab" else "synth1m-echo"
    return [AblationCell(
        probes=recipe.probes, task=plain(targs), config=c.name, power_steps=c.power_steps,
        spectral_norm=c.spectral_norm, prefix_mask=c.prefix_mask, seed=seed,
        model={"preset": preset, "scale": recipe.scale, "vocab_size": targs["vocab_size"],
               "overrides": plain(recipe.model_overrides)},
        steps=recipe.steps, batch_size=recipe.batch_size, lr=recipe.lr, eval_every=recipe.eval_every or recipe.steps,
        eval_examples=recipe.eval_examples,
        save_as=str((save_dir / _model_file(recipe, tname, c, seed)).resolve()) if save_dir else None)
        for tname, targs in recipe.tasks.items() for c in recipe.configs for seed in recipe.seeds]


def ablation_cell(cell: AblationCell) -> dict[str, Any]:
    """One cell of the ablation grid (:class:`AblationCell`, built by :func:`cells`): train the echo preset with
    one SKA config and one seed on one task, on this process's device (CUDA if available, else the CPU); save
    the model if the cell says where.

    Returns ``acc`` (with ``probes`` a fresh 256-example evaluation, else training's last evaluation),
    ``steps``, ``train_seconds``, ``final_loss`` (the last training batch's), ``device``; with ``probes`` also
    ``acc_16pairs_gap1024``, the :func:`recall_breakdown` at 8 pairs and gap 256 (``*_8pairs_gap256``) and
    ``evals`` (the evaluation history).
    """
    torch.manual_seed(cell.seed)
    device = default_device()
    task = make_task(**cell.task)
    m = cell.model
    model = build(m["preset"], vocab_size=m["vocab_size"], scale=m["scale"],
                  mixer_kwargs={"ska": {"power_steps": cell.power_steps, "spectral_norm": cell.spectral_norm}},
                  **m["overrides"])
    cfg = TrainConfig(steps=cell.steps, batch_size=cell.batch_size, lr=cell.lr, seed=cell.seed,
                      eval_every=cell.eval_every, eval_examples=cell.eval_examples)
    res = train(model, task, cfg, prefix_mask=cell.prefix_mask, device=device, progress=False)
    final = evaluate(model, task, 256, batch_size=16) if cell.probes else res.final_eval
    # final_loss stays in records.jsonl only (not in ablation.json): the last training loss depends on every
    # weight, so equal losses mean the same training, whichever executor ran the cell
    out: dict[str, Any] = {"acc": final, "steps": res.steps_done, "train_seconds": round(res.time_s, 1),
                           "final_loss": res.history[-1]["loss"]}
    if cell.probes:
        out["acc_16pairs_gap1024"] = evaluate(model, lab_task(16, 1024), 64, batch_size=16)
        out.update({f"{k}_8pairs_gap256": v for k, v in recall_breakdown(model, lab_task(8, 256), 64).items()})
        out["evals"] = res.evals
    if cell.save_as:
        pathlib.Path(cell.save_as).parent.mkdir(parents=True, exist_ok=True)
        model.save(cell.save_as)
    out["device"] = str(device)
    return out


def summarize(recipe: AblationRecipe, grid: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    """The successful cells as flat records (task, config, power_steps, spectral_norm, prefix_mask, seed and
    the result without its bookkeeping), and a markdown table of mean ± sd over seeds per config and task."""
    keys = ("config", "power_steps", "spectral_norm", "prefix_mask", "seed")
    records = [{"task": r["spec"]["task"]["name"], **{k: r["spec"][k] for k in keys},
                **{k: v for k, v in r["result"].items() if k not in ("device", "final_loss")}}
               for r in grid if not r["error"]]
    tasks = [kw["name"] for kw in recipe.tasks.values()]
    lines = ["| config | " + " | ".join(f"{t} acc (mean ± sd, {len(recipe.seeds)} seeds)" for t in tasks) + " |",
             "|---|" + "---:|" * len(tasks)]
    for c in recipe.configs:
        row = []
        for t in tasks:
            accs = [r["acc"] for r in records if r["task"] == t and r["config"] == c.name]
            if not accs:
                row.append("failed")
                continue
            sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
            partial = f" ({len(accs)}/{len(recipe.seeds)} seeds)" if len(accs) < len(recipe.seeds) else ""  # the others failed
            row.append(f"{statistics.mean(accs):.3f} ± {sd:.3f}{partial}")
        lines.append(f"| {c.name} | " + " | ".join(row) + " |")
    return records, "\n".join(lines)


def run(recipe: str | AblationRecipe = "ablation/lab", out_dir: str | pathlib.Path = "runs/ablation", *,
             save_models: bool = False, grid: GridOptions | None = None, progress: bool = True,
             **overrides: Any) -> list[dict[str, Any]]:
    """Run an ablation recipe; write ``records.jsonl``, ``ablation.json`` and ``ablation.md`` to ``out_dir``.

    ``recipe``: a name of ``RECIPES`` or an :class:`AblationRecipe`; ``overrides`` replace its fields (e.g.
    ``seeds=1, steps=2``). ``save_models``: each cell saves its model into ``out_dir`` (on a Ray cluster
    ``out_dir`` must be a shared filesystem). One grid cell per (task, config, seed) (:func:`ablation_cell`),
    run through :func:`echo_tutor.grid.run_grid` with ``grid`` (:class:`~echo_tutor.grid.GridOptions`);
    rerunning into the same ``out_dir`` runs only the cells not recorded yet. Raises
    :class:`~echo_tutor.grid.GridError` (after writing the other cells' results) if some cells failed.
    """
    recipe = resolve(RECIPES, AblationRecipe, recipe, overrides)
    out_dir = pathlib.Path(out_dir)
    records = run_grid(cells(recipe, out_dir if save_models else None), ablation_cell, out_dir, grid, progress=progress,
                       describe=lambda r: (f"{r['spec']['task']['name']} {r['spec']['config']} seed={r['spec']['seed']} "
                                           f"acc={r['result']['acc']:.2f}"))
    rows, table = summarize(recipe, records)
    if not progress:
        for rec in rows:
            print(f"{rec['task']:<11} {rec['config']:<24} seed {rec['seed']}: acc {rec['acc']:.3f} "
                  f"({rec['train_seconds']:.0f} s)", flush=True)
    save_records(rows, out_dir / "ablation.json")
    (out_dir / "ablation.md").write_text(table + "\n")
    print(table)
    finish(records, out_dir)
    return rows
