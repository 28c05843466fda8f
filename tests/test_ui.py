"""The web UI in real Chromium (Debian's, driven by Playwright) against ``musegate serve``.

One analysed generated library behind a real supysonic, musegate in front of
it as a subprocess; the browser logs in with supysonic's own users and walks
every page's main flow. Screenshots of each page at desktop and phone sizes
go to tests/artifacts/ (git-ignored). Every wait is for something the page
shows, with Playwright's deadlines; nothing sleeps.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import sine_mix, write_track
from tests.ui_harness import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, USERS, browser_missing, stack

# CI installs both (.ci/run): there a missing browser is a failure, not a skip.
if browser_missing() is not None and os.environ.get("CI"):
    raise RuntimeError(f"CI must run the browser tests: {browser_missing()}")
pytestmark = pytest.mark.skipif(browser_missing() is not None, reason=browser_missing() or "")

DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 360, "height": 740}
TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    # 20 songs: the fewest clustering into two playlists accepts.
    with stack(tmp_path_factory.mktemp("ui"), artists=4, tracks=5) as parts:
        yield parts


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def _page(browser: Any, size: dict[str, int] = DESKTOP, scheme: str = "light") -> Any:
    context = browser.new_context(viewport=size, color_scheme=scheme, device_scale_factor=1)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.js_errors = errors
    return page


def login(page: Any, url: str, user: str = "alice") -> None:
    page.goto(url + "/")
    page.get_by_label("User name on your music server").fill(user)
    page.get_by_label("Password").fill(USERS[user])
    page.get_by_role("button", name="Log in", exact=True).click()
    page.wait_for_selector("body[data-state='app']")


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def pick(page: Any, label: str, words: str) -> None:
    box = page.get_by_label(label)
    box.fill(words)
    page.locator(f"#{box.get_attribute('aria-controls')} li").first.click()


def _no_js_errors(page: Any) -> None:
    assert [e for e in page.js_errors if "favicon" not in e] == []


# ---------------------------------------------------------------------------- login


def test_wrong_password_refused_and_nothing_shown(served: Any, browser: Any) -> None:
    gate = served[0]
    page = _page(browser)
    page.goto(gate.url + "/")
    assert page.locator("#nav").is_hidden()
    page.get_by_label("User name on your music server").fill("alice")
    page.get_by_label("Password").fill("wrong")
    page.get_by_role("button", name="Log in", exact=True).click()
    page.get_by_role("alert").filter(has_text=re.compile(r"\S")).wait_for()
    assert page.locator("#page").inner_text() == ""
    assert page.context.cookies() == []
    shot(page, "login-refused-desktop")
    page.context.close()


def test_login_logout_and_cookie(served: Any, browser: Any) -> None:
    gate = served[0]
    page = _page(browser)
    login(page, gate.url)
    (cookie,) = page.context.cookies()
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/musegate"
    page.get_by_role("button", name="Log out").click()
    page.wait_for_selector("body[data-state='login']")
    page.reload()
    page.wait_for_selector("body[data-state='login']")
    _no_js_errors(page)
    page.context.close()


# ---------------------------------------------------------------------------- pages


@pytest.mark.parametrize("size", ["desktop", "phone"])
def test_every_page(served: Any, browser: Any, size: str) -> None:
    gate = served[0]
    page = _page(browser, DESKTOP if size == "desktop" else PHONE,
                 scheme="light" if size == "desktop" else "dark")
    login(page, gate.url)

    page.wait_for_selector("[data-page='status'] .stat")
    page.get_by_text("done", exact=True).wait_for()
    shot(page, f"status-{size}")

    page.goto(gate.url + "/#similar")
    pick(page, "Search for a song", "Song 0-0-0")
    page.get_by_role("button", name="Find similar songs").click()
    page.locator("#similar-result table.tracks tbody tr").first.wait_for()
    assert page.locator("#similar-result table.tracks tbody tr").count() >= 3
    page.locator("#similar-result table.tracks tbody tr button").first.click()
    page.wait_for_function("() => document.getElementById('player').readyState >= 1 "
                           "|| document.getElementById('player').error")
    assert page.evaluate("document.getElementById('player').error") is None
    shot(page, f"similar-{size}")

    page.goto(gate.url + "/#path")
    pick(page, "First song (A)", "Song 0-0-0")
    pick(page, "Last song (B)", "Song 2-0-4")
    page.get_by_label("Length (songs)").fill("6")
    page.get_by_role("button", name="Build the path").click()
    page.locator("#path-plot canvas").first.wait_for()
    assert page.locator("#path-result table.tracks tbody tr").count() >= 3
    shot(page, f"path-{size}")

    page.goto(gate.url + "/#alchemy")
    pick(page, "Add a song", "Song 1-0-0")
    page.get_by_role("button", name="+ Add tag").click()
    page.get_by_role("button", name="Mix").click()
    page.locator("#alchemy-result table.tracks tbody tr").first.wait_for()
    page.locator("#alchemy-scatter").wait_for()
    shot(page, f"alchemy-{size}")

    page.goto(gate.url + "/#clusters")
    page.get_by_label("Playlists", exact=True).fill("2")
    page.get_by_role("button", name="Run clustering").click()
    page.locator("#cluster-result details").first.wait_for()
    assert page.locator("#cluster-result details").count() == 2
    shot(page, f"clusters-{size}")

    page.goto(gate.url + "/#instant")
    page.get_by_label("Describe the playlist").fill("calm instrumental around 100 bpm")
    page.get_by_role("button", name="Make the playlist").click()
    page.locator("#instant-reading li").first.wait_for()
    shot(page, f"instant-{size}")

    page.goto(gate.url + "/#fingerprint")
    page.get_by_role("button", name="Make my fingerprint playlist").click()
    page.locator("#fingerprint-result h2, [data-page='fingerprint'] .error:not(:empty)").first.wait_for()
    shot(page, f"fingerprint-{size}")

    page.goto(gate.url + "/#map")
    page.wait_for_selector("body[data-map-points]")
    assert int(page.evaluate("document.body.dataset.mapPoints")) == 20
    shot(page, f"map-{size}")
    _no_js_errors(page)
    page.context.close()


def test_export_from_similar(served: Any, browser: Any) -> None:
    gate, server, _, loop = served
    page = _page(browser)
    login(page, gate.url)
    page.goto(gate.url + "/#similar")
    pick(page, "Search for a song", "Song 1-0-1")
    page.get_by_role("button", name="Find similar songs").click()
    page.locator("#similar-result table.tracks tbody tr").first.wait_for()
    rows = page.locator("#similar-result table.tracks tbody tr").count()
    page.get_by_label("Playlist name").fill("UI export test")
    page.get_by_role("button", name="Save as playlist").click()
    page.get_by_text(re.compile(r"Saved “UI export test”")).wait_for()

    import libsonic

    conn = libsonic.Connection("http://127.0.0.1", "alice", USERS["alice"], port=server.port,
                               legacyAuth=True)
    lists = conn.getPlaylists()["playlists"]["playlist"]
    lists = lists if isinstance(lists, list) else [lists]
    (mine,) = [p for p in lists if p["name"] == "UI export test"]
    assert int(mine["songCount"]) == rows
    page.context.close()


def test_map_click_seeds_a_mix(served: Any, browser: Any) -> None:
    gate = served[0]
    page = _page(browser)
    login(page, gate.url)
    page.goto(gate.url + "/#map")
    page.wait_for_selector("body[data-map-points]")
    point = page.evaluate("""() => {
        const c = document.getElementById('map-canvas'); const r = c.getBoundingClientRect();
        return [r.left, r.top, r.width, r.height]; }""")
    # Click where the page says the first point is drawn.
    xy = page.evaluate("""() => { const s = document.getElementById('map-canvas').scatter; return [s._screen[0], s._screen[1]]; }""")
    page.mouse.click(point[0] + xy[0], point[1] + xy[1])
    page.get_by_role("button", name="Seed a mix").click()
    page.locator("#map-mix table.tracks tbody tr").first.wait_for()
    page.context.close()


def test_status_updates_live_while_analysing(served: Any, browser: Any) -> None:
    gate, server, music, loop = served
    page = _page(browser)
    login(page, gate.url)
    page.wait_for_selector("body[data-run-status='done']")
    before = int(page.evaluate("document.body.dataset.analysed"))
    for i in range(3):
        audio = sine_mix([300.0 + 40 * i, 450.0], 5.0, seed=100 + i)
        audio = audio + np.float32(0.001) * np.random.default_rng(i).standard_normal(audio.shape)
        write_track(music / "Artist new" / "Album new" / f"0{i + 1} New {i}.flac",
                    audio.astype(np.float32), title=f"New {i}", artist="Artist new",
                    album="Album new")
    loop.run(server.rescan())
    page.get_by_role("button", name="Scan and analyse now").click()
    page.wait_for_function("() => (document.body.dataset.runSeen || '').includes('analysing')")
    shot(page, "status-analysing-desktop")
    page.wait_for_function(f"() => document.body.dataset.runStatus === 'done' && "
                           f"Number(document.body.dataset.analysed) === {before + 3}")
    page.context.close()


def test_status_shows_why_a_run_failed_and_the_next_one_is_done(served: Any, browser: Any) -> None:
    """The music server is down when a scan is asked for: the Status page says failed and
    shows the server's reason; with the server back, the next run is done."""
    gate, server, music, loop = served
    page = _page(browser)
    login(page, gate.url)
    page.goto(gate.url + "/#status")
    page.wait_for_selector("body[data-run-status='done']")
    loop.run(server.stop())
    try:
        page.get_by_role("button", name="Scan and analyse now").click()
        page.wait_for_selector("body[data-run-status='failed']")
        error = page.locator("#run-error").inner_text()
        assert "Subsonic server" in error and USERS["alice"] not in error, error
        shot(page, "status-failed-desktop")
    finally:
        loop.run(server.start())
    page.get_by_role("button", name="Scan and analyse now").click()
    page.wait_for_selector("body[data-run-status='done']")
    assert page.locator("#run-error").count() == 0
    assert not page.js_errors, page.js_errors
    page.context.close()


# ---------------------------------------------------------------------------- sub-path


def test_ui_under_a_sub_path(tmp_path: Path, browser: Any) -> None:
    with stack(tmp_path, mount_path="/music", base_path="/sonic/gate", artists=2,
               tracks=2) as (gate, *_):
        assert gate.url.endswith("/music/sonic/gate")
        page = _page(browser, PHONE)
        login(page, gate.url)
        (cookie,) = page.context.cookies()
        assert cookie["path"] == "/music/sonic/gate"
        page.goto(gate.url + "/#similar")
        pick(page, "Search for a song", "Song 0-0-0")
        page.get_by_role("button", name="Find similar songs").click()
        page.locator("#similar-result table.tracks tbody tr").first.wait_for()
        _no_js_errors(page)
        page.context.close()
