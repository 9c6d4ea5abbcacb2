"""Polygon-RNN: encoder -> first-vertex branch -> recurrent decoder (Castrejón et al. 2017, Fig. 2).

The trainable module. Its ``forward`` is teacher-forced; decoding (greedy, from a prefix) runs
under ``torch.no_grad``. The interactive wrapper is :class:`polyrnn.predictor.PolygonPredictor`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from polyrnn.config import INFERENCE
from polyrnn.data.sequence import chessboard
from polyrnn.modeling.decoder import PolygonDecoder, State, cell_mask_logits
from polyrnn.modeling.encoder import Encoder
from polyrnn.modeling.first_vertex import FirstVertex


@dataclass
class Decoded:
    """One decoded polygon.

    Attributes:
        tokens: vertex tokens ``r * D + c`` (no end token), in order.
        probs: probability of each vertex when it was chosen (the first from the vertex head).
        ended: True when the decoder chose the end token (False: hit the length cap).
        states: decoder state after step k (which consumed vertex k and predicted vertex k+1), for
            k = 0..len-1; a correction of vertex j resumes from ``states[:j]``. Shorter than ``tokens``
            when the polygon rejoined an old outline (``followed``): a resume past them replays the prefix.
    """

    tokens: list[int]
    probs: list[float]
    ended: bool
    states: list[State] = field(default_factory=list, repr=False)
    followed: list[int] = field(default_factory=list)  # see DecodeCursor.followed


class PolygonRNN(nn.Module):
    """The network. Images are (B, 3, 224, 224) float RGB in 0..255; the encoder normalises them."""

    def __init__(
        self,
        *,
        encoder: Encoder,
        first_vertex: FirstVertex,
        decoder: PolygonDecoder,
        max_len: int = 70,
        crop_size: int = 224,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.first_vertex = first_vertex
        self.decoder = decoder
        self.max_len = max_len
        self.crop_size = crop_size
        self.grid_size = decoder.grid_size
        self.eos = decoder.eos

    def forward(
        self,
        images: torch.Tensor,
        tokens: torch.Tensor,
        features: torch.Tensor | None = None,
        tbptt: int = 0,
    ) -> dict[str, torch.Tensor]:
        """Teacher-forced pass.

        Args:
            images: (B, 3, 224, 224) crops (ignored when ``features`` is given).
            tokens: (B, T) padded target tokens (-1 after the end token).
            features: optional precomputed (B, C, D, D) encoder features.
            tbptt: truncated back-propagation every ``tbptt`` decoder steps (0 = full).

        Returns:
            ``step_logits`` (B, T-1, D*D+1), ``boundary_logits`` and ``vertex_logits`` (B, D, D).
        """
        feats = self.encoder(images) if features is None else features
        boundary, vertex = self.first_vertex(feats)
        step_logits = self.decoder(self.decoder.prepare(feats), tokens.clamp(min=-1), tbptt=tbptt)
        return {"step_logits": step_logits, "boundary_logits": boundary, "vertex_logits": vertex}

    # --- inference ---------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(
        self, images: torch.Tensor, features: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, 3, 224, 224) -> (features (B, C, D, D), static (B, G, D, D), vertex logits (B, D, D)).
        ``features``: the encoder's output when already computed (``images`` is then not read)."""
        feats = self.encoder(images) if features is None else features
        _, vertex = self.first_vertex(feats)
        return feats, self.decoder.prepare(feats), vertex

    @torch.no_grad()
    def first_vertices(self, vertex_logits: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k first-vertex tokens and their softmax probabilities over the grid: (B, k) each."""
        p = F.softmax(vertex_logits.flatten(1), dim=1)
        probs, idx = p.topk(k, dim=1)
        return idx, probs

    def _run_prefix(
        self, static: torch.Tensor, prefix: list[int], prefix_states: list[State] | None
    ) -> tuple[torch.Tensor, list[State]]:
        """Teacher-force the prefix. Returns the logits predicting vertex ``len(prefix)`` and the states
        after each step k (step k consumes prefix[k] and predicts vertex k+1). With ``prefix_states``
        from an earlier decode sharing ``prefix[:-1]``, only the last step is run."""
        if not prefix:
            raise ValueError("decoding needs at least the first vertex")
        dev = static.device
        n = len(prefix)
        t = torch.tensor(prefix, device=dev).view(-1, 1)  # (n, 1)
        none, first = torch.tensor([-1], device=dev), t[0]
        if prefix_states is not None and n >= 2 and len(prefix_states) >= n - 1:
            states, start = list(prefix_states[: n - 1]), n - 1
            state = states[-1]
        else:
            states, start = [], 0
            state = self.decoder.init_state(1, static)
        logits = None
        for k in range(start, n):
            logits, state = self.decoder.step(static, t[k], t[k - 1] if k >= 1 else none, first, state)
            states.append(state)
        assert logits is not None
        return logits, states

    def _step_logp(self, logits: torch.Tensor, tokens: list[int]) -> torch.Tensor:
        """(V,) log-probabilities with visited cells and (before 3 vertices) the end token forbidden."""
        dev = logits.device
        used = torch.zeros(1, self.eos, dtype=torch.bool, device=dev)
        used[0, torch.tensor(tokens, device=dev)] = True
        allow = torch.tensor([len(tokens) >= 3], device=dev)
        return F.log_softmax(cell_mask_logits(logits, used, allow), dim=-1)[0]

    @torch.no_grad()
    def decode(
        self,
        static: torch.Tensor,
        prefix: list[int],
        *,
        max_len: int | None = None,
        eos_threshold: float = INFERENCE.eos_threshold,
        prefix_states: list[State] | None = None,
        follow: Sequence[int] = (),
        rejoin: int | None = None,
    ) -> Decoded:
        """Greedy decoding of one polygon continuing from ``prefix`` (the annotator-in-the-loop step).

        Args:
            static: (1, G, D, D) from :meth:`encode`.
            prefix: vertex tokens fixed so far (at least the first vertex); never revisited.
            max_len: vertex cap (default: the model's).
            eos_threshold: stop when p(end) >= this. The cell targets are smoothed over ~13 cells and the
                end target is not, so comparing p(end) with one cell (plain argmax) stops too early;
                p(end) against all cells together is the matching decision.
            prefix_states: ``states`` of an earlier decode sharing ``prefix[:-1]``: resume from them.
            follow, rejoin: see :class:`DecodeCursor` (rejoin the previous polygon's rest).

        Returns:
            :class:`Decoded` with ``states`` for every step (for the next correction).
        """
        cur = DecodeCursor(
            self,
            static,
            prefix,
            max_len=max_len,
            eos_threshold=eos_threshold,
            prefix_states=prefix_states,
            follow=follow,
            rejoin=rejoin,
        )
        while cur.advance():
            pass
        return Decoded(
            tokens=cur.tokens, probs=cur.probs, ended=cur.ended, states=cur.states, followed=cur.followed
        )


class DecodeCursor:
    """Greedy decoding one vertex at a time, so a caller that needs only the next few vertices (the
    simulated annotator walking a polygon) pays only for those. :meth:`PolygonRNN.decode` runs one to the end.

    Rejoining: with ``follow`` (the rest of the polygon being corrected: its tokens after the corrected
    vertex) and ``rejoin`` = r cells, the first decoded vertex within chessboard distance r of a vertex
    ``follow[m]`` not yet in the polygon is snapped onto it and ``follow[m + 1:]`` completes the polygon:
    the decoder re-predicts only until it meets the old outline again (the old outline of a good automatic
    polygon is kept). ``rejoin=None`` re-predicts everything (the paper's behaviour).

    Attributes:
        tokens: the prefix and the vertices decoded so far.
        probs: probability of each decoded vertex (1.0 for vertices taken from ``follow``).
        states: decoder state after each step (see :class:`Decoded`); none for vertices taken from ``follow``.
        followed: for the last ``len(followed)`` tokens, their index in ``follow`` (empty: no rejoin).
        done: no more vertices will come; ``ended``: because the end token was chosen or the polygon
            rejoined (not the cap).
    """

    def __init__(
        self,
        model: PolygonRNN,
        static: torch.Tensor,
        prefix: list[int],
        *,
        max_len: int | None = None,
        eos_threshold: float = INFERENCE.eos_threshold,
        prefix_states: list[State] | None = None,
        follow: Sequence[int] = (),
        rejoin: int | None = None,
    ) -> None:
        self.model, self.static = model, static
        self.cap = max_len or model.max_len
        self.eos_threshold = eos_threshold
        self.tokens = list(prefix)
        self.probs: list[float] = []
        self.follow = [int(t) for t in follow] if rejoin is not None else []
        self.rejoin = rejoin
        self.followed: list[int] = []
        with torch.no_grad():
            self._logits, self.states = model._run_prefix(static, self.tokens, prefix_states)
        self._first = torch.tensor([self.tokens[0]], device=static.device)
        self.ended = False
        self.done = len(self.tokens) >= self.cap

    def _meets(self, token: int) -> int | None:
        """Index in ``follow`` of the old vertex ``token`` rejoins (nearest, then earliest), or None."""
        assert self.rejoin is not None
        used = set(self.tokens)
        near = [
            (chessboard(t, token, self.model.grid_size), m)
            for m, t in enumerate(self.follow)
            if t not in used
        ]
        best = min((c for c in near if c[0] <= self.rejoin), default=None)
        return None if best is None else best[1]

    @torch.no_grad()
    def advance(self) -> bool:
        """Decode one more vertex; False (and nothing added) when the polygon is finished."""
        if self.done:
            return False
        m, dev = self.model, self.static.device
        p = m._step_logp(self._logits, self.tokens).exp()
        nxt = int(p[:-1].argmax())
        if (len(self.tokens) >= 3 and float(p[-1]) >= self.eos_threshold) or float(p[nxt]) <= 0.0:
            self.ended = self.done = True  # the end token, or every cell visited
            return False
        meet = self._meets(nxt) if self.follow else None
        if meet is not None:  # back on the old outline: keep its rest
            decoded = set(self.tokens)  # old vertices in cells the new part took are dropped
            self.followed = [j for j in range(meet, len(self.follow)) if self.follow[j] not in decoded]
            self.tokens += [self.follow[j] for j in self.followed]
            self.probs += [float(p[nxt])] + [1.0] * (len(self.followed) - 1)
            self.ended = self.done = True
            return True
        self.tokens.append(nxt)
        self.probs.append(float(p[nxt]))
        prev, prev2 = torch.tensor([nxt], device=dev), torch.tensor([self.tokens[-2]], device=dev)
        self._logits, state = m.decoder.step(self.static, prev, prev2, self._first, self.states[-1])
        self.states.append(state)
        self.done = len(self.tokens) >= self.cap
        return True

    def ensure(self, n: int) -> list[int]:
        """Decode until there are at least ``n`` tokens or the polygon is finished; returns ``tokens``."""
        while len(self.tokens) < n and self.advance():
            pass
        return self.tokens
