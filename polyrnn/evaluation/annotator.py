"""Simulated annotators.

``threshold_protocol`` is the paper's (Castrejón et al. 2017, Sec. 4.2, Table 4). The ground-truth
polygon (its grid cells, in the model's orientation) is rotated so that its first vertex is the one
nearest (chessboard distance) to the predicted first vertex; predicted vertex k is then matched with
ground-truth vertex k. Walking k = 0, 1, ...: a predicted vertex farther than T cells from its match is
replaced by the match and the model re-predicts everything after it (one correction). If the model ends
before the last ground-truth vertex, the annotator adds the next one (one correction); if it runs past
the last one, the annotator cuts the polygon there (one correction).

Clicks to quality, the annotator that acts in the editor, is :mod:`polyrnn.evaluation.clicks`.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from polyrnn.config import INFERENCE
from polyrnn.data.sequence import chessboard

__all__ = ["ModelSession", "Session", "chessboard", "threshold_protocol"]


class Session(Protocol):
    """A model bound to one crop: where it starts, and how it completes a prefix of grid tokens."""

    def first(self) -> int: ...

    def complete(self, prefix: list[int]) -> list[int]: ...


def _cells(tokens: list[int], d: int) -> np.ndarray:
    t = np.asarray(tokens, dtype=np.int64)
    return np.stack([t % d, t // d], axis=1)


class _Eager:
    """Adapts a :class:`Session` to the lazy interface (``begin`` / ``ensure``) by completing at once."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.tokens: list[int] = []

    def begin(self, prefix: list[int]) -> list[int]:
        self.tokens = self.session.complete(list(prefix))
        return self.tokens

    def ensure(self, n: int) -> list[int]:
        return self.tokens


def threshold_protocol(
    session: Session, gt_tokens: list[int], threshold: int, grid_size: int
) -> tuple[list[int], int]:
    """Run the paper's simulated annotator. Returns (final tokens, corrections).

    A session with ``begin(prefix)`` / ``ensure(n)`` (like :class:`ModelSession`) is decoded lazily:
    only as far as the walk has got, which gives the same result as completing after every correction.
    """
    d = grid_size
    lazy: Any = session if hasattr(session, "begin") else _Eager(session)
    pred = lazy.begin([session.first()])
    start = min(range(len(gt_tokens)), key=lambda i: (chessboard(gt_tokens[i], pred[0], d), i))
    gt = gt_tokens[start:] + gt_tokens[:start]
    corrections = 0
    for k in range(len(gt)):
        pred = lazy.ensure(k + 1)
        if k >= len(pred):  # the model stopped early: the annotator adds the next vertex
            pred = lazy.begin(pred + [gt[k]])
            corrections += 1
        elif chessboard(pred[k], gt[k], d) > threshold:
            pred = lazy.begin(pred[:k] + [gt[k]])
            corrections += 1
    pred = list(lazy.ensure(len(gt) + 1))
    if len(pred) > len(gt):  # ran past the last vertex: cut
        pred = pred[: len(gt)]
        corrections += 1
    return pred, corrections


class ModelSession:
    """A :class:`Session` for a :class:`~polyrnn.modeling.polygon_rnn.PolygonRNN` on one crop: encodes once,
    and completes prefixes greedily, resuming from the cached decoder states of the last decode when the
    new prefix shares all but its last vertex with it.

    With ``initial`` tokens (e.g. the mask model's polygon on the grid) the automatic polygon is those
    tokens: a prefix of them (nothing corrected yet) completes to them, any other prefix is continued by
    the recurrent decoder. With ``rejoin`` = r cells, a prefix that replaces vertex k of the last polygon
    is continued only until the decoder comes within r cells of that polygon's rest, which is kept
    (:class:`~polyrnn.modeling.polygon_rnn.DecodeCursor`); None re-predicts everything."""

    def __init__(
        self,
        model,
        image_crop,
        *,
        eos_threshold: float = INFERENCE.eos_threshold,  # type: ignore[no-untyped-def]
        initial: list[int] | None = None,
        rejoin: int | None = None,
    ) -> None:
        import torch

        x = torch.as_tensor(image_crop).permute(2, 0, 1).unsqueeze(0).float()
        self.model = model
        _, self.static, self.vertex_logits = model.encode(x)
        self.eos_threshold = eos_threshold
        self.rejoin = rejoin
        self.initial = list(initial) if initial is not None and len(initial) >= 3 else None
        self._last: list[int] = []
        self._states: list = []  # type: ignore[type-arg]
        self._cursor: Any = None

    def first(self) -> int:
        if self.initial is not None:
            return self.initial[0]
        idx, _ = self.model.first_vertices(self.vertex_logits)
        return int(idx[0, 0])

    def begin(self, prefix: list[int]) -> list[int]:
        """Start decoding after ``prefix`` (lazily: :meth:`ensure` decodes on); returns the tokens so far."""
        from polyrnn.modeling.polygon_rnn import DecodeCursor

        if self.initial is not None and list(prefix) == self.initial[: len(prefix)]:
            self._cursor, self._states = None, []
            self._last = list(self.initial)
            return self._last
        if self.rejoin is not None and self._cursor is not None:  # the whole old polygon, as if eager
            self._cursor.ensure(10**9)
        shared = len(prefix) >= 2 and self._last[: len(prefix) - 1] == prefix[:-1]
        reuse = self._states if shared else None
        follow = self._last[len(prefix) :] if shared or len(prefix) == 1 else []
        self._cursor = DecodeCursor(
            self.model,
            self.static,
            list(prefix),
            eos_threshold=self.eos_threshold,
            prefix_states=reuse,
            follow=follow,
            rejoin=self.rejoin,
        )
        self._last, self._states = self._cursor.tokens, self._cursor.states
        return self._last

    def ensure(self, n: int) -> list[int]:
        if self._cursor is not None:
            self._cursor.ensure(n)
        return self._last

    def complete(self, prefix: list[int]) -> list[int]:
        self.begin(prefix)
        return list(self.ensure(10**9))
