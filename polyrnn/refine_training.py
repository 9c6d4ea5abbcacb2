"""Training the correction engine's :class:`~polyrnn.modeling.refiner.Refiner` (``polyrnn train-refiner``).

The mask model is frozen, so its features and its probability are computed once per crop and cached in memory
(a canonical crop and augmented ones per instance). Corrections are simulated on the refiner's own errors, as
RITM trains (iterative sampling): each batch first takes a random number of corrections with the network
itself (no gradient), then one training step on the next correction. A simulated correction is a point on the
ground-truth boundary beside the largest error region (its point farthest from the region's border), positive
where the object was missed, negative where the polygon spilled over.

A run folder ``OUT/<name>/`` holds ``config.yaml``, ``weights/last.pt`` and ``weights/best.pt`` (best mean IoU
after 1..5 simulated corrections on held-out training images), ``results.csv`` and ``results.png``.
"""

from __future__ import annotations

import io
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from polyrnn.build import REFINER_FORMAT, CheckpointError, default_weights, load_mask_model
from polyrnn.config import AugmentConfig
from polyrnn.data.instance import Instance
from polyrnn.evaluation.clicks import boundary_points, nearest_point, worst_error
from polyrnn.io import atomic_write_bytes, atomic_write_text, sha256_file
from polyrnn.modeling.mask_net import MaskNet
from polyrnn.modeling.refiner import Refiner, refiner_maps
from polyrnn.provenance import git_sha, versions

DATASETS = (
    "../shared/datasets/coco128-seg",
    "../shared/datasets/coco-mini/train2017",
    "../shared/datasets/coco-mval",
)


@dataclass(frozen=True)
class RefinerConfig:
    mask_weights: str = ""  # the mask model whose features the refiner reads ("" = the shipped lite-mask)
    train: tuple[str, ...] = DATASETS  # training datasets (any supported format)
    val_split: float = 0.1  # held-out fraction of the training images (choosing the epoch), when val is ""
    val: str = ""  # a held-out dataset instead (choosing the epoch)
    init_weights: str = ""  # start from this refiner (e.g. the shipped one, when learning a new domain)
    min_size: float = 20.0  # keep boxes whose longer side is at least this (pixels)
    limit_train: int = 0  # at most this many training instances (0 = all; smoke runs)
    copies: int = 3  # crops per instance in the cache: the canonical one and copies - 1 augmented ones
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-5
    max_clicks: int = 6  # corrections simulated with the network before a training step: 0 .. max_clicks - 1
    val_clicks: int = 5  # held-out figure: mean IoU after 1 .. val_clicks corrections
    # share of simulated corrections that are region clicks (a point in the error region and its sign, no
    # vertex: the editor's Shift+click, CVAT's clicks) rather than drags; the epoch is then chosen on both
    region_clicks: float = 0.0
    # > 0: a focus refiner (FocalClick's focus crop): it reads windows of about this many crop sides
    # centred on corrections of objects at least focus_min px long, starting from the mask model's outline
    focus: float = 0.0
    focus_min: float = 96.0
    focus_input: int = 224  # the window's side in pixels as the mask model reads it (its training input: 224)
    reduce: int = 32  # refiner: feature channels after the 1x1 reduction
    hidden: int = 40  # refiner: channels of its dilated convolutions
    seed: int = 0
    out: str = "runs/train"
    name: str = "refiner"

    def __post_init__(self) -> None:
        """Bounds what reaches the cache and the networks (a window the shipped pass would refuse, an input
        no image could fill) and keeps the run folder inside ``out``; ``ValueError`` with the key."""
        checks = (
            ("focus", self.focus == 0 or 0.05 <= self.focus <= 1.0, "0 (off) or 0.05..1 crop sides"),
            ("focus_min", 0 <= self.focus_min <= 1e5, "0..100000 px"),
            ("focus_input", 32 <= self.focus_input <= 1024, "32..1024 px"),
            ("region_clicks", 0 <= self.region_clicks <= 1, "a share 0..1"),
        )
        for key, ok, want in checks:
            if not ok:  # NaN fails every comparison
                raise ValueError(f"key '{key}': {getattr(self, key)!r} out of range ({want})")
        if Path(self.name).name != self.name or self.name in ("", ".", ".."):
            raise ValueError(f"key 'name': {self.name!r} must be a folder name, not a path")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_refiner_config(path: str | None, overrides: list[str] | None = None) -> RefinerConfig:
    """Like :func:`polyrnn.config.load_train_config`, for :class:`RefinerConfig` (recipe ``refiner``)."""
    from polyrnn.config import load_config

    return load_config(RefinerConfig, path, overrides)  # type: ignore[no-any-return]


