"""Demo photographs for ``polyrnn serve`` without an image folder: the sample images scikit-image
ships (local files of an installed package; nothing is downloaded), copied into a writable folder."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

DEMO_IMAGES = ("astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png")


def demo_folder(target: str | Path | None = None) -> Path:
    """A folder holding the demo images (created once; annotations are saved there)."""
    try:
        import skimage
    except ImportError as e:
        raise RuntimeError(
            "polyrnn serve without IMAGE_DIR shows scikit-image's sample photographs: "
            "pip install 'polyrnn[serve]' (or pass an image folder)"
        ) from e
    src = Path(skimage.__file__).resolve().parent / "data"
    home = Path(os.environ.get("POLYRNN_HOME", Path.home() / ".cache" / "polyrnn"))
    out = Path(target) if target is not None else home / "demo"
    out.mkdir(parents=True, exist_ok=True)
    for name in DEMO_IMAGES:
        if (src / name).is_file() and not (out / name).exists():
            shutil.copyfile(src / name, out / name)
    return out
