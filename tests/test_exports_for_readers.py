"""Outputs that the readers users feed them to accept as they are: COCO ids that line up with the source
file and a results file for pycocotools, Label Studio tasks that keep their ids, a YOLO ``data.yaml`` as
ultralytics resolves it, names that do not follow links, and LabelMe polygons as boxes to trace again."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import write_image

from polyrnn.batch.run import predict_dataset
from polyrnn.data.instance import Instance
from polyrnn.formats import WriteOptions, read_boxes, write
from polyrnn.formats.coco import read_coco

SQUARE = np.array([[10.0, 8.0], [40.0, 8.0], [40.0, 36.0], [10.0, 36.0]])
TRIANGLE = np.array([[30.0, 5.0], [60.0, 5.0], [45.0, 30.0]])


def _source_coco(root: Path) -> Path:
    """Two images and three polygons with ids a renumbering would change: images 42 and 7, categories 18
    and 3 (and an unused 90), annotations 1001..1003."""
    write_image(root / "images" / "b.jpg", seed=1)
    write_image(root / "images" / "a.jpg", seed=2)
    anns = []
    for k, (img, cat, poly) in enumerate([(42, 18, SQUARE), (42, 3, TRIANGLE), (7, 18, TRIANGLE)]):
        x, y = poly.min(axis=0)
        w, h = poly.max(axis=0) - (x, y)
        anns.append(
            {
                "id": 1001 + k,
                "image_id": img,
                "category_id": cat,
                "segmentation": [poly.reshape(-1).tolist()],
                "area": float(w * h),
                "bbox": [float(x), float(y), float(w), float(h)],
                "iscrowd": 0,
            }
        )
    doc = {
        "images": [
            {"id": 42, "file_name": "b.jpg", "width": 64, "height": 48, "license": 3},
            {"id": 7, "file_name": "a.jpg", "width": 64, "height": 48},
        ],
        "annotations": anns,
        "categories": [
            {"id": 18, "name": "dog", "supercategory": "animal"},
            {"id": 3, "name": "car", "supercategory": "vehicle"},
            {"id": 90, "name": "toothbrush", "supercategory": "indoor"},
        ],
    }
    path = root / "instances.json"
    path.write_text(json.dumps(doc))
    return path


def _as_predictions(path: Path, images: Path) -> tuple[list[Instance], WriteOptions]:
    """The source's own polygons as predictions (score 1), with the origin ``predict --dataset`` keeps."""
    boxes = read_boxes(path, image_dir=images)
    insts = []
    for inst in read_coco(path, image_dir=images).instances:
        ann_id = int(inst.source.rsplit("id=", 1)[1])
        insts.append(
            Instance(
                inst.image_path,
                inst.image_size,
                inst.class_name,
                inst.box,
                inst.polygons,
                score=1.0,
                source_id=ann_id,
            )
        )
    opts = WriteOptions(
        root=images,
        classes=boxes.classes,
        decimals=6,
        origin_format=boxes.format,
        origin=boxes.origin,
        origins={i.path: i.origin for i in boxes.images if i.origin is not None},
    )
    return insts, opts


