"""CVAT interactor (nuclio handler): a box and optional positive/negative clicks -> the object's polygon
and mask.

CVAT calls it as an interactor that starts from a box (``startswith_box`` in ``function.yaml``), with a JSON
body:

* ``image``: the frame, base64-encoded (any format Pillow reads);
* ``obj_bbox``: the box, ``[x1, y1, x2, y2]`` or ``[[x1, y1], [x2, y2]]`` in image pixels (older CVAT versions
  send the box's corners as the first two ``neg_points`` instead);
* ``pos_points`` / ``neg_points``: clicks, ``[[x, y], ...]``: a positive click outside the polygon pulls the
  outline out to it, a negative one inside pushes it out of the region (the editor's correction engine).

The reply (interactor API version 2, ``function.yaml``) is ``{"mask": [[0/1, ...], ...], "bounds": [x1, y1,
x2, y2], "points": [[x, y], ...], "score": s}``: the mask CVAT draws, cropped to the object's pixel bounds
(inclusive: the mask's first row is image row ``y1``, its first column image column ``x1``; a full-frame mask
of a 640x427 image was ~0.8 MB), the polygon in image pixels and the confidence of
:mod:`polyrnn.batch.annotate`. A bad request gets status 400 with ``{"error": "..."}``.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from typing import Any

import numpy as np

from polyrnn.data.instance import DataError, ImageTooLarge, load_image
from polyrnn.geometry import within_image

MAX_BODY = 100 * 2**20  # the base64 image, bytes
MAX_CLICKS = 1000  # positive or negative clicks per request


class BadRequest(ValueError):
    """The request cannot be used; the message says which field and why."""


def init_context(context: Any) -> None:
    """Load the models once per worker (``POLYRNN_THREADS`` threads each, default 1): the shipped ones, or
    the model folder ``POLYRNN_MODEL`` names (``polyrnn learn``'s; copy it into the image and set it in
    ``function.yaml``'s ``env``)."""
    import os

    from polyrnn.runtime import set_threads

    set_threads()
    context.logger.info("polyrnn: loading the models")
    context.user_data.predictor = predictor_for(os.environ.get("POLYRNN_MODEL") or None)
    context.logger.info("polyrnn: ready")


def predictor_for(model: str | None) -> Any:
    """The predictor for a model folder (its mask model, refiner and start), or the shipped models."""
    from polyrnn.learning import ModelFolder
    from polyrnn.predictor import PolygonPredictor

    if not model:
        return PolygonPredictor.from_weights()
    folder = ModelFolder.read(model)
    return PolygonPredictor.from_weights(
        mask_weights=folder.mask, refiner_weights=folder.refiner or "none", **folder.inference()
    )


def _points(value: Any, field: str) -> np.ndarray:
    try:
        pts = np.asarray(value if value is not None else [], dtype=np.float64).reshape(-1, 2)
    except (TypeError, ValueError):
        raise BadRequest(f"'{field}' must be a list of [x, y] points") from None
    if not np.isfinite(pts).all():
        raise BadRequest(f"'{field}' has non-finite coordinates")
    return pts


def _image(value: Any) -> np.ndarray:
    """The request's base64 image, decoded (at most :data:`~polyrnn.data.instance.MAX_PIXELS`)."""
    if not isinstance(value, str | bytes) or len(value) > MAX_BODY:
        raise BadRequest(f"'image' must be a base64 string of at most {MAX_BODY // 2**20} MB")
    try:
        raw = base64.b64decode(value, validate=False)
    except (binascii.Error, ValueError) as e:
        raise BadRequest(f"'image' is not base64 ({e})") from None
    try:
        return load_image(io.BytesIO(raw), name="'image'")
    except ImageTooLarge as e:
        raise BadRequest(str(e)) from None
    except DataError as e:
        raise BadRequest(f"'image' is not a base64-encoded image ({str(e).split(': ', 1)[-1]})") from None


def _clicks(body: dict[str, Any], field: str, size: tuple[int, int]) -> np.ndarray:
    """Clicks of ``field``: at most :data:`MAX_CLICKS`, each within the image (a bounded margin)."""
    pts = _points(body.get(field), field)
    if len(pts) > MAX_CLICKS:
        raise BadRequest(f"'{field}' has {len(pts)} points (at most {MAX_CLICKS})")
    try:
        return within_image(pts, size, what=f"'{field}'")
    except ValueError as e:
        raise BadRequest(str(e)) from None


def parse(body: Any) -> tuple[np.ndarray, tuple[float, float, float, float], np.ndarray, np.ndarray]:
    """(RGB image, box x1 y1 x2 y2, positive points, negative points) of a request body."""
    if isinstance(body, bytes | str):
        try:
            body = json.loads(body)
        except json.JSONDecodeError as e:
            raise BadRequest(f"the body is not JSON ({e.msg})") from None
        except ValueError:  # bytes that are not UTF-8
            raise BadRequest("the body is not JSON (not UTF-8 text)") from None
    if not isinstance(body, dict) or "image" not in body:
        raise BadRequest("the body needs 'image' (base64)")
    image = _image(body["image"])
    h, w = image.shape[:2]
    pos, neg = _clicks(body, "pos_points", (w, h)), _clicks(body, "neg_points", (w, h))
    if body.get("obj_bbox") is not None:
        corners = _points(body["obj_bbox"], "obj_bbox")
    else:  # older CVAT: the box's two corners come first among the negative points
        corners, neg = neg[:2], neg[2:]
    if len(corners) != 2:
        raise BadRequest("a box is needed: 'obj_bbox' [x1, y1, x2, y2]")
    (x1, y1), (x2, y2) = corners.min(axis=0), corners.max(axis=0)
    x1, y1, x2, y2 = max(x1, 0.0), max(y1, 0.0), min(x2, float(w)), min(y2, float(h))
    if x2 - x1 < 1 or y2 - y1 < 1:
        raise BadRequest(f"the box {corners.reshape(-1).tolist()} is empty or outside the {w}x{h} image")
    return image, (float(x1), float(y1), float(x2), float(y2)), pos, neg


def trace(
    predictor: Any,
    image: np.ndarray,
    box: tuple[float, float, float, float],
    pos: np.ndarray,
    neg: np.ndarray,
) -> dict[str, Any]:
    """The reply for one request: the automatic polygon, then each click that the polygon gets wrong applied
    as a correction of the object's session (:meth:`polyrnn.session.BoxSession.click`: the editor's engine
    and guard rails)."""
    from shapely.geometry import Point, Polygon

    from polyrnn.batch.annotate import confidences
    from polyrnn.geometry import rasterize

    predictor.set_image(image)
    session = predictor.new_session(box)
    for points, positive in ((pos, True), (neg, False)):
        for x, y in points:
            inside = Polygon(session.polygon).buffer(0).covers(Point(float(x), float(y)))
            if inside != positive:  # a click the polygon already agrees with says nothing
                session.click((float(x), float(y)), positive)
    polygon = session.polygon
    enc = session.encoding
    score = confidences(enc.mask_probability(), None)["expected_iou"] if enc.mask_model is not None else 0.0
    mask, bounds = cropped_mask(rasterize([polygon], image.shape[0], image.shape[1]))
    return {
        "mask": mask.astype(np.uint8).tolist(),
        "bounds": bounds,
        "points": np.round(polygon, 2).tolist(),
        "score": round(float(score), 4),
    }


def cropped_mask(mask: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """(the (H, W) bool mask cut to its pixels' bounds, [x1, y1, x2, y2] inclusive, image pixels); an empty
    mask gives a 1x1 empty crop at the origin."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return np.zeros((1, 1), dtype=bool), [0, 0, 0, 0]
    x1, x2, y1, y2 = int(xs.min()), int(xs.max()), int(ys.min()), int(ys.max())
    return mask[y1 : y2 + 1, x1 : x2 + 1], [x1, y1, x2, y2]


def handler(context: Any, event: Any) -> Any:
    """nuclio entry point: 200 with the reply, or 400 with ``{"error": ...}`` for a request that cannot be
    used (never a traceback)."""
    try:
        image, box, pos, neg = parse(event.body)
        reply = trace(context.user_data.predictor, image, box, pos, neg)
    except ValueError as e:  # BadRequest, and what the predictor refuses
        return context.Response(
            body=json.dumps({"error": str(e)}), headers={}, content_type="application/json", status_code=400
        )
    return context.Response(
        body=json.dumps(reply), headers={}, content_type="application/json", status_code=200
    )
