"""The four-week schedule's hours per lab, from what can be counted, with the assumptions stated.

    python scripts/schedule.py            # print the table
    python scripts/schedule.py --write    # write it into docs/course.md between the schedule markers

Per lab, counted from the lab's source: the words of its prose (markdown cells), the lines of code a learner
reads (code cells without blank lines and the exercise stubs), its exercises (kinds from
``echo_tutor.labs.rubric`` and ``THOUGHT`` below), its predictions and its discussion questions (the lab's
section of docs/course.md); measured: the FAST run time (echo_tutor/pretrained/lab_times.json, written by
scripts/time_labs.py). Assumed, and printed with the table: a reading pace, a code-reading pace, the time an
exercise of each kind takes a learner who has read the lab, and the time of a prediction and of a discussion
question. These are estimates for planning; the first run of a course should time its own class.
"""

from __future__ import annotations

import json
import pathlib
import re
import sys

import jupytext

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from echo_tutor.labs.rubric import LAB_EXERCISES, OPEN  # noqa: E402

# The pace and times assumed (minutes): technical prose with equations, read with care, and code read to
# follow it; exercises by kind; a prediction (read, commit, compare); a discussion question in class.
WORDS_PER_MIN = 110
CODE_LINES_PER_MIN = 12
EXERCISE_MIN = {"warm-up": 10, "thought": 25, "open-ended": 75}
PREDICTION_MIN = 3
DISCUSSION_MIN = 8
# Exercises that ask for reasoning rather than a formula printed above them (the rest not open-ended are
# warm-ups). Kept by hand: the labs' docstrings say which is which.
THOUGHT = {
    "lab00.crossover_tokens", "lab01.decay_mask", "lab02.ridge_readout", "lab02.kernel_ridge_readout",
    "lab03.elimination_accuracy", "lab03.cliff_gap", "lab04.dmd_operator", "lab04.sigma_max_power",
    "lab05.rising_gate", "lab05.forgetting_readout", "lab06.ridge_with_intercept", "lab07.chunk_gram_triton",
    "lab08.converted_state_bytes", "lab08.convert_layer",
}
WEEKS = {1: ("00", "01"), 2: ("02", "03"), 3: ("04", "05"), 4: ("06", "07", "08")}
# Labs a course may skip: not counted in their week's hours (listed apart). Lab 07 (Triton kernels) is for a class
# with an interest in GPU programming; no later lab builds on it, and week 4 is the heaviest without it.
OPTIONAL = ("07",)
BEGIN, END = "<!-- schedule -->", "<!-- /schedule -->"


def kind_of(lab: str, name: str) -> str:
    key = f"{lab}.{name}"
    return "open-ended" if key in OPEN else "thought" if key in THOUGHT else "warm-up"


def _discussion_questions(num: str) -> int:
    text = (ROOT / "docs" / "course.md").read_text()
    m = re.search(rf"^## Lab {num}\b.*?(?=^## )", text, re.M | re.S)
    if not m:
        return 0
    part = re.split(r"\*\*Discussion[^*]*\*\*|^### Discussion", m.group(0), flags=re.M)
    return len(re.findall(r"^\s*(?:\d+\.|-)\s", part[1], re.M)) if len(part) > 1 else 0


def lab_rows() -> list[dict]:
    times = json.loads((ROOT / "echo_tutor" / "pretrained" / "lab_times.json").read_text()).get("labs", {})
    rows = []
    for src in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py")):
        num = src.name[:2]
        nb = jupytext.read(src)
        words = sum(len(re.findall(r"[A-Za-z0-9][\w'-]*", c.source)) for c in nb.cells if c.cell_type == "markdown")
        code = sum(1 for c in nb.cells if c.cell_type == "code" for line in c.source.splitlines() if line.strip())
        kinds = [kind_of(f"lab{num}", n) for n in LAB_EXERCISES.get(f"lab{num}", ())]
        preds = src.read_text().count("labs.Prediction(")
        disc = _discussion_questions(num)
        run_s = (times.get(src.stem) or {}).get("wall_s", 0.0)
        minutes = {
            "read": words / WORDS_PER_MIN + code / CODE_LINES_PER_MIN,
            "run": run_s / 60,
            "exercises": sum(EXERCISE_MIN[k] for k in kinds),
            "predict + discuss": preds * PREDICTION_MIN + disc * DISCUSSION_MIN,
        }
        rows.append(dict(lab=src.stem, words=words, code=code, kinds=kinds, predictions=preds, discussion=disc,
                         run_s=run_s, minutes=minutes, total=sum(minutes.values())))
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        f"Hours per lab, from `python scripts/schedule.py`: counted (the prose's words, the code's lines, the exercises, "
        f"predictions and discussion questions) and measured (the FAST run time), at an assumed pace of "
        f"{WORDS_PER_MIN} words and {CODE_LINES_PER_MIN} lines of code a minute, "
        f"{EXERCISE_MIN['warm-up']} / {EXERCISE_MIN['thought']} / {EXERCISE_MIN['open-ended']} minutes for a warm-up / "
        f"thought / open-ended exercise, {PREDICTION_MIN} for a prediction and {DISCUSSION_MIN} for a discussion "
        "question. Estimates for planning: time your own first class.", "",
        "| week | lab | prose words | code lines | exercises (warm-up / thought / open) | predictions | discussion | "
        "reading | exercises | predict + discuss | run (FAST) | hours |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    week_of = {n: w for w, nums in WEEKS.items() for n in nums}
    by_week: dict[int, float] = {}
    optional: list[tuple[str, float]] = []
    for r in rows:
        k = r["kinds"]
        w = week_of.get(r["lab"][:2], 0)
        if r["lab"][:2] in OPTIONAL:
            optional.append((r["lab"][:2], r["total"] / 60))
        else:
            by_week[w] = by_week.get(w, 0.0) + r["total"] / 60
        m = r["minutes"]
        shown = f"{w} (optional)" if r["lab"][:2] in OPTIONAL else f"{w}"
        lines.append(
            f"| {shown} | `{r['lab']}` | {r['words']:,} | {r['code']:,} | {k.count('warm-up')} / {k.count('thought')} / "
            f"{k.count('open-ended')} | {r['predictions']} | {r['discussion']} | {m['read']:.0f} min | "
            f"{m['exercises']:.0f} min | {m['predict + discuss']:.0f} min | {r['run_s']:.0f} s | {r['total'] / 60:.1f} |")
    total = sum(by_week.values())
    weeks = ", ".join(f"week {w}: {h:.1f} h" for w, h in sorted(by_week.items()))
    extra = "".join(f"; optional lab {n}: {h:.1f} h more" for n, h in optional)
    lines += ["", f"In all about **{total:.0f} hours** of class and lab time ({weeks}{extra}), before the written "
              "analysis (about 4 hours of the learner's own time) and any FULL-mode runs on a GPU."]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    text = table(lab_rows())
    if "--write" in argv:
        path = ROOT / "docs" / "course.md"
        doc = path.read_text()
        if BEGIN not in doc or END not in doc:
            print(f"docs/course.md has no {BEGIN} ... {END} markers", file=sys.stderr)
            return 1
        head, rest = doc.split(BEGIN, 1)
        path.write_text(head + BEGIN + "\n" + text + "\n" + END + rest.split(END, 1)[1])
        print("wrote the schedule table into docs/course.md")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
