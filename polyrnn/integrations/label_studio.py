"""polyrnn as a Label Studio ML back end: ``polyrnn label-studio --port 9090``.

It speaks the HTTP protocol Label Studio's ML back ends speak (the one ``label_studio_ml``'s
``LabelStudioMLBase`` serves: ``GET /health``, ``POST /setup``, ``POST /predict``, ``POST /webhook``), so a
project connects to it under Settings > Model like any back end:

* ``predict``: each task's rectangles (its annotation's or prediction's ``rectanglelabels``) or, when a
  user draws a box with a smart tool, that rectangle (the request's ``context``) become ``polygonlabels``
  results in percent of the image, each with the confidence of :mod:`polyrnn.batch.annotate`;
* ``fit``: submitted polygons (webhooks ``ANNOTATION_CREATED`` / ``_UPDATED`` / ``_DELETED``) are kept in the
  work folder; ``START_TRAINING`` (the project's "Start training" button), or every ``fit_every`` new
  annotations, fine-tunes the mask model on them for ``fit_epochs`` epochs (a short, bounded job in a
  background thread), writes a new checkpoint and serves it under a new ``model_version``.

Images: a task's URL is resolved under ``images`` (``/data/local-files/?d=...``, uploads by file name), else
downloaded from Label Studio (``LABEL_STUDIO_URL`` and ``LABEL_STUDIO_API_KEY``, as its own back ends do).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse

from polyrnn.batch.boxes import ImageBoxes, label_studio_image, ls_box, ls_results
from polyrnn.data.instance import DataError, Skip, load_image
from polyrnn.data.writers import polygon_result
from polyrnn.io import atomic_write_json

TRAIN_EVENTS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATION_DELETED", "START_TRAINING")


@dataclass(frozen=True)
class Controls:
    """What a project's labelling config names: the PolygonLabels tag (``from_name``), the Image tag it
    points at (``to_name``), the task data key holding the image URL, and the polygon labels."""

    from_name: str
    to_name: str
    data_key: str
    labels: tuple[str, ...]


def parse_label_config(config: str) -> Controls:
    """The :class:`Controls` of a labelling config; ``ValueError`` naming what is missing."""
    try:
        root = ET.fromstring(config)
    except ET.ParseError as e:
        raise ValueError(f"label config is not XML ({e})") from None
    poly = next(root.iter("PolygonLabels"), None)
    if poly is None:
        raise ValueError("the label config has no <PolygonLabels> tag: polyrnn answers with polygons")
    to_name = poly.get("toName", "")
    image = next((e for e in root.iter("Image") if e.get("name") == to_name), None)
    if image is None:
        raise ValueError(f"<PolygonLabels toName={to_name!r}> names no <Image> tag")
    key = image.get("value", "$image").lstrip("$")
    labels = tuple(str(e.get("value")) for e in poly.iter("Label") if e.get("value") is not None)
    return Controls(poly.get("name", "label"), to_name, key, labels)


@dataclass
class LabelStudioBackend:
    """The back end's state: the models (loaded once), the work folder, the collected annotations.

    Args:
        work_dir: annotations collected for ``fit``, fine-tuning runs and ``state.json`` (the served mask
            weights and model version, so a restart serves the last fine-tuned model).
        images: folder where task images are found (optional; else they are downloaded).
        url, token: Label Studio's address and API key, for downloading task images.
        fit_epochs: epochs of each fine-tuning job (bounded: the job is short).
        fit_every: start a job after this many new annotations (0: only on START_TRAINING).
        fit_async: run jobs in a background thread (the webhook answers at once).
    """

    work_dir: Path
    images: Path | None = None
    url: str | None = None
    token: str | None = None
    fit_epochs: int = 2
    fit_every: int = 0
    fit_async: bool = True
    mask_weights: str | None = None
    _annotator: Any = field(default=None, init=False, repr=False)
    _lock: threading.RLock = field(default_factory=threading.RLock, init=False, repr=False)
    _training: threading.Thread | None = field(default=None, init=False, repr=False)
    _new: int = field(default=0, init=False)
    last_fit: dict[str, Any] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.work_dir = Path(self.work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        state = self._state()
        if state.get("mask_weights"):
            self.mask_weights = state["mask_weights"]

    # --- models ------------------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        path = self.work_dir / "state.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}

    @property
    def model_version(self) -> str:
        return str(self._state().get("model_version") or "polyrnn")

    def annotator(self) -> Any:
        with self._lock:
            if self._annotator is None:
                from polyrnn.batch.annotate import Annotator

                self._annotator = Annotator.from_weights(mask_weights=self.mask_weights)
            return self._annotator

    # --- images ------------------------------------------------------------------------------------
    def image_path(self, url: str) -> Path:
        """A task image's file: found under ``images``, or downloaded from Label Studio (kept in the work
        folder)."""
        local = label_studio_image(url, self.images) if self.images is not None else None
        if local is None and Path(url).is_file():
            local = Path(url)
        return local if local is not None else self._download(url)

    def _download(self, url: str) -> Path:
        full = url
        if not urllib.parse.urlparse(url).scheme:
            if not self.url:
                raise DataError(f"image '{url}' not found under --images and LABEL_STUDIO_URL is not set")
            full = self.url.rstrip("/") + "/" + url.lstrip("/")
        cache = self.work_dir / "images" / hashlib.sha1(full.encode()).hexdigest()
        if not cache.is_file():
            req = urllib.request.Request(
                full, headers={"Authorization": f"Token {self.token}"} if self.token else {}
            )
            try:
                with urllib.request.urlopen(req, timeout=30) as r:
                    data = r.read()
            except OSError as e:
                raise DataError(f"image '{full}' could not be downloaded ({e})") from None
            cache.parent.mkdir(parents=True, exist_ok=True)
            from polyrnn.io import atomic_write_bytes

            atomic_write_bytes(cache, data)
        return cache

    # --- predict -----------------------------------------------------------------------------------
    def predict(
        self, tasks: list[dict[str, Any]], *, label_config: str, context: dict[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        """One prediction per task: ``{"result": [polygonlabels...], "score", "model_version"}``; the boxes
        are the ``context``'s rectangles when given (interactive), else the task's own."""
        ctl = parse_label_config(label_config)
        return [self._predict_task(task, ctl, context) for task in tasks]

    def _predict_task(
        self, task: dict[str, Any], ctl: Controls, context: dict[str, Any] | None
    ) -> dict[str, Any]:
        data = task.get("data") or {}
        url = data.get(ctl.data_key)
        if not isinstance(url, str):
            raise DataError(f"task {task.get('id')}: data has no '{ctl.data_key}' (the Image tag's value)")
        path = self.image_path(url)
        image = load_image(path)
        h, w = image.shape[:2]
        source = [r for r in (context or {}).get("result") or [] if isinstance(r, dict)] or ls_results(task)
        skipped: list[Skip] = []
        where = f"task {task.get('id')} result"
        boxes = [b for k, r in enumerate(source) if (b := ls_box(r, f"{where}[{k}]", skipped))]
        pixel, _ = ImageBoxes(key=str(task.get("id")), path=path, objects=boxes, normalized=True).pixel_boxes(
            (w, h)
        )
        traced = self.annotator().annotate(image, [b for _, b in pixel]) if pixel else []
        results: list[dict[str, Any]] = []
        for (obj, box), t in zip(pixel, traced, strict=True):
            x1, y1, x2, y2 = box
            poly = t.polygon if t.polygon is not None else np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]])
            label = obj.class_name if obj.class_name in ctl.labels or not ctl.labels else ctl.labels[0]
            r = polygon_result(poly, label, (w, h), score=t.score, id=f"p{len(results)}")
            results.append({**r, "from_name": ctl.from_name, "to_name": ctl.to_name})
        score = float(np.mean([r["score"] for r in results])) if results else 0.0
        return {"result": results, "score": round(score, 4), "model_version": self.model_version}

    # --- fit ---------------------------------------------------------------------------------------
    def fit(self, event: str, data: dict[str, Any]) -> dict[str, Any]:
        """Keep a submitted annotation (or forget a deleted one); fine-tune on START_TRAINING or every
        ``fit_every`` new annotations. Returns what was done."""
        store = self.work_dir / "annotations.json"
        with self._lock:
            kept = json.loads(store.read_text(encoding="utf-8")) if store.is_file() else {}
            ann, task = data.get("annotation") or {}, data.get("task") or {}
            key = str(ann.get("id", task.get("id")))
            if event == "ANNOTATION_DELETED":
                kept.pop(key, None)
            elif event in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED"):
                polys = [r for r in ann.get("result") or [] if r.get("type") == "polygonlabels"]
                if polys:
                    kept[key] = {"data": task.get("data") or {}, "result": polys}
                    self._new += 1
            atomic_write_json(store, kept)
            due = event == "START_TRAINING" or (self.fit_every > 0 and self._new >= self.fit_every)
            if not due:
                return {"annotations": len(kept), "training": self.is_training()}
            if self.is_training():
                return {"annotations": len(kept), "training": True, "note": "a fine-tuning job is running"}
            self._new = 0
            job = threading.Thread(target=self._fit_job, args=(dict(kept),), daemon=True)
            self._training = job
            job.start()
        if not self.fit_async:
            job.join()
        return {"annotations": len(kept), "training": self.is_training(), "last_fit": self.last_fit}

    def is_training(self) -> bool:
        return self._training is not None and self._training.is_alive()

    def _fit_job(self, kept: dict[str, Any]) -> None:
        try:
            self.last_fit = self._fine_tune(kept)
        except Exception as e:  # a failed job must not take the back end down; it is reported
            self.last_fit = {"error": f"{type(e).__name__}: {e}"}

    def _fine_tune(self, kept: dict[str, Any]) -> dict[str, Any]:
        """Write the kept polygons as a COCO file, fine-tune the served mask model on them, serve it."""
        from polyrnn.build import default_weights
        from polyrnn.config import load_train_config
        from polyrnn.training import run_training

        n = int(self._state().get("fits", 0)) + 1
        folder = self.work_dir / "fit" / f"data-{n}"
        count = self._write_coco(kept, folder)
        if count == 0:
            return {"error": "no polygon annotation with a readable image to train on"}
        init = self.mask_weights or str(default_weights("lite-mask"))
        overrides = [
            f"data.train=[{folder / 'instances.json'}]",
            "data.val_split=0",
            f"init_weights={init}",
            f"epochs={self.fit_epochs}",
            "lr_step=0",
            f"out={self.work_dir / 'runs'}",
            f"name=fit-{n}",
            "workers=0",
        ]
        run = run_training(load_train_config("lite-mask-ft", overrides), log=lambda *_: None)
        weights = str(run / "weights" / "last.pt")
        version = f"polyrnn-fit-{n}"
        with self._lock:
            self.mask_weights, self._annotator = weights, None
            atomic_write_json(
                self.work_dir / "state.json", {"mask_weights": weights, "model_version": version, "fits": n}
            )
        return {"model_version": version, "weights": weights, "instances": count}

    def _write_coco(self, kept: dict[str, Any], folder: Path) -> int:
        """The kept annotations as ``folder/instances.json`` (:func:`polyrnn.data.writers.write_coco`; the
        images stay where they are); returns the objects written."""
        from polyrnn.data.common import image_size
        from polyrnn.data.instance import Instance
        from polyrnn.data.writers import write_coco

        insts: list[Instance] = []
        for item in kept.values():
            url = next((v for v in item["data"].values() if isinstance(v, str)), "")
            try:
                path = self.image_path(url)
                w, h = image_size(path)
            except DataError:
                continue
            for r in item["result"]:
                pts = np.asarray(r["value"]["points"], dtype=np.float64) / 100.0 * (w, h)
                x, y = pts.min(axis=0)
                bw, bh = pts.max(axis=0) - (x, y)
                label = (r["value"].get("polygonlabels") or ["object"])[0]
                insts.append(Instance(path, (w, h), label, (float(x), float(y), float(bw), float(bh)), [pts]))
        if insts:
            classes = sorted({i.class_name for i in insts})
            write_coco(insts, folder / "instances.json", root=folder, classes=classes, decimals=6)
        return len(insts)


def create_app(backend: LabelStudioBackend, *, basic_auth: tuple[str, str] | None = None) -> Any:
    """The HTTP app Label Studio calls (FastAPI)."""
    import hmac

    app = FastAPI(title="polyrnn Label Studio ML back end", docs_url=None, redoc_url=None)

    @app.middleware("http")
    async def _auth(request: Request, call_next: Any) -> Any:
        if basic_auth is not None:
            import base64

            got = request.headers.get("authorization", "")
            want = "Basic " + base64.b64encode(f"{basic_auth[0]}:{basic_auth[1]}".encode()).decode()
            if not hmac.compare_digest(got, want):
                return JSONResponse(
                    {"detail": "unauthorized"}, status_code=401, headers={"WWW-Authenticate": "Basic"}
                )
        return await call_next(request)

    @app.get("/")
    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "UP", "model_class": "polyrnn", "model_version": backend.model_version}

    @app.get("/metrics")
    def metrics() -> dict[str, Any]:
        return {}

    @app.post("/setup")
    async def setup(request: Request) -> dict[str, Any]:
        body = await request.json()
        try:
            parse_label_config(str(body.get("schema") or ""))
        except ValueError as e:
            raise HTTPException(400, str(e)) from None
        return {"model_version": backend.model_version}

    @app.post("/predict")
    async def predict(request: Request) -> dict[str, Any]:
        body = await request.json()
        params = body.get("params") or {}
        try:
            results = backend.predict(
                list(body.get("tasks") or []),
                label_config=str(body.get("label_config") or ""),
                context=params.get("context"),
            )
        except (ValueError, DataError) as e:
            raise HTTPException(400, str(e)) from None
        return {"results": results}

    @app.post("/webhook", status_code=201)
    async def webhook(request: Request) -> Any:
        body = await request.json()
        event = body.pop("action", None)
        if event not in TRAIN_EVENTS:
            return JSONResponse({"status": "Unknown event"}, status_code=200)
        return {"result": backend.fit(str(event), body), "status": "ok"}

    return app


def backend_from_env(**kw: Any) -> LabelStudioBackend:
    """A back end with Label Studio's address and key from ``LABEL_STUDIO_URL`` / ``LABEL_STUDIO_API_KEY``."""
    return LabelStudioBackend(
        url=os.environ.get("LABEL_STUDIO_URL"), token=os.environ.get("LABEL_STUDIO_API_KEY"), **kw
    )
