"""Correction round trip in the browser (request -> new polygon on screen) with the shipped lite model.

Starts `polyrnn serve` on the demo photographs in-process, drives Debian's Chromium with Playwright: draws
a box on each demo image, then drags vertices (each drag = one correction) and reads the page's own
measurements (performance.now() from mouse-up to the frame after the new polygon is drawn).

    python benchmarks/browser_latency.py [--corrections 20] [--weights W]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from contextlib import ExitStack
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corrections", type=int, default=20)
    ap.add_argument("--weights", default=None)
    args = ap.parse_args()

    from playwright.sync_api import sync_playwright

    from polyrnn.predictor import PolygonPredictor
    from polyrnn.server.app import create_app
    from polyrnn.server.demo import demo_folder
    from polyrnn.server.http import running
    from polyrnn.server.store import AnnotationStore

    folder = demo_folder(Path(tempfile.mkdtemp()) / "demo")
    app = create_app(
        AnnotationStore(folder), PolygonPredictor.from_weights(args.weights), model_name="lite"
    )  # shipped models, default engine
    stack = ExitStack()
    url = stack.enter_context(running(app))

    boxes = {
        "astronaut.png": (150, 20, 370, 250),
        "chelsea.png": (60, 10, 330, 290),
        "coffee.png": (140, 20, 480, 280),
        "motorcycle_left.png": (20, 60, 620, 420),
    }
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(f"{url}/")
        done = 0
        stats: dict[str, list] = {"corrections": [], "predictions": []}
        names = [n for n in boxes if (folder / n).is_file()]
        while done < args.corrections:
            for name in names:
                page.goto(f"{url}/#{name}")
                page.reload()
                page.wait_for_selector(f"body[data-ready='{name}']")
                v = page.evaluate("() => window.polyrnn.state.view")
                vp = page.locator("#viewport").bounding_box()

                def at(x, y, v=v, vp=vp):
                    return vp["x"] + v["tx"] + x * v["scale"], vp["y"] + v["ty"] + y * v["scale"]

                x1, y1, x2, y2 = boxes[name]
                page.mouse.move(*at(x1, y1))
                page.mouse.down()
                page.mouse.move(*at(x2, y2), steps=5)
                page.mouse.up()
                page.wait_for_selector("#current-polygon")
                n = page.locator("circle.vertex").count()
                for i in range(1, min(n, 6)):
                    before = page.evaluate("() => window.polyrnn.stats.corrections.length")
                    c = page.locator(f"circle[data-vertex='{i}']").bounding_box()
                    cx, cy = c["x"] + c["width"] / 2, c["y"] + c["height"] / 2
                    page.mouse.move(cx, cy)
                    page.mouse.down()
                    page.mouse.move(cx + 12, cy + 8, steps=3)
                    page.mouse.up()
                    page.wait_for_function(f"window.polyrnn.stats.corrections.length > {before}")
                    done += 1
                page.keyboard.press("Escape")
                got = page.evaluate(
                    "() => window.polyrnn.stats"
                )  # a reload starts the page's own stats afresh
                stats["corrections"] += got["corrections"]
                stats["predictions"] += got["predictions"]
                if done >= args.corrections:
                    break
        browser.close()
    stack.close()
    corr = [c["ms"] for c in stats["corrections"]]
    srv = [c["server"] for c in stats["corrections"]]
    pred = [c["ms"] for c in stats["predictions"]]

    def q(a: list[float], f: float) -> float:
        return sorted(a)[min(len(a) - 1, int(f * len(a)))]

    print(
        f"corrections: {len(corr)}; round trip in the browser median {statistics.median(corr):.1f} ms, "
        f"p90 {q(corr, 0.9):.1f} ms, max {max(corr):.1f} ms "
        f"(server part median {statistics.median(srv):.1f} ms)"
    )
    print(f"box -> polygon: {len(pred)}; median {statistics.median(pred):.1f} ms, max {max(pred):.1f} ms")


if __name__ == "__main__":
    main()
