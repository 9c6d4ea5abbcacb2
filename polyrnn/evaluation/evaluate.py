"""``polyrnn evaluate``, the running: automatic IoU, the paper's simulated annotator, clicks to quality (NoC),
baselines and timing per instance (:func:`evaluate_dataset`). The summary, ``report.json``, ``report.md`` and
the plots: :mod:`polyrnn.evaluation.report`.

Every IoU is measured per instance at full image resolution against the instance's whole ground truth
(all parts, occluders cut out, ignore regions not counted); JSON holds fractions 0–1, Markdown percent.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from polyrnn.config import INFERENCE, MASK_FLIP, REJOIN
from polyrnn.data.crop import CropBox
from polyrnn.data.instance import Instance, load_image
from polyrnn.data.sequence import polygon_to_tokens
from polyrnn.evaluation.annotator import threshold_protocol
from polyrnn.evaluation.baselines import box_polygon, grabcut_mask
from polyrnn.evaluation.clicks import (
    MIN_PART,
    NEAR,
    Correction,
    Pieces,
    click_protocol,
    clicks_to_quality,
    far_changes,
    part_side,
)
from polyrnn.geometry import mask_iou, rasterize
from polyrnn.modeling.mask_net import MaskNet, mask_polygon
from polyrnn.modeling.polygon_rnn import PolygonRNN
from polyrnn.modeling.refiner import Refiner
from polyrnn.session import CONFINE, ENGINES, BoxEncoding, BoxSession, EngineConfig, ObjectSession

BASELINES = ("box", "grabcut", "mask")


@dataclass(frozen=True)
class EvalOptions:
    thresholds: tuple[int, ...] = (1, 2, 3, 4)
    noc: tuple[int, ...] = (85, 90)
    baselines: tuple[str, ...] = BASELINES
    max_corrections: int = 20
    context: float = INFERENCE.context
    eos_threshold: float = INFERENCE.eos_threshold
    start: str = (
        "rnn"  # automatic polygon: "rnn" (first-vertex head + decoder) | "mask" (mask model's polygon)
    )
    mask_tolerance: float = INFERENCE.tolerance  # outline simplification, mask pixels (see mask_polygon)
    mask_flip: bool = MASK_FLIP  # mask test-time flip averaging
    rejoin: int | None = REJOIN  # rejoin the old polygon within this many cells after a correction
    engines: tuple[str, ...] = tuple(ENGINES)  # correction engines driven by the clicks-to-quality annotator
    # engines also driven by the standard click protocol (positive/negative clicks; those that take clicks)
    click_engines: tuple[str, ...] = tuple(e for e, engine in ENGINES.items() if engine.takes_clicks)
    near: float = NEAR  # the annotator drags a vertex within this many box long sides, else inserts one
    confine: float = CONFINE  # a correction changes the polygon within this many box long sides (guard rail)
    focus: bool = INFERENCE.focus  # refine: the refiner's focus pass around each correction (when it has one)
    # the annotators add a part (a box) for a piece of the object no part covers, of at least this many box
    # long sides (math.inf: never; the paper's threshold protocol never does)
    min_part: float = MIN_PART


@dataclass
class InstanceResult:
    """Everything measured on one instance (IoUs as fractions)."""

    class_name: str
    automatic: float
    ceiling: float
    gt_vertices: int  # the ground truth's vertices on the grid (what the annotator walks)
    human_vertices: int = 0  # the human-drawn polygon's (its largest part), before quantisation
    vertices: int = 0  # the automatic polygon's
    final_vertices: dict[str, int] = field(default_factory=dict)  # engine -> after its corrections
    # engine -> (vertices farther than half a box side from the first correction, how many of them it moved)
    far_moved: dict[str, tuple[int, int]] = field(default_factory=dict)
    annotator: dict[int, tuple[float, int]] = field(default_factory=dict)  # T -> (IoU, corrections)
    curves: dict[str, list[float]] = field(default_factory=dict)  # engine -> IoU after k = 0..max corrections
    click_curves: dict[str, list[float]] = field(default_factory=dict)  # engine -> IoU after k clicks
    parts: dict[str, int] = field(
        default_factory=dict
    )  # engine -> parts after its corrections (1: none added)
    click_parts: dict[str, int] = field(default_factory=dict)  # engine -> parts after the click protocol
    gt_parts: int = 1  # the ground truth's pieces of at least the smallest part the annotator would box
    automatic_rnn: float = math.nan  # the decoder's own automatic polygon (when the start is the mask's)
    baselines: dict[str, float] = field(default_factory=dict)
    ms: dict[str, float] = field(default_factory=dict)  # "model" and each baseline
    grabcut_collapsed: bool = False


def _progress(items: Sequence[Any], desc: str) -> Any:
    return tqdm(items, desc=desc, unit="inst", disable=not sys.stderr.isatty(), dynamic_ncols=True)


def crop_tensor(crop: CropBox, image: np.ndarray) -> tuple[np.ndarray, torch.Tensor]:
    """The crop's (224, 224, 3) uint8 pixels of ``image`` and the same as a (1, 3, 224, 224) float tensor."""
    pixels = crop.crop_image(image)
    return pixels, torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1).unsqueeze(0).float()


