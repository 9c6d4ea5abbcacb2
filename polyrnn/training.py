"""Training as plain functions: ``train_one_epoch``, ``evaluate``, ``run_training``.

A run folder ``OUT/<name>/`` holds ``config.yaml`` (the resolved config), ``weights/last.pt`` and
``weights/best.pt`` (atomic saves; the unwrapped model with its config, optimiser, epoch, best metric,
git SHA and versions), ``results.csv`` (one row per epoch) and ``results.png`` (its curves).
"""

from __future__ import annotations

import csv
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader
from tqdm import tqdm

from polyrnn.build import (
    Model,
    build_from_config,
    checkpoint_dict,
    load_weights,
    read_checkpoint,
    save_checkpoint,
)
from polyrnn.config import INFERENCE, TrainConfig, config_to_yaml, train_config_from_dict
from polyrnn.data.crop import CropBox
from polyrnn.data.dataset import (
    LengthGroupedBatchSampler,
    PolygonDataset,
    collate,
    target_lengths,
    usable,
    worker_init,
)
from polyrnn.data.instance import Instance
from polyrnn.distributed import SINGLE, Dist, all_sum, barrier, setup, teardown
from polyrnn.formats import load_datasets
from polyrnn.geometry import mask_iou, rasterize
from polyrnn.io import atomic_write_text
from polyrnn.modeling.losses import PolygonLoss
from polyrnn.modeling.mask_net import MaskLoss, MaskNet, mask_polygon
from polyrnn.modeling.polygon_rnn import PolygonRNN
from polyrnn.provenance import git_sha, versions

Loss = PolygonLoss | MaskLoss

CSV_FIELDS = [
    "epoch",
    "train_loss",
    "train_polygon_loss",
    "train_first_vertex_loss",
    "train_mask_loss",
    "train_dice_loss",
    "val_loss",
    "val_miou",
    "val_first_vertex_acc",
    "lr",
    "seconds",
    "instances_per_s",
]


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, unusable data); the message says why and where."""


def _progress(iterable: Any, **kw: Any) -> Any:
    return tqdm(iterable, disable=not sys.stderr.isatty(), dynamic_ncols=True, **kw)


def _forward(
    model: Model | DDP, batch: dict[str, torch.Tensor], tbptt: int = 0, features: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """The model's outputs for a batch (through the DDP wrapper when there is one, so gradients sync)."""
    core = model.module if isinstance(model, DDP) else model
    if isinstance(core, MaskNet):
        return model(batch["images"], features=features)
    return model(batch["images"], batch["tokens"], features=features, tbptt=tbptt)


