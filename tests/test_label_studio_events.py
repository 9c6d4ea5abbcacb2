"""What Label Studio sends the back end, as its 1.x versions send it: bulk and plural webhook events, its own
webhook without credentials, tasks without a box, rotated and plain smart rectangles (no model is loaded)."""

from __future__ import annotations

import base64
import json

import pytest
from helpers import write_image

from polyrnn.data.instance import Skip
from polyrnn.formats.labelstudio import ls_box

pytest.importorskip("fastapi")

CONFIG = """<View>
  <Image name="image" value="$image"/>
  <RectangleLabels name="box" toName="image" smart="true"><Label value="plant"/></RectangleLabels>
  <PolygonLabels name="label" toName="image"><Label value="plant"/></PolygonLabels>
</View>"""
POLYGON = {
    "type": "polygonlabels",
    "from_name": "label",
    "to_name": "image",
    "value": {"points": [[10, 10], [60, 12], [40, 70]], "polygonlabels": ["plant"]},
}


def _client(tmp_path, basic=None, **kw):  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    from polyrnn.integrations.label_studio import LabelStudioBackend, create_app

    backend = LabelStudioBackend(work_dir=tmp_path / "work", images=tmp_path, fit_async=True, **kw)
    return TestClient(create_app(backend, basic_auth=basic), base_url="http://127.0.0.1:9090"), backend


def _kept(backend) -> set[str]:  # type: ignore[no-untyped-def]
    return set(json.loads((backend.work_dir / "annotations.json").read_text()))


def _task(n: int) -> dict:
    return {"id": 100 + n, "data": {"image": f"/data/upload/1/abcd1234-{n}.jpg"}}


def test_bulk_created_plural_deleted_and_cancelled_annotations(tmp_path):
    client, backend = _client(tmp_path)
    anns = [{"id": k, "task": 100 + k, "result": [POLYGON]} for k in (1, 2, 3)]
    r = client.post(
        "/webhook",
        json={"action": "ANNOTATIONS_CREATED", "annotation": anns, "task": [_task(k) for k in (1, 2, 3)]},
    )
    assert r.status_code == 201 and r.json()["result"]["annotations"] == 3
    assert _kept(backend) == {"1", "2", "3"}
    r = client.post("/webhook", json={"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 1}, {"id": 3}]})
    assert r.status_code == 201 and _kept(backend) == {"2"}
    skipped = {"id": 2, "task": 102, "result": [POLYGON], "was_cancelled": True}
    r = client.post(
        "/webhook", json={"action": "ANNOTATION_UPDATED", "annotation": skipped, "task": _task(2)}
    )
    assert r.status_code == 201 and _kept(backend) == set()
    bad = client.post("/webhook", json={"action": "ANNOTATIONS_DELETED", "annotations": {"id": 1}})
    assert bad.status_code == 422


def test_a_webhook_without_credentials_is_only_a_notice(tmp_path):
    """With a login required, Label Studio's own webhook (no credentials) is not taken as it is: without a
    way to check it with Label Studio it is refused with the reason; START_TRAINING always needs the login."""
    client, backend = _client(tmp_path, basic=("u", "p"))
    event = {"action": "ANNOTATION_CREATED", "annotation": {"id": 5, "result": [POLYGON]}, "task": _task(5)}
    r = client.post("/webhook", json=event)
    assert r.status_code == 401 and "LABEL_STUDIO_API_KEY" in r.json()["detail"]
    assert not (backend.work_dir / "annotations.json").exists()
    assert client.post("/webhook", json={"action": "START_TRAINING"}).status_code == 401
    assert client.post("/predict", json={"tasks": [], "label_config": CONFIG}).status_code == 401
    login = {"Authorization": "Basic " + base64.b64encode(b"u:p").decode()}
    assert client.post("/webhook", json=event, headers=login).status_code == 201
    assert _kept(backend) == {"5"}
    client2, _ = _client(tmp_path / "b", basic=("u", "p"), url="http://127.0.0.1:9", token="x" * 40)
    r = client2.post("/webhook", json=event)  # a Label Studio that cannot be reached: 4xx, the reason
    assert r.status_code == 424 and "could not be reached" in r.json()["detail"]


def test_a_task_without_a_box_gets_no_prediction(tmp_path):
    write_image(tmp_path / "0.jpg")
    client, _ = _client(tmp_path)
    keypoint = {
        "type": "keypointlabels",
        "from_name": "kp",
        "to_name": "image",
        "value": {"x": 5, "y": 5, "keypointlabels": ["plant"]},
    }
    task = {**_task(0), "annotations": [{"id": 1, "result": [keypoint]}]}
    r = client.post("/predict", json={"tasks": [task, _task(0)], "label_config": CONFIG})
    assert r.status_code == 200 and r.json()["results"] == [[], []]


def test_rotated_and_plain_smart_rectangles_are_boxes():
    skipped: list[Skip] = []
    plain = {"type": "rectangle", "value": {"x": 10, "y": 20, "width": 30, "height": 40}}
    box = ls_box(plain, "r", skipped)
    assert box is not None and box.box == pytest.approx((0.1, 0.2, 0.4, 0.6)) and box.class_name == ""
    turned = {
        "type": "rectanglelabels",
        "original_width": 200,
        "original_height": 100,
        "value": {"x": 50, "y": 10, "width": 10, "height": 20, "rotation": 90, "rectanglelabels": ["a"]},
    }
    # 20 x 20 px turned clockwise by 90 degrees about its top-left corner (100, 10): x 80..100, y 10..30
    box = ls_box(turned, "r", skipped)
    assert box is not None and box.box == pytest.approx((0.4, 0.1, 0.5, 0.3))
    del turned["original_width"]
    assert ls_box(turned, "r", skipped) is None and "original_width" in skipped[-1].reason
