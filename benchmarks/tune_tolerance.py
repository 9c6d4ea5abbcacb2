"""Choose the outlines' default vertex density on training data only: the images the ``lite-mask`` recipe's
``data.val_split`` holds out of the training sets (never coco-mini/val2017).

    python benchmarks/tune_tolerance.py --tolerance 0.75,1.5,2,2.5,3,4

prints, per simplification tolerance (mask pixels), the mean IoU of the shipped mask model's outline, its
median vertex count and the median per-object ratio to the human polygon's, and the tolerance the rule picks:
the coarsest whose mean IoU is within ``--slack`` (0.25 points) of the best (:func:`polyrnn.learning.
choose_tolerance`, the rule ``polyrnn learn`` applies to a team's own polygons).
"""

from __future__ import annotations

import argparse
import time

from polyrnn.build import default_weights
from polyrnn.config import load_train_config
from polyrnn.learning import choose_tolerance
from polyrnn.training import load_instances


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="lite-mask")
    ap.add_argument("--tolerance", default="0.75,1.5,2,2.5,3,4", help="candidates, mask pixels")
    ap.add_argument(
        "--slack",
        type=float,
        default=0.0025,
        help="IoU (fraction) the coarser may lose: 0.25 points, a margin for new images",
    )
    ap.add_argument("--min-size", type=float, default=32.0)
    args = ap.parse_args()

    cfg = load_train_config(args.recipe, [])
    _, held = load_instances(cfg)
    held = [i for i in held if max(i.box[2], i.box[3]) >= args.min_size]
    print(f"{len(held)} held-out training instances (recipe {args.recipe}, val_split {cfg.data.val_split})")
    t0 = time.perf_counter()
    tolerances = [float(v) for v in args.tolerance.split(",")]
    out = choose_tolerance(default_weights("lite-mask"), held, slack=args.slack, tolerances=tolerances)
    print(f"human polygons: median {out['human_vertices']:g} vertices")
    print("| tolerance (mask px) | mean IoU | median vertices | median ratio to human |")
    print("|---:|---:|---:|---:|")
    for t in tolerances:
        k = str(t)
        print(f"| {t:g} | {100 * out['iou'][k]:.2f} | {out['vertices'][k]:g} | {out['ratio'][k]:.2f} |")
    print(f"chosen: {out['tolerance']:g} (coarsest within {100 * args.slack:g} points of the best)")
    print(f"[{time.perf_counter() - t0:.0f} s]")


if __name__ == "__main__":
    main()
