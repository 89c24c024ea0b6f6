"""Ship the pass-key study (lab 08, section 7; docs/results.md, "Which part carries the pass key"): every cell an
``echo-tutor passkey`` run directory holds (one study, run as a few commands that share their records), and the
retrieval mass of the original model's layers.

    python scripts/ship_passkey.py RUN_DIR --command "echo-tutor passkey ..." [--command ...] [--to DIR]

Writes ``echo_tutor/pretrained/results_passkey.json``: ``summary`` (:func:`echo_tutor.experiments.passkey.summarize`
over every record of the directory: each cell's rate with its Wilson interval, each mixer's verdict against the
controls it has, held-out perplexity), ``commands`` (the commands that made the records, as given), ``seconds``
(the cells' compute time), and ``retrieval``: for each prompt format, the attention mass each layer of the
original model puts on the key when the answer begins (:func:`echo_tutor.convert.passkey.retrieval_mass`, on 4
prompts of 1,024 tokens drawn apart from the study's, counting key tokens past the sinks and window of the
shipped conversion).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import random

from echo_tutor.convert.passkey import FORMATS, make_case, plain_source, retrieval_mass
from echo_tutor.echokv.model import load_smollm2
from echo_tutor.experiments.passkey import HELDOUT, PassKeyRecipe, format_summary, summarize
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


def union_recipe(records: list[dict]) -> PassKeyRecipe:
    """A recipe whose fields cover every record (what the summary's ``config`` shows)."""
    specs = [r["spec"] for r in records]
    prompts = [s for s in specs if s["fmt"] != HELDOUT]
    held = [s for s in specs if s["fmt"] == HELDOUT]
    return PassKeyRecipe(
        "shipped", "every cell of the run directory", formats=tuple(sorted({s["fmt"] for s in prompts})),
        keys=tuple(sorted({s["keys"] for s in prompts})), lengths=tuple(sorted({s["length"] for s in prompts})),
        trials=max(s["trials"] for s in prompts),
        variants=tuple(dict.fromkeys(s["variant"] for s in prompts if s["kind"] == "mixer")),
        counts=tuple(sorted({len(s["layers"]) for s in prompts if s["layers"]})),
        ppl_windows=max((s["trials"] for s in held), default=0),
        ppl_context=max((s["length"] for s in held), default=512))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=pathlib.Path)
    ap.add_argument("--command", action="append", required=True, help="a command that wrote the records")
    ap.add_argument("--to", type=pathlib.Path, default=HERE)
    a = ap.parse_args()
    recs = [json.loads(line) for line in (a.run / "records.jsonl").read_text().splitlines() if line.strip()]
    latest = {r["spec_hash"]: r for r in recs}  # a cell rerun keeps its last record
    recs = list(latest.values())
    recipe = union_recipe(recs)
    summary = summarize(recipe, recs)
    model, tok = load_smollm2()
    ship = {"commands": a.command, "summary": summary, "retrieval": retrieval(model, tok),
            "seconds": round(sum(r.get("seconds", 0) or 0 for r in recs), 1), "device": "cpu (2 cores)"}
    dest = a.to / "results_passkey.json"
    dest.write_text(json.dumps(ship, indent=1) + "\n")
    print(format_summary(summary))
    print(f"wrote {dest} ({dest.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
