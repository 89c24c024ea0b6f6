"""Ship the pass-key study (lab 08, section 7; docs/results.md, "Which part carries the pass key"): the summary of
an ``echo-tutor passkey`` run and the retrieval mass of the original model's layers.

    echo-tutor passkey --recipe passkey/lab --trials 8 --counts 8 15 \\
        --variants window+ska:K1 window+linear:K0 window+ska:K1:S16 window+linear:K0:S16 --out-dir runs/passkey
    python scripts/ship_passkey.py runs/passkey "<the command above>" [--to DIR]

Writes ``echo_tutor/pretrained/results_passkey.json``: ``summary`` (the run's ``passkey.json``: every cell's rate
with its Wilson interval, every mixer's verdict against its controls), ``command`` (the command given),
``seconds`` (the cells' compute time), and ``retrieval``: for each prompt format, the attention mass each layer
of the original model puts on the key when the answer begins
(:func:`echo_tutor.convert.passkey.retrieval_mass`, on 4 prompts of 1,024 tokens drawn apart from the study's,
counting key tokens past the sinks and window of the shipped conversion).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import random

from echo_tutor.convert.passkey import FORMATS, make_case, plain_source, retrieval_mass
from echo_tutor.echokv.model import load_smollm2
from echo_tutor.pretrained import HERE, results

CASES, LENGTH = 4, 1024


def retrieval(model, tok) -> dict:
    """The original model's retrieval mass per layer, per format (prompts seeded ``"rank/<fmt>"``)."""
    cfg = results("convert")["config"]
    beyond = cfg["window"] + cfg.get("sinks", 4)
    src = plain_source(tok)
    out = {"beyond": beyond, "cases": CASES, "length": LENGTH}
    for fmt in FORMATS:
        rng = random.Random(f"rank/{fmt}")
        cases = [make_case(tok, LENGTH, rng, fmt=fmt, source_ids=src) for _ in range(CASES)]
        out[fmt] = [round(x, 5) for x in retrieval_mass(model, tok, cases, beyond=beyond).tolist()]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=pathlib.Path)
    ap.add_argument("command")
    ap.add_argument("--to", type=pathlib.Path, default=HERE)
    a = ap.parse_args()
    summary = json.loads((a.run / "passkey.json").read_text())
    recs = [json.loads(line) for line in (a.run / "records.jsonl").read_text().splitlines() if line.strip()]
    model, tok = load_smollm2()
    ship = {"command": a.command, "summary": summary, "retrieval": retrieval(model, tok),
            "seconds": round(sum(r.get("seconds", 0) or 0 for r in recs), 1), "device": "cpu (2 cores)"}
    dest = a.to / "results_passkey.json"
    dest.write_text(json.dumps(ship, indent=1) + "\n")
    print(f"wrote {dest} ({dest.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
