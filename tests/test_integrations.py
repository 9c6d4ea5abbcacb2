"""The CVAT serverless handler with a fake nuclio context and event holding a real image."""

from __future__ import annotations

import base64
import json
import types
from pathlib import Path

import numpy as np
import pytest
import yaml

from polyrnn.integrations.cvat import main as cvat


class FakeContext:
    """What nuclio passes: a logger, user_data and a Response class."""

    def __init__(self) -> None:
        self.user_data = types.SimpleNamespace()
        self.logger = types.SimpleNamespace(info=lambda *a: None)

    class Response:
        def __init__(self, body, headers, content_type, status_code):  # noqa: ANN001
            self.body, self.headers, self.content_type, self.status_code = (
                body,
                headers,
                content_type,
                status_code,
            )


@pytest.fixture(scope="module")
def context() -> FakeContext:
    ctx = FakeContext()
    cvat.init_context(ctx)
    return ctx


def _event(body: dict) -> types.SimpleNamespace:
    return types.SimpleNamespace(body=json.dumps(body).encode())


@pytest.mark.shared
def test_cvat_handler_traces_a_real_object(context, datasets):
    from polyrnn.batch.annotate import Annotator
    from polyrnn.data import load_dataset
    from polyrnn.data.instance import load_image
    from polyrnn.geometry import mask_iou, rasterize

    buses = [i for i in load_dataset(datasets / "labelme-examples").instances if i.class_name == "bus"]
    inst = max(buses, key=lambda i: i.long_side)
    b64 = base64.b64encode(Path(inst.image_path).read_bytes()).decode()
    x1, y1, x2, y2 = inst.box_xyxy
    r = cvat.handler(
        context, _event({"image": b64, "obj_bbox": [x1, y1, x2, y2], "pos_points": [], "neg_points": []})
    )
    assert r.status_code == 200 and r.content_type == "application/json"
    reply = json.loads(r.body)
    mask = np.asarray(reply["mask"], dtype=bool)
    assert mask.shape == (inst.height, inst.width)
    assert mask_iou(mask, inst.mask(), inst.ignore_mask()) > 0.8
    auto = Annotator.from_weights().annotate(load_image(inst.image_path), [inst.box_xyxy])[0]
    assert (mask == rasterize([auto.polygon], inst.height, inst.width)).all()  # the automatic polygon
    assert reply["score"] == round(auto.score, 4)
    pts = np.asarray(reply["points"])
    assert pts.shape[1] == 2 and len(pts) >= 3 and 0 <= reply["score"] <= 1
    # older CVAT: the box as the first two negative points gives the same answer
    old = cvat.handler(context, _event({"image": b64, "pos_points": [], "neg_points": [[x1, y1], [x2, y2]]}))
    assert json.loads(old.body)["points"] == reply["points"]
    # a positive click outside the outline pulls it out there
    ys, xs = np.nonzero(~mask[int(y1) : int(y2), int(x1) : int(x2)])
    k = len(xs) // 2
    click = [float(x1 + xs[k] + 0.5), float(y1 + ys[k] + 0.5)]
    moved = json.loads(
        cvat.handler(
            context,
            _event({"image": b64, "obj_bbox": [x1, y1, x2, y2], "pos_points": [click], "neg_points": []}),
        ).body
    )
    assert np.asarray(moved["mask"], dtype=bool).sum() != mask.sum()


def test_cvat_handler_answers_bad_requests_with_400(context, tmp_path):
    from helpers import write_image

    b64 = base64.b64encode(write_image(tmp_path / "a.png").read_bytes()).decode()
    for body, words in (
        ({"obj_bbox": [1, 1, 5, 5]}, "'image'"),
        ({"image": "bm90IGFuIGltYWdl", "obj_bbox": [1, 1, 5, 5]}, "not a base64-encoded image"),
        ({"image": b64, "obj_bbox": [100, 100, 120, 120]}, "outside the 64x48 image"),
        ({"image": b64, "obj_bbox": [1, 1, 9, 9], "pos_points": [[1, "x"]]}, "'pos_points'"),
        ({"image": b64}, "a box is needed"),
    ):
        r = cvat.handler(context, _event(body))
        assert r.status_code == 400 and words in json.loads(r.body)["error"], body
    r = cvat.handler(context, types.SimpleNamespace(body=b"{not json"))
    assert r.status_code == 400


def test_cvat_function_yaml_declares_a_box_interactor():
    spec = yaml.safe_load((Path(cvat.__file__).parent / "function.yaml").read_text())
    assert spec["metadata"]["annotations"]["type"] == "interactor"
    assert spec["metadata"]["annotations"]["startswith_box"] is True
    assert spec["spec"]["handler"] == "main:handler"
