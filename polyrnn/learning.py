"""Learning from a team's polygons: the one fine-tuning path that ``polyrnn learn``, the editor's own learning
and the Label Studio back end's ``fit`` use.

:func:`learn` takes accepted polygons (any :class:`~polyrnn.data.instance.Instance` list), holds out a
seeded slice of their images, fine-tunes the mask model (every layer, from the model it starts from) and
then the correction refiner (from the start's refiner) on the new mask model's features, each keeping its
best epoch on the held-out slice, and writes a *model folder* only when the result beats the model it
started from on that slice:

    MODEL_DIR/model.json    format "polyrnn-model": what it learned from, the held-out figures before and
                            after, the epochs kept, the model it started from, seconds, sha256 of each file
    MODEL_DIR/mask.pt       the mask model (the automatic polygon)
    MODEL_DIR/refiner.pt    the correction refiner (trained on mask.pt's features)

A model folder is read strictly (:meth:`ModelFolder.read`) and is what ``--model`` takes everywhere. The
polygon model (the paper's decoder) is the shipped one: learning touches the engines the tool starts and
corrects with.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from polyrnn.config import INFERENCE
from polyrnn.data.instance import Instance

MODEL_FORMAT = "polyrnn-model"
MODEL_FILE = "model.json"


class LearnError(ValueError):
    """Learning cannot start (too few images or objects) or a model folder cannot be used; says why."""


@dataclass(frozen=True, kw_only=True)
class LearnOptions:
    """How :func:`learn` trains.

    Attributes:
        mask_epochs: epochs of the mask model's fine-tune (the best on the held-out slice is kept).
        refiner_epochs: epochs of the refiner's training (likewise).
        holdout: fraction of the images held out (at least one image).
        corrections: the held-out score is the mean IoU after 0..corrections corrections (the refine engine
            driven by the clicks-to-quality annotator): the automatic polygon and the first fixes together.
        min_size: objects whose box's longer side is smaller (pixels) are left out.
        batch_size, lr, backbone_lr: the mask model's fine-tune.
        copies: crops per object in the refiner's feature cache (1 canonical + augmented ones).
        refiner_lr: the refiner's learning rate (it starts from the model's own refiner).
        max_train, max_held: at most this many polygons to learn from and to check on (0: all), a seeded
            sample: bounds a job's time as a folder grows (the editor's jobs use 200 and 60).
        seed: the held-out split and the training's randomness.
    """

    mask_epochs: int = 6
    refiner_epochs: int = 6
    holdout: float = 0.2
    corrections: int = 5
    min_size: float = 8.0
    batch_size: int = 8
    lr: float = 2e-4
    backbone_lr: float = 1e-4
    copies: int = 2
    refiner_lr: float = 5e-4
    max_train: int = 0
    max_held: int = 0
    seed: int = 0


@dataclass(frozen=True)
class ModelFolder:
    """A model folder written by :func:`learn`: the mask model and refiner files and ``model.json``."""

    path: Path
    mask: Path
    refiner: Path | None
    info: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def read(cls, path: str | Path) -> ModelFolder:
        """The model folder at ``path``, checked: ``model.json`` of format ``polyrnn-model``, its files
        present and unchanged (sha256). :class:`LearnError` naming what is wrong."""
        from polyrnn.io import sha256_file

        folder = Path(path)
        meta = folder / MODEL_FILE
        try:
            info = json.loads(meta.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise LearnError(
                f"{folder}: not a model folder (no {MODEL_FILE}; `polyrnn learn` writes one)"
            ) from None
        except (OSError, ValueError) as e:
            raise LearnError(f"{meta}: unreadable ({e})") from None
        if not isinstance(info, dict) or info.get("format") != MODEL_FORMAT:
            raise LearnError(f"{meta}: not a polyrnn model folder (format {MODEL_FORMAT!r} expected)")
        files = info.get("files")
        if not isinstance(files, dict) or not isinstance(files.get("mask"), dict):
            raise LearnError(f"{meta}: 'files' must name the mask model")
        found: dict[str, Path | None] = {"mask": None, "refiner": None}
        for role in ("mask", "refiner"):
            entry = files.get(role)
            if entry is None:
                continue
            name = str(entry.get("name", ""))
            if not name or Path(name).name != name:
                raise LearnError(f"{meta}: files.{role}.name must be a file name in the folder")
            file = folder / name
            if not file.is_file():
                raise LearnError(f"{file}: missing (named by {meta})")
            if sha256_file(file) != entry.get("sha256"):
                raise LearnError(f"{file}: changed since {meta} was written (sha256 differs)")
            found[role] = file
        assert found["mask"] is not None
        return cls(folder, found["mask"], found["refiner"], info)

    @property
    def tolerance(self) -> float:
        """Outlines' simplification in mask pixels, chosen on the held-out slice (the team's density)."""
        value = self.info.get("outline", {}).get("tolerance", INFERENCE.tolerance)
        ok = isinstance(value, int | float) and 0 < value <= 20
        return float(value) if ok else INFERENCE.tolerance

    def inference(self) -> dict[str, Any]:
        """How the tools use it beyond its files: ``start`` and ``tolerance`` (PolygonPredictor keywords)."""
        return {"start": self.start, "tolerance": self.tolerance}

    @property
    def start(self) -> str:
        """Where its polygons start (:func:`choose_start`, decided on the held-out slice): auto or box."""
        return "box" if self.info.get("start") == "box" else "auto"

    def describe(self) -> str:
        """One line: where it is, how many polygons it learned from, its held-out score."""
        learned = self.info.get("learned_from", {})
        after = self.info.get("held_out", {}).get("after", {})
        return (
            f"{self.path} ({learned.get('instances', '?')} polygons on {learned.get('images', '?')} images; "
            f"held-out automatic IoU {100 * after.get('automatic', math.nan):.1f})"
        )


def shipped_files() -> tuple[Path, Path | None]:
    """(mask model, refiner) the shipped models start from."""
    from polyrnn.build import SHIPPED, WEIGHTS_DIR, default_weights

    mask = default_weights("lite-mask")
    name = SHIPPED["lite"].refiner
    refiner = default_weights(name) if name and (WEIGHTS_DIR / SHIPPED[name].file).is_file() else None
    return mask, refiner


def start_files(start: ModelFolder | None) -> tuple[Path, Path | None]:
    return (start.mask, start.refiner) if start is not None else shipped_files()


# --- the held-out score --------------------------------------------------------------------------------
def held_out_figures(
    mask_path: Path,
    refiner_path: Path | None,
    instances: Sequence[Instance],
    *,
    corrections: int,
    tolerance: float = INFERENCE.tolerance,
) -> dict[str, Any]:
    """The figures of a mask model and refiner on ``instances``: mean automatic IoU, the box's, mean IoU after
    k = 0..corrections corrections (the refine engine, the clicks-to-quality annotator), the share reaching
    85 % within them, and ``score``: the mean of that curve (what :func:`learn` compares)."""
    from polyrnn.build import load_models
    from polyrnn.evaluation.evaluate import EvalOptions, evaluate_dataset

    models = load_models(
        mask_weights=mask_path, refiner_weights=refiner_path if refiner_path is not None else "none"
    )
    engine = "refine" if models.refiner is not None else "manual"
    options = EvalOptions(
        start="mask",
        thresholds=(),
        baselines=("box",),
        engines=(engine,),
        max_corrections=corrections,
        mask_tolerance=tolerance,
    )
    results = evaluate_dataset(
        models.polygon, list(instances), options, mask_model=models.mask, refiner=models.refiner
    )
    curves = np.array([r.curves[engine] for r in results], dtype=np.float64)
    curve = curves.mean(axis=0)
    return {
        "instances": len(results),
        "automatic": round(float(np.mean([r.automatic for r in results])), 4),
        "box": round(float(np.mean([r.baselines["box"] for r in results])), 4),
        "curve": [round(float(v), 4) for v in curve],
        "reach_85": round(float(np.mean((curves >= 0.85).any(axis=1))), 4),
        "score": round(float(curve.mean()), 4),
    }


def figures_line(f: dict[str, Any]) -> str:
    """:func:`held_out_figures` in one line (IoU in %)."""
    curve = " ".join(f"{100 * v:.1f}" for v in f["curve"])
    return (
        f"automatic {100 * f['automatic']:.1f}, after 0..{len(f['curve']) - 1} corrections {curve}, "
        f"{100 * f['reach_85']:.0f} % reach 85, score {100 * f['score']:.1f}"
    )


TOLERANCES = (0.75, 1.5, 2.5, 4.0, 6.0)  # outline simplification candidates, mask pixels


def choose_tolerance(
    mask_path: Path,
    instances: Sequence[Instance],
    *,
    slack: float = 0.005,
    tolerances: Sequence[float] = TOLERANCES,
) -> dict[str, Any]:
    """The vertex density of the team's polygons: the mask model's outline simplified with each of
    ``tolerances`` (mask pixels) on ``instances``; the coarsest whose mean IoU is within ``slack`` of the
    best. Returns ``{"tolerance", "iou": {t: mean}, "vertices": {t: median}, "ratio": {t: median of
    per-object vertices / human vertices}, "human_vertices": median}``."""
    import torch

    from polyrnn.batch.annotate import Annotator
    from polyrnn.build import load_models
    from polyrnn.data.instance import load_image
    from polyrnn.evaluation.evaluate import human_vertices
    from polyrnn.geometry import mask_iou, rasterize
    from polyrnn.modeling.mask_net import mask_polygon

    ann = Annotator(load_models(mask_weights=mask_path, refiner_weights="none"))
    assert ann.mask_model is not None
    ious: dict[float, list[float]] = {t: [] for t in tolerances}
    counts: dict[float, list[int]] = {t: [] for t in tolerances}
    by_image: dict[str, list[Instance]] = {}
    for inst in instances:
        by_image.setdefault(str(inst.image_path), []).append(inst)
    with torch.inference_mode():
        for path, group in by_image.items():
            image = load_image(path)
            crops = [ann._crop(g.box_xyxy) for g in group]
            x = torch.from_numpy(np.stack([c.crop_image(image) for c in crops])).permute(0, 3, 1, 2).float()
            _, direct, mirrored = ann.mask_model.mask_views(x, flip=True)
            for k, (inst, crop) in enumerate(zip(group, crops, strict=True)):
                prob = direct[k].numpy() if mirrored is None else ((direct[k] + mirrored[k]) / 2).numpy()
                gt, ignore = inst.mask(), inst.ignore_mask()
                for t in tolerances:
                    poly = mask_polygon(prob, crop, tolerance=t)
                    drawn = [poly] if poly is not None else []
                    ious[t].append(mask_iou(rasterize(drawn, inst.height, inst.width), gt, ignore))
                    counts[t].append(len(poly) if poly is not None else 0)
    human = [human_vertices(i.largest_polygon()) for g in by_image.values() for i in g]  # counts' order
    mean = {t: float(np.mean(v)) for t, v in ious.items()}
    best = max(mean.values())
    chosen = max(t for t in tolerances if mean[t] >= best - slack)
    return {
        "tolerance": chosen,
        "iou": {str(t): round(v, 4) for t, v in mean.items()},
        "vertices": {str(t): float(np.median(v)) for t, v in counts.items()},
        "ratio": {
            str(t): float(np.median([c / max(h, 1) for c, h in zip(v, human, strict=True)]))
            for t, v in counts.items()
        },
        "human_vertices": float(np.median(human)),
    }


def choose_start(figures: dict[str, Any], *, margin: float = 0.0) -> str:
    """Where a model's polygons should start on this domain: ``box`` when its automatic polygon is expected
    to lose to the box (mean IoU on the team's own polygons lower than the box's by more than ``margin``),
    else ``auto``. The first polygon is then never worse than the box the annotator drew."""
    return "box" if figures.get("box", 0.0) > figures.get("automatic", 0.0) + margin else "auto"


# --- learning ------------------------------------------------------------------------------------------
def learn(
    instances: Sequence[Instance],
    *,
    out: str | Path,
    start: ModelFolder | None = None,
    options: LearnOptions = LearnOptions(),
    source: str = "",
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Fine-tune on ``instances`` (see the module's docstring) and write the model folder ``out`` when it
    beats the start on the held-out slice. Returns the report (also ``model.json``'s content):
    ``accepted`` says whether ``out`` was written; ``held_out.before`` / ``after`` the figures.
    :class:`LearnError` when there is too little to learn from."""
    from polyrnn.training import split_by_image

    t0 = time.perf_counter()
    out = Path(out)
    usable = [i for i in instances if not i.iscrowd and i.long_side >= options.min_size]
    images = sorted({str(i.image_path) for i in usable})
    if len(images) < 2:
        raise LearnError(
            f"learning needs polygons on at least 2 images (one is held out to check the result); "
            f"{len(usable)} usable polygons on {len(images)} images"
        )
    fraction = max(options.holdout, 1.0 / len(images))
    train, held = split_by_image(usable, fraction, seed=options.seed)
    train, held = (
        _capped(train, options.max_train, options.seed),
        _capped(held, options.max_held, options.seed),
    )
    if not train or not held:
        raise LearnError(
            f"cannot hold out {fraction:.0%} of {len(images)} images and keep some to learn from"
        )
    work = out.parent / f".{out.name}.work-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    (work / "data").mkdir(parents=True)
    try:
        report = _learn_in(work, train, held, start=start, options=options, log=log)
        report.update(
            learned_from={
                "source": source,
                "instances": len(usable),
                "images": len(images),
                "train": {"instances": len(train), "images": len({str(i.image_path) for i in train})},
                "classes": sorted({i.class_name for i in usable}),
            },
            started_from=str(start.path) if start is not None else "shipped",
            options=asdict(options),
            seconds=round(time.perf_counter() - t0, 1),
        )
        if report["accepted"]:
            _write_folder(out, work, report)
        return report
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _capped(instances: list[Instance], limit: int, seed: int) -> list[Instance]:
    """At most ``limit`` of ``instances`` (0: all), a seeded sample in their order: a job's time stays bounded
    as the folder grows, and each job starts from the last model, which has seen the others."""
    if not limit or len(instances) <= limit:
        return instances
    keep = np.sort(np.random.default_rng([seed, len(instances)]).choice(len(instances), limit, replace=False))
    return [instances[int(k)] for k in keep]


