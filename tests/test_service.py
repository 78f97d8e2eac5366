"""The HTTP API through Flask's test client: every endpoint, auth, limits, errors, OpenAPI truth."""

from __future__ import annotations

import hashlib
import io
import random
import re
from urllib.parse import quote

import numpy as np
import pytest
from jsonschema import Draft202012Validator
from PIL import Image

from conftest import hostile_tiff
from detector.embedders import Embedders
from service.app import create_app
from service.openapi import spec

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def png(img: Image.Image) -> io.BytesIO:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    buf.seek(0)
    return buf


def valid(body, schema: str) -> None:
    doc = spec()
    Draft202012Validator({"$ref": f"#/components/schemas/{schema}", "components": doc["components"]}).validate(body)


@pytest.fixture
def app(store_dir):
    return create_app(store_dir, {"CHIMERA_API_TOKENS": [TOKEN], "TESTING": True},
                      embedders=Embedders(None, "unavailable: disabled in tests"))


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def alice(client, icons):
    folder = icons("alice", 6, (230, 180, 40))
    files = [(open(p, "rb"), p.name) for p in sorted(folder.iterdir())]
    r = client.post("/v1/artists/alice/works", headers=AUTH, data={"images": files})
    assert r.status_code == 201, r.json
    valid(r.json, "AddReport")
    return sorted(folder.iterdir())


def test_every_route_is_documented_and_every_documented_route_exists(app):
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.rule in ("/", "/static/<path:name>"):
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        routes |= {(path, m.lower()) for m in rule.methods - {"HEAD", "OPTIONS"}}
    documented = {(p, m) for p, ops in spec()["paths"].items() for m in ops}
    assert routes == documented


def test_health_and_openapi(client):
    r = client.get("/healthz")
    assert r.status_code == 200
    valid(r.json, "Health")
    assert r.json["embedders"]["clip"].startswith("unavailable")
    assert client.get("/v1/openapi.json").json["openapi"] == "3.1.0"


