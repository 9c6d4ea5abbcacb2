"""The server's API: schemas, bad inputs, path traversal, concurrency, atomic saves, and export."""

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from polyrnn.build import build_model  # noqa: E402
from polyrnn.cli import main  # noqa: E402
from polyrnn.data import instance as instance_module  # noqa: E402
from polyrnn.predictor import PolygonPredictor  # noqa: E402
from polyrnn.server.app import create_app  # noqa: E402
from polyrnn.server.store import AnnotationStore  # noqa: E402


def make_images(folder, n=2):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray((rng.random((120, 160, 3)) * 255).astype(np.uint8)).save(folder / f"img{i}.png")
    return folder


def tiny_predictor():
    torch.manual_seed(0)
    model = build_model("tiny")
    model.max_len = 12
    return PolygonPredictor(model, eos_threshold=2.0)  # never ends early: 12 vertices


@pytest.fixture
def client(tmp_path):
    store = AnnotationStore(make_images(tmp_path / "imgs"))
    return TestClient(
        create_app(store, tiny_predictor(), model_name="tiny"), base_url="http://127.0.0.1:8000"
    ), store


SQUARE = [[20, 20], [80, 20], [80, 80], [20, 80]]


def test_health_openapi_and_listing(client):
    c, _ = client
    health = c.get("/health").json()
    assert health["status"] == "ok" and health["precision"] == "float32"  # tiny networks, not folded
    paths = c.get("/openapi.json").json()["paths"]
    assert {"/api/predict", "/api/sessions", "/api/sessions/{sid}", "/api/annotations/{name}"} <= set(paths)
    assert "/api/correct" not in paths  # the page sends operations, never polygons to reconcile
    assert [i["name"] for i in c.get("/api/images").json()] == ["img0.png", "img1.png"]
    assert c.get("/api/images/img0.png/file").status_code == 200
    assert c.get("/").status_code == 200 and "polyrnn" in c.get("/").text


def test_predict_then_correct_re_predicts_after_the_vertex(client):
    c, _ = client
    r = c.post("/api/predict", json={"image": "img0.png", "box": [20, 10, 140, 110]})
    assert r.status_code == 200
    poly = r.json()["polygon"]
    assert len(poly) == 12 and r.json()["fixed"] == [False] * 12 and r.json()["source"] == "rnn"
    s = c.post("/api/sessions", json={"image": "img0.png", "box": [20, 10, 140, 110]}).json()
    assert np.allclose(s["polygon"], poly, atol=0.006) and s["version"] == 0  # /api/predict rounds
    op = {"version": 0, "op": "move", "vertex": s["ids"][3], "point": [100.0, 30.0]}
    r = c.post(f"/api/sessions/{s['session']}", json=op)
    out = r.json()
    assert r.status_code == 200 and out["fixed"][:4] == [False, False, False, True] and sum(out["fixed"]) == 1
    assert out["polygon"][:3] == s["polygon"][:3] and out["polygon"][3] == [100.0, 30.0]
    assert out["ids"][:4] == s["ids"][:4] and out["version"] == 1 and out["can_undo"]


