"""The interactive session: the one owner of an object's editing state.

A :class:`BoxSession` holds one box's state: its crop and encodings (:class:`~polyrnn.encoding.BoxEncoding`,
computed once), the current polygon in exact image pixels, which vertices the annotator placed (*fixed*: never
moved by a model), a stable id for every vertex (so a front end's selection survives any renumbering), the
history for undo and redo, and a version that every operation increments. Its operations are what an
annotator does: :meth:`move` (with the engine, or without it: ``predict=False``, the editor's Alt+drag),
:meth:`insert`, :meth:`delete`, :meth:`undo`, :meth:`redo`. The editor's server, the Python API, the CVAT
and
Label Studio integrations and ``polyrnn evaluate`` all drive it, so the figures describe the product.

The engine that turns an edit into a proposal is one of :data:`polyrnn.engines.ENGINES` (``refine``, ``rnn``,
``manual``). Guard rails every engine gets (:meth:`BoxSession._guard`): a proposal that moves or drops a
fixed vertex, intersects itself, or changes the polygon farther than ``confine`` x the box's long side from
the edit is refused, and the plain edit is kept instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from polyrnn.encoding import BoxEncoding, Click
from polyrnn.engines import CONFINE, ENGINES, EngineConfig, State
from polyrnn.engines.refine import splice
from polyrnn.geometry import edge_feet, is_simple

__all__ = [
    "CONFINE",
    "ENGINES",
    "BoxEncoding",
    "BoxSession",
    "Click",
    "EngineConfig",
    "ObjectSession",
    "State",
    "splice",
]


@dataclass
class BoxSession:
    """One object's editing state (see the module docstring).

    Args:
        encoding: the box's :class:`~polyrnn.encoding.BoxEncoding`.
        engine: an :class:`~polyrnn.engines.EngineConfig` (its ``name`` picks the engine).
        state: the polygon to continue from (default: the automatic polygon, nothing fixed).
    """

    encoding: BoxEncoding
    engine: EngineConfig = field(default_factory=EngineConfig)
    state: State | None = None
    source: str = "mask"
    history: list[State] = field(default_factory=list)
    future: list[State] = field(default_factory=list)  # what undo took back, for redo
    start: np.ndarray | None = None  # the automatic polygon
    version: int = 0  # incremented by every operation
    _next_id: int = 0

    def __post_init__(self) -> None:
        if self.engine.name not in ENGINES:
            raise ValueError(f"unknown engine '{self.engine.name}' (one of {', '.join(ENGINES)})")
        ENGINES[self.engine.name].check(self.encoding)
        auto, self.source = self.encoding.automatic(self.engine.tolerance)
        if self.start is None:
            self.start = auto
        if self.state is None:
            self.state = State(auto, np.zeros(len(auto), dtype=bool))
        self.state = State(
            np.asarray(self.state.polygon, dtype=np.float64).reshape(-1, 2).copy(),
            np.asarray(self.state.fixed, dtype=bool).copy(),
        )
        if len(self.state.fixed) != len(self.state.polygon):
            raise ValueError(
                f"fixed has {len(self.state.fixed)} flags for {len(self.state.polygon)} vertices"
            )
        self.state.ids = self._new_ids(len(self.state.polygon))

    @property
    def polygon(self) -> np.ndarray:
        """(N, 2) the current polygon, image pixels (x, y)."""
        assert self.state is not None
        return self.state.polygon

    @property
    def fixed(self) -> np.ndarray:
        """(N,) bool: the vertices the annotator placed."""
        assert self.state is not None
        return self.state.fixed

    @property
    def ids(self) -> np.ndarray:
        """(N,) int: each vertex's id, stable for the session's life (a new vertex gets a new one)."""
        assert self.state is not None and self.state.ids is not None
        return self.state.ids

    @property
    def long_side(self) -> float:
        """The box's longer side in image pixels."""
        return float(self.encoding.long_side)

    def index_of(self, vertex_id: int) -> int:
        """The current index of the vertex with id ``vertex_id``; ``KeyError`` when it is gone."""
        hit = np.flatnonzero(self.ids == vertex_id)
        if not len(hit):
            raise KeyError(f"no vertex {vertex_id} in the polygon (it was removed, or never existed)")
        return int(hit[0])

    def reset(self, state: State | None = None) -> State:
        """Start over from ``state`` (default: the automatic polygon, nothing fixed), forgetting the
        history. The vertices get new ids."""
        assert self.start is not None
        state = state or State(self.start.copy(), np.zeros(len(self.start), dtype=bool))
        self.state = State(state.polygon.copy(), state.fixed.copy(), list(state.clicks))
        self.state.ids = self._new_ids(len(self.state.polygon))
        self.history.clear()
        self.future.clear()
        self.version += 1
        return self.state

    def adopt(self, state: State) -> State:
        """Continue from a polygon edited elsewhere (an undoable operation; its vertices get new ids)."""
        self._push()
        self.state = State(state.polygon.copy(), state.fixed.copy(), list(state.clicks))
        self.state.ids = self._new_ids(len(self.state.polygon))
        return self.state

    # --- the editor's operations ----------------------------------------------------------------------
    def move(self, index: int, xy: tuple[float, float], *, predict: bool = True) -> State:
        """Drag vertex ``index`` to ``xy`` (image pixels): it becomes fixed; the engine updates the rest
        (``predict=False``: nothing else changes, the editor's Alt+drag)."""
        n = len(self.polygon)
        if not 0 <= index < n:
            raise IndexError(f"vertex index {index} out of range 0..{n - 1}")
        poly, fixed = self.polygon.copy(), self.fixed.copy()
        u = poly[index].copy()
        poly[index], fixed[index] = _point(xy), True
        manual = State(
            poly, fixed, self._clicks(u, poly[index]) if predict else self._clicks(), self.ids.copy()
        )
        return self._apply(manual, index, predict=predict)

    def insert(self, edge: int, xy: tuple[float, float], *, predict: bool = True) -> State:
        """Insert a vertex at ``xy`` on edge ``edge`` (after vertex ``edge``); it becomes fixed."""
        n = len(self.polygon)
        if not 0 <= edge < n:
            raise IndexError(f"edge index {edge} out of range 0..{n - 1}")
        v = _point(xy)
        a, b = self.polygon[edge], self.polygon[(edge + 1) % n]
        ab = b - a
        u = a + np.clip(float(np.dot(v - a, ab) / max(float(np.dot(ab, ab)), 1e-12)), 0.0, 1.0) * ab
        poly = np.insert(self.polygon, edge + 1, v, axis=0)
        fixed = np.insert(self.fixed, edge + 1, True)
        ids = np.insert(self.ids, edge + 1, self._new_ids(1))
        manual = State(poly, fixed, self._clicks(u, v) if predict else self._clicks(), ids)
        return self._apply(manual, edge + 1, predict=predict)

    def _clicks(self, u: np.ndarray | None = None, v: np.ndarray | None = None) -> list[Click]:
        """The corrections so far, and the drag from ``u`` (where the outline ran) to ``v`` when given."""
        from shapely.geometry import Point, Polygon

        so_far = list(self.state.clicks) if self.state else []
        if u is None or v is None:
            return so_far
        outward = not Polygon(self.polygon).buffer(0).covers(Point(float(v[0]), float(v[1])))
        mid = (float(u[0] + v[0]) / 2, float(u[1] + v[1]) / 2)
        return [*so_far, Click(mid, 1 if outward else -1)] if self.state else [Click(mid, 1)]

    def delete(self, index: int) -> State:
        """Remove vertex ``index`` (no model: deleting says nothing about where the boundary is)."""
        n = len(self.polygon)
        if n <= 3:
            raise ValueError("a polygon needs at least 3 vertices")
        if not 0 <= index < n:
            raise IndexError(f"vertex index {index} out of range 0..{n - 1}")
        assert self.state is not None
        self._push()
        self.state = State(
            np.delete(self.polygon, index, axis=0),
            np.delete(self.fixed, index),
            self.state.clicks,
            np.delete(self.ids, index),
        )
        return self.state

    def click(self, xy: tuple[float, float], positive: bool) -> State:
        """A region-level correction, as CVAT's clicks: the object includes (``positive``) or excludes the
        point (image pixels). The engine redraws the outline near it from every click so far; the guard
        rails hold (fixed vertices kept, a simple polygon, changes within ``confine`` box long sides of the
        click), and so must the click itself (a positive one inside the new polygon, a negative one outside).
        Where the engine's outline does not, the plain click does, as the plain drag backs a drag: a small
        bump of the nearest edge takes the point in or out (:func:`_plain_click`); where neither holds, the
        polygon stays as it was. The click is remembered for later corrections either way."""
        from shapely.geometry import Point, Polygon

        assert self.state is not None
        v = _point(xy)
        before = self.state
        clicks = [*before.clicks, Click((float(v[0]), float(v[1])), 1 if positive else -1)]
        proposal = ENGINES[self.engine.name].propose_click(self.encoding, self.engine, before, clicks, v)
        self._push()
        state = State(before.polygon.copy(), before.fixed.copy(), clicks, before.ids)
        for candidate in (proposal, _plain_click(before, v, positive)):
            if candidate is None or len(candidate.polygon) < 3 or not is_simple(candidate.polygon):
                continue
            shape = Polygon(candidate.polygon)
            right = shape.covers(Point(float(v[0]), float(v[1]))) == positive
            if right and self._confined(before, candidate, v):
                state = State(candidate.polygon, candidate.fixed, clicks)
                state.ids = self._ids_for(state, before)
                break
        self.state = state
        return state

    def _confined(self, before: State, proposal: State, at: np.ndarray) -> bool:
        """Every fixed vertex kept, in order, and nothing added or dropped farther than ``confine`` box long
        sides from ``at``."""
        if not _same_ring(before.polygon[before.fixed], proposal.polygon[proposal.fixed]):
            return False
        old = {tuple(p) for p in before.polygon}
        kept = {tuple(p) for p in proposal.polygon}
        new = np.array([p for p in proposal.polygon if tuple(p) not in old]).reshape(-1, 2)
        gone = np.array([p for p in before.polygon if tuple(p) not in kept]).reshape(-1, 2)
        changed = np.concatenate([new, gone])
        reach = self.engine.confine * self.encoding.long_side
        return not len(changed) or float(np.max(np.linalg.norm(changed - at, axis=1))) <= reach

    def undo(self) -> State:
        """Back to the exact state before the last operation."""
        if not self.history:
            raise ValueError("nothing to undo")
        assert self.state is not None
        self.future.append(self.state)
        self.state = self.history.pop()
        self.version += 1
        return self.state

    def redo(self) -> State:
        """The operation the last undo took back, again (exactly as it was)."""
        if not self.future:
            raise ValueError("nothing to redo")
        assert self.state is not None
        self.history.append(self.state)
        self.state = self.future.pop()
        self.version += 1
        return self.state

    # --- engines --------------------------------------------------------------------------------------
    def _push(self) -> None:
        """Remember the current state for undo; a new operation forgets what could be redone."""
        assert self.state is not None
        self.history.append(self.state.copy())
        self.future.clear()
        self.version += 1

    def _apply(self, manual: State, index: int, *, predict: bool = True) -> State:
        assert self.state is not None
        before = self.state
        proposal = None
        if predict:
            proposal = ENGINES[self.engine.name].propose(self.encoding, self.engine, before, manual, index)
        self._push()
        state = self._guard(manual, proposal, index)
        state.clicks = list(manual.clicks)
        state.ids = self._ids_for(state, manual)
        self.state = state
        return self.state

    def _ids_for(self, state: State, manual: State) -> np.ndarray:
        """Ids for ``state``: a vertex that stands exactly where one of the plain edit's stood keeps its id
        (models move nothing they do not redraw); every other vertex is new."""
        if state is manual and manual.ids is not None:
            return manual.ids.copy()
        assert manual.ids is not None
        free: dict[tuple[float, float], list[int]] = {}
        for p, i in zip(manual.polygon, manual.ids, strict=True):
            free.setdefault((float(p[0]), float(p[1])), []).append(int(i))
        out = []
        for p in state.polygon:
            same = free.get((float(p[0]), float(p[1])))
            out.append(same.pop(0) if same else int(self._new_ids(1)[0]))
        return np.array(out, dtype=np.int64)

    def _new_ids(self, n: int) -> np.ndarray:
        ids = np.arange(self._next_id, self._next_id + n, dtype=np.int64)
        self._next_id += n
        return ids

    def _guard(self, manual: State, proposal: State | None, index: int) -> State:
        """The proposal if it keeps every fixed vertex exactly and in order, is a simple polygon and changes
        nothing farther than ``confine`` long sides from the edit; else the plain edit."""
        if proposal is None or len(proposal.polygon) < 3:
            return manual
        if not is_simple(proposal.polygon):
            return manual
        return proposal if self._confined(manual, proposal, manual.polygon[index]) else manual