# --- simulated corrections -----------------------------------------------------------------------------
# (vx, vy) boundary point (NaN for a region click: no vertex), (mx, my) the drag's middle or the click, sign
Drag = tuple[float, float, float, float, int]


def simulated_click(
    pred: np.ndarray, gt: np.ndarray, gt_boundary: np.ndarray, *, region: bool = False
) -> Drag | None:
    """A correction as the annotator makes it in the editor: at the worst error's innermost point, the
    outline runs at ``u`` (the predicted boundary point nearest to it) and should run at ``v`` (the
    ground-truth boundary point nearest to it); the annotator drags from ``u`` to ``v``. Returns ``v``, the
    drag's middle ``(u + v) / 2`` (inside the error region) and the sign (+1: the object was missed there,
    -1: the polygon spilled over); None without error. ``region``: a click at the innermost point itself
    instead (the standard click protocol), with no vertex: ``(nan, nan, x, y, sign)``."""
    e = worst_error(pred, gt)
    if e is None or not len(gt_boundary):
        return None
    x, y, missed, _ = e
    if region:
        return math.nan, math.nan, x, y, 1 if missed else -1
    vx, vy = nearest_point(gt_boundary, x, y)
    own = boundary_points(pred)
    ux, uy = nearest_point(own, x, y) if len(own) else (x, y)
    return vx, vy, (ux + vx) / 2, (uy + vy) / 2, 1 if missed else -1


# --- the cache ---------------------------------------------------------------------------------------
@dataclass
class Cache:
    """Per crop: mask-model ``features`` (N, C, D, D) fp16, its flip-averaged ``prob`` (N, S, S) fp16, the
    ground truth ``gt`` (N, S, S) bool, and ``image`` (N,) the index of its source image."""

    features: torch.Tensor
    prob: torch.Tensor
    gt: torch.Tensor
    image: np.ndarray
    start: torch.Tensor | None = None  # (N, S, S) bool: the mask each sample starts from (None: prob > 0.5)

    def __len__(self) -> int:
        return len(self.image)


@torch.no_grad()
def build_cache(
    mask_model: MaskNet, instances: list[Instance], *, copies: range, size: int, seed: int, log: Any = print
) -> Cache:
    """Run the frozen mask model once over crops ``copies`` of each instance (copy 0: the canonical crop;
    1, 2, ...: augmented ones: flips, random context 10-20 %, scale and shift jitter)."""
    from polyrnn.data.dataset import PolygonDataset

    mask_model.eval()
    images = {p: i for i, p in enumerate(sorted({str(x.image_path) for x in instances}))}
    aug = AugmentConfig(scale_jitter=0.1, shift_jitter=0.05, color_jitter=0.2)
    feats, probs, gts, owner = [], [], [], []
    t0 = time.perf_counter()
    for copy in copies:
        ds = PolygonDataset(instances, train=copy > 0, augment=aug, seed=seed, mask_size=size, image_cache=4)
        ds.set_epoch(copy)
        for start in range(0, len(ds), 32):
            batch = [ds.sample(i) for i in range(start, min(start + 32, len(ds)))]
            x = torch.from_numpy(np.stack([b["image"] for b in batch])).permute(0, 3, 1, 2).float()
            f, p = mask_model.features_and_masks(x, flip=True)
            feats.append(f.half())
            probs.append(F.adaptive_avg_pool2d(p[:, None], size)[:, 0].half())
            gts.append(torch.from_numpy(np.stack([b["mask"] for b in batch]) > 0.5))
            owner += [images[str(instances[b["index"]].image_path)] for b in batch]
        log(f"cache: copy {copy}, {len(owner)} crops ({time.perf_counter() - t0:.0f} s)")
    return Cache(torch.cat(feats), torch.cat(probs), torch.cat(gts), np.array(owner))


