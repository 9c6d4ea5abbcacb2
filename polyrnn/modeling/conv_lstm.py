"""Convolutional recurrent cells on the 28x28 grid.

ConvLSTM (Shi et al., NeurIPS 2015), with optional peephole connections (Hadamard products with
per-position weights ``W_c*``)::

    i = σ(W_xi * x + W_hi * h + W_ci ∘ c + b_i)
    f = σ(W_xf * x + W_hf * h + W_cf ∘ c + b_f)
    c' = f ∘ c + i ∘ tanh(W_xc * x + W_hc * h + b_c)
    o = σ(W_xo * x + W_ho * h + W_co ∘ c' + b_o)
    h' = o ∘ tanh(c')

ConvGRU::

    z = σ(W_xz * x + W_hz * h + b_z)
    r = σ(W_xr * x + W_hr * h + b_r)
    n = tanh(W_xn * x + W_hn * (r ∘ h) + b_n)
    h' = (1 - z) ∘ n + z ∘ h

``*`` is a "same"-padded convolution. A cell takes the input convolution already computed
(``x_conv = W_x * x + b``, shape (B, G*C, H, W)), so that the static part of the input (the image
features) can be convolved once per crop, not at every step.
"""

from __future__ import annotations

import torch
from torch import nn


class _ConvCell(nn.Module):
    """Shared by the cells: ``hidden`` channels and a zero initial state (h, c) of shape (B, hidden, D, D)."""

    hidden: int

    def init_state(self, batch: int, size: int, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = ref.new_zeros(batch, self.hidden, size, size)
        return (z, z)


class ConvLSTMCell(_ConvCell):
    """One ConvLSTM layer; ``hidden`` channels, ``kernel`` x ``kernel`` convolutions on a size x size grid."""

    gates = 4

    def __init__(self, *, hidden: int, kernel: int = 3, size: int = 28, peephole: bool = False) -> None:
        super().__init__()
        self.hidden = hidden
        self.conv_h = nn.Conv2d(hidden, 4 * hidden, kernel, padding=kernel // 2, bias=False)
        self.peephole = peephole
        if peephole:
            self.w_ci = nn.Parameter(torch.zeros(1, hidden, size, size))
            self.w_cf = nn.Parameter(torch.zeros(1, hidden, size, size))
            self.w_co = nn.Parameter(torch.zeros(1, hidden, size, size))

    def forward(
        self, x_conv: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """x_conv: (B, 4*hidden, H, W) = W_x * x + b, gates ordered i, f, g(c), o. Returns h' and (h', c')."""
        h, c = state
        gi, gf, gg, go = (x_conv + self.conv_h(h)).chunk(4, dim=1)
        if self.peephole:
            gi = gi + self.w_ci * c
            gf = gf + self.w_cf * c
        c = torch.sigmoid(gf) * c + torch.sigmoid(gi) * torch.tanh(gg)
        if self.peephole:
            go = go + self.w_co * c
        h = torch.sigmoid(go) * torch.tanh(c)
        return h, (h, c)


class ConvGRUCell(_ConvCell):
    """One ConvGRU layer; the state is a pair (h, h) so it stacks like the LSTM."""

    gates = 3

    def __init__(self, *, hidden: int, kernel: int = 3, size: int = 28, peephole: bool = False) -> None:
        super().__init__()
        del size, peephole  # no peepholes in a GRU
        self.hidden = hidden
        self.conv_zr = nn.Conv2d(hidden, 2 * hidden, kernel, padding=kernel // 2, bias=False)
        self.conv_n = nn.Conv2d(hidden, hidden, kernel, padding=kernel // 2, bias=False)

    def forward(
        self, x_conv: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """x_conv: (B, 3*hidden, H, W) = W_x * x + b, ordered z, r, n."""
        h, _ = state
        xz, xr, xn = x_conv.chunk(3, dim=1)
        hz, hr = self.conv_zr(h).chunk(2, dim=1)
        z = torch.sigmoid(xz + hz)
        r = torch.sigmoid(xr + hr)
        n = torch.tanh(xn + self.conv_n(r * h))
        h = (1 - z) * n + z * h
        return h, (h, h)
