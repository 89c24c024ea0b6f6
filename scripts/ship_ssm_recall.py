"""Ship ``ssm-recall`` (lab 03, section 4): one trained run of ``scripts/train_ssm_cliff.py`` as the checkpoint,
and every seed's measured accuracy by gap in its record.

    python scripts/ship_ssm_recall.py runs/ssm_cliff/r6_p2_g64_d128_h4_ds32.pt runs/ssm_cliff/r6s1_p2_g64_d128_h4_ds32.pt

The first run is the one shipped (``echo_tutor/pretrained/ssm-recall.pt``, float16 as written by the training
script); ``ssm-recall.json`` is its record (command, arguments, training stages, decay, predictions, causal
check) plus ``seeds``: for every run given, its seed, gaps, accuracies, examples a gap and final training eval.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import sys

from echo_tutor.pretrained import HERE


def main(runs: list[str]) -> None:
    if not runs:
        sys.exit(__doc__)
    recs = [json.loads(pathlib.Path(r).with_suffix(".json").read_text()) for r in runs]
    same = [{k: v for k, v in r["args"].items() if k not in ("seed", "out", "check_examples", "load")} for r in recs]  # measurement-only options
    if any(s != same[0] for s in same):
        sys.exit("the runs must differ only in --seed (and --out, --check-examples)")
    ship = dict(recs[0])
    ship["preset"] = "ssm-recall"
    ship["seeds"] = [{"seed": r["args"]["seed"], "run": str(p), "gaps": r["gaps"], "acc": r["acc"],
                      "examples": r["args"]["eval_examples"], "steps": r["stages"][0]["steps"],
                      "time_s": r["stages"][0]["time_s"], "final_train_eval": r["stages"][0]["evals"][-1]["eval_acc"],
                      "cliff_measured": r["cliff_measured"], "cliff_pred_rule2": r["cliff_pred_rule2"]}
                     for p, r in zip(runs, recs)]
    shutil.copyfile(runs[0], HERE / "ssm-recall.pt")
    (HERE / "ssm-recall.json").write_text(json.dumps(ship, indent=1))
    for s in ship["seeds"]:
        print(f"seed {s['seed']}: train eval {s['final_train_eval']:.3f}, acc by gap "
              + ", ".join(f"{g}: {a:.2f}" for g, a in zip(s["gaps"], s["acc"])))


if __name__ == "__main__":
    main(sys.argv[1:])