@torch.no_grad()
def build_focus_cache(
    mask_model: MaskNet,
    instances: list[Instance],
    *,
    copies: int,
    focus: float,
    size: int,
    seed: int,
    input_size: int = 224,
    context: float = 0.15,
    log: Any = print,
) -> tuple[Cache, np.ndarray]:
    """Focus windows (FocalClick's focus crops) for training a focus refiner: per instance, ``copies``
    square windows of about ``focus`` crop sides (copy 0: exactly, centred where the annotator would first
    drag the mask model's outline; the others: 0.75-1.25 times, around a random boundary point), each read by
    the frozen mask model at ``input_size`` pixels (no mirror, as at inference). ``start``: the mask model's
    outline of the whole object (its crop, mirror-averaged) seen through the window. Returns the cache and
    each row's instance index."""
    import cv2

    from polyrnn.data.crop import CropBox
    from polyrnn.data.instance import load_image

    mask_model.eval()
    rng = np.random.default_rng(seed)
    images = {p: i for i, p in enumerate(sorted({str(x.image_path) for x in instances}))}
    feats, probs, gts, starts, owner, rows = [], [], [], [], [], []
    t0, key, image = time.perf_counter(), "", None
    for n, inst in enumerate(instances):
        if str(inst.image_path) != key:
            key, image = str(inst.image_path), load_image(inst.image_path)
        assert image is not None
        crop = CropBox.around(inst.box, context=context)
        x = torch.from_numpy(np.ascontiguousarray(crop.crop_image(image))).permute(2, 0, 1)[None].float()
        p_obj: np.ndarray = mask_model.features_and_masks(x, flip=True)[1][0].numpy().astype(np.float32)
        full = inst.mask().astype(np.uint8) * 255
        g_obj = cv2.resize(crop.crop_image(full), (size, size), interpolation=cv2.INTER_AREA) > 127
        start_obj = cv2.resize(p_obj, (size, size), interpolation=cv2.INTER_AREA) > 0.5
        windows, bounds = [], boundary_points(g_obj)
        for copy in range(copies):
            e = simulated_click(start_obj, g_obj, bounds) if copy == 0 else None
            if e is not None:
                u = np.array([e[0], e[1]])
                side = focus * crop.side
            elif len(bounds):
                u = np.asarray(bounds[int(rng.integers(len(bounds)))], dtype=np.float64) + rng.normal(
                    0, 1.0, 2
                )
                side = focus * crop.side * float(rng.uniform(0.75, 1.25))
            else:
                break
            c = np.array([crop.x0, crop.y0]) + u * crop.side / size  # image pixels
            windows.append(CropBox.centred(c, side, crop_size=input_size, grid_size=crop.grid_size))
        if not windows:
            continue
        x = torch.from_numpy(np.stack([w.crop_image(image) for w in windows])).permute(0, 3, 1, 2).float()
        f, p = mask_model.features_and_masks(x, flip=False)
        feats.append(f.half())
        probs.append(F.adaptive_avg_pool2d(p[:, None], size)[:, 0].half())
        m = p_obj.shape[0]
        for w in windows:
            gts.append(cv2.resize(w.crop_image(full), (size, size), interpolation=cv2.INTER_AREA) > 127)
            a = crop.side / m * size / w.side  # object-crop mask pixel -> window map pixel
            t = (np.array([crop.x0, crop.y0]) - np.array([w.x0, w.y0])) * size / w.side + 0.5 * a - 0.5
            warp = np.array([[a, 0, t[0]], [0, a, t[1]]], dtype=np.float64)
            starts.append(cv2.warpAffine(p_obj, warp, (size, size), flags=cv2.INTER_LINEAR) > 0.5)
            owner.append(images[str(inst.image_path)])
            rows.append(n)
        if (n + 1) % 200 == 0:
            log(
                f"focus cache: {n + 1}/{len(instances)} instances, {len(owner)} windows "
                f"({time.perf_counter() - t0:.0f} s)"
            )
    cache = Cache(
        torch.cat(feats),
        torch.cat(probs),
        torch.from_numpy(np.stack(gts)),
        np.array(owner),
        torch.from_numpy(np.stack(starts)),
    )
    return cache, np.array(rows)