@dataclass
class ObjectSession:
    """An object in one or more parts (a person cut by a pole, a bicycle's wheels): one :class:`BoxSession`
    per part, each with its own box, corrected on its own; the object is the union of its parts' polygons,
    and its IoU is always the whole object's. The editor does the same with P (the polygon accepted as
    another part of the object before it: one LabelMe ``group_id``, one COCO annotation with a list of
    polygons); ``polyrnn evaluate``'s simulated annotators add a part where the outline missed one
    (:mod:`polyrnn.evaluation.clicks`).

    Args:
        first: the session of the object's first box; every further part gets its engine and models.
    """

    first: BoxSession
    parts: list[BoxSession] = field(init=False)  # the first part's session first

    def __post_init__(self) -> None:
        self.parts = [self.first]

    @property
    def polygons(self) -> list[np.ndarray]:
        """Each part's current polygon (N_k, 2), image pixels."""
        return [p.polygon for p in self.parts]

    @property
    def long_side(self) -> float:
        """The first box's longer side in image pixels (the object's scale)."""
        return self.first.long_side

    def add_part(self, box: tuple[float, float, float, float]) -> BoxSession:
        """A further part in ``box`` (x1, y1, x2, y2, image pixels; clipped to the image): its session starts
        from the automatic polygon of that box, with the first part's engine. ``ValueError`` for a box that is
        not four finite numbers or has less than a pixel of the image inside it."""
        b = np.asarray(box, dtype=np.float64).reshape(-1)
        if b.shape != (4,) or not np.isfinite(b).all():
            raise ValueError(f"box {box!r} must be four finite numbers x1, y1, x2, y2")
        w, h = self.first.encoding.image_size
        x1, x2 = np.clip(np.sort(b[[0, 2]]), 0, w)
        y1, y2 = np.clip(np.sort(b[[1, 3]]), 0, h)
        if x2 - x1 < 1 or y2 - y1 < 1:
            raise ValueError(f"box {box!r} has less than a pixel inside the {w}x{h} image")
        enc = self.first.encoding.for_box((float(x1), float(y1), float(x2), float(y2)))
        part = BoxSession(enc, self.first.engine)
        self.parts.append(part)
        return part


