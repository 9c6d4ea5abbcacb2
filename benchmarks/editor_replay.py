"""The editor is what is measured: replay the simulated annotator through the real HTTP server, sending the
requests the page sends, and through ``polyrnn evaluate``'s code; print the largest IoU difference per step.

    python benchmarks/editor_replay.py --limit 60

For each of the first N objects of coco-mini/val2017 (box long side >= 32 px, as the README's figures count
them), the clicks-to-quality annotator (:mod:`polyrnn.evaluation.clicks`) corrects the default engine's
polygon twice: once through :func:`polyrnn.evaluation.evaluate.evaluate_dataset` (the figures' code), once
through ``polyrnn serve``'s app on a loopback port (``POST /api/sessions``, then ``POST /api/sessions/{id}``
with ``move`` / ``insert`` by vertex id and the session's version, exactly the page's calls; a further part
of an object is a new box's session, as the page's P joins it). The difference must be 0 at every step; the
exit status is 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

DATASET = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "coco-mini" / "val2017"


class HttpEditor:
    """The editor's server seen as the annotator sees it (:class:`polyrnn.evaluation.clicks.Editor`): every
    call is one HTTP request the page also sends; the polygon is the server's, never rounded."""

    def __init__(self, url: str, image: str, box: tuple[float, float, float, float]) -> None:
        self.url = url
        self.state = self._call("/api/sessions", {"image": image, "box": list(box)})
        self.long_side = float(max(box[2] - box[0], box[3] - box[1]))
        self.requests = 1

    def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        req = urllib.request.Request(
            self.url + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=120) as r:
            return json.loads(r.read())  # type: ignore[no-any-return]

    @property
    def polygon(self) -> np.ndarray:
        return np.asarray(self.state["polygon"], dtype=np.float64).reshape(-1, 2)

    @property
    def fixed(self) -> np.ndarray:
        return np.asarray(self.state["fixed"], dtype=bool)

    def _op(self, op: str, index: int, xy: tuple[float, float]) -> None:
        s = self.state
        body = {"version": s["version"], "op": op, "vertex": s["ids"][index], "point": [xy[0], xy[1]]}
        self.state = self._call(f"/api/sessions/{s['session']}", body)
        self.requests += 1

    def move(self, index: int, xy: tuple[float, float]) -> None:
        self._op("move", index, xy)

    def insert(self, edge: int, xy: tuple[float, float]) -> None:
        self._op("insert", edge, xy)


class HttpObject:
    """An object in parts as the editor makes it (:class:`polyrnn.evaluation.clicks.Parts`): a further part is
    a new box, its own session on the server (``POST /api/sessions``), which the page joins to the object
    before it with P; each part is corrected through its own session."""

    def __init__(self, url: str, image: str, box: tuple[float, float, float, float]) -> None:
        self.url, self.image = url, image
        self.parts = [HttpEditor(url, image, box)]

    @property
    def long_side(self) -> float:
        return self.parts[0].long_side

    @property
    def requests(self) -> int:
        return sum(p.requests for p in self.parts)

    def add_part(self, box: tuple[float, float, float, float]) -> HttpEditor:
        part = HttpEditor(self.url, self.image, box)
        self.parts.append(part)
        return part


def replay(
    dataset: Path, limit: int, corrections: int, min_size: float = 32.0, first: int = 0
) -> dict[str, Any]:
    """IoU curves of ``limit`` objects from the ``first`` on through evaluate and through HTTP, and their
    differences; ``parts``: how many objects were given a further part through HTTP."""
    from polyrnn.build import load_models
    from polyrnn.evaluation.clicks import clicks_to_quality
    from polyrnn.evaluation.evaluate import EvalOptions, evaluate_dataset
    from polyrnn.formats import load_dataset
    from polyrnn.predictor import PolygonPredictor
    from polyrnn.server.app import create_app
    from polyrnn.server.http import running
    from polyrnn.server.store import AnnotationStore

    ds = load_dataset(dataset, min_size=min_size)
    insts = ds.instances[first : first + limit]
    models = load_models()
    engine = PolygonPredictor(models.polygon, mask_model=models.mask, refiner=models.refiner).engine.name
    options = EvalOptions(
        thresholds=(),
        baselines=(),
        max_corrections=corrections,
        start="mask",
        engines=(engine,),
    )
    t0 = time.perf_counter()
    results = evaluate_dataset(models.polygon, insts, options, mask_model=models.mask, refiner=models.refiner)
    seconds_eval = time.perf_counter() - t0
    image_root = Path(insts[0].image_path).parent
    store = AnnotationStore(image_root, Path(_scratch()))
    predictor = PolygonPredictor(models.polygon, mask_model=models.mask, refiner=models.refiner)
    http_curves, requests, parts = [], 0, 0
    t0 = time.perf_counter()
    with running(create_app(store, predictor)) as url:
        for inst in insts:
            name = Path(inst.image_path).resolve().relative_to(image_root.resolve()).as_posix()
            editor = HttpObject(url, name, inst.box_xyxy)
            curve = clicks_to_quality(
                editor,
                inst.mask(),
                inst.ignore_mask(),
                max_corrections=corrections,
                near=options.near,
                min_part=options.min_part,
            )
            http_curves.append(curve)
            requests += editor.requests
            parts += len(editor.parts) > 1
    seconds_http = time.perf_counter() - t0
    evaluated = np.array([r.curves[engine] for r in results])
    served = np.array(http_curves)
    diff = np.abs(evaluated - served)
    return {
        "objects": len(insts),
        "engine": engine,
        "evaluate": evaluated,
        "http": served,
        "max_diff_per_step": diff.max(axis=0),
        "identical_objects": int((diff.max(axis=1) <= 1e-6).sum()),
        "requests": requests,
        "parts": parts,
        "seconds": (seconds_eval, seconds_http),
    }


def _scratch() -> str:
    import tempfile

    return tempfile.mkdtemp(prefix="polyrnn-replay-")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default=str(DATASET))
    ap.add_argument("--limit", type=int, default=60)
    ap.add_argument("--corrections", type=int, default=10)
    ap.add_argument("--min-size", type=float, default=32.0)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    r = replay(Path(args.dataset), args.limit, args.corrections, args.min_size)
    ev, ht = r["evaluate"], r["http"]
    print(
        f"{r['objects']} objects, engine {r['engine']}, {args.corrections} corrections; {r['requests']} HTTP "
        f"requests; evaluate {r['seconds'][0]:.0f} s, HTTP {r['seconds'][1]:.0f} s"
    )
    print("step  mean IoU evaluate  mean IoU editor (HTTP)  largest difference  >= 90 % (evaluate / editor)")
    for k in range(ev.shape[1]):
        print(
            f"{k:>4}  {100 * ev[:, k].mean():>17.2f}  {100 * ht[:, k].mean():>22.2f}  "
            f"{r['max_diff_per_step'][k]:>18.2e}  {100 * (ev[:, k] >= 0.9).mean():>5.1f} / "
            f"{100 * (ht[:, k] >= 0.9).mean():.1f}"
        )
    print(f"objects ending with the same curve: {r['identical_objects']} of {r['objects']}")
    return 0 if float(r["max_diff_per_step"].max()) <= 1e-6 else 1


if __name__ == "__main__":
    sys.exit(main())
