"""Pre-annotating a dataset: box readers, outputs, resume, shards, workers and the IoU against evaluate."""

from __future__ import annotations

import csv
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from helpers import write_image

from polyrnn.batch import worker as batch_worker
from polyrnn.batch.run import RunError, Shard, merge, predict_dataset, read_shard
from polyrnn.data.instance import DataError
from polyrnn.formats import read_boxes

BOXES = [("cat", (4.0, 6.0, 30.0, 40.0)), ("dog", (20.0, 2.0, 60.0, 20.0))]  # x1, y1, x2, y2 on 64x48


def _write_all_formats(root: Path) -> dict[str, Path]:
    """The same two boxes on one 64x48 image in each of the five box formats."""
    img = write_image(root / "images" / "a.jpg")
    w, h = 64, 48
    paths = {}
    coco = {
        "images": [{"id": 7, "file_name": "a.jpg", "width": w, "height": h}],
        "annotations": [
            {
                "id": k + 1,
                "image_id": 7,
                "category_id": k + 1,
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "iscrowd": 0,
            }
            for k, (_, (x1, y1, x2, y2)) in enumerate(BOXES)
        ],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
    }
    paths["coco"] = root / "coco.json"
    paths["coco"].write_text(json.dumps(coco))
    (root / "labels").mkdir()
    (root / "data.yaml").write_text("names: [cat, dog]\n")
    (root / "labels" / "a.txt").write_text(
        "".join(
            f"{k} {(x1 + x2) / 2 / w} {(y1 + y2) / 2 / h} {(x2 - x1) / w} {(y2 - y1) / h}\n"
            for k, (_, (x1, y1, x2, y2)) in enumerate(BOXES)
        )
    )
    paths["yolo"] = root
    lm = root / "lm"
    lm.mkdir()
    (lm / "a.jpg").write_bytes(img.read_bytes())
    shapes = [
        {"label": c, "points": [[x2, y2], [x1, y1]], "shape_type": "rectangle", "group_id": None, "flags": {}}
        for c, (x1, y1, x2, y2) in BOXES
    ]
    shapes.append({"label": "tree", "points": [[1, 1], [5, 1], [5, 5]], "shape_type": "polygon"})
    (lm / "a.json").write_text(json.dumps({"shapes": shapes, "imagePath": "a.jpg", "imageData": None}))
    paths["labelme"] = lm
    result = [
        {
            "id": f"b{k}",
            "type": "rectanglelabels",
            "from_name": "label",
            "to_name": "image",
            "original_width": w,
            "original_height": h,
            "value": {
                "x": 100 * x1 / w,
                "y": 100 * y1 / h,
                "width": 100 * (x2 - x1) / w,
                "height": 100 * (y2 - y1) / h,
                "rotation": 0,
                "rectanglelabels": [c],
            },
        }
        for k, (c, (x1, y1, x2, y2)) in enumerate(BOXES)
    ]
    tasks = [
        {"id": 1, "data": {"image": "/data/local-files/?d=images/a.jpg"}, "annotations": [{"result": result}]}
    ]
    paths["labelstudio"] = root / "ls.json"
    paths["labelstudio"].write_text(json.dumps(tasks))
    boxes = "".join(
        f'<box label="{c}" occluded="0" xtl="{x1}" ytl="{y1}" xbr="{x2}" ybr="{y2}" z_order="0"/>'
        for c, (x1, y1, x2, y2) in BOXES
    )
    paths["cvat"] = root / "cvat.xml"
    paths["cvat"].write_text(
        '<?xml version="1.0" encoding="utf-8"?><annotations><version>1.1</version><meta><task><labels>'
        "<label><name>cat</name></label><label><name>dog</name></label></labels></task></meta>"
        f'<image id="0" name="a.jpg" width="{w}" height="{h}">{boxes}</image></annotations>'
    )
    return paths


def test_every_box_format_reads_the_same_boxes(tmp_path):
    paths = _write_all_formats(tmp_path)
    images = tmp_path / "images"
    for fmt, path in paths.items():
        bs = read_boxes(path, image_dir=images if fmt in ("coco", "cvat") else None)
        assert bs.format == fmt
        assert len(bs.images) == 1 and bs.images[0].path.name == "a.jpg", fmt
        got, skipped = bs.images[0].pixel_boxes((64, 48))
        assert not skipped
        if fmt == "labelme":  # its polygon is traced again from its box
            (tree,) = [(o, b) for o, b in got if o.class_name == "tree"]
            assert tree[1] == (1.0, 1.0, 5.0, 5.0) and "polygon's box" in tree[0].ref
            got = [(o, b) for o, b in got if o.class_name != "tree"]
        assert [o.class_name for o, _ in got] == ["cat", "dog"], fmt
        np.testing.assert_allclose([b for _, b in got], [b for _, b in BOXES], atol=1e-6, err_msg=fmt)
        assert {"cat", "dog"} <= set(bs.classes)
    assert read_boxes(paths["labelstudio"]).images[0].origin == {
        "id": 1,
        "data": {"image": "/data/local-files/?d=images/a.jpg"},
    }