def test_sessions_take_operations_by_vertex_id_and_refuse_stale_versions(client):
    c, _ = client
    s = c.post("/api/sessions", json={"image": "img0.png", "box": [20, 10, 140, 110]}).json()
    url = f"/api/sessions/{s['session']}"
    first = c.post(
        url, json={"version": 0, "op": "move", "vertex": s["ids"][2], "point": [60.0, 20.0]}
    ).json()
    stale = c.post(url, json={"version": 0, "op": "delete", "vertex": s["ids"][5]})
    assert stale.status_code == 409  # another tab moved on: nothing applied
    gone = first["ids"][5]
    d = c.post(url, json={"version": 1, "op": "delete", "vertex": gone}).json()
    assert gone not in d["ids"] and len(d["ids"]) == len(first["ids"]) - 1
    assert c.post(url, json={"version": 2, "op": "delete", "vertex": gone}).status_code == 422
    u = c.post(url, json={"version": 2, "op": "undo"}).json()
    assert u["polygon"] == first["polygon"] and u["ids"] == first["ids"] and u["can_redo"]
    r = c.post(url, json={"version": 3, "op": "redo"}).json()
    assert r["polygon"] == d["polygon"]
    alt = c.post(url, json={"version": 4, "op": "alt-move", "vertex": r["ids"][0], "point": [22.0, 12.0]})
    assert alt.json()["polygon"][1:] == r["polygon"][1:]  # no re-prediction
    ins = c.post(
        url, json={"version": 5, "op": "insert", "vertex": r["ids"][0], "point": [30.0, 12.0]}
    ).json()
    assert [30.0, 12.0] in ins["polygon"] and len(set(ins["ids"])) == len(ins["ids"])
    for bad in (
        {"version": 6, "op": "move", "vertex": 10**6, "point": [1, 1]},
        {"version": 6, "op": "move", "vertex": ins["ids"][0]},
        {"version": 6, "op": "move", "vertex": ins["ids"][0], "point": [1e9, 1]},
        {"version": 6, "op": "fly"},
    ):
        assert c.post(url, json=bad).status_code == 422
    acc = c.post(url, json={"version": 6, "op": "accept"})
    assert acc.status_code == 200 and acc.json()["polygon"] == ins["polygon"]
    assert c.post(url, json={"version": 6, "op": "undo"}).status_code == 404  # the session ended
    assert c.post("/api/sessions/nope", json={"version": 0, "op": "undo"}).status_code == 404
    edit = c.post(
        "/api/sessions",
        json={"image": "img1.png", "box": [10, 10, 50, 50], "polygon": [[10, 10], [50, 10], [30, 50]]},
    )
    assert edit.json()["polygon"] == [[10.0, 10.0], [50.0, 10.0], [30.0, 50.0]] and not any(
        edit.json()["fixed"]
    )


@pytest.mark.parametrize(
    "body, status, words",
    [
        ({"image": "img0.png", "box": [50, 50, 10, 10]}, 422, "x2 > x1"),
        ({"image": "img0.png", "box": [1, 2, 3]}, 422, "box"),
        ({"image": "nope.png", "box": [1, 2, 30, 30]}, 404, "unknown image"),
        ({"image": "../imgs/img0.png", "box": [1, 2, 30, 30]}, 404, "unknown image"),
        ({"image": "img0.png", "box": [500, 500, 600, 600]}, 422, "outside"),
    ],
)
def test_bad_predict_requests_get_a_4xx_with_a_message(client, body, status, words):
    c, _ = client
    r = c.post("/api/predict", json=body)
    assert r.status_code == status and words in json.dumps(r.json())


def test_malformed_json_traversal_corrupt_and_oversized_images(client, tmp_path, monkeypatch):
    c, store = client
    r = c.post("/api/predict", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 422
    assert c.get("/api/images/..%2F..%2Fetc%2Fpasswd/file").status_code == 404
    assert c.get("/api/images/../imgs/img0.png/file").status_code == 404
    (store.image_dir / "broken.png").write_bytes(b"not an image at all")
    store.refresh()
    r = c.post("/api/predict", json={"image": "broken.png", "box": [1, 1, 20, 20]})
    assert r.status_code == 422 and "cannot read image" in r.json()["detail"]
    monkeypatch.setattr(instance_module, "MAX_PIXELS", 100)
    r = c.post("/api/predict", json={"image": "img1.png", "box": [1, 1, 20, 20]})
    assert r.status_code == 413 and "pixels" in r.json()["detail"]
    bad = {"shapes": [{"label": "a", "points": [[0, 0, 5], [1, 1]]}]}
    assert c.put("/api/annotations/img0.png", json=bad).status_code == 422
    assert c.put("/api/labels", json={"labels": ["a", "a"]}).status_code == 422


def test_twenty_concurrent_predictions(client):
    c, _ = client

    def one(i):
        img = f"img{i % 2}.png"
        return c.post("/api/predict", json={"image": img, "box": [10 + i, 10, 120, 100]})

    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(one, range(20)))
    assert [r.status_code for r in results] == [200] * 20
    assert all(len(r.json()["polygon"]) == 12 for r in results)


