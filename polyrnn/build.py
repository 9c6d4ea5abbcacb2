"""Explicit builders: the variants are written out as data; ``build_model`` composes the parts.

Checkpoints are self-describing: ``{"format": "polyrnn", "version", "model_config", "model"}`` (training
checkpoints add optimiser state etc.); they are loaded strictly with ``weights_only=True``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from polyrnn.config import ModelConfig
from polyrnn.io import atomic_write_text, sha256_file
from polyrnn.modeling.decoder import PolygonDecoder
from polyrnn.modeling.encoder import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EfficientNetLite0Taps,
    Encoder,
    TinyTaps,
    VGG16Taps,
)
from polyrnn.modeling.first_vertex import FirstVertex
from polyrnn.modeling.inference import fold_for_inference, is_folded
from polyrnn.modeling.mask_net import MaskHead, MaskNet
from polyrnn.modeling.polygon_rnn import PolygonRNN
from polyrnn.modeling.refiner import FocusPass, Refiner
from polyrnn.runtime import resolve_precision

REFINER_FORMAT = "polyrnn-refiner"  # the ``format`` field of a refiner checkpoint

Model = PolygonRNN | MaskNet

VARIANTS: dict[str, ModelConfig] = {
    # for tests: a few strided convs, small heads
    "tiny": ModelConfig(
        encoder="tiny",
        pretrained=False,
        tap_channels=8,
        feat_channels=16,
        hidden=8,
        first_vertex_hidden=8,
        max_len=40,
    ),
    # the CPU default: EfficientNet-Lite0 (ImageNet) with the paper's decoder
    "lite": ModelConfig(encoder="efficientnet_lite0", tap_channels=64, feat_channels=128),
    # the paper: VGG-16 taps, 128-channel fused features, fully connected output
    "vgg16": ModelConfig(encoder="vgg16", pretrained=False, tap_channels=128, feat_channels=128, head="fc"),
    # the mask baseline (DeepMask/SharpMask in spirit): the lite encoder, transposed convs to a 112x112 mask
    "lite-mask": ModelConfig(encoder="efficientnet_lite0", tap_channels=64, feat_channels=128, kind="mask"),
    "tiny-mask": ModelConfig(
        encoder="tiny", pretrained=False, tap_channels=8, feat_channels=16, kind="mask", mask_size=56
    ),
}

# Lite0 expects inputs scaled as (x - 127) / 128: mean 127/255, std 128/255 in the Encoder's 0..1 terms.
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3

CHECKPOINT_FORMAT = "polyrnn"


@dataclass(frozen=True)
class WeightRecord:
    """Weights that ship inside the package, described as data (torchvision's habit).

    Attributes:
        variant: the architecture (a key of :data:`VARIANTS`).
        file: the file under ``polyrnn/weights/`` (its sha256 is in ``SHA256SUMS``).
        automatic: the shipped mask model whose polygon is the automatic start when these polygon weights
            are used (None: the polygon model's own decoder starts). Chosen by measurement on held-out
            training images (``docs/evaluation.md``).
        command: how the weights were made.
        refiner: the shipped correction refiner that reads ``automatic``'s features (None: none).
    """

    variant: str
    file: str
    automatic: str | None
    command: str
    refiner: str | None = None


SHIPPED: dict[str, WeightRecord] = {
    "lite": WeightRecord(
        variant="lite",
        file="lite.pt",
        automatic="lite-mask",
        command="polyrnn train --config lite (last epoch, 30), then build.ship_weights(..., 'lite')",
        refiner="refiner",
    ),
    "lite-mask": WeightRecord(
        variant="lite-mask",
        file="lite-mask.pt",
        automatic=None,
        command="polyrnn train --config lite-mask-ft (best epoch, 11), then ship_weights(..., 'lite-mask')",
    ),
    "refiner": WeightRecord(
        variant="refiner",
        file="refiner.pt",
        automatic=None,
        command="polyrnn train-refiner (best epoch on the held-out split), then refine_training.ship_refiner",
    ),
}


class CheckpointError(ValueError):
    """A weights file that cannot be used: the message names the file and what is wrong."""


WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


SHA256SUMS = "SHA256SUMS"
_verified: set[Path] = set()


def default_weights(variant: str) -> Path:
    """The weights shipped inside the package for a variant, their sha256 checked against
    ``weights/SHA256SUMS`` (once per process); :class:`CheckpointError` when there are none or they
    do not match."""
    path = WEIGHTS_DIR / (SHIPPED[variant].file if variant in SHIPPED else f"{variant}.pt")
    if not path.is_file():
        raise CheckpointError(
            f"no trained weights ship for variant '{variant}' ({path}); pass --weights / weights=PATH"
        )
    if path not in _verified:
        sums = WEIGHTS_DIR / SHA256SUMS
        expected = _read_sums(sums)
        if path.name not in expected:
            raise CheckpointError(f"{path}: not listed in {sums}; the package is incomplete")
        if sha256_file(path) != expected[path.name]:
            raise CheckpointError(
                f"{path}: sha256 does not match {sums}: the file is corrupt or was modified"
            )
        _verified.add(path)
    return path


def _read_sums(sums: Path) -> dict[str, str]:
    """``SHA256SUMS`` (``<hex digest>  <file name>`` lines) as file name -> digest; empty when absent."""
    lines = sums.read_text().splitlines() if sums.is_file() else []
    return {name.strip(): digest for digest, name in (ln.split(maxsplit=1) for ln in lines if ln.strip())}


def ship_weights(src: str | Path, variant: str, *, half: bool = True, folder: Path | None = None) -> Path:
    """Write a training checkpoint as the shipped weights of ``variant``: the model and its config only
    (optionally half precision), plus its line in ``SHA256SUMS``. Returns the written file."""
    folder = folder or WEIGHTS_DIR
    ckpt = read_checkpoint(src)
    state = {k: (v.half() if half and v.is_floating_point() else v) for k, v in ckpt["model"].items()}
    keep: dict[str, Any] = {
        k: ckpt[k]
        for k in ("format", "version", "model_config", "epoch", "git_sha", "train_config")
        if k in ckpt
    }
    out: dict[str, Any] = dict(keep)
    out.update(model=state, source=Path(src).name)
    return write_shipped(folder, f"{variant}.pt", out)


def write_shipped(folder: Path, name: str, ckpt: dict[str, Any]) -> Path:
    """Save ``ckpt`` atomically as ``folder/name`` and record its sha256 in ``folder/SHA256SUMS``."""
    dst = folder / name
    save_checkpoint(dst, ckpt)
    sums = folder / SHA256SUMS
    digests = {**_read_sums(sums), dst.name: sha256_file(dst)}
    atomic_write_text(sums, "".join(f"{digests[n]}  {n}\n" for n in sorted(digests)))
    _verified.discard(dst)
    return dst


def build_encoder(cfg: ModelConfig, *, vgg16_weights: str | Path | None = None) -> Encoder:
    """The encoder of ``cfg``: backbone taps + skip fusion to (feat_channels, D, D)."""
    backbone: TinyTaps | EfficientNetLite0Taps | VGG16Taps
    if cfg.encoder == "tiny":
        backbone, mean, std = TinyTaps(), IMAGENET_MEAN, IMAGENET_STD
    elif cfg.encoder == "efficientnet_lite0":
        lite = EfficientNetLite0Taps()
        if cfg.pretrained:
            lite.load_pretrained()
        backbone, mean, std = lite, LITE_MEAN, LITE_STD
    else:
        vgg = VGG16Taps()
        if vgg16_weights is not None:
            vgg.load_torchvision(vgg16_weights)
        backbone, mean, std = vgg, IMAGENET_MEAN, IMAGENET_STD
    return Encoder(
        backbone=backbone,
        tap_channels=list(backbone.channels),
        fused_tap=cfg.tap_channels,
        out_channels=cfg.feat_channels,
        grid_size=cfg.grid_size,
        mean=mean,
        std=std,
    )


def build_mask_head(cfg: ModelConfig) -> MaskHead:
    """The mask head of a mask model's ``cfg``: features -> (mask_size, mask_size) logits."""
    ups = (cfg.mask_size // cfg.grid_size).bit_length() - 1
    return MaskHead(in_channels=cfg.feat_channels, ups=ups, hidden=max(cfg.feat_channels // 2, 16))


def build_from_config(cfg: ModelConfig, *, vgg16_weights: str | Path | None = None) -> Model:
    """A freshly initialised model (pretrained backbone where the config says so): a
    :class:`PolygonRNN`, or a :class:`MaskNet` for ``kind="mask"``."""
    encoder = build_encoder(cfg, vgg16_weights=vgg16_weights)
    if cfg.kind == "mask":
        return MaskNet(
            encoder=encoder, head=build_mask_head(cfg), crop_size=cfg.crop_size, grid_size=cfg.grid_size
        )
    return PolygonRNN(
        encoder=encoder,
        first_vertex=FirstVertex(in_channels=cfg.feat_channels, hidden=cfg.first_vertex_hidden),
        decoder=PolygonDecoder(
            feat_channels=cfg.feat_channels,
            hidden=cfg.hidden,
            layers=cfg.layers,
            kernel=cfg.kernel,
            grid_size=cfg.grid_size,
            cell=cfg.cell,
            peephole=cfg.peephole,
            head=cfg.head,
        ),
        max_len=cfg.max_len,
        crop_size=cfg.crop_size,
    )


def build_model(
    variant: str | ModelConfig = "lite",
    weights: str | Path | None = None,
    *,
    vgg16_weights: str | Path | None = None,
    shipped: bool = True,
) -> Model:
    """Build a model by variant name (``tiny``, ``lite``, ``vgg16``, ``lite-mask``, ...) or config, optionally
    loading a
    polyrnn checkpoint (whose own config must match the variant's architecture).

    Args:
        variant: a key of :data:`VARIANTS` or a :class:`ModelConfig`.
        weights: a polyrnn checkpoint file; loaded strictly.
        vgg16_weights: a torchvision ``vgg16-*.pth`` to initialise the VGG-16 backbone from.
        shipped: with a variant name and no ``weights``, load the weights shipped for it (``lite``,
            ``lite-mask``) where there are some; False gives a freshly initialised model.
    """
    if isinstance(variant, str):
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant '{variant}' (one of {', '.join(VARIANTS)})")
        cfg = VARIANTS[variant]
        if weights is None and shipped and (WEIGHTS_DIR / f"{variant}.pt").is_file():
            weights = default_weights(variant)
    else:
        cfg = variant
    if weights is not None:
        ckpt = read_checkpoint(weights)
        saved = ModelConfig.from_dict(ckpt["model_config"])
        if _arch(saved) != _arch(cfg):
            raise CheckpointError(f"{weights}: checkpoint is for {saved}, not {cfg}")
        cfg = saved
        # pretrained init is pointless when every weight is overwritten
        model = build_from_config(ModelConfig.from_dict({**saved.to_dict(), "pretrained": False}))
        load_weights(model, ckpt["model"], str(weights))
        return model
    return build_from_config(cfg, vgg16_weights=vgg16_weights)


def _arch(cfg: ModelConfig) -> dict[str, Any]:
    d = cfg.to_dict()
    d.pop("pretrained")
    d.pop("max_len")
    return d


def _load_file(path: Path, fmt: str, kind: str) -> dict[str, Any]:
    """A checkpoint file of format ``fmt`` (``weights_only``, on the CPU); :class:`CheckpointError` naming the
    file when it is missing, unreadable or of another format (``kind``: what it should hold, for messages)."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such {kind}weights file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds on a corrupt or foreign file
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint ({e.__class__.__name__}: {e})"
        ) from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != fmt:
        raise CheckpointError(f"{path}: not a polyrnn {kind}checkpoint (field 'format' is not '{fmt}')")
    return ckpt


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a polyrnn checkpoint (``weights_only=True``), checking its format fields."""
    path = Path(path)
    ckpt = _load_file(path, CHECKPOINT_FORMAT, "")
    for key in ("model_config", "model"):
        if key not in ckpt:
            raise CheckpointError(f"{path}: checkpoint has no '{key}'")
    return ckpt


def load_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], where: str = "weights") -> None:
    """Strict load: missing or unexpected keys and shape mismatches are a :class:`CheckpointError`."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [k for k in set(own) & set(state) if own[k].shape != state[k].shape]
    if missing or unexpected or shapes:
        raise CheckpointError(
            f"{where}: weights do not fit the model (missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"wrong shape {shapes[:5]})"
        )
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True)


def checkpoint_config(weights: str | Path) -> ModelConfig:
    """The model config stored in a checkpoint, so any trained architecture loads."""
    return ModelConfig.from_dict(read_checkpoint(weights)["model_config"])


def polygon_model(model: Model, where: str = "weights") -> PolygonRNN:
    """``model`` as a :class:`PolygonRNN`, or a :class:`CheckpointError` naming ``where``."""
    if not isinstance(model, PolygonRNN):
        raise CheckpointError(f"{where}: holds a mask model, not a polygon model")
    return model


def load_polygon_model(weights: str | Path | None = None, variant: str = "lite") -> tuple[PolygonRNN, Path]:
    """The polygon model stored in ``weights`` (any architecture), or ``variant``'s shipped weights when
    None; with the file it came from. :class:`CheckpointError` when the file holds a mask model."""
    path = Path(weights) if weights is not None else default_weights(variant)
    model = build_model(variant if weights is None else checkpoint_config(path), path)
    return polygon_model(model, str(path)), path


@dataclass
class Models:
    """A polygon model and the mask model paired with it (None: none), with the files they came from."""

    polygon: PolygonRNN
    polygon_path: Path
    mask: MaskNet | None = None
    mask_path: Path | None = None
    refiner: Refiner | None = None
    refiner_path: Path | None = None
    #: the type the mask model and the refiners compute in ("float32" unfolded, else ``load_models``' choice)
    precision: str = "float32"


NO_MASK = "none"


def load_models(
    weights: str | Path | None = None,
    mask_weights: str | Path | None = None,
    *,
    variant: str = "lite",
    refiner_weights: str | Path | None = None,
    fold: bool = True,
    precision: str | None = None,
) -> Models:
    """The one pairing rule every entry point uses (CLI ``predict``, ``evaluate``, ``serve``, the Python API).
    The networks come in evaluation mode, ready to use.

    - ``weights`` None: the shipped polygon weights of ``variant``, paired with the mask model its
      :class:`WeightRecord` names (``automatic``).
    - ``weights`` a file: that polygon model alone: your own checkpoint is what you get.
    - ``mask_weights`` a file: that mask model gives the automatic polygon, whatever ``weights`` is;
      ``"none"`` pairs no mask model, also with the shipped weights.
    - ``refiner_weights`` a file: the correction refiner (it must have been trained on the mask model's
      features); None: the shipped refiner when the shipped mask model is paired; ``"none"``: no refiner.
    - ``fold``: the mask model and the refiners made faster for inference
      (:func:`polyrnn.modeling.inference.fold_for_inference`: same outputs up to float rounding, about 25 %
      less CPU time); such networks cannot be trained or saved: pass False for that.
    - ``precision``: the type the folded networks compute in, ``"float32"``, ``"bfloat16"`` or ``"auto"``
      (:func:`polyrnn.runtime.resolve_precision`: ``$POLYRNN_PRECISION``, else bfloat16 where the CPU has AMX
      matrix units); the unfolded polygon model stays float32.

    Raises :class:`CheckpointError` naming the file that cannot be used.
    """
    polygon, path = load_polygon_model(weights, variant)
    mask_path: Path | None = None
    if mask_weights is not None and str(mask_weights) != NO_MASK:
        mask_path = Path(mask_weights)
    elif mask_weights is None and weights is None and variant in SHIPPED:
        paired = SHIPPED[variant].automatic
        mask_path = default_weights(paired) if paired else None
    mask = load_mask_model(mask_path) if mask_path is not None else None
    ref_path: Path | None = None
    if refiner_weights is not None and str(refiner_weights) != NO_MASK:
        ref_path = Path(refiner_weights)
    elif refiner_weights is None and mask_weights is None and weights is None and variant in SHIPPED:
        name = SHIPPED[variant].refiner
        if name and (WEIGHTS_DIR / SHIPPED[name].file).is_file():
            ref_path = default_weights(name)
    refiner = None
    if ref_path is not None:
        if mask_path is None:
            raise CheckpointError(
                f"{ref_path}: a refiner needs the mask model it was trained with (mask_weights)"
            )
        refiner = load_refiner(ref_path, mask_path)
    # ready to use: inference mode (BatchNorm's running statistics, no dropout); training calls .train()
    polygon.eval()
    if mask is not None:
        mask.eval()
    precision = resolve_precision(precision) if fold else "float32"
    if fold:
        dtype = getattr(torch, precision)
        for net in (mask, refiner, refiner.focus_pass.refiner if refiner and refiner.focus_pass else None):
            if net is not None:
                fold_for_inference(net, dtype=dtype)
    return Models(
        polygon=polygon,
        polygon_path=path,
        mask=mask,
        mask_path=mask_path,
        refiner=refiner,
        refiner_path=ref_path,
        precision=precision,
    )


def load_mask_model(weights: str | Path) -> MaskNet:
    """The mask model stored in ``weights`` (any architecture); :class:`CheckpointError` when the file
    holds a polygon model."""
    model = build_model(checkpoint_config(weights), weights)
    if not isinstance(model, MaskNet):
        raise CheckpointError(f"{weights}: holds a polygon model, not a mask model")
    return model


def checkpoint_dict(model: torch.nn.Module, cfg: ModelConfig, **extra: Any) -> dict[str, Any]:
    """A self-describing checkpoint holding the unwrapped model and its config; refuses a network folded for
    inference (its batch norms are gone: load the file again, with ``fold=False``, to train or save)."""
    from polyrnn import __version__

    if is_folded(model):
        raise ValueError("a network folded for inference cannot be saved as a checkpoint; load it unfolded")

    return {
        "format": CHECKPOINT_FORMAT,
        "version": __version__,
        "model_config": cfg.to_dict(),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        **extra,
    }


def save_checkpoint(path: str | Path, ckpt: dict[str, Any]) -> None:
    """Atomic save: temp file in the same folder, then rename."""
    import io

    from polyrnn.io import atomic_write_bytes

    buf = io.BytesIO()
    torch.save(ckpt, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_refiner(path: str | Path, mask_path: str | Path | None = None) -> Refiner:
    """A trained refiner (strict, ``weights_only``); with ``mask_path``, checks that it was trained on that
    mask model's features (:class:`~polyrnn.build.CheckpointError` otherwise)."""
    path = Path(path)
    ckpt = _load_file(path, REFINER_FORMAT, "refiner ")
    if mask_path is not None and ckpt.get("mask_sha256") != sha256_file(mask_path):
        raise CheckpointError(f"{path}: trained on another mask model's features than {mask_path}")
    model = _refiner_from(ckpt["refiner_config"], ckpt["model"], str(path))
    focus = ckpt.get("focus")
    if focus is not None:
        try:
            window, min_side = float(focus["window"]), float(focus["min_side"])
            input_size = float(focus.get("input_size", 224))  # checkpoints before it was a setting: 224
            second = _refiner_from(focus["refiner_config"], focus["model"], f"{path} (focus pass)")
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise CheckpointError(f"{path}: a malformed focus pass ({e!r})") from None
        if not (0.05 <= window <= 1.0 and 0.0 <= min_side <= 1e5 and 32 <= input_size <= 1024):
            raise CheckpointError(
                f"{path}: focus window {window}, min_side {min_side} or input_size {input_size} out of range"
            )
        if input_size != int(input_size):
            raise CheckpointError(f"{path}: focus input_size {input_size} is not a whole number of pixels")
        model.focus_pass = FocusPass(second, window, min_side, int(input_size))
    return model


def _refiner_from(c: dict[str, Any], weights: dict[str, Any], name: str) -> Refiner:
    """A refiner of the checkpoint's shape (each number bounded before anything is allocated) with its
    weights, strictly."""
    try:
        dims = {k: int(c[k]) for k in ("feat_channels", "reduce", "hidden", "size")}
    except (KeyError, TypeError, ValueError, OverflowError) as e:
        raise CheckpointError(f"{name}: a malformed refiner_config ({e!r})") from None
    if not all(1 <= v <= 4096 for v in dims.values()):
        raise CheckpointError(f"{name}: refiner_config {dims} out of range (1..4096)")
    model = Refiner(
        feat_channels=dims["feat_channels"], reduce=dims["reduce"], hidden=dims["hidden"], size=dims["size"]
    )
    load_weights(model, weights, name)
    return model.eval()
