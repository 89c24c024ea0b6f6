"""Merge per-task ablation records into the file the labs read.

    python scripts/merge_ablation.py OUT.json IN.json [IN.json ...]
"""

import json
import sys


def main(argv):
    if len(argv) < 2:
        print(__doc__)
        return 2
    records = [r for path in argv[1:] for r in json.load(open(path))]
    with open(argv[0], "w") as f:
        json.dump(records, f, indent=1)
    print(f"wrote {len(records)} records to {argv[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
