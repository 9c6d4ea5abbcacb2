import csv
import json
import math

import numpy as np
import pytest
import torch
from helpers import write_image

from polyrnn.build import build_model, read_checkpoint
from polyrnn.cli import main
from polyrnn.config import ModelConfig, load_train_config
from polyrnn.data.dataset import PolygonDataset, collate
from polyrnn.formats import load_dataset
from polyrnn.training import TrainingError, run_training


@pytest.fixture()
def labelme_dir(tmp_path):
    """Four images with two polygon objects each."""
    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    for i in range(4):
        write_image(root / f"im{i}.jpg", 96, 80, seed=i)
        shapes = []
        for _ in range(2):
            cx, cy, r = rng.uniform(30, 60), rng.uniform(25, 50), rng.uniform(12, 20)
            t = np.linspace(0, 2 * np.pi, 12, endpoint=False)
            pts = np.column_stack([cx + r * np.cos(t), cy + 0.8 * r * np.sin(t)])
            shapes.append({"label": "blob", "points": pts.tolist(), "shape_type": "polygon"})
        (root / f"im{i}.json").write_text(json.dumps({"imagePath": f"im{i}.jpg", "shapes": shapes}))
    return root


def _cfg(labelme_dir, tmp_path, *extra):
    return load_train_config(
        "tiny", [f"data.train=[{labelme_dir}]", f"data.val={labelme_dir}", f"out={tmp_path / 'runs'}", *extra]
    )