def test_coco_output_keeps_the_source_ids_and_cocoeval_takes_the_results(tmp_path):
    """Written against the source file, the output keeps its image, category and annotation ids, and the
    results file goes into ``COCO.loadRes`` + COCOeval directly: the source's own polygons score AP 1."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    src = _source_coco(tmp_path)
    insts, opts = _as_predictions(src, tmp_path / "images")
    write("coco", insts, tmp_path / "out", opts)
    out = json.loads((tmp_path / "out" / "annotations" / "instances_default.json").read_text())
    source = json.loads(src.read_text())
    assert {(i["id"], i["file_name"]) for i in out["images"]} == {(42, "b.jpg"), (7, "a.jpg")}
    assert next(i for i in out["images"] if i["id"] == 42)["license"] == 3  # the record is kept as it was
    assert out["categories"] == source["categories"]
    by_source = {a["source_id"]: a for a in out["annotations"]}
    for a in source["annotations"]:
        assert by_source[a["id"]]["image_id"] == a["image_id"]
        assert by_source[a["id"]]["category_id"] == a["category_id"]
    gt = COCO(str(src))
    dt = gt.loadRes(str(tmp_path / "out" / "results.json"))  # raises if the ids do not match the source
    ev = COCOeval(gt, dt, "segm")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0)
    shifted = json.loads((tmp_path / "out" / "results.json").read_text())
    for r in shifted:
        r["category_id"] = 3 if r["category_id"] == 18 else 18  # the wrong class: a real test of the ids
    ev = COCOeval(gt, gt.loadRes(shifted), "segm")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert ev.stats[0] < 0.5


def test_coco_output_without_a_coco_source_numbers_from_one(tmp_path):
    write_image(tmp_path / "x.jpg")
    inst = Instance(tmp_path / "x.jpg", (64, 48), "cat", (10, 8, 30, 28), [SQUARE], score=0.5)
    write(
        "coco", [inst], tmp_path / "out", WriteOptions(root=tmp_path, classes=["cat"], origin_format="yolo")
    )
    out = json.loads((tmp_path / "out" / "annotations" / "instances_default.json").read_text())
    assert out["images"][0]["id"] == 1 and out["categories"] == [
        {"id": 1, "name": "cat", "supercategory": ""}
    ]
    assert "source_id" not in out["annotations"][0]
    (res,) = json.loads((tmp_path / "out" / "results.json").read_text())
    assert res["image_id"] == 1 and res["score"] == 0.5 and isinstance(res["segmentation"]["counts"], str)


def test_predict_from_a_coco_file_points_each_polygon_at_its_source_box(tmp_path):
    """The whole command: boxes read from a COCO file come back under the same image and category ids, each
    prediction naming the annotation whose box it traced; pycocotools evaluates the results file as it is."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    src = _source_coco(tmp_path)
    predict_dataset(src, tmp_path / "run", image_dir=tmp_path / "images", log=None)
    out = json.loads((tmp_path / "run" / "coco" / "annotations" / "instances_default.json").read_text())
    assert sorted(a["source_id"] for a in out["annotations"]) == [1001, 1002, 1003]
    source = {a["id"]: a for a in json.loads(src.read_text())["annotations"]}
    for a in out["annotations"]:
        assert (a["image_id"], a["category_id"]) == (
            source[a["source_id"]]["image_id"],
            source[a["source_id"]]["category_id"],
        )
    gt = COCO(str(src))
    ev = COCOeval(gt, gt.loadRes(str(tmp_path / "run" / "coco" / "results.json")), "segm")
    ev.evaluate()
    ev.accumulate()
    assert ev.eval is not None and len(gt.loadRes(str(tmp_path / "run" / "coco" / "results.json")).anns) == 3


def test_label_studio_output_keeps_task_ids_and_data(tmp_path):
    """Boxes from a Label Studio export come back on tasks with the same ``id`` and ``data``, and as
    ``predictions.json`` (``{"task": id, ...}``) for Label Studio's import-predictions call."""
    write_image(tmp_path / "images" / "a.jpg")
    write_image(tmp_path / "b.jpg", seed=3)  # an upload: found by its name
    rect = {
        "id": "x1",
        "type": "rectanglelabels",
        "from_name": "label",
        "to_name": "image",
        "value": {"x": 10, "y": 10, "width": 50, "height": 60, "rotation": 0, "rectanglelabels": ["cat"]},
    }
    tasks = [
        {
            "id": 57,
            "data": {"image": "/data/local-files/?d=images/a.jpg", "note": "kept"},
            "annotations": [{"result": [rect]}],
        },
        {"id": 12, "data": {"image": "/data/upload/1/1a2b3c4d-b.jpg"}, "predictions": [{"result": [rect]}]},
    ]
    (tmp_path / "tasks.json").write_text(json.dumps(tasks))
    predict_dataset(tmp_path / "tasks.json", tmp_path / "run", image_dir=tmp_path, log=None)
    out = json.loads((tmp_path / "run" / "labelstudio" / "tasks.json").read_text())
    assert sorted((t["id"], json.dumps(t["data"], sort_keys=True)) for t in out) == sorted(
        (t["id"], json.dumps(t["data"], sort_keys=True)) for t in tasks
    )
    imports = json.loads((tmp_path / "run" / "labelstudio" / "predictions.json").read_text())
    assert sorted(p["task"] for p in imports) == [12, 57]
    for p in imports:
        assert p["model_version"] and p["result"][0]["type"] == "polygonlabels"


