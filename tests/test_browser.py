"""End to end in a real browser: the real server on loopback, headless Chromium through Playwright."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from detector import augment
from detector.embedders import Embedders
from detector.images import load
from generator.dataset import make_dataset
from index.store import Store
from service.ingest import add_images

CHROMIUM = os.environ.get("CHIMERA_CHROMIUM", "/usr/bin/chromium")
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason=f"no Chromium at {CHROMIUM} (.ci/run installs Debian's chromium)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    rows = make_dataset(tmp_path / "data", artists=2, per_artist=24, size=64, seed=1, holdout=2)
    store = Store.open(tmp_path / "store", create=True)
    emb = Embedders(None, "off")
    for name in ("artist_00", "artist_01"):
        add_images(store, emb, name, [load(tmp_path / "data" / r["path"]) for r in rows
                                      if r["artist"] == name and r["split"] == "reference"])
        add_images(store, emb, name, [load(p) for p in sorted((tmp_path / "data" / name / "signatures").iterdir())],
                   signature=True)
    store.close()
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "--store", str(tmp_path / "store"), "--no-clip",
                             "serve", "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            urllib.request.urlopen(url + "/healthz", timeout=1)
            break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail(f"server did not start: {proc.stdout.read().decode()[-2000:]}")
    yield url, tmp_path, rows
    proc.terminate()
    proc.wait(timeout=10)


def test_upload_to_verdict_with_boxes(server):
    from playwright.sync_api import sync_playwright
    url, tmp, rows = server
    refs = [tmp / "data" / r["path"] for r in rows if r["artist"] == "artist_01" and r["split"] == "reference"]
    collage, _ = augment.half_swap(load(refs[3]).image, load(refs[8]).image)
    signed, _ = augment.paste_signature(collage, load(tmp / "data" / "artist_00" / "signatures" / "sig_2.png").image,
                                        __import__("random").Random(0))
    query = tmp / "suspect.png"
    signed.save(query)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        page = browser.new_page()
        page.goto(url + "/")
        page.wait_for_selector("#artist option:nth-child(3)", state="attached")  # artists loaded from the API
        page.set_input_files("#file", str(query))
        page.click("#go")
        page.wait_for_selector("#result:not([hidden])", timeout=30_000)
        verdict = page.inner_text("#verdict")
        assert verdict.startswith("derivative") and "artist_01" in verdict
        assert page.locator("#scores tbody tr").count() == 2
        assert page.locator("#boxes .box-match").count() >= 2  # both pieces of the collage are outlined
        assert page.locator("#boxes .box-sig").count() >= 1  # and the pasted signature
        assert "FORGED" in page.inner_text("#signatures")
        assert page.locator("#matches img").count() >= 2
        page.screenshot(path=str(tmp / "page.png"), full_page=True)
        # a format the browser cannot show (the API reads TIFF): the verdict comes, the last image's boxes go
        signed.save(tmp / "suspect.tiff")
        page.set_input_files("#file", str(tmp / "suspect.tiff"))
        page.click("#go")
        page.wait_for_function("document.querySelector('#status').textContent === ''", timeout=30_000)
        assert page.locator("#boxes div").count() == 0
        assert "cannot show this format" in page.inner_text("#preview-note")
        # a token is sent when given; a proxy's HTML error page and an unreachable server are said plainly
        sent = []
        page.route("**/v1/score", lambda route: (sent.append(route.request.headers.get("authorization")),
                                                 route.fulfill(status=502, body="<h1>Bad Gateway</h1>",
                                                               content_type="text/html")))
        page.fill("#token", "tok")
        page.click("#go")
        page.wait_for_function("document.querySelector('#status').textContent.startsWith('error')")
        assert page.inner_text("#status") == "error: HTTP 502" and sent == ["Bearer tok"]
        assert page.is_hidden("#result")
        page.unroute("**/v1/score")
        page.route("**/v1/score", lambda route: route.abort())
        page.click("#go")
        page.wait_for_function("document.querySelector('#status').textContent.includes('could not be reached')")
        # two submissions in a row: the first's reply, arriving last, is not drawn over the second's result
        page.unroute("**/v1/score")
        held = []
        page.route("**/v1/score", lambda route: route.continue_() if held else held.append(route))
        page.set_input_files("#file", str(query))
        page.click("#go")
        while not held:
            page.wait_for_timeout(50)
        page.click("#go")
        page.wait_for_selector("#result:not([hidden])", timeout=30_000)
        page.wait_for_function("document.querySelector('#status').textContent === ''")
        held[0].fulfill(status=502, body="<h1>Bad Gateway</h1>", content_type="text/html")
        page.wait_for_timeout(500)
        assert page.inner_text("#status") == "" and page.is_visible("#result")
        assert page.inner_text("#verdict").startswith("derivative")
        # while a new image is scored, the last verdict is not shown beside it
        page.unroute("**/v1/score")
        held.clear()
        page.route("**/v1/score", lambda route: held.append(route))
        page.set_input_files("#file", str(tmp / "suspect.tiff"))
        page.click("#go")
        while not held:
            page.wait_for_timeout(50)
        assert page.is_hidden("#result") and page.inner_text("#status") == "scoring…"
        held[0].continue_()
        page.wait_for_selector("#result:not([hidden])", timeout=30_000)
        # a token the server could never accept is said so, not sent (a browser refuses such a header)
        page.fill("#token", "秘密")
        page.click("#go")
        assert page.inner_text("#status") == "error: a token is printable ASCII (letters, digits, punctuation)"
        page.fill("#token", "")
        # an artist removed since the page loaded: the error says so and the list is loaded again
        page.unroute("**/v1/score")
        page.select_option("#artist", "artist_00")
        subprocess.run([sys.executable, "-m", "service.cli", "--store", str(tmp / "store"), "--no-clip", "index",
                        "remove", "--artist", "artist_00"], check=True, capture_output=True)
        page.click("#go")
        page.wait_for_function("document.querySelector('#status').textContent.startsWith('error')")
        assert "no artist named 'artist_00'" in page.inner_text("#status")
        page.wait_for_function("document.querySelectorAll('#artist option').length === 2")
        assert page.eval_on_selector_all("#artist option", "os => os.map(o => o.value)") == ["", "artist_01"]
        browser.close()


def test_scan_report_sorts_by_any_column_and_shows_each_works_thumbnail(tmp_path):
    """The HTML scan report opens from disk. Its path column sorts as text even where names start with
    numbers (dated files: '2023-05-01 ...' once all compared equal as 2023), confidence as numbers;
    a registered work's thumbnail is inlined once however many rows show it, and shows in each; a
    small image is inlined at its own size and shown enlarged."""
    from playwright.sync_api import sync_playwright

    from service.report import write_html
    icon = tmp_path / "icon.png"
    __import__("PIL.Image", fromlist=["Image"]).new("RGB", (40, 40), (200, 30, 30)).save(icon)
    names = ["2023-05-01 zebra", "2023-05-01 apple", "2023-04-30 kiwi", "2023-05-02 banana"]

    def record(name: str, confidence: float) -> dict:
        match = {"artist": "alice", "work": 7, "source": str(icon), "similarity": 0.9, "box": [0, 0, 20, 20]}
        (tmp_path / f"{name}.png").write_bytes(icon.read_bytes())
        return {"path": str(tmp_path / f"{name}.png"), "error": None, "width": 40, "height": 40, "verdict": {"label": "copy", "artist": "alice",
                                                                  "confidence": confidence},
                "matches": [match], "signatures": []}

    report = tmp_path / "report.html"
    write_html([record(n, c) for n, c in zip(names, [0.5, 0.95, 0.7, 0.15])], report, "4 files",
               work_png=lambda _: icon.read_bytes())
    assert report.read_text().count("data:image/png;base64,") == 1 + len(names)  # the work once, each query once
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        page.goto(report.as_uri())
        paths = lambda: [Path(t).name for t in page.eval_on_selector_all(  # noqa: E731
            "#t tbody tr", "rs => rs.map(r => r.cells[1].innerText)")]
        page.click("th:nth-child(2)")
        assert paths() == sorted(f"{n}.png" for n in names)
        page.click("th:nth-child(2)")
        assert paths() == sorted((f"{n}.png" for n in names), reverse=True)
        page.click("th:nth-child(4)")
        assert paths() == ["2023-05-02 banana.png", "2023-05-01 zebra.png", "2023-04-30 kiwi.png",
                           "2023-05-01 apple.png"]
        shown = page.eval_on_selector_all(".work", "ws => ws.map(w => getComputedStyle(w).backgroundImage)")
        assert len(shown) == 4 and all(s.startswith('url("data:image/png;base64,') for s in shown)
        sizes = page.eval_on_selector_all("#t tbody img", "is => is.map(i => [i.naturalWidth, i.width])")
        assert sizes == [[40, 128]] * 4  # stored at its own size, shown enlarged
        browser.close()
