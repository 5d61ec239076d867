"""The screenshots of docs/explore.md: each view of an explorer page, and TensorBoard on the run.

    python benchmarks/explore_shots.py PAGE.html --prefix "ROMEO:" --select 120,127 [--logdir runs --port 6199]

Opens PAGE.html in headless Chromium (tests/browser.py), types the prefix, hovers a character
of the surprisal view, selects a span in the match view, and writes docs/img/explore_<view>.png;
with --logdir, serves it with TensorBoard on 127.0.0.1 and writes docs/img/tensorboard_scalars.png.
Pictures are cropped and reduced to a 64-colour palette to keep the docs small.
"""
from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
IMG = ROOT / "docs" / "img"


def save(page, name: str, height: int = 640, width: int = 1100) -> None:
    from PIL import Image

    path = IMG / f"{name}.png"
    page.screenshot(path=str(path), clip={"x": 0, "y": 0, "width": width, "height": height})
    Image.open(path).convert("RGB").quantize(64).save(path, optimize=True)
    print(f"{path.relative_to(ROOT)}: {path.stat().st_size // 1000} KB")


def shoot_page(browser, page_path: Path, prefix: str, select: tuple[int, int], hover: int) -> None:
    from tests.browser import open_page

    o = open_page(browser, page_path.resolve().as_uri(), viewport=(1100, 720))
    page = o.page
    page.wait_for_selector("body[data-ready='1']", state="attached", timeout=300_000)
    page.fill("#prefix", prefix)
    save(page, "explore_typeahead", 520)
    page.click("#tabs button[data-view=surprisal]")
    span = page.locator("#surprisal-text span").nth(hover)
    span.scroll_into_view_if_needed()
    span.hover()
    save(page, "explore_surprisal")
    page.mouse.move(0, 0)
    page.click("#tabs button[data-view=units]")
    save(page, "explore_units")
    page.click("#tabs button[data-view=saturation]")
    save(page, "explore_saturation", 720)
    page.click("#tabs button[data-view=match]")
    page.evaluate(f"rnnExplore.select({select[0]}, {select[1]})")
    save(page, "explore_match")
    page.click("#tabs button[data-view=gradflow]")
    save(page, "explore_gradflow", 600)
    assert o.errors == [], o.errors
    page.close()


def shoot_tensorboard(browser, logdir: str, port: int) -> None:
    from tests.browser import open_page

    server = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", logdir, "--host", "127.0.0.1",
                               "--port", str(port), "--load_fast", "false"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(120):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        o = open_page(browser, f"http://127.0.0.1:{port}/#scalars", viewport=(1100, 640), block_network=False)
        o.page.wait_for_selector("text=loss/cross_entropy", timeout=120_000)
        time.sleep(3)  # the charts draw after their cards appear
        save(o.page, "tensorboard_scalars")
        o.page.close()
    finally:
        server.terminate()
        server.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("page", type=Path)
    ap.add_argument("--prefix", default="")
    ap.add_argument("--select", default="100,104", help="START,END characters to select in the match view")
    ap.add_argument("--hover", type=int, default=40, help="the character to hover in the surprisal view")
    ap.add_argument("--logdir")
    ap.add_argument("--port", type=int, default=6199)
    args = ap.parse_args()
    from tests.browser import chromium

    with chromium() as browser:
        a, b = map(int, args.select.split(","))
        shoot_page(browser, args.page, args.prefix.replace("\\n", "\n"), (a, b), args.hover)
        if args.logdir:
            shoot_tensorboard(browser, args.logdir, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
