"""The FastAPI app behind ``polyrnn serve``.

Endpoints (JSON unless said): ``GET /health``; ``GET /api/images``; ``GET /api/images/{name}/file`` (the
image bytes); ``GET|PUT /api/annotations/{name}``; ``GET|PUT /api/labels``; ``POST /api/predict``;
``POST /api/correct``; ``POST /api/export/{coco|yolo|labelme}``. The OpenAPI schema is at
``/openapi.json`` and the docs at ``/docs``. Coordinates are image pixels (x, y), the continuous frame
of :mod:`polyrnn.geometry`.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, HTTPException
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import AfterValidator, BaseModel, Field, field_validator

from polyrnn.predictor import PolygonPredictor
from polyrnn.server.store import AnnotationStore, StoreError

STATIC = Path(__file__).resolve().parent / "static"
MAX_PIXELS = 64_000_000  # refuse larger images (decoded size)
MAX_BYTES = 100 * 1024 * 1024


def _finite(values: list[float]) -> list[float]:
    if not all(math.isfinite(v) for v in values):
        raise ValueError("coordinates must be finite numbers")
    return values


Point = Annotated[list[float], Field(min_length=2, max_length=2), AfterValidator(_finite)]


class PredictRequest(BaseModel):
    image: str = Field(description="image name as listed by /api/images")
    box: Annotated[list[float], AfterValidator(_finite)] = Field(
        min_length=4, max_length=4, description="x1, y1, x2, y2 in image pixels"
    )

    @field_validator("box")
    @classmethod
    def _box(cls, v: list[float]) -> list[float]:
        if not (v[2] > v[0] and v[3] > v[1]):
            raise ValueError("box must be x1, y1, x2, y2 with x2 > x1 and y2 > y1")
        return v


class CorrectRequest(PredictRequest):
    index: int = Field(ge=0, description="the corrected vertex; == len(polygon) appends")
    point: Point = Field(description="where the annotator put it (x, y)")
    polygon: list[Point] = Field(min_length=1, max_length=500, description="the polygon as the page shows it")


class PolygonResponse(BaseModel):
    polygon: list[list[float]]
    probs: list[float]
    fixed: int = Field(description="vertices 0..fixed-1 were set by the annotator or kept")
    ms: float = Field(description="server time of the model call")


class Shape(BaseModel):
    label: str = Field(min_length=1, max_length=200)
    points: list[Point] = Field(min_length=3, max_length=5000)
    group_id: int | None = None
    description: str = ""


class Annotations(BaseModel):
    shapes: list[Shape]


class ImageInfo(BaseModel):
    name: str
    annotated: int


class Labels(BaseModel):
    labels: list[str] = Field(min_length=1, max_length=500)


class ExportResponse(BaseModel):
    format: str
    path: str
    instances: int
    images: int


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


def create_app(store: AnnotationStore, predictor: PolygonPredictor, *, model_name: str = "") -> FastAPI:
    """The app: ``store`` holds images and annotations, ``predictor`` the model (behind one lock)."""
    app = FastAPI(title="polyrnn", version=_version(), description="Polygon-RNN annotation tool")
    images = _Images(store)
    lock = threading.Lock()  # one image at a time in the predictor: set_image + predict/correct together
    state: dict[str, Any] = {"image": None}

    def use_image(name: str) -> np.ndarray:
        img = images.get(name)
        if state["image"] != name:
            predictor.set_image(img)
            state["image"] = name
        return img

    @app.exception_handler(StoreError)
    async def _store_error(_: Any, exc: StoreError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404 if "unknown image" in str(exc) else 422)

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "model": model_name,
            "images": len(store.names),
            "folder": str(store.image_dir),
        }

    @app.get("/api/images", response_model=list[ImageInfo])
    def list_images() -> list[ImageInfo]:
        return [ImageInfo(name=n, annotated=store.count(n)) for n in store.names]

    @app.get("/api/images/{name:path}/file")
    def image_file(name: str) -> FileResponse:
        return FileResponse(store.image_path(name))

    @app.get("/api/annotations/{name:path}", response_model=Annotations)
    def get_annotations(name: str) -> Any:
        store.image_path(name)
        return store.load(name)

    @app.put("/api/annotations/{name:path}")
    def put_annotations(name: str, body: Annotations) -> dict[str, Any]:
        from polyrnn.data.common import image_size
        from polyrnn.data.instance import DataError

        try:
            size = image_size(store.image_path(name))  # the header only: no decoding to save a file
        except DataError as e:
            raise HTTPException(422, str(e)) from e
        path = store.save(name, [s.model_dump() for s in body.shapes], size)
        return {"saved": str(path), "shapes": len(body.shapes)}

    @app.get("/api/labels", response_model=Labels)
    def get_labels() -> Labels:
        return Labels(labels=store.labels())

    @app.put("/api/labels", response_model=Labels)
    def put_labels(body: Labels) -> Labels:
        return Labels(labels=store.set_labels(body.labels))

    def _response(pred: Any, t0: float) -> PolygonResponse:
        return PolygonResponse(
            polygon=[[round(float(x), 2), round(float(y), 2)] for x, y in pred.vertices],
            probs=[round(float(p), 4) for p in pred.probs],
            fixed=int(pred.fixed),
            ms=round((time.perf_counter() - t0) * 1000, 2),
        )

    @app.post("/api/predict", response_model=PolygonResponse)
    def predict(req: PredictRequest) -> PolygonResponse:
        t0 = time.perf_counter()
        with lock:
            use_image(req.image)
            try:
                pred = predictor.predict(tuple(req.box))  # type: ignore[arg-type]
            except ValueError as e:
                raise HTTPException(422, str(e)) from e
        return _response(pred, t0)

    @app.post("/api/correct", response_model=PolygonResponse)
    def correct(req: CorrectRequest) -> PolygonResponse:
        t0 = time.perf_counter()
        if req.index > len(req.polygon):
            raise HTTPException(422, f"index {req.index} is past the polygon's {len(req.polygon)} vertices")
        with lock:
            use_image(req.image)
            try:
                pred = predictor.correct(
                    req.index,
                    (req.point[0], req.point[1]),
                    box=tuple(req.box),  # type: ignore[arg-type]
                    vertices=np.array(req.polygon, dtype=np.float64),
                )
            except (ValueError, IndexError) as e:
                raise HTTPException(422, str(e)) from e
        return _response(pred, t0)

    @app.post("/api/export/{fmt}", response_model=ExportResponse)
    def export(fmt: str) -> ExportResponse:
        from polyrnn.data.writers import FORMATS as EXPORTS
        from polyrnn.data.writers import export_folder

        if fmt not in EXPORTS:
            raise HTTPException(404, f"unknown export format '{fmt}' (one of {', '.join(EXPORTS)})")
        from polyrnn.data.instance import DataError

        out = store.root / "export" / fmt
        try:
            summary = export_folder(
                store.root, fmt, out, exclude=[store.root / "export"], labels=store.labels()
            )
        except DataError as e:
            raise HTTPException(422, f"nothing to export yet ({e})") from e
        return ExportResponse(
            format=fmt, path=str(summary["path"]), instances=summary["instances"], images=summary["images"]
        )

    @app.get("/api/export/coco.json")
    def export_coco_file() -> FileResponse:
        path = store.root / "export" / "coco" / "annotations.json"
        if not path.is_file():
            raise HTTPException(404, "nothing exported yet: POST /api/export/coco first")
        return FileResponse(path, filename="annotations.json")

    app.mount("/", StaticFiles(directory=STATIC, html=True), name="static")
    return app


def _version() -> str:
    from polyrnn import __version__

    return __version__
