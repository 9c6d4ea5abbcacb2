"""Is the editor still responsive while it learns? Correction latency (a vertex drag through the editor's
session, the refine engine, one thread) with the machine idle, then while a learning job runs exactly as
``polyrnn serve`` starts it (its own process, nice 10, one thread).

    python benchmarks/learning_latency.py --folder ../shared/datasets/cwfid-train

Prints the median and 90th percentile of both and their ratio (the target: during <= 2x idle).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def corrections(predictor, image, boxes, n: int) -> list[float]:  # type: ignore[no-untyped-def]
    """``n`` drags (ms each): a fresh session per box, its vertex 1 dragged 8 % of the box outward."""
    out = []
    predictor.set_image(image)
    k = 0
    while len(out) < n:
        x1, y1, x2, y2 = boxes[k % len(boxes)]
        k += 1
        s = predictor.new_session((x1, y1, x2, y2))
        if len(s.polygon) < 3:
            continue
        px, py = s.polygon[1]
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        target = (px + 0.08 * (px - cx), py + 0.08 * (py - cy))
        t0 = time.perf_counter()
        s.move(1, target)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--folder", default=str(ROOT.parent / "shared" / "datasets" / "cwfid-train"))
    ap.add_argument("--n", type=int, default=60, help="corrections per condition")
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    from polyrnn.data.instance import load_image
    from polyrnn.formats import load_dataset
    from polyrnn.learning import LearnOptions
    from polyrnn.predictor import PolygonPredictor
    from polyrnn.server.learner import _job

    ds = load_dataset(args.folder, min_size=16)
    first = sorted({str(i.image_path) for i in ds.instances})[0]
    image = load_image(first)
    boxes = [i.box_xyxy for i in ds.instances if str(i.image_path) == first]
    predictor = PolygonPredictor.from_weights()
    corrections(predictor, image, boxes, 5)  # warm up
    idle = corrections(predictor, image, boxes, args.n)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "folder"
        shutil.copytree(args.folder, work)
        options = LearnOptions(mask_epochs=args.epochs, refiner_epochs=args.epochs, corrections=3)
        job_args = (
            str(work),
            str(work),
            str(work / ".polyrnn"),
            str(Path(tmp) / "v1"),
            None,
            asdict(options),
            str(Path(tmp) / "report.json"),
        )
        proc = mp.get_context("spawn").Process(target=_job, args=job_args, daemon=True)
        proc.start()
        time.sleep(20)  # past its start-up: the job is training
        during = corrections(predictor, image, boxes, args.n)
        alive = proc.is_alive()
        proc.terminate()
        proc.join()
    result = {
        "idle_ms": {
            "median": round(float(np.median(idle)), 1),
            "p90": round(float(np.percentile(idle, 90)), 1),
        },
        "during_ms": {
            "median": round(float(np.median(during)), 1),
            "p90": round(float(np.percentile(during, 90)), 1),
        },
        "ratio_median": round(float(np.median(during) / np.median(idle)), 2),
        "job_still_running_at_the_end": alive,
        "n": args.n,
    }
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
