"""The server never loses work and holds against hostile input: round trips, names, hosts, limits, errors."""

import json
import os
import struct
import zlib

import numpy as np
import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402
from test_server import make_images, tiny_predictor  # noqa: E402

from polyrnn.server.app import create_app  # noqa: E402
from polyrnn.server.store import AnnotationStore  # noqa: E402

LOCAL = "http://127.0.0.1:8000"
SQUARE = [[20.0, 20.0], [80.0, 20.0], [80.0, 80.0], [20.0, 80.0]]


def every_shape_file() -> dict:
    """A LabelMe file as labelme writes it: every shape type, parts of one object, flags, unknown keys."""
    long_poly = [[10 + 50 * np.cos(t), 60 + 40 * np.sin(t)] for t in np.linspace(0, 6.28, 6000)]
    return {
        "version": "5.2.1",
        "flags": {"reviewed": True},
        "shapes": [
            {
                "label": "person",
                "points": SQUARE,
                "group_id": 7,
                "shape_type": "polygon",
                "flags": {"occluded": True},
                "description": "left part",
                "mask": None,
            },
            {
                "label": "person",
                "points": [[90, 20], [120, 20], [120, 60]],
                "group_id": 7,
                "shape_type": "polygon",
                "flags": {},
                "description": "right part",
            },
            {
                "label": "car",
                "points": [[5, 5], [40, 30]],
                "group_id": None,
                "shape_type": "rectangle",
                "flags": {},
            },
            {
                "label": "wheel",
                "points": [[50, 50], [55, 55]],
                "group_id": None,
                "shape_type": "circle",
                "flags": {},
            },
            {"label": "eye", "points": [[60, 60]], "group_id": None, "shape_type": "point", "flags": {}},
            {
                "label": "edge",
                "points": [[1, 1], [30, 40]],
                "group_id": None,
                "shape_type": "line",
                "flags": {},
            },
            {"label": "path", "points": [[1, 1], [30, 40], [50, 10]], "shape_type": "linestrip", "flags": {}},
            {
                "label": "blob",
                "points": [[10, 10], [20, 20]],
                "shape_type": "mask",
                "mask": "iVBORw0KGgo=",
                "flags": {},
            },
            {"label": "", "points": SQUARE, "shape_type": "polygon"},
            {"label": "x" * 3000, "points": SQUARE, "shape_type": "polygon", "custom": {"kept": [1, 2]}},
            {"label": "outline", "points": long_poly, "shape_type": "polygon"},
        ],
        "imagePath": "img0.png",
        "imageData": "aGVsbG8=",
        "imageHeight": 120,
        "imageWidth": 160,
        "extra_top_level": {"tool": "labelme"},
    }


@pytest.fixture
def served(tmp_path):
    store = AnnotationStore(make_images(tmp_path / "imgs"))
    return TestClient(create_app(store, tiny_predictor(), model_name="tiny"), base_url=LOCAL), store


def test_an_existing_labelme_file_round_trips_with_every_shape_and_field(served):
    c, store = served
    original = every_shape_file()
    (store.image_dir / "img0.json").write_text(json.dumps(original))
    r = c.get("/api/annotations/img0.png")
    assert r.status_code == 200 and r.json()["error"] is None
    shapes = r.json()["shapes"]
    assert len(shapes) == len(original["shapes"])
    assert shapes[9]["custom"] == {"kept": [1, 2]} and shapes[7]["mask"] == "iVBORw0KGgo="
    # the page adds a polygon and sends everything back
    new = {"label": "dog", "points": SQUARE, "group_id": None, "shape_type": "polygon", "flags": {}}
    assert c.put("/api/annotations/img0.png", json={"shapes": [*shapes, new]}).status_code == 200
    saved = json.loads((store.image_dir / "img0.json").read_text())
    assert saved["shapes"][: len(original["shapes"])] == json.loads(json.dumps(original["shapes"]))
    assert saved["shapes"][-1]["label"] == "dog"
    for key in ("flags", "imageData", "extra_top_level", "version", "imagePath"):
        assert saved[key] == original[key], key
    # the two parts of the person are still one object (same group_id) for the readers and exports
    from polyrnn.formats.labelme import read_labelme

    people = [i for i in read_labelme(store.image_dir).instances if i.class_name == "person"]
    assert len(people) == 1 and len(people[0].polygons) == 2


