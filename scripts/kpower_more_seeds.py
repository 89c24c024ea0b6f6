"""Add seeds to the shipped power-order table (results_kpower.json) without rerunning the shipped seeds.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/kpower_more_seeds.py --seeds 3 4 [--out-dir runs/kpower_more]

Runs the cells of the recipe ablation/lab (K = 0, 1, 2) for the given seeds only, through the same grid (so an
interrupted run resumes), saves each model, then writes the shipped table with the new seeds appended. The
shipped seeds' records come from the shipped file: their cells are the same computation (same spec but for the
'probes' key's name), and on one thread a rerun reproduces them exactly (checked on ablation/small).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib

import torch

from echo_tutor.experiments import ablation
from echo_tutor.grid import run_grid
from echo_tutor.pretrained import HERE, results


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", required=True)
    ap.add_argument("--out-dir", default="runs/kpower_more")
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = pathlib.Path(args.out_dir)
    recipe = ablation.RECIPES["ablation/lab"]
    specs = ablation.cells(dataclasses.replace(recipe, seeds=tuple(args.seeds)), out)
    grid = run_grid(specs, ablation.ablation_cell, out, progress=True)
    new, _ = ablation.summarize(recipe, grid)
    shipped = results("kpower")
    have = {(r["config"], r["seed"]) for r in shipped}
    merged = shipped + [r for r in new if (r["config"], r["seed"]) not in have]
    merged.sort(key=lambda r: (r["power_steps"], r["seed"]))
    (HERE / "results_kpower.json").write_text(json.dumps(merged, indent=1, default=str))
    print(f"results_kpower.json: {len(merged)} runs, seeds {sorted({r['seed'] for r in merged})}")


if __name__ == "__main__":
    main()
