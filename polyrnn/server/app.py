"""The FastAPI app behind ``polyrnn serve``.

Endpoints (JSON unless said): ``GET /health``; ``GET /api/images``; ``GET /api/images/{name}/file`` (the
image bytes); ``GET|PUT /api/annotations/{name}``; ``GET|PUT /api/labels``; ``POST /api/predict`` (one
automatic polygon); ``POST /api/sessions`` (start editing an object: the server owns its
:class:`~polyrnn.session.BoxSession`) and ``POST /api/sessions/{id}`` (one operation: move, alt-move, insert,
delete, undo, redo, accept; a stale version gets 409); ``POST /api/export/{fmt}`` and
``GET /api/export/{fmt}/download``. The OpenAPI schema is at ``/openapi.json`` (every error answers
``{"detail": ...}``); the interactive docs are off (they load from a CDN). Coordinates are image pixels
(x, y), the continuous frame of :mod:`polyrnn.geometry`. Who may call it and how much:
:mod:`polyrnn.server.guard`.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from polyrnn.predictor import PolygonPredictor, Prediction
from polyrnn.server.guard import Guard, invalid_request
from polyrnn.server.schemas import (
    Annotations,
    AnnotationsResponse,
    ErrorResponse,
    ExportFormat,
    ExportResponse,
    ImageInfo,
    Labels,
    OpenSession,
    PolygonResponse,
    PredictRequest,
    SaveResponse,
    SessionOp,
    SessionResponse,
)
from polyrnn.server.store import (
    AnnotationStore,
    StaleVersion,
    StorageError,
    StoreError,
    UnknownImage,
    UnreadableFile,
)
from polyrnn.session import BoxSession

STATIC = Path(__file__).resolve().parent / "static"
MAX_BYTES = 100 * 1024 * 1024
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in (
        (400, "a host this server does not serve"),
        (403, "a cross-site request, or the token is missing"),
        (404, "unknown image or export"),
        (409, "the annotation file changed since it was read, or cannot be parsed"),
        (413, "request body or image too large"),
        (507, "the disk refused the write; nothing was changed"),
    )
}


class _Images:
    """Decoded images (an LRU of a few) with size checks made on the header before decoding."""

    def __init__(self, store: AnnotationStore, size: int = 4) -> None:
        self.store, self.size = store, size
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, name: str) -> np.ndarray:
        with self._lock:
            if name in self._cache:
                self._cache.move_to_end(name)
                return self._cache[name]
        path = self.store.image_path(name)
        if path.stat().st_size > MAX_BYTES:
            raise HTTPException(413, f"image '{name}' is larger than {MAX_BYTES // 2**20} MB")
        from polyrnn.data.instance import DataError, ImageTooLarge, load_image

        try:
            arr = load_image(path, name=f"image '{name}'")
        except ImageTooLarge as e:
            raise HTTPException(413, str(e)) from e
        except DataError as e:
            raise HTTPException(422, str(e)) from e
        with self._lock:
            self._cache[name] = arr
            while len(self._cache) > self.size:
                self._cache.popitem(last=False)
        return arr


class Sessions:
    """The objects being edited: an LRU of :class:`~polyrnn.session.BoxSession` by random id (the server
    owns every polygon being edited; the page sends operations)."""

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._items: OrderedDict[str, BoxSession] = OrderedDict()

    def add(self, session: BoxSession) -> str:
        import secrets

        sid = secrets.token_urlsafe(12)
        self._items[sid] = session
        while len(self._items) > self.size:
            self._items.popitem(last=False)
        return sid

    def get(self, sid: str) -> BoxSession:
        if sid not in self._items:
            raise HTTPException(404, "unknown or expired session: draw the box again")
        self._items.move_to_end(sid)
        return self._items[sid]

    def drop(self, sid: str) -> None:
        self._items.pop(sid, None)


@dataclass
class ServerContext:
    """What the routes share: the store, the decoded images, the predictor behind one lock."""

    store: AnnotationStore
    predictor: PolygonPredictor
    model_name: str = ""
    learner: Any = None  # polyrnn.server.learner.Learner, when the editor learns by itself
    images: _Images = field(init=False)
    sessions: Sessions = field(default_factory=Sessions)
    lock: threading.Lock = field(default_factory=threading.Lock)  # set_image + predict/correct together
    image: str | None = None

    def __post_init__(self) -> None:
        self.images = _Images(self.store)

    def swap(self, predictor: PolygonPredictor, name: str) -> None:
        """Serve another model from the next request on (the learner's new version, or a rollback). Open
        sessions keep the model they started with until they are accepted."""
        with self.lock:
            self.predictor, self.model_name, self.image = predictor, name, None

    def use_image(self, name: str) -> np.ndarray:
        """Make ``name`` the predictor's image (call with ``lock`` held); returns it."""
        img = self.images.get(name)
        if self.image != name:
            self.predictor.set_image(img)
            self.image = name
        return img


def _ctx(request: Request) -> ServerContext:
    return request.app.state.ctx  # type: ignore[no-any-return]


Ctx = Annotated[ServerContext, Depends(_ctx)]
router = APIRouter(responses=ERRORS)


@router.get("/health")
def health(ctx: Ctx) -> dict[str, Any]:
    return {
        "status": "ok",
        "model": ctx.model_name,
        "images": len(ctx.store.names),
        "folder": str(ctx.store.image_dir),
        "tolerance": ctx.predictor.engine.tolerance,  # the outlines' default detail, mask pixels
        "precision": ctx.predictor.precision,  # what the mask model and the refiner compute in
    }


@router.get("/api/learning")
def learning(ctx: Ctx) -> dict[str, Any]:
    """Which model is serving and what the editor's own learning is doing (``enabled`` false: off)."""
    if ctx.learner is None:
        return {"enabled": False, "model": ctx.model_name}
    return {"enabled": True, **ctx.learner.status(), "serving": ctx.model_name}


# --- images, annotations, labels ---------------------------------------------------------------------
@router.get("/api/images", response_model=list[ImageInfo])
def list_images(ctx: Ctx) -> list[ImageInfo]:
    return [ImageInfo(name=n, annotated=ctx.store.count(n)) for n in ctx.store.names]


@router.get("/api/images/{name:path}/file")
def image_file(name: str, ctx: Ctx) -> FileResponse:
    return FileResponse(ctx.store.image_path(name))


@router.get(
    "/api/annotations/{name:path}", response_model=AnnotationsResponse, response_model_exclude_unset=True
)
def get_annotations(name: str, ctx: Ctx) -> Any:
    ctx.store.image_path(name)
    return ctx.store.load(name)


@router.put("/api/annotations/{name:path}", response_model=SaveResponse)
def put_annotations(name: str, body: Annotations, ctx: Ctx) -> SaveResponse:
    from polyrnn.data.common import image_size
    from polyrnn.data.instance import DataError

    try:
        size = image_size(ctx.store.image_path(name))  # the header only: no decoding to save a file
    except DataError as e:
        raise HTTPException(422, str(e)) from e
    shapes = [s.model_dump(exclude_unset=True) for s in body.shapes]  # absent fields stay absent
    path, version = ctx.store.save(
        name, shapes, size, replace_unreadable=body.replace_unreadable, version=body.version
    )
    return SaveResponse(
        saved=path.relative_to(ctx.store.root).as_posix(), shapes=len(shapes), version=version
    )


@router.get("/api/labels", response_model=Labels)
def get_labels(ctx: Ctx) -> Labels:
    return Labels(labels=ctx.store.labels())


@router.put("/api/labels", response_model=Labels)
def put_labels(body: Labels, ctx: Ctx) -> Labels:
    return Labels(labels=ctx.store.set_labels(body.labels))


# --- the model ---------------------------------------------------------------------------------------
def _response(pred: Prediction, t0: float) -> PolygonResponse:
    return PolygonResponse(
        polygon=[[round(float(x), 2), round(float(y), 2)] for x, y in pred.vertices],
        fixed=[bool(f) for f in pred.fixed],
        source=pred.source,
        ms=round((time.perf_counter() - t0) * 1000, 2),
    )


def _clipped(box: list[float], image: np.ndarray) -> tuple[float, float, float, float]:
    """The box clipped to the image; a 422 when less than a pixel of it is inside."""
    h, w = image.shape[:2]
    x1, y1 = min(max(box[0], 0.0), w), min(max(box[1], 0.0), h)
    x2, y2 = min(max(box[2], 0.0), w), min(max(box[3], 0.0), h)
    if x2 - x1 < 1 or y2 - y1 < 1:
        raise HTTPException(422, f"the box lies outside the {w}x{h} image")
    return x1, y1, x2, y2


@router.post("/api/predict", response_model=PolygonResponse)
def predict(req: PredictRequest, ctx: Ctx) -> PolygonResponse:
    t0 = time.perf_counter()
    with ctx.lock:
        image = ctx.use_image(req.image)
        try:
            pred = ctx.predictor.predict(_clipped(req.box, image))
        except ValueError as e:
            raise HTTPException(422, str(e)) from e
    return _response(pred, t0)


# --- the server's sessions: one per object being edited ----------------------------------------------------
def _state(sid: str, s: BoxSession, t0: float) -> SessionResponse:
    return SessionResponse(
        session=sid,
        version=s.version,
        polygon=s.polygon.tolist(),  # exact: the page shows the session's own numbers
        fixed=[bool(f) for f in s.fixed],
        ids=[int(i) for i in s.ids],
        source=s.source,
        can_undo=bool(s.history),
        can_redo=bool(s.future),
        ms=round((time.perf_counter() - t0) * 1000, 2),
    )


@router.post("/api/sessions", response_model=SessionResponse)
def open_session(req: OpenSession, ctx: Ctx) -> SessionResponse:
    """Start editing an object: the automatic polygon of a box, or an existing polygon (``polygon``)."""
    t0 = time.perf_counter()
    with ctx.lock:
        image = ctx.use_image(req.image)
        try:
            poly = None if req.polygon is None else np.array(req.polygon, dtype=np.float64)
            session = ctx.predictor.new_session(
                _clipped(req.box, image), polygon=poly, tolerance=req.tolerance
            )
        except ValueError as e:
            raise HTTPException(422, str(e)) from e
        sid = ctx.sessions.add(session)
    return _state(sid, session, t0)


@router.post("/api/sessions/{sid}", response_model=SessionResponse)
def session_op(sid: str, req: SessionOp, ctx: Ctx) -> SessionResponse:
    """One operation on an object being edited (see :class:`~polyrnn.server.schemas.SessionOp`)."""
    t0 = time.perf_counter()
    with ctx.lock:
        s = ctx.sessions.get(sid)
        if req.version != s.version:
            raise HTTPException(
                409, f"the session is at version {s.version}, not {req.version}: reload its state"
            )
        try:
            apply_op(s, req.op, req.vertex, req.point)
        except (ValueError, IndexError, KeyError) as e:
            raise HTTPException(422, str(e).strip("'\"")) from e
        if req.op == "accept":
            ctx.sessions.drop(sid)
    return _state(sid, s, t0)


def apply_op(s: BoxSession, op: str, vertex: int | None, point: list[float] | None) -> None:
    """Apply one editor operation to a session (what the page sends; the replay benchmark sends the same)."""
    from polyrnn.geometry import within_image

    if op in ("undo", "redo", "accept"):
        if op == "undo":
            s.undo()
        elif op == "redo":
            s.redo()
        return
    if op in ("include", "exclude"):
        if point is None:
            raise ValueError(f"'{op}' needs a point")
        xy = within_image([point], s.encoding.image_size, what="point")[0]
        s.click((float(xy[0]), float(xy[1])), positive=op == "include")
        return
    if vertex is None:
        raise ValueError(f"'{op}' needs a vertex id")
    index = s.index_of(vertex)
    if op == "delete":
        s.delete(index)
        return
    if point is None:
        raise ValueError(f"'{op}' needs a point")
    xy = within_image([point], s.encoding.image_size, what="point")[0]
    if op == "insert":
        s.insert(index, (float(xy[0]), float(xy[1])))
    else:
        s.move(index, (float(xy[0]), float(xy[1])), predict=op == "move")


# --- export --------------------------------------------------------------------------------------------
@router.get("/api/exports", response_model=list[ExportFormat])
def export_formats() -> list[ExportFormat]:
    """The formats the folder can be exported as (the page's export menu)."""
    from polyrnn.formats import EXPORTS, FORMATS

    return [ExportFormat(name=n, title=FORMATS[n].title) for n in EXPORTS]


@router.post("/api/export/{fmt}", response_model=ExportResponse)
def export(fmt: str, ctx: Ctx) -> ExportResponse:
    from polyrnn.data.instance import DataError
    from polyrnn.formats import EXPORTS, export_folder

    if fmt not in EXPORTS:
        raise HTTPException(404, f"unknown export format '{fmt}' (one of {', '.join(EXPORTS)})")
    store = ctx.store
    try:
        summary = export_folder(
            store.root,
            fmt,
            store.state_dir / "export" / fmt,
            exclude=[store.state_dir],
            labels=store.labels(),
            image_root=store.image_dir,
        )
    except DataError as e:
        raise HTTPException(422, f"nothing to export yet ({e})") from e
    except OSError as e:
        raise HTTPException(507, f"export not written ({e.strerror or e})") from e
    return ExportResponse(
        format=fmt,
        path=str(summary["path"]),
        instances=summary["instances"],
        images=summary["images"],
        download=f"/api/export/{fmt}/download",
        skipped=[str(k) for k in summary["skipped"][:100]],
    )


@router.get("/api/export/{fmt}/download")
def export_download(fmt: str, ctx: Ctx) -> FileResponse:
    """The last export as one file: the COCO JSON (``instances_default.json``) or a zip (the others)."""
    import shutil

    from polyrnn.formats import EXPORTS

    folder = ctx.store.state_dir / "export" / fmt
    if fmt not in EXPORTS or not folder.is_dir():
        raise HTTPException(404, f"nothing exported as '{fmt}' yet: POST /api/export/{fmt} first")
    if fmt == "coco":
        from polyrnn.formats.coco import COCO_JSON

        return FileResponse(folder / COCO_JSON, filename=COCO_JSON.name)
    tmp = shutil.make_archive(str(folder.parent / f".{fmt}-download"), "zip", folder)
    final = folder.parent / f"{fmt}.zip"
    Path(tmp).replace(final)
    return FileResponse(final, filename=f"polyrnn-{fmt}.zip", media_type="application/zip")


# --- errors and the app ----------------------------------------------------------------------------
async def _store_error(_: Request, exc: Exception) -> JSONResponse:
    status = 422
    if isinstance(exc, UnknownImage):
        status = 404
    elif isinstance(exc, UnreadableFile | StaleVersion):
        status = 409
    elif isinstance(exc, StorageError):
        status = 507
    return JSONResponse({"detail": str(exc)}, status_code=status)


def create_app(
    store: AnnotationStore,
    predictor: PolygonPredictor,
    *,
    model_name: str = "",
    host: str = "127.0.0.1",
    token: str | None = None,
    max_body: int = 32 * 1024 * 1024,
    learner: Any = None,
) -> Guard:
    """The app: ``store`` holds images and annotations, ``predictor`` the model (behind one lock), behind a
    :class:`~polyrnn.server.guard.Guard` for ``host`` (the bound address) with ``token`` and ``max_body``.
    The FastAPI app itself is the guard's ``app``."""
    app = FastAPI(
        title="polyrnn",
        version=_version(),
        description="Polygon-RNN annotation tool",
        docs_url=None,
        redoc_url=None,
    )
    app.state.ctx = ServerContext(store=store, predictor=predictor, model_name=model_name, learner=learner)
    app.add_exception_handler(StoreError, _store_error)
    app.add_exception_handler(StorageError, _store_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.include_router(router)
    app.mount("/", StaticFiles(directory=STATIC, html=True), name="static")
    return Guard(app, bind_host=host, token=token, max_body=max_body)


def _version() -> str:
    from polyrnn import __version__

    return __version__