def test_yolo_data_yaml_resolves_as_ultralytics_does(tmp_path):
    """ultralytics takes the dataset root from ``path`` (a relative one under its own ``datasets_dir``), else
    the YAML's folder, and finds each image's labels by swapping ``/images/`` for ``/labels/``: with no
    ``path`` key every image of ``train`` has its label file wherever the folder is moved."""
    src = _source_coco(tmp_path)
    insts, opts = _as_predictions(src, tmp_path / "images")
    write("yolo", insts, tmp_path / "out" / "yolo", opts)
    moved = tmp_path / "elsewhere"
    (tmp_path / "out" / "yolo").rename(moved)
    cfg = yaml.safe_load((moved / "data.yaml").read_text())
    assert "path" not in cfg and cfg["names"] == {0: "car", 1: "dog", 2: "toothbrush"}
    root = moved  # ultralytics: Path(data.get("path") or Path(yaml_file).parent)
    for split in ("train", "val"):
        images = sorted((root / cfg[split]).iterdir())
        assert len(images) == 2
        for im in images:
            label = Path(
                f"{os.sep}labels{os.sep}".join(str(im).rsplit(f"{os.sep}images{os.sep}", 1))
            ).with_suffix(".txt")
            lines = label.read_text().split("\n")
            assert all(int(ln.split()[0]) in cfg["names"] for ln in lines if ln)


def test_names_do_not_follow_links(tmp_path):
    """An image that is a link inside the image folder is named where it is: never ``../../<its target>``."""
    store = tmp_path / "store" / "deep" / "blobs"
    write_image(store / "0f3a.jpg")
    root = tmp_path / "project" / "images"
    root.mkdir(parents=True)
    (root / "a.jpg").symlink_to(store / "0f3a.jpg")
    inst = Instance(root / "a.jpg", (64, 48), "cat", (10, 8, 30, 28), [SQUARE])
    write("coco", [inst], tmp_path / "project" / "coco", WriteOptions(root=root, classes=["cat"]))
    out = json.loads((tmp_path / "project" / "coco" / "annotations" / "instances_default.json").read_text())
    assert out["images"][0]["file_name"] == "a.jpg"
    from polyrnn.formats.labelme import write_labelme

    write_labelme([inst], tmp_path / "project" / "lm", root=root, images="refer")
    (doc,) = [json.loads(p.read_text()) for p in (tmp_path / "project" / "lm").glob("*.json")]
    assert doc["imagePath"] == "../images/a.jpg"
    write(
        "yolo",
        [inst],
        tmp_path / "project" / "yolo",
        WriteOptions(root=root, classes=["cat"], keep_images=True),
    )
    link = tmp_path / "project" / "yolo" / "images" / "a.jpg"
    assert os.readlink(link) == str(root / "a.jpg") and link.resolve() == (store / "0f3a.jpg").resolve()


def test_labelme_polygons_are_boxes_to_trace_again(tmp_path, capsys):
    """A LabelMe folder of polygons (no rectangles) gives one box per object (parts with one ``group_id``
    joined), and the command says how many boxes it read and from what."""
    from polyrnn.cli import main

    write_image(tmp_path / "lm" / "a.jpg")
    shapes = [
        {"label": "dog", "points": SQUARE.tolist(), "shape_type": "polygon", "group_id": 1},
        {"label": "dog", "points": (TRIANGLE + [0, 10]).tolist(), "shape_type": "polygon", "group_id": 1},
        {"label": "car", "points": TRIANGLE.tolist(), "shape_type": "polygon", "group_id": None},
        {"label": "pin", "points": [[3, 3]], "shape_type": "point"},
    ]
    (tmp_path / "lm" / "a.json").write_text(json.dumps({"shapes": shapes, "imagePath": "a.jpg"}))
    boxes = read_boxes(tmp_path / "lm")
    (entry,) = boxes.images
    assert [(o.class_name, o.box) for o in entry.objects] == [
        ("dog", (10.0, 8.0, 60.0, 40.0)),
        ("car", (30.0, 5.0, 60.0, 30.0)),
    ]
    assert any("'point' is not a region" in s.reason for s in boxes.skipped)
    assert main(["predict", "--dataset", str(tmp_path / "lm"), "--out", str(tmp_path / "run")]) == 0
    printed = capsys.readouterr()
    assert "2 boxes in 1 images" in printed.err and "2 of the boxes are polygons' bounds" in printed.err
    assert "2 objects" in printed.out
    (tmp_path / "lm" / "a.json").write_text(json.dumps({"shapes": shapes[3:], "imagePath": "a.jpg"}))
    assert main(["predict", "--dataset", str(tmp_path / "lm"), "--out", str(tmp_path / "run2")]) == 0
    err = capsys.readouterr().err
    assert "no box to trace" in err and "rectangle shapes and polygons' bounds" in err
    assert "'point' is not a region" in err


