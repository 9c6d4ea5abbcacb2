"""Learning from a team's polygons, as a team would live it: the images of a folder come in order; each object
is annotated with the clicks-to-quality annotator through the editor's session (the refine engine, up to
``--max-corrections``); its polygon is accepted; and the tool learns exactly as ``polyrnn serve`` does
(the shipped model checked against the box on the first polygons, a background job every ``--every``
accepted polygons, swapped in when it beats the model in use on its held-out slice). Beside it, the same
stream with the frozen shipped models.

    python benchmarks/adaptation.py --dataset ../shared/datasets/cwfid-train

Writes ``--out`` (default ``runs/adaptation``): ``images.csv`` (per image: objects, automatic IoU, NoC@85/90,
for both arms, and the model in use), ``updates.csv`` (per learning job: polygons, seconds, peak memory,
accepted, held-out figures), ``summary.json`` and ``adaptation.png`` (the curves). Each job runs as the
editor's does: its own process, low priority, one thread; the stream waits for it (in the editor, the model
arrives when the job ends, a few images later).
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing as mp
import os
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from polyrnn.data.instance import Instance  # noqa: E402
from polyrnn.learning import (  # noqa: E402
    LearnOptions,
    ModelFolder,
    ModelVersions,
    choose_start,
    held_out_figures,
    shipped_files,
)


def noc(curve: list[float], level: float, cap: int) -> int:
    """Corrections until the IoU first reaches ``level`` (the automatic polygon: 0); ``cap`` when never."""
    return next((k for k, v in enumerate(curve) if v >= level), cap)


class Arm:
    """One way of annotating the stream: the models in use and where their polygons start."""

    def __init__(self, name: str, max_corrections: int) -> None:
        self.name = name
        self.folder: ModelFolder | None = None
        self.start = "auto"
        self.max_corrections = max_corrections
        self._models: Any = None

    def models(self) -> Any:
        from polyrnn.build import load_models

        if self._models is None:
            if self.folder is None:
                self._models = load_models()
            else:
                self._models = load_models(mask_weights=self.folder.mask, refiner_weights=self.folder.refiner)
        return self._models

    def use(self, folder: ModelFolder | None, start: str) -> None:
        self.folder, self.start, self._models = folder, start, None

    def annotate(self, insts: list[Instance]) -> list[dict[str, Any]]:
        """Each object through the editor's session: automatic IoU and clicks to 85 / 90 %."""
        from polyrnn.evaluation.evaluate import EvalOptions, evaluate_dataset

        m = self.models()
        options = EvalOptions(
            start="box" if self.start == "box" else "mask",
            thresholds=(),
            baselines=("box",),
            engines=("refine",),
            max_corrections=self.max_corrections,
            mask_tolerance=self.folder.tolerance if self.folder is not None else 0.75,
        )
        out = []
        for r in evaluate_dataset(m.polygon, insts, options, mask_model=m.mask, refiner=m.refiner):
            curve = r.curves["refine"]
            out.append(
                {
                    "automatic": curve[0],
                    "box": r.baselines["box"],
                    "noc85": noc(curve, 0.85, self.max_corrections),
                    "noc90": noc(curve, 0.90, self.max_corrections),
                }
            )
        return out


