"""Time every lab in FAST mode (solutions on), once, and write the one table of course times that lab 00,
docs/course.md and the README show.

    .venv/bin/python scripts/time_labs.py [--threads N] [--labs 00 03]   # run on an idle machine

Each lab's jupytext source is executed top to bottom in a fresh kernel (nbclient) with ECHO_TUTOR_FAST=1 and
ECHO_TUTOR_SOLUTIONS=1; the wall time includes starting the kernel and the imports, and the sum of the cells'
execution times is kept beside it. Writes echo_tutor/pretrained/lab_times.json (lab 00 reads it) and rewrites
the block between the markers `<!-- lab-times -->` and `<!-- /lab-times -->` in docs/course.md and README.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import re
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT = ROOT / "echo_tutor" / "pretrained" / "lab_times.json"
DOCS = [ROOT / "docs" / "course.md", ROOT / "README.md"]
BLOCK = re.compile(r"(<!-- lab-times -->\n).*?(<!-- /lab-times -->)", re.S)


def time_lab(src: pathlib.Path, threads: int) -> dict:
    import jupytext
    from nbclient import NotebookClient

    nb = jupytext.read(src)
    env = {"ECHO_TUTOR_FAST": "1", "ECHO_TUTOR_SOLUTIONS": "1", "OMP_NUM_THREADS": str(threads)}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    t0 = time.perf_counter()
    try:
        NotebookClient(nb, timeout=1800, kernel_name="python3", resources={"metadata": {"path": str(src.parent)}}).execute()
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    wall = time.perf_counter() - t0
    parse = lambda s: datetime.datetime.fromisoformat(s.replace("Z", "+00:00"))  # noqa: E731
    cells = sum((parse(c.metadata["execution"]["shell.execute_reply"]) - parse(c.metadata["execution"]["iopub.execute_input"])).total_seconds()
                for c in nb.cells if c.cell_type == "code" and "execution" in c.get("metadata", {}))
    return {"wall_s": round(wall, 1), "cells_s": round(cells, 1)}


def table(data: dict) -> str:
    fmt = lambda s: f"{s / 60:.1f} min" if s >= 120 else f"{s:.0f} s"  # noqa: E731
    rows = [f"FAST times, measured by `scripts/time_labs.py` on {data['date']} ({data['machine']}, "
            f"{data['threads']} torch thread(s), solutions on; wall time with kernel start and imports, the "
            "cells' own time in brackets):", "", "| lab | FAST |", "|---|---:|"]
    rows += [f"| `{lab}` | {fmt(t['wall_s'])} ({fmt(t['cells_s'])}) |" for lab, t in data["labs"].items()]
    total = sum(t["wall_s"] for t in data["labs"].values())
    rows.append(f"| all | {fmt(total)} |")
    return "\n".join(rows) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--labs", nargs="*", default=None, help="lab numbers, e.g. 00 03 (default: all)")
    args = ap.parse_args()
    import torch

    data = json.loads(OUT.read_text()) if OUT.exists() else {"labs": {}}
    for src in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py")):
        if args.labs and src.name[:2] not in args.labs:
            continue
        print(f"{src.stem} ...", flush=True)
        data["labs"][src.stem] = time_lab(src, args.threads)
        print(f"  {data['labs'][src.stem]}", flush=True)
    data.update(date=datetime.date.today().isoformat(), threads=args.threads,
                machine=f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}")
    data["labs"] = dict(sorted(data["labs"].items()))
    OUT.write_text(json.dumps(data, indent=1) + "\n")
    for doc in DOCS:
        text = doc.read_text()
        if BLOCK.search(text):
            doc.write_text(BLOCK.sub(lambda m: m.group(1) + table(data) + m.group(2), text))
    print(table(data))


if __name__ == "__main__":
    main()
