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
    from polyrnn.data.instance import load_image
    from polyrnn.formats import load_dataset
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
    crop = np.asarray(reply["mask"], dtype=bool)
    bx1, by1, bx2, by2 = reply["bounds"]  # the mask comes cropped to its bounds (inclusive)
    assert crop.shape == (by2 - by1 + 1, bx2 - bx1 + 1) and crop[0].any() and crop[-1].any()
    assert crop[:, 0].any() and crop[:, -1].any() and crop.size < 0.8 * inst.height * inst.width
    assert len(r.body) < 3 * crop.size + 20_000  # the reply carries the crop, not the frame
    mask = np.zeros((inst.height, inst.width), dtype=bool)
    mask[by1 : by2 + 1, bx1 : bx2 + 1] = crop
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
    assert cvat.cropped_mask(np.zeros((4, 5), dtype=bool))[1] == [0, 0, 0, 0]


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
    assert spec["metadata"]["annotations"]["version"] == 2  # else CVAT warns "Interactor API is outdated"
    # the runtime's Python is one the package installs on
    from packaging.specifiers import SpecifierSet

    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    (requires,) = [
        ln.split("=", 1)[1].strip().strip('"')
        for ln in pyproject.splitlines()
        if ln.startswith("requires-python")
    ]
    runtime = spec["spec"]["runtime"].split(":")[1]
    assert runtime in SpecifierSet(requires) and f"python:{runtime}" in spec["spec"]["build"]["baseImage"]
    assert spec["metadata"]["annotations"]["startswith_box"] is True
    assert spec["spec"]["handler"] == "main:handler"


# --- Label Studio ML back end ------------------------------------------------------------------------------
CONFIG = """<View>
  <Image name="img" value="$photo"/>
  <RectangleLabels name="box" toName="img"><Label value="bus"/><Label value="car"/></RectangleLabels>
  <PolygonLabels name="outline" toName="img" smart="true">
    <Label value="bus"/><Label value="car"/>
  </PolygonLabels>
</View>"""


def _rect(inst, label: str) -> dict:
    """A rectanglelabels result for an instance's box, as Label Studio writes it (percent)."""
    x, y, w, h = inst.box
    return {
        "id": "abc123",
        "type": "rectanglelabels",
        "from_name": "box",
        "to_name": "img",
        "original_width": inst.width,
        "original_height": inst.height,
        "image_rotation": 0,
        "value": {
            "x": 100 * x / inst.width,
            "y": 100 * y / inst.height,
            "width": 100 * w / inst.width,
            "height": 100 * h / inst.height,
            "rotation": 0,
            "rectanglelabels": [label],
        },
    }


@pytest.fixture(scope="module")
def ls(datasets, tmp_path_factory):
    from fastapi.testclient import TestClient

    from polyrnn.formats import load_dataset
    from polyrnn.integrations.label_studio import LabelStudioBackend, create_app

    folder = datasets / "labelme-examples"
    insts = [i for i in load_dataset(folder).instances if i.image_path.name == "2011_000025.jpg"]
    work = tmp_path_factory.mktemp("ls")
    backend = LabelStudioBackend(work_dir=work, images=folder, fit_epochs=1, fit_async=False)
    return TestClient(create_app(backend), base_url="http://127.0.0.1:9090"), backend, insts


def _task(insts, with_boxes: bool = True) -> dict:
    task = {"id": 7, "data": {"photo": "/data/local-files/?d=labelme-examples/2011_000025.jpg"}}
    if with_boxes:
        task["annotations"] = [{"id": 1, "result": [_rect(i, i.class_name) for i in insts]}]
    return task


@pytest.mark.shared
def test_label_studio_backend_predicts_polygons_for_a_real_task(ls):
    from polyrnn.geometry import mask_iou, rasterize

    client, backend, insts = ls
    assert client.get("/health").json()["status"] == "UP"
    assert client.post("/setup", json={"project": "3.1700000000", "schema": CONFIG}).json()["model_version"]
    bad = client.post(
        "/setup", json={"project": "3.1", "schema": "<View><Image name='i' value='$i'/></View>"}
    )
    assert bad.status_code == 400 and "PolygonLabels" in bad.json()["detail"]
    body = {
        "tasks": [_task(insts)],
        "project": "3.1700000000",
        "label_config": CONFIG,
        "params": {"context": {}},
    }
    r = client.post("/predict", json=body)
    assert r.status_code == 200
    (pred,) = r.json()["results"]
    assert pred["model_version"] == backend.model_version and 0 < pred["score"] <= 1
    assert len(pred["result"]) == len(insts)
    for res, inst in zip(pred["result"], insts, strict=True):
        assert res["type"] == "polygonlabels" and res["from_name"] == "outline" and res["to_name"] == "img"
        assert res["value"]["polygonlabels"] == [inst.class_name]
        pts = np.asarray(res["value"]["points"]) / 100 * (inst.width, inst.height)
        assert mask_iou(rasterize([pts], inst.height, inst.width), inst.mask(), inst.ignore_mask()) > 0.75
    # interactive: the rectangle the user just drew (the context) rather than the task's boxes
    body["tasks"] = [_task(insts, with_boxes=False)]
    body["params"]["context"] = {"result": [_rect(insts[0], "bus")]}
    (one,) = client.post("/predict", json=body).json()["results"]
    assert (
        len(one["result"]) == 1
        and one["result"][0]["value"]["points"] == pred["result"][0]["value"]["points"]
    )
    body["tasks"] = [{"id": 8, "data": {"photo": "/data/upload/1/nowhere.jpg"}}]
    missing = client.post("/predict", json=body)
    assert missing.status_code == 400 and "nowhere.jpg" in missing.json()["detail"]


