"""Decisions on the review page, in a real headless Chromium driven by the test: click, reload, export, keys;
the audit's lists with the same controls, their export applied to the catalogue; a page of 2,000 candidates.

Screenshots are kept as test artefacts: in $WHALEMATCH_TEST_ARTIFACTS when set (a folder per test), else in
the test's temporary folder; never in the repository.
"""

from __future__ import annotations

import csv
import datetime as dt
import os
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from conftest import textured_image, warp_affine
from curation_helpers import CHROMIUM_FLAGS, PRESET, chromium, save_rgb, write_catalogue

from matcher.curation import report
from matcher.curation.cli import main
from matcher.curation.review_page import EXPORT_COLUMNS, Review


def artefacts(tmp_path: Path, name: str) -> Path:
    root = os.environ.get("WHALEMATCH_TEST_ARTIFACTS")
    folder = Path(root) / name if root else tmp_path / "artefacts"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def browser(tmp_path):
    """A headless Chromium that downloads into ``tmp_path/downloads`` (as ``drv.downloads``)."""
    binary, driver_path = chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={tmp_path / 'profile'}"]:
        opts.add_argument(flag)
    opts.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                           "download.prompt_for_download": False})
    drv = webdriver.Chrome(service=Service(driver_path), options=opts)
    drv.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    drv.downloads = downloads
    drv.set_script_timeout(30)
    try:
        yield drv
    finally:
        drv.quit()


def open_page(drv, page: Path) -> None:
    drv.get(page.resolve().as_uri())
    wait(lambda: drv.execute_script("return document.body.getAttribute('data-review-ready')") == "1")


def wait(condition, timeout: float = 15.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out waiting")


def export(drv) -> list[dict]:
    """Press the export button and read the CSV it downloads."""
    from selenium.webdriver.common.by import By

    for old in drv.downloads.glob("*"):
        old.unlink()
    drv.find_element(By.ID, "wm-export").click()
    path = wait(lambda: next((p for p in drv.downloads.glob("*.csv") if p.stat().st_size > 0), None))
    time.sleep(0.2)  # the file is renamed from .crdownload when complete
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames) == EXPORT_COLUMNS
        return list(reader)


def state(drv, table: str) -> list[tuple[str, str, str]]:
    """(candidate image, decision, comment) of each row of a table, in the order shown."""
    return [tuple(r) for r in drv.execute_script(
        "return Array.from(document.querySelectorAll('#' + arguments[0] + ' tr.review')).map(function (tr) {"
        "  return [tr.dataset.c, tr.dataset.decision || '', tr.querySelector('input.wm-comment').value]; });", table)]


def current(drv) -> str:
    return drv.execute_script("var tr = document.querySelector('tr.review.wm-current'); return tr ? tr.dataset.c : '';")