DATUMARO_READ = """
import json, sys
import datumaro as dm
out = {}
for name, fmt in (("coco", "coco_instances"), ("cvat", "cvat")):
    ds = dm.Dataset.import_from(sys.argv[1] + "/" + name, fmt)
    out[name] = [
        {"id": it.id, "image": bool(it.media and it.media.has_data),
         "shapes": sorted(type(a).__name__ for a in it.annotations)}
        for it in ds
    ]
print(json.dumps(out))
"""


@pytest.mark.datumaro
def test_datumaro_imports_the_coco_and_cvat_outputs_as_they_are(tmp_path):
    """datumaro (its own virtual environment: ``POLYRNN_DATUMARO_PYTHON``; CI installs it) imports the COCO
    and CVAT outputs of a run without moving a file: every image found, every polygon read."""
    import subprocess

    python = os.environ.get("POLYRNN_DATUMARO_PYTHON")
    if not python:
        if os.environ.get("POLYRNN_REQUIRE_DATUMARO") == "1":
            pytest.fail("POLYRNN_DATUMARO_PYTHON is not set but POLYRNN_REQUIRE_DATUMARO=1")
        pytest.skip("needs datumaro (POLYRNN_DATUMARO_PYTHON=a python with datumaro installed)")
    src = _source_coco(tmp_path)
    predict_dataset(src, tmp_path / "run", image_dir=tmp_path / "images", log=None)
    done = subprocess.run(
        [python, "-c", DATUMARO_READ, str(tmp_path / "run")], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    for fmt in ("coco", "cvat"):
        items = sorted(got[fmt], key=lambda i: i["id"])
        assert [i["id"] for i in items] == ["a", "b"], (fmt, items)
        assert all(i["image"] for i in items), (fmt, items)
        assert sum(i["shapes"].count("Polygon") for i in items) == 3, (fmt, items)


@pytest.mark.ultralytics
def test_ultralytics_trains_on_the_yolo_output_as_it_is(tmp_path):
    """ultralytics (its own virtual environment: ``POLYRNN_ULTRALYTICS_PYTHON``; CI installs it) trains one
    epoch on a run's ``yolo/data.yaml`` given by a relative path, reading every image and polygon."""
    import subprocess

    python = os.environ.get("POLYRNN_ULTRALYTICS_PYTHON")
    if not python:
        if os.environ.get("POLYRNN_REQUIRE_ULTRALYTICS") == "1":
            pytest.fail("POLYRNN_ULTRALYTICS_PYTHON is not set but POLYRNN_REQUIRE_ULTRALYTICS=1")
        pytest.skip("needs ultralytics (POLYRNN_ULTRALYTICS_PYTHON=a python with ultralytics installed)")
    src = _source_coco(tmp_path)
    predict_dataset(src, tmp_path / "run", image_dir=tmp_path / "images", log=None)
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "ultralytics_check.py"
    done = subprocess.run(
        [python, str(script), "run/yolo/data.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "YOLO_CONFIG_DIR": str(tmp_path / "ultralytics-settings")},
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "images=2 instances=3" in done.stdout and "TRAINED" in done.stdout, done.stdout[-2000:]