def test_writes_need_a_valid_token(client, store_dir):
    assert client.post("/v1/artists", json={"name": "bob"}).status_code == 401
    r = client.post("/v1/artists", json={"name": "bob"}, headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401 and r.json["error"] == "unauthorized"
    valid(r.json, "Error")
    r = client.post("/v1/artists", json={"name": "bob"}, headers=AUTH)
    assert r.status_code == 201
    valid(r.json, "Artist")
    assert client.post("/v1/artists", json={"name": "bob"}, headers=AUTH).status_code == 409
    for bad in ({"name": ""}, {"name": "a/b"}, {"nom": "x"}, ["bob"]):
        assert client.post("/v1/artists", json=bad, headers=AUTH).status_code == 400
    closed = create_app(store_dir, {"CHIMERA_API_TOKENS": []}, embedders=Embedders(None, "off")).test_client()
    r = closed.post("/v1/artists", json={"name": "carol"}, headers=AUTH)
    assert r.status_code == 403 and r.json["error"] == "writes_disabled"


def test_add_list_score_delete_round_trip(client, alice):
    r = client.get("/v1/artists")
    valid(r.json, "ArtistList")
    assert r.json["artists"] == [{"name": "alice", "works": 6, "signatures": 0}]
    again = client.post("/v1/artists/alice/works", headers=AUTH, data={"images": [(open(alice[0], "rb"), "x.png")]})
    assert again.status_code == 200 and again.json["added"] == [] and len(again.json["skipped"]) == 1
    copy = Image.open(alice[2]).convert("RGB").rotate(90)
    r = client.post("/v1/score", data={"image": (png(copy), "suspect.png")})
    assert r.status_code == 200, r.json
    valid(r.json, "Result")
    assert r.json["verdict"]["label"] == "copy" and r.json["verdict"]["artist"] == "alice"
    work = r.json["matches"][0]["work"]
    thumb = client.get(f"/v1/works/{work}/thumbnail")
    assert thumb.status_code == 200 and thumb.mimetype == "image/png"
    r = client.post("/v1/score", data={"image": (png(copy), "s.png"), "artist": "alice"})
    assert [a["artist"] for a in r.json["artists"]] == ["alice"]
    assert client.delete(f"/v1/artists/alice/works/{work}", headers=AUTH).status_code == 200
    assert client.delete(f"/v1/artists/alice/works/{work}", headers=AUTH).status_code == 404
    assert client.get(f"/v1/works/{work}/thumbnail").status_code == 404
    r = client.delete("/v1/artists/alice", headers=AUTH)
    assert r.status_code == 200 and r.json["removed"] == {"works": 5, "signatures": 0}
    valid(r.json, "Removed")
    assert client.delete("/v1/artists/alice", headers=AUTH).status_code == 404


def test_signatures_endpoint(client, icons):
    folder = icons("sig", 2, (0, 0, 0))
    r = client.post("/v1/artists/alice/signatures", headers=AUTH,
                    data={"images": [(open(p, "rb"), p.name) for p in sorted(folder.iterdir())]})
    assert r.status_code == 201 and len(r.json["added"]) == 2
    assert client.get("/v1/artists").json["artists"][0]["signatures"] == 2
    first, second = r.json["added"]  # signature sample ids: removed by their own route, not the works'
    r = client.delete(f"/v1/artists/alice/signatures/{first}", headers=AUTH)
    assert r.status_code == 200 and r.json["removed"] == {"signature": first}
    valid(r.json, "Removed")
    assert client.delete(f"/v1/artists/alice/signatures/{first}", headers=AUTH).status_code == 404
    assert client.post("/v1/artists", headers=AUTH, json={"name": "bob"}).status_code == 201
    assert client.delete(f"/v1/artists/bob/signatures/{second}", headers=AUTH).status_code == 404  # alice's
    assert client.get("/v1/artists").json["artists"][0] == {"name": "alice", "works": 0, "signatures": 1}
    blank = client.post("/v1/artists/alice/signatures", headers=AUTH,
                        data={"images": [(png(Image.new("RGB", (300, 100), "white")), "blank.png")]})
    assert blank.status_code == 200 and blank.json["added"] == []  # nothing to match marks against: refused
    assert blank.json["failed"] == [{"file": "blank.png", "reason": blank.json["failed"][0]["reason"]}]
    assert blank.json["failed"][0]["reason"].startswith("no ink found")


def test_batch_scores_in_order_with_per_file_errors(client, alice):
    files = [(open(alice[0], "rb"), "a.png"), (io.BytesIO(b"garbage"), "b.png"), (open(alice[1], "rb"), "c.png"),
             (io.BytesIO(hostile_tiff()), "d.tif")]  # a TIFF on which Pillow raises TypeError
    r = client.post("/v1/score/batch", data={"images": files})
    assert r.status_code == 200
    for item in r.json:
        valid(item, "Result")
    assert [x["path"] for x in r.json] == ["a.png", "b.png", "c.png", "d.tif"]
    assert r.json[1]["error"] and r.json[3]["error"] and r.json[0]["verdict"]["label"] == "copy"
    assert r.json[1]["sha256"] == hashlib.sha256(b"garbage").hexdigest()  # as a scan's record of those bytes


def test_bad_uploads_get_clear_4xx(client, alice, app):
    cases = [
        ({}, 400, "missing_image"),
        ({"image": (io.BytesIO(b"not an image"), "x.png")}, 400, "invalid_image"),
        ({"image": (io.BytesIO(b""), "x.png")}, 400, "invalid_image"),
        ({"image": (io.BytesIO(hostile_tiff()), "x.tif")}, 400, "invalid_image"),
        ({"image": (png(Image.new("RGB", (8, 8))), "x.png"), "artist": "nobody"}, 404, "unknown_artist"),
    ]
    for data, status, code in cases:
        r = client.post("/v1/score", data=data)
        assert (r.status_code, r.json["error"]) == (status, code), r.json
        valid(r.json, "Error")
    r = client.post("/v1/score", data={"images": (png(Image.new("RGB", (9, 9))), "x.png")})  # the wrong field
    assert r.status_code == 400 and r.json["message"] == "send the image(s) as multipart form field 'image'"
    body = (b'--B\r\nContent-Disposition: form-data; name="image"; filename="caf\xe9.png"\r\n\r\n'
            + png(Image.new("RGB", (9, 9))).getvalue() + b"\r\n--B--\r\n")  # a Latin-1 file name
    r = client.post("/v1/score", data=body, content_type="multipart/form-data; boundary=B")
    assert (r.status_code, r.json["error"]) == (400, "missing_image") and "UTF-8" in r.json["message"], r.json
    noise = Image.frombytes("RGB", (600, 600), np.random.default_rng(0).integers(0, 256, 600 * 600 * 3, np.uint8))
    for pixels in (png(Image.new("RGB", (9, 9))).getvalue(), png(noise).getvalue()):  # 9 px; over 500 kB
        text = b'--B\r\nContent-Disposition: form-data; name="image"\r\n\r\n' + pixels + b"\r\n--B--\r\n"
        r = client.post("/v1/score", data=text, content_type="multipart/form-data; boundary=B")  # no file name
        assert (r.status_code, r.json["error"]) == (400, "missing_image") and "not as a file" in r.json["message"]
    r = client.post("/v1/score", data=body.replace(b"caf\xe9", "café".encode()),
                    content_type="multipart/form-data; boundary=B")
    assert r.status_code == 200 and r.json["path"] == "café.png"
    app.config["CHIMERA_MAX_PIXELS"] = 1000
    r = client.post("/v1/score", data={"image": (png(Image.new("RGB", (100, 100))), "big.png")})
    assert r.status_code == 400 and "decompression bomb" in r.json["message"]
    app.config["CHIMERA_MAX_BATCH"] = 2
    r = client.post("/v1/score/batch", data={"images": [(png(Image.new("RGB", (9, 9))), f"{i}.png")
                                                        for i in range(3)]})
    assert r.status_code == 400 and r.json["error"] == "batch_too_large"
    # more form parts than Flask parses (1000), far under the size limit: the count, not the size, is at fault
    r = client.post("/v1/score/batch", data={"images": [(png(Image.new("RGB", (9, 9))), f"{i}.png")
                                                        for i in range(1001)]})
    assert r.status_code == 400 and r.json["error"] == "batch_too_large" and "at most 2 images" in r.json["message"]
    app.config["MAX_CONTENT_LENGTH"] = 2000
    r = client.post("/v1/score", data={"image": (io.BytesIO(bytes(5000)), "huge.png")})
    assert r.status_code == 413 and r.json["error"] == "too_large"
    assert r.json["message"] == "the upload is over this server's limit of 2000 bytes"  # (Werkzeug's named none)


def test_scorers_see_the_file_name_of_a_work_added_from_the_servers_disk_not_its_folders(client, icons, chimera):
    """`chimera index add` keeps a work's path on the server's disk as its source (the CLI's results and
    scan reports show it); every scorer of the HTTP API was shown it too: user names, private folders."""
    import os
    folder = icons("maria-unreleased", 2, (200, 60, 90))
    first = folder / os.fsdecode(b"caf\xe9-portrait.png")  # not UTF-8: its source is written escaped
    sorted(folder.iterdir())[0].rename(first)
    assert chimera("index", "add", "--artist", "alice", str(folder))[0] == 0
    r = client.post("/v1/score", data={"image": (open(first, "rb"), "q.png")})
    assert r.json["matches"][0]["source"] == "caf\\xe9-portrait.png"  # as stored, cut at no backslash
    valid(r.json, "Result")
    r = client.post("/v1/score/batch", data={"images": [(open(first, "rb"), "q.png")]})
    assert r.json[0]["matches"][0]["source"] == "caf\\xe9-portrait.png"


def test_request_time_limit_answers_503(client, alice, app):
    app.config["CHIMERA_REQUEST_TIMEOUT"] = 1e-6
    r = client.post("/v1/score", data={"image": (open(alice[0], "rb"), "a.png")})
    assert r.status_code == 503 and r.json["error"] == "timeout"


def test_scoring_can_require_auth(store_dir, alice):
    closed = create_app(store_dir, {"CHIMERA_API_TOKENS": [TOKEN], "CHIMERA_SCORE_AUTH": True},
                        embedders=Embedders(None, "off")).test_client()
    assert closed.post("/v1/score", data={"image": (open(alice[0], "rb"), "a.png")}).status_code == 401
    ok = closed.post("/v1/score", headers=AUTH, data={"image": (open(alice[0], "rb"), "a.png")})
    assert ok.status_code == 200


def test_no_input_produces_a_500(client, alice):
    rng = random.Random(0)
    added = 0
    for i in range(40):
        blob = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 400)))
        if i % 4 == 0:  # a real PNG header with garbage after it
            blob = png(Image.new("RGB", (20, 20))).read()[:60] + blob
        method = rng.choice(["score", "batch", "works", "artists", "delete"])
        if method == "score":
            r = client.post("/v1/score", data={"image": (io.BytesIO(blob), "f.png")})
        elif method == "batch":
            r = client.post("/v1/score/batch", data={"images": [(io.BytesIO(blob), "f.png")]})
        elif method == "works":
            r = client.post("/v1/artists/alice/works", headers=AUTH, data={"images": [(io.BytesIO(blob), "f.png")]})
            added += len(r.json.get("added", [])) if r.status_code < 400 else 0
        elif method == "artists":
            r = client.post("/v1/artists", headers={**AUTH, "Content-Type": "application/json"}, data=blob)
        else:
            r = client.delete(f"/v1/artists/{blob.hex()[:12] or 'x'}/works/{rng.randrange(10**6)}", headers=AUTH)
        assert r.status_code < 500, (method, r.status_code, r.data[:200])
        assert r.is_json
        if r.status_code >= 400:
            assert set(r.json) == {"error", "message"}
    # nothing was corrupted or lost (a tiny PNG is whole within its first 60 bytes: those are real images)
    assert client.get("/v1/artists").json["artists"][0]["works"] == 6 + added