def _learn_in(
    work: Path,
    train: list[Instance],
    held: list[Instance],
    *,
    start: ModelFolder | None,
    options: LearnOptions,
    log: Callable[[str], None],
) -> dict[str, Any]:
    from polyrnn.config import load_train_config
    from polyrnn.formats.coco import write_coco
    from polyrnn.refine_training import RefinerConfig, train_refiner
    from polyrnn.training import run_training

    classes = sorted({i.class_name for i in train + held})
    for name, part in (("train", train), ("heldout", held)):
        write_coco(part, work / "data" / f"{name}.json", root=work / "data", classes=classes, decimals=2)
    mask0, refiner0 = start_files(start)
    log(
        f"learn: {len(train)} polygons to learn from, {len(held)} held out; starting from {mask0.parent.name}"
    )
    before = held_out_figures(mask0, refiner0, held, corrections=options.corrections)
    log(f"learn: held-out before: {figures_line(before)}")
    cfg = load_train_config(
        "lite-mask-ft",
        [
            f"data.train=[{work / 'data' / 'train.json'}]",
            f"data.val={work / 'data' / 'heldout.json'}",
            "data.val_split=0",
            f"data.min_size={options.min_size}",
            f"init_weights={mask0}",
            f"epochs={options.mask_epochs}",
            "lr_step=0",
            f"lr={options.lr}",
            f"backbone_lr={options.backbone_lr}",
            f"batch_size={options.batch_size}",
            f"seed={options.seed}",
            f"out={work / 'runs'}",
            "name=mask",
            "workers=0",
        ],
    )
    run = run_training(cfg, log=lambda m: log(f"learn: mask {m}"))
    mask = run / "weights" / "best.pt"
    rcfg = RefinerConfig(
        mask_weights=str(mask),
        train=(str(work / "data" / "train.json"),),
        val=str(work / "data" / "heldout.json"),
        min_size=options.min_size,
        copies=options.copies,
        epochs=options.refiner_epochs,
        init_weights=str(refiner0) if refiner0 is not None else "",
        lr=options.refiner_lr,
        seed=options.seed,
        out=str(work / "runs"),
        name="refiner",
    )
    rrun = train_refiner(rcfg, log=lambda m: log(f"learn: refiner {m}"))
    refiner = rrun / "weights" / "best.pt"
    outline = choose_tolerance(mask, held)
    after = held_out_figures(
        mask, refiner, held, corrections=options.corrections, tolerance=outline["tolerance"]
    )
    log(f"learn: held-out after: {figures_line(after)}")
    kept = outline["vertices"][str(outline["tolerance"])]
    log(
        f"learn: outlines simplified with {outline['tolerance']} mask pixels: median {kept:.0f} vertices "
        f"(the team's: {outline['human_vertices']:.0f})"
    )
    shutil.copyfile(mask, work / "mask.pt")
    shutil.copyfile(refiner, work / "refiner.pt")
    return {
        "accepted": after["score"] > before["score"],
        "start": choose_start(after),
        "outline": outline,
        "held_out": {"images": len({str(i.image_path) for i in held}), "before": before, "after": after},
        "epochs": {"mask": _best_epoch(run), "refiner": _best_epoch(rrun)},
    }


