"""``polyrnn evaluate``: automatic IoU, the paper's simulated annotator, clicks to quality (NoC), baselines,
timing, written as ``report.json``, ``report.md`` and plots.

Every IoU is measured per instance at full image resolution against the instance's whole ground truth
(all parts, occluders cut out, ignore regions not counted); JSON holds fractions 0–1, Markdown percent.
"""

from __future__ import annotations

import io
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from polyrnn.config import INFERENCE, MASK_FLIP, REJOIN
from polyrnn.data.crop import CropBox
from polyrnn.data.instance import Instance, load_image
from polyrnn.data.sequence import polygon_to_tokens
from polyrnn.evaluation.annotator import ModelSession, threshold_protocol
from polyrnn.evaluation.baselines import box_polygon, grabcut_mask
from polyrnn.evaluation.clicks import NEAR, clicks_to_quality
from polyrnn.evaluation.metrics import summarize
from polyrnn.geometry import mask_iou, rasterize, signed_area
from polyrnn.io import atomic_write_bytes, atomic_write_json, atomic_write_text, sha256_file
from polyrnn.modeling.mask_net import MaskNet, mask_polygon
from polyrnn.modeling.polygon_rnn import PolygonRNN
from polyrnn.modeling.refiner import Refiner
from polyrnn.session import CONFINE, ENGINES, BoxEncoding, BoxSession, EngineConfig

BASELINES = ("box", "grabcut", "mask")

MATCHING = (
    "Threshold protocol (the paper's Table 4): the ground-truth largest part is quantised to the 28x28 grid "
    "like the training targets and rotated so that its first vertex is the one nearest (chessboard "
    "distance) to the predicted first vertex; predicted vertex k is matched with ground-truth vertex k. "
    "Walking k = 0, 1, ...: a predicted vertex farther than T cells (chessboard) from its match is replaced "
    "by the match and everything after it is re-predicted (one correction); if the model stops before the "
    "last ground-truth vertex the annotator adds the next one (one correction); if it runs past the last, "
    "the annotator cuts it there (one correction). Clicks to quality: in the largest error region between "
    "the polygon's mask and the ground truth, at its innermost point, the annotator drags the nearest vertex "
    "it did "
    "not place onto the nearest ground-truth boundary point (or inserts a vertex there when none is within "
    "`near` box long sides), through the editor's own session, each engine from the same automatic polygon; "
    "NoC@X is the number of corrections after which the IoU first reaches X % (max_corrections when never)."
)


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
    mask_tolerance: float = 0.75  # mask polygon simplification, mask pixels (see mask_polygon)
    mask_flip: bool = MASK_FLIP  # mask test-time flip averaging
    rejoin: int | None = REJOIN  # rejoin the old polygon within this many cells after a correction
    engines: tuple[str, ...] = tuple(ENGINES)  # correction engines driven by the clicks-to-quality annotator
    near: float = NEAR  # the annotator drags a vertex within this many box long sides, else inserts one
    confine: float = CONFINE  # a correction changes the polygon within this many box long sides (guard rail)


@dataclass
class InstanceResult:
    """Everything measured on one instance (IoUs as fractions)."""

    class_name: str
    automatic: float
    ceiling: float
    gt_vertices: int  # the ground truth's vertices on the grid (what the annotator walks)
    human_vertices: int = 0  # the human-drawn polygon's (its largest part), before quantisation
    annotator: dict[int, tuple[float, int]] = field(default_factory=dict)  # T -> (IoU, corrections)
    curves: dict[str, list[float]] = field(default_factory=dict)  # engine -> IoU after k = 0..max corrections
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


def outline_runs(polygon: np.ndarray, tokens: list[int], crop: CropBox) -> dict[int, np.ndarray]:
    """For grid ``tokens`` quantised from an exact image ``polygon`` (N, 2) (by ``polygon_to_tokens``),
    token -> the exact outline from that token's vertex up to (not including) the next token's: (K, 2)
    image pixels. A polygon that keeps consecutive tokens of it keeps that exact outline (as the editor
    keeps the points it was given). Empty when the tokens do not follow the outline in one turn."""
    p: np.ndarray = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
    if signed_area(crop.image_to_grid(p)) < 0:  # tokens are oriented positively
        p = p[::-1]
    cells = crop.cells_to_tokens(crop.image_to_cells(p))
    where: list[int] = []
    for t in tokens:
        hits = np.flatnonzero(cells == t)
        if not len(hits):
            return {}
        where.append(int(hits[0]))
    n = len(p)
    start = where[0]
    rel = [(w - start) % n for w in where]
    if rel != sorted(rel) or len(set(rel)) != len(rel):
        return {}
    ends = rel[1:] + [n]
    return {t: p[[(start + k) % n for k in range(a, b)]] for t, a, b in zip(tokens, rel, ends, strict=True)}


