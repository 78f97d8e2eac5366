"""The OpenAPI 3.1 document of the HTTP API; tests keep it true (routes and response shapes)."""

from __future__ import annotations

from typing import Any

from detector.score import RESULT_VERSION
from index.names import NAME_CHAR

BOX = {"type": "array", "items": {"type": "integer"}, "minItems": 4, "maxItems": 4}
UNIT = {"type": "number", "minimum": 0, "maximum": 1}
NULLABLE_STR = {"type": ["string", "null"]}
WARNING = {"type": "string", "description": "the change is committed, but the store's search indexes could not be "
                                            "saved (a full disk); they are rebuilt from the catalogue when next needed"}

SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "required": ["error", "message"], "additionalProperties": False,
              "properties": {"error": {"type": "string"}, "message": {"type": "string"}}},
    "Result": {
        "type": "object", "description": "The detector's result object (docs/result.md).",
        "required": ["version", "path", "sha256", "width", "height", "artists", "matches", "signatures",
                     "verdict", "embedders", "error"],
        "properties": {
            "version": {"type": "string"}, "path": {"type": "string"}, "sha256": NULLABLE_STR,
            "width": {"type": ["integer", "null"]}, "height": {"type": ["integer", "null"]},
            "artists": {"type": "array", "items": {
                "type": "object", "required": ["artist", "style", "derivative", "copy"],
                "properties": {"artist": {"type": "string"}, "style": UNIT, "derivative": UNIT, "copy": UNIT}}},
            "matches": {"type": "array", "items": {
                "type": "object", "required": ["artist", "work", "source", "similarity", "box"],
                "properties": {"artist": NULLABLE_STR, "work": {"type": "integer"}, "source": {"type": "string", "description": "the name of the file the work was added from (its "
                                                   "last path part: the server's folders are not shown)"},
                               "similarity": UNIT, "box": BOX, "run": {"type": "string"},
                               "checkpoint": NULLABLE_STR, "seed": {"type": ["integer", "null"]},
                               "index": {"type": ["integer", "null"]}}}},
            "signatures": {"type": "array", "items": {
                "type": "object", "required": ["box", "score", "artist", "similarity", "forged"],
                "properties": {"box": BOX, "score": UNIT, "artist": NULLABLE_STR,
                               "similarity": UNIT, "forged": {"type": "boolean"}}}},
            "verdict": {"oneOf": [{"type": "null"}, {
                "type": "object", "required": ["label", "artist", "confidence"],
                "properties": {"label": {"enum": ["copy", "derivative", "style_match", "unrelated"]},
                               "artist": NULLABLE_STR, "confidence": UNIT}}]},
            "embedders": {"type": "object", "additionalProperties": {"type": "string"}},
            "error": NULLABLE_STR}},
    "Artist": {"type": "object", "required": ["name", "works", "signatures"],
               "properties": {"name": {"type": "string"}, "works": {"type": "integer"},
                              "signatures": {"type": "integer"},
                              "warning": WARNING}},
    "ArtistList": {"type": "object", "required": ["artists", "generated"],
                   "properties": {"artists": {"type": "array", "items": {"$ref": "#/components/schemas/Artist"}},
                                  "generated": {"type": "integer"}}},
    "AddReport": {"type": "object", "required": ["added", "skipped", "failed"],
                  "properties": {"added": {"type": "array", "items": {"type": "integer"},
                                           "description": "ids of what was added: work ids (works), signature "
                                                          "sample ids (signatures); each kind is removed by its "
                                                          "own DELETE route"},
                                 "skipped": {"type": "array", "items": {"$ref": "#/components/schemas/FileIssue"}},
                                 "failed": {"type": "array", "items": {"$ref": "#/components/schemas/FileIssue"}},
                                 "warning": WARNING}},
    "FileIssue": {"type": "object", "required": ["file", "reason"],
                  "properties": {"file": {"type": "string"}, "reason": {"type": "string"}}},
    "Removed": {"type": "object", "required": ["removed"],
                "properties": {"removed": {"type": "object"}, "warning": WARNING}},
    "Health": {"type": "object", "required": ["status", "artists", "embedders"],
               "properties": {"status": {"const": "ok"}, "artists": {"type": "integer"},
                              "embedders": {"type": "object"}}},
}


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(name: str, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": _ref(name)}}}


def _errors(*codes: int) -> dict:
    return {str(c): _json("Error", "error") for c in codes}


def _upload(field: str, many: bool, artist: bool = False) -> dict:
    item = {"type": "string", "contentMediaType": "application/octet-stream"}
    props: dict[str, Any] = {field: {"type": "array", "items": item} if many else item}
    if artist:
        props["artist"] = {"type": "string", "description": "score against this artist only"}
    return {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": [field], "properties": props}}}}


# artist names (index.names.valid_name): 1-100 characters, no spaces at either end, no path separators or
# control characters (the server also refuses names that could show like another's: not in NFC, or with
# invisible characters or spaces other than U+0020)
_EDGE = "[^\\s\\x00-\\x1f\\x7f-\\x9f/\\\\]"
NAME = {"type": "string", "minLength": 1, "maxLength": 100, "pattern": f"^{_EDGE}({NAME_CHAR}*{_EDGE})?$"}
NAME_PARAM = {"name": "name", "in": "path", "required": True, "schema": NAME}
AUTH = [{"bearer": []}]
SCORE_AUTH = [{}, {"bearer": []}]  # open, unless the server sets CHIMERA_SCORE_AUTH


def spec() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "chimera-provenance", "version": RESULT_VERSION,
                 "description": "Score illustrations for style, copies, derivatives and signatures; manage the "
                                "reference store. Writes need a bearer token; scoring is open unless configured."},
        "components": {"schemas": SCHEMAS,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": {
            "/healthz": {"get": {"summary": "liveness and what the server runs",
                                 "responses": {"200": _json("Health", "ok")}}},
            "/v1/openapi.json": {"get": {"summary": "this document",
                                         "responses": {"200": {"description": "OpenAPI 3.1"}}}},
            "/v1/score": {"post": {
                "summary": "score one image", "security": SCORE_AUTH,
                "requestBody": _upload("image", False, artist=True),
                "responses": {"200": _json("Result", "the result object"), **_errors(400, 401, 403, 404, 409, 413, 503)}}},
            "/v1/score/batch": {"post": {
                "summary": "score several images; unreadable ones come back with `error` set",
                "security": SCORE_AUTH, "requestBody": _upload("images", True, artist=True),
                "responses": {"200": {"description": "one result per image, in order", "content": {
                    "application/json": {"schema": {"type": "array", "items": _ref("Result")}}}},
                    **_errors(400, 401, 403, 404, 409, 413, 503)}}},
            "/v1/artists": {
                "get": {"summary": "registered artists", "responses": {"200": _json("ArtistList", "artists")}},
                "post": {"summary": "create an artist", "security": AUTH,
                         "requestBody": {"required": True, "content": {"application/json": {"schema": {
                             "type": "object", "required": ["name"], "properties": {"name": NAME}}}}},
                         "responses": {"201": _json("Artist", "created"), **_errors(400, 401, 403, 409)}}},
            "/v1/artists/{name}": {"delete": {
                "summary": "remove an artist with its works and signatures", "security": AUTH,
                "parameters": [NAME_PARAM],
                "responses": {"200": _json("Removed", "removed"), **_errors(401, 403, 404, 409)}}},
            "/v1/artists/{name}/works": {"post": {
                "summary": "add works, at most CHIMERA_MAX_BATCH a request (the artist is created if new)",
                "security": AUTH, "parameters": [NAME_PARAM],
                "requestBody": _upload("images", True),
                "responses": {"201": _json("AddReport", "added"), "200": _json("AddReport", "nothing new"),
                              **_errors(400, 401, 403, 409, 413)}}},
            "/v1/artists/{name}/signatures": {"post": {
                "summary": "add signature samples, at most CHIMERA_MAX_BATCH a request", "security": AUTH,
                "parameters": [NAME_PARAM],
                "requestBody": _upload("images", True),
                "responses": {"201": _json("AddReport", "added"), "200": _json("AddReport", "nothing new"),
                              **_errors(400, 401, 403, 409, 413)}}},
            "/v1/artists/{name}/works/{work_id}": {"delete": {
                "summary": "remove one work", "security": AUTH,
                "parameters": [NAME_PARAM, {"name": "work_id", "in": "path", "required": True,
                                            "schema": {"type": "integer"}}],
                "responses": {"200": _json("Removed", "removed"), **_errors(401, 403, 404, 409)}}},
            "/v1/artists/{name}/signatures/{signature_id}": {"delete": {
                "summary": "remove one signature sample (its id as adding it answered)", "security": AUTH,
                "parameters": [NAME_PARAM, {"name": "signature_id", "in": "path", "required": True,
                                            "schema": {"type": "integer"}}],
                "responses": {"200": _json("Removed", "removed"), **_errors(401, 403, 404, 409)}}},
            "/v1/works/{work_id}/thumbnail": {"get": {
                "summary": "a registered work's stored pixels (PNG), for showing evidence",
                "parameters": [{"name": "work_id", "in": "path", "required": True, "schema": {"type": "integer"}}],
                "responses": {"200": {"description": "PNG", "content": {"image/png": {}}}, **_errors(404)}}},
        },
    }
