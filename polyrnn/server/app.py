"""The FastAPI app behind ``polyrnn serve``.

Endpoints (JSON unless said): ``GET /health``; ``GET /api/images``; ``GET /api/images/{name}/file`` (the
image bytes); ``GET|PUT /api/annotations/{name}``; ``GET|PUT /api/labels``; ``POST /api/predict``;
``POST /api/correct``; ``POST /api/export/{coco|yolo|labelme}``. The OpenAPI schema is at
``/openapi.json`` and the docs at ``/docs``. Coordinates are image pixels (x, y), the continuous frame
of :mod:`polyrnn.geometry`.
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
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from polyrnn.predictor import PolygonPredictor, Prediction
from polyrnn.server.schemas import (
    Annotations,
    CorrectRequest,
    ExportResponse,
    ImageInfo,
    Labels,
    PolygonResponse,
    PredictRequest,
)
from polyrnn.server.store import AnnotationStore, StoreError

STATIC = Path(__file__).resolve().parent / "static"
MAX_PIXELS = 64_000_000  # refuse larger images (decoded size)
MAX_BYTES = 100 * 1024 * 1024


class _Images:
    """Decoded images (an LRU of a few) with size checks."""

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
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as im:
                if im.width * im.height > MAX_PIXELS:
                    raise HTTPException(
                        413, f"image '{name}' has {im.width}x{im.height} pixels (limit {MAX_PIXELS})"
                    )
                arr = np.asarray(im.convert("RGB"))
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise HTTPException(422, f"image '{name}' cannot be decoded ({e.__class__.__name__})") from e
        with self._lock:
            self._cache[name] = arr
            while len(self._cache) > self.size:
                self._cache.popitem(last=False)
        return arr


@dataclass
class ServerContext:
    """What the routes share: the store, the decoded images, the predictor behind one lock."""

    store: AnnotationStore
    predictor: PolygonPredictor
    model_name: str = ""
    images: _Images = field(init=False)
    lock: threading.Lock = field(default_factory=threading.Lock)  # set_image + predict/correct together
    image: str | None = None

    def __post_init__(self) -> None:
        self.images = _Images(self.store)

    def use_image(self, name: str) -> None:
        """Make ``name`` the predictor's image (call with ``lock`` held)."""
        img = self.images.get(name)
        if self.image != name:
            self.predictor.set_image(img)
            self.image = name


def _ctx(request: Request) -> ServerContext:
    return request.app.state.ctx  # type: ignore[no-any-return]


Ctx = Annotated[ServerContext, Depends(_ctx)]
router = APIRouter()


@router.get("/health")
def health(ctx: Ctx) -> dict[str, Any]:
    return {
        "status": "ok",
        "model": ctx.model_name,
        "images": len(ctx.store.names),
        "folder": str(ctx.store.image_dir),
    }


# --- images, annotations, labels ---------------------------------------------------------------------
@router.get("/api/images", response_model=list[ImageInfo])
def list_images(ctx: Ctx) -> list[ImageInfo]:
    return [ImageInfo(name=n, annotated=ctx.store.count(n)) for n in ctx.store.names]


@router.get("/api/images/{name:path}/file")
def image_file(name: str, ctx: Ctx) -> FileResponse:
    return FileResponse(ctx.store.image_path(name))


@router.get("/api/annotations/{name:path}", response_model=Annotations)
def get_annotations(name: str, ctx: Ctx) -> Any:
    ctx.store.image_path(name)
    return ctx.store.load(name)


@router.put("/api/annotations/{name:path}")
def put_annotations(name: str, body: Annotations, ctx: Ctx) -> dict[str, Any]:
    from polyrnn.data.common import image_size
    from polyrnn.data.instance import DataError

    try:
        size = image_size(ctx.store.image_path(name))  # the header only: no decoding to save a file
    except DataError as e:
        raise HTTPException(422, str(e)) from e
    path = ctx.store.save(name, [s.model_dump() for s in body.shapes], size)
    return {"saved": str(path), "shapes": len(body.shapes)}


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


@router.post("/api/predict", response_model=PolygonResponse)
def predict(req: PredictRequest, ctx: Ctx) -> PolygonResponse:
    t0 = time.perf_counter()
    with ctx.lock:
        ctx.use_image(req.image)
        try:
            pred = ctx.predictor.predict(tuple(req.box))  # type: ignore[arg-type]
        except ValueError as e:
            raise HTTPException(422, str(e)) from e
    return _response(pred, t0)


@router.post("/api/correct", response_model=PolygonResponse)
def correct(req: CorrectRequest, ctx: Ctx) -> PolygonResponse:
    t0 = time.perf_counter()
    if req.index >= len(req.polygon):
        raise HTTPException(422, f"index {req.index} is past the polygon's {len(req.polygon)} vertices")
    if req.fixed is not None and len(req.fixed) != len(req.polygon):
        raise HTTPException(422, f"fixed has {len(req.fixed)} flags for {len(req.polygon)} vertices")
    edit = ctx.predictor.correct if req.op == "move" else ctx.predictor.insert
    with ctx.lock:
        ctx.use_image(req.image)
        try:
            pred = edit(
                req.index,
                (req.point[0], req.point[1]),
                box=tuple(req.box),  # type: ignore[arg-type]
                vertices=np.array(req.polygon, dtype=np.float64),
                fixed=None if req.fixed is None else np.array(req.fixed, dtype=bool),
            )
        except (ValueError, IndexError) as e:
            raise HTTPException(422, str(e)) from e
    return _response(pred, t0)


# --- export --------------------------------------------------------------------------------------------
@router.post("/api/export/{fmt}", response_model=ExportResponse)
def export(fmt: str, ctx: Ctx) -> ExportResponse:
    from polyrnn.data.instance import DataError
    from polyrnn.data.writers import FORMATS as EXPORTS
    from polyrnn.data.writers import export_folder

    if fmt not in EXPORTS:
        raise HTTPException(404, f"unknown export format '{fmt}' (one of {', '.join(EXPORTS)})")
    root = ctx.store.root
    try:
        summary = export_folder(
            root, fmt, root / "export" / fmt, exclude=[root / "export"], labels=ctx.store.labels()
        )
    except DataError as e:
        raise HTTPException(422, f"nothing to export yet ({e})") from e
    return ExportResponse(
        format=fmt, path=str(summary["path"]), instances=summary["instances"], images=summary["images"]
    )


@router.get("/api/export/coco.json")
def export_coco_file(ctx: Ctx) -> FileResponse:
    path = ctx.store.root / "export" / "coco" / "annotations.json"
    if not path.is_file():
        raise HTTPException(404, "nothing exported yet: POST /api/export/coco first")
    return FileResponse(path, filename="annotations.json")


async def _store_error(_: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=404 if "unknown image" in str(exc) else 422)


def create_app(store: AnnotationStore, predictor: PolygonPredictor, *, model_name: str = "") -> FastAPI:
    """The app: ``store`` holds images and annotations, ``predictor`` the model (behind one lock)."""
    app = FastAPI(title="polyrnn", version=_version(), description="Polygon-RNN annotation tool")
    app.state.ctx = ServerContext(store=store, predictor=predictor, model_name=model_name)
    app.add_exception_handler(StoreError, _store_error)
    app.include_router(router)
    app.mount("/", StaticFiles(directory=STATIC, html=True), name="static")
    return app


def _version() -> str:
    from polyrnn import __version__

    return __version__
