// Music map: every analysed song on a plane (cached per index version), coloured by top tag or
// cluster; zoom, pan, click a point to play it or to seed a similar-songs mix.
import { get, post } from "../api.js";
import { h, field, palette } from "../dom.js";
import { Scatter } from "../scatter.js";
import { trackTable, exportForm, errorBox, play } from "../widgets.js";

export async function render(root) {
  const err = errorBox();
  const colour = h("select", {}, h("option", { value: "tag" }, "top tag"), h("option", { value: "cluster" }, "cluster"));
  const info = h("p", { id: "map-info", "aria-live": "polite", class: "muted" }, "Loading the map…");
  const canvas = h("canvas", { class: "scatter", id: "map-canvas", role: "img",
    "aria-label": "The whole library on a plane. Drag or use the arrow keys to pan, wheel or + and - to zoom, 0 to reset; click a song to pick it." });
  const legend = h("div", { class: "legend" });
  const chosen = h("div", { id: "map-chosen" });
  const out = h("div", { id: "map-mix" });
  root.append(h("div", { class: "card" }, h("div", { class: "row" }, field("Colour by", colour),
    h("div", {}, h("button", { type: "button", class: "secondary", onclick: () => scatter.zoom(1.5) }, "Zoom in"), " ",
      h("button", { type: "button", class: "secondary", onclick: () => scatter.zoom(1 / 1.5) }, "Zoom out"), " ",
      h("button", { type: "button", class: "secondary", onclick: () => scatter.reset() }, "Reset"))),
    info, canvas, legend, chosen, err), out);

  const scatter = new Scatter(canvas, {
    onHover: (p) => { if (p) info.textContent = `${p.track.artist} — ${p.track.title}`; },
    onPick: (p) => pick(p.track),
  });

  // api/map sends parallel arrays: points.x[i], points.title[i], … are song i.
  let data = null;
  let tracks = [];
  function paint() {
    const cols = data.points;
    const byCluster = colour.value === "cluster" && data.clusters.length;
    const names = byCluster ? data.clusters : data.tags;
    const keyOf = byCluster ? cols.cluster : cols.tag;
    const counts = new Map();
    for (const k of keyOf) counts.set(k, (counts.get(k) || 0) + 1);
    const ranked = [...counts.entries()].sort((a, b) => b[1] - a[1]);
    const colourOf = new Map(ranked.map(([k], i) => [k, i < 12 ? palette(i) : "hsl(0 0% 55%)"]));
    scatter.setPoints(tracks.map((t, i) => ({ x: cols.x[i], y: cols.y[i], color: colourOf.get(keyOf[i]), track: t, label: t.title })));
    legend.replaceChildren(...ranked.slice(0, 12).map(([k, c]) => h("span", {}, h("i", { style: `background:${colourOf.get(k)}` }), `${k < 0 ? "no cluster" : names[k]} (${c})`)));
    if (colour.value === "cluster" && !data.clusters.length) info.textContent = "No clustering has run yet: coloured by top tag (run one on the Clusters page).";
  }
  colour.addEventListener("change", paint);

  function pick(t) {
    chosen.replaceChildren(h("p", {}, h("strong", {}, `${t.artist} — ${t.title}`), " ",
      h("button", { type: "button", class: "small", onclick: () => play(t) }, "▶ Play"), " ",
      h("button", { type: "button", class: "small secondary", id: "map-seed", onclick: () => mix(t) }, "Seed a mix")));
  }
  async function mix(t) {
    try {
      const r = await post("api/similar", { ids: [t.id], n: 20 });
      out.replaceChildren(h("h2", {}, `Mix from “${t.title}”`), await trackTable(r.tracks), exportForm(() => r.tracks, `Mix from ${t.title}`));
    } catch (e) { err.textContent = e.message; }
  }

  try {
    data = await get("api/map");
    const cols = data.points;
    tracks = cols.id.map((id, i) => ({ id, title: cols.title[i], artist: cols.artist[i] }));
    info.textContent = `${tracks.length} songs. Hover or tap a point; drag to pan, wheel to zoom.`;
    paint();
    document.body.dataset.mapPoints = String(tracks.length);  // drawn: setPoints draws at once
  } catch (e) { err.textContent = e.message; info.textContent = ""; }
  return { stop: () => scatter.destroy() };
}
