"""The ``manual`` engine: the edit and nothing else, what a plain polygon editor (labelme, CVAT) gives from
the same start."""

from __future__ import annotations

from polyrnn.encoding import BoxEncoding
from polyrnn.engines.base import Engine, EngineConfig, State


class Manual(Engine):
    name = "manual"

    def propose(
        self, encoding: BoxEncoding, config: EngineConfig, before: State, manual: State, index: int
    ) -> State | None:
        return None
