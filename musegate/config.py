"""Effective configuration: built-in defaults < ``musegate.toml`` < ``MUSEGATE_*`` variables.

Configuration lives in one place so that every entry point (CLI, server, demo)
validates it the same way and fails at start with an error naming the bad key,
rather than half-way through a night-long analysis run.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

ENV_PREFIX = "MUSEGATE_"
CONFIG_ENV = "MUSEGATE_CONFIG"
DEFAULT_CONFIG_FILE = "musegate.toml"
ANALYSIS_MODES = ("sampled", "fast", "full")
SOURCES = ("folder", "subsonic", "jellyfin", "lyrion")
LLM_PROVIDERS = ("", "ollama", "openai")
SUBSONIC_VISIBILITY = ("hydrate", "folders")
SUBSONIC_SONG_FETCH = ("album", "song")
ROLES = ("writer", "replica")


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names key, value and source."""


def _default_data_dir() -> str:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return str(Path(base) / "musegate")


@dataclass(frozen=True)
class Field:
    """One configuration key: its type, default, and whether it must be masked when shown."""

    name: str
    kind: type
    default: Callable[[], Any]
    help: str
    secret: bool = False
    choices: tuple[str, ...] = ()
    minimum: int | None = None
    maximum: int | None = None


FIELDS: tuple[Field, ...] = (
    Field("data_dir", str, _default_data_dir, "where the database and index live"),
    Field("library_path", str, lambda: "", "music folder for the folder adapter"),
    Field(
        "analysis_mode",
        str,
        lambda: "sampled",
        "'sampled' (default: 32 spread patches), 'fast' (12 patches) or 'full' (every patch)",
        choices=ANALYSIS_MODES,
    ),
    Field("workers", int, lambda: os.cpu_count() or 1, "analysis processes", minimum=1),
    Field("model_threads", int, lambda: 1, "ONNX Runtime threads per worker", minimum=1),
    Field(
        "scheduler_address",
        str,
        lambda: "",
        "a Dask scheduler (tcp://host:8786 or tls://…) whose workers analyse the library; "
        "'' (default): the local process pool of `workers` processes",
    ),
    Field("write_batch", int, lambda: 16, "analyses written per transaction", minimum=1),
    Field("max_attempts", int, lambda: 3, "failed analyses retried this often", minimum=1),
    Field("max_duration", int, lambda: 21600,
          "seconds: longer tracks are recorded as failed instead of analysed (0: no limit)",
          minimum=0),
    Field("analysis_timeout", int, lambda: 0,
          "seconds one track may take in a local worker before the worker is killed and the "
          "track recorded as failed (0: no limit)", minimum=0),
    Field(
        "log_level",
        str,
        lambda: "INFO",
        "logging level",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
    ),
    Field(
        "role",
        str,
        lambda: "writer",
        "'writer' (default: scans, analyses, writes the store) or 'replica' (`musegate serve` "
        "only: opens the writer's store read-only, answers queries, reloads when it changes)",
        choices=ROLES,
    ),
    Field(
        "refresh_seconds",
        int,
        lambda: 30,
        "how often `musegate serve` looks for new analyses in the store (a replica's look is "
        "one PRAGMA, so a few seconds is fine)",
        minimum=1,
    ),
    Field("host", str, lambda: "127.0.0.1", "address `musegate serve` listens on"),
    Field("port", int, lambda: 8765, "port `musegate serve` listens on", minimum=1, maximum=65535),
    Field(
        "base_path",
        str,
        lambda: "/musegate",
        "URL prefix of musegate's own API, so it never shadows a path of the upstream server",
    ),
    Field(
        "mount_path",
        str,
        lambda: "",
        "public sub-path musegate is mounted at behind a reverse proxy that keeps it, e.g. /music "
        "(every route, the upstream's too, is served below it; the upstream never sees it)",
    ),
    Field(
        "trusted_proxies",
        str,
        lambda: "",
        "reverse proxies whose X-Forwarded-For/Proto/Host/Prefix headers are believed: IPs or CIDRs "
        "separated by ',' (from anyone else those headers are dropped)",
    ),
    Field(
        "api_key",
        str,
        lambda: "",
        "admin key for the JSON API and metrics (X-API-Key header or Bearer token); without one "
        "the API answers only direct callers on this machine, and only when host is a loopback address",
        secret=True,
    ),
    Field(
        "metrics_port",
        int,
        lambda: 0,
        "0: Prometheus metrics at BASE_PATH/metrics, protected like the API; N: also an open "
        "metrics-only listener on host:N",
        minimum=0,
        maximum=65535,
    ),
    Field(
        "max_connections",
        int,
        lambda: 512,
        "open client connections `musegate serve` accepts at once; more get a 503 and are "
        "closed (0 = no cap; keep it well below the process's open-file limit)",
        minimum=0,
    ),
    Field(
        "max_connections_per_client",
        int,
        lambda: 64,
        "open connections one client address may hold (0 = no cap); trusted_proxies are exempt",
        minimum=0,
    ),
    Field(
        "header_timeout_seconds",
        int,
        lambda: 20,
        "a new connection whose request line and headers have not all arrived this many seconds "
        "after it opened is closed (slow clients); 0 = no deadline",
        minimum=0,
    ),
    Field(
        "keepalive_seconds",
        int,
        lambda: 75,
        "an idle keep-alive connection is closed after this long, and a later request on it "
        "must have its headers complete within it",
        minimum=1,
    ),
    Field("max_per_artist", int, lambda: 3, "songs per artist in a playlist (0 = no cap)", minimum=0),
    Field(
        "hide_duplicates",
        bool,
        lambda: True,
        "leave copies of one recording (another encode, cut, gain) out of similar songs and mixes",
    ),
    Field(
        "hnsw_threshold",
        int,
        lambda: 20_000,  # index.faiss_index.DEFAULT_HNSW_THRESHOLD (bench/index_threshold.py)
        "above this many tracks the index is HNSW (approximate) instead of exact",
        minimum=1,
    ),
    Field(
        "geometry",
        str,
        lambda: "centred",  # index.geometry.DEFAULT_METHOD (bench/index.py, "Similarity geometry")
        "how similarity is measured: 'centred' (the library's mean embedding subtracted, fewer "
        "'hub' songs) or 'raw' (the embeddings as analysed)",
        choices=("centred", "raw"),
    ),
    Field(
        "hubness",
        str,
        lambda: "csls",  # index.hubness.DEFAULT_METHOD (bench/heldout.py, "CSLS re-ranking")
        "how similar songs are ranked: 'csls' (a song close to everything must be closer to "
        "the seed to win) or 'none' (plain cosine)",
        choices=("csls", "none"),
    ),
    Field("playlist_dir", str, lambda: "", "where exported M3U8 playlists go (default DATA_DIR/playlists)"),
    Field(
        "llm_provider",
        str,
        lambda: "",
        "'' (built-in interpreter only), 'ollama' or 'openai' (any OpenAI-compatible server)",
        choices=LLM_PROVIDERS,
    ),
    Field("llm_url", str, lambda: "", "base URL of the LLM server, e.g. http://localhost:11434"),
    Field("llm_model", str, lambda: "", "model name the LLM server knows, e.g. llama3.1:8b"),
    Field("llm_api_key", str, lambda: "", "API key for an OpenAI-compatible server", secret=True),
    Field(
        "source",
        str,
        lambda: "folder",
        "where the library comes from: 'folder' (library_path), 'subsonic', 'jellyfin' or 'lyrion' "
        "(upstream_url)",
        choices=SOURCES,
    ),
    Field(
        "upstream_url",
        str,
        lambda: "",
        "the music server musegate stands in front of, e.g. http://navidrome:4533 (with its sub-path if any)",
    ),
    Field("upstream_user", str, lambda: "", "service account musegate scans the library with"),
    Field("upstream_password", str, lambda: "", "that account's password", secret=True),
    Field("upstream_api_key", str, lambda: "", "OpenSubsonic API key instead of a password", secret=True),
    Field(
        "upstream_auth",
        str,
        lambda: "auto",
        "how musegate signs its own requests: 'auto', 'token' (Navidrome…), 'password' (LMS) or 'apikey'",
        choices=("auto", "token", "password", "apikey"),
    ),
    Field(
        "path_map",
        str,
        lambda: "",
        "read audio from a mounted copy: 'SERVER_PREFIX=LOCAL_PREFIX' pairs separated by ';'",
    ),
    Field(
        "libraries",
        str,
        lambda: "",
        "Jellyfin: names of the music libraries to analyse, separated by ',' (default: all)",
    ),
    Field(
        "lms_clients",
        str,
        lambda: "",
        "Lyrion: who may call the Music Similarity mixer API (/api/similar): IPs or CIDRs separated "
        "by ',' (default: only this machine)",
    ),
    Field("scan_cron", str, lambda: "0 3 * * *", "when the library is rescanned (cron, local time)"),
    Field("scan_retry_minutes", int, lambda: 5,
          "after a run the music server failed, try again this many minutes later, doubling "
          "for each failure in a row up to 6 hours (0: wait for scan_cron)", minimum=0),
    Field("auth_cache_seconds", int, lambda: 60, "how long a successful credential check is reused", minimum=0),
    Field(
        "upstream_connect_timeout",
        float,
        lambda: 10.0,
        "seconds musegate waits for a TCP connection to the upstream before answering 502",
    ),
    Field(
        "upstream_timeout",
        float,
        lambda: 30.0,
        "seconds musegate waits for one answer of the upstream (its own calls: the whole answer; "
        "pass-through: the status line and headers) before answering 504",
    ),
    Field(
        "subsonic_visibility",
        str,
        lambda: "hydrate",
        "how Subsonic answers are limited to what the caller may see: 'hydrate' (exact, one getSong "
        "per song) or 'folders' (fast: the caller's getMusicFolders, stored songs, no per-user fields)",
        choices=SUBSONIC_VISIBILITY,
    ),
    Field(
        "subsonic_song_cache_seconds",
        int,
        lambda: 300,
        "hydrate mode: how long a song as the upstream showed it to a caller is reused "
        "(changes made through musegate apply at once; 0 asks getSong every time)",
        minimum=0,
    ),
    Field(
        "subsonic_song_cache_entries",
        int,
        lambda: 20000,
        "hydrate mode: most (caller, song) entries kept, least recently used dropped first",
        minimum=0,
    ),
    Field(
        "subsonic_song_fetch",
        str,
        lambda: "song",
        "hydrate mode: how songs not cached are asked: 'song' (one getSong each) or 'album' "
        "(one getAlbum per album as the caller, once getAlbum proved to match getSong)",
        choices=SUBSONIC_SONG_FETCH,
    ),
    Field(
        "subsonic_warm_songs",
        int,
        lambda: 200,
        "hydrate mode: songs asked (getSong as the caller) in the background when a caller is "
        "first seen, at most once per caller per subsonic_song_cache_seconds, so their first "
        "answers come from the cache (0 turns it off)",
        minimum=0,
    ),
    Field(
        "subsonic_warm_pages",
        bool,
        lambda: False,
        "hydrate mode: the background warm lists the library in the caller's own search3 pages "
        "(up to 500 songs a call) instead of one getSong per song, once 20 search3 entries "
        "matched getSong field for field; trusts search3 to list only songs getSong shows the caller",
    ),
    Field(
        "subsonic_warm_concurrency",
        int,
        lambda: 1,
        "hydrate mode: background warm calls in flight at once, all callers together (they "
        "wait while an intercepted request is answered)",
        minimum=1,
    ),
)
FIELD_BY_NAME = {f.name: f for f in FIELDS}