def test_a_fresh_server_scores_against_an_empty_store(client):
    r = client.post("/v1/score", data={"image": (png(Image.new("RGB", (32, 32), "red")), "x.png")})
    assert r.status_code == 200 and r.json["verdict"]["label"] == "unrelated"
    valid(r.json, "Result")


@pytest.mark.parametrize("name", ["   ", "nl\n", "a\x7fb", "c1\x85", "x\ud800y", "a/b", "a\\b", "", "n" * 101,
                                  "alice ", " alice", "ali\u200bce", "ali\u202ece", "\ufeffalice", "alice\ufe0f",
                                  "alice\u034f", "alice\u3164", "alice\u2800", "ali\u2028ce", "a\u00a0b",
                                  "jose\u0301", ".", "..", "alice\u200d", "\u200dalice", "al\u200cice"])
def test_artist_names_that_are_blank_controlled_or_not_text_are_refused_as_such(client, name):
    """One rule for every endpoint that takes a name, matched against the whole name (a regex `$`
    let a name ending in a newline through), answered 400 invalid_name: not 409 (blank), not 500
    (a lone surrogate is valid JSON but no UTF-8 text, so SQLite refused it). Names that would show
    like another's are refused too: spaces at an end, zero-width and bidi-override characters, a BOM,
    fillers, blanks and a variation selector after a letter (all invisible), a line separator, a
    no-break space, a decomposed "josé" beside the composed one, and zero-width joiners that join
    nothing (at an end, or between Latin letters)."""
    r = client.post("/v1/artists", headers=AUTH, json={"name": name})
    assert (r.status_code, r.json["error"]) == (400, "invalid_name")
    if name and "\ud800" not in name and "/" not in name and name.strip("."):  # "." and ".." name no URL segment
        r = client.post(f"/v1/artists/{quote(name, safe='')}/works", headers=AUTH,
                        data={"images": [(png(Image.new("RGB", (32, 32), "red")), "x.png")]})
        assert (r.status_code, r.json["error"]) == (400, "invalid_name")
    assert client.get("/v1/artists").json["artists"] == []


