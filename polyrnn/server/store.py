"""Where the tool reads images and keeps annotations: LabelMe JSON beside each image (or in an output
folder), written atomically, so killing the server mid-save never loses or corrupts work.

Round trip: a LabelMe file is read as it is (every shape type labelme writes, any label, unknown keys) and
written back with everything the editor did not change: other shapes, ``group_id``, ``flags``,
``description``, ``imageData`` and unknown keys, top level and per shape. A file that cannot be parsed is
never overwritten unless the caller says so (it is then kept beside as ``<name>.unreadable-<time>``).

Names: one annotation file per image. Two images sharing a stem in one folder (``pair.jpg``, ``pair.png``)
get ``pair.jpg.json`` and ``pair.png.json``; labelme's ``pair.json`` is still read for the image its
``imagePath`` names. The tool's own state (label list, exports) lives in a hidden ``.polyrnn/`` folder, never
listed as images or annotations.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from polyrnn.data.common import find_images
from polyrnn.io import atomic_write_json, atomic_write_text
from polyrnn.server.schemas import MAX_LABEL, MAX_LABELS, Shape

LABELME_VERSION = "5.4.1"
DEFAULT_LABELS = ["object"]
STATE_DIR = ".polyrnn"


class StoreError(ValueError):
    """A request the store refuses: unknown image, malformed annotation; the message says which."""


class UnknownImage(StoreError):
    """An image name that is not listed."""


class UnreadableFile(StoreError):
    """An existing annotation file that cannot be parsed: saving over it needs ``replace_unreadable``.
    ``version`` is the file's version all the same (a save that replaces it must start from it)."""

    def __init__(self, message: str, version: str = "") -> None:
        super().__init__(message)
        self.version = version


class StaleVersion(StoreError):
    """A save that started from another version of the file than the one on disk (another tab, another
    tool): nothing was written; reload or merge."""


class StorageError(OSError):
    """The disk refused a write (read-only, full, permissions): nothing was changed."""