def human_vertices(polygon: np.ndarray) -> int:
    """Vertices of a human-drawn (N, 2) polygon, a repeated closing vertex not counted."""
    p = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
    return len(p) - int(len(p) > 1 and bool(np.array_equal(p[0], p[-1])))


def _baselines(
    res: InstanceResult,
    inst: Instance,
    image: np.ndarray,
    options: EvalOptions,
    iou_of: Callable[[list[np.ndarray]], float],
) -> None:
    """The box and GrabCut baselines (IoU and milliseconds) into ``res``."""
    if "box" in options.baselines:
        t0 = time.perf_counter()
        res.baselines["box"] = iou_of([box_polygon(inst.box)])
        res.ms["box"] = (time.perf_counter() - t0) * 1000
    if "grabcut" in options.baselines:
        t0 = time.perf_counter()
        gc, res.grabcut_collapsed = grabcut_mask(image, inst)
        res.ms["grabcut"] = (time.perf_counter() - t0) * 1000
        res.baselines["grabcut"] = mask_iou(gc, inst.mask(), inst.ignore_mask())


def _engine(name: str, options: EvalOptions) -> EngineConfig:
    return EngineConfig(
        name=name,
        confine=options.confine,
        rejoin=options.rejoin,
        eos_threshold=options.eos_threshold,
        mask_flip=options.mask_flip,
        context=options.context,
        tolerance=options.mask_tolerance,
        focus=options.focus,
    )


def _engine_curves(
    res: InstanceResult,
    enc: BoxEncoding,
    options: EvalOptions,
    gt_mask: np.ndarray,
    ignore: np.ndarray | None,
) -> None:
    """Into ``res``: clicks to quality (drags and inserts) for each engine and the polygon's vertices after
    them, and the standard click protocol for each engine that takes clicks; each from the same automatic
    polygon and the same encodings."""
    for name in options.engines:
        session = ObjectSession(BoxSession(enc, _engine(name, options)))

        def first(c: Correction, before: np.ndarray, after: np.ndarray, name: str = name) -> None:
            if name not in res.far_moved:
                res.far_moved[name] = far_changes(before, after, c.point, 0.5 * enc.long_side)

        res.curves[name] = clicks_to_quality(
            session,
            gt_mask,
            ignore,
            max_corrections=options.max_corrections,
            near=options.near,
            min_part=options.min_part,
            on_correction=first,
        )
        res.final_vertices[name] = len(session.first.polygon)
        res.parts[name] = len(session.parts)
    for name in (e for e in options.click_engines if e in options.engines):
        session = ObjectSession(BoxSession(enc, _engine(name, options)))
        res.click_curves[name] = click_protocol(
            session, gt_mask, ignore, max_clicks=options.max_corrections, min_part=options.min_part
        )
        res.click_parts[name] = len(session.parts)