def _peak_rss(pid: int) -> int:
    """The process's peak resident memory so far, kB (Linux ``VmHWM``)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def learn_as_serve(
    work: Path, versions: ModelVersions, current: ModelFolder | None, options: LearnOptions
) -> dict:
    """One job exactly as the editor's learner starts it (:func:`polyrnn.server.learner._job`): its own
    spawned process, nice 10, one thread, the accepted folder's LabelMe polygons; with its wall time and peak
    memory."""
    from polyrnn.server.learner import _job

    name = versions.next_name()
    versions.root.mkdir(parents=True, exist_ok=True)
    report = versions.root / f".{name}.report.json"
    args = (
        str(work),
        str(work),
        str(work / ".polyrnn"),
        str(versions.root / name),
        str(current.path) if current else None,
        asdict(options),
        str(report),
    )
    t0 = time.perf_counter()
    proc = mp.get_context("spawn").Process(target=_job, args=args, daemon=True)
    proc.start()
    peak = 0
    while proc.is_alive():
        peak = max(peak, _peak_rss(proc.pid))
        proc.join(0.5)
    seconds = time.perf_counter() - t0
    result = json.loads(report.read_text()) if report.is_file() else {"accepted": False, "error": "no report"}
    report.unlink(missing_ok=True)
    result.update(version=name, wall_seconds=round(seconds, 1), peak_mb=round(peak / 1024, 1))
    if result.get("accepted"):
        versions.use(name)
    return result


def main() -> int:
    from polyrnn.formats import load_dataset

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default=str(ROOT.parent / "shared" / "datasets" / "cwfid-train"))
    ap.add_argument("--every", type=int, default=30, help="accepted polygons between two jobs (serve's)")
    ap.add_argument("--epochs", type=int, default=3, help="epochs of each job (serve's --learn-epochs)")
    ap.add_argument("--check-at", type=int, default=8, help="polygons before the box check (serve's)")
    ap.add_argument("--max-corrections", type=int, default=20)
    ap.add_argument("--limit", type=int, default=0, help="at most this many images (0: all)")
    ap.add_argument("--out", default=str(ROOT / "runs" / "adaptation"))
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)  # the annotating side: the editor's one thread
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    work = out / "accepted"  # the folder the editor would hold: images and their accepted LabelMe files
    work.mkdir(parents=True)
    ds = load_dataset(args.dataset, min_size=8)
    by_image: dict[str, list[Instance]] = {}
    for inst in ds.instances:
        if not inst.iscrowd:
            by_image.setdefault(str(inst.image_path), []).append(inst)
    images = sorted(by_image)[: args.limit or None]
    frozen, learning = Arm("frozen", args.max_corrections), Arm("learning", args.max_corrections)
    versions = ModelVersions(work / ".polyrnn" / "models")
    from polyrnn.cli import LEARN_MAX_HELD, LEARN_MAX_TRAIN

    options = LearnOptions(
        mask_epochs=args.epochs,
        refiner_epochs=args.epochs,
        corrections=3,
        max_train=LEARN_MAX_TRAIN,
        max_held=LEARN_MAX_HELD,
    )
    accepted: list[Instance] = []
    learned_at, checked = 0, False
    rows, updates = [], []
    t_start = time.perf_counter()
    for n, path in enumerate(images):
        insts = by_image[path]
        f = frozen.annotate(insts)
        lr = learning.annotate(insts)
        row = {
            "image": Path(path).name,
            "objects": len(insts),
            "model": learning.folder.path.name if learning.folder else "shipped",
            "start": learning.start,
            **{f"frozen_{k}": float(np.mean([x[k] for x in f])) for k in ("automatic", "noc85", "noc90")},
            **{f"learning_{k}": float(np.mean([x[k] for x in lr])) for k in ("automatic", "noc85", "noc90")},
            "box": float(np.mean([x["box"] for x in f])),
        }
        rows.append(row)
        print(
            f"image {n + 1}/{len(images)} {row['image']}: {len(insts)} objects; automatic IoU frozen "
            f"{100 * row['frozen_automatic']:.1f} learning {100 * row['learning_automatic']:.1f} "
            f"({row['model']}, from {row['start']}); NoC@85 {row['frozen_noc85']:.1f} / "
            f"{row['learning_noc85']:.1f}",
            flush=True,
        )
        # the team accepts the image's polygons: they land in the editor's folder
        name = Path(path).name
        shutil.copy(path, work / name)
        shutil.copy(Path(path).with_suffix(".json"), work / Path(path).with_suffix(".json").name)
        accepted += insts
        if learning.folder is None and not checked and len(accepted) >= args.check_at:
            mask, refiner = shipped_files()
            figures = held_out_figures(mask, refiner, accepted[:60], corrections=0)
            learning.use(None, choose_start(figures))
            checked = True
            print(
                f"box check on {len(accepted)} polygons: start from {learning.start} ({figures})", flush=True
            )
        if len(accepted) >= learned_at + args.every:
            learned_at = len(accepted)
            result = learn_as_serve(work, versions, learning.folder, options)
            held = result.get("held_out", {})
            updates.append(
                {
                    "after_image": n + 1,
                    "polygons": learned_at,
                    "version": result["version"],
                    "accepted": bool(result.get("accepted")),
                    "wall_seconds": result["wall_seconds"],
                    "peak_mb": result["peak_mb"],
                    "held_out_before": held.get("before", {}).get("automatic"),
                    "held_out_after": held.get("after", {}).get("automatic"),
                    "error": result.get("error", ""),
                }
            )
            print(f"update: {updates[-1]}", flush=True)
            if result.get("accepted"):
                folder = versions.current()
                learning.use(folder, folder.start if folder else "auto")
    _write(out, rows, updates, args, time.perf_counter() - t_start)
    return 0


def _write(
    out: Path, rows: list[dict], updates: list[dict], args: argparse.Namespace, seconds: float
) -> None:
    for name, table in (("images.csv", rows), ("updates.csv", updates)):
        if table:
            with open(out / name, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(table[0]))
                w.writeheader()
                w.writerows(table)

    def mean(key: str, rows_: list[dict]) -> float:
        weights = np.array([r["objects"] for r in rows_], dtype=np.float64)
        return float(np.average([r[key] for r in rows_], weights=weights)) if rows_ else float("nan")

    later = rows[10:]
    summary = {
        "dataset": args.dataset,
        "images": len(rows),
        "objects": int(sum(r["objects"] for r in rows)),
        "every": args.every,
        "epochs": args.epochs,
        "all": {k: round(mean(k, rows), 4) for k in rows[0] if k.startswith(("frozen_", "learning_", "box"))},
        "after_first_10_images": {
            k: round(mean(k, later), 4) for k in rows[0] if k.startswith(("frozen_", "learning_", "box"))
        },
        "updates": len(updates),
        "update_seconds_max": max((u["wall_seconds"] for u in updates), default=None),
        "update_peak_mb_max": max((u["peak_mb"] for u in updates), default=None),
        "seconds": round(seconds, 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    _plot(out, rows, updates)


def _plot(out: Path, rows: list[dict], updates: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.arange(1, len(rows) + 1)
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8))
    a.plot(x, [100 * r["frozen_automatic"] for r in rows], "o-", ms=3, label="frozen (shipped)")
    a.plot(x, [100 * r["learning_automatic"] for r in rows], "o-", ms=3, label="learning (as polyrnn serve)")
    a.plot(x, [100 * r["box"] for r in rows], ":", color="grey", label="the box")
    a.set(xlabel="image (in the order annotated)", ylabel="automatic IoU %", title="first polygon")
    b.plot(x, [r["frozen_noc85"] for r in rows], "o-", ms=3, label="frozen")
    b.plot(x, [r["learning_noc85"] for r in rows], "o-", ms=3, label="learning")
    b.set(xlabel="image (in the order annotated)", ylabel="corrections to 85 % IoU", title="NoC@85 per image")
    for ax in (a, b):
        for u in updates:
            if u["accepted"]:
                ax.axvline(u["after_image"] + 0.5, color="green", alpha=0.25)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "adaptation.png", dpi=110)


if __name__ == "__main__":
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", "33554432")
    sys.exit(main())
