"""Quantisation ceiling on coco-mini val2017 (box side >= 32 px) for D = 28, 56, 112.

Same as ``polyrnn data ceiling ../shared/datasets/coco-mini/val2017``; kept as a script for the record.
"""

from __future__ import annotations

import sys
from pathlib import Path

from polyrnn.cli import main

if __name__ == "__main__":
    root = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "coco-mini" / "val2017"
    sys.exit(main(["data", "ceiling", str(root), "--grid-sizes", "28,56,112", *sys.argv[1:]]))
