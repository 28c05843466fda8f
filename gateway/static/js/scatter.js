// A canvas scatter plot with wheel/pinch zoom, drag pan, keyboard, hover and click hit-testing.
// Canvas (not SVG) so that the whole library — tens of thousands of points — stays smooth:
// - coordinates live in typed arrays; points are drawn by colour (a fill style is parsed once
//   per colour, not once per point) into an offscreen layer; above 2,000 points the dots are
//   written straight into a pixel buffer (one putImageData, no canvas call per point);
// - the layer is redrawn only when the view changes (pan, zoom, resize, theme), at most once
//   per animation frame however many input events arrive; hover and selection rings are drawn
//   over a copy of the layer, so moving the pointer never redraws the points;
// - hit-testing uses a grid of screen cells (counting sort into typed arrays), built lazily
//   after a view change, so finding the point under the pointer looks at a few points only.

const css = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();
const CELL = 12;  // grid cell, CSS px
const BIG = 2000;  // above this many points, dots are small squares written as pixels

// A CSS colour as one pixel of a Uint32Array over ImageData (RGBA bytes in memory order).
const packed = new Map();
const LITTLE = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;
function packColour(color) {
  let v = packed.get(color);
  if (v === undefined) {
    const c = document.createElement("canvas").getContext("2d", { willReadFrequently: true });
    c.fillStyle = color;
    c.fillRect(0, 0, 1, 1);
    const [r, g, b, a] = c.getImageData(0, 0, 1, 1).data;
    v = LITTLE ? ((a << 24) | (b << 16) | (g << 8) | r) >>> 0 : ((r << 24) | (g << 16) | (b << 8) | a) >>> 0;
    packed.set(color, v);
  }
  return v;
}