def test_annotations_round_trip_as_labelme_and_atomic_save(client, monkeypatch):
    c, store = client
    assert c.get("/api/annotations/img0.png").json() == {"shapes": [], "error": None, "version": ""}
    shapes = {"shapes": [{"label": "cat", "points": SQUARE}]}
    assert c.put("/api/annotations/img0.png", json=shapes).status_code == 200
    doc = json.loads((store.image_dir / "img0.json").read_text())
    assert doc["imagePath"] == "img0.png" and doc["imageWidth"] == 160 and doc["shapes"][0]["label"] == "cat"
    assert c.get("/api/annotations/img0.png").json()["shapes"][0]["points"] == SQUARE
    assert [i["annotated"] for i in c.get("/api/images").json()] == [1, 0]

    import polyrnn.io

    def crash(*a, **k):
        raise OSError("disk died mid-save")

    monkeypatch.setattr(polyrnn.io.os, "replace", crash)
    with pytest.raises(OSError):
        store.save("img0.png", [{"label": "dog", "points": SQUARE}], (160, 120))
    assert json.loads((store.image_dir / "img0.json").read_text())["shapes"][0]["label"] == "cat"
    assert not [p for p in store.image_dir.iterdir() if p.name.endswith(".tmp")]


def test_export_from_api_and_cli(client, tmp_path):
    from pycocotools.coco import COCO

    c, store = client
    assert c.put("/api/labels", json={"labels": ["cat", "dog"]}).json()["labels"] == ["cat", "dog"]
    c.put("/api/annotations/img0.png", json={"shapes": [{"label": "dog", "points": SQUARE}]})
    c.put(
        "/api/annotations/img1.png",
        json={
            "shapes": [
                {"label": "cat", "points": SQUARE},
                {"label": "cat", "points": [[1, 1], [9, 1], [5, 9]]},
            ]
        },
    )
    r = c.post("/api/export/coco")
    assert r.status_code == 200 and r.json()["instances"] == 3
    coco = COCO(str(store.state_dir / "export" / "coco" / "annotations" / "instances_default.json"))
    assert [coco.cats[i]["name"] for i in sorted(coco.cats)] == ["cat", "dog"]
    ann = [a for a in coco.dataset["annotations"] if coco.cats[a["category_id"]]["name"] == "dog"][0]
    assert coco.annToMask(ann).sum() == pytest.approx(60 * 60, rel=0.05)
    assert c.post("/api/export/pdf").status_code == 404
    # again: the export folder itself is never read back as annotations
    assert c.post("/api/export/labelme").json()["instances"] == 3
    assert c.post("/api/export/coco").json()["instances"] == 3

    out = tmp_path / "yolo"
    assert main(["export", str(store.image_dir), "--to", "yolo", str(out)]) == 0
    lines = (out / "labels" / "img1.txt").read_text().split("\n")
    assert lines[0].startswith("0 ") and len(lines[0].split()) == 9
    assert "dog" in (out / "data.yaml").read_text() and (out / "images" / "img1.png").is_file()
    from polyrnn.formats import load_dataset

    assert len(load_dataset(out, "yolo").instances) == 3
    assert main(["export", str(store.image_dir), "--to", "labelme", str(tmp_path / "lm")]) == 0
    assert len(load_dataset(tmp_path / "lm", "labelme").instances) == 3
    # Label Studio and CVAT: human polygons (no score) become annotations; the boxes read back
    from polyrnn.formats import read_boxes

    assert main(["export", str(store.image_dir), "--to", "labelstudio", str(tmp_path / "ls")]) == 0
    tasks = json.loads((tmp_path / "ls" / "tasks.json").read_text())
    results = [r for t in tasks for r in t["annotations"][0]["result"]]
    assert len(results) == 3 and {r["value"]["polygonlabels"][0] for r in results} == {"cat", "dog"}
    assert "<PolygonLabels" in (tmp_path / "ls" / "config.xml").read_text()
    assert main(["export", str(store.image_dir), "--to", "cvat", str(tmp_path / "cv")]) == 0
    xml = (tmp_path / "cv" / "annotations.xml").read_text()
    assert xml.count("<polygon ") == 3 and 'source="manual"' in xml
    assert c.post("/api/export/cvat").json()["instances"] == 3
    r = c.get("/api/export/cvat/download")
    assert r.status_code == 200 and r.content[:2] == b"PK"
    assert read_boxes(tmp_path / "cv" / "annotations.xml", image_dir=store.image_dir).images