def train_one_epoch(
    model: Model | DDP,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    loss_fn: Loss,
    *,
    epoch: int,
    device: torch.device,
    clip_grad: float,
    tbptt: int = 0,
    place: Dist = SINGLE,
) -> dict[str, float]:
    """One pass over ``loader``; returns mean losses (``loss`` and its parts), instances and seconds (over
    all ranks when distributed). Raises :class:`TrainingError` on a non-finite loss."""
    model.train()
    sums: dict[str, float] = {}
    n = 0
    t0 = time.perf_counter()
    bar = _progress(loader, desc=f"epoch {epoch}", unit="batch")
    for b, batch in enumerate(bar):
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        losses = loss_fn(_forward(model, batch, tbptt), batch)
        loss = losses["loss"]
        if not torch.isfinite(loss):
            parts = ", ".join(f"{k} {v.item()}" for k, v in losses.items() if k != "loss")
            raise TrainingError(
                f"non-finite loss ({loss.item()}) at epoch {epoch}, batch {b} ({parts}); "
                "lower the learning rate or check the data"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
        optimizer.step()
        k = batch["images"].shape[0]
        n += k
        for key, v in losses.items():
            sums[key] = sums.get(key, 0.0) + v.item() * k
        rate = n / max(time.perf_counter() - t0, 1e-9)
        bar.set_postfix(loss=f"{sums['loss'] / n:.3f}", inst_s=f"{rate:.1f}")
        if bar.disable and (b + 1) % 50 == 0:  # no progress bar (not a terminal): a plain line now and then
            eta = (len(loader) - b - 1) * (time.perf_counter() - t0) / (b + 1)
            print(
                f"epoch {epoch}: batch {b + 1}/{len(loader)} loss {sums['loss'] / n:.4f} "
                f"{rate:.1f} inst/s, ETA {eta:.0f} s",
                file=sys.stderr,
                flush=True,
            )
    secs = time.perf_counter() - t0
    total = all_sum(place, {**sums, "instances": float(n)})
    n_all = total.pop("instances")
    return {**{k: v / max(n_all, 1) for k, v in total.items()}, "instances": n_all, "seconds": secs}


def predict_polygon(
    model: PolygonRNN,
    static: torch.Tensor,
    vertex_logits: torch.Tensor,
    crop: CropBox,
    eos_threshold: float = INFERENCE.eos_threshold,
) -> np.ndarray:
    """The automatic polygon (first-vertex argmax, greedy decoding) in image pixels, (N, 2)."""
    idx, _ = model.first_vertices(vertex_logits)
    dec = model.decode(static, [int(idx[0, 0])], eos_threshold=eos_threshold)
    return crop.cells_to_image(crop.tokens_to_cells(np.array(dec.tokens)))


@torch.no_grad()
def evaluate(
    model: Model,
    loader: DataLoader,
    instances: Sequence[Instance],
    loss_fn: Loss,
    *,
    device: torch.device,
    context: float = INFERENCE.context,
) -> dict[str, float]:
    """Validation loss (teacher-forced, canonical start), first-vertex accuracy (argmax on a ground-truth
    vertex cell) and mean IoU of the greedy automatic polygons at full image resolution (mask model:
    its mask's polygon)."""
    model.eval()
    total, n, hits = 0.0, 0, 0
    ious: list[float] = []
    for batch in _progress(loader, desc="validate", unit="batch"):
        batch = {k: v.to(device) for k, v in batch.items()}
        feats = model.encoder(batch["images"])
        out = _forward(model, batch, features=feats)
        k = batch["images"].shape[0]
        total += float(loss_fn(out, batch)["loss"]) * k  # type: ignore[arg-type]
        n += k
        if isinstance(model, MaskNet):
            probs = torch.sigmoid(out["mask_logits"]).cpu().numpy()
            for j in range(k):
                inst = instances[int(batch["index"][j])]
                crop = CropBox.around(
                    inst.box, context=context, crop_size=model.crop_size, grid_size=model.grid_size
                )
                poly = mask_polygon(probs[j], crop)
                pred = rasterize([poly] if poly is not None else [], inst.height, inst.width)
                ious.append(mask_iou(pred, inst.mask(), inst.ignore_mask()))
            continue
        top = out["vertex_logits"].flatten(1).argmax(1)
        hits += int(batch["vertices"].flatten(1).gather(1, top[:, None]).sum())
        _, static, _ = model.encode(batch["images"], features=feats)
        for j in range(k):
            inst = instances[int(batch["index"][j])]
            crop = CropBox.around(
                inst.box, context=context, crop_size=model.crop_size, grid_size=model.grid_size
            )
            poly = predict_polygon(model, static[j : j + 1], out["vertex_logits"][j : j + 1], crop)
            pred = rasterize([poly], inst.height, inst.width)
            ious.append(mask_iou(pred, inst.mask(), inst.ignore_mask()))
    fv_acc = math.nan if isinstance(model, MaskNet) else hits / max(n, 1)
    return {
        "val_loss": total / max(n, 1),
        "val_miou": float(np.mean(ious)) if ious else float("nan"),
        "val_first_vertex_acc": fv_acc,
    }


def _plot(csv_path: Path, png_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return

    def col(name: str) -> list[float]:
        return [float(r[name]) if r.get(name) not in (None, "", "nan") else math.nan for r in rows]

    ep = col("epoch")
    fig, ax = plt.subplots(2, 2, figsize=(10, 7))
    ax[0, 0].plot(ep, col("train_loss"), label="train")
    ax[0, 0].plot(ep, col("val_loss"), label="validation")
    ax[0, 0].set_title("loss")
    ax[0, 0].legend()
    ax[0, 1].plot(ep, [100 * v for v in col("val_miou")], color="C2")
    ax[0, 1].set_title("validation mean IoU (%), greedy polygons")
    for key in CSV_FIELDS:  # the loss parts this run has (polygon + first vertex, or mask + dice)
        if (
            key.startswith("train_")
            and key != "train_loss"
            and any(r.get(key) not in (None, "", "nan") for r in rows)
        ):
            ax[1, 0].plot(ep, col(key), label=key[len("train_") : -len("_loss")].replace("_", " "))
    ax[1, 0].set_title("training loss parts")
    ax[1, 0].legend()
    ax[1, 1].plot(ep, [100 * v for v in col("val_first_vertex_acc")], color="C3")
    ax[1, 1].set_title("first-vertex accuracy (%)")
    from polyrnn.io import save_figure

    save_figure(fig, ax.flat, png_path)


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    from polyrnn.io import atomic_write_csv

    atomic_write_csv(path, rows, CSV_FIELDS)


def _read_csv(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [dict(r) for r in csv.DictReader(f)]


def _loaders(
    cfg: TrainConfig, train_insts: list[Instance], val_insts: list[Instance], place: Dist = SINGLE
) -> tuple[PolygonDataset, LengthGroupedBatchSampler, DataLoader, DataLoader | None]:
    m = cfg.model
    mask_size = m.mask_size if m.kind == "mask" else 0
    train_ds = PolygonDataset(
        train_insts,
        train=True,
        augment=cfg.augment,
        grid_size=m.grid_size,
        crop_size=m.crop_size,
        max_len=m.max_len,
        seed=cfg.seed,
        mask_size=mask_size,
    )
    lengths = target_lengths(train_insts, grid_size=m.grid_size, max_len=m.max_len)
    sampler = LengthGroupedBatchSampler(
        train_insts, lengths, batch_size=cfg.batch_size, seed=cfg.seed, rank=place.rank, world=place.world
    )
    kw: dict[str, Any] = {"num_workers": cfg.workers, "collate_fn": collate, "worker_init_fn": worker_init}
    if cfg.workers > 0:
        kw["prefetch_factor"] = 4
    train_loader = DataLoader(train_ds, batch_sampler=sampler, **kw)
    val_loader = None
    if val_insts:
        val_ds = PolygonDataset(
            val_insts,
            train=False,
            grid_size=m.grid_size,
            crop_size=m.crop_size,
            max_len=m.max_len,
            mask_size=mask_size,
        )
        val_loader = DataLoader(val_ds, batch_size=cfg.batch_size, shuffle=False, **kw)
    return train_ds, sampler, train_loader, val_loader


def split_by_image(
    instances: Sequence[Instance], fraction: float, *, seed: int = 0
) -> tuple[list[Instance], list[Instance]]:
    """(kept, held out): a seeded ``fraction`` of the images, with all their instances, held out."""
    images = sorted({str(i.image_path) for i in instances})
    rng = np.random.default_rng([seed, 11])
    held = {images[int(j)] for j in rng.permutation(len(images))[: int(round(len(images) * fraction))]}
    return (
        [i for i in instances if str(i.image_path) not in held],
        [i for i in instances if str(i.image_path) in held],
    )


def load_instances(cfg: TrainConfig) -> tuple[list[Instance], list[Instance]]:
    d = cfg.data
    classes = set(d.classes) or None
    if not d.train:
        raise TrainingError("config key 'data.train' is empty: name at least one training dataset")
    train = load_datasets(list(d.train), d.format or None, min_size=d.min_size, classes=classes).instances
    train = usable(train, grid_size=cfg.model.grid_size, max_len=cfg.model.max_len)
    val: list[Instance] = []
    if d.val_split > 0 and not d.val:
        train, val = split_by_image(train, d.val_split, seed=cfg.seed)
    if d.limit_train:
        train = train[: d.limit_train]
    if d.val:
        from polyrnn.formats import load_dataset

        val = load_dataset(d.val, d.format or None, min_size=d.min_size, classes=classes).instances
        val = usable(val, grid_size=cfg.model.grid_size, max_len=cfg.model.max_len)
    if d.limit_val:
        val = val[: d.limit_val]
    if not train:
        raise TrainingError(f"no usable training instances in {list(d.train)}")
    return train, val


def _resume_state(cfg: TrainConfig, run: Path, resume: bool) -> tuple[TrainConfig, dict[str, Any] | None]:
    """The config to train with and, with ``resume``, the last checkpoint of ``run`` (its saved config
    with this call's epochs, device and workers)."""
    last = run / "weights" / "last.pt"
    if not resume:
        if last.is_file():
            raise TrainingError(
                f"{run} already holds a run: pass --resume to continue it or choose another --name"
            )
        return cfg, None
    if not last.is_file():
        raise TrainingError(f"--resume: {last} does not exist")
    state = read_checkpoint(last)
    saved = train_config_from_dict(state["train_config"])
    resumed = replace(saved, epochs=cfg.epochs, device=cfg.device, workers=cfg.workers)
    differ = [f"{k}={v!r} (the run has {w!r})" for k, v, w in _differences(cfg, resumed)]
    if differ:  # never silently dropped: a resumed run continues with the settings it started with
        raise TrainingError(
            f"--resume continues {run} with its own settings, but this call asks for "
            + ", ".join(differ[:5])
            + ("" if len(differ) <= 5 else f" and {len(differ) - 5} more")
            + ": drop them (only epochs, device and workers may change), or start a new run from its "
            f"weights with init_weights={last} and another name"
        )
    return resumed, state


def _differences(a: Any, b: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, a's value, b's value) for every field where two configs differ."""
    from dataclasses import fields, is_dataclass

    out: list[tuple[str, Any, Any]] = []
    for f in fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if is_dataclass(x) and is_dataclass(y):
            out += _differences(x, y, f"{prefix}{f.name}.")
        elif x != y and not (isinstance(x, list | tuple) and list(x) == list(y)):
            out.append((prefix + f.name, x, y))
    return out


def _optimizer(model: Model, cfg: TrainConfig) -> tuple[torch.optim.Optimizer, Any]:
    """Adam over the trainable parameters (a fine-tuned backbone at ``backbone_lr``) and the step schedule."""
    backbone = {id(p) for p in model.encoder.backbone.parameters()}
    head = [p for p in model.parameters() if p.requires_grad and id(p) not in backbone]
    groups: list[dict[str, Any]] = [{"params": head}]
    if not model.encoder.backbone_frozen:
        groups.append({"params": list(model.encoder.backbone.parameters()), "lr": cfg.backbone_lr or cfg.lr})
    optimizer = torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(
        optimizer, step_size=max(cfg.lr_step, 1), gamma=cfg.lr_gamma if cfg.lr_step > 0 else 1.0
    )
    return optimizer, scheduler


def _loss(cfg: TrainConfig) -> Loss:
    if cfg.model.kind == "mask":
        return MaskLoss()
    return PolygonLoss(
        grid_size=cfg.model.grid_size,
        radius=cfg.target_radius,
        sigma=cfg.target_sigma,
        first_vertex_weight=cfg.first_vertex_weight,
    )


def _epoch_row(epoch: int, lr: float, tr: dict[str, float]) -> dict[str, Any]:
    """A ``results.csv`` row from :func:`train_one_epoch`'s figures (validation columns empty)."""
    row: dict[str, Any] = {"epoch": epoch, "train_loss": tr["loss"], "lr": lr, "seconds": tr["seconds"]}
    row.update({f"train_{k}_loss": v for k, v in tr.items() if f"train_{k}_loss" in CSV_FIELDS})
    row["instances_per_s"] = tr["instances"] / max(tr["seconds"], 1e-9)
    row.update(val_loss=math.nan, val_miou=math.nan, val_first_vertex_acc=math.nan)
    return row


def _epoch_line(epoch: int, epochs: int, row: dict[str, Any], is_best: bool) -> str:
    return (
        f"epoch {epoch}/{epochs}: loss {row['train_loss']:.4f} val_loss {row['val_loss']:.4f} "
        f"val_mIoU {100 * row['val_miou']:.2f} fv_acc {100 * row['val_first_vertex_acc']:.1f} "
        f"({row['instances_per_s']:.1f} inst/s, {row['seconds']:.0f} s){' *' if is_best else ''}"
    )


def run_training(cfg: TrainConfig, *, resume: bool = False, log: Any = print) -> Path:
    """Train per ``cfg`` into ``cfg.out/cfg.name``; with ``resume``, continue from ``weights/last.pt``
    exactly (next epoch, optimiser, scheduler and RNG state). Returns the run folder.

    Started by torchrun (``WORLD_SIZE`` > 1) it trains data-parallel (:mod:`polyrnn.distributed`): every rank
    runs this function, rank 0 alone logs and writes the run folder, and the others wait for its checkpoints.
    """
    place, device = setup(cfg.device)
    try:
        return _train(cfg, place, device, resume=resume, log=log if place.main else (lambda *_: None))
    finally:
        teardown(place)


def _train(cfg: TrainConfig, place: Dist, device: torch.device, *, resume: bool, log: Any) -> Path:
    run = Path(cfg.out) / cfg.name
    cfg, state = _resume_state(cfg, run, resume)
    barrier(place)  # every rank has checked the run folder before rank 0 writes to it
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError("--device cuda asked for, but no CUDA device is available")
    torch.manual_seed(cfg.seed)
    if place.main:
        (run / "weights").mkdir(parents=True, exist_ok=True)
        atomic_write_text(run / "config.yaml", config_to_yaml(cfg))
    log(config_to_yaml(cfg))

    train_insts, val_insts = load_instances(cfg)
    log(f"training instances: {len(train_insts)}, validation instances: {len(val_insts)}")
    if place.active:
        total = place.world * cfg.batch_size
        log(f"data-parallel: {place.world} processes x batch {cfg.batch_size} = {total} a step")
    model = build_from_config(replace(cfg.model, pretrained=cfg.model.pretrained and state is None))
    model = model.to(device)
    if cfg.init_weights and state is None:  # start from another run's weights (same architecture)
        init = read_checkpoint(cfg.init_weights)
        load_weights(model, init["model"], f"init_weights {cfg.init_weights}")
        log(f"initialised from {cfg.init_weights} (epoch {init.get('epoch', '?')})")
    model.encoder.freeze_backbone(cfg.freeze_backbone)
    optimizer, scheduler = _optimizer(model, cfg)
    loss_fn = _loss(cfg).to(device)
    start_epoch, best = 1, -math.inf
    rows = _read_csv(run / "results.csv") if resume else []
    if state is not None:
        load_weights(model, state["model"], str(run / "weights" / "last.pt"))
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        start_epoch, best = int(state["epoch"]) + 1, float(state["best_metric"])
        rows = [r for r in rows if int(r["epoch"]) < start_epoch]
        log(f"resumed from {run / 'weights' / 'last.pt'}: epoch {start_epoch}, best {best:.4f}")
    trained: Model | DDP = model
    if place.active:
        if device.type == "cuda":  # batch statistics over all ranks' shares (SyncBatchNorm is CUDA-only)
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        trained = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)

    train_ds, sampler, train_loader, val_loader = _loaders(cfg, train_insts, val_insts, place)
    book = _Book(cfg, run, optimizer, scheduler, loss_fn, device, val_loader, val_insts, rows, best, log)
    for epoch in range(start_epoch, cfg.epochs + 1):
        train_ds.set_epoch(epoch)
        sampler.set_epoch(epoch)
        lr = optimizer.param_groups[0]["lr"]
        tr = train_one_epoch(
            trained,
            train_loader,
            optimizer,
            loss_fn,
            epoch=epoch,
            device=device,
            clip_grad=cfg.clip_grad,
            tbptt=cfg.tbptt,
            place=place,
        )
        scheduler.step()
        if place.main:
            book.best = book.finish_epoch(model, epoch, lr, tr)
        barrier(place)  # the others wait for rank 0's checkpoint and validation
    return run


@dataclass
class _Book:
    """Rank 0's bookkeeping of a run: validation, checkpoints, ``results.csv`` and the plot of each epoch."""

    cfg: TrainConfig
    run: Path
    optimizer: torch.optim.Optimizer
    scheduler: Any
    loss_fn: Loss
    device: torch.device
    val_loader: DataLoader | None
    val_insts: list[Instance]
    rows: list[dict[str, Any]]
    best: float
    log: Any

    def finish_epoch(self, model: Model, epoch: int, lr: float, tr: dict[str, float]) -> float:
        """Validate and write an epoch; returns the best metric so far."""
        cfg, run = self.cfg, self.run
        row = _epoch_row(epoch, lr, tr)
        if self.val_loader is not None and (epoch % cfg.val_every == 0 or epoch == cfg.epochs):
            row.update(evaluate(model, self.val_loader, self.val_insts, self.loss_fn, device=self.device))
        self.rows.append(row)
        metric = row["val_miou"] if not math.isnan(row["val_miou"]) else -row["train_loss"]
        is_best = metric > self.best
        best = max(self.best, metric)
        ckpt = checkpoint_dict(
            model,
            cfg.model,
            train_config=cfg.to_dict(),
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
            epoch=epoch,
            best_metric=best,
            torch_rng=torch.get_rng_state(),
            git_sha=git_sha(),
            versions=versions(),
        )
        save_checkpoint(run / "weights" / "last.pt", ckpt)
        if is_best:
            save_checkpoint(run / "weights" / "best.pt", ckpt)
        _write_csv(run / "results.csv", self.rows)
        _plot(run / "results.csv", run / "results.png")
        self.log(_epoch_line(epoch, cfg.epochs, row, is_best))
        return best