def _exact_scorer(
    iou_of: Callable[[list[np.ndarray]], float],
    grid_iou: Callable[[list[int]], float],
    crop: CropBox,
    mask_poly: np.ndarray | None,
    initial: list[int] | None,
) -> Callable[[list[int]], float]:
    """IoU of a token polygon where vertices kept from the mask model's polygon keep their exact place, and
    the exact outline to the next one where that is kept too (as in the editor); model and annotator
    vertices are cell centres. Without a mask polygon: the grid polygon's IoU."""
    runs = outline_runs(mask_poly, initial, crop) if initial is not None and mask_poly is not None else {}
    if not runs:
        return grid_iou
    ring = initial or []
    successor = dict(zip(ring, ring[1:] + ring[:1], strict=True))

    def score(tokens: list[int]) -> float:
        centres = crop.cells_to_image(crop.tokens_to_cells(np.array(tokens, dtype=np.int64)))
        pts: list[np.ndarray] = []
        for j, t in enumerate(tokens):
            if t not in runs:
                pts.append(centres[j : j + 1])
            elif successor[t] == tokens[(j + 1) % len(tokens)]:
                pts.append(runs[t])
            else:
                pts.append(runs[t][:1])
        return iou_of([np.concatenate(pts)])

    return score


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


def _engine_curves(
    enc: BoxEncoding, options: EvalOptions, gt_mask: np.ndarray, ignore: np.ndarray | None
) -> dict[str, list[float]]:
    """Clicks to quality for each engine, each from the same automatic polygon and the same encodings."""
    curves = {}
    for name in options.engines:
        engine = EngineConfig(
            name=name,
            confine=options.confine,
            rejoin=options.rejoin,
            eos_threshold=options.eos_threshold,
            mask_flip=options.mask_flip,
            context=options.context,
        )
        session = BoxSession(enc, engine)
        curves[name] = clicks_to_quality(
            session, gt_mask, ignore, max_corrections=options.max_corrections, near=options.near
        )
    return curves


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

    pixels = crop.crop_image(image)
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
    )
    if mask_model is not None:
        t0 = time.perf_counter()
        prob = enc.mask_probability()
        mask_poly = mask_polygon(prob, crop, tolerance=options.mask_tolerance)
        res.ms["mask"] = (time.perf_counter() - t0) * 1000
        if "mask" in options.baselines:
            res.baselines["mask"] = iou_of([mask_poly] if mask_poly is not None else [])

    t0 = time.perf_counter()
    initial: list[int] | None = None
    if options.start == "mask" and mask_poly is not None:
        initial = [int(t) for t in polygon_to_tokens(mask_poly, crop, max_len=model.max_len)[:-1]]
    session = ModelSession(
        model, pixels, eos_threshold=options.eos_threshold, initial=initial, rejoin=options.rejoin
    )
    auto_tokens = session.complete([session.first()])
    res.ms["model"] = (time.perf_counter() - t0) * 1000 + (res.ms.get("mask", 0.0) if initial else 0.0)
    exact = _exact_scorer(iou_of, grid_iou, crop, mask_poly, initial)

    def score(tokens: list[int]) -> float:
        if initial is not None and tokens == session.initial:  # the automatic polygon, not quantised
            return res.automatic
        return exact(tokens)

    if initial is not None and mask_poly is not None:
        res.automatic = iou_of([mask_poly])
        # the decoder's own automatic polygon, from the same encoding
        first, _ = model.first_vertices(session.vertex_logits)
        dec = model.decode(session.static, [int(first[0, 0])], eos_threshold=options.eos_threshold)
        res.automatic_rnn = grid_iou(dec.tokens)
    else:
        res.automatic = score(auto_tokens)

    if len(gt_tokens) >= 3:
        for t in options.thresholds:
            tokens, clicks = threshold_protocol(session, gt_tokens, t, d)
            res.annotator[t] = (score(tokens), clicks)
    else:  # degenerate on the grid: nothing to correct towards
        res.annotator = {t: (res.automatic, 0) for t in options.thresholds}
    if options.max_corrections >= 0:
        res.curves = _engine_curves(enc, options, gt_mask, ignore)
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


