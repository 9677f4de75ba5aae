"""The HTML report, rendered from a real demo run and loaded in headless Chromium.

Chromium is Debian's package driven by playwright (its own browser download is not used).
Without it these browser tests skip locally, naming the install command; CI installs it
and sets HARNESS_REQUIRE_BROWSER=1, which turns the skip into a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers import REPO

INSTALL = "apt-get install -y chromium && pip install playwright"


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        path = None
    if path is None:
        msg = f"headless Chromium with playwright is needed for the HTML report's browser tests: {INSTALL}"
        if os.environ.get("HARNESS_REQUIRE_BROWSER"):
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def demo_report(tmp_path_factory):
    """A real run of the demo protocol with both reference rows and one swapping method."""
    out = tmp_path_factory.mktemp("html")
    env = {**os.environ, "HARNESS_DEBUG": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "harness.cli", "run", "-p", "demo", "-m", "source", "-m", "target", "-m", "classical",
           "--out", str(out), "--no-mlflow", "--device", "cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    summaries = {json.loads(p.read_text())["method"]: json.loads(p.read_text())
                 for p in (out / "runs" / "demo").glob("*/summary.json")}
    return out, proc, summaries


@pytest.fixture(scope="session")
def chromium() -> str:
    return _chromium()


@pytest.fixture(scope="module")
def page(chromium, demo_report):  # chromium first: without it, skip before the demo run
    from playwright.sync_api import sync_playwright

    out, _, _ = demo_report
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"], headless=True)
        pg = browser.new_page(viewport={"width": 1400, "height": 1000})
        pg.console_errors, pg.requests, pg.blocked = [], [], []
        pg.on("console", lambda m: pg.console_errors.append(m.text) if m.type == "error" else None)
        pg.on("pageerror", lambda e: pg.console_errors.append(str(e)))
        pg.on("request", lambda r: pg.requests.append(r.url))

        def block_network(route):
            if route.request.url.startswith("file:"):
                route.continue_()
            else:  # anything else would be the network: refuse and remember it
                pg.blocked.append(route.request.url)
                route.abort()

        pg.route("**/*", block_network)
        pg.goto((out / "report" / "index.html").as_uri())
        pg.wait_for_function("window.reportReady !== undefined", timeout=60_000)
        yield pg
        browser.close()


def test_run_writes_the_report_and_names_it(demo_report):
    out, proc, summaries = demo_report
    assert f"html:   {out / 'report' / 'index.html'}" in proc.stdout
    doc = (out / "report" / "index.html").read_text()
    for attr in ("src=", "href="):  # nothing is fetched from anywhere but beside the page
        for part in doc.split(attr)[1:]:
            assert not part[1:].startswith(("http:", "https:", "//")), part[:80]
    # FID of a method against its own inputs is ~0; below 0 only by rounding: clamped, raw kept
    fid = summaries["target"]["metrics"]["fid"]
    assert fid["value"] == max(fid["raw_value"], 0.0) and fid["lower_bound"] == 0.0 and fid["feature_dim"] == 2048


def test_page_loads_offline_without_errors(page):
    assert page.console_errors == []
    assert page.blocked == []
    assert page.requests and all(u.startswith("file:") for u in page.requests)


def test_table_has_one_row_per_method_and_warns_about_small_fid(page, demo_report):
    _, _, summaries = demo_report
    rows = page.eval_on_selector_all('table.results[data-protocol="demo"] tbody tr',
                                     "rs => rs.map(r => r.dataset.method)")
    assert sorted(rows) == sorted(summaries) and len(rows) == 3
    warning = page.inner_text(".warning")
    assert "28 samples with 2048-d features" in warning
    fid_cells = page.eval_on_selector_all('table.results tbody tr td:last-child', "cs => cs.map(c => c.innerText)")
    for text, method in zip(fid_cells, rows):
        value = summaries[method]["metrics"]["fid"]["value"]
        assert text.startswith(f"{value:.2f}") and not text.startswith("-")


def test_sorting_by_a_column_reorders_rows(page, demo_report):
    _, _, summaries = demo_report
    table = 'table.results[data-protocol="demo"]'
    key = "id_similarity_sface"
    header = page.locator(f'{table} thead th[title^="{key}:"]')
    by_value = sorted(summaries, key=lambda m: summaries[m]["metrics"][key]["value"], reverse=True)
    header.click()  # higher is better: best first
    assert page.eval_on_selector_all(f"{table} tbody tr", "rs => rs.map(r => r.dataset.method)") == by_value
    header.click()
    assert page.eval_on_selector_all(f"{table} tbody tr", "rs => rs.map(r => r.dataset.method)") == by_value[::-1]


def test_pair_browser_shows_the_chosen_pairs_images(page, demo_report):
    out, _, summaries = demo_report
    frame = pd.read_parquet(out / summaries["classical"]["run_dir"] / "pairs.parquet")  # run_dir: relative to --out
    chosen = frame.iloc[len(frame) // 2]
    browser = '.browser[data-protocol="demo"]'
    page.fill(f'{browser} input[data-role="filter"]', chosen["pair_id"])
    cards = page.locator(f"{browser} .pair")
    assert cards.count() == 1 and cards.first.get_attribute("data-pair") == chosen["pair_id"]
    imgs = cards.first.locator("img")
    assert imgs.count() == 2 + 3  # source, target, one per method
    page.wait_for_function(f"""() => Array.from(document.querySelectorAll('{browser} .pair img'))
                                  .every(i => i.complete && i.naturalWidth > 0)""", timeout=60_000)
    # the classical image is that pair's swap: its thumbnail matches the swapped crop
    src = cards.first.locator('img[alt^="classical "]').get_attribute("src")
    from PIL import Image

    thumb = np.asarray(Image.open(out / "report" / src).convert("RGB"), np.float64)
    swap = np.asarray(Image.open(out / chosen["swap_file"]).convert("RGB").resize(thumb.shape[1::-1]), np.float64)
    other = frame.iloc[0] if frame.iloc[0]["swap_sha256"] != chosen["swap_sha256"] else frame.iloc[1]
    wrong = np.asarray(Image.open(out / other["swap_file"]).convert("RGB").resize(thumb.shape[1::-1]), np.float64)
    assert np.abs(thumb - swap).mean() < 6 < np.abs(thumb - wrong).mean()
    page.fill(f'{browser} input[data-role="filter"]', "")


def test_pair_browser_sorts_worst_first_and_by_difference(page, demo_report):
    out, _, summaries = demo_report
    browser = '.browser[data-protocol="demo"]'
    key = "id_similarity_sface"
    page.select_option(f'{browser} select[data-role="metric"]', key)
    page.select_option(f'{browser} select[data-role="a"]', "classical")
    page.select_option(f'{browser} select[data-role="order"]', "worst")
    frames = {m: pd.read_parquet(out / s["run_dir"] / "pairs.parquet").set_index("pair_id")
              for m, s in summaries.items()}
    first = page.locator(f"{browser} .pair").first.get_attribute("data-pair")
    assert first == frames["classical"][key].idxmin()
    page.select_option(f'{browser} select[data-role="b"]', "target")
    page.select_option(f'{browser} select[data-role="order"]', "best")  # where classical beats target most
    first = page.locator(f"{browser} .pair").first.get_attribute("data-pair")
    assert first == (frames["classical"][key] - frames["target"][key]).idxmax()
    assert page.locator(f"{browser} .pair").count() == 20  # paged
    assert page.inner_text(f'{browser} [data-role="where"]') == "page 1 of 2"


def test_distributions_are_drawn_and_screenshot_is_not_blank(page, tmp_path):
    # every per-pair metric: 3 identity, pose, expression
    assert page.locator('.dists[data-protocol="demo"] canvas').count() == 5
    path = tmp_path / "shot.png"
    page.screenshot(path=str(path), full_page=True)
    from PIL import Image

    pixels = np.asarray(Image.open(path).convert("L"), np.float64)
    assert pixels.std() > 20  # text, tables, plots and faces, not an empty page


def test_thumbnails_are_made_once_and_named_by_content(tmp_path):
    from reports.thumbs import ThumbnailStore

    face = REPO / "protocols" / "demo_faces" / "astronaut.png"
    copy = tmp_path / "same_face_elsewhere.png"
    shutil.copyfile(face, copy)
    store = ThumbnailStore(tmp_path / "thumbs", 64)
    assert store.add(face) == store.add(copy) == 0 and store.made == 1  # same content: one thumbnail
    store.close()
    again = ThumbnailStore(tmp_path / "thumbs", 64)
    again.add(copy)
    assert again.made == 0 and len(list((tmp_path / "thumbs").glob("*.jpg"))) == 1


def test_evaluator_agreement_from_two_identity_backends(tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    from report_speed import synthetic_runs
    from scipy.stats import kendalltau

    from reports.html import _agreement
    from reports.ranking import load_pair_frames

    runs = synthetic_runs(tmp_path, pairs=60, methods=5)
    found = {(a["a"], a["b"]): a for a in _agreement("synthetic", runs, load_pair_frames(runs))}
    a = found[("id_similarity_dlib", "id_similarity_facenet")]
    assert (a["backend_a"], a["backend_b"]) == ("dlib_resnet_v1", "facenet_casia_torch")
    ranked = [s for s in runs if s.method not in ("source", "target")]
    expected = kendalltau([s.metrics["id_similarity_dlib"].value for s in ranked],
                          [s.metrics["id_similarity_facenet"].value for s in ranked]).statistic
    assert a["tau"] == pytest.approx(expected) and a["tau_methods"] == [s.method for s in ranked]
    # the synthetic pairs share a difficulty term, so both backends order pairs alike
    assert all(p["rho"] > 0.5 and p["n"] == 60 for p in a["per_method"])
    assert ("pose_error_pnp", "expression_error_lmk") not in found  # different quantities are not compared


def test_images_gone_from_the_cache_are_counted_not_fatal(tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    from report_speed import synthetic_runs

    from reports.html import render_html

    runs = synthetic_runs(tmp_path, pairs=40, methods=3)
    path = Path(runs[2].run_dir) / "pairs.parquet"
    frame = pd.read_parquet(path)
    frame.loc[[0, 5], "swap_file"] = "cache/swaps/synthetic/deleted.png"  # a swap whose crop was removed
    frame.loc[[0, 5], "swap_sha256"] = "f" * 64
    frame.to_parquet(path, index=False)
    doc, _ = render_html(runs, tmp_path)
    data = json.loads(doc.split('<script id="report-data" type="application/json">')[1].split("</script>")[0])
    proto = data["protocols"][0]
    assert proto["missing_images"] == 2 and len(proto["pairs"]["id"]) == 40
    swaps = proto["swaps"][runs[2].method]
    assert [i for i, t in enumerate(swaps) if t < 0] == [0, 5]
    # the other swaps are copies of the input faces: named by content, they share the inputs' thumbnails
    faces = len(list((REPO / "protocols" / "demo_faces").glob("*.png")))
    assert 20 <= len(data["thumbs"]) <= faces  # 40 pairs x 5 images, at most one thumbnail per distinct face
