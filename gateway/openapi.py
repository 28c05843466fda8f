"""The OpenAPI 3 document of musegate's API, served at ``{base_path}/api/openapi.json``.

Written by hand (not generated from the handlers) so that it reads like
documentation; tests/test_openapi.py keeps it honest by checking it against
the application's real routes in both directions.
"""

from __future__ import annotations

from typing import Any

from analysis.labels import MSD_LABELS
from index.clustering import ALGORITHMS
from index.instant import CONSTRAINTS_SCHEMA
from musegate import __version__ as VERSION


def _q(name: str, schema: dict[str, Any], description: str, required: bool = False,
       explode: bool = False) -> dict[str, Any]:
    param: dict[str, Any] = {"name": name, "in": "query", "required": required,
                             "description": description, "schema": schema}
    if explode:
        param["style"], param["explode"] = "form", True
    return param


def _path_param(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": {"type": "string"}}


def _body(schema: dict[str, Any], required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": schema}}}


def _ok(description: str, schema: dict[str, Any], status: str = "200") -> dict[str, Any]:
    return {status: {"description": description,
                     "content": {"application/json": {"schema": schema}}}}


REF = "#/components/schemas/"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF + name}


def _errors(*statuses: str) -> dict[str, Any]:
    text = {
        "400": "Bad input; `field` names the parameter to fix",
        "404": "Unknown or not yet analysed track (or album, artist, job)",
        "409": "The library source cannot do this (no history, cannot store playlists)",
        "503": "The library is not loaded yet",
        "401": "No api_key, or a wrong one (X-API-Key header or Authorization: Bearer)",
        "403": "No api_key is configured and the caller is not on this machine",
    }
    return {s: {"description": text[s], "content": {"application/json": {"schema": _ref("Error")}}}
            for s in statuses}


INT = {"type": "integer"}
NUM = {"type": "number"}
STR = {"type": "string"}
BOOL = {"type": "boolean"}
IDS = {"type": "array", "items": INT}

SIMILAR_PARAMS = [
    _q("ids", IDS, "Seed track ids (repeat or comma-separate)", explode=True),
    _q("album", STR, "Seed: every analysed track of this album"),
    _q("album_artist", STR, "Narrows `album` to one artist's album of that name"),
    _q("artist", STR, "Seed: every analysed track of this artist"),
    _q("n", {**INT, "minimum": 1, "maximum": 500, "default": 20}, "How many songs"),
    _q("max_per_artist", {**INT, "minimum": 0}, "Songs per artist (0 = no cap; default from config)"),
    _q("hide_duplicates", {**BOOL, "default": True},
       "Leave out copies of one recording (default from config: hide_duplicates)"),
    _q("mood", STR, "Mood filter `tag:score,...` (tag names, energy, tempo, loudness)"),
    _q("mood_tolerance", {**NUM, "minimum": 0, "maximum": 1, "default": 0.25},
       "How far from each mood target a song may be"),
    _q("exclude", IDS, "Track ids never to return", explode=True),
]

SIMILAR_BODY = {
    "type": "object",
    "properties": {
        "ids": IDS, "album": STR, "album_artist": STR, "artist": STR,
        "n": {**INT, "minimum": 1, "maximum": 500, "default": 20},
        "max_per_artist": {**INT, "minimum": 0},
        "hide_duplicates": {**BOOL, "default": True},
        "mood": {"type": "object", "additionalProperties": NUM,
                 "description": "tag name (or energy/tempo/loudness) → target value"},
        "mood_tolerance": {**NUM, "minimum": 0, "maximum": 1},
        "exclude": IDS,
    },
    "example": {"ids": [12], "n": 10, "mood": {"sad": 0.6}},
}

PATH_PARAMS = [
    _q("start", INT, "First track id", required=True),
    _q("end", INT, "Last track id", required=True),
    _q("length", {**INT, "minimum": 2, "maximum": 500, "default": 25}, "Songs in the path"),
    _q("via", IDS, "Waypoint track ids, in order", explode=True),
    _q("max_per_artist", {**INT, "minimum": 0}, "Songs per artist"),
    _q("hide_duplicates", {**BOOL, "default": True},
       "Leave out copies of one recording (default from config: hide_duplicates)"),
]

INGREDIENT = {
    "oneOf": [
        {"type": "object", "required": ["kind", "value"],
         "properties": {"kind": {"type": "string", "enum": ["song", "artist", "tag"]},
                        "value": {"oneOf": [INT, STR]}}},
        {"type": "object", "minProperties": 1, "maxProperties": 1,
         "description": 'Shorthand: {"song": 12}, {"artist": "Nina Simone"}, {"tag": "jazz"}'},
        {"type": "string", "description": 'Shorthand: "song:12", "artist:Nina Simone", "tag:jazz"'},
    ]
}

ALCHEMY_BODY = {
    "oneOf": [
        {
            "type": "object",
            "required": ["add"],
            "properties": {
                "add": {"type": "array", "items": INGREDIENT, "minItems": 1},
                "subtract": {"type": "array", "items": INGREDIENT},
                "n": {**INT, "minimum": 1, "maximum": 500, "default": 20},
                "temperature": {**NUM, "minimum": 0, "default": 0,
                                "description": "0 = plain nearest; higher = more varied"},
                "min_subtract_distance": {**NUM, "minimum": 0, "maximum": 2, "default": 0.2},
                "seed": {**INT, "minimum": 0, "default": 0},
                "max_per_artist": {**INT, "minimum": 0},
                "hide_duplicates": {**BOOL, "default": True},
            },
        },
        {
            "type": "object",
            "required": ["items"],
            "description": "AudioMuse-AI's request shape (answered in AudioMuse-AI's shape)",
            "properties": {
                "items": {"type": "array", "items": {
                    "type": "object", "required": ["id", "op"],
                    "properties": {"id": STR, "op": {"type": "string", "enum": ["ADD", "SUBTRACT"]},
                                   "type": {"type": "string", "enum": ["song", "artist"]}}}},
                "n": INT, "temperature": NUM, "subtract_distance": NUM,
            },
        },
    ]
}

CLUSTER_BODY = {
    "type": "object",
    "properties": {
        "n_playlists": {**INT, "minimum": 1, "maximum": 100, "default": 10},
        "algorithms": {"type": "array", "items": {"type": "string", "enum": list(ALGORITHMS)}},
        "pca_components": {**INT, "minimum": 0, "maximum": 200, "default": 16,
                           "description": "0 = no PCA"},
        "trials": {**INT, "minimum": 1, "maximum": 200, "default": 16},
        "max_songs": {**INT, "minimum": 1, "maximum": 1000, "default": 100},
        "max_per_artist": {**INT, "minimum": 0},
        "seed": {**INT, "minimum": 0, "default": 0},
    },
}

FINGERPRINT_PARAMS = [
    _q("user", STR, "User whose history to use (the source's user name)"),
    _q("n", {**INT, "minimum": 1, "maximum": 500, "default": 50}, "How many songs"),
    _q("include_played", {**BOOL, "default": False}, "Also offer songs already played"),
    _q("half_life_days", {**NUM, "default": 30}, "Recency half-life of a play"),
    _q("max_per_artist", {**INT, "minimum": 0}, "Songs per artist"),
    _q("hide_duplicates", {**BOOL, "default": True},
       "Leave out copies of one recording (default from config: hide_duplicates)"),
]

INSTANT_PARAMS = [
    _q("text", STR, "The sentence, e.g. `sad piano in a minor key around 70 bpm`", required=True),
    _q("n", {**INT, "minimum": 1, "maximum": 1000, "default": 30}, "How many songs"),
    _q("llm", BOOL, "Use the configured LLM (default: when one is configured)"),
    _q("max_per_artist", {**INT, "minimum": 0}, "Songs per artist"),
    _q("hide_duplicates", {**BOOL, "default": True},
       "Leave out copies of one recording (default from config: hide_duplicates)"),
]

INSTANT_BODY = {
    "type": "object",
    "properties": {
        "text": STR,
        "constraints": {**CONSTRAINTS_SCHEMA,
                        "description": "Skip the interpreter and use these constraints"},
        "n": {**INT, "minimum": 1, "maximum": 1000, "default": 30},
        "llm": BOOL,
        "max_per_artist": {**INT, "minimum": 0},
        "hide_duplicates": {**BOOL, "default": True},
    },
    "example": {"text": "high-tempo low-energy workout music without vocals", "n": 20},
}

SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "required": ["error"],
              "properties": {"error": STR, "field": {"type": ["string", "null"]}}},
    "Track": {"type": "object", "properties": {
        "id": INT, "upstream_id": STR, "title": {"type": ["string", "null"]},
        "artist": {"type": ["string", "null"]}, "album": {"type": ["string", "null"]},
        "duration": {"type": ["number", "null"]}}},
    "Match": {"allOf": [_ref("Track"), {"type": "object", "properties": {
        "similarity": {**NUM, "description": "cosine similarity to the query (instant: relevance)"}}}]},
    "MatchList": {"type": "object", "properties": {
        "tracks": {"type": "array", "items": _ref("Match")}}},
    "Job": {"type": "object", "properties": {
        "id": STR, "kind": STR, "status": {"type": "string",
                                           "enum": ["queued", "running", "done", "failed"]},
        "progress": NUM, "message": STR, "params": {"type": "object"},
        "created": NUM, "started": {"type": ["number", "null"]},
        "finished": {"type": ["number", "null"]}, "error": {"type": ["string", "null"]}}},
    "Clustering": {"type": "object", "properties": {
        "job": _ref("Job"),
        "result": {"type": ["object", "null"], "properties": {
            "algorithm": STR, "params": {"type": "object"}, "silhouette": NUM, "score": NUM,
            "trials": INT,
            "playlists": {"type": "array", "items": {"type": "object", "properties": {
                "name": STR, "tempo": NUM, "energy": NUM,
                "tags": {"type": "array", "items": {"type": "object",
                                                    "properties": {"tag": STR, "score": NUM}}},
                "tracks": {"type": "array", "items": _ref("Track")}}}}}}}},
    "AudioMuseTrack": {"type": "object", "description": "AudioMuse-AI's track shape", "properties": {
        "item_id": STR, "title": STR, "author": STR, "album": STR, "album_artist": STR,
        "distance": {**NUM, "description": "cosine distance, smaller is closer"}}},
    "Tags": {"type": "string", "enum": list(MSD_LABELS)},
    "DuplicateGroup": {"type": "object", "properties": {
        "representative": {**INT, "description": "the copy to keep: longest, then highest "
                                                 "bitrate, then lowest id"},
        "tracks": {"type": "array", "items": {"allOf": [_ref("Track"), {
            "type": "object", "properties": {"representative": BOOL}}]}},
        "pairs": {"type": "array", "items": {"type": "object", "properties": {
            "a": INT, "b": INT, "cosine": NUM,
            "method": {"type": "string", "enum": ["fingerprint", "fallback"]},
            "bit_error_rate": {"type": ["number", "null"]},
            "offset_s": {"type": ["number", "null"], "description":
                         "b's audio starts this many seconds later than a's"}}}}}},
}