# --- training ------------------------------------------------------------------------------------------
def _loss(logits: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    t = gt.float()
    bce = F.binary_cross_entropy_with_logits(logits, t)
    p = torch.sigmoid(logits).flatten(1)
    dice = 1 - (2 * (p * t.flatten(1)).sum(1) + 1) / (p.sum(1) + t.flatten(1).sum(1) + 1)
    return bce + dice.mean()


def _add_clicks(
    current: torch.Tensor,
    gt: torch.Tensor,
    bounds: list[np.ndarray],
    clicks: list[list[Drag]],
    *,
    region: float | np.ndarray = 0.0,
    rng: np.random.Generator | None = None,
) -> None:
    """The next simulated correction of each sample into ``clicks``: a region click with probability
    ``region`` (a share, drawn with ``rng``; 1.0: always), else a drag."""
    cur, g = current.numpy() > 0.5, gt.numpy()
    draws = rng.random(len(clicks)) if rng is not None else np.zeros(len(clicks))
    for i in range(len(clicks)):
        is_region = bool(region >= 1.0) or bool(draws[i] < region)
        c = simulated_click(cur[i], g[i], bounds[i], region=is_region)
        if c is not None:
            clicks[i].append(c)


def _maps(current: torch.Tensor, prob: torch.Tensor, clicks: list[list[Drag]], size: int) -> torch.Tensor:
    fixed = [[(c[0], c[1]) for c in cs if not math.isnan(c[0])] for cs in clicks]  # region clicks: no vertex
    return refiner_maps(current, prob, fixed, [[(c[2], c[3], c[4]) for c in cs] for cs in clicks], size)


def _start(prob: torch.Tensor) -> torch.Tensor:
    return (prob.float() > 0.5).float()


def train_one_epoch(
    model: Refiner,
    cache: Cache,
    index: np.ndarray,
    optimizer: torch.optim.Optimizer,
    *,
    cfg: RefinerConfig,
    rng: np.random.Generator,
    bounds: list[np.ndarray],
) -> dict[str, float]:
    """One pass over ``index`` (cache rows) in random batches; returns the mean loss and seconds."""
    model.train()
    order = rng.permutation(index)
    total, n, t0 = 0.0, 0, time.perf_counter()
    for s in range(0, len(order), cfg.batch_size):
        rows = order[s : s + cfg.batch_size]
        if len(rows) < 2:
            continue
        feats, prob, gt = cache.features[rows].float(), cache.prob[rows].float(), cache.gt[rows]
        current = _start(prob) if cache.start is None else cache.start[rows].float()
        clicks: list[list[Drag]] = [[] for _ in rows]
        b_bounds = [bounds[r] for r in rows]
        share = cfg.region_clicks
        for _ in range(int(rng.integers(0, cfg.max_clicks))):  # the network's own earlier corrections
            _add_clicks(current, gt, b_bounds, clicks, region=share, rng=rng if share > 0 else None)
            model.eval()
            with torch.no_grad():
                current = (model(feats, _maps(current, prob, clicks, model.size)) > 0).float()
            model.train()
        _add_clicks(current, gt, b_bounds, clicks, region=share, rng=rng if share > 0 else None)
        loss = _loss(model(feats, _maps(current, prob, clicks, model.size)), gt)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
        total += float(loss.detach()) * len(rows)
        n += len(rows)
    return {"loss": total / max(n, 1), "seconds": time.perf_counter() - t0, "instances": float(n)}


@torch.no_grad()
def click_curve(
    model: Refiner,
    cache: Cache,
    index: np.ndarray,
    *,
    clicks: int,
    bounds: list[np.ndarray],
    region: bool = False,
) -> list[float]:
    """Mean IoU (map resolution) after k = 0..clicks simulated corrections (drags, or ``region`` clicks) on
    cache rows ``index``."""
    model.eval()
    ious = np.zeros(clicks + 1)
    for s in range(0, len(index), 64):
        rows = index[s : s + 64]
        feats, prob, gt = cache.features[rows].float(), cache.prob[rows].float(), cache.gt[rows]
        current = _start(prob) if cache.start is None else cache.start[rows].float()
        hist: list[list[Drag]] = [[] for _ in rows]
        for k in range(clicks + 1):
            if k:
                _add_clicks(current, gt, [bounds[r] for r in rows], hist, region=1.0 if region else 0.0)
                current = (model(feats, _maps(current, prob, hist, model.size)) > 0).float()
            inter = (current.bool() & gt).flatten(1).sum(1).float()
            union = (current.bool() | gt).flatten(1).sum(1).float()
            ious[k] += float(torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union)).sum())
    return (ious / max(len(index), 1)).tolist()


