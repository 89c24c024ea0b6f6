"""The course's weighted rubric: what each part of the module is worth, and which parts a checker grades.

One module grade out of 100 (``docs/instructor/rubric.md`` explains each part and how to mark the manual ones):

* **checked exercises** (``AUTO_POINTS``): every "your turn" exercise of labs 00-08 that a checker grades
  alone, the same share per lab, split evenly among the lab's exercises;
* **open-ended exercises** (``OPEN``): four larger tasks, each partly checked (its checker) and partly
  marked by hand (the criteria in the instructor's answer key);
* **the written analysis** (``WRITTEN``): a short report, marked by hand;
* **predictions and discussion** (``PARTICIPATION``): marked in class, by hand.

``echo-tutor grade`` fills in the checked parts from the submitted notebooks and lists the rest, with their
points, for the instructor to mark.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Item", "RUBRIC", "LAB_EXERCISES", "OPEN", "AUTO_POINTS", "WRITTEN", "PARTICIPATION", "items_of",
           "total_points", "fmt_points"]

AUTO_POINTS = 36.0


@dataclass(frozen=True)
class Item:
    """One graded part. ``checked``: the points a checker awards (all or nothing); ``manual``: the points the
    instructor marks by hand, against ``criteria``."""

    key: str  # "lab02.ska_step", "written", ...
    lab: str  # "lab02", or "" for the module-level parts
    title: str
    checked: float = 0.0
    manual: float = 0.0
    criteria: str = ""

    @property
    def points(self) -> float:
        return self.checked + self.manual


# Every exercise of every lab, in lab order (tests/test_rubric.py holds this list equal to the labs').
LAB_EXERCISES: dict[str, tuple[str, ...]] = {
    "lab00": ("kv_cache_bytes", "ska_state_floats", "crossover_tokens"),
    "lab01": ("ssm_scan", "decay_mask", "ssd_quadratic", "ssd_chunked"),
    "lab02": ("ska_statistics", "ridge_readout", "kernel_ridge_readout", "whitened_operator", "power_filter",
              "exclusive_prefix_sum", "ska_step"),
    "lab03": ("gap_example", "elimination_accuracy", "cliff_gap"),
    "lab04": ("dmd_operator", "sigma_max_power", "paired_ablation"),
    "lab05": ("tool_trace_answers", "rising_gate", "forgetting_readout"),
    "lab06": ("rope_rotate", "ridge_with_intercept", "choose_kept", "streaming_keep"),
    "lab07": ("chunk_gram", "chunk_gram_triton", "sherman_morrison"),
    "lab08": ("visible_parts", "converted_state_bytes", "convert_layer", "loo_error"),
}

# The four open-ended exercises: checker points + hand-marked points, with the criteria the instructor marks.
OPEN: dict[str, Item] = {
    "lab01.ssd_chunked": Item(
        "lab01.ssd_chunked", "lab01", "Mamba-2's chunked SSD scan", checked=4.0, manual=3.5,
        criteria="the only Python loop runs over chunks (1.5); the cost stated, O(T·chunk) + O(T/chunk) state "
                 "steps (1); the chunk-boundary decay explained in a paragraph (1)"),
    "lab02.ska_step": Item(
        "lab02.ska_step", "lab02", "SKA's token-mode step with a Sherman-Morrison update", checked=4.0, manual=3.5,
        criteria="O(r^2) per token, no factorisation in the step (1.5); the read/write order argued against the "
                 "chunk forward (1); the float32 drift measured and explained (1)"),
    "lab04.paired_ablation": Item(
        "lab04.paired_ablation", "lab04", "A paired ablation graded against its interval", checked=4.0, manual=3.5,
        criteria="design: paired seeds, same data and budget for both arms (1); a paragraph on what the result "
                 "does and does not say about the paper's K = 2, with the scale and budget (2.5)"),
    "lab06.choose_kept": Item(
        "lab06.choose_kept", "lab06", "EchoKV's greedy choice of kept heads under a byte budget", checked=4.0, manual=3.5,
        criteria="the comparison with a random and the project's choice run and read correctly (1.5); a paragraph "
                 "on why greedy by rebuild quality can fail (correlated heads, keys against values) (2)"),
}

WRITTEN = Item("written", "", "Written analysis: does SKA remove the memory cliff?", manual=24.0,
               criteria="see docs/instructor/rubric.md, 'The written analysis'")
PARTICIPATION = Item("participation", "", "Predictions committed before the answers, and class discussion", manual=10.0,
                     criteria="see docs/instructor/rubric.md, 'Predictions and discussion'")


def _auto_items() -> list[Item]:
    per_lab = AUTO_POINTS / len(LAB_EXERCISES)
    out = []
    for lab, names in LAB_EXERCISES.items():
        plain = [n for n in names if f"{lab}.{n}" not in OPEN]
        for n in plain:
            out.append(Item(f"{lab}.{n}", lab, n, checked=per_lab / len(plain)))
    return out


RUBRIC: tuple[Item, ...] = tuple(
    sorted(_auto_items() + list(OPEN.values()), key=lambda it: (it.lab, LAB_EXERCISES[it.lab].index(it.key.split(".")[1])))
) + (WRITTEN, PARTICIPATION)


def items_of(lab: str) -> list[Item]:
    """The rubric items of one lab (``"lab02"``)."""
    return [it for it in RUBRIC if it.lab == lab]


def total_points() -> float:
    return round(sum(it.points for it in RUBRIC), 6)


def fmt_points(x: float) -> str:
    """Points as a report shows them: two decimals at most (``1.33``, ``4``)."""
    return f"{x:.2f}".rstrip("0").rstrip(".")