def test_box_readers_name_what_they_skip(tmp_path):
    write_image(tmp_path / "a.jpg")
    tasks = [
        {
            "data": {"image": "/data/upload/3/1a2b3c4d-a.jpg"},
            "annotations": [
                {
                    "result": [
                        {
                            "type": "rectanglelabels",
                            "value": {
                                "x": 10,
                                "y": 10,
                                "width": 20,
                                "height": 20,
                                "rotation": 30,
                                "rectanglelabels": ["cat"],
                            },
                        },
                        {
                            "type": "rectanglelabels",
                            "value": {"x": 10, "y": 10, "width": 20, "rectanglelabels": ["cat"]},
                        },
                        {
                            "type": "rectanglelabels",
                            "value": {"x": 5, "y": 5, "width": 20, "height": 20, "rectanglelabels": ["cat"]},
                        },
                    ]
                }
            ],
        },
        {"data": {"image": "/data/upload/3/missing.jpg"}},
    ]
    (tmp_path / "ls.json").write_text(json.dumps(tasks))
    bs = read_boxes(tmp_path / "ls.json", "labelstudio")
    assert len(bs.images) == 1 and len(bs.images[0].objects) == 1  # the upload prefix 1a2b3c4d- is stripped
    reasons = " | ".join(str(s) for s in bs.skipped)
    assert "rotation" in reasons and "width, height" in reasons and "missing.jpg" in reasons
    assert "ls.json:[1]" in reasons
    (tmp_path / "bad.xml").write_text("<annotations><image")
    with pytest.raises(DataError, match="bad.xml"):
        read_boxes(tmp_path / "bad.xml")
    with pytest.raises(DataError, match="list of tasks"):
        (tmp_path / "obj.json").write_text('{"images": 1}')
        read_boxes(tmp_path / "obj.json", "labelstudio")


@pytest.fixture(scope="module")
def subset(datasets, tmp_path_factory) -> Path:
    """Two coco-mini val2017 images with their annotations, as a COCO JSON beside the image folder's files."""
    data = json.loads((datasets / "coco-mini/annotations/instances_val2017.json").read_text())
    ims = data["images"][:3]
    ids = {i["id"] for i in ims}
    anns = [a for a in data["annotations"] if a["image_id"] in ids]
    root = tmp_path_factory.mktemp("subset")
    out = root / "instances.json"
    out.write_text(json.dumps({"images": ims, "annotations": anns, "categories": data["categories"]}))
    return out


def _run(subset: Path, out: Path, **kw) -> dict:
    return predict_dataset(
        subset, out, image_dir=_val(subset), log=None, review_below=kw.pop("review_below", 0.9), **kw
    )


def _val(subset: Path) -> Path:
    from conftest import DATASETS

    return DATASETS / "coco-mini" / "val2017"


def _outputs(out: Path) -> dict[str, bytes]:
    """Every output file of a run folder (not the shards, the manifest or timing summaries)."""
    files = {}
    for fmt in ("coco", "labelme", "yolo", "labelstudio", "cvat"):
        for p in sorted((out / fmt).rglob("*")):
            if p.is_file() or p.is_symlink():
                files[str(p.relative_to(out))] = (
                    p.read_bytes() if not p.is_symlink() else str(p.readlink()).encode()
                )
    files["review.csv"] = (out / "review.csv").read_bytes()
    files["skipped.csv"] = (out / "skipped.csv").read_bytes()
    return files