def _best_epoch(run: Path) -> int | None:
    import torch

    try:
        ckpt = torch.load(run / "weights" / "best.pt", map_location="cpu", weights_only=True)
        return int(ckpt.get("epoch")) if ckpt.get("epoch") is not None else None
    except Exception:  # the epoch is provenance only
        return None


def _write_folder(out: Path, work: Path, report: dict[str, Any]) -> None:
    """Move the two files and ``model.json`` into ``out`` at once (a folder renamed into place)."""
    from polyrnn.io import atomic_write_json, sha256_file

    staged = out.parent / f".{out.name}.new-{os.getpid()}"
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir(parents=True)
    files = {}
    for role in ("mask", "refiner"):
        shutil.move(str(work / f"{role}.pt"), staged / f"{role}.pt")
        files[role] = {"name": f"{role}.pt", "sha256": sha256_file(staged / f"{role}.pt")}
    from polyrnn import __version__

    report["files"] = files
    from polyrnn.provenance import git_sha, versions

    atomic_write_json(
        staged / MODEL_FILE,
        {
            "format": MODEL_FORMAT,
            "version": 1,
            "polyrnn": __version__,
            "created": time.time(),
            "git_sha": git_sha(),
            "versions": versions(),
            **report,
        },
    )
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        out.rename(old)
        staged.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staged.rename(out)