@dataclass(frozen=True)
class Config:
    data_dir: str
    library_path: str
    analysis_mode: str
    workers: int
    model_threads: int
    scheduler_address: str
    write_batch: int
    max_attempts: int
    max_duration: int
    analysis_timeout: int
    log_level: str
    role: str
    refresh_seconds: int
    host: str
    port: int
    base_path: str
    mount_path: str
    trusted_proxies: str
    api_key: str
    metrics_port: int
    max_connections: int
    max_connections_per_client: int
    header_timeout_seconds: int
    keepalive_seconds: int
    max_per_artist: int
    hide_duplicates: bool
    hnsw_threshold: int
    geometry: str
    hubness: str
    playlist_dir: str
    llm_provider: str
    llm_url: str
    llm_model: str
    llm_api_key: str
    source: str
    upstream_url: str
    upstream_user: str
    upstream_password: str
    upstream_api_key: str
    upstream_auth: str
    path_map: str
    libraries: str
    lms_clients: str
    scan_cron: str
    scan_retry_minutes: int
    auth_cache_seconds: int
    upstream_connect_timeout: float
    upstream_timeout: float
    subsonic_visibility: str
    subsonic_song_cache_seconds: int
    subsonic_song_cache_entries: int
    subsonic_song_fetch: str
    subsonic_warm_songs: int
    subsonic_warm_pages: bool
    subsonic_warm_concurrency: int

    @property
    def db_path(self) -> Path:
        return Path(self.data_dir) / "musegate.db"

    @property
    def index_path(self) -> Path:
        """The FAISS index is derived data, so it lives beside the database it is built from."""
        return Path(self.data_dir) / "musegate.index"

    @property
    def playlist_path(self) -> Path:
        return Path(self.playlist_dir) if self.playlist_dir else Path(self.data_dir) / "playlists"

    def replace(self, **changes: Any) -> Config:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        return Config(**values)


