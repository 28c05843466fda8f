// A canvas scatter plot with wheel/pinch zoom, drag pan, keyboard, hover and click hit-testing.
// Canvas (not SVG) so that the whole library — tens of thousands of points — stays smooth:
// points are bucketed into a grid once, so finding the point under the pointer is O(1).

const css = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();

export class Scatter {
  // points: [{x, y, color, r?, label, shape?: "dot"|"ring"|"cross"}]; onPick(point)
  constructor(canvas, { onPick = () => {}, onHover = () => {} } = {}) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    canvas.scatter = this;  // reachable from the element (tests, devtools)
    this.onPick = onPick;
    this.onHover = onHover;
    this.points = [];
    this.view = { cx: 0, cy: 0, scale: 1 };
    this.hover = null;
    this.selected = null;
    this._bind();
    this._observer = new ResizeObserver(() => this.draw());
    this._observer.observe(canvas);
    this._theme = () => this.draw();
    window.addEventListener("musegate:theme", this._theme);
  }

  destroy() { this._observer.disconnect(); window.removeEventListener("musegate:theme", this._theme); }

  setPoints(points) {
    this.points = points;
    let minX = Infinity, maxX = -Infinity, minY = Infinity, maxY = -Infinity;
    for (const p of points) { minX = Math.min(minX, p.x); maxX = Math.max(maxX, p.x); minY = Math.min(minY, p.y); maxY = Math.max(maxY, p.y); }
    if (!points.length) { minX = minY = -1; maxX = maxY = 1; }
    this.bounds = { minX, maxX, minY, maxY };
    this.reset();
  }

  reset() {
    const b = this.bounds || { minX: -1, maxX: 1, minY: -1, maxY: 1 };
    this.view = { cx: (b.minX + b.maxX) / 2, cy: (b.minY + b.maxY) / 2,
                  span: Math.max(b.maxX - b.minX, b.maxY - b.minY, 1e-6) * 1.1, scale: 1 };
    this.draw();
  }

  _size() {
    const r = this.canvas.getBoundingClientRect();
    const dpr = window.devicePixelRatio || 1;
    const w = Math.max(1, Math.round(r.width * dpr)), hh = Math.max(1, Math.round(r.height * dpr));
    if (this.canvas.width !== w || this.canvas.height !== hh) { this.canvas.width = w; this.canvas.height = hh; }
    return { w: r.width, h: r.height, dpr };
  }

  // data -> CSS pixels
  _toScreen(x, y, w, h) {
    const unit = Math.min(w, h) / (this.view.span / this.view.scale);
    return [w / 2 + (x - this.view.cx) * unit, h / 2 - (y - this.view.cy) * unit, unit];
  }

  _toData(px, py, w, h) {
    const unit = Math.min(w, h) / (this.view.span / this.view.scale);
    return [this.view.cx + (px - w / 2) / unit, this.view.cy - (py - h / 2) / unit];
  }

  draw() {
    const { w, h, dpr } = this._size();
    const ctx = this.ctx;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    this._screen = new Float32Array(this.points.length * 2);
    this._grid = new Map();
    const cell = 12;
    const big = this.points.length > 2000;
    for (let i = 0; i < this.points.length; i++) {
      const p = this.points[i];
      const [sx, sy] = this._toScreen(p.x, p.y, w, h);
      this._screen[2 * i] = sx; this._screen[2 * i + 1] = sy;
      if (sx < -10 || sy < -10 || sx > w + 10 || sy > h + 10) continue;
      const key = `${Math.floor(sx / cell)},${Math.floor(sy / cell)}`;
      let bucket = this._grid.get(key);
      if (!bucket) this._grid.set(key, (bucket = []));
      bucket.push(i);
      const r = p.r || (big ? 2 : 5);
      ctx.fillStyle = p.color;
      ctx.strokeStyle = p.color;
      if (p.shape === "ring") { ctx.lineWidth = 3; ctx.beginPath(); ctx.arc(sx, sy, r + 3, 0, 7); ctx.stroke(); }
      else if (p.shape === "cross") {
        ctx.lineWidth = 3; ctx.beginPath(); ctx.moveTo(sx - r - 2, sy - r - 2); ctx.lineTo(sx + r + 2, sy + r + 2);
        ctx.moveTo(sx + r + 2, sy - r - 2); ctx.lineTo(sx - r - 2, sy + r + 2); ctx.stroke();
      } else if (big) ctx.fillRect(sx - r / 2, sy - r / 2, r, r);
      else { ctx.beginPath(); ctx.arc(sx, sy, r, 0, 7); ctx.fill(); }
      if (p.showLabel) { ctx.fillStyle = css("--fg"); ctx.font = "12px system-ui"; ctx.fillText(p.label, sx + r + 4, sy + 4); }
    }
    for (const mark of [this.hover, this.selected]) {
      if (mark === null || mark === undefined || !this.points[mark]) continue;
      const sx = this._screen[2 * mark], sy = this._screen[2 * mark + 1];
      ctx.strokeStyle = css("--fg"); ctx.lineWidth = 2;
      ctx.beginPath(); ctx.arc(sx, sy, 8, 0, 7); ctx.stroke();
    }
  }

  nearest(px, py, radius = 10) {
    const cell = 12;
    let best = null, bestD = radius * radius;
    const cx = Math.floor(px / cell), cy = Math.floor(py / cell);
    for (let gx = cx - 1; gx <= cx + 1; gx++) for (let gy = cy - 1; gy <= cy + 1; gy++) {
      for (const i of this._grid.get(`${gx},${gy}`) || []) {
        const dx = this._screen[2 * i] - px, dy = this._screen[2 * i + 1] - py;
        const d = dx * dx + dy * dy;
        if (d <= bestD) { bestD = d; best = i; }
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
    this.draw();
  }

  pan(dx, dy) {
    const { w, h } = this._size();
    const unit = Math.min(w, h) / (this.view.span / this.view.scale);
    this.view.cx -= dx / unit; this.view.cy += dy / unit;
    this.draw();
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
      if (i !== this.hover) { this.hover = i; this.draw(); this.onHover(i === null ? null : this.points[i]); }
    });
    const up = (e) => {
      pointers.delete(e.pointerId);
      if (drag && !moved) {
        const [x, y] = local(e);
        const i = this.nearest(x, y, e.pointerType === "touch" ? 18 : 10);
        if (i !== null) { this.selected = i; this.draw(); this.onPick(this.points[i]); }
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
