"""Ship the conversion study: ``python scripts/ship_convert.py runs/convert``.

Copies ``<run>/convert.json`` (written by ``echo-tutor convert --out-dir <run>``) to
``echo_tutor/pretrained/results_convert.json`` and packs the stage-1 mixers of the fitted variants (float16)
into ``echo_tutor/pretrained/convert_mixers.pt``, which lab 08 loads.
"""

import json
import pathlib
import shutil
import sys

from echo_tutor.convert.study import SHIPPED_MIXERS, pack_mixers

ROOT = pathlib.Path(__file__).resolve().parents[1]

if __name__ == "__main__":
    run = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "runs/convert")
    res = json.loads((run / "convert.json").read_text())
    dest = ROOT / "echo_tutor" / "pretrained"
    shutil.copy(run / "convert.json", dest / "results_convert.json")
    fitted = [v for v in res["config"]["variants"] if v != "window"]
    size = pack_mixers(run, dest / SHIPPED_MIXERS, fitted)
    print(f"wrote results_convert.json and {SHIPPED_MIXERS} ({size / 1e6:.1f} MB: {', '.join(fitted)})")
