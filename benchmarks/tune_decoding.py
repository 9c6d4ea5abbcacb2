"""Choose decoding rules on training data only: the images a recipe's ``data.val_split`` holds out of the
training sets (never coco-mini/val2017).

    python benchmarks/tune_decoding.py --recipe lite-mask --tolerance 0.75,1.5 --rejoin 0,1

prints, for each setting, the automatic mean IoU and the simulated annotator (T = 1 by default):
corrections per ground-truth vertex and IoU, on the held-out training instances (box side >= 32 px).
"""

from __future__ import annotations

import argparse
import itertools
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from shapely.geometry import LineString, Point

from polyrnn.build import default_weights, load_mask_model, load_polygon_model, read_checkpoint
from polyrnn.config import TrainConfig, load_train_config
from polyrnn.data.crop import CropBox
from polyrnn.data.instance import Instance, load_image
from polyrnn.data.sequence import polygon_to_tokens
from polyrnn.evaluation.evaluate import EvalOptions, crop_tensor, evaluate_dataset
from polyrnn.modeling.mask_net import MaskNet, mask_polygon
from polyrnn.training import load_instances


def outline_gap(
    mask_model: MaskNet, instances: list[Instance], *, flip: bool, tolerance: float, grid_size: int
) -> tuple[int, int]:
    """(ground-truth grid vertices farther than one cell, Euclidean, from the mask polygon's grid outline,
    all ground-truth grid vertices): the corrections a perfect vertex placement along the mask's outline
    would still need at T = 1, at most."""
    d, far, n = grid_size, 0, 0
    mask_model.eval()
    with torch.inference_mode():
        for inst in instances:
            crop = CropBox.around(
                inst.box, context=EvalOptions.context, crop_size=mask_model.crop_size, grid_size=d
            )
            _, x = crop_tensor(crop, load_image(inst.image_path))
            gt = polygon_to_tokens(inst.largest_polygon(), crop)[:-1]
            poly = mask_polygon(mask_model.predict_masks(x, flip=flip)[0].numpy(), crop, tolerance=tolerance)
            n += len(gt)
            if poly is None:
                far += len(gt)
                continue
            tokens = polygon_to_tokens(poly, crop)[:-1]
            xy = np.stack([tokens % d, tokens // d], axis=1).astype(np.float64)
            ring = LineString(np.concatenate([xy, xy[:1]]))
            far += sum(Point(t % d, t // d).distance(ring) > 1.0 for t in gt)
    return far, n


def saw_held_out(weights: Path, cfg: TrainConfig) -> str:
    """Why the polygon model in ``weights`` may have trained on ``cfg``'s held-out images ("" when its own
    training config held out the same split: same sets, split, seed and size filter; a run it was
    initialised from is not checked)."""
    train = read_checkpoint(weights).get("train_config")
    if not train:
        return "its checkpoint does not record how it was trained"
    d = train.get("data", {})
    same = (
        tuple(d.get("train", ())) == cfg.data.train
        and not d.get("val")
        and d.get("val_split") == cfg.data.val_split
        and d.get("min_size") == cfg.data.min_size
        and train.get("seed") == cfg.seed
    )
    return "" if same else f"it was trained on {list(d.get('train', []))} without this held-out split"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--recipe", default="lite-mask", help="recipe whose val_split defines the held-out images"
    )
    ap.add_argument("--weights", default=None, help="polygon model (default: the shipped lite)")
    ap.add_argument("--mask-weights", default=None, help="mask model (default: the shipped lite-mask)")
    ap.add_argument("--min-size", type=float, default=32.0)
    ap.add_argument("--thresholds", default="1")
    ap.add_argument("--tolerance", default="0.75", help="mask polygon simplification (mask pixels), list")
    ap.add_argument("--rejoin", default="-1", help="rejoin distance in grid cells (-1 = off), list")
    ap.add_argument("--flip", default="0", help="mask test-time flip averaging 0/1, list")
    ap.add_argument("--eos", default="0.5", help="decoder end threshold p(end) >= this, list")
    ap.add_argument("--start", default="mask", help="automatic polygon: mask (the mask model's) | rnn, list")
    ap.add_argument("--curve", type=int, default=-1, help="clicks-to-quality corrections (-1 = skip)")
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument(
        "--outline-gap",
        action="store_true",
        help="only count the ground-truth vertices more than one cell off the mask's outline",
    )
    args = ap.parse_args()

    cfg = load_train_config(args.recipe, [])
    _, held = load_instances(cfg)
    held = [i for i in held if max(i.box[2], i.box[3]) >= args.min_size]  # as --min-size: the longer side
    if args.limit:
        held = held[: args.limit]
    model, weights = load_polygon_model(args.weights, "lite")
    why = saw_held_out(weights, cfg)
    if why:
        print(f"warning: {weights.name} may have trained on these images ({why}): its figures flatter it")
    mask_model = load_mask_model(args.mask_weights or default_weights("lite-mask"))
    print(f"{len(held)} held-out training instances (recipe {args.recipe}, val_split {cfg.data.val_split})")
    if args.outline_gap:
        far, n = outline_gap(
            mask_model,
            held,
            flip=bool(int(args.flip.split(",")[0])),
            tolerance=float(args.tolerance.split(",")[0]),
            grid_size=model.grid_size,
        )
        print(
            f"ground-truth vertices more than 1 cell off the mask's outline: "
            f"{far}/{n} = {far / max(n, 1):.3f}"
        )
        return
    thresholds = tuple(int(t) for t in args.thresholds.split(","))
    grid = itertools.product(
        [float(v) for v in args.tolerance.split(",")],
        [int(v) for v in args.rejoin.split(",")],
        [bool(int(v)) for v in args.flip.split(",")],
        [float(v) for v in args.eos.split(",")],
        args.start.split(","),
    )
    base = EvalOptions(
        thresholds=thresholds, baselines=("box",), max_corrections=args.curve, engines=("rnn",)
    )
    for tol, rejoin, flip, eos, start in grid:
        options = replace(
            base,
            mask_tolerance=tol,
            rejoin=rejoin if rejoin >= 0 else None,
            mask_flip=flip,
            eos_threshold=eos,
            start=start,
        )
        t0 = time.perf_counter()
        res = evaluate_dataset(model, held, options, mask_model=mask_model)
        auto = 100 * np.mean([r.automatic for r in res])
        box = 100 * np.mean([r.baselines["box"] for r in res])
        gtv = np.sum([r.gt_vertices for r in res])
        line = f"start {start} tolerance {tol:g} rejoin {rejoin} flip {int(flip)} eos {eos:g}: "
        line += f"automatic {auto:.2f} (box {box:.2f})"
        for t in thresholds:
            clicks = np.sum([r.annotator[t][1] for r in res])
            iou = 100 * np.mean([r.annotator[t][0] for r in res])
            line += f" | T={t}: {clicks / gtv:.3f} corr/GT vertex, IoU {iou:.2f}"
        if args.curve >= 0:
            curve = 100 * np.mean([r.curves["rnn"] for r in res], axis=0)
            line += " | curve " + "/".join(f"{v:.1f}" for v in curve[: min(len(curve), 6)])
            for level in (85, 90):
                noc = [
                    next((k for k, v in enumerate(r.curves["rnn"]) if v >= level / 100), args.curve)
                    for r in res
                ]
                line += f" NoC@{level} {np.mean(noc):.2f}"
        print(f"{line} [{time.perf_counter() - t0:.0f} s]", flush=True)


if __name__ == "__main__":
    main()
