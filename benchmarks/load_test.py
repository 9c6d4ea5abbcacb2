"""Load test of ``polyrnn serve``: concurrent clients predicting, correcting and saving on 127.0.0.1.

    python benchmarks/load_test.py --clients 50 --seconds 30

Starts ``polyrnn serve`` (the shipped models) in a subprocess on a folder of copies of a demo photograph, one
image per client. Each client loops: a box -> polygon, a dragged vertex -> correction, a save of all its
polygons so far. Afterwards every image's file must hold exactly the client's last acknowledged save (no lost
save). Prints requests/s, p50 / p95 latency per kind, and errors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np


async def client(
    i: int, url: str, stop: float, lat: dict[str, list[float]], errors: list[str], acked: dict[str, list]
) -> None:
    name = f"img{i:03d}.png"
    shapes: list[dict] = []
    rng = np.random.default_rng(i)
    async with httpx.AsyncClient(base_url=url, timeout=120) as c:
        while time.perf_counter() < stop:
            x, y = rng.uniform(40, 200, 2)
            box = [float(x), float(y), float(x + rng.uniform(120, 250)), float(y + rng.uniform(120, 200))]
            t0 = time.perf_counter()
            r = await c.post("/api/sessions", json={"image": name, "box": box})
            lat["predict"].append(time.perf_counter() - t0)
            if r.status_code != 200:
                errors.append(f"predict {r.status_code} {r.text[:100]}")
                continue
            s = r.json()
            poly = s["polygon"]
            k = len(poly) // 2
            point = [poly[k][0] + 5.0, poly[k][1] + 5.0]
            body = {"version": s["version"], "op": "move", "vertex": s["ids"][k], "point": point}
            t0 = time.perf_counter()
            r = await c.post(f"/api/sessions/{s['session']}", json=body)
            lat["correct"].append(time.perf_counter() - t0)
            if r.status_code != 200:
                errors.append(f"correct {r.status_code} {r.text[:100]}")
                continue
            shapes.append({"label": f"c{i}", "points": r.json()["polygon"], "shape_type": "polygon"})
            t0 = time.perf_counter()
            r = await c.put(f"/api/annotations/{name}", json={"shapes": shapes})
            lat["save"].append(time.perf_counter() - t0)
            if r.status_code != 200:
                errors.append(f"save {r.status_code} {r.text[:100]}")
                continue
            acked[name] = [s["points"] for s in shapes]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--threads", type=int, default=1, help="the server's torch threads")
    args = ap.parse_args()
    from polyrnn.server.demo import demo_folder

    folder = Path(tempfile.mkdtemp()) / "load"
    folder.mkdir()
    src = demo_folder(Path(tempfile.mkdtemp()) / "demo") / "coffee.png"
    for i in range(args.clients):
        shutil.copyfile(src, folder / f"img{i:03d}.png")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "POLYRNN_THREADS": str(args.threads)}
    server = subprocess.Popen(
        [sys.executable, "-m", "polyrnn.cli", "serve", str(folder), "--port", str(port)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        lat: dict[str, list[float]] = {"predict": [], "correct": [], "save": []}
        errors: list[str] = []
        acked: dict[str, list] = {}
        t0 = time.perf_counter()
        stop = t0 + args.seconds

        async def run() -> None:
            await asyncio.gather(*(client(i, url, stop, lat, errors, acked) for i in range(args.clients)))

        asyncio.run(run())
        wall = time.perf_counter() - t0
    finally:
        server.terminate()
        server.wait(timeout=30)
    lost = []
    for name, polys in acked.items():
        doc = json.loads((folder / name).with_suffix(".json").read_text())
        if [s["points"] for s in doc["shapes"]] != polys:
            lost.append(name)
    total = sum(len(v) for v in lat.values())
    print(f"{args.clients} clients, {wall:.1f} s, server with {args.threads} torch thread(s), 2-core CPU")
    print(
        f"requests: {total} ({total / wall:.1f}/s); errors: {len(errors)}; lost saves: {len(lost)} of "
        f"{len(acked)} images"
    )
    for kind, v in lat.items():
        if v:
            ms = np.array(v) * 1000
            print(
                f"  {kind:8s} {len(v):5d} requests  p50 {np.percentile(ms, 50):7.0f} ms  "
                f"p95 {np.percentile(ms, 95):7.0f} ms"
            )
    for e in errors[:5]:
        print("  error:", e)


if __name__ == "__main__":
    main()
