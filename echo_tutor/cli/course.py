"""The course commands: ``grade`` submitted labs against the rubric, ``preview`` the labs as static HTML."""

from __future__ import annotations

import argparse

from ..labs.grade import grade_submissions
from ..labs.preview import render_labs
from .flags import positive_int

__all__ = ["add_course_commands"]


def _grade(args: argparse.Namespace) -> int:
    results = grade_submissions(args.submissions, args.out, timeout=args.timeout, execute=not args.no_execute)
    print(f"graded {len(results)} student(s): one report each and grades.csv in {args.out}/")
    return 0


def _preview(args: argparse.Namespace) -> int:
    rows = render_labs([x for x in args.labs.split(",") if x] or None, args.out, args.timeout)
    print(f"{len(rows)} lab(s) written to {args.out}/ (open index.html)")
    return 0


def add_course_commands(sub) -> None:
    p = sub.add_parser("grade", help="grade submitted labs: checkers on each learner's own functions, a report per "
                                     "student with the rubric's points, grades.csv",
                       description="Checks each exercise of each submitted notebook in a fresh kernel that runs only "
                                   "the notebook's definitions, and writes <out>/<student>.md (checked points per the "
                                   "rubric, flags to read, then the parts to mark by hand), <out>/grades.csv and each "
                                   "notebook run whole with its outputs (<out>/<student>/). SUBMISSIONS: notebooks, a "
                                   "folder of one student's notebooks, or a folder with one sub-folder per student.")
    p.add_argument("submissions", nargs="+", help="notebooks (.ipynb or jupytext .py) or folders of them")
    p.add_argument("--out", default="grades", help="folder for the reports (default: grades/)")
    p.add_argument("--timeout", type=positive_int, default=1800, help="seconds per cell (default 1800)")
    p.add_argument("--no-execute", action="store_true",
                   help="skip running each whole notebook for its outputs (the verdicts never come from that run)")
    p.set_defaults(func=_grade)

    p = sub.add_parser("preview", help="every lab executed (FAST, solutions on) as static HTML with its figures",
                       description="Executes each lab in FAST mode with the solutions filled in and writes "
                                   "<out>/NN_name.html, index.html and plotly.min.js (works offline).")
    p.add_argument("--labs", default="", help="comma-separated lab numbers (default: all), e.g. 00,03")
    p.add_argument("--out", default="preview", help="output folder (default: preview/)")
    p.add_argument("--timeout", type=positive_int, default=900, help="seconds per cell (default 900)")
    p.set_defaults(func=_preview)
