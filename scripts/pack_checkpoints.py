"""Copy trained models into the package as float16 (with their training record).

    python scripts/pack_checkpoints.py SRC_DIR DST_DIR PRESET [PRESET ...]
"""

import pathlib
import shutil
import sys

import torch

from echo_tutor.models import load


def main(argv):
    if len(argv) < 3:
        print(__doc__)
        return 2
    src, dst = pathlib.Path(argv[0]), pathlib.Path(argv[1])
    for preset in argv[2:]:
        name = preset.replace("+", "_")
        model = load(src / f"{name}.pt")
        model.save(dst / f"{name}.pt", dtype=torch.float16)
        shutil.copy(src / f"{name}.json", dst / f"{name}.json")
        print(f"packed {preset}: {(dst / f'{name}.pt').stat().st_size / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