@pytest.fixture(scope="module")
def baseline(subset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("baseline") / "run"
    r = _run(subset, out)
    assert r["images"] == 3 and r["errors"] == 0
    return out


@pytest.mark.shared
def test_coco_output_iou_equals_evaluate_automatic(subset, baseline):
    """The COCO output, loaded with pycocotools, scores against the ground truth exactly as ``polyrnn
    evaluate``'s automatic figure on the same instances."""
    from pycocotools.coco import COCO

    from polyrnn.build import load_models
    from polyrnn.evaluation.evaluate import EvalOptions, evaluate_dataset
    from polyrnn.formats.coco import read_coco
    from polyrnn.geometry import mask_iou, rasterize

    gt = read_coco(subset, image_dir=_val(subset)).filtered()
    pred = COCO(str(baseline / "coco" / "annotations" / "instances_default.json"))
    assert len(pred.getAnnIds()) == len(gt.instances)
    by_image: dict[str, list] = {}
    for ann in pred.loadAnns(pred.getAnnIds()):
        by_image.setdefault(pred.imgs[ann["image_id"]]["file_name"], []).append(ann)
    ious, seen = [], {}
    for inst in gt.instances:
        k = seen[inst.image_path.name] = seen.get(inst.image_path.name, -1) + 1
        ann = by_image[inst.image_path.name][k]
        assert 0.0 <= ann["score"] <= 1.0
        polys = [np.asarray(s, dtype=np.float64).reshape(-1, 2) for s in ann["segmentation"]]
        ious.append(mask_iou(rasterize(polys, inst.height, inst.width), inst.mask(), inst.ignore_mask()))
    m = load_models(refiner_weights="none")
    options = EvalOptions(start="mask", baselines=(), thresholds=(), max_corrections=-1)
    results = evaluate_dataset(m.polygon, gt.instances, options, mask_model=m.mask)
    auto = [r.automatic for r in results]
    np.testing.assert_allclose(ious, auto, rtol=0, atol=1e-12)  # the same polygons, to 1e-6 px


@pytest.mark.shared
def test_killed_run_resumes_to_identical_output(subset, baseline, tmp_path, monkeypatch):
    out = tmp_path / "run"
    real = batch_worker.trace_image
    calls = {"n": 0}

    def dies_after_one(annotator, job):
        if calls["n"] == 1:
            raise KeyboardInterrupt  # the process is killed while tracing the second image
        calls["n"] += 1
        return real(annotator, job)

    monkeypatch.setattr(batch_worker, "trace_image", dies_after_one)
    with pytest.raises(KeyboardInterrupt):
        _run(subset, out)
    shard = out / "shards" / f"{Shard().name}.jsonl"
    assert len(read_shard(shard)) == 1
    with open(shard, "a") as f:
        f.write('{"key": "cut off mid-wri')  # a line the kill cut
    monkeypatch.setattr(batch_worker, "trace_image", real)
    r = _run(subset, out)
    assert r["done_before"] == 1 and r["images"] == 2
    assert len(read_shard(shard)) == 3
    assert _outputs(out) == _outputs(baseline)


@pytest.mark.shared
def test_shards_and_merge_equal_the_unsharded_run(subset, baseline, tmp_path):
    out = tmp_path / "run"
    a = _run(subset, out, shard=Shard(0, 2))
    assert "merged" not in a
    with pytest.raises(RunError, match="1/2 not finished"):
        merge(out)
    b = _run(subset, out, shard=Shard(1, 2))
    assert a["images"] + b["images"] == 3
    merge(out, review_below=0.9)
    assert _outputs(out) == _outputs(baseline)
    with pytest.raises(RunError, match="shards=2"):
        _run(subset, out, shard=Shard(0, 3))  # another split into the same folder


@pytest.mark.shared
def test_two_worker_processes_give_the_same_output(subset, baseline, tmp_path):
    out = tmp_path / "run"
    _run(subset, out, workers=2)
    assert _outputs(out) == _outputs(baseline)


@pytest.mark.shared
def test_outputs_follow_their_formats(subset, baseline):
    """Label Studio tasks and CVAT XML as their documentation describes them; LabelMe and YOLO read back."""
    from polyrnn.formats.labelme import read_labelme
    from polyrnn.formats.yolo import read_yolo

    tasks = json.loads((baseline / "labelstudio" / "tasks.json").read_text())
    config = ET.fromstring((baseline / "labelstudio" / "config.xml").read_text())
    names = {lab.get("value") for lab in config.iter("Label")}
    assert len(tasks) == 3
    for t in tasks:
        assert t["data"]["image"].startswith("/data/local-files/?d=")
        (p,) = t["predictions"]
        assert p["model_version"] == "polyrnn" and 0 <= p["score"] <= 1
        for r in p["result"]:
            assert r["type"] == "polygonlabels" and r["from_name"] == "label" and r["to_name"] == "image"
            assert r["value"]["polygonlabels"][0] in names and r["value"]["closed"] is True
            pts = np.asarray(r["value"]["points"])
            assert pts.shape[1] == 2 and len(pts) >= 3 and (pts >= 0).all() and (pts <= 100).all()
            assert 0 <= r["score"] <= 1 and r["original_width"] > 0
    root = ET.parse(baseline / "cvat" / "annotations.xml").getroot()
    assert root.tag == "annotations" and root.findtext("version") == "1.1"
    labels = [e.text for e in root.iterfind("meta/task/labels/label/name")]
    polys = 0
    for im in root.iterfind("image"):
        assert {"id", "name", "width", "height"} <= set(im.attrib)
        assert (_val(subset) / im.get("name")).is_file()
        for pg in im.iterfind("polygon"):
            polys += 1
            assert pg.get("label") in labels and pg.get("occluded") == "0" and pg.get("source") == "auto"
            xy = [tuple(map(float, q.split(","))) for q in pg.get("points").split(";")]
            assert len(xy) >= 3
    assert polys == len(
        json.loads((baseline / "coco/annotations/instances_default.json").read_text())["annotations"]
    )
    lm = read_labelme(baseline / "labelme")
    assert len(lm.instances) == polys and not lm.skipped
    assert all(i.image_path.resolve().parent == _val(subset).resolve() for i in lm.instances)
    yolo = read_yolo(baseline / "yolo")
    assert len(yolo.instances) == polys
    rows = list(csv.DictReader(open(baseline / "review.csv")))
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores) and all(s < 0.9 for s in scores)