def _same_ring(want: np.ndarray, got: np.ndarray) -> bool:
    """The same points in the same cyclic order (exactly)."""
    if len(want) != len(got):
        return False
    if not len(want):
        return True
    starts = [k for k in range(len(got)) if np.array_equal(got[k], want[0])]
    return any(np.array_equal(np.roll(got, -k, axis=0), want) for k in starts)


def _plain_click(before: State, v: np.ndarray, positive: bool, *, past: float = 1.0) -> State | None:
    """The click ``v`` (image pixels) honoured without a model: a flat bump (two new vertices, not fixed: a
    click says where the object is, not where its outline runs) on the polygon's edge nearest ``v``, its top
    ``past`` pixels beyond ``v`` seen from that edge and ``2 * past`` wide, so that the polygon now takes the
    point in (``positive``) or leaves it out, strictly (not on its outline, also where the nearest point of
    the outline is a corner). Where that bump would cross the outline, the next-nearest edges are tried (up
    to 8). None when the point is on its side already, or no edge can reach it."""
    from shapely.geometry import Point, Polygon

    p = before.polygon
    at = Point(float(v[0]), float(v[1]))
    if Polygon(p).covers(at) == positive:
        return None
    ab = np.roll(p, -1, axis=0) - p
    feet = edge_feet(p, v)
    for k in np.argsort(np.linalg.norm(feet - v, axis=1), kind="stable")[:8]:
        away = v - feet[k]
        d = float(np.linalg.norm(away))
        along = float(np.linalg.norm(ab[k]))
        if d < 1e-9 or along < 1e-9:
            continue
        u, e = away / d, ab[k] / along
        side = e - float(np.dot(e, u)) * u  # along the edge, square to the bump's axis
        n = float(np.linalg.norm(side))
        side = side / n if n > 1e-6 else np.array([-u[1], u[0]])
        top = v + past * u
        bump = np.stack([top - past * side, top + past * side])
        poly = np.insert(p, k + 1, bump, axis=0)
        shape = Polygon(poly)
        if is_simple(poly) and shape.covers(at) == positive and shape.exterior.distance(at) >= 1e-6:
            fixed = np.insert(before.fixed, k + 1, [False, False])
            return State(poly, fixed, list(before.clicks))
    return None


def _point(xy: tuple[float, float]) -> np.ndarray:
    v = np.asarray(xy, dtype=np.float64).reshape(2)
    if not np.isfinite(v).all():
        raise ValueError(f"point {xy!r} must be two finite numbers")
    return v
