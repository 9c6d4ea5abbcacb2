"""What every correction engine shares: the state it reads and proposes, its settings, its interface.

An engine turns one edit into a proposed polygon; the session (:class:`polyrnn.session.BoxSession`) applies
the guard rails to every proposal and owns the history. Adding an engine is one file in this folder and one
line in :data:`polyrnn.engines.ENGINES`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from polyrnn.config import INFERENCE

if TYPE_CHECKING:
    from polyrnn.encoding import BoxEncoding, Click

CONFINE = INFERENCE.confine  # a correction changes the polygon within this many box long sides (guard rail)


@dataclass
class EngineConfig:
    """How edits become polygons. ``confine``: see :data:`CONFINE`; ``rejoin``: the rnn engine's rejoin
    distance in grid cells (None: re-predict everything after the edit); ``eos_threshold``: its end rule;
    ``mask_flip``, ``context`` and ``start``: how the box is encoded and where its polygon starts
    (:class:`~polyrnn.encoding.BoxEncoding`)."""

    name: str = INFERENCE.engine
    confine: float = INFERENCE.confine
    rejoin: int | None = INFERENCE.rejoin
    eos_threshold: float = INFERENCE.eos_threshold
    mask_flip: bool = INFERENCE.mask_flip
    context: float = INFERENCE.context
    start: str = "auto"  # the automatic polygon: auto (the mask's, else the decoder's), or box
    tolerance: float = INFERENCE.tolerance  # outlines' simplification, mask pixels: the vertex density
    focus: bool = INFERENCE.focus  # refine: the refiner's finer pass around each drag, when it has one


@dataclass
class State:
    """A polygon (N, 2) in image pixels, which of its vertices the annotator placed (N,) bool, and the
    corrections that led to it."""

    polygon: np.ndarray
    fixed: np.ndarray
    clicks: list[Click] = field(default_factory=list)
    ids: np.ndarray | None = None  # (N,) int: each vertex's stable id (the session assigns them)

    def copy(self) -> State:
        ids = None if self.ids is None else self.ids.copy()
        return State(self.polygon.copy(), self.fixed.copy(), list(self.clicks), ids)

    def same(self, polygon: np.ndarray, fixed: np.ndarray) -> bool:
        return bool(np.array_equal(self.polygon, polygon) and np.array_equal(self.fixed, fixed))


class Engine:
    """A correction engine (subclass it): ``check`` says whether it can run on a box (``ValueError`` naming
    what is missing; by default it runs on any), ``propose`` turns the plain edit ``manual`` of ``before``
    (vertex ``index`` moved or inserted) into a proposed state, or None to keep the plain edit, and
    ``propose_click`` does the same for a region-level click (by default the engine declines clicks)."""

    name = ""
    takes_clicks = False  # whether propose_click does anything (positive/negative clicks)

    def check(self, encoding: BoxEncoding) -> None:
        return None

    def propose(
        self, encoding: BoxEncoding, config: EngineConfig, before: State, manual: State, index: int
    ) -> State | None:
        raise NotImplementedError

    def propose_click(
        self,
        encoding: BoxEncoding,
        config: EngineConfig,
        before: State,
        clicks: list[Click],
        point: np.ndarray,
    ) -> State | None:
        """A positive or negative click at ``point`` (the last of ``clicks``): the proposed outline, or None
        (clicks say where the object is, not where its vertices go)."""
        return None