def test_concurrent_creates_and_deletes_of_one_artist_get_one_success_each(app, store_dir):
    """The existence checks run under the store's write lock: of four requests creating the same artist
    one gets 201 and three 409; of four removing it, one 200 and three 404 (not a 409 naming the
    server's store path)."""
    import threading
    clients = [app.test_client() for _ in range(4)]
    for method, expected in (("create", {201: 1, 409: 3}), ("delete", {200: 1, 404: 3})):
        barrier, codes, bodies = threading.Barrier(4), [], []

        def call(c, method=method, barrier=barrier, codes=codes, bodies=bodies):
            barrier.wait()
            r = (c.post("/v1/artists", headers=AUTH, json={"name": "dup"}) if method == "create"
                 else c.delete("/v1/artists/dup", headers=AUTH))
            codes.append(r.status_code)
            bodies.append(r.json)
        threads = [threading.Thread(target=call, args=(c,)) for c in clients]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert {c: codes.count(c) for c in set(codes)} == expected, bodies
        assert not any(str(store_dir) in str(b) for b in bodies)


def test_a_timed_out_batch_stops_and_frees_its_worker(store_dir, alice):
    """A thread cannot be killed, so a batch that ran past the time limit checks between images and
    stops: with one scoring worker, a request after a timed-out batch of 12 images is answered in
    about the time of an image or two, not after the whole abandoned batch."""
    import time
    app = create_app(store_dir, {"CHIMERA_API_TOKENS": [TOKEN], "CHIMERA_SCORE_WORKERS": 1},
                     embedders=Embedders(None, "off"))
    c = app.test_client()
    batch = {"images": [(open(alice[i % 6], "rb"), f"{i}.png") for i in range(12)]}
    start = time.perf_counter()
    assert c.post("/v1/score/batch", data=batch).status_code == 200
    whole = time.perf_counter() - start
    app.config["CHIMERA_REQUEST_TIMEOUT"] = whole / 12
    batch = {"images": [(open(alice[i % 6], "rb"), f"{i}.png") for i in range(12)]}
    assert c.post("/v1/score/batch", data=batch).status_code == 503
    app.config["CHIMERA_REQUEST_TIMEOUT"] = 30.0
    start = time.perf_counter()
    assert c.post("/v1/score", data={"image": (open(alice[0], "rb"), "a.png")}).status_code == 200
    assert time.perf_counter() - start < whole / 2


