"""Full-page screenshot of a report's index.html in headless Chromium (Debian's ``chromium``).

Chromium's ``--screenshot`` captures the window only, so the window is made taller than any
report and the blank rows below the page's end are cropped off.

    python scripts/screenshot.py benchmarks/reports/gemma3-study benchmarks/reports/gemma3-study-screenshot.png
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from dpopt.experiments.report import screenshot


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("report", help="report folder (holds index.html)")
    ap.add_argument("png", help="the screenshot to write")
    ap.add_argument("--width", type=int, default=1200)
    ap.add_argument("--height", type=int, default=30000, help="taller than the page")
    a = ap.parse_args()
    png = screenshot(Path(a.report) / "index.html", a.png, a.width, a.height)
    img = np.asarray(Image.open(png).convert("RGB"))
    ink = np.flatnonzero((img < 250).any(axis=(1, 2)))
    bottom = int(ink[-1]) + 40 if len(ink) else img.shape[0]
    Image.fromarray(img[:bottom]).save(png, optimize=True)
    print(f"{png}: {img.shape[1]} x {bottom} px (page end at {bottom - 40})")


if __name__ == "__main__":
    main()