def _operations(api: str) -> dict[str, dict[str, Any]]:
    similar = {
        "summary": "Similar songs to one or more songs, an album or an artist",
        "tags": ["playlists"],
        "responses": {**_ok("Seeds and their neighbours, best first", {
            "type": "object", "properties": {
                "seeds": {"type": "array", "items": _ref("Track")},
                "tracks": {"type": "array", "items": _ref("Match")}}}),
            **_errors("400", "404")},
    }
    path_response = {**_ok("The path, first song to last", {"type": "object", "properties": {
        "tracks": {"type": "array", "items": {"allOf": [_ref("Track"), {"type": "object",
                   "properties": {"distance": {**NUM, "description":
                                               "cosine distance from the previous song"}}}]}},
        "max_jump": NUM, "mean_jump": NUM}}), **_errors("400", "404")}
    fingerprint_response = {**_ok("Songs like what the user plays most", {
        "allOf": [_ref("MatchList"), {"type": "object", "properties": {"plays_used": INT}}]}),
        **_errors("400", "409")}
    instant_response = {**_ok("The playlist and how the sentence was read", {
        "allOf": [_ref("MatchList"), {"type": "object", "properties": {
            "text": STR, "interpretation": {"type": "object", "properties": {
                "source": {"type": "string", "enum": ["builtin", "llm"]},
                "explanation": {"type": "array", "items": STR},
                "constraints": CONSTRAINTS_SCHEMA}}}}]}), **_errors("400")}
    am_list = {"type": "array", "items": _ref("AudioMuseTrack")}
    am_path = {"type": "object", "properties": {"path": am_list, "total_distance": NUM}}
    am_similar_params = [
        _q("item_id", STR, "The media server's item id (or a musegate id)"),
        _q("title", STR, "Title (with `artist`, instead of item_id)"),
        _q("artist", STR, "Artist (with `title`)"),
        _q("n", {**INT, "default": 10}, "How many"),
        _q("eliminate_duplicates", {"type": "string", "enum": ["true", "false"]},
           "true (default) caps songs per artist; false does not"),
        _q("mood_similarity", STR, "Accepted and ignored"),
    ]
    am_path_params = [
        _q("start_song_id", STR, "Start item id", required=True),
        _q("end_song_id", STR, "End item id", required=True),
        _q("max_steps", {**INT, "default": 25}, "Songs in the path"),
    ]
    compat_tag = ["AudioMuse-AI compatibility"]
    return {
        f"{api}/similar": {
            "get": {**similar, "operationId": "similarGet", "parameters": SIMILAR_PARAMS},
            "post": {**similar, "operationId": "similarPost", "requestBody": _body(SIMILAR_BODY)},
        },
        f"{api}/path": {
            "get": {"summary": "A song path from start to end (through waypoints)",
                    "tags": ["playlists"], "operationId": "pathGet",
                    "parameters": PATH_PARAMS, "responses": path_response},
            "post": {"summary": "A song path (JSON body with the same fields)",
                     "tags": ["playlists"], "operationId": "pathPost",
                     "requestBody": _body({"type": "object", "required": ["start", "end"],
                                           "properties": {"start": INT, "end": INT,
                                                          "length": INT, "via": IDS,
                                                          "max_per_artist": INT}}),
                     "responses": path_response},
        },
        f"{api}/alchemy": {
            "post": {"summary": "Song alchemy: add and subtract songs, artists and tags",
                     "tags": ["playlists"], "operationId": "alchemy",
                     "requestBody": _body(ALCHEMY_BODY),
                     "responses": {**_ok("Results and a 2-D projection for plotting", {
                         "type": "object", "properties": {
                             "tracks": {"type": "array", "items": _ref("Match")},
                             "projection": {"type": "array", "items": {
                                 "type": "object", "properties": {
                                     "x": NUM, "y": NUM, "label": STR, "track_id": INT,
                                     "role": {"type": "string", "enum": [
                                         "result", "add", "subtract", "add_centroid",
                                         "subtract_centroid"]}}}}}}),
                         **_errors("400", "404")}},
        },
        f"{api}/clusters": {
            "post": {"summary": "Start clustering the library into playlists (background job)",
                     "tags": ["playlists"], "operationId": "clustersStart",
                     "requestBody": _body(CLUSTER_BODY, required=False),
                     "responses": {**_ok("Job started", {"type": "object", "properties": {
                         "job": _ref("Job"), "poll": STR, "status": STR}}, "202"),
                         **_errors("400")}},
            "get": {"summary": "The latest finished clustering", "tags": ["playlists"],
                    "operationId": "clustersLatest",
                    "responses": {**_ok("Latest result", _ref("Clustering")), **_errors("404")}},
        },
        f"{api}/clusters/{{job_id}}": {
            "get": {"summary": "Poll a clustering job; `result` is filled once it is done",
                    "tags": ["playlists"], "operationId": "clustersGet",
                    "parameters": [_path_param("job_id", "Id returned when the job started")],
                    "responses": {**_ok("Job and (when done) result", _ref("Clustering")),
                                  **_errors("404")}},
        },
        f"{api}/fingerprint": {
            "get": {"summary": "Sonic fingerprint: songs like what the user plays most",
                    "tags": ["playlists"], "operationId": "fingerprintGet",
                    "parameters": FINGERPRINT_PARAMS, "responses": fingerprint_response},
            "post": {"summary": "Sonic fingerprint (JSON body with the same fields)",
                     "tags": ["playlists"], "operationId": "fingerprintPost",
                     "requestBody": _body({"type": "object", "properties": {
                         "user": STR, "n": INT, "include_played": BOOL, "half_life_days": NUM,
                         "max_per_artist": INT}}, required=False),
                     "responses": fingerprint_response},
        },
        f"{api}/instant": {
            "get": {"summary": "Instant playlist from a sentence", "tags": ["playlists"],
                    "operationId": "instantGet", "parameters": INSTANT_PARAMS,
                    "responses": instant_response},
            "post": {"summary": "Instant playlist from a sentence or explicit constraints",
                     "tags": ["playlists"], "operationId": "instantPost",
                     "requestBody": _body(INSTANT_BODY), "responses": instant_response},
        },
        f"{api}/tracks": {
            "get": {"summary": "Search tracks by words of title, artist, album or path",
                    "tags": ["library"], "operationId": "tracks",
                    "parameters": [_q("q", STR, "Words to look for", required=True),
                                   _q("limit", {**INT, "minimum": 1, "maximum": 200,
                                                "default": 20}, "How many")],
                    "responses": {**_ok("Matching tracks", {"type": "object", "properties": {
                        "tracks": {"type": "array", "items": {"allOf": [_ref("Track"), {
                            "type": "object", "properties": {"analysed": BOOL}}]}}}}),
                        **_errors("400")}},
        },
        f"{api}/duplicates": {
            "get": {"summary": "Groups of near-duplicate songs (same recording: another encode, "
                               "cut, gain or leading silence)",
                    "tags": ["library"], "operationId": "duplicates",
                    "parameters": [_q("id", INT, "Only the group of this track id")],
                    "responses": {**_ok("Duplicate groups, biggest first", {
                        "type": "object", "properties": {
                            "groups": {"type": "array", "items": _ref("DuplicateGroup")},
                            "analysed": INT,
                            "without_fingerprint": {**INT, "description":
                                "analyses from before fingerprints: judged by a stricter "
                                "cosine + duration + key rule until re-analysed"}}}),
                        **_errors("400", "404")}},
        },
        f"{api}/status": {
            "get": {"summary": "Library, analysis and index state", "tags": ["library"],
                    "operationId": "status",
                    "responses": _ok("Counts and index details", {"type": "object", "properties": {
                        "tracks": INT, "analysed": INT, "failed": INT, "pending": INT,
                        "outdated": INT, "analysis_version": STR, "jobs_running": INT,
                        "index": {"type": "object", "properties": {
                            "kind": {"type": "string", "enum": ["flat", "hnsw"]},
                            "tracks": INT, "memory_bytes": INT, "status": STR,
                            "radii": STR}}}})},
        },
        f"{api}/jobs": {
            "get": {"summary": "Recent background jobs, newest first", "tags": ["jobs"],
                    "operationId": "jobs",
                    "responses": _ok("Jobs", {"type": "object", "properties": {
                        "jobs": {"type": "array", "items": _ref("Job")}}})},
        },
        f"{api}/jobs/{{job_id}}": {
            "get": {"summary": "One job's status and progress", "tags": ["jobs"],
                    "operationId": "job",
                    "parameters": [_path_param("job_id", "Job id")],
                    "responses": {**_ok("The job", _ref("Job")), **_errors("404")}},
        },
        f"{api}/playlists": {
            "post": {"summary": "Export track ids as a playlist on the library source "
                                "(an M3U8 file for a music folder)",
                     "tags": ["playlists"], "operationId": "exportPlaylist",
                     "requestBody": _body({"type": "object", "required": ["name", "track_ids"],
                                           "properties": {"name": STR, "track_ids": IDS},
                                           "example": {"name": "Evening mix",
                                                       "track_ids": [3, 17, 42]}}),
                     "responses": {**_ok("Written", {"type": "object", "properties": {
                         "name": STR, "location": STR, "tracks": INT}}, "201"),
                         **_errors("400", "404", "409")}},
        },
        f"{api}/openapi.json": {
            "get": {"summary": "This document", "tags": ["meta"], "operationId": "openapi",
                    "responses": _ok("OpenAPI 3.1 document", {"type": "object"})},
        },
        f"{api}/similar_tracks": {
            "get": {"summary": "AudioMuse-AI: similar tracks", "tags": compat_tag,
                    "operationId": "amSimilarTracks", "parameters": am_similar_params,
                    "responses": {**_ok("AudioMuse-AI track list", am_list),
                                  **_errors("400", "404")}},
        },
        f"{api}/find_path": {
            "get": {"summary": "AudioMuse-AI: path between two songs", "tags": compat_tag,
                    "operationId": "amFindPath", "parameters": am_path_params,
                    "responses": {**_ok("AudioMuse-AI path", am_path), **_errors("400", "404")}},
        },
        f"{api}/search_tracks": {
            "get": {"summary": "AudioMuse-AI: track search (autocomplete)", "tags": compat_tag,
                    "operationId": "amSearchTracks",
                    "parameters": [_q("search_query", STR, "Words (3 characters or more)"),
                                   _q("title", STR, "Legacy: title words"),
                                   _q("artist", STR, "Legacy: artist words"),
                                   _q("start", INT, "0-based first result"),
                                   _q("end", INT, "Exclusive last result (default start+20)")],
                    "responses": _ok("AudioMuse-AI track list (no distance)", am_list)},
        },
        "/AudioMuseAI/similar_tracks": {
            "get": {"summary": "Jellyfin plugin route: similar tracks", "tags": compat_tag,
                    "operationId": "jfSimilarTracks", "parameters": am_similar_params,
                    "responses": {**_ok("AudioMuse-AI track list", am_list),
                                  **_errors("400", "404")}},
        },
        "/AudioMuseAI/find_path": {
            "get": {"summary": "Jellyfin plugin route: path between two songs", "tags": compat_tag,
                    "operationId": "jfFindPath", "parameters": am_path_params,
                    "responses": {**_ok("AudioMuse-AI path", am_path), **_errors("400", "404")}},
        },
        "/AudioMuseAI/health": {
            "get": {"summary": "Jellyfin plugin route: health (empty 200)", "tags": compat_tag,
                    "operationId": "jfHealth",
                    "responses": {"200": {"description": "Healthy (empty body)"},
                                  **_errors("503")}},
        },
    }


