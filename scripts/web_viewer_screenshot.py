#!/usr/bin/env python3
"""A 1400x900 screenshot of `ctdiffusion view` on a demo output (the picture at the top of docs/web.md).

    python scripts/web_viewer_screenshot.py DEMO_OUT docs/images/web_viewer.png

Starts the viewer on the demo's run, held-out real set, generated set and report, opens it in Debian's headless
Chromium (Testing/headless_chromium.py), waits until both slice views have rendered and saves the page.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "Testing")]
from headless_chromium import HeadlessChromium  # noqa: E402
from test_web import IMAGES_LOADED, Server  # noqa: E402


async def shoot(demo: Path, out: Path) -> None:
    server = Server(str(demo / "run"), "--real", str(demo / "data" / "heldout"), "--generated",
                    str(demo / "generated"), "--report", str(demo / "report"))
    try:
        async with HeadlessChromium(1400, 900) as page:
            await page.navigate(server.url)
            await page.wait_for(IMAGES_LOADED, timeout=90)
            await asyncio.sleep(2.0)  # the report table and loss curve arrive over the same socket
            out.write_bytes(await page.screenshot())
    finally:
        server.stop()


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    asyncio.run(shoot(Path(sys.argv[1]), Path(sys.argv[2])))
