"""Where the tool reads images and keeps annotations: LabelMe JSON beside each image (or in an output
folder), written atomically, so killing the server mid-save never loses or corrupts work."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

from polyrnn.data.common import find_images
from polyrnn.io import atomic_write_json

LABELME_VERSION = "5.4.1"
DEFAULT_LABELS = ["object"]


class StoreError(ValueError):
    """A request the store refuses: unknown image, malformed annotation; the message says which."""


class AnnotationStore:
    """Images of ``image_dir`` (recursively, sorted) and their LabelMe JSON annotations.

    Args:
        image_dir: the folder served; only files inside it are ever read.
        out_dir: where the JSON files go (mirroring the image tree); default: beside each image.
    """

    def __init__(self, image_dir: str | Path, out_dir: str | Path | None = None) -> None:
        self.image_dir = Path(image_dir).resolve()
        if not self.image_dir.is_dir():
            raise StoreError(f"{image_dir}: not a folder")
        self.out_dir = Path(out_dir).resolve() if out_dir is not None else None
        self._lock = threading.Lock()
        self.refresh()

    def refresh(self) -> None:
        # hidden files and folders *inside* the image folder are skipped (the folder itself may be hidden)
        rel = [p.relative_to(self.image_dir) for p in find_images(self.image_dir)]
        self.names = [r.as_posix() for r in rel if not any(s.startswith(".") for s in r.parts)]
        self._known = set(self.names)

    def image_path(self, name: str) -> Path:
        """The file of a listed image; :class:`StoreError` for anything else (no path traversal)."""
        if name not in self._known:
            raise StoreError(f"unknown image '{name}'")
        path = (self.image_dir / name).resolve()
        if self.image_dir not in path.parents:
            raise StoreError(f"unknown image '{name}'")
        return path

    def json_path(self, name: str) -> Path:
        img = self.image_path(name)
        if self.out_dir is None:
            return img.with_suffix(".json")
        return (self.out_dir / name).with_suffix(".json")

    @property
    def root(self) -> Path:
        """Folder of the JSON files (and ``labels.json``)."""
        return self.out_dir or self.image_dir

    # --- annotations -------------------------------------------------------------------------------
    def load(self, name: str) -> dict[str, Any]:
        """``{"shapes": [{"label", "points", "shape_type"}...]}`` of an image (empty when none saved)."""
        path = self.json_path(name)
        if not path.is_file():
            return {"shapes": []}
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise StoreError(f"{path}: unreadable annotation file ({e})") from e
        shapes = [s for s in data.get("shapes", []) if isinstance(s, dict)]
        return {"shapes": shapes}

    def save(self, name: str, shapes: list[dict[str, Any]], size: tuple[int, int]) -> Path:
        """Write the image's LabelMe JSON atomically. ``size`` is (width, height)."""
        path = self.json_path(name)
        image = self.image_path(name)
        doc: dict[str, Any] = {
            "version": LABELME_VERSION,
            "flags": {},
            "shapes": [
                {
                    "label": s["label"],
                    "points": [[float(x), float(y)] for x, y in s["points"]],
                    "group_id": s.get("group_id"),
                    "description": s.get("description", ""),
                    "shape_type": "polygon",
                    "flags": {},
                }
                for s in shapes
            ],
            "imagePath": os.path.relpath(image, path.parent),
            "imageData": None,
            "imageHeight": int(size[1]),
            "imageWidth": int(size[0]),
        }
        with self._lock:
            atomic_write_json(path, doc)
        return path

    def count(self, name: str) -> int:
        path = self.json_path(name)
        if not path.is_file():
            return 0
        try:
            return len(self.load(name)["shapes"])
        except StoreError:
            return 0

    # --- labels ------------------------------------------------------------------------------------
    def labels(self) -> list[str]:
        path = self.root / "labels.json"
        if path.is_file():
            try:
                labels = json.loads(path.read_text(encoding="utf-8"))
                if isinstance(labels, list) and all(isinstance(v, str) for v in labels) and labels:
                    return labels
            except (OSError, json.JSONDecodeError):
                pass
        return list(DEFAULT_LABELS)

    def set_labels(self, labels: list[str]) -> list[str]:
        clean = [str(v).strip() for v in labels if str(v).strip()]
        if not clean:
            raise StoreError("the label list must hold at least one non-empty label")
        if len(set(clean)) != len(clean):
            raise StoreError("labels must be unique")
        with self._lock:
            atomic_write_json(self.root / "labels.json", clean)
        return clean
