"""The HTTP API and web page: a Flask application factory (`create_app`), served by waitress.

Scoring is open unless configured otherwise; every write needs a bearer token.
No endpoint takes a server-side path: images arrive as uploads, and works are
shown from the thumbnails kept in the store. Every error is JSON
`{"error": code, "message": text}`: a 4xx status for the request's fault, 503 when scoring
took longer than the request time limit.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import re
import sys
import threading
from concurrent.futures import ThreadPoolExecutor, TimeoutError as FutureTimeout
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Callable
from urllib.parse import unquote_to_bytes

from flask import Flask, Response, jsonify, request, send_from_directory
from werkzeug.exceptions import HTTPException

from detector.embedders import Embedders
from detector.images import ImageError, decode, for_terminal
from detector.score import Scorer, error_result
from index.names import NAME_RULE, addable_name, valid_name
from index.store import IndexesNotSaved, Store, StoreError, default_store_path
from service.ingest import add_images
from service.openapi import spec

# MAX_FORM_MEMORY_SIZE: an image sent as a text part (no file name) is read, so it gets the 400 saying
# how to send it, not Flask's 413 for text parts over 500 kB
DEFAULTS = {"MAX_CONTENT_LENGTH": 32 * 1024 * 1024, "MAX_FORM_MEMORY_SIZE": 32 * 1024 * 1024,
            "CHIMERA_MAX_PIXELS": 16 * 1024 * 1024,
            "CHIMERA_MAX_BATCH": 16, "CHIMERA_REQUEST_TIMEOUT": 30.0, "CHIMERA_SCORE_WORKERS": 4,
            "CHIMERA_WRITE_WAIT": 10.0, "CHIMERA_SCORE_AUTH": False}
SETTINGS = (("CHIMERA_MAX_PIXELS", int), ("CHIMERA_MAX_BATCH", int), ("CHIMERA_REQUEST_TIMEOUT", float),
            ("CHIMERA_SCORE_WORKERS", int), ("CHIMERA_WRITE_WAIT", float))  # numeric settings read from the environment


RAW_FILENAME = re.compile(r'filename="((?:[^"\\]|\\.)*)"')


def upload_name(filename: str | None, disposition: str | None = None) -> str:
    """The name an upload is reported and stored under: its last path part (POSIX or Windows: the rest
    is the client's private folder, and a work's source is shown to every scorer), unprintable characters
    as `for_terminal` shows them, "upload" when nothing is left (a client may send "/", "." or nothing).
    A Windows client sends C:\\Users\\... unescaped in its part's `disposition`, and Werkzeug, reading
    backslashes there as escapes, gives "C:Users..." as the file name: the raw header is read for those."""
    raw = RAW_FILENAME.search(disposition or "")
    raw_name = raw.group(1).replace('\\"', '"') if raw else ""  # (an escaped quote: no Windows name has one)
    name = PurePosixPath(PureWindowsPath(raw_name).name if "\\" in raw_name else filename or "").name
    if "\\" in name:  # sent escaped (C:\\\\Users...), so read as C:\\Users...; a colon alone is a POSIX name's
        name = PureWindowsPath(name).name
    return for_terminal(name) or "upload"


def settings(environ: dict[str, str]) -> dict[str, Any]:
    """The server's settings from the environment, each checked: a bad value is a clear error at start."""
    out: dict[str, Any] = {}
    for key, cast in SETTINGS:
        if key in environ:
            try:
                out[key] = cast(environ[key])
            except ValueError:
                raise ValueError(f"{key} must be a{'n integer' if cast is int else ' number'} "
                                 f"(got {environ[key]!r})") from None
            if not math.isfinite(out[key]) or out[key] <= 0:  # nan passes "<= 0"
                raise ValueError(f"{key} must be positive (got {environ[key]!r})")
            if cast is float and out[key] > threading.TIMEOUT_MAX:  # a wait that long overflows the clock
                raise ValueError(f"{key} must be at most {threading.TIMEOUT_MAX:.0f} seconds (got {environ[key]!r})")
    auth = environ.get("CHIMERA_SCORE_AUTH", "").strip().lower()
    if auth not in ("", "0", "false", "no", "1", "true", "yes"):  # "on" must not leave scoring open unnoticed
        raise ValueError(f"CHIMERA_SCORE_AUTH must be 1, true or yes (or 0, false, no) (got {auth!r})")
    out["CHIMERA_SCORE_AUTH"] = auth in ("1", "true", "yes")
    out["CHIMERA_API_TOKENS"] = [t.strip() for t in environ.get("CHIMERA_API_TOKENS", "").split(",") if t.strip()]
    if any(not (t.isascii() and t.isprintable()) for t in out["CHIMERA_API_TOKENS"]):  # HTTP headers are latin-1:
        raise ValueError("CHIMERA_API_TOKENS must be printable ASCII")  # a UTF-8 token would never match
    return out


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class Service:
    """What the app shares between requests: embedders (loaded once) and one store per thread."""

    def __init__(self, store_path: Path, embedders: Embedders, workers: int = 4):
        self.store_path = store_path
        self.embedders = embedders
        self.local = threading.local()
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="chimera-score")

    def store(self) -> Store:
        """This thread's own connection to the store (SQLite connections are not shared across threads),
        for the routes that only read it."""
        if getattr(self.local, "store", None) is None:
            self.local.store = Store.open(self.store_path, create=True)
        return self.local.store

    def scorer(self) -> Scorer:
        """A Scorer on this thread's store. Made only for scoring: a store whose vectors this install
        would make differently refuses scoring (409), and must still list its artists and thumbnails."""
        if getattr(self.local, "scorer", None) is None:
            self.local.scorer = Scorer(self.store(), self.embedders)
        return self.local.scorer