def _library_and_ui(base: str) -> dict[str, dict[str, Any]]:
    """The library-state endpoints (gateway/api_library.py) and the web UI's routes (gateway/ui.py)."""
    api = f"{base}/api"
    lib, ui = ["library"], ["web UI"]
    obj = {"type": "object"}
    ids_body = _body({"type": "object", "properties": {"ids": IDS}}, required=False)
    return {
        f"{api}/progress": {"get": {
            "summary": "Counts, the scheduled scan/analysis run with tracks/s and ETA, background jobs",
            "tags": lib, "operationId": "progress", "responses": _ok("Library progress", obj)}},
        f"{api}/events": {"get": {
            "summary": "The progress object as Server-Sent Events (`event: progress`) on every change",
            "tags": lib, "operationId": "events",
            "responses": {"200": {"description": "text/event-stream",
                                  "content": {"text/event-stream": {"schema": STR}}}}}},
        f"{api}/failures": {"get": {
            "summary": "Tracks whose analysis failed, with the reason and attempts",
            "tags": lib, "operationId": "failures", "responses": _ok("Failures", obj)}},
        f"{api}/failures/retry": {"post": {
            "summary": "Forget failures (all, or `ids`) and start a scan-and-analyse run",
            "tags": lib, "operationId": "retryFailures", "requestBody": ids_body,
            "responses": {**_ok("Cleared", obj, "202"), **_errors("409")}}},
        f"{api}/scan": {"post": {
            "summary": "Scan the library and analyse what is new now",
            "tags": lib, "operationId": "scanNow",
            "responses": {**_ok("Started", obj, "202"), **_errors("409")}}},
        f"{api}/map": {"get": {
            "summary": "Every analysed track's 2-D map position, top tag and cluster",
            "description": "Parallel arrays: entry i of every array in `points` is song i "
                           "(`count` songs). `tag` indexes `tags`; `cluster` indexes "
                           "`clusters` (the newest finished clustering), -1 for none. "
                           "Coordinates are in [-1, 1], rounded to 5 decimals. A music-server "
                           "user's session gets only the songs their server shows them.",
            "tags": lib, "operationId": "musicMap", "responses": _ok("Map points", {
                "type": "object", "required": ["tags", "clusters", "count", "points"],
                "properties": {
                    "tags": {"type": "array", "items": STR},
                    "clusters": {"type": "array", "items": STR},
                    "count": INT,
                    "points": {"type": "object", "properties": {
                        "id": IDS,
                        "title": {"type": "array", "items": STR},
                        "artist": {"type": "array", "items": STR},
                        "x": {"type": "array", "items": NUM},
                        "y": {"type": "array", "items": NUM},
                        "tag": {"type": "array", "items": INT},
                        "cluster": {"type": "array", "items": INT}}}}})}},
        f"{api}/features": {"get": {
            "summary": "Tempo, key, energy and top tags of analysed tracks",
            "tags": lib, "operationId": "trackFeatures",
            "parameters": [_q("ids", IDS, "Track ids", explode=True)],
            "responses": {**_ok("Features", obj), **_errors("400")}}},
        f"{base}/": {"get": {"summary": "The web UI (single-page app)", "tags": ui,
                             "operationId": "uiPage",
                             "responses": {"200": {"description": "HTML page"}}}},
        **({base: {"get": {"summary": "Redirect to the web UI", "tags": ui,
                           "operationId": "uiRedirect",
                           "responses": {"302": {"description": "To the page"}}}}} if base else {}),
        f"{base}/static/{{path}}": {"get": {
            "summary": "The web UI's scripts, styles and vendored libraries", "tags": ui,
            "operationId": "uiStatic", "parameters": [_path_param("path", "File below static/")],
            "responses": {"200": {"description": "The file"}, "404": {"description": "No such file"}}}},
        f"{base}/session": {"get": {
            "summary": "The logged-in user and CSRF token, or the login modes when nobody is",
            "tags": ui, "operationId": "uiSession", "responses": _ok("Session", obj)}},
        f"{base}/login": {"post": {
            "summary": "Log in with the music server's credentials or the admin API key; sets the "
                       "session cookie", "tags": ui, "operationId": "uiLogin",
            "requestBody": _body({"type": "object", "properties": {
                "username": STR, "password": STR, "api_key": STR,
                "mode": {"type": "string", "enum": ["password", "api_key", "local"]}}}),
            "responses": {**_ok("Session", obj), "401": {"description": "Refused"},
                          "502": {"description": "The music server is not reachable"}}}},
        f"{base}/logout": {"post": {
            "summary": "End the session (X-CSRF-Token required)", "tags": ui,
            "operationId": "uiLogout",
            "responses": {**_ok("Logged out", obj), "403": {"description": "CSRF token missing"}}}},
        f"{base}/stream/{{track_id}}": {"get": {
            "summary": "A song's audio for the preview player, fetched as the session's user",
            "tags": ui, "operationId": "uiStream",
            "parameters": [_path_param("track_id", "musegate track id")],
            "responses": {"200": {"description": "Audio"}, "206": {"description": "A range"},
                          "401": {"description": "Not logged in"},
                          "404": {"description": "Unknown or not visible"}}}},
    }