def keys(drv, text: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(drv).send_keys(text).perform()


def into_view(drv, element):
    """The element scrolled to the middle of the window (clear of the bar at its foot), as a user would."""
    drv.execute_script("arguments[0].scrollIntoView({block: 'center'});", element)
    return element


def button(drv, table: str, row: int, decision: str):
    from selenium.webdriver.common.by import By

    return into_view(drv, drv.find_element(
        By.CSS_SELECTOR, f'#{table} tbody tr:nth-child({row}) button[data-decision="{decision}"]'))


@pytest.fixture
def search_page(tmp_path) -> tuple[Path, list]:
    write_catalogue(tmp_path / "cat")
    query = save_rgb(tmp_path / "new.png", warp_affine(textured_image(101), angle=-6, scale=0.95)[0])
    args = ["search", str(query), "--catalogue", str(tmp_path / "cat"), "--preset", PRESET, "--cache-dir",
            str(tmp_path / "cache"), "--out", str(tmp_path / "out"), "--top", "3", "--quiet"]
    assert main(args) == 0
    return tmp_path / "out" / "report.html", args


def test_decisions_are_clicked_kept_over_a_reload_exported_and_keyed(browser, search_page, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    drv = browser
    page, search_args = search_page
    shots = artefacts(tmp_path, "review-search")
    open_page(drv, page)
    cands = pd.read_csv(page.parent / "candidates.csv", keep_default_na=False)
    images = list(cands["image_b"])
    assert [c for c, _, _ in state(drv, "candidates")] == images  # every candidate has the controls
    assert drv.find_element(By.ID, "wm-status").text.startswith("0 of 10 decided")  # and "a new whale?"

    drv.find_element(By.ID, "wm-reviewer").send_keys("Ada")
    button(drv, "candidates", 1, "same").click()
    button(drv, "candidates", 4, "different").click()
    into_view(drv, drv.find_element(By.CSS_SELECTOR, "#candidates tbody tr:nth-child(4) input.wm-comment")).send_keys(
        "outline only")
    button(drv, "candidates", 5, "not sure").click()
    button(drv, "candidates", 6, "same").click()
    button(drv, "candidates", 6, "same").click()  # pressed again: undecided
    expected = {images[0]: "same", images[3]: "different", images[4]: "not sure"}
    shown = {c: d for c, d, _ in state(drv, "candidates") if d}
    assert shown == expected
    # The whales table shows the decision of its best image (one pair, one decision).
    whales = {c: d for c, d, _ in state(drv, "whales")}
    assert whales[images[0]] == "same"
    assert drv.find_element(By.ID, "wm-status").text.startswith("3 of 10 decided")
    drv.save_screenshot(str(shots / "1-decided.png"))

    drv.refresh()
    open_page(drv, page)
    after = state(drv, "candidates")
    assert {c: d for c, d, _ in after if d} == expected
    assert {c: m for c, _, m in after}[images[3]] == "outline only"
    assert drv.find_element(By.ID, "wm-reviewer").get_attribute("value") == "Ada"
    pressed = drv.find_elements(By.CSS_SELECTOR, '#candidates button[aria-pressed="true"]')
    assert len(pressed) == 3

    rows = export(drv)
    assert [(r["candidate_image"], r["decision"]) for r in rows] == [(c, expected[c]) for c in images if c in expected]
    first = rows[0]
    assert first["query_image"] == str(tmp_path / "new.png") and first["candidate_whale"] == "whale1"
    assert first["reviewer"] == "Ada" and dt.datetime.fromisoformat(first["time"].replace("Z", "+00:00"))
    assert rows[1]["comment"] == "outline only"

    # Keys: j / k move, s / d / u decide and move on, x clears, n finds the next undecided, c comments.
    into_view(drv, drv.find_element(By.CSS_SELECTOR, "#candidates tbody tr:nth-child(1) td")).click()
    assert current(drv) == images[0]
    keys(drv, "j")
    assert current(drv) == images[1]
    keys(drv, "d")
    assert current(drv) == images[2]
    keys(drv, "s")
    assert current(drv) == images[3]
    keys(drv, "k")
    assert current(drv) == images[2]
    keys(drv, "x")
    assert current(drv) == images[2]  # clearing stays on the row
    keys(drv, "k")
    keys(drv, "n")
    assert current(drv) == images[2]  # cleared, so undecided again
    keys(drv, "u")
    keys(drv, "n")
    assert current(drv) == images[5]
    keys(drv, "c")
    keys(drv, "mark on the tail" + Keys.ENTER)
    keys(drv, "s")  # back out of the comment box, keys decide again
    decided = {c: (d, m) for c, d, m in state(drv, "candidates")}
    assert decided[images[1]] == ("different", "") and decided[images[2]] == ("not sure", "")
    assert decided[images[5]] == ("same", "mark on the tail") and current(drv) == images[6]
    drv.save_screenshot(str(shots / "2-keyboard.png"))
    stored = drv.execute_script("return JSON.parse(localStorage.getItem(window.whalematchReview.storeKey))")
    assert stored["page"].endswith("/out/report.html") and len(stored["decisions"]) == 6

    # "Is it a new whale?": a row without a candidate, exported with the decision "new whale".
    button(drv, "new-whale", 1, "new whale").click()
    new = [r for r in export(drv) if r["decision"] == "new whale"]
    assert [(r["query_image"], r["candidate_image"]) for r in new] == [(str(tmp_path / "new.png"), "")]

    # A new run writes a new page at the same place: its decisions start afresh (stored by file and run).
    assert main(search_args) == 0
    open_page(drv, page)
    assert drv.find_element(By.ID, "wm-status").text.startswith("0 of 10 decided")
    assert not any(d for _, d, _ in state(drv, "candidates"))
    print(f"\nscreenshots: {shots}")


def test_audit_lists_take_decisions_that_apply_to_the_catalogue(browser, tmp_path, capsys):
    """A whale photographed under two ids: the audit lists the pairs first, Same on one of them, exported and
    applied, merges the ids."""
    root = tmp_path / "cat"
    meta = write_catalogue(root, whales=3, per_whale=2, plant=("w0_1", "whale2"))
    rows = pd.read_csv(meta).to_dict("records")
    for j in range(2):  # whale 1 again, under the id whale9
        img = warp_affine(textured_image(101), angle=5.0 - 3 * j, scale=0.93 + 0.03 * j)[0]
        save_rgb(root / "images" / f"w9_{j}.png", img)
        rows.append({"image_id": f"w9_{j}", "path": f"images/w9_{j}.png", "viewpoint": "top", "whale_id": "whale9",
                     "date": "2018-08-01"})
    pd.DataFrame(rows).to_csv(meta, index=False)
    out = tmp_path / "out"
    assert main(["audit", "--metadata", str(meta), "--preset", PRESET, "--cache-dir", str(tmp_path / "cache"),
                 "--out", str(out), "--isolated-below", "0.4", "--strong-above", "0.6", "--quiet"]) == 0
    capsys.readouterr()
    iso = pd.read_csv(out / "isolated_images.csv")
    sus = pd.read_csv(out / "suspect_pairs.csv")
    assert list(sus["score"]) == sorted(sus["score"], reverse=True)  # most doubtful first
    assert list(iso["suspicion"]) == sorted(iso["suspicion"], reverse=True)
    drv = browser
    open_page(drv, out / "report.html")
    assert [c for c, _, _ in state(drv, "isolated")] == list(iso["best_partner"])
    suspects = state(drv, "suspects")
    assert [c for c, _, _ in suspects] == list(sus["image_b"])
    dup = next(i for i, r in enumerate(sus.to_dict("records"), 1) if {r["whale_a"], r["whale_b"]} ==
               {"whale1", "whale9"})
    button(drv, "suspects", dup, "same").click()
    planted = next(i for i, r in enumerate(iso.to_dict("records"), 1) if r["image_id"] == "w0_1")
    button(drv, "isolated", planted, "different").click()
    drv.save_screenshot(str(artefacts(tmp_path, "review-audit") / "audit.png"))
    exported = export(drv)
    assert {r["decision"] for r in exported} == {"same", "different"}
    decisions = tmp_path / "decisions.csv"
    pd.DataFrame(exported).to_csv(decisions, index=False)
    assert main(["apply-decisions", str(decisions), "--metadata", str(meta)]) == 0
    text = capsys.readouterr().out
    new = pd.read_csv(root / "metadata.decided.csv").set_index("image_id")["whale_id"]
    assert new["w9_0"] == new["w9_1"] == "whale1" and (new.drop(["w9_0", "w9_1"]) ==
                                                       pd.read_csv(meta).set_index("image_id")["whale_id"].drop(
                                                           ["w9_0", "w9_1"])).all()
    assert "one label may be wrong" in text  # the isolated image's "different": logged, not changed


def test_page_of_2000_candidates_stays_usable(browser, tmp_path):
    from selenium.webdriver.common.by import By

    n = 2000
    page = tmp_path / "big" / "report.html"
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        pic = page.parent / "images" / f"p{i:04d}.jpg"
        pic.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(pic), rng.integers(0, 255, (30, 60, 3), dtype=np.uint8))
        rows.append({"rank": i + 1, "image_b": f"cat{i:04d}", "whale_id": f"whale{i % 300:03d}",
                     "picture": report.relative(pic, page), "n_inliers": int(rng.integers(0, 300)),
                     "score": float(rng.uniform()), "probability": float(rng.uniform()), "verdict": "possible match"})
    cols = [c for c in report.PAIR_COLUMNS if c.key != "image_a"]
    cols.insert(2, report.Column("whale_id", "whale"))
    t0 = time.perf_counter()
    report.write(report.Report("whalematch: 2,000 candidates", ["synthetic"], [report.Table(
        "Catalogue images", cols, rows, table_id="candidates", review=Review("image_b", "whale_id",
                                                                             query_value="new.jpg"))]), page)
    written = time.perf_counter() - t0
    drv = browser
    open_page(drv, page)
    timing = drv.execute_script(
        "var nav = performance.getEntriesByType('navigation')[0];"
        "return {ready: window.whalematchReview.ready, dom: nav.domContentLoadedEventEnd, load: nav.loadEventEnd,"
        "        bytes: nav.transferSize || nav.encodedBodySize || 0};")
    assert len(drv.find_elements(By.CSS_SELECTOR, "#candidates tr.review")) == n
    sort_ms = drv.execute_script(
        "var t = performance.now(); document.querySelector('#candidates th[data-key=\"n_inliers\"]').click();"
        "return performance.now() - t;")
    drv.execute_script("document.querySelector('#candidates tbody tr:last-child td').click();")
    decide_ms = drv.execute_script(
        "var t = performance.now();"
        "document.dispatchEvent(new KeyboardEvent('keydown', {key: 's', bubbles: true}));"
        "return performance.now() - t;")
    last = drv.execute_script("return document.querySelector('#candidates tbody tr:last-child').dataset.c;")
    assert {c: d for c, d, _ in state(drv, "candidates") if d} == {last: "same"}
    drv.refresh()
    open_page(drv, page)
    reload_ready = drv.execute_script("return window.whalematchReview.ready")
    assert [r["candidate_image"] for r in export(drv)] == [last]
    kept = artefacts(tmp_path, "review-2000")
    drv.save_screenshot(str(kept / "page.png"))
    line = (f"{n} candidates: page written in {written * 1000:.0f} ms ({page.stat().st_size / 1e6:.1f} MB); in the "
            f"browser: DOM ready {timing['dom']:.0f} ms, review controls ready {timing['ready']:.0f} ms, load "
            f"{timing['load']:.0f} ms after navigation start (after a reload with a decision stored: "
            f"{reload_ready:.0f} ms); sorting by a column {sort_ms:.0f} ms; a decision by key {decide_ms:.1f} ms")
    (kept / "render-time.txt").write_text(line + "\n")
    print(f"\n{line}")


def test_a_sightings_decision_is_exported_for_each_of_its_photos_and_applies_to_them_all(browser, tmp_path):
    """The page of a sighting of two photos: Same on a whale, or New whale, stands for both photos, and
    apply-decisions gives both the whale (or one new id)."""
    write_catalogue(tmp_path / "cat")
    new = tmp_path / "new"
    for name, angle in (("a", -5.0), ("b", 4.0)):
        save_rgb(new / f"{name}.png", warp_affine(textured_image(101), angle=angle, scale=0.95)[0])
    pd.DataFrame([{"image_id": n, "path": f"{n}.png", "viewpoint": "top", "encounter_id": "e7"}
                  for n in ("a", "b")]).to_csv(new / "new.csv", index=False)
    out = tmp_path / "out"
    assert main(["search", "--batch", str(new / "new.csv"), "--catalogue", str(tmp_path / "cat"), "--preset", PRESET,
                 "--cache-dir", str(tmp_path / "cache"), "--out", str(out), "--top", "1", "--quiet"]) == 0
    page = out / "sightings" / "encounter_e7" / "report.html"
    open_page(browser, page)
    whales = pd.read_csv(out / "encounters.csv", keep_default_na=False)
    assert whales["best_whale"].iloc[0] == "whale1"
    button(browser, "whales", 1, "same").click()  # the sighting's best whale
    rows = export(browser)
    assert sorted(r["query_image"] for r in rows) == [str(new / "a.png"), str(new / "b.png")]  # files: found anywhere
    assert {r["candidate_whale"] for r in rows} == {"whale1"} and {r["sighting"] for r in rows} == {"encounter e7"}
    decisions = tmp_path / "elsewhere" / "decisions.csv"
    decisions.parent.mkdir()
    with open(decisions, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=EXPORT_COLUMNS)
        w.writeheader()
        w.writerows(rows)
    assert main(["apply-decisions", str(decisions), "--metadata", str(tmp_path / "cat" / "metadata.csv"),
                 "--new-photos", str(new), "--output", str(tmp_path / "cat" / "new.csv")]) == 0
    table = pd.read_csv(tmp_path / "cat" / "new.csv", keep_default_na=False)
    assert table.set_index("image_id").loc[["a", "b"], "whale_id"].tolist() == ["whale1", "whale1"]
    # the other answer: New whale, for the sighting, gives both photos one new id
    button(browser, "new-whale", 1, "new whale").click()
    new_rows = [r for r in export(browser) if r["decision"] == "new whale"]
    assert sorted(r["query_image"] for r in new_rows) == [str(new / "a.png"), str(new / "b.png")]
    assert {r["candidate_image"] for r in new_rows} == {""}
