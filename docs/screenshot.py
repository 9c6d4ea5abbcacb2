"""Make ``docs/editor.png``, the README's picture of the editor: the shipped models on a demo photograph,
driven in Debian's Chromium as the browser test drives it (a box, then one vertex dragged).

    python docs/screenshot.py [--out docs/editor.png]
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "editor.png"))
    args = ap.parse_args()

    from PIL import Image
    from playwright.sync_api import sync_playwright

    from polyrnn.predictor import PolygonPredictor
    from polyrnn.server.app import create_app
    from polyrnn.server.demo import demo_folder
    from polyrnn.server.http import running
    from polyrnn.server.store import AnnotationStore

    folder = demo_folder(Path(tempfile.mkdtemp()) / "demo")
    app = create_app(AnnotationStore(folder), PolygonPredictor.from_weights(), model_name="shipped lite")
    stack = ExitStack()
    url = stack.enter_context(running(app))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1000, "height": 640})
        page.goto(f"{url}/#motorcycle_left.png")
        page.wait_for_selector("body[data-ready='motorcycle_left.png']")

        def screen(x: float, y: float) -> tuple[float, float]:
            v = page.evaluate("() => JSON.parse(JSON.stringify(window.polyrnn.state.view))")
            vp = page.locator("#viewport").bounding_box()
            assert vp is not None
            return vp["x"] + v["tx"] + x * v["scale"], vp["y"] + v["ty"] + y * v["scale"]

        page.mouse.move(*screen(96, 82))
        page.mouse.down()
        page.mouse.move(*screen(690, 456), steps=8)
        page.mouse.up()
        page.wait_for_function("() => window.polyrnn.state.cur && !window.polyrnn.state.busy")
        time.sleep(0.3)
        png = page.screenshot()
        browser.close()
    stack.close()
    img = Image.open(io.BytesIO(png)).convert("P", palette=Image.Palette.ADAPTIVE, colors=128)
    img.save(args.out, optimize=True)
    print(f"wrote {args.out} ({Path(args.out).stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
