"""``musegate health``: ask the running server whether it is alive (or ready).

Container healthchecks and systemd run this every few seconds, so it stays on the
standard library and imports nothing of the engine: a probe that takes two seconds
of CPU to start would cost more than the server it watches. It finds the server
from the same configuration the server reads (host, port, mount_path, base_path).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from musegate.config import Config

TIMEOUT_SECONDS = 5.0


def probe_url(config: Config, ready: bool = False) -> str:
    """Where the server's own probe answers; a wildcard listen address is asked on loopback."""
    host = config.host
    if host in ("", "0.0.0.0", "*"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    what = "ready" if ready else "health"
    return f"http://{host}:{config.port}{config.mount_path}{config.base_path}/{what}"


def check(config: Config, ready: bool = False) -> tuple[bool, str]:
    """(healthy, one line saying why) for the server ``config`` describes."""
    url = probe_url(config, ready)
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as resp:  # noqa: S310 - our URL
            body = json.loads(resp.read() or b"{}")
            return True, f"{url}: {body.get('status', resp.status)}"
    except urllib.error.HTTPError as exc:
        try:
            reasons = json.loads(exc.read() or b"{}").get("reasons") or []
        except ValueError:
            reasons = []
        why = "; ".join(str(r) for r in reasons) or f"HTTP {exc.code}"
        return False, f"{url}: {why}"
    except (OSError, ValueError) as exc:
        return False, f"{url}: {getattr(exc, 'reason', exc)}"