def test_tiny_recipe_leaves_a_complete_run_folder(labelme_dir, tmp_path):
    run = run_training(_cfg(labelme_dir, tmp_path, "name=a"), log=lambda *_: None)
    for f in ["config.yaml", "weights/last.pt", "weights/best.pt", "results.csv", "results.png"]:
        assert (run / f).is_file(), f
    rows = list(csv.DictReader(open(run / "results.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    for r in rows:
        assert math.isfinite(float(r["train_loss"])) and 0.0 <= float(r["val_miou"]) <= 1.0
    ckpt = read_checkpoint(run / "weights" / "last.pt")
    assert ckpt["epoch"] == 2 and ckpt["git_sha"] and ckpt["versions"]["torch"].startswith("2.13")
    # a checkpoint rebuilds its own model
    model = build_model(ModelConfig.from_dict(ckpt["model_config"]), run / "weights" / "last.pt")
    assert model.decoder.grid_size == 28
    assert "epochs: 2" in (run / "config.yaml").read_text()


def test_resume_continues_exactly(labelme_dir, tmp_path):
    straight = run_training(_cfg(labelme_dir, tmp_path, "name=straight"), log=lambda *_: None)
    first = run_training(_cfg(labelme_dir, tmp_path, "name=resumed", "epochs=1"), log=lambda *_: None)
    lines = []
    resumed = run_training(
        _cfg(labelme_dir, tmp_path, "name=resumed", "epochs=2"), resume=True, log=lines.append
    )
    assert first == resumed and any("resumed" in str(x) and "epoch 2" in str(x) for x in lines)
    a = read_checkpoint(straight / "weights" / "last.pt")
    b = read_checkpoint(resumed / "weights" / "last.pt")
    assert a["epoch"] == b["epoch"] == 2
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=0)
    rows = list(csv.DictReader(open(resumed / "results.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]


def test_resume_refuses_settings_it_would_drop(labelme_dir, tmp_path):
    run_training(_cfg(labelme_dir, tmp_path, "name=r", "epochs=1"), log=lambda *_: None)
    with pytest.raises(TrainingError, match=r"lr=0\.5 \(the run has"):
        run_training(_cfg(labelme_dir, tmp_path, "name=r", "epochs=2", "lr=0.5"), resume=True, log=print)
    last = read_checkpoint(tmp_path / "runs" / "r" / "weights" / "last.pt")
    assert last["epoch"] == 1  # nothing trained


def test_existing_run_needs_resume(labelme_dir, tmp_path):
    run_training(_cfg(labelme_dir, tmp_path, "name=x", "epochs=1"), log=lambda *_: None)
    with pytest.raises(TrainingError, match="--resume"):
        run_training(_cfg(labelme_dir, tmp_path, "name=x", "epochs=1"), log=lambda *_: None)


def test_nan_loss_stops_with_a_message(labelme_dir, tmp_path, monkeypatch):
    from polyrnn.modeling import losses

    real = losses.PolygonLoss.forward

    def poisoned(self, outputs, batch):
        out = real(self, outputs, batch)
        out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(losses.PolygonLoss, "forward", poisoned)
    with pytest.raises(TrainingError, match="non-finite loss .* at epoch 1, batch 0"):
        run_training(_cfg(labelme_dir, tmp_path, "name=nan"), log=lambda *_: None)


def test_bad_config_keys_and_values_are_named(labelme_dir, tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown config key 'model.bogus'"):
        load_train_config("tiny", ["model.bogus=1"])
    with pytest.raises(ValueError, match="config key 'epochs': expected an integer"):
        load_train_config("tiny", ["epochs=two"])
    with pytest.raises(ValueError, match="config key 'augment.flip': expected a number"):
        load_train_config("tiny", ["augment.flip=[1]"])
    with pytest.raises(ValueError, match="invalid model config field.*cell"):
        load_train_config("tiny", ["model.cell=rnn"])
    assert main(["train", "--config", "tiny", "lr=fast"]) == 2
    assert "config key 'lr'" in capsys.readouterr().err
    assert main(["train", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "no such config file" in capsys.readouterr().err


def test_train_samples_are_seeded_and_augmented(labelme_dir):
    insts = load_dataset(labelme_dir).instances
    ds = PolygonDataset(insts, train=True, seed=3)
    a, b = ds.sample(0), ds.sample(0)
    assert np.array_equal(a["image"], b["image"]) and np.array_equal(a["tokens"], b["tokens"])
    ds.set_epoch(1)
    differs = any(
        not np.array_equal(
            ds.sample(i)["tokens"], PolygonDataset(insts, train=True, seed=3).sample(i)["tokens"]
        )
        for i in range(len(insts))
    )
    assert differs
    batch = collate([ds[i] for i in range(3)])
    assert batch["images"].shape == (3, 3, 224, 224) and batch["tokens"].shape[0] == 3
    assert (batch["tokens"][torch.arange(3), batch["lengths"] - 1] == 28 * 28).all()
    s = ds.sample(1)
    assert s["vertices"].sum() == len(s["tokens"]) - 1 and s["boundary"].sum() >= s["vertices"].sum()


def test_init_weights_starts_from_a_checkpoint_and_fine_tunes_the_backbone(labelme_dir, tmp_path):
    frozen = run_training(_cfg(labelme_dir, tmp_path, "name=frozen", "epochs=1"), log=lambda *_: None)
    src = read_checkpoint(frozen / "weights" / "last.pt")["model"]
    lines = []
    ft = run_training(
        _cfg(
            labelme_dir,
            tmp_path,
            "name=ft",
            "epochs=1",
            "freeze_backbone=false",
            "backbone_lr=1e-5",
            f"init_weights={frozen / 'weights' / 'last.pt'}",
        ),
        log=lines.append,
    )
    assert any("initialised from" in str(x) for x in lines)
    ckpt = read_checkpoint(ft / "weights" / "last.pt")
    groups = ckpt["optimizer"]["param_groups"]
    assert [g["lr"] for g in groups] == [pytest.approx(1e-3), pytest.approx(1e-5)]  # head, backbone
    moved = [
        k
        for k in src
        if k.startswith("encoder.backbone")
        and src[k].is_floating_point()
        and not torch.equal(src[k], ckpt["model"][k])
    ]
    assert moved  # the backbone was trained, starting from the frozen run's weights
    # a mismatching checkpoint is refused with its name
    with pytest.raises(Exception, match="init_weights"):
        run_training(
            _cfg(
                labelme_dir,
                tmp_path,
                "name=bad",
                "epochs=1",
                "model.feat_channels=8",
                f"init_weights={frozen / 'weights' / 'last.pt'}",
            ),
            log=lambda *_: None,
        )