@pytest.mark.shared
@pytest.mark.extras
def test_label_studio_sdk_validates_the_backend_predictions(ls):
    from conftest import require_extra

    require_extra("label_studio_sdk", "label-studio")
    from label_studio_sdk.label_interface import LabelInterface

    client, _, insts = ls
    body = {"tasks": [_task(insts)], "project": "3.1", "label_config": CONFIG, "params": {"context": {}}}
    (pred,) = client.post("/predict", json=body).json()["results"]
    assert LabelInterface(CONFIG).validate_prediction(pred)


FIELD = """<View>
  <Image name="image" value="$image"/>
  <PolygonLabels name="label" toName="image"><Label value="crop"/><Label value="weed"/></PolygonLabels>
</View>"""


@pytest.mark.shared
def test_label_studio_backend_fits_on_submitted_polygons(datasets, tmp_path):
    """Annotations of three field images (a domain far from COCO) reach the back end by webhook; "Start
    training" learns from them through polyrnn.learning.learn (one image held out) and serves the result
    under a new model version, because it beats the shipped model on the held-out image."""
    from fastapi.testclient import TestClient

    from polyrnn.formats import load_dataset
    from polyrnn.integrations.label_studio import LabelStudioBackend, create_app
    from polyrnn.learning import ModelFolder

    folder = datasets / "cwfid-train"
    backend = LabelStudioBackend(work_dir=tmp_path / "work", images=folder, fit_epochs=1, fit_async=False)
    client = TestClient(create_app(backend), base_url="http://127.0.0.1:9090")
    before = backend.model_version
    by_image: dict = {}
    for inst in load_dataset(folder).instances:
        if inst.image_path.stem in ("002_image", "005_image", "006_image"):
            by_image.setdefault(inst.image_path.name, []).append(inst)
    for k, (name, insts) in enumerate(sorted(by_image.items())):
        result = [
            {
                "id": f"g{j}",
                "type": "polygonlabels",
                "from_name": "label",
                "to_name": "image",
                "value": {
                    "points": (i.largest_polygon() / (i.width, i.height) * 100).tolist(),
                    "polygonlabels": [i.class_name],
                },
            }
            for j, i in enumerate(insts)
        ]
        task = {"id": k + 1, "data": {"image": f"/data/local-files/?d={name}"}}
        event = {"action": "ANNOTATION_CREATED", "task": task, "annotation": {"id": 10 + k, "result": result}}
        assert client.post("/webhook", json=event).status_code == 201
    project = {"id": 3, "label_config": FIELD}
    assert client.post("/webhook", json={"action": "PROJECT_UPDATED", "project": project}).status_code == 200
    r = client.post("/webhook", json={"action": "START_TRAINING", "project": project})
    assert r.status_code == 201
    fit = r.json()["result"]["last_fit"]
    n = sum(len(v) for v in by_image.values())
    assert fit.get("instances") == n, fit
    after, old = fit["held_out"]["after"], fit["held_out"]["before"]
    assert after["score"] > old["score"]
    assert backend.model_version == fit["model_version"] != before
    assert ModelFolder.read(fit["model"]).info["learned_from"]["source"] == "label-studio"
    task = {"id": 1, "data": {"image": "/data/local-files/?d=002_image.jpg"}}
    x1, y1, x2, y2 = by_image["002_image.jpg"][0].box_xyxy
    w, h = by_image["002_image.jpg"][0].width, by_image["002_image.jpg"][0].height
    rect = {
        "type": "rectanglelabels",
        "value": {
            "x": 100 * x1 / w,
            "y": 100 * y1 / h,
            "width": 100 * (x2 - x1) / w,
            "height": 100 * (y2 - y1) / h,
            "rectanglelabels": ["crop"],
        },
    }
    body = {"tasks": [task], "label_config": FIELD, "params": {"context": {"result": [rect]}}}
    (pred,) = client.post("/predict", json=body).json()["results"]
    assert pred["model_version"] == fit["model_version"] and len(pred["result"]) == 1


def test_label_studio_command_checks_its_input(tmp_path, capsys):
    from polyrnn.cli import main

    assert main(["label-studio", "--images", str(tmp_path / "nope")]) == 2
    assert "not a folder" in capsys.readouterr().err