class AnnotationStore:
    """Images of ``image_dir`` (recursively, sorted) and their LabelMe JSON annotations.

    Args:
        image_dir: the folder served; only files inside it are ever read (symlinks leading out are skipped,
            with a line in :attr:`warnings`).
        out_dir: where the JSON files go (mirroring the image tree); default: beside each image.
    """

    def __init__(self, image_dir: str | Path, out_dir: str | Path | None = None) -> None:
        self.image_dir = Path(image_dir).resolve()
        if not self.image_dir.is_dir():
            raise StoreError(f"{image_dir}: not a folder")
        self.out_dir = Path(out_dir).resolve() if out_dir is not None else None
        self._lock = threading.Lock()
        self.warnings: list[str] = []
        self.refresh()
        self.cleaned = self._clean_temporaries()

    def refresh(self) -> None:
        """List the images: hidden files and folders inside the image folder are skipped (the folder itself
        may be hidden), and so are links that lead out of it."""
        names: list[str] = []
        self.warnings = []
        for p in find_images(self.image_dir):
            rel = p.relative_to(self.image_dir)
            if any(s.startswith(".") for s in rel.parts):
                continue
            if self.image_dir not in p.resolve().parents:
                self.warnings.append(f"{p}: a link leading out of {self.image_dir}: skipped")
                continue
            if not encodable(rel.as_posix()):
                shown = os.fsencode(rel.as_posix()).decode("utf-8", "replace")
                self.warnings.append(f"{shown}: the file name is not UTF-8 text: skipped (rename it)")
                continue
            names.append(rel.as_posix())
        self.names = names
        self._known = set(names)
        stems: dict[tuple[str, str], int] = defaultdict(int)
        for n in names:
            stems[(str(Path(n).parent), Path(n).stem)] += 1
        self._shared = {n for n in names if stems[(str(Path(n).parent), Path(n).stem)] > 1}

    def _clean_temporaries(self) -> int:
        """Remove the temporary files of saves that a killed server left behind; returns how many."""
        n = 0
        for folder in {self.root, self.state_dir}:
            if not folder.is_dir():
                continue
            for tmp in folder.rglob(".*.tmp"):
                try:
                    tmp.unlink()
                    n += 1
                except OSError:
                    pass
        return n

    @property
    def root(self) -> Path:
        """Folder of the JSON files."""
        return self.out_dir or self.image_dir

    @property
    def state_dir(self) -> Path:
        """The tool's own state: label list, exports."""
        return self.root / STATE_DIR

    def image_path(self, name: str) -> Path:
        """The file of a listed image; :class:`UnknownImage` for anything else (no path traversal)."""
        if name not in self._known:
            raise UnknownImage(f"unknown image '{name}'")
        path = (self.image_dir / name).resolve()
        if self.image_dir not in path.parents:
            raise UnknownImage(f"unknown image '{name}'")
        return path

    def json_path(self, name: str) -> Path:
        """Where the image's annotations are saved."""
        img = self.image_path(name)
        base = (self.out_dir / name) if self.out_dir is not None else img
        if name in self._shared:  # another image has this stem: keep the extension in the name
            return base.with_name(base.name + ".json")
        return base.with_suffix(".json")

    def _read_path(self, name: str) -> Path:
        """The file to read: :meth:`json_path`, or labelme's ``<stem>.json`` when it names this image."""
        path = self.json_path(name)
        if path.is_file() or name not in self._shared:
            return path
        plain = path.with_name(Path(name).stem + ".json")
        try:
            doc = json.loads(plain.read_text(encoding="utf-8"))
            if Path(str(doc.get("imagePath", ""))).name == Path(name).name:
                return plain
        except (OSError, ValueError, AttributeError):
            pass
        return path

    def annotation_file(self, name: str) -> Path:
        """The file the image's annotations are read from (it may not exist yet)."""
        return self._read_path(name)

    # --- annotations -------------------------------------------------------------------------------
    def read_document(self, name: str) -> dict[str, Any] | None:
        """The image's LabelMe document as it is on disk; None when there is none; :class:`UnreadableFile`
        when it cannot be parsed."""
        return self._read(name)[0]

    def _read(self, name: str) -> tuple[dict[str, Any] | None, str]:
        """(document or None, version): the version is a hash of the file's bytes ("" without a file)."""
        path = self._read_path(name)
        if not path.is_file():
            return None, ""
        try:
            raw = path.read_bytes()
        except OSError as e:
            raise UnreadableFile(f"{path.name}: cannot be read ({e.strerror or e})") from e
        version = hashlib.sha256(raw).hexdigest()[:16]
        try:
            doc = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            why = f"{path.name}: cannot be read as JSON ({e.__class__.__name__}: {e})"
            raise UnreadableFile(why, version) from e
        if not isinstance(doc, dict) or not isinstance(doc.get("shapes", []), list):
            raise UnreadableFile(f"{path.name}: not a LabelMe file (field 'shapes' is not a list)", version)
        return doc, version

    def version(self, name: str) -> str:
        """The version of the image's annotation file now (what a save must start from)."""
        try:
            return self._read(name)[1]
        except UnreadableFile as e:
            return e.version

    def load(self, name: str) -> dict[str, Any]:
        """``{"shapes": [...], "error": None, "version": v}``: every shape of the file in its order, with all
        its fields; a shape the editor cannot show (a field of an unexpected type, NaN or 3-number points,
        too many points, text that is not UTF-8, not an object at all) comes as a read-only stand-in
        ``{"label", "points": [], "shape_type": "kept", KEPT: index, "why"}`` and is written back unchanged
        by :meth:`save`. A file that cannot be parsed gives ``{"shapes": [], "error": message, "version": v}``
        (it is then never overwritten without ``replace_unreadable``)."""
        try:
            doc, version = self._read(name)
        except UnreadableFile as e:
            return {"shapes": [], "error": str(e), "version": e.version}
        raw = (doc or {}).get("shapes", [])
        return {"shapes": [_shown(s, i) for i, s in enumerate(raw)], "error": None, "version": version}

    def save(
        self,
        name: str,
        shapes: list[dict[str, Any]],
        size: tuple[int, int],
        *,
        replace_unreadable: bool = False,
        version: str | None = None,
    ) -> tuple[Path, str]:
        """Write the image's shapes into its LabelMe JSON, atomically, keeping every other field of the
        existing file; returns (path, new version). ``size`` is (width, height), written only where the
        file has none. A shape ``{KEPT: i}`` (the stand-in :meth:`load` gave) is the file's shape ``i``,
        written back as it is.

        Args:
            version: the version the caller's shapes started from (:meth:`load`); when the file on disk
                has another, nothing is written (:class:`StaleVersion`). None: write whatever is there
                (scripts; then stand-ins are refused).

        Raises :class:`UnreadableFile` (existing file unparseable, ``replace_unreadable`` False),
        :class:`StaleVersion`, :class:`StoreError` (a stand-in that names no shape) and
        :class:`StorageError` (the disk refused the write; the old file is intact)."""
        path = self.json_path(name)
        image = self.image_path(name)
        with self._lock:
            unreadable: UnreadableFile | None = None
            try:
                old, now = self._read(name)  # read once: the version checked is the document kept from
            except UnreadableFile as e:
                old, now, unreadable = None, e.version, e
            if version is not None and version != now:
                raise StaleVersion(
                    f"the annotations of '{name}' changed since this page read them (another tab or tool "
                    "saved them): nothing was saved; reload, or merge yours into theirs"
                )
            if unreadable is not None:
                if not replace_unreadable:
                    raise unreadable
                self._keep_unreadable(self._read_path(name))
            before = (old or {}).get("shapes", [])
            written = []
            for s in shapes:
                if KEPT in s:
                    k = s[KEPT]
                    if version is None or not isinstance(k, int) or not 0 <= k < len(before):
                        raise StoreError(f"a kept shape names shape {k!r}, which the file does not have")
                    written.append(before[k])
                else:
                    written.append(_shape(s))
            doc: dict[str, Any] = dict(old) if old is not None else {"version": LABELME_VERSION, "flags": {}}
            doc["shapes"] = written
            doc.setdefault("imagePath", os.path.relpath(image, path.parent))
            doc.setdefault("imageData", None)
            doc.setdefault("imageHeight", int(size[1]))
            doc.setdefault("imageWidth", int(size[0]))
            text = json.dumps(doc, indent=2) + "\n"
            try:
                atomic_write_text(path, text)
            except OSError as e:
                raise StorageError(e.errno, f"{path}: not saved ({e.strerror or e})") from e
        return path, hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]

    def _keep_unreadable(self, path: Path) -> None:
        if path.is_file():
            try:
                os.replace(path, path.with_name(f"{path.name}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}"))
            except OSError as e:
                raise StorageError(e.errno, f"{path}: could not be moved aside ({e.strerror or e})") from e

    def _shapes(self, name: str) -> list[Any]:
        """The file's shapes as they are on disk (none when it is missing or cannot be parsed)."""
        try:
            doc, _ = self._read(name)
        except UnreadableFile:
            return []
        return list((doc or {}).get("shapes", []))

    def count(self, name: str) -> int:
        return len(self._shapes(name))

    # --- labels ------------------------------------------------------------------------------------
    def labels(self) -> list[str]:
        """The tool's label list (``.polyrnn/labels.json``); before one is saved, the labels the folder's
        annotation files already use (first seen first), else ``["object"]``."""
        for path in (self.state_dir / "labels.json", self._legacy_labels()):
            if path is not None and path.is_file():
                try:
                    labels = json.loads(path.read_text(encoding="utf-8"))
                    if isinstance(labels, list) and labels and all(isinstance(v, str) for v in labels):
                        clean = [v for v in labels if _label_ok(v)]  # one stored before they were checked
                        if clean:
                            return clean[:MAX_LABELS]
                except (OSError, ValueError):
                    pass
        seen: dict[str, None] = {}
        for name in self.names:
            for s in self._shapes(name):
                label = s.get("label") if isinstance(s, dict) else None
                if isinstance(label, str) and label.strip() and _label_ok(label):
                    seen.setdefault(label, None)
        return list(seen)[:MAX_LABELS] or list(DEFAULT_LABELS)

    def _legacy_labels(self) -> Path | None:
        """``labels.json`` in the root, where earlier versions kept the list (unless an image owns it)."""
        if any(Path(n).stem == "labels" and Path(n).parent == Path(".") for n in self.names):
            return None
        return self.root / "labels.json"

    def set_labels(self, labels: list[str]) -> list[str]:
        clean = [str(v).strip() for v in labels if str(v).strip()]
        if not all(encodable(v) for v in clean):
            raise StoreError("labels must be UTF-8 text")
        if not clean:
            raise StoreError("the label list must hold at least one non-empty label")
        if len(set(clean)) != len(clean):
            raise StoreError("labels must be unique")
        with self._lock:
            try:
                atomic_write_json(self.state_dir / "labels.json", clean)
            except OSError as e:
                raise StorageError(e.errno, f"labels not saved ({e.strerror or e})") from e
        return clean


