"""The recurrent polygon decoder (Castrejón et al. 2017, Sec. 3.1, Fig. 2).

At step t the input is the image features plus one-hot D x D maps of y(t-1), y(t-2) and y(1); a stack
of ConvLSTM (or ConvGRU) layers runs on the grid and a head gives logits over the D*D cells plus the
end-of-sequence class (token D*D).
"""

from __future__ import annotations

import torch
from torch import nn

from polyrnn.modeling.conv_lstm import ConvGRUCell, ConvLSTMCell

State = list[tuple[torch.Tensor, torch.Tensor]]


class ConvHead(nn.Module):
    """Translation-equivariant head: a 3x3 conv gives one logit per cell and an end-evidence map whose
    log-sum-exp (a smooth max) is the end-of-sequence logit. Cheap (no D²x D² matrix)."""

    def __init__(self, *, hidden: int, grid_size: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(hidden, 2, 3, padding=1)
        self.eos_bias = nn.Parameter(torch.zeros(1))
        self.grid_size = grid_size

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        out = self.conv(h)  # (B, 2, D, D)
        cells = out[:, 0].flatten(1)  # (B, D*D)
        eos = torch.logsumexp(out[:, 1].flatten(1), dim=1, keepdim=True) + self.eos_bias  # (B, 1)
        return torch.cat([cells, eos], dim=1)  # (B, D*D + 1)


class FCHead(nn.Module):
    """The paper's head: a fully connected layer from the last hidden state to D*D + 1 logits."""

    def __init__(self, *, hidden: int, grid_size: int) -> None:
        super().__init__()
        self.fc = nn.Linear(hidden * grid_size * grid_size, grid_size * grid_size + 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc(h.flatten(1))


class PolygonDecoder(nn.Module):
    """Stacked convolutional RNN over the grid.

    The first layer's input convolution is split: ``static_conv`` over the features (computed once per
    crop by :meth:`prepare`) and ``vertex_conv`` over the three one-hot maps (every step).
    """

    def __init__(
        self,
        *,
        feat_channels: int,
        hidden: int = 16,
        layers: int = 2,
        kernel: int = 3,
        grid_size: int = 28,
        cell: str = "lstm",
        peephole: bool = False,
        head: str = "conv",
    ) -> None:
        super().__init__()
        if cell not in ("lstm", "gru"):
            raise ValueError(f"cell must be 'lstm' or 'gru', got {cell!r}")
        if head not in ("conv", "fc"):
            raise ValueError(f"head must be 'conv' or 'fc', got {head!r}")
        cell_cls = ConvLSTMCell if cell == "lstm" else ConvGRUCell
        g = cell_cls.gates * hidden
        pad = kernel // 2
        self.grid_size = grid_size
        self.num_tokens = grid_size * grid_size + 1
        self.eos = grid_size * grid_size
        self.static_conv = nn.Conv2d(feat_channels, g, kernel, padding=pad)
        self.vertex_conv = nn.Conv2d(3, g, kernel, padding=pad, bias=False)
        self.input_convs = nn.ModuleList(nn.Conv2d(hidden, g, kernel, padding=pad) for _ in range(layers - 1))
        self.cells = nn.ModuleList(
            cell_cls(hidden=hidden, kernel=kernel, size=grid_size, peephole=peephole) for _ in range(layers)
        )
        self.head: nn.Module = (
            ConvHead(hidden=hidden, grid_size=grid_size)
            if head == "conv"
            else FCHead(hidden=hidden, grid_size=grid_size)
        )

    def prepare(self, features: torch.Tensor) -> torch.Tensor:
        """(B, C, D, D) features -> (B, G*hidden, D, D) static part of the first input convolution."""
        return self.static_conv(features)

    def init_state(self, batch: int, ref: torch.Tensor) -> State:
        return [cell.init_state(batch, self.grid_size, ref) for cell in self._cells()]

    def _cells(self) -> list[ConvLSTMCell | ConvGRUCell]:
        return list(self.cells)  # type: ignore[arg-type]

    def one_hot(self, prev: torch.Tensor, prev2: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
        """Tokens (B,) each -> (B, 3, D, D) one-hot maps; a token < 0 or >= D*D gives an empty map."""
        toks = torch.stack([prev, prev2, first], dim=1)  # (B, 3)
        valid = (toks >= 0) & (toks < self.eos)
        maps = toks.new_zeros(toks.shape[0], 3, self.eos + 1, dtype=torch.float32)
        maps.scatter_(2, torch.where(valid, toks, self.eos).unsqueeze(2), valid.unsqueeze(2).float())
        return maps[:, :, : self.eos].view(-1, 3, self.grid_size, self.grid_size)

    def step(
        self, static: torch.Tensor, prev: torch.Tensor, prev2: torch.Tensor, first: torch.Tensor, state: State
    ) -> tuple[torch.Tensor, State]:
        """One decoding step: (B, D*D + 1) logits and the new state."""
        x_conv = static + self.vertex_conv(self.one_hot(prev, prev2, first))
        new_state: State = []
        h = x_conv
        for i, cell in enumerate(self._cells()):
            if i > 0:
                x_conv = self.input_convs[i - 1](h)
            h, s = cell(x_conv, state[i])
            new_state.append(s)
        return self.head(h), new_state

    def forward(self, static: torch.Tensor, tokens: torch.Tensor, tbptt: int = 0) -> torch.Tensor:
        """Teacher forcing.

        Args:
            static: (B, G*hidden, D, D) from :meth:`prepare`.
            tokens: (B, T) target tokens, y(1) first; padding after the end token is ignored by the loss.
            tbptt: when > 0, gradients through the recurrent state are cut every ``tbptt`` steps
                (truncated back-propagation through time, for long polygons).

        Returns:
            (B, T-1, D*D + 1) logits; step k predicts tokens[:, k] from the k inputs before it.
        """
        b, t = tokens.shape
        state = self.init_state(b, static)
        none = tokens.new_full((b,), -1)
        first = tokens[:, 0]
        prev, prev2 = first, none
        out = []
        for k in range(1, t):
            if tbptt > 0 and k > 1 and (k - 1) % tbptt == 0:
                state = [(h.detach(), c.detach()) for h, c in state]
            logits, state = self.step(static, prev, prev2, first, state)
            out.append(logits)
            prev2, prev = prev, tokens[:, k]
        return torch.stack(out, dim=1)


def cell_mask_logits(logits: torch.Tensor, used: torch.Tensor, allow_eos: torch.Tensor) -> torch.Tensor:
    """Forbid revisiting cells and (where ``allow_eos`` is False) ending: (B, V) logits, (B, V-1) bool
    used cells, (B,) bool."""
    masked = logits.clone()
    masked[:, :-1] = masked[:, :-1].masked_fill(used, float("-inf"))
    masked[:, -1] = masked[:, -1].masked_fill(~allow_eos, float("-inf"))
    return masked