@pytest.mark.shared
@pytest.mark.extras
def test_label_studio_sdk_accepts_the_predictions(baseline):
    """Label Studio's SDK parses the written labelling config and validates every prediction against it."""
    from conftest import require_extra

    require_extra("label_studio_sdk", "label-studio")
    from label_studio_sdk.label_interface import LabelInterface

    li = LabelInterface((baseline / "labelstudio" / "config.xml").read_text())
    tasks = json.loads((baseline / "labelstudio" / "tasks.json").read_text())
    assert tasks and all(li.validate_prediction(p) for t in tasks for p in t["predictions"])
    broken = json.loads(json.dumps(tasks[0]["predictions"][0]))
    broken["result"][0]["value"]["polygonlabels"] = ["not a label of the project"]
    assert not li.validate_prediction(broken)


def test_unreadable_images_are_logged_and_skipped(tmp_path):
    paths = _write_all_formats(tmp_path)
    (tmp_path / "lm" / "b.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "lm" / "b.json").write_text(
        json.dumps(
            {
                "shapes": [{"label": "x", "points": [[1, 1], [9, 9]], "shape_type": "rectangle"}],
                "imagePath": "b.jpg",
            }
        )
    )
    out = tmp_path / "out"
    r = predict_dataset(paths["labelme"], out, log=None)
    assert r["errors"] == 1 and r["images"] == 2
    skipped = (out / "skipped.csv").read_text()
    assert "b.jpg" in skipped and "cannot read image" in skipped
    coco = json.loads((out / "coco" / "annotations" / "instances_default.json").read_text())
    assert len(coco["annotations"]) == 3 and {c["name"] for c in coco["categories"]} >= {"cat", "dog", "tree"}


def test_predict_command_and_merge(tmp_path, capsys):
    from polyrnn.cli import main

    paths = _write_all_formats(tmp_path)
    out = tmp_path / "out"
    args = [
        "predict",
        "--dataset",
        str(paths["cvat"]),
        "--images",
        str(tmp_path / "images"),
        "--out",
        str(out),
    ]
    assert main([*args, "--shard", "0/2"]) == 0
    assert main([*args, "--shard", "1/2"]) == 0
    assert "polyrnn predict merge" in capsys.readouterr().out
    assert main(["predict", "merge", str(out), "--review-below", "1.01"]) == 0
    printed = capsys.readouterr().out
    assert "2 objects on 1 images" in printed and "2 to review first" in printed
    assert main(["predict", "--dataset", str(paths["cvat"]), "--out", str(out), "--shard", "2/2"]) == 2
    assert "0 <= i < n" in capsys.readouterr().err
    assert main(["predict", "--dataset", str(paths["cvat"])]) == 2
    assert "--out" in capsys.readouterr().err


def test_label_studio_input_gets_predictions_on_the_same_tasks(tmp_path):
    """Boxes from a Label Studio export come back as predictions on tasks with the same data (image URL)."""
    paths = _write_all_formats(tmp_path)
    out = tmp_path / "out"
    predict_dataset(paths["labelstudio"], out, log=None)
    (task,) = json.loads((out / "labelstudio" / "tasks.json").read_text())
    assert task["data"] == {"image": "/data/local-files/?d=images/a.jpg"}
    labels = [r["value"]["polygonlabels"][0] for r in task["predictions"][0]["result"]]
    assert labels == ["cat", "dog"]