def create_app(store: Path | str | None = None, config: dict[str, Any] | None = None,
               embedders: Embedders | None = None) -> Flask:
    app = Flask(__name__, static_folder=None)
    app.config.update(DEFAULTS)
    app.config.update(settings(dict(os.environ)))
    app.config.update(config or {})
    # absolute: error messages name the store by this path, which `store_error` replaces (a relative
    # "store" would also replace the word everywhere in a message)
    path = (Path(store) if store is not None else default_store_path()).absolute()
    Store.open(path, create=True).close()
    svc = Service(path, embedders or Embedders.load(), workers=app.config["CHIMERA_SCORE_WORKERS"])
    app.extensions["chimera"] = svc
    static = Path(__file__).with_name("static")

    # ------------------------------------------------------------------ helpers
    def authorised() -> bool:
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        given = value.strip().encode() if scheme.lower() == "bearer" else b""  # schemes are case-insensitive
        ok = False
        for token in app.config["CHIMERA_API_TOKENS"]:  # compare with all: no early exit, constant time each
            ok |= hmac.compare_digest(given, token.encode())
        return ok

    def require_token() -> None:
        if not app.config["CHIMERA_API_TOKENS"]:
            raise ApiError(403, "writes_disabled", "no API tokens are configured (set CHIMERA_API_TOKENS)")
        if not authorised():
            raise ApiError(401, "unauthorized", "this endpoint needs 'Authorization: Bearer <token>'")

    def uploads(field: str) -> list[tuple[str, bytes]]:
        files = request.files.getlist(field)
        if not files and request.mimetype == "multipart/form-data" and not request.files and not request.form:
            # Werkzeug drops a whole body it cannot parse, such as one whose file name is not UTF-8
            raise ApiError(400, "missing_image", f"the multipart body holds no part that could be read: send the "
                                                 f"image(s) as form field '{field}', part headers (file names) in UTF-8")
        if not files and field in request.form:
            raise ApiError(400, "missing_image", f"form field '{field}' was sent as text, not as a file: send the "
                                                 f"image(s) as file parts (with a file name), as curl -F "
                                                 f"'{field}=@picture.png' does")
        if not files:
            raise ApiError(400, "missing_image", f"send the image(s) as multipart form field '{field}'")
        return [(upload_name(f.filename, f.headers.get("Content-Disposition")), f.read()) for f in files]

    def decoded(name: str, data: bytes):
        return decode(data, name, max_pixels=app.config["CHIMERA_MAX_PIXELS"])

    def in_time(fn: Callable[[threading.Event], Any]) -> Any:
        """Run fn(stop) on the scoring pool; give up (503) past the request time limit.

        A thread cannot be killed: on time-out the job is cancelled if it has not started, and `stop`
        is set so a batch scores no further image, which frees its worker for the requests after it
        (an image already being scored still finishes)."""
        stop = threading.Event()
        future = svc.pool.submit(fn, stop)
        try:
            return future.result(timeout=app.config["CHIMERA_REQUEST_TIMEOUT"])
        except FutureTimeout:
            stop.set()
            future.cancel()
            raise ApiError(503, "timeout", f"scoring took longer than {app.config['CHIMERA_REQUEST_TIMEOUT']}s")

    def artist_exists(name: str) -> bool:
        return svc.store().has_artist(name)

    def store_for_writes() -> Store:
        return Store.open(svc.store_path, create=True)

    def write_wait() -> float:
        """How long a write request waits for the store's lock (another request's, or a CLI writer's)
        before answering 409 store_busy: each waiting request holds one of the server's threads, so
        a queue of writers must not keep them from scoring for CHIMERA_LOCK_TIMEOUT's minute."""
        return app.config["CHIMERA_WRITE_WAIT"]

    @app.before_request
    def utf8_path() -> None:
        """A URL whose percent-escapes are not UTF-8 (/v1/artists/%FF/works) is refused: Werkzeug would
        read each bad byte as U+FFFD, and three different URLs would name one artist "\ufffd"."""
        uri = request.environ.get("REQUEST_URI") or request.environ.get("RAW_URI")  # as sent (waitress, Werkzeug)
        try:
            if uri is None:
                request.environ.get("PATH_INFO", "").encode("latin-1").decode("utf-8")  # WSGI's bytes as latin-1
            else:
                unquote_to_bytes(uri.partition("?")[0]).decode("utf-8")
        except UnicodeError:
            raise ApiError(400, "bad_request", "the URL's path must be UTF-8 (percent-escapes of UTF-8 bytes)")

    # ------------------------------------------------------------------- errors
    @app.errorhandler(ApiError)
    def api_error(e: ApiError):
        return jsonify(error=e.code, message=e.message), e.status

    @app.errorhandler(HTTPException)
    def http_error(e: HTTPException):
        code = {413: "too_large", 404: "not_found", 405: "method_not_allowed", 500: "internal"}.get(
            e.code or 400, "bad_request")
        limit = app.config["MAX_CONTENT_LENGTH"] or 0
        if e.code == 413 and request.content_length is not None and request.content_length <= limit:
            # under the size limit, refused for its count of form parts (Flask's MAX_FORM_PARTS)
            return jsonify(error="batch_too_large", message=f"too many form parts: at most "
                           f"{app.config['CHIMERA_MAX_BATCH']} images per request"), 400
        size = f"{limit // 2**20} MiB" if limit >= 2**20 else f"{limit} bytes"
        message = f"the upload is over this server's limit of {size}" if e.code == 413 else e.description
        response = jsonify(error=code, message=message)
        response.headers.extend((k, v) for k, v in e.get_headers() if k.lower() != "content-type")  # 405's Allow
        return response, e.code

    @app.errorhandler(Exception)
    def unexpected(e: Exception):  # a bug of ours: logged, and still JSON
        app.logger.exception("unexpected error")
        return jsonify(error="internal", message=f"internal error ({type(e).__name__})"), 500

    def public(message: str) -> str:
        """A store's message without the server's path."""
        where = str(svc.store_path)
        for said in (f"the store at {where}", f"store {where}", where):  # however a message names it
            message = message.replace(said, "the store")
        return message

    @app.errorhandler(StoreError)
    def store_error(e: StoreError):
        message = public(str(e))
        return jsonify(error="store_busy" if "busy" in message else "conflict", message=message), 409

    # ------------------------------------------------------------------- routes
    @app.get("/")
    def page():
        return send_from_directory(static, "index.html")

    @app.get("/static/<path:name>")
    def assets(name: str):
        return send_from_directory(static, name)

    @app.get("/healthz")
    def healthz():
        store = svc.store()
        return jsonify(status="ok", artists=len(store.artists()), embedders=svc.embedders.status)

    @app.get("/v1/openapi.json")
    def openapi():
        return jsonify(spec())

    @app.get("/v1/artists")
    def artists():
        store = svc.store()
        return jsonify(artists=store.artists(), generated=store.generated_count())

    @app.post("/v1/artists")
    def create_artist():
        require_token()
        try:
            body = request.get_json(silent=True)
        except RecursionError:  # JSON nested deeper than Python's parser goes: not a name
            body = None
        name = body.get("name") if isinstance(body, dict) else None
        if not valid_name(name):
            raise ApiError(400, "invalid_name", f"send JSON {{\"name\": \"...\"}}: {NAME_RULE}")
        body: dict[str, Any] = {"name": name, "works": 0, "signatures": 0}
        try:
            with store_for_writes() as store, store.writer(write_wait()) as w:
                if store.has_artist(name):  # checked under the write lock: of two requests, one creates
                    raise ApiError(409, "exists", f"artist {name!r} already exists")
                w.ensure_artist(name)
        except IndexesNotSaved as e:  # created: a retry would only get "exists"
            body["warning"] = public(str(e))
        return jsonify(body), 201

    def add(name: str, signature: bool):
        require_token()
        if not addable_name(name, artist_exists):
            raise ApiError(400, "invalid_name", f"artist names are {NAME_RULE}")
        files = uploads("images")
        if len(files) > app.config["CHIMERA_MAX_BATCH"]:  # memory and write-lock time grow with the count
            raise ApiError(400, "batch_too_large", f"at most {app.config['CHIMERA_MAX_BATCH']} images per request")
        images, failed = [], []
        for fname, data in files:  # all decoded before the write lock: a request of bad files changes nothing
            try:
                images.append(decoded(fname, data))
            except ImageError as e:
                failed.append({"file": fname, "reason": e.reason})
        if not images:
            raise ApiError(400, "invalid_image", "; ".join(f"{f['file']}: {f['reason']}" for f in failed))
        with store_for_writes() as store:
            report = add_images(store, svc.embedders, name, images, signature=signature, lock_timeout=write_wait(),
                                existing_only=not valid_name(name))
        body = {"added": report.added, "skipped": [{"file": s, "reason": r} for s, r in report.skipped],
                "failed": failed + [{"file": f, "reason": r} for f, r in report.failed]}
        if report.warning:  # added: a retry would only skip them; the client must learn their ids
            body["warning"] = public(report.warning)
        return jsonify(body), 201 if report.added else 200

    @app.post("/v1/artists/<name>/works")
    def add_works(name: str):
        return add(name, signature=False)

    @app.post("/v1/artists/<name>/signatures")
    def add_signatures(name: str):
        return add(name, signature=True)

    def removal(remove: Callable[[Store, Any], dict]):
        """Run `remove(store, writer)` under the write lock: the Removed body. Committed removals whose
        indexes could not be saved are removals, with a warning: a retry would only get 404."""
        body = {}
        try:
            with store_for_writes() as store, store.writer(write_wait()) as w:
                body["removed"] = remove(store, w)
        except IndexesNotSaved as e:
            body["warning"] = public(str(e))
        return jsonify(body)

    @app.delete("/v1/artists/<name>")
    def delete_artist(name: str):
        require_token()

        def remove(store: Store, w) -> dict:
            if not store.has_artist(name):  # under the write lock: of two requests, one removes
                raise ApiError(404, "not_found", f"no artist named {name!r}")
            return w.remove_artist(name)
        return removal(remove)

    def removal_of_one(kind: str, item: int, remove: Callable[[Any], None]):
        """DELETE of one of an artist's works or signature samples, `remove(writer)`: the Removed body
        {kind: item}, or 404 when the artist has no such one."""
        require_token()

        def run(store: Store, w) -> dict:
            try:
                remove(w)
            except StoreError as e:
                raise ApiError(404, "not_found", str(e)) from None
            return {kind: item}
        return removal(run)

    @app.delete("/v1/artists/<name>/works/<int:work_id>")
    def delete_work(name: str, work_id: int):
        return removal_of_one("work", work_id, lambda w: w.remove_work(name, work_id))

    @app.delete("/v1/artists/<name>/signatures/<int:signature_id>")
    def delete_signature(name: str, signature_id: int):
        return removal_of_one("signature", signature_id, lambda w: w.remove_signature(name, signature_id))

    @app.get("/v1/works/<int:work_id>/thumbnail")
    def thumbnail(work_id: int):
        png = svc.store().thumbnail(work_id)
        if png is None:
            raise ApiError(404, "not_found", f"no work {work_id}")
        return Response(png, mimetype="image/png")

    def score_one(fname: str, data: bytes, artist: str | None) -> dict:
        try:
            img = decoded(fname, data)
        except ImageError as e:  # the record a scan writes for the same bytes
            return error_result(fname, e.reason, hashlib.sha256(data).hexdigest())
        try:
            result = svc.scorer().score(img, artist)
        except ValueError as e:  # the artist was removed while the request waited
            raise ApiError(404, "unknown_artist", str(e)) from None
        for m in result["matches"]:  # a work added from the server's disk keeps its path there: not for scorers
            m["source"] = PurePosixPath(m["source"]).name  # (as stored: escaped already, `\\` included)
        return result

    def check_score_request() -> str | None:
        if app.config["CHIMERA_SCORE_AUTH"] and not app.config["CHIMERA_API_TOKENS"]:
            raise ApiError(403, "scoring_disabled", "CHIMERA_SCORE_AUTH is set but no API tokens are configured")
        if app.config["CHIMERA_SCORE_AUTH"] and not authorised():
            raise ApiError(401, "unauthorized", "scoring needs 'Authorization: Bearer <token>' on this server")
        artist = request.form.get("artist") or None
        if artist is not None and not artist_exists(artist):
            raise ApiError(404, "unknown_artist", f"no artist named {artist!r}")
        return artist

    @app.post("/v1/score")
    def score():
        artist = check_score_request()
        (fname, data), *rest = uploads("image")
        if rest:
            raise ApiError(400, "too_many_images", "send one 'image'; use /v1/score/batch for several")
        result = in_time(lambda stop: score_one(fname, data, artist))
        if result["error"]:
            raise ApiError(400, "invalid_image", f"{fname}: {result['error']}")
        return jsonify(result)

    @app.post("/v1/score/batch")
    def score_batch():
        artist = check_score_request()
        files = uploads("images")
        if len(files) > app.config["CHIMERA_MAX_BATCH"]:
            raise ApiError(400, "batch_too_large", f"at most {app.config['CHIMERA_MAX_BATCH']} images per batch")
        def each(stop: threading.Event) -> list[dict]:
            out = []
            for f, d in files:
                if stop.is_set():  # the request timed out: free the worker
                    break
                out.append(score_one(f, d, artist))
            return out
        return jsonify(in_time(each))

    return app