export class Scatter {
  // points: [{x, y, color, r?, label, shape?: "dot"|"ring"|"cross", showLabel?}]; onPick(point)
  constructor(canvas, { onPick = () => {}, onHover = () => {} } = {}) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    canvas.scatter = this;  // reachable from the element (tests, devtools)
    this.onPick = onPick;
    this.onHover = onHover;
    this.layer = document.createElement("canvas");
    this.layerCtx = this.layer.getContext("2d");
    this.view = { cx: 0, cy: 0, span: 2.2, scale: 1 };
    this.hover = null;
    this.selected = null;
    this._frame = 0;
    this.setPoints([]);
    this._bind();
    this._observer = new ResizeObserver(() => this.requestDraw());
    this._observer.observe(canvas);
    this._theme = () => this.requestDraw();
    window.addEventListener("musegate:theme", this._theme);
  }

  destroy() {
    this._observer.disconnect();
    window.removeEventListener("musegate:theme", this._theme);
    if (this._frame) cancelAnimationFrame(this._frame);
    this._frame = 0;
  }

  setPoints(points) {
    this.points = points;
    const n = points.length;
    this._x = new Float64Array(n);
    this._y = new Float64Array(n);
    this._screen = new Float32Array(n * 2);
    const groups = new Map();  // colour -> indices of the plain points drawn with it
    this._special = [];        // points with a shape, a label or their own radius
    let minX = Infinity, maxX = -Infinity, minY = Infinity, maxY = -Infinity;
    for (let i = 0; i < n; i++) {
      const p = points[i];
      const x = +p.x, y = +p.y;
      this._x[i] = x; this._y[i] = y;
      if (x < minX) minX = x; if (x > maxX) maxX = x;
      if (y < minY) minY = y; if (y > maxY) maxY = y;
      if (p.shape || p.showLabel || p.r) { this._special.push(i); continue; }
      let g = groups.get(p.color);
      if (!g) groups.set(p.color, (g = []));
      g.push(i);
    }
    this._groups = [...groups.entries()].map(([color, idx]) => [color, Int32Array.from(idx)]);
    if (!n) { minX = minY = -1; maxX = maxY = 1; }
    this.bounds = { minX, maxX, minY, maxY };
    this.hover = null;
    this.selected = null;
    this.reset();
    this.draw();  // drawn now: callers may read _screen or mark the page ready right after
  }

  reset() {
    const b = this.bounds || { minX: -1, maxX: 1, minY: -1, maxY: 1 };
    this.view = { cx: (b.minX + b.maxX) / 2, cy: (b.minY + b.maxY) / 2,
                  span: Math.max(b.maxX - b.minX, b.maxY - b.minY, 1e-6) * 1.1, scale: 1 };
    this.requestDraw();
  }

  // Redraw the points at the next animation frame (many calls in one frame draw once).
  requestDraw() {
    this._stale = true;
    if (!this._frame) this._frame = requestAnimationFrame(() => { this._frame = 0; if (this._stale) this.draw(); });
  }

  _size() {
    const r = this.canvas.getBoundingClientRect();
    const dpr = window.devicePixelRatio || 1;
    const w = Math.max(1, Math.round(r.width * dpr)), hh = Math.max(1, Math.round(r.height * dpr));
    if (this.canvas.width !== w || this.canvas.height !== hh) { this.canvas.width = w; this.canvas.height = hh; }
    if (this.layer.width !== w || this.layer.height !== hh) { this.layer.width = w; this.layer.height = hh; }
    return { w: r.width, h: r.height, dpr };
  }

  _unit(w, h) { return Math.min(w, h) / (this.view.span / this.view.scale); }

  // data -> CSS pixels
  _toScreen(x, y, w, h) {
    const unit = this._unit(w, h);
    return [w / 2 + (x - this.view.cx) * unit, h / 2 - (y - this.view.cy) * unit, unit];
  }

  _toData(px, py, w, h) {
    const unit = this._unit(w, h);
    return [this.view.cx + (px - w / 2) / unit, this.view.cy - (py - h / 2) / unit];
  }

  // Redraw the points layer for the current view now, then the marks over it.
  draw() {
    this._stale = false;
    const { w, h, dpr } = this._size();
    this._w = w; this._h = h; this._dpr = dpr;
    const ctx = this.layerCtx;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    const unit = this._unit(w, h);
    const ox = w / 2 - this.view.cx * unit, oy = h / 2 + this.view.cy * unit;
    const xs = this._x, ys = this._y, screen = this._screen, n = xs.length;
    for (let i = 0; i < n; i++) { screen[2 * i] = ox + xs[i] * unit; screen[2 * i + 1] = oy - ys[i] * unit; }
    const big = n > BIG;
    const r = big ? 2 : 5;
    const x0 = -10, y0 = -10, x1 = w + 10, y1 = h + 10;
    if (big) this._stamp(dpr);
    else {
      for (const [color, idx] of this._groups) {
        ctx.fillStyle = color;
        for (let k = 0; k < idx.length; k++) {
          const i = idx[k], sx = screen[2 * i], sy = screen[2 * i + 1];
          if (sx < x0 || sy < y0 || sx > x1 || sy > y1) continue;
          ctx.beginPath(); ctx.arc(sx, sy, r, 0, 2 * Math.PI); ctx.fill();
        }
      }
    }
    const fg = css("--fg");
    for (const i of this._special) {
      const p = this.points[i], sx = screen[2 * i], sy = screen[2 * i + 1];
      if (sx < x0 || sy < y0 || sx > x1 || sy > y1) continue;
      const pr = p.r || r;
      ctx.fillStyle = p.color;
      ctx.strokeStyle = p.color;
      if (p.shape === "ring") { ctx.lineWidth = 3; ctx.beginPath(); ctx.arc(sx, sy, pr + 3, 0, 7); ctx.stroke(); }
      else if (p.shape === "cross") {
        ctx.lineWidth = 3; ctx.beginPath(); ctx.moveTo(sx - pr - 2, sy - pr - 2); ctx.lineTo(sx + pr + 2, sy + pr + 2);
        ctx.moveTo(sx + pr + 2, sy - pr - 2); ctx.lineTo(sx - pr - 2, sy + pr + 2); ctx.stroke();
      } else if (big && !p.r) ctx.fillRect(sx - pr / 2, sy - pr / 2, pr, pr);
      else { ctx.beginPath(); ctx.arc(sx, sy, pr, 0, 7); ctx.fill(); }
      if (p.showLabel) { ctx.fillStyle = fg; ctx.font = "12px system-ui"; ctx.fillText(p.label, sx + pr + 4, sy + 4); }
    }
    this._grid = null;  // the view changed: hit-testing rebuilds its grid when next asked
    this._marks(fg);
  }

  // Many points: square dots written straight into a pixel buffer (no path, no per-point
  // canvas call), then put on the layer in one call.
  _stamp(dpr) {
    const W = this.layer.width, H = this.layer.height;
    if (!this._image || this._image.width !== W || this._image.height !== H) {
      this._image = new ImageData(W, H);
      this._pixels = new Uint32Array(this._image.data.buffer);
    }
    const px = this._pixels, screen = this._screen;
    px.fill(0);
    const size = Math.max(1, Math.round(2 * dpr)), off = size / 2;
    for (const [color, idx] of this._groups) {
      const rgba = packColour(color);
      for (let k = 0; k < idx.length; k++) {
        const i = idx[k];
        const left = Math.round(screen[2 * i] * dpr - off), top = Math.round(screen[2 * i + 1] * dpr - off);
        if (left < 0 || top < 0 || left + size > W || top + size > H) continue;
        const o = top * W + left;
        if (size === 2) { px[o] = rgba; px[o + 1] = rgba; px[o + W] = rgba; px[o + W + 1] = rgba; }
        else for (let y = 0; y < size; y++) px.fill(rgba, o + y * W, o + y * W + size);
      }
    }
    this.layerCtx.putImageData(this._image, 0, 0);
  }

  // The points layer as drawn, and the hover and selection rings over it.
  _marks(fg = css("--fg")) {
    const ctx = this.ctx, dpr = this._dpr || 1;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, this.canvas.width, this.canvas.height);
    ctx.drawImage(this.layer, 0, 0);
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    for (const mark of [this.hover, this.selected]) {
      if (mark === null || mark === undefined || !this.points[mark]) continue;
      const sx = this._screen[2 * mark], sy = this._screen[2 * mark + 1];
      ctx.strokeStyle = fg; ctx.lineWidth = 2;
      ctx.beginPath(); ctx.arc(sx, sy, 8, 0, 7); ctx.stroke();
    }
  }

  // Screen cells -> the points drawn in them: start offsets and point indices (counting sort).
  _buildGrid() {
    const w = this._w || 1, h = this._h || 1, screen = this._screen, n = this.points.length;
    const cols = Math.ceil((w + 20) / CELL) + 1, rows = Math.ceil((h + 20) / CELL) + 1;
    const cellOf = new Int32Array(n).fill(-1);
    const start = new Int32Array(cols * rows + 1);
    for (let i = 0; i < n; i++) {
      const gx = Math.floor((screen[2 * i] + 10) / CELL), gy = Math.floor((screen[2 * i + 1] + 10) / CELL);
      if (gx < 0 || gy < 0 || gx >= cols || gy >= rows) continue;
      const c = gy * cols + gx;
      cellOf[i] = c;
      start[c + 1]++;
    }
    for (let c = 0; c < cols * rows; c++) start[c + 1] += start[c];
    const fill = start.slice(0, cols * rows);
    const items = new Int32Array(start[cols * rows]);
    for (let i = 0; i < n; i++) if (cellOf[i] >= 0) items[fill[cellOf[i]]++] = i;
    this._grid = { cols, rows, start, items };
  }

  nearest(px, py, radius = 10) {
    if (this._stale) this.draw();  // a view change still waiting for its frame
    if (!this._grid) this._buildGrid();
    const { cols, rows, start, items } = this._grid;
    const screen = this._screen;
    let best = null, bestD = radius * radius;
    const reach = Math.ceil(radius / CELL);
    const cx = Math.floor((px + 10) / CELL), cy = Math.floor((py + 10) / CELL);
    for (let gy = Math.max(0, cy - reach); gy <= Math.min(rows - 1, cy + reach); gy++) {
      for (let gx = Math.max(0, cx - reach); gx <= Math.min(cols - 1, cx + reach); gx++) {
        const c = gy * cols + gx;
        for (let k = start[c]; k < start[c + 1]; k++) {
          const i = items[k];
          const dx = screen[2 * i] - px, dy = screen[2 * i + 1] - py;
          const d = dx * dx + dy * dy;
          if (d <= bestD) { bestD = d; best = i; }
        }
      }
    }
    return best;
  }

  zoom(factor, px, py) {
    const { w, h } = this._size();
    px = px ?? w / 2; py = py ?? h / 2;
    const [bx, by] = this._toData(px, py, w, h);
    this.view.scale = Math.min(Math.max(this.view.scale * factor, 0.5), 400);
    const [ax, ay] = this._toData(px, py, w, h);
    this.view.cx += bx - ax; this.view.cy += by - ay;
    this.requestDraw();
  }

  pan(dx, dy) {
    const { w, h } = this._size();
    const unit = this._unit(w, h);
    this.view.cx -= dx / unit; this.view.cy += dy / unit;
    this.requestDraw();
  }

  _bind() {
    const c = this.canvas;
    c.tabIndex = 0;
    let drag = null, moved = false;
    const pointers = new Map();
    const local = (e) => { const r = c.getBoundingClientRect(); return [e.clientX - r.left, e.clientY - r.top]; };
    c.addEventListener("wheel", (e) => { e.preventDefault(); const [x, y] = local(e); this.zoom(e.deltaY < 0 ? 1.2 : 1 / 1.2, x, y); }, { passive: false });
    c.addEventListener("pointerdown", (e) => {
      c.setPointerCapture(e.pointerId); pointers.set(e.pointerId, local(e));
      drag = local(e); moved = false;
    });
    c.addEventListener("pointermove", (e) => {
      const pos = local(e);
      if (pointers.size === 2 && pointers.has(e.pointerId)) {
        const [a, b] = [...pointers.values()];
        const before = Math.hypot(a[0] - b[0], a[1] - b[1]);
        pointers.set(e.pointerId, pos);
        const [a2, b2] = [...pointers.values()];
        const after = Math.hypot(a2[0] - b2[0], a2[1] - b2[1]);
        if (before > 0) this.zoom(after / before, (a2[0] + b2[0]) / 2, (a2[1] + b2[1]) / 2);
        moved = true;
        return;
      }
      if (drag && pointers.has(e.pointerId)) {
        const dx = pos[0] - drag[0], dy = pos[1] - drag[1];
        if (Math.abs(dx) + Math.abs(dy) > 3) moved = true;
        if (moved) { this.pan(dx, dy); drag = pos; }
        return;
      }
      const i = this.nearest(pos[0], pos[1]);
      if (i !== this.hover) { this.hover = i; this._marks(); this.onHover(i === null ? null : this.points[i]); }
    });
    const up = (e) => {
      pointers.delete(e.pointerId);
      if (drag && !moved) {
        const [x, y] = local(e);
        const i = this.nearest(x, y, e.pointerType === "touch" ? 18 : 10);
        if (i !== null) { this.selected = i; this._marks(); this.onPick(this.points[i]); }
      }
      drag = null;
    };
    c.addEventListener("pointerup", up);
    c.addEventListener("pointercancel", (e) => { pointers.delete(e.pointerId); drag = null; });
    c.addEventListener("keydown", (e) => {
      const step = 40;
      const keys = { ArrowLeft: () => this.pan(step, 0), ArrowRight: () => this.pan(-step, 0),
                     ArrowUp: () => this.pan(0, step), ArrowDown: () => this.pan(0, -step),
                     "+": () => this.zoom(1.25), "=": () => this.zoom(1.25), "-": () => this.zoom(0.8),
                     "0": () => this.reset() };
      if (keys[e.key]) { keys[e.key](); e.preventDefault(); }
    });
  }
}
