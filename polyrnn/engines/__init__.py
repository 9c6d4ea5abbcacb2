"""The correction engines: one file each behind one interface (:class:`~polyrnn.engines.base.Engine`), listed
in one table. Adding one is a file here and a line below; the editor, the Python API, CVAT, Label Studio and
``polyrnn evaluate`` get it through :class:`polyrnn.session.BoxSession`."""

from __future__ import annotations

from polyrnn.engines.base import CONFINE, Engine, EngineConfig, State
from polyrnn.engines.manual import Manual
from polyrnn.engines.refine import Refine
from polyrnn.engines.rnn import Rnn

ENGINES: dict[str, Engine] = {e.name: e for e in (Refine(), Rnn(), Manual())}

__all__ = ["CONFINE", "ENGINES", "Engine", "EngineConfig", "State"]
