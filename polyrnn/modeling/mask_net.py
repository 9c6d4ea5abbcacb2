"""The mask baseline (DeepMask/SharpMask in spirit): the same encoder, a transposed-convolution decoder
to a mask of the crop. Its mask becomes a polygon with :func:`mask_polygon`; it also gives the default
model's automatic polygon (see :class:`polyrnn.predictor.PolygonPredictor`)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from polyrnn.config import INFERENCE
from polyrnn.data.crop import CropBox
from polyrnn.geometry import mask_to_polygons, simplify
from polyrnn.modeling.encoder import Encoder
from polyrnn.modeling.inference import compute_dtype


def _up(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class MaskHead(nn.Module):
    """(B, C, D, D) features -> (B, D * 2**ups, D * 2**ups) mask logits; each up-step doubles the side
    with a stride-2 transposed convolution and halves the channels."""

    def __init__(self, *, in_channels: int, ups: int = 2, hidden: int = 64) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for i in range(ups):
            out = max(hidden >> i, 16)
            layers.append(_up(c, out))
            c = out
        self.up = nn.Sequential(*layers)
        self.out = nn.Conv2d(c, 1, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.out(self.up(features.to(compute_dtype(self))))[:, 0].float()


class MaskNet(nn.Module):
    """Encoder + mask head. Images are (B, 3, 224, 224) float RGB in 0..255; ``forward`` returns
    ``{"mask_logits": (B, M, M)}`` over the crop (M = ``mask_size``, crop pixels = M * 224 / M)."""

    def __init__(
        self, *, encoder: Encoder, head: MaskHead, crop_size: int = 224, grid_size: int = 28
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.crop_size = crop_size
        self.grid_size = grid_size

    def forward(self, images: torch.Tensor, features: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        feats = self.encoder(images) if features is None else features
        return {"mask_logits": self.head(feats)}

    @torch.no_grad()
    def predict_masks(self, images: torch.Tensor, *, flip: bool = False) -> torch.Tensor:
        """(B, 3, 224, 224) -> (B, M, M) probabilities; ``flip``: averaged with the prediction for the
        mirrored crop (test-time augmentation; the crop and its mirror run as one batch)."""
        return self.features_and_masks(images, flip=flip)[1]

    @torch.no_grad()
    def features_and_masks(
        self, images: torch.Tensor, *, flip: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, 224, 224) -> the encoder's (B, C, D, D) features of ``images`` and the (B, M, M)
        probabilities of :meth:`predict_masks`, from one encoder pass."""
        feats, direct, mirrored = self.mask_views(images, flip=flip)
        return feats, direct if mirrored is None else (direct + mirrored) / 2

    @torch.no_grad()
    def mask_views(
        self, images: torch.Tensor, *, flip: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(B, 3, 224, 224) -> the encoder's (B, C, D, D) features, the (B, M, M) probabilities for the
        crops and, with ``flip``, those for their mirror images flipped back (else None); the crops and
        their mirrors run as one batch."""
        b = images.shape[0]
        feats, prob = self._views(images, flip=flip)  # (B or 2B, ...)
        return feats[:b], prob[:b], prob[b:].flip(-1) if flip else None

    @torch.no_grad()
    def mirrored_views(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, 3, 224, 224) -> the encoder's (B, C, D, D) features of the crops, the (B, M, M) probabilities
        averaged with the mirror's flipped back (as :meth:`features_and_masks` with ``flip``) and the features
        of the mirror images (in the mirror's own frame: what a network reading them sees is the mirrored
        crop); the crops and their mirrors run as one batch."""
        b = images.shape[0]
        feats, prob = self._views(images, flip=True)
        return feats[:b], (prob[:b] + prob[b:].flip(-1)) / 2, feats[b:]

    def _views(self, images: torch.Tensor, *, flip: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The features and probabilities of ``images`` followed, with ``flip``, by their mirror images'."""
        feats = self.encoder(torch.cat([images, images.flip(-1)]) if flip else images)
        return feats, torch.sigmoid(self.head(feats))


def mask_polygon(
    prob: np.ndarray, crop: CropBox, *, threshold: float = 0.5, tolerance: float = INFERENCE.tolerance
) -> np.ndarray | None:
    """The largest outer boundary of ``prob >= threshold`` ((M, M) over the crop) as an (N, 2) polygon
    in image pixels, simplified (Ramer–Douglas–Peucker) with ``tolerance`` mask pixels; None when the
    mask is empty."""
    m = np.asarray(prob) >= threshold
    if not m.any():
        return None
    parts = mask_to_polygons(m)
    if not parts:
        return None
    scale = crop.crop_size / m.shape[0]  # crop pixels per mask pixel
    return crop.crop_to_image(simplify(parts[0], tolerance) * scale)


class MaskLoss(nn.Module):
    """Binary cross-entropy plus soft Dice (1 - Dice) of (B, M, M) logits against 0/1 targets."""

    def __init__(self, *, dice_weight: float = 1.0) -> None:
        super().__init__()
        self.dice_weight = dice_weight

    def forward(
        self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        logits, target = outputs["mask_logits"], batch["mask"]
        bce = F.binary_cross_entropy_with_logits(logits, target)
        p = torch.sigmoid(logits).flatten(1)
        t = target.flatten(1)
        dice = 1 - (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)
        return {"loss": bce + self.dice_weight * dice.mean(), "mask": bce, "dice": dice.mean()}