def test_a_write_request_waits_for_the_store_briefly_then_says_busy(tmp_path, monkeypatch, alice):
    """Each write request waiting for the store's lock holds one of the server's threads, so it waits
    CHIMERA_WRITE_WAIT seconds, not CHIMERA_LOCK_TIMEOUT's minute, answers 409 store_busy, and has
    changed nothing; once the other writer is done, the same request succeeds."""
    import time

    from index.store import Store
    monkeypatch.setenv("CHIMERA_WRITE_WAIT", "0.5")
    monkeypatch.setenv("CHIMERA_LOCK_TIMEOUT", "3600")
    app = create_app(tmp_path / "busy", {"CHIMERA_API_TOKENS": [TOKEN]},
                     embedders=Embedders(None, "unavailable: disabled in tests"))
    c = app.test_client()
    assert c.post("/v1/artists", headers=AUTH, json={"name": "erin"}).status_code == 201
    with Store.open(tmp_path / "busy") as held, held.writer():  # a CLI writer, say
        start = time.monotonic()
        busy = [c.post("/v1/artists", headers=AUTH, json={"name": "frank"}),
                c.post("/v1/artists/erin/works", headers=AUTH, data={"images": (open(alice[0], "rb"), "a.png")}),
                c.delete("/v1/artists/erin", headers=AUTH)]
        waited = time.monotonic() - start
    assert [(r.status_code, r.json["error"]) for r in busy] == [(409, "store_busy")] * 3, [r.json for r in busy]
    assert waited < 60  # three requests, each told well within CHIMERA_LOCK_TIMEOUT
    assert c.get("/v1/artists").json["artists"] == [{"name": "erin", "works": 0, "signatures": 0}]
    r = c.post("/v1/artists/erin/works", headers=AUTH, data={"images": (open(alice[0], "rb"), "a.png")})
    assert r.status_code == 201 and len(r.json["added"]) == 1


def test_settings_from_the_environment_are_checked_and_upload_names_kept_readable():
    from service.app import settings, upload_name
    with pytest.raises(ValueError, match="CHIMERA_MAX_BATCH must be an integer"):
        settings({"CHIMERA_MAX_BATCH": "abc"})
    with pytest.raises(ValueError, match="CHIMERA_REQUEST_TIMEOUT must be positive"):
        settings({"CHIMERA_REQUEST_TIMEOUT": "0"})
    with pytest.raises(ValueError, match="CHIMERA_REQUEST_TIMEOUT must be positive"):
        settings({"CHIMERA_REQUEST_TIMEOUT": "nan"})  # nan is no number of seconds
    with pytest.raises(ValueError, match="CHIMERA_WRITE_WAIT must be a number"):
        settings({"CHIMERA_WRITE_WAIT": "soon"})
    assert settings({"CHIMERA_SCORE_AUTH": "TRUE", "CHIMERA_API_TOKENS": "a, b,"}) == {
        "CHIMERA_SCORE_AUTH": True, "CHIMERA_API_TOKENS": ["a", "b"]}
    for unclear in ("on", "enabled", "2"):  # would have left scoring open without a word
        with pytest.raises(ValueError, match="CHIMERA_SCORE_AUTH must be"):
            settings({"CHIMERA_SCORE_AUTH": unclear})
    assert settings({"CHIMERA_SCORE_AUTH": "no"})["CHIMERA_SCORE_AUTH"] is False
    with pytest.raises(ValueError, match="CHIMERA_REQUEST_TIMEOUT must be at most"):
        settings({"CHIMERA_REQUEST_TIMEOUT": "1e10"})  # finite, but every score's wait overflowed: 500s
    with pytest.raises(ValueError, match="CHIMERA_API_TOKENS must be printable ASCII"):
        settings({"CHIMERA_API_TOKENS": "ok,t\u00f6k"})  # headers arrive as latin-1: it could never match
    assert [upload_name(n) for n in ("/", ".", None, "dir/a.png", "nul\x00.png", "zw\u200b.png")] == [
        "upload", "upload", "upload", "a.png", "nul\\x00.png", "zw\\u200b.png"]  # (was "zw\\x200b.png")


