import json

import numpy as np
import pytest
from helpers import write_image
from PIL import Image
from pycocotools import mask as mask_utils

from polyrnn.data import DataError
from polyrnn.formats import detect_format, load_dataset, load_datasets
from polyrnn.geometry import mask_iou

# --- the real datasets ----------------------------------------------------------------------------


def test_coco_mini_val(datasets):
    ds = load_dataset(datasets / "coco-mini" / "val2017")
    assert ds.format == "coco" and ds.images == 79
    assert len(ds) == 619
    assert sum(len(i.polygons) > 1 for i in ds.instances) > 0
    assert len(load_dataset(datasets / "coco-mini" / "val2017", min_size=32)) == 482
    crowd = load_dataset(datasets / "coco-mini" / "val2017", include_crowd=True)
    assert len(crowd) == 624 and sum(i.iscrowd for i in crowd.instances) == 5
    inst = ds.instances[0]
    m = inst.mask()
    assert m.shape == (inst.height, inst.width) and m.any()
    x, y, w, h = inst.box
    rows, cols = np.nonzero(m)
    assert abs(cols.min() - x) <= 1.5 and abs(rows.max() + 1 - (y + h)) <= 1.5


def test_coco128_seg_yolo(datasets):
    ds = load_dataset(datasets / "coco128-seg")
    assert ds.format == "yolo" and len(ds) == 929 and ds.images == 128
    assert sum("label file without an image" in s.reason for s in ds.skipped) == 2
    assert {"person", "car"} <= {i.class_name for i in ds.instances}


def test_training_sources_combined(datasets):
    ds = load_datasets(
        [datasets / "coco128-seg", datasets / "coco-mini" / "train2017", datasets / "coco-mval"]
    )
    assert len(ds) == 929 + 731 + 786


def test_labelme_examples(datasets):
    ds = load_dataset(datasets / "labelme-examples")
    assert ds.format == "labelme" and ds.images == 3
    assert "__ignore__" not in {i.class_name for i in ds.instances}
    assert any(len(i.polygons) == 2 for i in ds.instances)  # group_id joined
    assert any(i.ignore_mask() is not None for i in ds.instances)


# --- COCO on small files ----------------------------------------------------------------------------


def _coco(tmp_path, anns, images=None):
    write_image(tmp_path / "images" / "a.jpg", 64, 48)
    data = {
        "images": images or [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 48}],
        "annotations": anns,
        "categories": [{"id": 1, "name": "thing"}],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return path


def _ann(i, seg, bbox=(10, 10, 20, 20), crowd=0):
    return {
        "id": i,
        "image_id": 1,
        "category_id": 1,
        "segmentation": seg,
        "bbox": list(bbox),
        "iscrowd": crowd,
    }


def test_coco_bad_annotations_are_skipped_with_reasons(tmp_path):
    sq = [10, 10, 30, 10, 30, 30, 10, 30]
    path = _coco(
        tmp_path,
        [
            _ann(1, [sq]),
            _ann(2, [[10, 10, 30, 10]]),  # two points
            _ann(3, [sq], bbox=(500, 500, 10, 10)),  # box outside the image
            {**_ann(4, [sq]), "image_id": 99},
            _ann(5, [sq, [1, 2, 3]]),  # one good part, one odd part
        ],
    )
    ds = load_dataset(path)
    assert [i.source.split("id=")[1] for i in ds.instances] == ["1", "5"]
    reasons = [str(s) for s in ds.skipped]
    assert any("annotations[1].segmentation[0]" in r and "2 points" in r for r in reasons)
    assert any("annotations[2].bbox" in r and "outside" in r for r in reasons)
    assert any("annotations[3].image_id" in r for r in reasons)
    assert any("annotations[4].segmentation[1]" in r and "odd" in r for r in reasons)


def test_coco_missing_image_skipped(tmp_path):
    path = _coco(
        tmp_path,
        [_ann(1, [[10, 10, 30, 10, 30, 30]])],
        images=[
            {"id": 1, "file_name": "a.jpg", "width": 64, "height": 48},
            {"id": 2, "file_name": "gone.jpg", "width": 64, "height": 48},
        ],
    )
    ds = load_dataset(path)
    assert len(ds) == 1 and ds.images == 1
    assert any("images[1]" in s.where and "gone.jpg" in s.reason for s in ds.skipped)


