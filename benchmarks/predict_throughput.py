"""Objects per second of ``polyrnn predict --dataset`` for several worker counts (and runners), against
tracing the same boxes one by one with ``polyrnn predict IMAGE --box`` (a process and a model load each):

    python benchmarks/predict_throughput.py --workers 1,2 --runners local,ray --one-by-one 10

Each run is a fresh output folder and a fresh process, so model loading and (for Ray) the runtime's start are
counted, as a user pays them. Prints one Markdown row per run.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from polyrnn.formats import read_boxes

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "coco-mini" / "val2017"


def run_dataset(dataset: Path, workers: int, runner: str, threads: int) -> tuple[int, float, float]:
    """(objects, wall seconds of the whole command, objects/s as the command reports it)."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "polyrnn.cli", "predict", "--dataset", str(dataset), "--out", tmp]
        cmd += ["--workers", str(workers), "--runner", runner, "--threads", str(threads)]
        t0 = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        wall = time.perf_counter() - t0
    m = re.search(r"(\d+) objects in ([\d.]+) s \(([\d.]+) objects/s\)", out)
    assert m, out
    return int(m.group(1)), wall, float(m.group(3))


def one_by_one(dataset: Path, n: int) -> float:
    """Wall seconds per object of ``polyrnn predict IMAGE --box`` over the first ``n`` boxes."""
    boxes = read_boxes(dataset)
    jobs = [(im.path, o.box) for im in boxes.images for o in im.objects][:n]
    t0 = time.perf_counter()
    for path, (x1, y1, x2, y2) in jobs:
        box = f"{x1},{y1},{x2},{y2}"
        cmd = [sys.executable, "-m", "polyrnn.cli", "predict", str(path), "--box", box, "--json"]
        json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    return (time.perf_counter() - t0) / len(jobs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", type=Path, default=DEFAULT)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--runners", default="local")
    ap.add_argument("--threads", type=int, default=1, help="threads per worker")
    ap.add_argument("--one-by-one", type=int, default=10, help="boxes traced one command each (0: skip)")
    args = ap.parse_args()
    per = one_by_one(args.dataset, args.one_by_one) if args.one_by_one else None
    print(
        "| runner | workers | objects | wall s (incl. start) | objects/s (command's count) | vs one by one |"
    )
    print("|---|---|---|---|---|---|")
    if per is not None:
        n = args.one_by_one
        print(
            f"| `polyrnn predict IMAGE --box`, one by one | 1 | {n} | {per * n:.1f} | {1 / per:.2f} | 1.0x |"
        )
    for runner in args.runners.split(","):
        for w in (int(v) for v in args.workers.split(",")):
            n, wall, rate = run_dataset(args.dataset, w, runner, args.threads)
            ratio = f"{(n / wall) * per:.0f}x" if per else ""
            print(f"| {runner} | {w} | {n} | {wall:.1f} | {rate:.2f} | {ratio} |", flush=True)


if __name__ == "__main__":
    main()
