import json
import subprocess
import sys

import numpy as np
import pytest
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
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "polyrnn.cli",
            "data",
            "show",
            str(tmp_path / "nope"),
            "--index",
            "0",
            "--out",
            str(tmp_path / "x.png"),
        ],
        capture_output=True,
        text=True,
    )
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

    assert main(["predict", str(tmp_path / "missing.jpg"), "--box", "1,1,50,50"]) == 2
    assert "missing.jpg: no such image file" in capsys.readouterr().err
    assert main(["predict", str(weights), "--box", "1,1,50,50"]) == 2  # not an image
    assert "cannot read image" in capsys.readouterr().err
    assert main(["predict", str(img), "--box", "130,10,150,20", "--weights", str(weights)]) == 2
    assert "outside the 120x90 image" in capsys.readouterr().err
    assert main(["predict", str(img), "--box", "50,10,20,20", "--weights", str(weights)]) == 2
    assert "x2 > x1" in capsys.readouterr().err

    assert main(["bench", "--variant", "tiny", "--repeats", "2", "--steps", "5", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["parameters"] > 0 and r["train_instances_per_s"]["fine_tuned"] > 0 and r["threads"] == 1
    for part in ("encoder", "decoder_step", "rnn_polygon", "automatic", "correction"):
        s = r["ms"][part]
        assert 0 < s["p10"] <= s["median"] <= s["p90"], part


def test_bench_times_the_correction_the_editor_would_make(capsys):
    """The shipped models: the refine engine with its focus pass, without it (--no-focus), or another refiner
    (none: the decoder re-predicts)."""
    engines = []
    for extra in ([], ["--no-focus"], ["--refiner-weights", "none"]):
        assert main(["bench", "--no-train", "--repeats", "1", "--steps", "5", "--json", *extra]) == 0
        engines.append(json.loads(capsys.readouterr().out)["engine"])
    assert engines == ["refine + focus pass", "refine", "rnn"]


def test_predict_checks_its_input_before_loading_a_model(tmp_path, capsys, monkeypatch):
    import polyrnn.build

    def no_model(*a, **k):
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr(polyrnn.build, "load_models", no_model)
    monkeypatch.setattr(polyrnn.build, "load_polygon_model", no_model)
    img = tmp_path / "img.png"
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(img)
    for argv, message in (
        (["predict", str(tmp_path / "nope.png"), "--box", "1,1,9,9"], "no such image file"),
        (["predict", str(img), "--box", "1,1,9"], "--box must be"),
        (["predict", str(img), "--box", "70,1,90,9"], "outside the 60x40 image"),
        (
            ["predict", str(img), "--box", "1,1,9,9", "--weights", str(tmp_path / "w.pt")],
            "no such weights file",
        ),
        (["predict", str(img), "--box", "1,1,9,9", "--threads", "-1"], "threads must be >= 0"),
    ):
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err


def test_precision_option_and_environment(monkeypatch, capsys):
    """--precision / $POLYRNN_PRECISION choose the inference networks' type; auto is bfloat16 exactly where
    torch reports AMX tiles; anything else is refused naming the setting."""
    import torch

    from polyrnn.runtime import PRECISION_ENV, resolve_precision, set_precision

    monkeypatch.delenv(PRECISION_ENV, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert resolve_precision() == "bfloat16" and resolve_precision("float32") == "float32"
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert resolve_precision() == resolve_precision("auto") == "float32"
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")  # an older or other torch: float32
    assert resolve_precision() == "float32" and resolve_precision("bfloat16") == "bfloat16"
    monkeypatch.setenv(PRECISION_ENV, "bfloat16")
    assert resolve_precision() == "bfloat16"
    monkeypatch.setenv(PRECISION_ENV, "half")
    with pytest.raises(ValueError, match="POLYRNN_PRECISION='half'"):
        resolve_precision()
    set_precision("float32")  # the CLI's --precision: the process's choice, through the environment
    assert resolve_precision() == "float32"
    with pytest.raises(ValueError, match="precision='fp8'"):
        set_precision("fp8")
    assert main(["bench", "--precision", "fp8"]) == 2
    assert "invalid choice: 'fp8'" in capsys.readouterr().err


def test_threads_option_and_environment(monkeypatch):
    import torch

    from polyrnn.runtime import THREADS_ENV, resolve_threads, set_threads

    monkeypatch.delenv(THREADS_ENV, raising=False)
    assert resolve_threads() == 1
    monkeypatch.setenv(THREADS_ENV, "2")
    assert resolve_threads() == 2 and resolve_threads(3) == 3
    monkeypatch.setenv(THREADS_ENV, "many")
    with pytest.raises(ValueError, match="POLYRNN_THREADS='many'"):
        resolve_threads()
    before = torch.get_num_threads()
    try:
        assert set_threads(2) == 2 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
