"""Web UI music map at 2,000 (baseline) and 20,000 songs: api/map, first frame, pan/zoom, hit-testing.

    .venv/bin/python bench/ui_map.py [--no-write] [--sizes 2000,20000]

Issue 10 asks for a map that is "smooth at 20k points". For each size, in the
same run: a folder library of N empty ``.flac`` files is recorded in a fresh
store with a synthetic analysis per song (no audio, no model: 40 embedding
clusters, each with its own strongest tags, so the map has colours and
structure); the real ``musegate serve`` runs on it (local operator login:
loopback, no api_key) and Debian's chromium opens the Music map page through
Playwright. Measured:

a. ``GET api/map`` from the client on loopback: the first call (computes the
   projection) and warm calls (cached projection), and the answer's size;
b. navigation → the first frame after the map is drawn: an init script waits
   for the page's ``data-map-points`` mark (set once the points are drawn) and
   takes the next requestAnimationFrame; the canvas must then hold drawn pixels;
c. panning (a real pointer press, then one pointermove per animation frame)
   and zooming (one wheel event per frame): every call of the map's ``draw``
   timed with performance.now up to a one-pixel read-back (which makes the
   canvas rasterise what was drawn), and the intervals between animation frames;
d. hit-testing: ``nearest()`` at 2,000 random places, and the whole handler of
   real hover moves (pointermove) and clicks (pointerup) on drawn points.

Ratios are 20k / 2k. Results are printed and written to docs/benchmarks.md
(--no-write to skip).
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchlib import machine, write_section  # noqa: E402

from analysis.labels import MSD_LABELS  # noqa: E402
from analysis.store import LibraryStore, TrackRecord  # noqa: E402
from musegate.config import load_config  # noqa: E402
from musegate.library import analyzer_settings  # noqa: E402
from tests.store_factory import synthetic_analysis  # noqa: E402
from tests.ui_harness import CHROMIUM, CHROMIUM_ARGS, Musegate, browser_missing, free_port  # noqa: E402

SECTION = "## Web UI: music map"
CLUSTERS = 40
ARTISTS_PER_CLUSTER = 10
VIEWPORT = {"width": 1280, "height": 800}
FRAMES = 120  # animation frames of panning, and again of zooming
TIMEOUT_MS = 120_000


# ---- the library ------------------------------------------------------------------------

async def build_library(tmp: Path, n: int, seed: int = 0) -> tuple[Path, Path]:
    """N empty audio files under tmp/music, each recorded and analysed (synthetically)."""
    root = (tmp / "music").resolve()
    data = tmp / "data"
    config = load_config(None, env={}, overrides={"data_dir": str(data),
                                                  "library_path": str(root)})
    version = analyzer_settings(config).version
    source = f"folder:{root}"
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((CLUSTERS, 200))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    strong = [rng.choice(len(MSD_LABELS), 3, replace=False) for _ in range(CLUSTERS)]
    records, plan = [], []
    for i in range(n):
        c = i % CLUSTERS
        artist = f"Artist {c}-{(i // CLUSTERS) % ARTISTS_PER_CLUSTER}"
        rel = f"c{c:02d}/{artist}/{i:06d} Song {i}.flac"
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
        st = path.stat()
        # size and mtime as the folder scan will see them, so serve's scan at start keeps them
        records.append(TrackRecord(source=source, upstream_id=rel, path=str(path),
                                   size=st.st_size, mtime=st.st_mtime, title=f"Song {i}",
                                   artist=artist, album=f"{artist} album", duration=200.0,
                                   raw={"relative_path": rel}))
        plan.append(c)
    store = await LibraryStore.open(config.db_path)
    try:
        await store.sync_source(source, records)
        known = await store.tracks_of_source(source)
        analyses = []
        for rec, c in zip(records, plan, strict=True):
            tags = rng.uniform(0.0, 0.1, len(MSD_LABELS))
            tags[strong[c]] = rng.uniform(0.5, 0.9, 3)
            emb = centres[c] + rng.standard_normal(200) * (0.6 / np.sqrt(200))
            analyses.append((known[rec.upstream_id].id or 0,
                             synthetic_analysis(emb, version, tags=tags.astype(np.float32),
                                                duration=200.0)))
        for start in range(0, len(analyses), 5000):
            await store.write_results(analyses[start:start + 5000])
    finally:
        await store.close()
    return root, data


def serve(root: Path, data: Path) -> Musegate:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MUSEGATE_")}
    env.update({
        "MUSEGATE_DATA_DIR": str(data), "MUSEGATE_LIBRARY_PATH": str(root),
        "MUSEGATE_HOST": "127.0.0.1", "MUSEGATE_PORT": str(port), "MUSEGATE_WORKERS": "1",
        "MUSEGATE_LOG_LEVEL": "WARNING", "PYTHONPATH": str(REPO),
    })
    return Musegate(env, port, "/musegate")


# ---- measuring ----------------------------------------------------------------------------

def fetch(url: str) -> tuple[float, bytes]:
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=300) as resp:
        body = resp.read()
    return (time.perf_counter() - t0) * 1000, body


def triple(values: list[float]) -> tuple[float, float, float]:
    v = sorted(values)
    if not v:
        return (float("nan"),) * 3  # type: ignore[return-value]
    return (statistics.median(v), v[min(len(v) - 1, int(round(0.95 * (len(v) - 1))))], v[-1])


# Runs in every new document: note the first animation frame after the map is drawn.
INIT = """
window.__bench = { firstFrame: null, drawnAt: null };
new MutationObserver((_, obs) => {
  if (document.body && document.body.dataset.mapPoints) {
    obs.disconnect();
    window.__bench.drawnAt = performance.now();
    requestAnimationFrame(() => { window.__bench.firstFrame = performance.now(); });
  }
}).observe(document, { attributes: true, subtree: true, attributeFilter: ["data-map-points"] });
"""

# The map's draw timed on every call, and every animation frame's interval.
RECORD = """() => {
  const s = document.getElementById('map-canvas').scatter;
  const rec = window.__rec = { draws: [], frames: [], on: false };
  if (!s.__timed) {
    const draw = s.draw.bind(s);
    // A canvas records drawing calls and rasterises them later; reading one pixel back makes
    // the timed span include the rasterisation of what draw() asked for.
    const ctx = s.canvas.getContext('2d');
    s.draw = (...a) => { const t = performance.now(); const r = draw(...a); ctx.getImageData(0, 0, 1, 1);
                         if (window.__rec.on) window.__rec.draws.push(performance.now() - t); return r; };
    s.__timed = true;
  }
  window.addEventListener('pointerdown', (e) => { window.__pointerId = e.pointerId; }, { capture: true });
}"""

# One synthetic event per animation frame; resolves with the draw times and frame intervals.
LOOP = """async ([kind, frames]) => {
  const c = document.getElementById('map-canvas'); const r = c.getBoundingClientRect();
  const cx = r.left + r.width / 2, cy = r.top + r.height / 2;
  const rec = window.__rec; rec.draws = []; rec.frames = []; rec.on = true;
  await new Promise((done) => {
    let last = null, i = 0;
    const step = (ts) => {
      if (last !== null) rec.frames.push(ts - last);
      last = ts;
      if (i >= frames) { done(); return; }
      if (kind === 'pan') {
        const a = i / 12;
        c.dispatchEvent(new PointerEvent('pointermove', { pointerId: window.__pointerId, pointerType: 'mouse',
          isPrimary: true, buttons: 1, bubbles: true, clientX: cx + 200 * Math.cos(a), clientY: cy + 120 * Math.sin(a) }));
      } else {
        const out = Math.floor(i / 20) % 2 === 1;
        c.dispatchEvent(new WheelEvent('wheel', { deltaY: out ? 100 : -100, bubbles: true, cancelable: true,
          clientX: cx + 80 * Math.cos(i), clientY: cy + 60 * Math.sin(i) }));
      }
      i++;
      requestAnimationFrame(step);
    };
    requestAnimationFrame(step);
  });
  rec.on = false;
  return { draws: rec.draws, frames: rec.frames };
}"""

NEAREST = """(count) => {
  const s = document.getElementById('map-canvas').scatter;
  const r = s.canvas.getBoundingClientRect();
  let seed = 12345; const rnd = () => ((seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648);
  const xs = Array.from({ length: count }, () => [rnd() * r.width, rnd() * r.height]);
  const each = []; let hits = 0;
  const t0 = performance.now();
  for (const [x, y] of xs) { if (s.nearest(x, y) !== null) hits++; }
  const total = performance.now() - t0;
  for (const [x, y] of xs.slice(0, 200)) { const t = performance.now(); s.nearest(x, y); each.push(performance.now() - t); }
  return { mean_us: 1000 * total / count, max_ms: Math.max(...each), hits };
}"""

# Where drawn points are (CSS px in the page) and a timer around the canvas's own handlers.
POINTS_ON_SCREEN = """(count) => {
  const s = document.getElementById('map-canvas').scatter;
  const r = s.canvas.getBoundingClientRect();
  const out = [];
  const n = s.points.length;
  for (let k = 0; out.length < count && k < n * 4; k++) {
    const i = Math.floor((k * 7919) % n);
    const x = s._screen[2 * i], y = s._screen[2 * i + 1];
    if (x > 12 && y > 12 && x < r.width - 12 && y < r.height - 12) out.push([r.left + x, r.top + y]);
  }
  return out;
}"""

HANDLER_TIMER = """() => {
  const c = document.getElementById('map-canvas');
  const t = window.__handler = { move: [], up: [] };
  let start = 0;
  window.addEventListener('pointermove', () => { start = performance.now(); }, { capture: true });
  window.addEventListener('pointerup', () => { start = performance.now(); }, { capture: true });
  const ctx = c.getContext('2d');  // a one-pixel read-back: the span includes rasterising
  c.addEventListener('pointermove', () => { ctx.getImageData(0, 0, 1, 1); t.move.push(performance.now() - start); });
  c.addEventListener('pointerup', () => { ctx.getImageData(0, 0, 1, 1); t.up.push(performance.now() - start); });
}"""


def drawn_pixels(page: Any) -> int:
    return int(page.evaluate("""() => {
      const c = document.getElementById('map-canvas');
      const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
      let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] !== 0) n++;
      return n; }"""))


def measure_page(browser: Any, url: str, n: int) -> dict[str, Any]:
    r: dict[str, Any] = {}
    context = browser.new_context(viewport=VIEWPORT, device_scale_factor=1)
    context.add_init_script(INIT)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(url + "/")
    page.wait_for_selector("#login-local-submit:visible")
    page.click("#login-local-submit")
    page.wait_for_selector("body[data-state='app']")

    first, fetched = [], []
    for _ in range(3):
        page.goto("about:blank")
        page.goto(url + "/#map", wait_until="commit")
        page.wait_for_function("() => window.__bench && window.__bench.firstFrame !== null")
        b = page.evaluate("""() => { const e = performance.getEntriesByType('resource')
            .filter((x) => x.name.includes('/api/map')).pop();
            return { first: window.__bench.firstFrame, fetched: e ? e.responseEnd : null }; }""")
        first.append(b["first"])
        fetched.append(b["fetched"])
    assert int(page.evaluate("document.body.dataset.mapPoints")) == n
    assert drawn_pixels(page) > 0, "the map's canvas is empty"
    r["first_frame"] = statistics.median(first)
    r["fetched"] = statistics.median(fetched)

    page.evaluate(RECORD)
    box = page.locator("#map-canvas").bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx, cy)
    page.mouse.down()
    pan = page.evaluate(LOOP, ["pan", FRAMES])
    page.mouse.up()
    zoom = page.evaluate(LOOP, ["zoom", FRAMES])
    r["pan_draw"], r["pan_frame"] = triple(pan["draws"]), triple(pan["frames"])
    r["zoom_draw"], r["zoom_frame"] = triple(zoom["draws"]), triple(zoom["frames"])
    r["pan_draws"] = len(pan["draws"])
    r["zoom_draws"] = len(zoom["draws"])

    page.get_by_role("button", name="Reset").click()
    page.evaluate("() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)))")
    hit = page.evaluate(NEAREST, 2000)
    r["nearest_us"], r["nearest_max"] = hit["mean_us"], hit["max_ms"]
    page.evaluate(HANDLER_TIMER)
    targets = page.evaluate(POINTS_ON_SCREEN, 40)
    for x, y in targets:
        page.mouse.move(x, y)
    for x, y in targets[:15]:
        page.mouse.click(x, y)
    handler = page.evaluate("window.__handler")
    r["hover"] = triple(handler["move"])
    r["click"] = triple(handler["up"])
    r["picked"] = page.locator("#map-chosen strong").count()
    assert r["picked"] == 1, "a click on a drawn point did not pick it"
    assert not errors, errors
    context.close()
    return r


def run_size(browser: Any, n: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        # Playwright's sync API owns this thread's event loop: build on another thread.
        with ThreadPoolExecutor(1) as pool:
            root, data = pool.submit(asyncio.run, build_library(Path(tmp), n)).result()
        print(f"  {n:,} songs recorded and analysed in {time.perf_counter() - t0:.1f} s",
              flush=True)
        gate = serve(root, data)
        try:
            gate.wait_until("/api/progress", lambda p: p["run"] and p["run"]["status"] == "done"
                            and p["indexed"] == p["tracks"] == n)
            r: dict[str, Any] = {"n": n}
            r["cold"], body = fetch(gate.url + "/api/map")
            warm = [fetch(gate.url + "/api/map")[0] for _ in range(5)]
            r["warm"] = statistics.median(warm)
            r["bytes"], r["gzip"] = len(body), len(gzip.compress(body, 6))
            r.update(measure_page(browser, gate.url, n))
        finally:
            gate.stop()
    print(f"  {n:,}: {r}", flush=True)
    return r


# ---- the report ---------------------------------------------------------------------------

def render(results: list[dict[str, Any]], wall: float) -> str:
    base, big = results[0], results[-1]

    def one(key: str, fmt: str = "{:.1f}") -> tuple[str, str, str]:
        a, b = base[key], big[key]
        return fmt.format(a), fmt.format(b), f"{b / a:.2f}×" if a else "—"

    def three(key: str) -> tuple[str, str, str]:
        a, b = base[key], big[key]
        cell = lambda t: " / ".join(f"{v:.1f}" for v in t)  # noqa: E731
        return cell(a), cell(b), " / ".join(f"{y / x:.1f}×" if x else "—" for x, y in zip(a, b, strict=True))

    rows = [
        ("api/map, first call (projection computed), ms", one("cold", "{:.0f}")),
        ("api/map, warm (cached), median of 5, ms", one("warm", "{:.0f}")),
        ("api/map answer, KiB", (f"{base['bytes'] / 1024:.0f}", f"{big['bytes'] / 1024:.0f}",
                                 f"{big['bytes'] / base['bytes']:.2f}×")),
        ("api/map answer gzipped (level 6), KiB", (f"{base['gzip'] / 1024:.0f}",
                                                   f"{big['gzip'] / 1024:.0f}",
                                                   f"{big['gzip'] / base['gzip']:.2f}×")),
        ("navigation → api/map answered in the page, ms (median of 3)", one("fetched", "{:.0f}")),
        ("navigation → first frame with the map drawn, ms (median of 3)",
         one("first_frame", "{:.0f}")),
        ("pan: draw ms, p50 / p95 / max", three("pan_draw")),
        ("pan: frame interval ms, p50 / p95 / max", three("pan_frame")),
        ("zoom: draw ms, p50 / p95 / max", three("zoom_draw")),
        ("zoom: frame interval ms, p50 / p95 / max", three("zoom_frame")),
        ("hit-test `nearest()`, µs per call (mean of 2,000)", one("nearest_us", "{:.2f}")),
        ("hover: pointermove handler ms, p50 / p95 / max", three("hover")),
        ("click: pointerup handler ms, p50 / p95 / max", three("click")),
    ]
    a, b = f"{base['n']:,}", f"{big['n']:,}"
    lines = [
        f"{SECTION} (`make bench` → `bench/ui_map.py`)",
        "",
        f"Measured {date.today().isoformat()} on {machine()}; Debian chromium "
        f"{chromium_version()} headless (software rendering, `--disable-gpu`), viewport "
        f"{VIEWPORT['width']}×{VIEWPORT['height']} at device pixel ratio 1; command: "
        f"`.venv/bin/python bench/ui_map.py` ({wall:.0f} s in all).",
        "",
        "A folder library of empty files with a synthetic analysis per song (40 embedding "
        "clusters with their own top tags), served by the real `musegate serve` (local operator "
        "login) and opened in the Music map page through Playwright, after an unreported 200-song "
        "round that warms disk caches. api/map times are the "
        "client's on loopback (request to last byte). The first frame is the first "
        "requestAnimationFrame after the page marks the points drawn, from navigation start "
        "(api/map is warm then). Pan: one pointermove per animation frame while a real button "
        f"is held; zoom: one wheel event per frame; {FRAMES} frames each. Draw times are each "
        "call of the map's `draw()` including the rasterisation of what it drew (a one-pixel "
        "read-back ends the timed span); hover and click are the whole pointermove / pointerup "
        "handling (hit-test, redraw, page update, rasterising) of real mouse input over 40 drawn points "
        "and 15 clicks. Ratios are 20k / 2k.",
        "",
        f"| measure | {a} songs | {b} songs | {b} / {a} |",
        "| --- | ---: | ---: | ---: |",
    ]
    lines += [f"| {label} | {x} | {y} | {z} |" for label, (x, y, z) in rows]
    lines.append("")
    return "\n".join(lines)


def chromium_version() -> str:
    try:
        out = subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True, timeout=30)
        return out.stdout.split()[1] if out.stdout.split()[1:] else "?"
    except (OSError, subprocess.SubprocessError, IndexError):
        return "?"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    parser.add_argument("--sizes", default="2000,20000",
                        help="library sizes, the first is the baseline (default 2000,20000)")
    args = parser.parse_args()
    missing = browser_missing()
    if missing:
        print(f"bench/ui_map.py needs a browser: {missing}", file=sys.stderr)
        return 1
    sizes = [int(s) for s in args.sizes.split(",")]
    from playwright.sync_api import sync_playwright

    t0 = time.perf_counter()
    results = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            # A small unreported round first, so the baseline does not pay for cold disk caches
            # (the first import of scikit-learn's solvers, chromium's first page).
            print("warming up (200 songs, not reported) …", flush=True)
            run_size(browser, 200)
            for n in sizes:
                print(f"measuring {n:,} songs …", flush=True)
                results.append(run_size(browser, n))
        finally:
            browser.close()
    section = render(results, time.perf_counter() - t0)
    print(section)
    if not args.no_write:
        write_section(REPO / "docs" / "benchmarks.md", SECTION, section)
        print("written to docs/benchmarks.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
