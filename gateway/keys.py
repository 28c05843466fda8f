"""Typed application state shared by the handlers (aiohttp ``AppKey``s)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from analysis.store import LibraryStore
from gateway.jobs import JobManager
from musegate.config import Config
from musegate.services import LibraryService

CONFIG = web.AppKey("config", Config)
STORE = web.AppKey("store", LibraryStore)
SERVICE = web.AppKey("service", LibraryService)
JOBS = web.AppKey("jobs", JobManager)
# The library source (FolderAdapter today): playlists are written and history read through it.
ADAPTER = web.AppKey("adapter", Any)
# Present only when the server runs the library scheduler (``musegate serve``).
SCHEDULER = web.AppKey("scheduler", Any)
# On the outer app when musegate is mounted below a sub-path: the app holding the state above.
MAIN = web.AppKey("main", web.Application)
# Optional: the monotonic clock the credential caches read (tests inject one to step time).
CLOCK = web.AppKey("clock", Any)