def test_an_unparseable_file_is_reported_and_never_overwritten_unasked(served):
    c, store = served
    path = store.image_dir / "img0.json"
    path.write_text("{this is not json")
    r = c.get("/api/annotations/img0.png")
    assert r.status_code == 200 and r.json()["shapes"] == [] and "cannot be read" in r.json()["error"]
    body = {"shapes": [{"label": "a", "points": SQUARE}]}
    r = c.put("/api/annotations/img0.png", json=body)
    assert r.status_code == 409 and "img0.json" in r.json()["detail"]
    assert path.read_text() == "{this is not json"
    assert c.put("/api/annotations/img0.png", json={**body, "replace_unreadable": True}).status_code == 200
    kept = [p for p in store.image_dir.iterdir() if p.name.startswith("img0.json.unreadable-")]
    assert len(kept) == 1 and kept[0].read_text() == "{this is not json"
    assert json.loads(path.read_text())["shapes"][0]["label"] == "a"


def test_labels_are_seeded_from_the_folder_and_kept_apart_from_images(tmp_path):
    folder = make_images(tmp_path / "imgs", 1)
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(folder / "labels.jpg")
    (folder / "img0.json").write_text(json.dumps(every_shape_file()))
    store = AnnotationStore(folder)
    assert store.labels()[:3] == ["person", "car", "wheel"]
    store.set_labels(["cat"])
    assert (folder / ".polyrnn" / "labels.json").is_file() and not (folder / "labels.json").exists()
    store.save("labels.jpg", [{"label": "cat", "points": SQUARE}], (20, 20))
    assert store.labels() == ["cat"] and store.load("labels.jpg")["shapes"][0]["label"] == "cat"
    assert "labels.jpg" in store.names and not any(n.startswith(".polyrnn") for n in store.names)


