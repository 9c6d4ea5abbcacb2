import json
import subprocess
import sys

import numpy as np
from PIL import Image

from polyrnn.cli import main


def test_data_stats_json(datasets, capsys):
    assert main(["data", "stats", str(datasets / "coco-mini" / "val2017"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"images", "instances", "classes", "skipped"} <= out.keys()
    assert out["images"] == 79 and out["instances"] == 619
    assert out["classes"]["person"] > 50
    assert out["skipped"]["count"] == 5 and out["skipped"]["reasons"] == {"crowd region": 5}


def test_data_stats_text_and_show(datasets, tmp_path, capsys):
    assert main(["data", "stats", str(datasets / "labelme-examples")]) == 0
    assert "instances 12" in capsys.readouterr().out
    out = tmp_path / "show.png"
    assert main(["data", "show", str(datasets / "coco128-seg"), "--index", "5", "--out", str(out)]) == 0
    img = np.asarray(Image.open(out))
    assert img.shape == (448, 448, 3)
    red = (img[..., 0] > 200) & (img[..., 1] < 60) & (img[..., 2] < 60)
    assert red.sum() > 100  # the grid polygon is drawn


def test_data_ceiling(datasets, capsys):
    args = ["data", "ceiling", str(datasets / "coco-mini" / "val2017"), "--grid-sizes", "28,56", "--json"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["instances"] == 482
    assert 0.88 < out["mean_iou"]["28"] < out["mean_iou"]["56"] < 1.0


def test_errors_are_messages_not_tracebacks(tmp_path):
    bad = tmp_path / "instances.json"
    bad.write_text("{oops")
    r = subprocess.run(
        [sys.executable, "-m", "polyrnn.cli", "data", "stats", str(bad)], capture_output=True, text=True
    )
    assert r.returncode == 2
    assert "instances.json: malformed JSON" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "polyrnn.cli", "data", "show", str(tmp_path / "nope"), "--index", "0",
                        "--out", str(tmp_path / "x.png")], capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 2 and "no such file" in r.stderr and "Traceback" not in r.stderr


def test_show_index_out_of_range(datasets, tmp_path, capsys):
    rc = main(
        [
            "data",
            "show",
            str(datasets / "labelme-examples"),
            "--index",
            "99",
            "--out",
            str(tmp_path / "x.png"),
        ]
    )
    assert rc == 2 and "out of range" in capsys.readouterr().err