def test_coco_malformed_json_names_file_and_line(tmp_path):
    p = tmp_path / "instances.json"
    p.write_text('{"images": [1, 2,,]}')
    with pytest.raises(DataError, match=r"instances.json: malformed JSON at line 1"):
        load_dataset(p)
    p.write_text('{"images": []}')
    with pytest.raises(DataError, match="'annotations'"):
        load_dataset(p)


def test_coco_rle_traced_and_crowd_skipped(tmp_path):
    m = np.zeros((48, 64), np.uint8)
    m[5:25, 8:40] = 1
    m[30:40, 50:60] = 1
    rle = mask_utils.encode(np.asfortranarray(m))
    rle["counts"] = rle["counts"].decode()
    path = _coco(tmp_path, [_ann(1, rle, bbox=(8, 5, 52, 35)), _ann(2, rle, crowd=1)])
    ds = load_dataset(path)
    assert len(ds) == 1
    inst = ds.instances[0]
    assert len(inst.polygons) == 2
    assert mask_iou(inst.mask(), m.astype(bool)) == 1.0
    assert any("crowd" in s.reason for s in ds.skipped)


# --- YOLO ---------------------------------------------------------------------------------------


def test_yolo_names_from_data_yaml_and_bad_lines(tmp_path):
    write_image(tmp_path / "images" / "train" / "a.jpg", 100, 50)
    write_image(tmp_path / "images" / "train" / "b.jpg", 100, 50)  # no label file: no objects
    (tmp_path / "labels" / "train").mkdir(parents=True)
    (tmp_path / "labels" / "train" / "a.txt").write_text(
        "1 0.1 0.1 0.5 0.1 0.5 0.9\n"
        "7 0.1 0.1 0.5 0.1 0.5 0.9\n"  # unknown class
        "0 0.1 0.1 0.5\n"  # odd
        "0 0.5 0.5 0.2 0.2\n"  # detection box
        "0 x y z\n"
    )
    (tmp_path / "labels" / "train" / "orphan.txt").write_text("0 0.1 0.1 0.2 0.1 0.2 0.2\n")
    (tmp_path / "data.yaml").write_text("names:\n  0: cat\n  1: dog\n")
    ds = load_dataset(tmp_path)
    assert ds.format == "yolo" and ds.images == 2 and len(ds) == 1
    inst = ds.instances[0]
    assert inst.class_name == "dog"
    np.testing.assert_allclose(inst.polygons[0], [[10, 5], [50, 5], [50, 45]])
    text = "\n".join(map(str, ds.skipped))
    for needle in ["line 2 class", "line 3", "detection box", "line 5", "orphan.txt"]:
        assert needle in text


# --- LabelMe --------------------------------------------------------------------------------------


def test_labelme_groups_ignore_and_malformed(tmp_path):
    write_image(tmp_path / "a.jpg", 64, 48)
    shapes = [
        {"label": "cup", "points": [[1, 1], [10, 1], [10, 10]], "group_id": 3, "shape_type": "polygon"},
        {"label": "cup", "points": [[20, 20], [30, 20], [30, 30]], "group_id": 3, "shape_type": "polygon"},
        {"label": "cup", "points": [[40, 1], [50, 1], [50, 10]], "group_id": None, "shape_type": "polygon"},
        {"label": "box", "points": [[5, 30], [15, 40]], "shape_type": "rectangle"},
        {"label": "__ignore__", "points": [[0, 0], [5, 0], [5, 5]], "shape_type": "polygon"},
        {"label": "pt", "points": [[1, 1]], "shape_type": "point"},
        {"label": "bad", "points": [[1, 1], [2, 2]], "shape_type": "polygon"},
    ]
    (tmp_path / "a.json").write_text(
        json.dumps({"imagePath": "a.jpg", "imageWidth": 64, "imageHeight": 48, "shapes": shapes})
    )
    (tmp_path / "broken.json").write_text("{not json")
    ds = load_dataset(tmp_path)
    assert ds.format == "labelme"
    assert sorted((i.class_name, len(i.polygons)) for i in ds.instances) == [
        ("box", 1),
        ("cup", 1),
        ("cup", 2),
    ]
    assert all(i.ignore_mask() is not None and i.ignore_mask()[1, 3] for i in ds.instances)
    text = "\n".join(map(str, ds.skipped))
    assert "shapes[5].shape_type" in text and "shapes[6].points" in text and "broken.json" in text


# --- Cityscapes -----------------------------------------------------------------------------------