def _coerce(field: Field, value: Any, source: str) -> Any:
    original = value

    def bad(why: str) -> ConfigError:
        shown = "***" if field.secret else repr(original)
        return ConfigError(f"{field.name} = {shown} (from {source}): {why}")

    if field.kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise bad("expected true or false")
    if field.kind is int:
        if isinstance(value, bool):
            raise bad("expected an integer")
        try:
            value = int(str(value).strip()) if not isinstance(value, int) else value
        except ValueError:
            raise bad("expected an integer") from None
        if field.minimum is not None and value < field.minimum:
            raise bad(f"must be at least {field.minimum}")
        if field.maximum is not None and value > field.maximum:
            raise bad(f"must be at most {field.maximum}")
    elif field.kind is float:
        if isinstance(value, bool):
            raise bad("expected a number of seconds")
        try:
            value = float(str(value).strip()) if not isinstance(value, int | float) else float(value)
        except ValueError:
            raise bad("expected a number of seconds") from None
        if not value > 0 or value != value or value == float("inf"):
            raise bad("must be a positive number of seconds")
    elif field.kind is str:
        if not isinstance(value, str):
            raise bad("expected a string")
        if field.choices:
            candidate = value.upper() if field.name == "log_level" else value.lower()
            if candidate not in field.choices:
                raise bad(f"must be one of {', '.join(field.choices)}")
            value = candidate
        if field.name in ("base_path", "mount_path"):
            value = "/" + value.strip().strip("/") if value.strip().strip("/") else ""
            if any(c in value for c in "?#{}% ") or "//" in value:
                raise bad(f"must be a plain URL path such as {'/musegate' if field.name == 'base_path' else '/music'}")
        elif field.name in ("trusted_proxies", "lms_clients"):
            try:
                value = ",".join(str(n) for n in parse_networks(value))
            except ValueError as exc:
                raise bad(str(exc)) from None
    return value