def test_scoring_auth_takes_any_case_of_bearer_and_says_when_no_token_can_pass(store_dir, alice):
    closed = create_app(store_dir, {"CHIMERA_API_TOKENS": [TOKEN], "CHIMERA_SCORE_AUTH": True},
                        embedders=Embedders(None, "off")).test_client()
    r = closed.post("/v1/score", headers={"Authorization": f"bearer {TOKEN}"},
                    data={"image": (open(alice[0], "rb"), "a.png")})
    assert r.status_code == 200
    locked = create_app(store_dir, {"CHIMERA_API_TOKENS": [], "CHIMERA_SCORE_AUTH": True},
                        embedders=Embedders(None, "off")).test_client()
    r = locked.post("/v1/score", data={"image": (open(alice[0], "rb"), "a.png")})
    assert (r.status_code, r.json["error"]) == (403, "scoring_disabled")


def test_adding_works_takes_at_most_a_batch_of_images_per_request(client):
    """Each added image is decoded and embedded under the store's write lock: a request of many is
    refused whole (400 batch_too_large) and adds nothing, as a scoring batch over the limit is."""
    too_many = [(png(Image.new("RGB", (32, 32), (i, 0, 0))), f"{i}.png") for i in range(17)]
    r = client.post("/v1/artists/alice/works", headers=AUTH, data={"images": too_many})
    assert (r.status_code, r.json["error"]) == (400, "batch_too_large")
    assert client.get("/v1/artists").json["artists"] == []