def test_cityscapes_occlusion_and_groups(tmp_path):
    city = tmp_path / "gtFine" / "val" / "x"
    city.mkdir(parents=True)
    write_image(tmp_path / "leftImg8bit" / "val" / "x" / "x_000_000_leftImg8bit.png", 100, 60)
    objects = [
        {"label": "road", "polygon": [[0, 30], [100, 30], [100, 60], [0, 60]]},
        {"label": "car", "polygon": [[10, 10], [60, 10], [60, 50], [10, 50]]},
        {"label": "person", "polygon": [[30, 0], [40, 0], [40, 60], [30, 60]]},  # splits the car in two
        {"label": "cargroup", "polygon": [[70, 10], [90, 10], [90, 20]]},
        {"label": "sky", "polygon": [[0, 0], [1, 0], [1, 1]]},
    ]
    (city / "x_000_000_gtFine_polygons.json").write_text(
        json.dumps({"imgWidth": 100, "imgHeight": 60, "objects": objects})
    )
    assert detect_format(tmp_path / "gtFine") == "cityscapes"
    ds = load_dataset(tmp_path / "gtFine")
    assert [i.class_name for i in ds.instances] == ["car", "person"]
    car = ds.instances[0]
    assert len(car.polygons) == 2
    m = car.mask()
    assert m[20, 20] and not m[20, 35] and m[20, 50]
    assert len(load_dataset(tmp_path / "gtFine", include_crowd=True)) == 3


# --- mask folders ---------------------------------------------------------------------------------


def test_mask_folder_with_ignore_band(tmp_path):
    write_image(tmp_path / "images" / "a.jpg", 64, 48)
    write_image(tmp_path / "images" / "b.jpg", 64, 48)
    m = np.zeros((48, 64), np.uint8)
    m[10:30, 10:40] = 255
    m[9, 9:41] = 128
    (tmp_path / "masks").mkdir()
    Image.fromarray(m).save(tmp_path / "masks" / "a.png")
    ds = load_dataset(tmp_path)
    assert ds.format == "masks" and len(ds) == 1
    inst = ds.instances[0]
    assert inst.mask().sum() == 20 * 30
    assert inst.ignore_mask().sum() == 32
    assert inst.box == (10.0, 10.0, 30.0, 20.0)
    assert any("b.jpg" in s.where and "no mask" in s.reason for s in ds.skipped)


def test_unknown_layout_is_a_clear_error(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="cannot tell the dataset format"):
        load_dataset(tmp_path)
    with pytest.raises(DataError, match="no such file"):
        load_dataset(tmp_path / "missing")


def test_a_format_is_one_file_and_one_line(tmp_path, monkeypatch):
    """A format added to the table is an export of `polyrnn export`, of the editor's menu and of the merge."""
    import json as json_

    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient
    from helpers import write_image
    from test_server import tiny_predictor

    from polyrnn import formats
    from polyrnn.cli import build_parser
    from polyrnn.formats.base import Format
    from polyrnn.server.app import create_app
    from polyrnn.server.store import AnnotationStore

    def write_csv(instances, out, opts):
        out.mkdir(parents=True, exist_ok=True)
        rows = [f"{i.image_path.name},{i.class_name},{len(i.polygons[0])}" for i in instances]
        (out / "polygons.csv").write_text("\n".join(rows) + "\n")
        return out / "polygons.csv"

    monkeypatch.setitem(formats.FORMATS, "csv", Format("csv", "CSV", write=write_csv))
    monkeypatch.setattr(formats, "EXPORTS", (*formats.EXPORTS, "csv"))
    folder = tmp_path / "imgs"
    write_image(folder / "a.png")
    doc = {"shapes": [{"label": "cat", "points": [[1, 1], [20, 1], [20, 20]]}], "imagePath": "a.png"}
    (folder / "a.json").write_text(json_.dumps(doc))
    summary = formats.export_folder(folder, "csv", tmp_path / "out")
    assert summary["path"].read_text() == "a.png,cat,3\n"
    c = TestClient(create_app(AnnotationStore(folder), tiny_predictor()), base_url="http://127.0.0.1:8000")
    assert {"name": "csv", "title": "CSV"} in c.get("/api/exports").json()
    assert c.post("/api/export/csv").status_code == 200
    assert "csv" in build_parser().parse_args(["export", str(folder), "--to", "csv", "o"]).to
