"""The server's typed messages (pydantic): what each endpoint reads and answers. Coordinates are image
pixels (x, y), the continuous frame of :mod:`polyrnn.geometry`."""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator


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
    op: Literal["move", "insert"] = Field(
        default="move", description="move: vertex `index` was dragged; insert: a vertex added after `index`"
    )
    index: int = Field(ge=0, description="the dragged vertex, or the edge (after vertex `index`) for insert")
    point: Point = Field(description="where the annotator put it (x, y)")
    polygon: list[Point] = Field(
        min_length=3, max_length=5000, description="the polygon before the edit, as the page shows it"
    )
    fixed: list[bool] | None = Field(
        default=None, max_length=5000, description="which vertices the annotator placed (default: none)"
    )


class PolygonResponse(BaseModel):
    polygon: list[list[float]]
    fixed: list[bool] = Field(description="per vertex: placed by the annotator (never moved by the model)")
    source: str = Field(description="where the automatic polygon came from: mask or rnn")
    ms: float = Field(description="server time of the model call")


MAX_VERTICES = 100_000  # per shape, and per polygon sent to the model
MAX_SHAPES = 10_000  # per image


class Shape(BaseModel):
    """A LabelMe shape. Every field a file holds comes back unchanged, unknown ones included."""

    model_config = ConfigDict(extra="allow")

    label: str = Field(max_length=10_000)
    points: list[Point] = Field(max_length=MAX_VERTICES)
    shape_type: str = "polygon"
    group_id: int | None = None
    description: str | None = ""
    flags: dict[str, bool] | None = None


class Annotations(BaseModel):
    shapes: list[Shape] = Field(max_length=MAX_SHAPES)
    replace_unreadable: bool = Field(
        default=False, description="save over an existing file that cannot be parsed (it is kept aside)"
    )


class AnnotationsResponse(BaseModel):
    shapes: list[Shape]
    error: str | None = Field(
        default=None, description="why the existing file cannot be read (it is then not overwritten)"
    )


class SaveResponse(BaseModel):
    saved: str
    shapes: int


class ErrorResponse(BaseModel):
    detail: str


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
    download: str = Field(description="GET this for the export as one file")
    skipped: list[str] = Field(
        default_factory=list,
        description="what was left out and why (first 100): images outside the folder, superseded files, "
        "shapes that are not regions",
    )