def test_the_server_refuses_an_oversized_body_after_its_headers(tmp_path):
    """A request announcing more than the upload limit is answered 413 before its body is read (the
    server's own limit was 1 GiB, spooled to disk before the app's 413)."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "--store", str(tmp_path / "store"), "--no-clip",
                             "serve", "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        with socket.create_connection(("127.0.0.1", port), timeout=20) as conn:
            conn.sendall(b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                         b"Content-Length: 209715200\r\n\r\n" + b"x" * 1024)  # 200 MiB announced, 1 KiB sent
            status = conn.recv(4096).split(b"\r\n", 1)[0]
        assert b" 413 " in status, status
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_the_server_stopped_by_a_signal_says_so_and_keeps_a_signal_it_was_told_to_ignore(tmp_path):
    """`chimera serve` stopped by SIGTERM or Ctrl-C exited 0, saying nothing (waitress's loop returns from
    them), where every other command exits 128 + the signal's number; and under `nohup` (SIGHUP
    ignored) a closed terminal stopped any command all the same."""
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    def start(ignore_hup: bool = False) -> subprocess.Popen:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]

        def signals() -> None:  # as from a terminal, whatever the tests were started from (a background job
            signal.signal(signal.SIGINT, signal.SIG_DFL)  # ignores SIGINT, and so would the server)
            signal.signal(signal.SIGHUP, signal.SIG_IGN if ignore_hup else signal.SIG_DFL)
        proc = subprocess.Popen([sys.executable, "-m", "service.cli", "--store", str(tmp_path / "store"), "--no-clip",
                                 "serve", "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True, preexec_fn=signals)
        for _ in range(300):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
                return proc
            except OSError:
                time.sleep(0.1)
        proc.kill()
        raise AssertionError("the server did not start")

    for sig, code, says in ((signal.SIGTERM, 143, "chimera: stopped by SIGTERM"), (signal.SIGINT, 130, "chimera: interrupted")):
        new = not (tmp_path / "store").exists()
        proc = start()
        proc.send_signal(sig)
        assert proc.wait(timeout=20) == code and says in (err := proc.stderr.read())
        # a store it had to make (a mistyped --store?) is said to be new and empty, once
        assert ("chimera: note: there was no store at" in err) == new, err
    proc = start(ignore_hup=True)
    try:
        proc.send_signal(signal.SIGHUP)
        time.sleep(1)
        assert proc.poll() is None  # still serving
    finally:
        proc.terminate()
        assert proc.wait(timeout=20) == 143


def test_artists_registered_before_the_look_alike_rule_can_still_be_added_to(client, store_dir, icons):
    """Names the rule now refuses for new artists (a trailing space) stay usable for an artist the store
    already has, by the API and the CLI; the zero-width joiners Persian names and emoji need are allowed."""
    from detector.images import load
    from index.store import Store
    from service.cli import main
    from service.ingest import add_images
    folder = icons("old", 2, (40, 120, 200))
    with Store.open(store_dir, create=True) as store:
        add_images(store, Embedders(None, "off"), "alice ", [load(sorted(folder.iterdir())[0])])
    r = client.post(f"/v1/artists/{quote('alice ')}/works", headers=AUTH,
                    data={"images": [(png(Image.new("RGB", (32, 32), (9, 9, 9))), "x.png")]})
    assert r.status_code == 201, r.json
    assert main(["--store", str(store_dir), "--no-clip", "index", "add", "--artist", "alice ",
                 str(sorted(folder.iterdir())[1])]) == 0
    assert client.post("/v1/artists", headers=AUTH, json={"name": "bob "}).json["error"] == "invalid_name"
    assert client.post("/v1/artists", headers=AUTH, json={"name": "\u0645\u06cc\u200c\u062e\u0648\u0627\u0645"}).status_code == 201


def test_odd_requests_get_their_http_due(client, store_dir, icons):
    """A 405 says which methods are allowed; JSON nested past Python's parser is a bad name, not a
    500; a big-endian 16-bit TIFF is an image like its little-endian twin; and a store given by a
    relative path is named "the store" in messages without the word "store" being replaced."""
    r = client.put("/v1/artists")
    assert r.status_code == 405 and set(r.headers["Allow"].split(", ")) >= {"GET", "POST"}
    r = client.post("/v1/artists", headers={**AUTH, "Content-Type": "application/json"},
                    data="[" * 100_000 + "]" * 100_000)
    assert (r.status_code, r.json["error"]) == (400, "invalid_name")
    for order in ("<u2", ">u2"):
        buf = io.BytesIO()
        Image.fromarray((np.arange(4096).reshape(64, 64) * 16).astype(order)).save(buf, "TIFF")
        buf.seek(0)
        r = client.post("/v1/score", data={"image": (buf, "deep.tif")})
        assert r.status_code == 200 and r.json["width"] == 64, (order, r.json)


def test_urls_that_are_not_utf8_are_refused_and_uploads_keep_only_their_file_name(client, alice):
    """Werkzeug reads each undecodable byte of a URL as U+FFFD, so /v1/artists/%FF/works and %FE would
    add to one artist named "\ufffd"; and a Windows client's C:\\Users\\... path was kept whole as the
    work's source, which every scorer is shown."""
    for raw in ("%FF", "%C3", "%FE"):
        r = client.post(f"/v1/artists/{raw}/works", headers=AUTH,
                        data={"images": [(png(Image.new("RGB", (32, 32), (9, 9, 9))), "x.png")]})
        assert (r.status_code, r.json["error"]) == (400, "bad_request") and "UTF-8" in r.json["message"]
    assert [a["name"] for a in client.get("/v1/artists").json["artists"]] == ["alice"]
    icon = Image.new("RGB", (48, 48), (200, 30, 30))
    icon.paste((20, 20, 220), (10, 10, 30, 40))
    name = b"C:\\\\Users\\\\maria\\\\unreleased\\\\red.png"  # the quoted-string escapes a Windows client sends
    body = (b'--B\r\nContent-Disposition: form-data; name="images"; filename="' + name + b'"\r\n\r\n'
            + png(icon).getvalue() + b"\r\n--B--\r\n")
    r = client.post("/v1/artists/alice/works", headers=AUTH, data=body, content_type="multipart/form-data; boundary=B")
    assert r.status_code == 201, r.json
    r = client.post("/v1/score", data={"image": (png(icon), "q.png")})
    assert r.json["matches"][0]["source"] == "red.png"
    r = client.post("/v1/score", data={"image": (png(icon), "a:b.png")})  # a POSIX name, not a Windows drive
    assert r.json["path"] == "a:b.png"
    for name, shown in ((b"C:\\Users\\maria\\red.png", "red.png"),  # unescaped, as browsers and curl -F send it
                        (b'say \\"hi\\".png', 'say "hi".png')):  # (Werkzeug gave "C:Usersmariared.png")
        body = (b'--B\r\nContent-Disposition: form-data; name="image"; filename="' + name + b'"\r\n\r\n'
                + png(icon).getvalue() + b"\r\n--B--\r\n")
        r = client.post("/v1/score", data=body, content_type="multipart/form-data; boundary=B")
        assert r.json["path"] == shown


