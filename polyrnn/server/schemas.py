"""The server's typed messages (pydantic): what each endpoint reads and answers. Coordinates are image
pixels (x, y), the continuous frame of :mod:`polyrnn.geometry`."""

from __future__ import annotations

import json
import math
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator


def _finite(values: list[float]) -> list[float]:
    if not all(math.isfinite(v) for v in values):
        raise ValueError("coordinates must be finite numbers")
    return values


Point = Annotated[list[float], Field(min_length=2, max_length=2), AfterValidator(_finite)]


MIN_TOLERANCE, MAX_TOLERANCE = 0.25, 10.0  # the detail slider's range, mask pixels


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


class OpenSession(PredictRequest):
    polygon: list[Point] | None = Field(
        default=None,
        min_length=3,
        max_length=5000,
        description="start from this polygon (an existing shape to edit) instead of the model's",
    )
    tolerance: float | None = Field(
        default=None,
        ge=MIN_TOLERANCE,
        le=MAX_TOLERANCE,
        description="the outline's simplification in mask pixels (224 a crop side; the page's detail "
        "slider): smaller is denser; default: the serving model's",
    )


OPS = ("move", "alt-move", "insert", "include", "exclude", "delete", "undo", "redo", "accept")


class SessionOp(BaseModel):
    version: int = Field(ge=0, description="the session's version the page shows; another one now: 409")
    op: Literal["move", "alt-move", "insert", "include", "exclude", "delete", "undo", "redo", "accept"] = (
        Field(
            description="move: drag `vertex` to `point` (the engine redraws around it); alt-move: the same "
            "without the engine; insert: a vertex at `point` after `vertex`; include / exclude: a positive / "
            "negative click at `point` (the object covers it / does not; the engine redraws the outline near "
            "it); delete `vertex`; undo; redo; accept: the final polygon (the session ends)"
        )
    )
    vertex: int | None = Field(default=None, ge=0, le=2**53, description="a vertex id (stable per session)")
    point: Point | None = Field(
        default=None, description="(x, y) image pixels, for move, insert, include and exclude"
    )


class SessionResponse(BaseModel):
    session: str = Field(description="the id to send operations to")
    version: int = Field(description="send it with the next operation")
    polygon: list[list[float]] = Field(description="(x, y) image pixels, exact")
    fixed: list[bool] = Field(description="per vertex: placed by the annotator (never moved by the model)")
    ids: list[int] = Field(description="per vertex: its id, stable for the session's life")
    source: str = Field(description="where the automatic polygon came from: mask or rnn")
    can_undo: bool
    can_redo: bool
    ms: float = Field(description="server time of the call")


class PolygonResponse(BaseModel):
    polygon: list[list[float]]
    fixed: list[bool] = Field(description="per vertex: placed by the annotator (never moved by the model)")
    source: str = Field(description="where the automatic polygon came from: mask or rnn")
    ms: float = Field(description="server time of the model call")


MAX_VERTICES = 100_000  # per shape, and per polygon sent to the model
MAX_SHAPES = 10_000  # per image
MAX_LABEL = 10_000  # characters of a label
MAX_LABELS = 500  # labels in the tool's list


def _text_only(model: BaseModel) -> BaseModel:
    """Refuse text that cannot be stored as UTF-8 (a lone surrogate such as ``"\\ud800"``), anywhere in the
    message, before it is written: stored, it would break every later read of the file."""
    try:
        json.dumps(model.model_dump(), ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text must be valid UTF-8 (no lone surrogates)") from None
    return model


class Shape(BaseModel):
    """A LabelMe shape. Every field a file holds comes back unchanged, unknown ones included."""

    model_config = ConfigDict(extra="allow")

    label: str = Field(max_length=MAX_LABEL)
    points: list[Point] = Field(max_length=MAX_VERTICES)
    shape_type: str = "polygon"
    group_id: int | None = None
    description: str | None = ""
    flags: dict[str, bool] | None = None


class Annotations(BaseModel):
    shapes: list[Shape] = Field(
        max_length=MAX_SHAPES,
        description="every shape of the image, in order; a read-only stand-in from GET (`polyrnn_kept`) "
        "stands for the file's shape it names, written back unchanged",
    )
    replace_unreadable: bool = Field(
        default=False, description="save over an existing file that cannot be parsed (it is kept aside)"
    )
    version: str | None = Field(
        default=None,
        max_length=64,
        description="the version these shapes started from (GET's `version`); another on disk: 409. "
        "Omitted: saved over whatever is there (stand-ins are then refused)",
    )

    _text = model_validator(mode="after")(_text_only)


class AnnotationsResponse(BaseModel):
    shapes: list[Shape]
    error: str | None = Field(
        default=None, description="why the existing file cannot be read (it is then not overwritten)"
    )
    version: str = Field(default="", description="the file's version: send it back with the save")


class SaveResponse(BaseModel):
    saved: str
    shapes: int
    version: str = Field(description="the file's version after this save")


class ErrorResponse(BaseModel):
    detail: str


class ImageInfo(BaseModel):
    name: str
    annotated: int


class Labels(BaseModel):
    labels: list[Annotated[str, Field(max_length=MAX_LABEL)]] = Field(min_length=1, max_length=MAX_LABELS)

    _text = model_validator(mode="after")(_text_only)


class ExportFormat(BaseModel):
    name: str = Field(description="what POST /api/export/{name} takes")
    title: str


class ExportResponse(BaseModel):
    format: str
    path: str
    instances: int
    images: int
    download: str = Field(description="GET this for the export as one file")
    skipped: list[str] = Field(
        default_factory=list,
        description="what was left out and why (first 100): images outside the folder, superseded files, "
        "shapes that are not regions",
    )
