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


def test_predict_and_bench_commands(tmp_path, capsys):
    import torch

    from polyrnn.build import VARIANTS, build_model, checkpoint_dict, save_checkpoint

    torch.manual_seed(0)
    weights = tmp_path / "tiny.pt"
    save_checkpoint(weights, checkpoint_dict(build_model("tiny"), VARIANTS["tiny"]))
    img = tmp_path / "img.png"
    Image.fromarray((np.random.default_rng(0).random((90, 120, 3)) * 255).astype(np.uint8)).save(img)
    args = [
        "predict",
        str(img),
        "--box",
        "10,10,100,80",
        "--weights",
        str(weights),
        "--variant",
        "tiny",
        "--json",
    ]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    poly = np.array(out["polygon"])
    assert poly.shape[1] == 2 and len(poly) == len(out["probs"]) >= 3
    assert (poly[:, 0] > 0).all() and (poly[:, 0] < 120).all()
    assert main(args[:-1] + ["--box", "1,2,3"]) == 2
    assert "--box must be x1,y1,x2,y2" in capsys.readouterr().err
    assert main(["predict", str(img), "--box", "1,1,50,50", "--weights", str(tmp_path / "none.pt")]) == 2
    assert "no such weights file" in capsys.readouterr().err
    assert main(["predict", str(img), "--box", "1,1,50,50", "--variant", "tiny"]) == 2
    assert "no trained weights ship for variant 'tiny'" in capsys.readouterr().err

    assert main(["bench", "--variant", "tiny", "--repeats", "1", "--steps", "5", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    for key in ("parameters", "encoder_ms", "decoder_step_ms", "automatic_polygon_ms", "correction_ms",
                "train_instances_per_s"):  # fmt: skip
        assert r[key] > 0
