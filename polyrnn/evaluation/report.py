"""``polyrnn evaluate``, the reporting: per-instance results (:mod:`polyrnn.evaluation.evaluate`) summarised
(means per class, NoC, baselines), written as ``report.json``, ``report.md`` and plots."""

from __future__ import annotations

import io
import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from polyrnn.evaluation.evaluate import EvalOptions, InstanceResult
from polyrnn.evaluation.metrics import summarize
from polyrnn.io import atomic_write_bytes, atomic_write_json, atomic_write_text, sha256_file

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


def _vertices(results: Sequence[InstanceResult], options: EvalOptions) -> dict[str, Any]:
    """Median vertex counts: the automatic polygon's, the human polygon's (largest part), the automatic's
    ratio to it (median of per-instance ratios), and each engine's polygon after its corrections."""
    if not results:
        return {}
    auto = [r.vertices for r in results]
    human = [r.human_vertices for r in results]
    ratio = [a / h for a, h in zip(auto, human, strict=True) if h > 0]
    out: dict[str, Any] = {
        "automatic_median": float(np.median(auto)),
        "human_median": float(np.median(human)),
        "median_ratio": float(np.median(ratio)) if ratio else math.nan,
        "after_corrections_median": {},
    }
    out["far_moved_first"] = {}
    for e in options.engines:
        final = [r.final_vertices[e] for r in results if e in r.final_vertices]
        if final:
            out["after_corrections_median"][e] = float(np.median(final))
        far = np.array([r.far_moved[e] for r in results if e in r.far_moved]).reshape(-1, 2)
        if len(far):
            out["far_moved_first"][e] = float(far[:, 1].sum() / max(int(far[:, 0].sum()), 1))
    return out


def _parts(results: Sequence[InstanceResult], options: EvalOptions) -> dict[str, Any]:
    """Objects in several parts: the share whose ground truth has two or more pieces big enough for a box of
    their own (``min_part`` box long sides), and per engine the share the annotators gave a further part (by
    drags, by clicks) and the NoC at each level on those objects in pieces."""
    if not results or not math.isfinite(options.min_part):
        return {}
    multi = [r for r in results if r.gt_parts >= 2]
    out: dict[str, Any] = {
        "min_part": options.min_part,
        "objects_in_pieces": len(multi) / len(results),
        "added": {},
        "click_added": {},
        "noc_in_pieces": {},
    }
    for e in options.engines:
        got = [r.parts[e] for r in results if e in r.parts]
        if got:
            out["added"][e] = float(np.mean(np.array(got) > 1))
        if multi and all(e in r.curves for r in multi):
            out["noc_in_pieces"][e] = _engine_summary([r.curves[e] for r in multi], options)["noc"]
        clicks = [r.click_parts[e] for r in results if e in r.click_parts]
        if clicks:
            out["click_added"][e] = float(np.mean(np.array(clicks) > 1))
    return out


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
    out["click_protocol"] = {
        e: _engine_summary([r.click_curves[e] for r in results if e in r.click_curves], options)
        for e in options.click_engines
        if any(e in r.click_curves for r in results)
    }
    out["vertices"] = _vertices(results, options)
    out["parts"] = _parts(results, options)
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


def _parts_markdown(parts: dict[str, Any]) -> list[str]:
    if not parts:
        return []
    added = ", ".join(f"{e} {100 * v:.1f} %" for e, v in parts["added"].items())
    clicked = ", ".join(f"{e} {100 * v:.1f} %" for e, v in parts["click_added"].items())
    noc = "; ".join(
        f"{e} " + ", ".join(f"NoC@{k} {v:.2f}" for k, v in n.items())
        for e, n in parts["noc_in_pieces"].items()
    )
    return [
        "",
        f"Objects in several parts: {100 * parts['objects_in_pieces']:.1f} % of the objects are in two or "
        f"more pieces of at least {parts['min_part']:g} box long sides. Where no part covers such a piece, "
        "the annotators add a part (a box around it: one correction, or two clicks); IoU is always the whole "
        f"object's. Objects given a further part: by drags {added or '–'}"
        + (f"; by clicks {clicked}" if clicked else "")
        + (f". On the objects in pieces: {noc}." if noc else "."),
    ]


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
        f"- the mask model and the refiners computed in {m.get('precision', 'float32')}",
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
    if report.get("click_protocol"):
        lines += [
            "",
            "The standard click protocol (positive / negative clicks at the innermost point of the largest "
            "error region, from the box's automatic polygon; the tables of published interactive "
            "segmentation):",
            "",
            "| engine | "
            + " | ".join(f"k={k}" for k in ks)
            + " | "
            + " | ".join(f"NoC@{v} (reached)" for v in levels)
            + " |",
            "|---|" + "---:|" * (len(ks) + len(levels)),
        ]
        for name, e in report["click_protocol"].items():
            lines.append(
                f"| {name} (clicks) | "
                + " | ".join(_pct(e["mean_iou"][k]) for k in ks if k < len(e["mean_iou"]))
                + " | "
                + " | ".join(f"{e['noc'][v]:.2f} ({_pct(e['noc_reached'][v])} %)" for v in levels)
                + " |"
            )
    v = report.get("vertices") or {}
    if v:
        after = ", ".join(f"{e} {n:g}" for e, n in v["after_corrections_median"].items())
        lines += [
            "",
            f"Vertices (median): automatic polygon {v['automatic_median']:g}, human polygon "
            f"{v['human_median']:g}, automatic / human {v['median_ratio']:.2f}× (median of per-object "
            f"ratios)" + (f"; after {mc} corrections: {after}" if after else "") + ".",
        ]
        if v.get("far_moved_first"):
            far = ", ".join(f"{e} {100 * s:.0f} %" for e, s in v["far_moved_first"].items())
            lines += [
                "",
                "How local the first correction is: of the vertices more than half a box side from it, the "
                f"share it moved: {far}.",
            ]
    lines += _parts_markdown(report.get("parts") or {})
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
    for name, e in report.get("click_protocol", {}).items():
        ax[0].plot(
            range(len(e["mean_iou"])),
            [100 * v for v in e["mean_iou"]],
            ls=":",
            marker="x",
            ms=3,
            label=f"{name}, standard clicks",
        )
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
    precision: str = "float32",
) -> dict[str, Any]:
    """The report's provenance: files (with their SHA-256), dataset, settings, ``precision`` (the type the
    mask model and the refiners computed in), commit and library versions."""
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
        "precision": precision,
        "git_sha": git_sha(),
        "versions": versions(),
    }