def test_store_refuses_unknown_names_and_demo_images(tmp_path):
    from polyrnn.server.store import StoreError

    store = AnnotationStore(make_images(tmp_path / "i", 1), tmp_path / "out")
    with pytest.raises(StoreError):
        store.image_path("../i/img0.png")
    store.save("img0.png", [{"label": "a", "points": SQUARE}], (160, 120))
    doc = json.loads((tmp_path / "out" / "img0.json").read_text())
    assert (tmp_path / "out" / doc["imagePath"]).resolve() == (tmp_path / "i" / "img0.png").resolve()
    pytest.importorskip("skimage")
    from polyrnn.server.demo import demo_folder

    demo = demo_folder(tmp_path / ".cache" / "demo")  # like ~/.cache/polyrnn/demo: a hidden parent is fine
    assert len(AnnotationStore(demo).names) >= 3


def test_server_lock_serialises_image_switches(client):
    """Predictions on alternating images from many threads each see their own image."""
    c, store = client
    seen = []
    lock = threading.Lock()

    def one(i):
        r = c.post("/api/predict", json={"image": f"img{i % 2}.png", "box": [20, 10, 140, 110]})
        with lock:
            seen.append((i % 2, tuple(map(tuple, r.json()["polygon"]))))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    by_image = {}
    for img, poly in seen:
        by_image.setdefault(img, set()).add(poly)
    assert all(len(polys) == 1 for polys in by_image.values())  # same image + box -> same polygon


def test_the_export_menu_comes_from_the_table_of_formats(client):
    from polyrnn.formats import EXPORTS, FORMATS

    c, _ = client
    got = c.get("/api/exports").json()
    assert [f["name"] for f in got] == list(EXPORTS) and got[0]["title"] == FORMATS[EXPORTS[0]].title


def test_include_and_exclude_clicks_are_session_operations(client):
    """A Shift+click in the page is an operation of the session: undoable, bounded, 4xx when malformed."""
    c, _ = client
    s = c.post("/api/sessions", json={"image": "img0.png", "box": [20, 10, 140, 110]}).json()
    url = f"/api/sessions/{s['session']}"
    r = c.post(url, json={"version": 0, "op": "include", "point": [80.0, 60.0]})
    assert r.status_code == 200 and r.json()["version"] == 1 and r.json()["can_undo"]
    assert r.json()["polygon"] == s["polygon"]  # the point is inside already: nothing moves
    for bad in (
        {"version": 1, "op": "exclude"},
        {"version": 1, "op": "exclude", "point": [1e9, 5]},
        {"version": 1, "op": "include", "point": [1e300, -1e300]},
        {"version": 1, "op": "include", "point": ["a", 5]},
        {"version": 1, "op": "include", "point": [float("nan"), 5]},
    ):
        assert (
            c.post(url, content=json.dumps(bad), headers={"Content-Type": "application/json"}).status_code
            == 422
        )
    u = c.post(url, json={"version": 1, "op": "undo"}).json()
    assert u["polygon"] == s["polygon"] and not u["can_undo"]


def test_the_detail_of_a_session_is_bounded_and_the_health_says_the_default(client):
    from polyrnn.config import INFERENCE

    c, _ = client
    assert c.get("/health").json()["tolerance"] == INFERENCE.tolerance
    for bad in (0.0, 0.1, 11.0, "x"):
        r = c.post("/api/sessions", json={"image": "img0.png", "box": [20, 10, 140, 110], "tolerance": bad})
        assert r.status_code == 422
    ok = c.post("/api/sessions", json={"image": "img0.png", "box": [20, 10, 140, 110], "tolerance": 1.0})
    assert ok.status_code == 200