def refiner_checkpoint(model: Refiner, cfg: RefinerConfig, mask_path: Path, **extra: Any) -> dict[str, Any]:
    from polyrnn import __version__

    return {
        "format": REFINER_FORMAT,
        "version": __version__,
        "refiner_config": {
            "feat_channels": model.feat_channels,
            "reduce": cfg.reduce,
            "hidden": cfg.hidden,
            "size": model.size,
        },
        "mask_sha256": sha256_file(mask_path),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        **extra,
    }


def _plot(rows: list[dict[str, Any]], png: Path, clicks: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    ep = [r["epoch"] for r in rows]
    ax[0].plot(ep, [r["train_loss"] for r in rows])
    ax[0].set_title("training loss")
    for k in range(1, clicks + 1):
        ax[1].plot(ep, [100 * r[f"val_iou_{k}"] for r in rows], label=f"after {k}")
    ax[1].set_title("held-out mean IoU (%) after k corrections")
    ax[1].legend(fontsize=8)
    from polyrnn.io import save_figure

    save_figure(fig, ax, png)


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    from polyrnn.io import atomic_write_csv

    atomic_write_csv(path, rows, list(rows[0]))


def split_instances(cfg: RefinerConfig) -> tuple[list[Instance], list[Instance]]:
    from polyrnn.formats import load_datasets
    from polyrnn.training import split_by_image

    insts = load_datasets(list(cfg.train), None, min_size=cfg.min_size).instances
    insts = [i for i in insts if not i.iscrowd]
    if cfg.val:
        val = [i for i in load_datasets([cfg.val], None, min_size=cfg.min_size).instances if not i.iscrowd]
        return (insts[: cfg.limit_train] if cfg.limit_train else insts), val
    train, val = split_by_image(insts, cfg.val_split, seed=cfg.seed) if cfg.val_split > 0 else (insts, [])
    return (train[: cfg.limit_train] if cfg.limit_train else train), val


def _object_cache(
    mask_model: MaskNet, cfg: RefinerConfig, train: list[Instance], val: list[Instance], size: int, log: Any
) -> tuple[Cache, np.ndarray, np.ndarray]:
    """The object crops' cache: every instance's canonical crop, ``cfg.copies - 1`` augmented ones of the
    training instances; returns it with its training and held-out rows."""
    cache = build_cache(mask_model, train + val, copies=range(1), size=size, seed=cfg.seed, log=log)
    if cfg.copies > 1:
        extra = build_cache(mask_model, train, copies=range(1, cfg.copies), size=size, seed=cfg.seed, log=log)
        cache = Cache(
            torch.cat([cache.features, extra.features]),
            torch.cat([cache.prob, extra.prob]),
            torch.cat([cache.gt, extra.gt]),
            np.concatenate([cache.image, extra.image]),
        )
    train_rows = np.array([i for i in range(len(cache)) if not (len(train) <= i < len(train) + len(val))])
    val_rows = np.arange(len(train), len(train) + len(val))
    return cache, train_rows, val_rows


def train_refiner(cfg: RefinerConfig, *, log: Any = print) -> Path:
    """Train per ``cfg`` into ``cfg.out/cfg.name``; returns the run folder."""
    from polyrnn.config import config_to_yaml

    run = Path(cfg.out) / cfg.name
    if (run / "weights" / "last.pt").is_file():
        raise ValueError(f"{run} already holds a run: choose another name=")
    mask_path = Path(cfg.mask_weights) if cfg.mask_weights else default_weights("lite-mask")
    try:
        mask_model = load_mask_model(mask_path)
    except CheckpointError as e:
        raise ValueError(str(e)) from e
    (run / "weights").mkdir(parents=True, exist_ok=True)
    atomic_write_text(run / "config.yaml", config_to_yaml(cfg))  # type: ignore[arg-type]
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    train, val = split_instances(cfg)
    log(f"refiner: {len(train)} training and {len(val)} held-out instances, mask model {mask_path}")
    size = 2 * mask_model.grid_size
    if cfg.focus > 0:
        train = [i for i in train if i.long_side >= cfg.focus_min]
        val = [i for i in val if i.long_side >= cfg.focus_min]
        cache, owner = build_focus_cache(
            mask_model,
            train + val,
            copies=cfg.copies,
            focus=cfg.focus,
            size=size,
            seed=cfg.seed,
            input_size=cfg.focus_input,
            log=log,
        )
        held = owner >= len(train)
        first = np.r_[True, owner[1:] != owner[:-1]]  # each held-out instance's copy 0
        val_rows = np.nonzero(held & first)[0]
        train_rows = np.nonzero(~held)[0]
        log(f"focus refiner: {len(train_rows)} training windows, {len(val_rows)} held-out")
    else:
        cache, train_rows, val_rows = _object_cache(mask_model, cfg, train, val, size, log)
    bounds = [boundary_points(g.numpy()) for g in cache.gt]
    model = Refiner(
        feat_channels=mask_model.encoder.out_channels, reduce=cfg.reduce, hidden=cfg.hidden, size=size
    )
    if cfg.init_weights:  # its layers, whatever mask model it was trained on (the features are similar)
        from polyrnn.build import load_refiner

        try:
            model.load_state_dict(load_refiner(cfg.init_weights).state_dict())
        except RuntimeError as e:  # the shapes of another architecture
            raise ValueError(
                f"{cfg.init_weights}: another refiner architecture than this config's ({e})"
            ) from None
        log(f"refiner: initialised from {cfg.init_weights}")
    if cfg.init_weights and len(val_rows):
        start = click_curve(model, cache, val_rows, clicks=cfg.val_clicks, bounds=bounds)
        log(
            "before training: held-out IoU after 0..{} corrections {}".format(
                cfg.val_clicks, " ".join(f"{100 * v:.1f}" for v in start)
            )
        )
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(cfg.epochs, 1))
    rows: list[dict[str, Any]] = []
    best = -math.inf
    for epoch in range(1, cfg.epochs + 1):
        tr = train_one_epoch(model, cache, train_rows, optimizer, cfg=cfg, rng=rng, bounds=bounds)
        scheduler.step()
        curve = (
            click_curve(model, cache, val_rows, clicks=cfg.val_clicks, bounds=bounds) if len(val_rows) else []
        )
        metric = float(np.mean(curve[1:])) if curve else -tr["loss"]
        regional: list[float] = []
        if cfg.region_clicks > 0 and len(val_rows):  # choose on drags and region clicks alike
            regional = click_curve(model, cache, val_rows, clicks=cfg.val_clicks, bounds=bounds, region=True)
            metric = (metric + float(np.mean(regional[1:]))) / 2
        row = {
            "epoch": epoch,
            "train_loss": tr["loss"],
            "seconds": tr["seconds"],
            **{f"val_iou_{k}": v for k, v in enumerate(curve)},
            **{f"val_region_iou_{k}": v for k, v in enumerate(regional)},
        }
        rows.append(row)
        ckpt = refiner_checkpoint(
            model,
            cfg,
            mask_path,
            epoch=epoch,
            metric=metric,
            train_config=cfg.to_dict(),
            git_sha=git_sha(),
            versions=versions(),
        )
        buf = io.BytesIO()
        torch.save(ckpt, buf)
        atomic_write_bytes(run / "weights" / "last.pt", buf.getvalue())
        if metric > best:
            best = metric
            atomic_write_bytes(run / "weights" / "best.pt", buf.getvalue())
        _write_csv(run / "results.csv", rows)
        if curve:
            _plot(rows, run / "results.png", cfg.val_clicks)
        shown = " ".join(f"{100 * v:.1f}" for v in curve)
        if regional:
            shown += " | region clicks " + " ".join(f"{100 * v:.1f}" for v in regional)
        log(
            f"epoch {epoch}/{cfg.epochs}: loss {tr['loss']:.4f}, held-out IoU after 0..{cfg.val_clicks} "
            f"corrections {shown} ({tr['seconds']:.0f} s){' *' if metric >= best else ''}"
        )
        sys.stdout.flush()
    return run


