"""First-vertex branch (Castrejón et al. 2017, Sec. 3.2): its own weights, a boundary head and a vertex
head on the D x D grid, trained with binary cross-entropy; the vertex head's argmax starts a polygon."""

from __future__ import annotations

import torch
from torch import nn


class FirstVertex(nn.Module):
    """(B, C, D, D) features -> boundary logits (B, D, D) and vertex logits (B, D, D)."""

    def __init__(self, *, in_channels: int, hidden: int = 32) -> None:
        super().__init__()
        self.boundary = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(hidden, 1, 1)
        )
        self.vertex = nn.Sequential(
            nn.Conv2d(in_channels + 1, hidden, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(hidden, 1, 1)
        )

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        boundary = self.boundary(features)  # (B, 1, D, D)
        vertex = self.vertex(torch.cat([features, torch.sigmoid(boundary)], dim=1))
        return boundary[:, 0], vertex[:, 0]