def parse_networks(spec: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """``trusted_proxies`` as networks: '10.0.0.0/8, ::1' -> (10.0.0.0/8, ::1/128)."""
    out = []
    for item in spec.replace(";", ",").split(","):
        item = item.strip()
        if not item:
            continue
        try:
            out.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or CIDR network") from None
    return tuple(out)


def _config_file(explicit: str | os.PathLike[str] | None, env: Mapping[str, str]) -> Path | None:
    if explicit:
        return Path(explicit)
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV])
    candidate = Path(DEFAULT_CONFIG_FILE)
    return candidate if candidate.exists() else None


def load_config(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Merge the three layers (plus command-line overrides) and validate every key."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for f in FIELDS:
        values[f.name] = f.default()
        sources[f.name] = "default"

    file = _config_file(path, env)
    if file is not None:
        if not file.exists():
            raise ConfigError(f"configuration file {file} does not exist")
        try:
            data = tomllib.loads(file.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"configuration file {file} is not valid TOML: {exc}") from None
        data = data.get("musegate", data)
        for key, value in data.items():
            if key not in FIELD_BY_NAME:
                raise ConfigError(f"{key} (from {file}): unknown configuration key")
            values[key], sources[key] = value, str(file)

    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV:
            continue
        key = name[len(ENV_PREFIX) :].lower()
        if key not in FIELD_BY_NAME:
            raise ConfigError(f"{key} (from environment {name}): unknown configuration key")
        values[key], sources[key] = value, f"environment {name}"

    for key, value in (overrides or {}).items():
        if value is not None:
            values[key], sources[key] = value, "command line"

    coerced = {f.name: _coerce(f, values[f.name], sources[f.name]) for f in FIELDS}
    return Config(**coerced)


def describe(config: Config) -> dict[str, Any]:
    """The effective configuration for display, with secret values masked."""
    return {
        f.name: ("***" if f.secret and getattr(config, f.name) else getattr(config, f.name))
        for f in FIELDS
    }
