"""How well ``polyrnn predict --dataset``'s per-object confidence ranks its polygons by IoU.

Runs the batched annotator (:class:`polyrnn.batch.annotate.Annotator`, the shipped models) on the boxes of a
dataset with ground truth, and prints for each candidate confidence of
:func:`polyrnn.batch.annotate.confidences` its Pearson and Spearman correlation with the polygon's IoU, and
the
mean IoU of the least confident fifth against the rest. Choose the candidate on held-out *training* images:

    python benchmarks/confidence.py --held-out            # the refiner recipe's held-out training images
    python benchmarks/confidence.py --dataset ../shared/datasets/coco-mini/val2017   # report

IoU as ``polyrnn evaluate`` counts it (full image resolution, all parts of the ground truth, ignore regions
left out); ``--min-size`` keeps boxes whose long side is at least that many pixels (default 0: every box, as
pre-annotation gets them).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from polyrnn.batch.annotate import Annotator
from polyrnn.data.instance import Instance, load_image
from polyrnn.evaluation.metrics import mask_iou
from polyrnn.formats import load_dataset
from polyrnn.geometry import rasterize


def _ranks(x: np.ndarray) -> np.ndarray:
    r = np.empty(len(x))
    r[np.argsort(x, kind="stable")] = np.arange(len(x))
    return r


def measure(annotator: Annotator, instances: list[Instance]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(IoU per instance, candidate -> score per instance), each image decoded once and its boxes batched."""
    by_image: dict[str, list[int]] = {}
    for k, inst in enumerate(instances):
        by_image.setdefault(str(inst.image_path), []).append(k)
    ious = np.zeros(len(instances))
    scores: dict[str, np.ndarray] = {}
    for path, idx in by_image.items():
        image = load_image(path)
        traced = annotator.annotate(image, [instances[k].box_xyxy for k in idx])
        for k, t in zip(idx, traced, strict=True):
            inst = instances[k]
            pred = rasterize([t.polygon] if t.polygon is not None else [], inst.height, inst.width)
            ious[k] = mask_iou(pred, inst.mask(), inst.ignore_mask())
            for name, v in t.scores.items():
                scores.setdefault(name, np.zeros(len(instances)))[k] = v
    return ious, scores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default=None, help="a dataset with ground truth (any format)")
    ap.add_argument("--held-out", action="store_true", help="the held-out training images instead")
    ap.add_argument("--min-size", type=float, default=0.0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.held_out:
        from polyrnn.refine_training import load_refiner_config, split_instances

        instances = split_instances(load_refiner_config("refiner"))[1]
        what = "held-out training images"
    elif args.dataset:
        instances = load_dataset(args.dataset).instances
        what = args.dataset
    else:
        ap.error("give --dataset or --held-out")
    instances = [i for i in instances if i.long_side >= args.min_size and not i.iscrowd]
    t0 = time.perf_counter()
    ious, scores = measure(Annotator.from_weights(), instances)
    print(
        f"{len(instances)} objects of {what}: mean IoU {100 * ious.mean():.1f} "
        f"({time.perf_counter() - t0:.0f} s)"
    )
    print("| confidence | Pearson | Spearman | mean IoU, least confident 20 % | the rest |")
    print("|---|---|---|---|---|")
    cut = max(1, len(ious) // 5)
    for name, s in scores.items():
        pearson = float(np.corrcoef(s, ious)[0, 1])
        spearman = float(np.corrcoef(_ranks(s), _ranks(ious))[0, 1])
        low = np.argsort(s, kind="stable")[:cut]
        rest = np.setdiff1d(np.arange(len(s)), low)
        print(
            f"| {name} | {pearson:.3f} | {spearman:.3f} | {100 * ious[low].mean():.1f} | "
            f"{100 * ious[rest].mean():.1f} |"
        )


if __name__ == "__main__":
    main()
