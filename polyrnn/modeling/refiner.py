"""The correction engine's network: refines an object's mask from the annotator's corrections.

In the spirit of RITM (Sofiiuk et al. 2021): a small convolutional network reads a mask model's (frozen)
features of the crop, the current polygon's mask and the annotator's points, and predicts a refined mask.
A dragged or inserted vertex is a point on the true boundary; whether it lies outside or inside the polygon
before the correction says which side was missed (a positive or a negative correction).

All maps are over the crop window at ``size`` x ``size`` (twice the feature grid: 56 for a 28-cell grid, one
map pixel = 4 crop pixels).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from polyrnn.modeling.inference import compute_dtype

MAP_CHANNELS = 5  # current mask, mask model's probability, fixed vertices, positive, negative corrections


class Refiner(nn.Module):
    """(B, C, D, D) features + (B, 5, S, S) maps -> (B, S, S) refined-mask logits (S = 2 D).

    Maps, in order: the current polygon's mask (0/1), the mask model's probability, disks at every fixed
    vertex (points on the true boundary), disks at the positive corrections (the boundary lies beyond the
    polygon there) and at the negative ones (inside it).
    """

    def __init__(
        self,
        *,
        feat_channels: int = 128,
        reduce: int = 32,
        hidden: int = 40,
        size: int = 56,
        dilations: tuple[int, ...] = (1, 2, 4, 8),
    ) -> None:
        super().__init__()
        self.size = size
        self.feat_channels = feat_channels
        self.reduce = nn.Sequential(nn.Conv2d(feat_channels, reduce, 1), nn.BatchNorm2d(reduce), nn.ReLU())
        layers: list[nn.Module] = []
        c = reduce + MAP_CHANNELS
        for d in dilations:
            layers += [nn.Conv2d(c, hidden, 3, padding=d, dilation=d), nn.BatchNorm2d(hidden), nn.ReLU()]
            c = hidden
        self.body = nn.Sequential(*layers)
        self.out = nn.Conv2d(hidden, 1, 3, padding=1)
        # the current mask passes through with this weight: where nothing is learnt the polygon is kept
        self.keep = nn.Parameter(torch.tensor(1.0))
        # the finer second pass around each correction, when the checkpoint holds one (not a submodule:
        # this refiner's own weights stay what they are)
        self.focus_pass: FocusPass | None = None

    def residual(self, features: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
        """(B, S, S): what the network adds to the current mask's ``keep * (2 * mask - 1)``."""
        size, dtype = (self.size, self.size), compute_dtype(self)  # bfloat16 when folded so; float32 out
        f = F.interpolate(self.reduce(features.to(dtype)), size=size, mode="bilinear", align_corners=False)
        return self.out(self.body(torch.cat([f, maps.to(dtype)], dim=1)))[:, 0].float()

    def mirror_averaged(
        self, features: torch.Tensor, mirrored: torch.Tensor, maps: torch.Tensor
    ) -> torch.Tensor:
        """(B, S, S): :meth:`residual` averaged with the residual for the mirror image (test-time
        augmentation): ``mirrored`` (B, C, D, D) the mask model's features of the mirrored crops, read with
        the maps mirrored alike, the result flipped back; one batch of 2 B."""
        b = features.shape[0]
        r = self.residual(torch.cat([features, mirrored]), torch.cat([maps, maps.flip(-1)]))
        return (r[:b] + r[b:].flip(-1)) / 2

    def forward(self, features: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
        return self.residual(features, maps) + self.keep * (2 * maps[:, 0] - 1)

    def refine(self, residual: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
        """Refined-mask logits at any resolution: the (B, S, S) residual upsampled to the (B, H, W) current
        mask's size and added to it, so the current outline's detail is kept wherever nothing changes."""
        up = F.interpolate(residual[:, None], size=current.shape[-2:], mode="bilinear", align_corners=False)
        return up[:, 0] + self.keep * (2 * current - 1)


@dataclass
class FocusPass:
    """A second refiner for FocalClick's focus crop: it reads a square ``window`` crop sides wide centred on a
    correction (the mask model's features of that window read at ``input_size`` x ``input_size`` pixels, no
    mirror) and redraws the outline there, ``input_size / (window * 224)`` times finer than the object's
    crop; only for boxes whose long side is at least ``min_side`` image pixels (smaller ones have no finer
    detail to see)."""

    refiner: Refiner
    window: float
    min_side: float
    input_size: int = 224


def point_maps(points: torch.Tensor, weights: torch.Tensor, size: int, sigma: float = 1.5) -> torch.Tensor:
    """Gaussian disks: (B, K, 2) points (x, y) in map pixels (continuous frame) with (B, K) weights in {0, 1}
    (0 = padding) -> (B, size, size), the maximum over the points."""
    b = points.shape[0]
    if points.shape[1] == 0:
        return points.new_zeros(b, size, size)
    c = torch.arange(size, dtype=points.dtype, device=points.device) + 0.5
    dx = c.view(1, 1, 1, size) - points[..., 0].view(b, -1, 1, 1)
    dy = c.view(1, 1, size, 1) - points[..., 1].view(b, -1, 1, 1)
    g = torch.exp(-(dx**2 + dy**2) / (2 * sigma**2)) * weights.view(b, -1, 1, 1)
    return g.amax(dim=1)


def refiner_maps(
    current: torch.Tensor,
    prob: torch.Tensor,
    fixed: list[list[tuple[float, float]]],
    clicks: list[list[tuple[float, float, int]]],
    size: int,
) -> torch.Tensor:
    """(B, 5, S, S) refiner input from (B, S, S) current masks, (B, S, S) mask-model probabilities, each
    sample's fixed vertices [(x, y)] and corrections [(x, y, sign)] (the drags' middles), in map pixels."""
    b = current.shape[0]

    def disks(points: list[list[tuple[float, float]]], weights: list[list[float]]) -> torch.Tensor:
        k = max((len(p) for p in points), default=0)
        pts, w = torch.zeros(b, k, 2), torch.zeros(b, k)
        for i, (ps, ws) in enumerate(zip(points, weights, strict=True)):
            for j, ((x, y), v) in enumerate(zip(ps, ws, strict=True)):
                pts[i, j, 0], pts[i, j, 1], w[i, j] = x, y, v
        return point_maps(pts, w, size)

    mids = [[(x, y) for x, y, _ in c] for c in clicks]
    pos = disks(mids, [[float(s > 0) for *_, s in c] for c in clicks])
    neg = disks(mids, [[float(s < 0) for *_, s in c] for c in clicks])
    return torch.stack([current, prob, disks(fixed, [[1.0] * len(f) for f in fixed]), pos, neg], dim=1)