KEPT = "polyrnn_kept"  # a stand-in's key: the index of the file's shape it stands for


def encodable(text: str) -> bool:
    """``text`` can be written as UTF-8 (no lone surrogates: a file name that is not UTF-8, ``"\\ud800"``)."""
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _label_ok(label: str) -> bool:
    return encodable(label) and 0 < len(label) <= MAX_LABEL


def _shown(shape: Any, index: int) -> dict[str, Any]:
    """The shape as the page gets it: as it is when the editor can show it (the schema's
    :class:`~polyrnn.server.schemas.Shape`, and JSON without NaN or unencodable text), else a read-only
    stand-in naming its index and why."""
    why = "not an object"
    if isinstance(shape, dict):
        try:
            json.dumps(shape, allow_nan=False, ensure_ascii=False).encode("utf-8")
            Shape.model_validate(shape, strict=True)  # strict: nothing shown differs from the file
            return shape
        except ValidationError as e:
            first = e.errors()[0]
            why = f"{'.'.join(str(v) for v in first.get('loc', ()))}: {first.get('msg', '')}"
        except (ValueError, TypeError, RecursionError) as e:
            why = f"holds values that are not JSON text ({e.__class__.__name__})"
    label = shape.get("label") if isinstance(shape, dict) else None
    label = label if isinstance(label, str) and encodable(label) and len(label) <= MAX_LABEL else ""
    return {"label": label, "points": [], "shape_type": "kept", KEPT: index, "why": why[:300]}


def _shape(s: dict[str, Any]) -> dict[str, Any]:
    """A shape as written: every field it came with, nothing added, points as numbers."""
    out = dict(s)
    out["points"] = [[float(x), float(y)] for x, y in s["points"]]
    return out
