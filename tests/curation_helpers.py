"""What the curation tests share: generated catalogues, image files and the headless browser."""

from __future__ import annotations

import shutil

import cv2
import pandas as pd
import pytest
from conftest import textured_image, warp_affine

PRESET = "sift-mnn"  # needs no weights and runs fast on a CPU


def save_rgb(path, img):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img[:, :, ::-1])
    return path


def write_catalogue(root, whales=3, per_whale=3, plant=None):
    """Whale k's photos are warps of texture k; ``plant=(image_id, wrong whale)`` mislabels one photo."""
    rows = []
    for k in range(whales):
        base = textured_image(100 + k)
        for j in range(per_whale):
            img, _ = warp_affine(base, angle=4.0 * j - 4, scale=1.0 - 0.05 * j, shift=(3.0 * j, -2.0 * j))
            image_id = f"w{k}_{j}"
            save_rgb(root / "images" / f"{image_id}.png", img)
            rows.append({"image_id": image_id, "path": f"images/{image_id}.png", "viewpoint": "top",
                         "whale_id": f"whale{k}", "date": "2018-08-0%d" % (1 + j % 2)})
    if plant:
        for r in rows:
            if r["image_id"] == plant[0]:
                r["whale_id"] = plant[1]
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    return root / "metadata.csv"


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1366,900"]


def chromium() -> tuple[str, str]:
    """Paths of chromium and chromedriver, or skip saying what is missing."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        pytest.skip("headless browser test needs chromium and chromedriver "
                    "(apt-get install -y chromium chromium-driver)")
    pytest.importorskip("selenium", reason="headless browser test needs selenium (pip install '.[test]')")
    return browser, driver
