"""The review page: static HTML with its images folder, checked in a real headless Chromium."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from conftest import textured_image, warp_affine
from curation_helpers import CHROMIUM_FLAGS, PRESET, chromium, save_rgb

from matcher.curation import report
from matcher.curation.cli import main


def test_page_is_escaped_and_sortable_markup(tmp_path):
    rows = [{"rank": 1, "image_a": "<b>x</b>", "score": 0.5, "probability": None, "picture": "images/a b.jpg"},
            {"rank": 2, "image_a": "y", "score": 0.25, "probability": 0.3, "picture": ""}]
    cols = [report.Column("rank", "#", "int"), report.Column("image_a", "A"), report.Column("score", "score", "num"),
            report.Column("probability", "P", "prob"), report.Column("error", "error"),
            report.Column("picture", "pic", "picture")]
    html = report.render(report.Report("t & t", ["line <1>"], [report.Table("T", cols, rows)]))
    assert "&lt;b&gt;x&lt;/b&gt;" in html and "<b>x</b>" not in html and "line &lt;1&gt;" in html
    assert 'data-type="num" data-key="score"' in html and 'data-value="0.5"' in html
    assert 'data-value="">&ndash;' in html  # a blank probability sorts as blank, shows a dash
    assert 'data-key="error"' not in html  # a column blank in every row is left out
    assert html.count("<img ") == 1 and "no picture" in html
    assert report.relative(tmp_path / "images" / "a b.jpg", tmp_path / "r.html") == "images/a%20b.jpg"


@pytest.fixture
def batch_page(tmp_path) -> Path:
    """A batch review page over generated pairs, listed so that the CSV order is not the score order."""
    base = [textured_image(400 + k) for k in range(3)]
    files = {}
    for k, img in enumerate(base):
        files[f"a{k}"] = save_rgb(tmp_path / "imgs" / f"a{k}.png", img)
        # pair k shares a part of the image that grows with k, so the inlier counts differ
        warped = warp_affine(img, angle=3.0 + k, scale=0.95)[0]
        keep = int(img.shape[0] * (0.3 + 0.3 * k))
        warped[keep:] = 90
        files[f"b{k}"] = save_rgb(tmp_path / "imgs" / f"b{k}.png", warped)
    pairs = tmp_path / "pairs.csv"
    with open(pairs, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image_a", "image_b"])
        for k in (1, 0, 2):
            w.writerow([files[f"a{k}"], files[f"b{k}"]])
        w.writerow([files["a0"], files["b2"]])
    out = tmp_path / "out"
    assert main(["verify", "--pairs", str(pairs), "--preset", PRESET, "--cache-dir", str(tmp_path / "cache"),
                 "--out", str(out), "--quiet"]) == 0
    return out / "report.html"


def test_review_page_in_headless_chromium(batch_page, tmp_path):
    browser, driver_path = chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={tmp_path / 'profile'}"]:
        opts.add_argument(flag)
    drv = webdriver.Chrome(service=Service(driver_path), options=opts)
    try:
        drv.get(batch_page.resolve().as_uri())
        drv.execute_script("return document.readyState")
        assert "pair verification" in drv.title
        pics = drv.find_elements(By.CSS_SELECTOR, "#pairs td.picture img")
        assert len(pics) == 4
        for img in pics:  # lazy images: bring each into view, then wait until it is decoded
            drv.execute_script("arguments[0].scrollIntoView(); arguments[0].loading = 'eager';", img)
        drv.set_script_timeout(30)
        widths = drv.execute_async_script(
            "var done = arguments[arguments.length - 1];"
            "var imgs = Array.from(document.querySelectorAll('#pairs td.picture img'));"
            "Promise.all(imgs.map(function (i) { return i.decode().catch(function () {}); }))"
            ".then(function () { done(imgs.map(function (i) { return i.naturalWidth; })); });")
        assert len(widths) == 4 and all(w > 0 for w in widths), widths

        def column(name):
            idx = drv.execute_script(
                "return document.querySelector('#pairs th[data-key=\"' + arguments[0] + '\"]').cellIndex;", name)
            return [r.find_elements(By.TAG_NAME, "td")[idx].get_attribute("data-value")
                    for r in drv.find_elements(By.CSS_SELECTOR, "#pairs tbody tr")]

        def pairs_shown():
            cells = drv.execute_script(
                "var h = document.querySelectorAll('#pairs th');"
                "var ia = Array.from(h).findIndex(function (t) { return t.dataset.key === 'image_a'; });"
                "var ib = Array.from(h).findIndex(function (t) { return t.dataset.key === 'image_b'; });"
                "return Array.from(document.querySelectorAll('#pairs tbody tr')).map(function (r) {"
                "  return [r.cells[ia].textContent, r.cells[ib].textContent]; });")
            return [tuple(c) for c in cells]

        header = drv.find_element(By.CSS_SELECTOR, '#pairs th[data-key="score"]')
        drv.execute_script("document.querySelector('#pairs th[data-key=\"rank\"]').click();")
        drv.execute_script("document.querySelector('#pairs th[data-key=\"rank\"]').click();")  # rank 1..4
        before = [float(v) for v in column("score")]
        assert before == sorted(before, reverse=True)  # rank order is score order
        header.click()  # numbers: largest first
        assert header.get_attribute("aria-sort") == "descending"
        desc = [float(v) for v in column("score")]
        assert desc == sorted(desc, reverse=True) and sorted(desc) == sorted(before)
        rows_desc = pairs_shown()
        header.click()
        assert header.get_attribute("aria-sort") == "ascending"
        asc = [float(v) for v in column("score")]
        assert asc == sorted(asc) and asc != desc
        assert len(set(asc)) == 4 and pairs_shown() == rows_desc[::-1]  # whole rows moved, not just the cells
        inl = [float(v) for v in column("n_inliers")]
        assert inl == sorted(inl)  # inliers travel with their scores
        drv.save_screenshot(str(tmp_path / "page.png"))
        assert (tmp_path / "page.png").stat().st_size > 10_000
    finally:
        drv.quit()