def _probes(base: str) -> dict[str, Any]:
    """Health, readiness and metrics sit beside the API, at ``{base_path}/…``."""
    status = {"type": "object", "properties": {"status": STR}}
    return {
        f"{base}/health": {
            "get": {"summary": "Liveness: the process answers", "tags": ["meta"],
                    "operationId": "health", "security": [],
                    "responses": _ok("Alive", status)},
        },
        f"{base}/ready": {
            "get": {"summary": "Readiness: store open, index loaded, music server reachable",
                    "tags": ["meta"], "operationId": "ready", "security": [],
                    "responses": {**_ok("Ready", status),
                                  "503": {"description": "Not ready; `reasons` says why",
                                          "content": {"application/json": {"schema": {
                                              "type": "object", "properties": {
                                                  "status": STR,
                                                  "reasons": {"type": "array",
                                                              "items": STR}}}}}}}},
        },
        f"{base}/metrics": {
            "get": {"summary": "Prometheus metrics", "tags": ["meta"], "operationId": "metrics",
                    "responses": {"200": {"description": "Prometheus text format",
                                          "content": {"text/plain": {"schema": STR}}},
                                  **_errors("401", "403")}},
        },
    }


def build_openapi(base_path: str = "/musegate", server_url: str = "/") -> dict[str, Any]:
    """``server_url`` is where the caller reaches musegate (its mount path behind a proxy)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "musegate API",
            "version": VERSION,
            "description": "Sonic-similarity playlists for a self-hosted music library. "
                           "Errors are JSON `{\"error\", \"field\"}`; see docs/api.md.",
        },
        "servers": [{"url": server_url or "/"}],
        "security": [{"apiKey": []}, {"bearer": []}, {}],
        "paths": {**_probes(base_path), **_operations(f"{base_path}/api"),
                  **_library_and_ui(base_path)},
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "bearer": {"type": "http", "scheme": "bearer"},
            },
        },
    }