def test_images_sharing_a_stem_get_their_own_files(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for ext in ("jpg", "png"):
        Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(folder / f"pair.{ext}")
    # labelme's own name, for the jpg: still read for it, never for the png
    (folder / "pair.json").write_text(
        json.dumps({"shapes": [{"label": "old", "points": SQUARE}], "imagePath": "pair.jpg"})
    )
    store = AnnotationStore(folder)
    assert store.json_path("pair.jpg") != store.json_path("pair.png")
    assert store.load("pair.jpg")["shapes"][0]["label"] == "old" and store.load("pair.png")["shapes"] == []
    store.save("pair.png", [{"label": "png", "points": SQUARE}], (30, 20))
    assert store.load("pair.jpg")["shapes"][0]["label"] == "old"
    assert store.load("pair.png")["shapes"][0]["label"] == "png"


def test_exports_are_not_listed_links_out_are_skipped_and_temporaries_cleaned(tmp_path):
    folder = make_images(tmp_path / "imgs", 2)
    outside = make_images(tmp_path / "elsewhere", 1)
    os.symlink(outside / "img0.png", folder / "escape.png")
    (folder / ".img0.json.abc123.tmp").write_text("half a save")
    store = AnnotationStore(folder)
    assert store.names == ["img0.png", "img1.png"] and "escape.png" in store.warnings[0]
    assert store.cleaned == 1 and not (folder / ".img0.json.abc123.tmp").exists()
    c = TestClient(create_app(store, tiny_predictor()), base_url=LOCAL)
    assert c.get("/api/images").status_code == 200
    c.put("/api/annotations/img0.png", json={"shapes": [{"label": "a", "points": SQUARE}]})
    assert c.post("/api/export/labelme").status_code == 200
    assert AnnotationStore(folder).names == ["img0.png", "img1.png"]  # the exported copies are not images


def test_only_this_machines_pages_can_talk_to_it(tmp_path):
    store = AnnotationStore(make_images(tmp_path / "imgs", 1))
    app = create_app(store, tiny_predictor())
    c = TestClient(app, base_url=LOCAL)
    assert c.get("/api/images").status_code == 200
    assert TestClient(app, base_url="http://localhost:8000").get("/api/images").status_code == 200
    assert (
        TestClient(app, base_url="http://evil.example:8000").get("/api/images").status_code == 400
    )  # rebinding
    body = {"labels": ["x"]}
    assert c.put("/api/labels", json=body, headers={"Origin": "http://evil.example"}).status_code == 403
    assert c.put("/api/labels", json=body, headers={"Referer": "http://evil.example/page"}).status_code == 403
    assert c.post("/api/export/yolo", headers={"Origin": "null"}).status_code == 403
    assert c.put("/api/labels", json=body, headers={"Origin": LOCAL}).status_code == 200
    # off loopback: a token on every request; the address with ?token= sets a cookie for the page
    lan = create_app(store, tiny_predictor(), host="0.0.0.0", token="s3cret")
    c = TestClient(lan, base_url="http://192.168.1.20:8000")
    assert c.get("/api/images").status_code == 403
    assert c.get("/api/images", headers={"X-Polyrnn-Token": "wrong"}).status_code == 403
    assert c.get("/api/images", headers={"X-Polyrnn-Token": "s3cret"}).status_code == 200
    r = c.get("/?token=s3cret")
    assert r.status_code == 200 and "polyrnn_token=s3cret" in r.headers["set-cookie"]
    assert c.get("/api/images").status_code == 200  # the cookie


def test_hostile_numbers_boxes_and_bodies_get_a_4xx(served):
    c, store = served
    for raw in (b"NaN", b"Infinity", b"-Infinity", b"1e309"):
        body = b'{"image": "img0.png", "box": [1, 2, ' + raw + b", 50]}"
        r = c.post("/api/predict", content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 422, raw
        assert "finite" in r.text and "NaN" not in r.text and "Infinity" not in r.text
        json.loads(r.text)
    # huge boxes are clipped to the image; a box with nothing inside it is refused
    for box in ([-40000, -40000, 40000, 40000], [0, 0, 1e9, 1e9]):
        r = c.post("/api/predict", json={"image": "img0.png", "box": box})
        assert r.status_code == 200 and np.array(r.json()["polygon"]).max() <= 160 * 1.2, box
    assert c.post("/api/predict", json={"image": "img0.png", "box": [200, 200, 900, 900]}).status_code == 422
    too_many = {"shapes": [{"label": "a", "points": [[1, 1]] * 100_001}]}
    assert c.put("/api/annotations/img0.png", json=too_many).status_code in (413, 422)
    small = TestClient(create_app(store, tiny_predictor(), max_body=10_000), base_url=LOCAL)
    big = {"shapes": [{"label": "a", "points": [[1.5, 2.5]] * 5000}]}
    r = small.put("/api/annotations/img0.png", json=big)
    assert r.status_code == 413 and "body" in r.json()["detail"]
    chunks = (b" " * 4096 for _ in range(10))  # no Content-Length: counted as it arrives
    r = small.put("/api/annotations/img0.png", content=chunks, headers={"Content-Type": "application/json"})
    assert r.status_code == 413


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG claiming ``width`` x ``height`` pixels (a decompression bomb needs no more than its header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def test_a_pixel_bomb_and_a_full_disk_get_a_message_not_a_500(served, monkeypatch):
    c, store = served
    (store.image_dir / "bomb.png").write_bytes(_png_header_only(30000, 30000))
    store.refresh()
    r = c.post("/api/predict", json={"image": "bomb.png", "box": [1, 1, 20, 20]})
    assert r.status_code == 413 and "pixels" in r.json()["detail"]
    assert c.put("/api/annotations/bomb.png", json={"shapes": []}).status_code == 422

    import polyrnn.io

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(polyrnn.io.tempfile, "mkstemp", full)
    r = c.put("/api/annotations/img0.png", json={"shapes": [{"label": "a", "points": SQUARE}]})
    assert r.status_code == 507 and "No space left" in r.json()["detail"]
    assert c.put("/api/labels", json={"labels": ["a"]}).status_code == 507


def test_exports_are_downloadable_and_ready_for_a_trainer(served):
    from pycocotools.coco import COCO

    c, store = served
    outside = [[-10.0, -5.0], [200.0, -5.0], [200.0, 300.0], [-10.0, 300.0]]  # beyond the 160x120 image
    c.put("/api/annotations/img1.png", json={"shapes": [{"label": "big", "points": outside}]})
    r = c.post("/api/export/coco")
    assert r.status_code == 200
    got = c.get(r.json()["download"])
    assert got.status_code == 200 and "attachment" in got.headers["content-disposition"]
    doc = got.json()
    assert doc["images"][0]["file_name"] == "img1.png"
    seg = np.array(doc["annotations"][0]["segmentation"][0]).reshape(-1, 2)
    assert seg.min() >= 0 and seg[:, 0].max() <= 160 and seg[:, 1].max() <= 120
    path = store.state_dir / "export" / "coco" / "annotations" / "instances_default.json"
    assert len(COCO(str(path)).dataset["annotations"]) == 1
    r = c.post("/api/export/yolo")
    z = c.get(r.json()["download"])
    assert z.status_code == 200 and z.content[:2] == b"PK"
    assert c.get("/api/export/labelme/download").status_code == 404  # not exported yet


def test_the_published_schema_matches_the_answers(served):
    c, _ = served
    spec = c.get("/openapi.json").json()
    correct = spec["paths"]["/api/sessions/{sid}"]["post"]["responses"]
    assert {"200", "404", "413", "422"} <= set(correct)
    put = spec["paths"]["/api/annotations/{name}"]["put"]["responses"]
    assert {"409", "507"} <= set(put)
    assert spec["components"]["schemas"]["ErrorResponse"]["properties"]["detail"]["type"] == "string"
    r = c.post("/api/predict", json={"image": "nope.png", "box": [1, 1, 5, 5]})
    assert r.status_code == 404 and isinstance(r.json()["detail"], str)
    assert c.get("/docs").status_code == 404  # the docs page would load from a CDN: off
