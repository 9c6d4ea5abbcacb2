"""The ``manual`` engine: the edit and nothing else, what a plain polygon editor (labelme, CVAT) gives from
the same start."""

from __future__ import annotations

import numpy as np

from polyrnn.encoding import BoxEncoding, Click
from polyrnn.engines.base import EngineConfig, State


class Manual:
    name = "manual"

    def check(self, encoding: BoxEncoding) -> None:
        return None

    def propose(
        self, encoding: BoxEncoding, config: EngineConfig, before: State, manual: State, index: int
    ) -> State | None:
        return None

    def propose_click(
        self,
        encoding: BoxEncoding,
        config: EngineConfig,
        before: State,
        clicks: list[Click],
        point: np.ndarray,
    ) -> State | None:
        return None  # clicks say where the object is, not where its vertices go
