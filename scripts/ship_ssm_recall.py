"""Ship ``ssm-recall`` (lab 03, section 4): one seed of an ``echo-tutor ssm-cliff`` run as the checkpoint, and
every seed's measured accuracy by gap in its record.

    OMP_NUM_THREADS=1 echo-tutor ssm-cliff --recipe ssm_cliff/lab --save-models --threads 1 --out-dir runs/ssm_cliff
    python scripts/ship_ssm_recall.py runs/ssm_cliff [--seed 0] [--to DIR]

Reads ``<run>/ssm_cliff.json`` (the experiment's summary) and ``<run>/models/seed<k>.pt``. The seed given
(default: the run's first) is the one shipped (``echo_tutor/pretrained/ssm-recall.pt``, float16 as the
experiment saves it); ``ssm-recall.json`` is its record (the cell's arguments, training stages, decay,
predictions, causal check) plus ``argv`` (the command that runs the recipe), ``recipe`` (its fields as run),
``overrides`` (those that differ from the named recipe's, if any), ``across_seeds`` (the cliffs with their
intervals over seeds) and ``seeds``: for every seed of the run, its gaps, accuracies, examples a gap and final
training eval. ``--to`` writes both files elsewhere instead (a check that does not touch the shipped ones).

The shipped ``ssm-recall`` itself was made before the experiment existed, by the former
``scripts/train_ssm_cliff.py`` (now ``echo_tutor.experiments.ssm_cliff``; its record's ``argv`` keeps that
command); ``echo-tutor ssm-cliff --recipe ssm_cliff/lab`` runs the same arguments.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil

from echo_tutor.experiments.ssm_cliff import RECIPES
from echo_tutor.pretrained import HERE


def ship_record(summary: dict, run: pathlib.Path, seed: int) -> dict:
    """The record of ``ssm-recall`` from the experiment's ``summary`` (``ssm_cliff.json`` of ``run``)."""
    by_seed = {s["seed"]: s for s in summary["seeds"]}
    if seed not in by_seed:
        raise SystemExit(f"seed {seed} is not in {run / 'ssm_cliff.json'} (seeds: {sorted(by_seed)})")
    recipe = summary["recipe"]
    named = RECIPES.get(recipe["name"])
    overrides = {k: v for k, v in recipe.items()
                 if named is None or json.loads(json.dumps(getattr(named, k))) != v}
    ship = {"argv": ["echo-tutor", "ssm-cliff", "--recipe", recipe["name"], "--save-models", "--out-dir", str(run)],
            "recipe": recipe, **({"overrides": overrides} if overrides else {}),
            **{k: v for k, v in by_seed[seed].items() if k != "seed"}, "preset": "ssm-recall",
            "across_seeds": summary["across_seeds"]}
    ship["seeds"] = [{"seed": s["seed"], "run": str(run / "models" / f"seed{s['seed']}.pt"), "gaps": s["gaps"],
                      "acc": s["acc"], "examples": s["args"]["eval_examples"], "steps": s["stages"][0]["steps"],
                      "time_s": s["stages"][0]["time_s"], "final_train_eval": s["stages"][0]["evals"][-1]["eval_acc"],
                      "cliff_measured": s["cliff_measured"], "cliff_pred_rule2": s["cliff_pred_rule2"]}
                     for s in summary["seeds"]]
    return ship


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="the --out-dir of an `echo-tutor ssm-cliff --save-models` run")
    p.add_argument("--seed", type=int, default=None, help="the seed to ship (default: the run's first)")
    p.add_argument("--to", default=str(HERE), help="where to write ssm-recall.pt and .json (default: the package's)")
    a = p.parse_args(argv)
    run = pathlib.Path(a.run)
    summary = json.loads((run / "ssm_cliff.json").read_text())
    if any(s.get("load") for s in summary["seeds"]):
        raise SystemExit(f"{run} measured a loaded checkpoint (--load): ship a run that trained its models")
    seed = summary["seeds"][0]["seed"] if a.seed is None else a.seed
    ship = ship_record(summary, run, seed)
    model = run / "models" / f"seed{seed}.pt"
    if not model.is_file():
        raise SystemExit(f"{model} does not exist: run the experiment with --save-models")
    to = pathlib.Path(a.to)
    to.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model, to / "ssm-recall.pt")
    (to / "ssm-recall.json").write_text(json.dumps(ship, indent=1))
    for s in ship["seeds"]:
        print(f"seed {s['seed']}: train eval {s['final_train_eval']:.3f}, acc by gap "
              + ", ".join(f"{g}: {v:.2f}" for g, v in zip(s["gaps"], s["acc"])))


if __name__ == "__main__":
    main()