def _noc(curve: list[float], level: float, cap: int) -> int:
    for k, v in enumerate(curve):
        if v >= level:
            return k
    return cap


def _baseline_summary(
    results: Sequence[InstanceResult], options: EvalOptions, classes: list[str]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in options.baselines:
        vals = [r.baselines[name] for r in results if name in r.baselines]
        if len(vals) != len(results):
            continue
        s = summarize(vals, classes)
        s["ms_per_instance"] = float(np.mean([r.ms[name] for r in results])) if results else math.nan
        if name == "grabcut":
            s["collapsed"] = int(sum(r.grabcut_collapsed for r in results))
        out[name] = s
    return out


def _annotator_rows(
    results: Sequence[InstanceResult], options: EvalOptions, classes: list[str]
) -> list[dict[str, Any]]:
    gt_vertices = sum(r.gt_vertices for r in results)
    human_vertices = sum(r.human_vertices for r in results)
    rows = []
    for t in options.thresholds:
        ious = [r.annotator[t][0] for r in results]
        clicks = [r.annotator[t][1] for r in results]
        rows.append(
            {
                "threshold": t,
                "mean_clicks": float(np.mean(clicks)) if clicks else math.nan,
                "clicks_per_gt_vertex": float(sum(clicks) / max(gt_vertices, 1)),
                "clicks_per_human_vertex": float(sum(clicks) / max(human_vertices, 1)),
                "mean_iou": float(np.mean(ious)) if ious else math.nan,
                "class_mean_iou": summarize(ious, classes)["class_mean_iou"],
            }
        )
    return rows


def _engine_summary(curves: list[list[float]], options: EvalOptions) -> dict[str, Any]:
    """NoC@level (mean corrections; ``max_corrections`` when never reached), the share reaching each level,
    the mean IoU after k corrections, and the share of instances below their start after k."""
    cap = options.max_corrections
    if not curves:
        nan = {str(v): math.nan for v in options.noc}
        return {"noc": nan, "noc_reached": dict(nan), "mean_iou": [], "below_start": []}
    arr = np.array(curves, dtype=np.float64)
    return {
        "noc": {str(v): float(np.mean([_noc(c, v / 100, cap) for c in curves])) for v in options.noc},
        "noc_reached": {
            str(v): float(np.mean([_noc(c, v / 100, cap + 1) <= cap for c in curves])) for v in options.noc
        },
        "mean_iou": arr.mean(axis=0).tolist(),
        "below_start": (arr < arr[:, :1] - 1e-9).mean(axis=0).tolist(),
    }


def _clicks_to_quality(results: Sequence[InstanceResult], options: EvalOptions) -> dict[str, Any]:
    """Per engine (:func:`_engine_summary`), and for the first engine (the default) also at the top level."""
    engines = {
        e: _engine_summary([r.curves[e] for r in results if e in r.curves], options) for e in options.engines
    }
    first = engines[options.engines[0]] if options.engines else _engine_summary([], options)
    return {
        "engines": engines,
        "noc": first["noc"],
        "noc_reached": first["noc_reached"],
        "curve": {"corrections": list(range(len(first["mean_iou"]))), "mean_iou": first["mean_iou"]},
    }


def summarize_results(results: Sequence[InstanceResult], options: EvalOptions) -> dict[str, Any]:
    """The figures of the report (IoUs as fractions)."""
    classes = [r.class_name for r in results]
    out: dict[str, Any] = {"automatic": summarize([r.automatic for r in results], classes)}
    rnn = [r.automatic_rnn for r in results]
    if results and not any(math.isnan(v) for v in rnn):
        out["automatic_rnn"] = summarize(rnn, classes)
    ceil = summarize([r.ceiling for r in results], classes)
    out["ceiling"] = {"mean_iou": ceil["mean_iou"], "class_mean_iou": ceil["class_mean_iou"]}
    out["baselines"] = _baseline_summary(results, options, classes)
    out["annotator"] = _annotator_rows(results, options, classes)
    out.update(_clicks_to_quality(results, options))
    n = max(len(results), 1)
    out["gt_vertices_mean"] = float(sum(r.gt_vertices for r in results) / n)
    out["human_vertices_mean"] = float(sum(r.human_vertices for r in results) / n)
    out["timing_ms_per_instance"] = {
        "model": float(np.mean([r.ms["model"] for r in results])) if results else math.nan,
        **{name: b["ms_per_instance"] for name, b in out["baselines"].items()},
    }
    return out


# --- writing ---------------------------------------------------------------------------------------
def _pct(v: float) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def report_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown (IoUs in percent)."""
    m, ds = report["meta"], report["meta"]["dataset"]
    lines = [
        "# polyrnn evaluation report",
        "",
        f"- dataset: `{ds['path']}` ({ds['format']}), box long side ≥ {ds['min_size']:g} px, "
        f"{ds['instances']} instances" + (f" (first {ds['limit']})" if ds["limit"] else ""),
        f"- weights: `{m['weights']['path']}` (sha256 `{m['weights']['sha256'][:16]}…`)",
    ]
    if m.get("mask_weights"):
        lines.append(
            f"- mask model: `{m['mask_weights']['path']}` (sha256 `{m['mask_weights']['sha256'][:16]}…`)"
        )
    lines += [
        f"- automatic polygon: {m['settings']['start_description']}",
        f"- command: `{m['command']}`",
        f"- polyrnn {m['versions']['polyrnn']}, git {m['git_sha'][:10]}, {m['created']}",
        "",
        "## Automatic mode",
        "",
        "| method | mean IoU | class-mean IoU | ms / instance |",
        "|---|---:|---:|---:|",
        f"| polyrnn | {_pct(report['automatic']['mean_iou'])} | "
        f"{_pct(report['automatic']['class_mean_iou'])} | "
        f"{report['timing_ms_per_instance']['model']:.0f} |",
    ]
    if "automatic_rnn" in report:
        a = report["automatic_rnn"]
        lines.append(
            f"| polyrnn, decoder's own polygon | {_pct(a['mean_iou'])} | {_pct(a['class_mean_iou'])} | |"
        )
    for name, b in report["baselines"].items():
        extra = f" ({b['collapsed']} collapsed → box)" if name == "grabcut" else ""
        lines.append(
            f"| {name}{extra} | {_pct(b['mean_iou'])} | {_pct(b['class_mean_iou'])} | "
            f"{b['ms_per_instance']:.0f} |"
        )
    c = report["ceiling"]
    lines += [f"| grid ceiling (28×28) | {_pct(c['mean_iou'])} | {_pct(c['class_mean_iou'])} | |", ""]
    lines += [
        "## Annotator in the loop (the paper's protocol)",
        "",
        f"Ground-truth vertices per instance: {report['gt_vertices_mean']:.1f} on the grid (the human "
        f"polygon quantised like the training targets: the vertices the annotator walks); the human-drawn "
        f"polygons have {report['human_vertices_mean']:.1f} (their largest part), the clicks of drawing them "
        "by hand.",
        "",
        "| T (cells) | corrections / instance | corrections / GT vertex | corrections / human vertex "
        "| mean IoU | class-mean IoU |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for a in report["annotator"]:
        lines.append(
            f"| {a['threshold']} | {a['mean_clicks']:.2f} | {a['clicks_per_gt_vertex']:.2f} | "
            f"{a['clicks_per_human_vertex']:.2f} | {_pct(a['mean_iou'])} | {_pct(a['class_mean_iou'])} |"
        )
    mc = report["meta"]["settings"]["max_corrections"]
    lines += [
        "",
        "## Clicks to quality",
        "",
        "Each engine starts from the same automatic polygon; `manual` is the drag alone (a plain editor).",
        "",
    ]
    ks = sorted({k for k in (0, 1, 2, 3, 5, 10, mc) if k <= mc})
    levels = list(report["noc"])
    lines += [
        "| engine | "
        + " | ".join(f"k={k}" for k in ks)
        + " | "
        + " | ".join(f"NoC@{v} (reached)" for v in levels)
        + " | below start after 1 / 10 |",
        "|---|" + "---:|" * (len(ks) + len(levels) + 1),
    ]
    for name, e in report.get("engines", {}).items():
        if not e["mean_iou"]:
            continue
        below = e["below_start"]
        lines.append(
            f"| {name} | "
            + " | ".join(_pct(e["mean_iou"][k]) for k in ks if k < len(e["mean_iou"]))
            + " | "
            + " | ".join(f"{e['noc'][v]:.2f} ({_pct(e['noc_reached'][v])} %)" for v in levels)
            + f" | {_pct(below[min(1, len(below) - 1)])} % / {_pct(below[min(10, len(below) - 1)])} % |"
        )
    lines += ["", "![IoU vs corrections](iou_vs_corrections.png)"]
    lines += [
        "",
        "## Per class (automatic)",
        "",
        "| class | instances | polyrnn | " + " | ".join(report["baselines"]) + " |",
        "|---|---:|---:|" + "---:|" * len(report["baselines"]),
    ]
    for cls, row in report["automatic"]["per_class"].items():
        cells = [_pct(b["per_class"][cls]["iou"]) for b in report["baselines"].values()]
        lines.append(f"| {cls} | {row['count']} | {_pct(row['iou'])} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## How vertices are matched",
        "",
        MATCHING,
        "",
        "GrabCut: OpenCV, 5 iterations, initialised with the box on a window of the box enlarged by "
        "20 %; when it labels nothing foreground (a collapse) the box itself is its answer. The mask "
        "baseline's largest part is its polygon. Timing: wall-clock per instance on this machine, "
        "model = crop encoding + automatic polygon.",
        "",
    ]
    return "\n".join(lines)


def plot_curve(report: dict[str, Any]) -> bytes:
    """PNG of mean IoU after k corrections with the baselines and the grid ceiling as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, e in report.get("engines", {}).items():
        ax[0].plot(range(len(e["mean_iou"])), [100 * v for v in e["mean_iou"]], marker="o", ms=3, label=name)
    for i, (name, b) in enumerate(report["baselines"].items()):
        ax[0].axhline(100 * b["mean_iou"], ls="--", color=f"C{i + 1}", label=f"{name} baseline")
    ax[0].axhline(100 * report["ceiling"]["mean_iou"], ls=":", color="k", label="28×28 grid ceiling")
    for level in report["noc"]:
        ax[0].axhline(float(level), ls="-", lw=0.5, color="grey")
    ax[0].set_xlabel("corrections (worst vertex first)")
    ax[0].set_ylabel("mean IoU (%)")
    ax[0].set_title("clicks to quality")
    ax[0].legend(fontsize=8)
    ann = report["annotator"]
    ax[1].plot([a["mean_clicks"] for a in ann], [100 * a["mean_iou"] for a in ann], marker="s")
    for a in ann:
        ax[1].annotate(
            f"T={a['threshold']}",
            (a["mean_clicks"], 100 * a["mean_iou"]),
            fontsize=8,
            xytext=(4, -10),
            textcoords="offset points",
        )
    ax[1].axhline(100 * report["automatic"]["mean_iou"], ls="--", color="C0", label="automatic")
    ax[1].set_xlabel("corrections per instance")
    ax[1].set_ylabel("mean IoU (%)")
    ax[1].set_title("the paper's simulated annotator")
    ax[1].legend(fontsize=8)
    for a in ax:
        a.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def _json_safe(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_json_safe(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def write_report(report: dict[str, Any], out: Path, results: Sequence[InstanceResult] = ()) -> list[Path]:
    """Write ``report.json``, ``report.md``, ``iou_vs_corrections.png`` (and ``instances.jsonl`` with the
    per-instance figures) atomically into ``out``; returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "report.json", out / "report.md", out / "iou_vs_corrections.png"]
    atomic_write_json(paths[0], _json_safe(report))
    atomic_write_text(paths[1], report_markdown(report))
    atomic_write_bytes(paths[2], plot_curve(report))
    if results:
        rows = [
            json.dumps(_json_safe({**asdict(r), "annotator": {str(t): v for t, v in r.annotator.items()}}))
            for r in results
        ]
        paths.append(out / "instances.jsonl")
        atomic_write_text(paths[-1], "\n".join(rows) + "\n")
    return paths


def build_meta(
    *,
    weights: str | Path,
    mask_weights: str | Path | None,
    dataset: str,
    fmt: str,
    min_size: float,
    limit: int,
    instances: int,
    options: EvalOptions,
    command: Sequence[str],
) -> dict[str, Any]:
    from polyrnn.provenance import git_sha, versions

    start = (
        "the mask model's polygon (the recurrent decoder re-predicts after each correction)"
        if options.start == "mask"
        else "first-vertex head + greedy recurrent decoding"
    )
    start += (
        f"; after a correction the re-prediction rejoins the old polygon once within {options.rejoin} "
        "cell(s) of it"
        if options.rejoin is not None
        else "; everything after a correction re-predicted"
    )
    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(command),
        "weights": {"path": str(weights), "sha256": sha256_file(weights)},
        "mask_weights": {"path": str(mask_weights), "sha256": sha256_file(mask_weights)}
        if mask_weights
        else None,
        "dataset": {
            "path": dataset,
            "format": fmt,
            "min_size": min_size,
            "limit": limit,
            "instances": instances,
        },
        "settings": {**asdict(options), "start_description": start, "matching": MATCHING},
        "git_sha": git_sha(),
        "versions": versions(),
    }