def evaluate_instance(
    model: PolygonRNN,
    inst: Instance,
    image: np.ndarray,
    options: EvalOptions,
    *,
    mask_model: MaskNet | None = None,
    refiner: Refiner | None = None,
) -> InstanceResult:
    """Measure one instance: automatic IoU, the threshold protocol per T, the clicks-to-quality curve,
    the grid ceiling and the baselines, with timings."""
    d = model.grid_size
    crop = CropBox.around(inst.box, context=options.context, crop_size=model.crop_size, grid_size=d)
    gt_mask, ignore = inst.mask(), inst.ignore_mask()
    gt_poly = inst.largest_polygon()
    gt_tokens = [int(t) for t in polygon_to_tokens(gt_poly, crop, max_len=model.max_len)[:-1]]

    def iou_of(polys: list[np.ndarray]) -> float:
        return mask_iou(rasterize(polys, inst.height, inst.width), gt_mask, ignore)

    def grid_iou(tokens: list[int]) -> float:
        return iou_of([crop.cells_to_image(crop.tokens_to_cells(np.array(tokens, dtype=np.int64)))])

    # the grid ceiling: the quantised ground truth itself (as polyrnn.data.ceiling, on this crop)
    res = InstanceResult(
        class_name=inst.class_name,
        automatic=math.nan,
        ceiling=grid_iou(gt_tokens),
        gt_vertices=len(gt_tokens),
        human_vertices=human_vertices(gt_poly),
    )

    # the mask model: its polygon is a baseline and, with start "mask", the automatic polygon
    mask_poly: np.ndarray | None = None
    enc = BoxEncoding(
        image,
        inst.box_xyxy,
        polygon_model=model,
        mask_model=mask_model,
        refiner=refiner,
        context=options.context,
        mask_flip=options.mask_flip,
        eos_threshold=options.eos_threshold,
        start=options.start,
        tolerance=options.mask_tolerance,
    )
    if mask_model is not None:
        t0 = time.perf_counter()
        prob = enc.mask_probability()
        mask_poly = mask_polygon(prob, crop, tolerance=options.mask_tolerance)
        res.ms["mask"] = (time.perf_counter() - t0) * 1000
        if "mask" in options.baselines:
            res.baselines["mask"] = iou_of([mask_poly] if mask_poly is not None else [])

    t0 = time.perf_counter()
    auto, _ = enc.automatic()  # the mask model's outline, or the decoder's polygon (options.start)
    res.ms["model"] = (time.perf_counter() - t0) * 1000 + res.ms.get("mask", 0.0)
    res.automatic = iou_of([auto])
    res.vertices = len(auto)
    if mask_poly is not None and options.start != "rnn":  # the decoder's own, from the same encoding
        res.automatic_rnn = iou_of([enc.decoder_polygon()[0]])

    if len(gt_tokens) >= 3:
        for t in options.thresholds:  # the paper's protocol, through the session with the paper's engine
            engine = replace(
                _engine("rnn", options), confine=math.inf
            )  # the paper's annotator: no reach limit
            poly, clicks = threshold_protocol(BoxSession(enc, engine), gt_tokens, t)
            res.annotator[t] = (iou_of([poly]), clicks)
    else:  # degenerate on the grid: nothing to correct towards
        res.annotator = {t: (res.automatic, 0) for t in options.thresholds}
    if math.isfinite(options.min_part):
        side = part_side(options.min_part, enc.long_side)
        res.gt_parts = Pieces.of(gt_mask, ignore, min_side=side).boxable()
    if options.max_corrections >= 0:
        _engine_curves(res, enc, options, gt_mask, ignore)
    _baselines(res, inst, image, options, iou_of)
    return res


def evaluate_dataset(
    model: PolygonRNN,
    instances: Sequence[Instance],
    options: EvalOptions,
    *,
    mask_model: MaskNet | None = None,
    refiner: Refiner | None = None,
    log: Callable[[str], None] | None = None,
) -> list[InstanceResult]:
    """:func:`evaluate_instance` over ``instances`` (each image decoded once), with a progress bar (or a
    plain line every 50 instances when not on a terminal)."""
    model.eval()
    if mask_model is not None:
        mask_model.eval()
    order = sorted(range(len(instances)), key=lambda i: (str(instances[i].image_path), i))
    results: list[InstanceResult | None] = [None] * len(instances)
    image_key, image = "", np.zeros((1, 1, 3), np.uint8)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for n, i in enumerate(_progress(order, "evaluate")):
            inst = instances[i]
            if str(inst.image_path) != image_key:
                image_key, image = str(inst.image_path), load_image(inst.image_path)
            results[i] = evaluate_instance(
                model, inst, image, options, mask_model=mask_model, refiner=refiner
            )
            if log is not None and not sys.stderr.isatty() and (n + 1) % 50 == 0:
                rate = (n + 1) / (time.perf_counter() - t0)
                log(f"evaluate: {n + 1}/{len(order)} instances, {rate:.2f} inst/s")
    return [r for r in results if r is not None]
