"""Losses: per-step cross-entropy against smoothed grid targets, plus the first-vertex BCE."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from polyrnn.data.sequence import smooth_targets


class PolygonLoss(nn.Module):
    """Cross-entropy of each step's logits against the smoothed target of the true token (the end
    token is one-hot), averaged over valid steps (end token included), plus the first-vertex loss.

    ``table[v]`` is the (V,) smoothed target distribution of token v, precomputed once.
    """

    table: torch.Tensor

    def __init__(
        self, *, grid_size: int, radius: float = 2.0, sigma: float = 1.0, first_vertex_weight: float = 1.0
    ) -> None:
        super().__init__()
        v = grid_size * grid_size + 1
        self.register_buffer(
            "table",
            torch.from_numpy(smooth_targets(np.arange(v), grid_size, radius=radius, sigma=sigma)),
            persistent=False,
        )
        self.first_vertex_weight = first_vertex_weight

    def forward(
        self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """
        Args:
            outputs: ``step_logits`` (B, T-1, V), ``boundary_logits`` and ``vertex_logits`` (B, D, D).
            batch: ``tokens`` (B, T) padded with -1, ``lengths`` (B,) tokens incl. the end token,
                ``boundary`` and ``vertices`` (B, D, D) 0/1 targets of the first-vertex branch.

        Returns:
            ``loss`` (total), ``polygon`` and ``first_vertex`` parts, scalars.
        """
        tokens, lengths = batch["tokens"], batch["lengths"]
        targets = tokens[:, 1:]  # (B, T-1): step k predicts tokens[:, k]
        steps = torch.arange(targets.shape[1], device=tokens.device).unsqueeze(0)
        valid = steps < (lengths - 1).unsqueeze(1)  # (B, T-1)
        logp = F.log_softmax(outputs["step_logits"], dim=-1)  # (B, T-1, V)
        tgt = self.table[targets.clamp(min=0)]  # (B, T-1, V)
        ce = -(tgt * logp).sum(-1)  # (B, T-1)
        polygon = (ce * valid).sum() / valid.sum().clamp(min=1)
        fv = F.binary_cross_entropy_with_logits(
            outputs["boundary_logits"], batch["boundary"]
        ) + F.binary_cross_entropy_with_logits(outputs["vertex_logits"], batch["vertices"])
        return {"loss": polygon + self.first_vertex_weight * fv, "polygon": polygon, "first_vertex": fv}