def learn_folder(
    folder: str | Path,
    *,
    out: str | Path,
    start: ModelFolder | None = None,
    format: str | None = None,
    options: LearnOptions = LearnOptions(),
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """:func:`learn` on the polygons of a dataset in any supported format (``polyrnn learn``)."""
    from polyrnn.formats import load_dataset

    ds = load_dataset(folder, format, min_size=options.min_size)
    return learn(ds.instances, out=out, start=start, options=options, source=str(folder), log=log)


# --- versions: the models a folder has learned -------------------------------------------------------------
SHIPPED = "shipped"


@dataclass
class ModelVersions:
    """The models learned for one annotation folder, kept in ``root`` (``<folder>/.polyrnn/models``):
    ``v1``, ``v2``, ... (model folders, never changed once written) and ``current.json`` naming the one in
    use (``shipped``: none). ``polyrnn models DIR`` lists them and rolls back."""

    root: Path

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        found = [
            p.name for p in self.root.iterdir() if p.is_dir() and p.name[1:].isdigit() and p.name[0] == "v"
        ]
        return sorted(found, key=lambda n: int(n[1:]))

    def next_name(self) -> str:
        names = self.names()
        return f"v{int(names[-1][1:]) + 1}" if names else "v1"

    def current_name(self) -> str:
        try:
            name = json.loads((self.root / "current.json").read_text(encoding="utf-8")).get(
                "current", SHIPPED
            )
        except (OSError, ValueError, AttributeError):
            return SHIPPED
        return name if name in self.names() else SHIPPED

    def current(self) -> ModelFolder | None:
        name = self.current_name()
        return None if name == SHIPPED else ModelFolder.read(self.root / name)

    def use(self, name: str) -> None:
        """Make ``name`` (a version, or ``shipped``) the one in use; :class:`LearnError` if unknown."""
        from polyrnn.io import atomic_write_json

        if name != SHIPPED:
            if name not in self.names():
                raise LearnError(
                    f"no model version {name!r} in {self.root} (have: {', '.join(self.names())})"
                )
            ModelFolder.read(self.root / name)  # a damaged version is never put in use
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.root / "current.json", {"current": name, "since": time.time()})

    def table(self) -> list[dict[str, Any]]:
        """One row per version: name, in use, polygons learned from, held-out figures, seconds, created."""
        rows = []
        current = self.current_name()
        for name in self.names():
            try:
                info = ModelFolder.read(self.root / name).info
            except LearnError as e:
                rows.append({"name": name, "current": name == current, "error": str(e)})
                continue
            held = info.get("held_out", {})
            rows.append(
                {
                    "name": name,
                    "current": name == current,
                    "polygons": info.get("learned_from", {}).get("instances"),
                    "automatic_before": held.get("before", {}).get("automatic"),
                    "automatic": held.get("after", {}).get("automatic"),
                    "score": held.get("after", {}).get("score"),
                    "seconds": info.get("seconds"),
                    "created": info.get("created"),
                }
            )
        return rows
