"""Train ultralytics on a ``polyrnn predict --dataset`` YOLO output as it is (one epoch, CPU, tiny images).

Run it with a Python that has ultralytics (it needs torchvision, which does not import beside this machine's
local torch wheel, so use its own virtual environment), from any folder, with the data path relative:

    python benchmarks/ultralytics_check.py preds/yolo/data.yaml

It prints how many images and instances ultralytics read (``images=N instances=M``) and ``TRAINED``; a
dataset it cannot resolve raises ``FileNotFoundError`` naming the missing folder (what ``path: .`` gave).
"""

from __future__ import annotations

import os
import sys
import tempfile


def main(data: str) -> int:
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ultralytics import YOLO
    from ultralytics.data.utils import check_det_dataset

    info = check_det_dataset(data, autodownload=False)
    print(f"ultralytics resolves train={info['train']} with {info['nc']} classes")
    with tempfile.TemporaryDirectory() as runs:
        model = YOLO("yolo11n-seg.yaml")  # built from its YAML: nothing is downloaded
        model.train(
            data=data,
            epochs=1,
            imgsz=64,
            device="cpu",
            plots=False,
            workers=0,
            batch=2,
            amp=False,
            project=runs,
            name="check",
        )
        labels = model.trainer.train_loader.dataset.labels  # what ultralytics itself read
        print(f"images={len(labels)} instances={sum(len(x['cls']) for x in labels)}")
    print("TRAINED")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "preds/yolo/data.yaml"))