def serve(host: str, port: int, store: Path | str | None, threads: int = 8,
          embedders: Embedders | None = None) -> None:
    """Run the app on waitress, a production WSGI server (pure Python, no build step)."""
    import waitress.server
    if threads < 1:
        raise ValueError(f"--threads must be at least 1 (got {threads})")
    new = not ((Path(store) if store is not None else default_store_path()) / "catalogue.sqlite").exists()
    app = create_app(store, embedders=embedders)
    # waitress's own body limit is 1 GiB, spooled to disk before the app's JSON 413: at twice the app's
    # limit, an upload a little too large still gets the JSON answer, and a huge one a plain 413 after its headers
    server = waitress.server.create_server(app, host=host, port=port, threads=threads, ident="chimera",
                                           max_request_body_size=2 * app.config["MAX_CONTENT_LENGTH"])
    # said once the port is bound: a port in use or a foreign host is an error, not this line then one
    print(f"chimera: serving {app.extensions['chimera'].store_path} on http://{host}:{port}/", flush=True)
    if new:  # the API can register works, so a missing store is made; but a mistyped path should not pass unseen
        print(f"chimera: note: there was no store at {app.extensions['chimera'].store_path}: this is a new, empty "
              "one (add works with `chimera index add` or the API)", file=sys.stderr, flush=True)
    try:
        server.run()
    finally:
        server.close()
