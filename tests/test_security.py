"""Nothing a request or a file can do crashes the tool, reads a file outside its folder or loses work:
coordinates far outside the image, pixel bombs, numbers on the command line, exports and box files that
point outside the folder, colliding output names."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
from helpers import write_image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402
from test_server import make_images, tiny_predictor  # noqa: E402
from test_server_hardening import _png_header_only  # noqa: E402

from polyrnn.cli import main  # noqa: E402
from polyrnn.server.app import create_app  # noqa: E402
from polyrnn.server.store import AnnotationStore  # noqa: E402

LOCAL = "http://127.0.0.1:8000"
SQUARE = [[20.0, 20.0], [80.0, 20.0], [80.0, 80.0], [20.0, 80.0]]


@pytest.fixture
def served(tmp_path):
    store = AnnotationStore(make_images(tmp_path / "imgs"))
    return TestClient(create_app(store, tiny_predictor()), base_url=LOCAL), store


# --- coordinates -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "change",
    [
        {"polygon": [[1e300, 1], [2, 1e300], [3, 3]]},
        {"polygon": [[1e9, 1], [2, 1e9], [3, 3]]},
        {"polygon": [[1e7, 1], [2, 1e7], [3, 3]]},
        {"point": [1e300, -1e300]},
        {"point": [-500, 40]},
    ],
)
def test_correct_refuses_coordinates_far_outside_the_image(served, change):
    c, _ = served
    if "polygon" in change:  # a shape to edit, sent to open its session
        r = c.post("/api/sessions", json={"image": "img0.png", "box": [10, 10, 90, 90], **change})
    else:  # a drag
        s = c.post(
            "/api/sessions", json={"image": "img0.png", "box": [10, 10, 90, 90], "polygon": SQUARE}
        ).json()
        op = {"version": s["version"], "op": "move", "vertex": s["ids"][0], **change}
        r = c.post(f"/api/sessions/{s['session']}", json=op)
    assert r.status_code == 422, r.text
    assert "within the 160x120 image" in r.json()["detail"]


def test_a_vertex_just_outside_the_image_is_still_a_correction(served):
    c, _ = served
    s = c.post("/api/sessions", json={"image": "img0.png", "box": [10, 10, 90, 90], "polygon": SQUARE}).json()
    op = {"version": s["version"], "op": "move", "vertex": s["ids"][0], "point": [-5, 30]}
    r = c.post(f"/api/sessions/{s['session']}", json=op)
    assert r.status_code == 200 and [-5.0, 30.0] in r.json()["polygon"]


def test_the_python_api_bounds_boxes_and_points(tmp_path):
    pred = tiny_predictor()
    pred.set_image(np.zeros((48, 64, 3), np.uint8))
    p = pred.predict((0, 0, 1e9, 1e9))  # clipped to the image, not a 1e9-pixel crop
    assert p.box == (0.0, 0.0, 64.0, 48.0)
    with pytest.raises(ValueError, match="within the 64x48 image"):
        pred.correct(0, (1e300, 1.0))
    with pytest.raises(ValueError, match="within the 64x48 image"):
        pred.insert(0, (5.0, 5.0), vertices=np.array([[1e9, 1], [2, 3], [4, 5]]))


# --- the command line ------------------------------------------------------------------------------------
def _one_line_exit_2(args: list[str], capsys) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err and "\n" not in err and "Traceback" not in err, err
    return err


def test_commands_end_in_one_line_not_a_traceback(tmp_path, capsys, datasets):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_header_only(30000, 30000))
    assert "pixels" in _one_line_exit_2(["predict", str(bomb), "--box", "1,1,9,9"], capsys)
    img = write_image(tmp_path / "a.png")
    err = _one_line_exit_2(["predict", str(img), "--box", "0,0,1e9,1e9"], capsys)
    assert "within the 64x48 image" in err
    val = str(datasets / "coco128-seg")
    assert "--grid-sizes" in _one_line_exit_2(["data", "ceiling", val, "--grid-sizes", "0"], capsys)
    assert "--context" in _one_line_exit_2(["data", "ceiling", val, "--context", "nan"], capsys)
    assert "--port" in _one_line_exit_2(["serve", str(tmp_path), "--port", "99999"], capsys)


def test_an_unexpected_error_is_one_line_too(tmp_path, capsys, monkeypatch):
    import polyrnn.formats

    def boom(*args, **kw):
        raise KeyError("surprise")

    monkeypatch.setattr(polyrnn.formats, "export_folder", boom)
    monkeypatch.delenv("POLYRNN_DEBUG", raising=False)
    err = _one_line_exit_2(["export", str(tmp_path), "--to", "coco", str(tmp_path / "o")], capsys)
    assert "KeyError" in err and "POLYRNN_DEBUG" in err


# --- CVAT ------------------------------------------------------------------------------------------------
def test_cvat_handler_caps_pixels_and_bounds_clicks(tmp_path):
    from polyrnn.integrations.cvat import main as cvat

    context = types.SimpleNamespace(
        Response=lambda **kw: types.SimpleNamespace(**kw), user_data=types.SimpleNamespace(predictor=None)
    )

    def call(body):
        r = cvat.handler(context, types.SimpleNamespace(body=json.dumps(body).encode()))
        return r.status_code, json.loads(r.body)

    bomb = base64.b64encode(_png_header_only(20000, 10000)).decode()
    status, reply = call({"image": bomb, "obj_bbox": [1, 1, 50, 50]})
    assert status == 400 and "pixels" in reply["error"]
    ok = base64.b64encode(write_image(tmp_path / "a.png").read_bytes()).decode()
    status, reply = call({"image": ok, "obj_bbox": [1, 1, 50, 40], "pos_points": [[1e300, 5]]})
    assert status == 400 and "'pos_points' must lie within the 64x48 image" in reply["error"]
    r = cvat.handler(context, types.SimpleNamespace(body=b"\xff\xfe{"))
    assert r.status_code == 400


# --- exports never leave the folder ----------------------------------------------------------------------
def _hostile_folder(tmp_path: Path) -> Path:
    """An image folder with LabelMe files whose imagePath leads out: absolute, ../, and beside a link that
    leads out; plus one honest file."""
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = write_image(outside / "secret.png", seed=3)
    folder = tmp_path / "imgs"
    folder.mkdir()
    write_image(folder / "ok.png")
    (folder / "link.png").symlink_to(secret)
    poly = {"label": "thing", "points": SQUARE[:3], "shape_type": "polygon"}
    docs = {
        "ok.json": "ok.png",
        "abs.json": "/etc/passwd",
        "up.json": "../outside/secret.png",
        "link.json": "link.png",
    }
    for name, image_path in docs.items():
        doc = {"shapes": [poly], "imagePath": image_path, "imageHeight": 48, "imageWidth": 64}
        (folder / name).write_text(json.dumps(doc))
    return folder


def _exported_names(out: Path) -> set[str]:
    return {p.name for p in out.rglob("*") if p.is_file()}


@pytest.mark.parametrize("fmt", ["coco", "yolo", "labelme", "labelstudio", "cvat"])
def test_polyrnn_export_skips_images_outside_the_folder(tmp_path, capsys, fmt):
    folder = _hostile_folder(tmp_path)
    out = tmp_path / "out"
    assert main(["export", str(folder), "--to", fmt, str(out)]) == 0
    printed = capsys.readouterr()
    assert "exported 1 instances on 1 images" in printed.out
    assert printed.err.count("leads outside") == 3
    text = "".join(
        p.read_text(errors="replace") for p in out.rglob("*") if p.is_file() and p.suffix != ".png"
    )
    assert "passwd" not in text and "secret" not in text and "link.png" not in text
    assert not {"passwd", "secret.png", "link.png"} & _exported_names(out)


def test_the_pages_export_skips_them_too_and_says_so(tmp_path):
    folder = _hostile_folder(tmp_path)
    store = AnnotationStore(folder)
    c = TestClient(create_app(store, tiny_predictor()), base_url=LOCAL)
    for fmt in ("coco", "yolo", "labelme"):
        r = c.post(f"/api/export/{fmt}")
        assert r.status_code == 200 and r.json()["instances"] == 1
        assert sum("leads outside" in s for s in r.json()["skipped"]) == 3
        d = c.get(f"/api/export/{fmt}/download")
        if fmt == "coco":
            assert [i["file_name"] for i in d.json()["images"]] == ["ok.png"]
        else:
            names = zipfile.ZipFile(io.BytesIO(d.content)).namelist()
            assert not any("passwd" in n or "secret" in n or "link" in n for n in names), names


def test_a_superseded_labelme_file_is_not_exported_beside_the_new_one(tmp_path):
    """``p.png`` joins ``p.jpg``: the tool then saves ``p.jpg.json``; labelme's old ``p.json`` (also naming
    p.jpg) must not come back in the export."""
    folder = tmp_path / "imgs"
    write_image(folder / "p.jpg")
    old = {"shapes": [{"label": "deleted", "points": SQUARE[:3]}], "imagePath": "p.jpg"}
    (folder / "p.json").write_text(json.dumps(old))
    write_image(folder / "p.png", seed=1)
    store = AnnotationStore(folder)
    c = TestClient(create_app(store, tiny_predictor()), base_url=LOCAL)
    shapes = c.get("/api/annotations/p.jpg").json()["shapes"]
    assert [s["label"] for s in shapes] == ["deleted"]  # labelme's file is read for p.jpg ...
    kept = {"label": "kept", "points": [[1, 1], [30, 1], [30, 30]], "shape_type": "polygon"}
    c.put(
        "/api/annotations/p.jpg",
        json={"shapes": [kept], "version": c.get("/api/annotations/p.jpg").json()["version"]},
    )
    assert (folder / "p.jpg.json").is_file()  # ... and the save goes to the image's own file
    r = c.post("/api/export/coco").json()
    assert r["instances"] == 1 and any("superseded" in s for s in r["skipped"])
    coco = c.get("/api/export/coco/download").json()
    assert [c_["name"] for c_ in coco["categories"] if c_["id"] == coco["annotations"][0]["category_id"]] == [
        "kept"
    ]


# --- predict --dataset -----------------------------------------------------------------------------------
def _coco_with_outside_names(tmp_path: Path) -> tuple[Path, Path]:
    images = tmp_path / "images"
    write_image(images / "a.jpg")
    outside = write_image(tmp_path / "elsewhere" / "b.jpg", seed=2)
    names = ["a.jpg", str(outside), "../elsewhere/b.jpg"]
    coco = {
        "images": [{"id": i + 1, "file_name": n, "width": 64, "height": 48} for i, n in enumerate(names)],
        "annotations": [
            {"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [4, 6, 26, 34], "iscrowd": 0}
            for i in range(3)
        ],
        "categories": [{"id": 1, "name": "cat"}],
    }
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps(coco))
    return path, images


def test_predict_dataset_refuses_images_outside_the_image_folder(tmp_path):
    from polyrnn.batch.run import predict_dataset
    from polyrnn.formats import read_boxes

    path, images = _coco_with_outside_names(tmp_path)
    boxes = read_boxes(path, image_dir=images)
    assert [b.key for b in boxes.images] == ["a.jpg"]
    assert sum("outside" in s.reason for s in boxes.skipped) == 2
    assert len(read_boxes(path, image_dir=images, allow_outside=True).images) == 3
    out = tmp_path / "out"
    r = predict_dataset(path, out, image_dir=images, log=None)
    assert r["images"] == 1
    skipped = (out / "skipped.csv").read_text()
    assert skipped.count("lies outside") == 2 and "elsewhere/b.jpg" in skipped


def test_output_names_never_collide(tmp_path):
    from polyrnn.data.instance import Instance
    from polyrnn.formats.labelme import write_labelme
    from polyrnn.formats.yolo import write_yolo

    root = tmp_path / "imgs"
    files = [
        write_image(root / "sub" / "x.jpg", seed=1),
        write_image(root / "sub__x.jpg", seed=2),
        write_image(root / "y.jpg", seed=3),
        write_image(root / "y.png", seed=4),
    ]
    insts = [
        Instance(f, (64, 48), "a", (1, 1, 10 + k, 10), [np.array([[1, 1], [11 + k, 1], [11 + k, 11]], float)])
        for k, f in enumerate(files)
    ]
    write_yolo(insts, tmp_path / "yolo", root=root, classes=["a"])
    write_labelme(insts, tmp_path / "lm", root=root)
    labels = sorted((tmp_path / "yolo" / "labels").iterdir())
    assert len(labels) == 4 and len({p.stem.casefold() for p in labels}) == 4
    assert len(list((tmp_path / "yolo" / "images").iterdir())) == 4
    docs = [json.loads(p.read_text()) for p in (tmp_path / "lm").glob("*.json")]
    assert len(docs) == 4
    widths = sorted(d["shapes"][0]["points"][1][0] for d in docs)
    assert widths == [11, 12, 13, 14]  # every image's own object, none overwritten
    for d in docs:
        assert (tmp_path / "lm" / d["imagePath"]).is_file()


def test_export_keeps_symlinks_inside_the_folder(tmp_path):
    """A link inside the folder to another image inside it is fine (only links leading out are refused)."""
    folder = tmp_path / "imgs"
    real = write_image(folder / "real" / "a.png")
    os.symlink(real, folder / "alias.png")
    doc = {"shapes": [{"label": "t", "points": SQUARE[:3]}], "imagePath": "alias.png"}
    (folder / "alias.json").write_text(json.dumps(doc))
    out = tmp_path / "out"
    assert main(["export", str(folder), "--to", "coco", str(out)]) == 0
    assert len(json.loads((out / "annotations" / "instances_default.json").read_text())["annotations"]) == 1
    shutil.rmtree(out)


# --- never destroy an annotation -------------------------------------------------------------------------
ODD_SHAPES = [
    {"label": None, "points": SQUARE},
    {"label": 5, "points": SQUARE},
    {"label": "a", "points": SQUARE, "flags": {"x": "yes"}},
    {"label": "a", "points": SQUARE, "flags": [1]},
    {"label": "a", "points": SQUARE, "group_id": "abc"},
    {"label": "a", "points": SQUARE, "group_id": 1.5},
    {"label": "a", "points": [[1, 2, 3], [4, 5, 6], [7, 8, 9]]},
    {"label": "a", "points": [[1, 2], [3, float("nan")], [5, 6]]},
    {"label": "a", "points": [[1, 2], [3, float("inf")], [5, 6]]},
    {"label": "a", "points": [[float(i % 90), float(i % 70)] for i in range(100_001)]},
    {"label": "a", "points": SQUARE, "shape_type": None},
    {"label": "a", "points": SQUARE, "shape_type": 3},
    {"label": "a", "points": "1,2,3"},
    {"label": "a", "points": None},
    {"label": "a"},
    {"points": SQUARE},
    {"label": "a", "points": SQUARE, "description": 7},
    {"label": "a", "points": [["1", "2"], ["3", "4"], ["5", "6"]]},
    {"label": "a", "points": SQUARE, "extra": float("nan")},
    {"label": "\ud800", "points": SQUARE},
    {"label": "a", "points": SQUARE, "note": "\udcff"},
    {"label": "x" * 10_001, "points": SQUARE},
    "not a shape",
    17,
    None,
]


@pytest.mark.parametrize("odd", range(len(ODD_SHAPES)))
def test_odd_labelme_shapes_are_shown_read_only_and_written_back_unchanged(tmp_path, odd):
    folder = make_images(tmp_path / "imgs", 1)
    good = {"label": "good", "points": SQUARE, "shape_type": "polygon"}
    doc = {"version": "5.4.1", "shapes": [good, ODD_SHAPES[odd], dict(good, label="also")], "imageData": None}
    (folder / "img0.json").write_text(json.dumps(doc))
    original = json.loads((folder / "img0.json").read_text())
    c = TestClient(create_app(AnnotationStore(folder), tiny_predictor()), base_url=LOCAL)
    r = c.get("/api/annotations/img0.png")
    assert r.status_code == 200, r.text[:300]
    got = r.json()
    kept = got["shapes"][1]
    assert kept["shape_type"] == "kept" and kept["polyrnn_kept"] == 1 and kept["points"] == []
    assert c.get("/api/images").status_code == 200 and c.get("/api/labels").status_code == 200
    # the page edits the last shape and saves every shape it got, the stand-in included
    shapes = got["shapes"]
    shapes[2] = dict(shapes[2], points=[[1.0, 1.0], [50.0, 1.0], [50.0, 50.0]])
    r = c.put("/api/annotations/img0.png", json={"shapes": shapes, "version": got["version"]})
    assert r.status_code == 200, r.text[:300]
    saved = json.loads((folder / "img0.json").read_text())
    assert saved["shapes"][:2] == original["shapes"][:2] or (
        saved["shapes"][0] == original["shapes"][0]
        and repr(saved["shapes"][1]) == repr(original["shapes"][1])
    )
    assert saved["shapes"][2]["points"] == [[1.0, 1.0], [50.0, 1.0], [50.0, 50.0]]


def test_a_stand_in_is_refused_without_a_version_and_must_name_a_shape(served):
    c, store = served
    (store.image_dir / "img0.json").write_text(json.dumps({"shapes": [{"label": None, "points": SQUARE}]}))
    got = c.get("/api/annotations/img0.png").json()
    assert c.put("/api/annotations/img0.png", json={"shapes": got["shapes"]}).status_code == 422
    bad = dict(got["shapes"][0], polyrnn_kept=5)
    r = c.put("/api/annotations/img0.png", json={"shapes": [bad], "version": got["version"]})
    assert r.status_code == 422
    assert json.loads((store.image_dir / "img0.json").read_text())["shapes"][0]["label"] is None


def test_two_tabs_the_stale_save_gets_409_and_nothing_is_lost(served):
    c, store = served
    first = c.get("/api/annotations/img0.png").json()
    second = c.get("/api/annotations/img0.png").json()
    a = {"label": "from-tab-1", "points": SQUARE}
    r = c.put("/api/annotations/img0.png", json={"shapes": [a], "version": first["version"]})
    assert r.status_code == 200 and r.json()["version"] != first["version"]
    b = {"label": "from-tab-2", "points": SQUARE}
    r = c.put("/api/annotations/img0.png", json={"shapes": [b], "version": second["version"]})
    assert r.status_code == 409 and "changed" in r.json()["detail"]
    assert [s["label"] for s in json.loads((store.image_dir / "img0.json").read_text())["shapes"]] == [
        "from-tab-1"
    ]
    # the page's merge: theirs plus ours, saved with their version
    theirs = c.get("/api/annotations/img0.png").json()
    r = c.put(
        "/api/annotations/img0.png", json={"shapes": [*theirs["shapes"], b], "version": theirs["version"]}
    )
    assert (
        r.status_code == 200 and c.get("/api/annotations/img0.png").json()["version"] == r.json()["version"]
    )
    saved = json.loads((store.image_dir / "img0.json").read_text())["shapes"]
    assert [s["label"] for s in saved] == ["from-tab-1", "from-tab-2"]


def test_replacing_an_unreadable_file_keeps_a_copy(served):
    c, store = served
    (store.image_dir / "img0.json").write_text("{broken")
    got = c.get("/api/annotations/img0.png").json()
    assert got["error"] and got["version"]
    body = {
        "shapes": [{"label": "a", "points": SQUARE}],
        "version": got["version"],
        "replace_unreadable": True,
    }
    assert c.put("/api/annotations/img0.png", json=body).status_code == 200
    kept = list(store.image_dir.glob("img0.json.unreadable-*"))
    assert len(kept) == 1 and kept[0].read_text() == "{broken"


def test_odd_file_names_and_unencodable_labels(tmp_path):
    folder = make_images(tmp_path / "imgs", 1)
    latin1 = os.fsdecode(b"caf\xe9.png")
    write_image(folder / latin1)
    (folder / ".polyrnn").mkdir()
    (folder / ".polyrnn" / "labels.json").write_text('["ok", "\\ud800"]')  # stored by an older version
    store = AnnotationStore(folder)
    assert store.names == ["img0.png"] and any("not UTF-8" in w for w in store.warnings)
    c = TestClient(create_app(store, tiny_predictor()), base_url=LOCAL)
    assert c.get("/api/images").status_code == 200
    assert c.get("/api/labels").json() == {"labels": ["ok"]}
    body = b'{"labels": ["cat", "\\ud800"]}'
    r = c.put("/api/labels", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 422
    shape = b'{"shapes": [{"label": "\\udcff", "points": [[1,1],[5,1],[5,5]]}]}'
    r = c.put("/api/annotations/img0.png", content=shape, headers={"Content-Type": "application/json"})
    assert r.status_code == 422
    assert c.get("/api/labels").status_code == 200


# --- who may talk, and how slowly ------------------------------------------------------------------------
def test_odd_credentials_and_bodies_get_4xx(tmp_path):
    store = AnnotationStore(make_images(tmp_path / "imgs", 1))
    c = TestClient(create_app(store, tiny_predictor(), host="0.0.0.0", token="sekrit"), base_url=LOCAL)
    for value in ("токен", "\xff\xfe", "a" * 10_000):
        r = c.get("/api/images", headers={"X-Polyrnn-Token": value.encode("utf-8", "surrogateescape")})
        assert r.status_code == 403
        r = c.get(
            "/api/images", headers={"Cookie": b"polyrnn_token=" + value.encode("utf-8", "surrogateescape")}
        )
        assert r.status_code == 403
        assert c.get("/api/images", params={"token": value}).status_code == 403
    assert c.get("/api/images", headers={"X-Polyrnn-Token": "sekrit"}).status_code == 200
    r = c.put(
        "/api/labels",
        content=b'{"labels": ["a"]}',
        headers={"Content-Type": "text/plain", "X-Polyrnn-Token": "sekrit"},
    )
    assert r.status_code == 415


def test_slow_clients_are_cut_off(tmp_path, monkeypatch):
    import socket
    import time

    from polyrnn.server import http

    monkeypatch.setattr(http.DeadlineProtocol, "header_timeout", 1.0)
    store = AnnotationStore(make_images(tmp_path / "imgs", 1))
    app = create_app(store, tiny_predictor())
    app.body_timeout = 1.0
    with http.running(app) as url:
        port = int(url.rsplit(":", 1)[1])
        held = []
        for _ in range(15):  # headers that never finish
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            held.append(s)
        body = socket.create_connection(("127.0.0.1", port))  # a body that never finishes
        body.sendall(
            b"PUT /api/labels HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{"
        )
        t0 = time.monotonic()
        for s in held:
            s.settimeout(10)
            assert s.recv(100) == b""  # closed by the server
            s.close()
        assert time.monotonic() - t0 < 8
        body.settimeout(10)
        assert b"408" in body.recv(200).split(b"\r\n")[0]
        body.close()
        import urllib.request

        with urllib.request.urlopen(url + "/health", timeout=5) as r:
            assert r.status == 200