def test_store_messages_name_a_relative_store_once(tmp_path, monkeypatch):
    from index.store import Store
    monkeypatch.chdir(tmp_path)
    app = create_app("store", {"CHIMERA_API_TOKENS": [TOKEN], "TESTING": True, "CHIMERA_WRITE_WAIT": 0.01},
                     embedders=Embedders(None, "unavailable: disabled in tests"))
    with Store.open(tmp_path / "store", create=True) as held, held.writer():  # another writer holds the lock
        r = app.test_client().post("/v1/artists", headers=AUTH, json={"name": "erin"})
    assert r.status_code == 409 and r.json["message"].startswith("the store is busy"), r.json


def documented(path: str, method: str, status: int) -> bool:
    return str(status) in spec()["paths"][path][method]["responses"]


def test_writes_committed_but_not_indexed_answer_success_with_a_warning(client, alice, icons, monkeypatch):
    """When the catalogue holds a change but saving the search indexes fails (a full disk), the change
    happened: a 409 "conflict" without the added work ids sent clients to retry, and the retry got
    every file skipped (or 404 for a removal). It is now the usual success body with a `warning`."""
    import faiss
    real = faiss.write_index

    def disk_full(index, path):
        raise RuntimeError("Error in faiss::FileIOWriter: could not write: No space left on device")
    monkeypatch.setattr(faiss, "write_index", disk_full)
    new = sorted(icons("alice2", 2, (30, 200, 90)).iterdir())
    r = client.post("/v1/artists/alice/works", headers=AUTH, data={"images": [(open(p, "rb"), p.name) for p in new]})
    assert r.status_code == 201 and len(r.json["added"]) == 2 and "No space left" in r.json["warning"], r.json
    assert str(client.application.extensions["chimera"].store_path) not in r.json["warning"]
    valid(r.json, "AddReport")
    gone = r.json["added"][0]
    r = client.delete(f"/v1/artists/alice/works/{gone}", headers=AUTH)
    assert r.status_code == 200 and r.json["removed"] == {"work": gone} and "search indexes" in r.json["warning"]
    valid(r.json, "Removed")
    r = client.post("/v1/artists", headers=AUTH, json={"name": "bob"})  # indexes missing since: not saved again
    assert r.status_code == 201 and r.json["name"] == "bob" and "search indexes" in r.json["warning"], r.json
    valid(r.json, "Artist")
    assert client.post("/v1/artists", headers=AUTH, json={"name": "bob"}).json["error"] == "exists"
    monkeypatch.setattr(faiss, "write_index", real)
    assert client.get("/v1/artists").json["artists"][0]["works"] == 7
    r = client.post("/v1/score", data={"image": (open(new[1], "rb"), "q.png")})  # indexes rebuilt from the catalogue
    assert r.json["verdict"]["label"] == "copy" and r.json["matches"][0]["work"] == gone + 1


def test_a_store_this_install_cannot_score_still_lists_artists_and_thumbnails(client, alice, store_dir):
    """A store whose vectors were made by another embedder version refuses scoring (409, documented);
    the routes that only read it (health, the artist list, thumbnails, the page's data) still answer."""
    import json
    import sqlite3
    with sqlite3.connect(store_dir / "catalogue.sqlite") as db:
        desc = json.loads(db.execute("SELECT descriptor FROM embedders WHERE kind='style'").fetchone()[0])
        db.execute("UPDATE embedders SET descriptor=? WHERE kind='style'", (json.dumps(desc | {"version": 0}),))
    fresh = create_app(store_dir, {"TESTING": True}, embedders=Embedders(None, "unavailable: disabled in tests"))
    c = fresh.test_client()
    assert c.get("/healthz").status_code == 200 and c.get("/healthz").json["artists"] == 1
    assert c.get("/v1/artists").json["artists"][0]["works"] == 6
    assert c.get("/v1/works/1/thumbnail").status_code == 200
    r = c.post("/v1/score", data={"image": (open(alice[0], "rb"), "a.png")})
    assert r.status_code == 409 and "embedder mismatch for 'style'" in r.json["message"]
    assert documented("/v1/score", "post", 409) and documented("/v1/score/batch", "post", 409)