def ship_refiner(src: str | Path, *, focus: str | Path | None = None, folder: Path | None = None) -> Path:
    """Write a refiner run's checkpoint as the shipped ``refiner.pt`` (half precision, training state
    dropped) and its line in ``SHA256SUMS``; ``focus``: a focus refiner's checkpoint (``focus`` > 0 in its
    training config, the same mask model) to ship as its focus pass. Returns the written file."""
    from polyrnn.build import WEIGHTS_DIR

    folder = folder or WEIGHTS_DIR
    ckpt = torch.load(src, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != REFINER_FORMAT:
        raise CheckpointError(f"{src}: not a polyrnn refiner checkpoint")
    keep = {
        k: ckpt[k]
        for k in (
            "format",
            "version",
            "refiner_config",
            "mask_sha256",
            "epoch",
            "metric",
            "git_sha",
            "train_config",
        )
        if k in ckpt
    }
    keep["model"] = {k: (v.half() if v.is_floating_point() else v) for k, v in ckpt["model"].items()}
    keep["source"] = Path(src).name
    if focus is not None:
        second = torch.load(focus, map_location="cpu", weights_only=True)
        if not isinstance(second, dict) or second.get("format") != REFINER_FORMAT:
            raise CheckpointError(f"{focus}: not a polyrnn refiner checkpoint")
        trained = second.get("train_config") or {}
        if float(trained.get("focus", 0)) <= 0:
            raise CheckpointError(f"{focus}: not a focus refiner (train_config.focus is not > 0)")
        if second.get("mask_sha256") != ckpt.get("mask_sha256"):
            raise CheckpointError(f"{focus}: trained on another mask model's features than {src}")
        keep["focus"] = {
            "refiner_config": second["refiner_config"],
            "model": {k: (v.half() if v.is_floating_point() else v) for k, v in second["model"].items()},
            "window": float(trained["focus"]),
            "min_side": float(trained.get("focus_min", 0.0)),
            "input_size": int(trained.get("focus_input", 224)),
            "epoch": second.get("epoch"),
            "metric": second.get("metric"),
            "train_config": trained,
            "source": Path(focus).name,
        }
    from polyrnn.build import write_shipped

    dst = write_shipped(folder, "refiner.pt", keep)
    return dst
