"""Choose the correction engine's rules on held-out *training* images (never coco-mini/val2017).

The held-out images are the refiner recipe's ``val_split`` (10 % of the training images, the split the refiner
never trained on), boxes with a long side of at least 32 px, as ``polyrnn evaluate`` counts them:

    python benchmarks/tune_corrections.py --refiner runs/train/refiner/weights/best.pt --confine 0.25,0.5,1

prints, for each engine and setting, the mean IoU after k corrections of the clicks-to-quality annotator
(``polyrnn.evaluation.clicks``), NoC@85 / @90 and the share of instances below their start after k;
``--protocol clicks``: the standard click protocol (positive / negative clicks) instead.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from polyrnn.build import load_models
from polyrnn.config import INFERENCE
from polyrnn.data.instance import load_image
from polyrnn.evaluation.clicks import MIN_PART, NEAR, click_protocol, clicks_to_quality, far_changes
from polyrnn.refine_training import load_refiner_config, split_instances
from polyrnn.session import BoxEncoding, BoxSession, EngineConfig, ObjectSession


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--refiner", default=None, help="refiner weights (default: the shipped one)")
    ap.add_argument("--engines", default="refine,rnn,manual")
    ap.add_argument(
        "--confine", default=f"{INFERENCE.confine:g}", help="guard-rail reach in box long sides, list"
    )
    ap.add_argument("--focus", default="1", help="refine: the refiner's focus pass (1) or not (0), list")
    ap.add_argument("--near", type=float, default=NEAR)
    ap.add_argument(
        "--min-part",
        default=f"{MIN_PART:g}",
        help="add a part for an uncovered piece of at least this many box long sides (inf: never), list",
    )
    ap.add_argument(
        "--protocol",
        choices=("drags", "clicks"),
        default="drags",
        help="the editor's drags (clicks to quality) or the standard click protocol (+/- clicks)",
    )
    ap.add_argument(
        "--tolerance", type=float, default=INFERENCE.tolerance, help="outline simplification, mask pixels"
    )
    ap.add_argument(
        "--mask-weights", default=None, help="mask model (default: the shipped one; --refiner must match it)"
    )
    ap.add_argument("--corrections", type=int, default=10)
    ap.add_argument("--limit", type=int, default=0, help="first N held-out instances only")
    ap.add_argument("--min-size", type=float, default=32.0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    models = load_models(mask_weights=args.mask_weights, refiner_weights=args.refiner)
    _, held = split_instances(load_refiner_config("refiner"))
    held = [i for i in held if i.long_side >= args.min_size]
    held = held[: args.limit] if args.limit else held
    print(f"{len(held)} held-out training instances (box long side >= {args.min_size:g} px)")
    ks = [k for k in (0, 1, 2, 3, 5, 10, 20) if k <= args.corrections]
    for engine in args.engines.split(","):
        settings = [
            (float(c), f == "1", float(m))
            for c in args.confine.split(",")
            for f in args.focus.split(",")
            for m in args.min_part.split(",")
        ]
        for confine, focus, min_part in settings:
            t0, curves, far, vertices, parts = time.perf_counter(), [], [], [], []
            image_key, image = "", None
            for inst in held:
                if str(inst.image_path) != image_key:
                    image_key, image = str(inst.image_path), load_image(inst.image_path)
                assert image is not None
                enc = BoxEncoding(
                    image,
                    inst.box_xyxy,
                    polygon_model=models.polygon,
                    mask_model=models.mask,
                    refiner=models.refiner,
                    tolerance=args.tolerance,
                )
                config = EngineConfig(name=engine, confine=confine, tolerance=args.tolerance, focus=focus)
                session = ObjectSession(BoxSession(enc, config))
                seen: list[tuple[int, int]] = []

                def first(c, before, after, seen=seen, half=0.5 * enc.long_side):  # type: ignore[no-untyped-def]
                    if not seen:
                        seen.append(far_changes(before, after, c.point, half))

                if args.protocol == "clicks":
                    curves.append(
                        click_protocol(
                            session,
                            inst.mask(),
                            inst.ignore_mask(),
                            max_clicks=args.corrections,
                            min_part=min_part,
                        )
                    )
                    vertices.append(len(session.first.polygon))
                    parts.append(len(session.parts))
                    continue
                curves.append(
                    clicks_to_quality(
                        session,
                        inst.mask(),
                        inst.ignore_mask(),
                        max_corrections=args.corrections,
                        near=args.near,
                        min_part=min_part,
                        on_correction=first,
                    )
                )
                far.extend(seen)
                vertices.append(len(session.first.polygon))
                parts.append(len(session.parts))
            c = np.array(curves)
            noc = {
                lv: np.mean(
                    [next((k for k, v in enumerate(r) if v >= lv / 100), args.corrections) for r in c]
                )
                for lv in (85, 90)
            }
            below = (c < c[:, :1] - 1e-9).mean(0)
            print(
                f"{engine:7s} confine {confine:g} focus {'on' if focus else 'off'} min-part {min_part:g}: "
                + " ".join(f"k={k} {100 * c[:, k].mean():.1f}" for k in ks)
                + f" | NoC@85 {noc[85]:.2f} NoC@90 {noc[90]:.2f} | below start k=1 {100 * below[1]:.0f} % "
                f"k={args.corrections} {100 * below[-1]:.0f} % | first correction moved "
                f"{100 * sum(m for _, m in far) / max(sum(n for n, _ in far), 1):.0f} % of the vertices "
                f"> 0.5 box side away | median vertices after {args.corrections}: "
                f"{np.median(vertices):g} | parts added to {100 * np.mean(np.array(parts) > 1):.1f} % "
                f"| {time.perf_counter() - t0:.0f} s"
            )


if __name__ == "__main__":
    main()
