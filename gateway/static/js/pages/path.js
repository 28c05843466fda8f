// Song path: A → (waypoints) → B of a chosen length, the list and a plot of each step's distance.
import uPlot from "../../vendor/uplot/uPlot.esm.js";
import { post } from "../api.js";
import { h, field } from "../dom.js";
import { trackPicker, trackTable, exportForm, errorBox, chip, onSubmit } from "../widgets.js";

export async function render(root) {
  let start = null, end = null, via = [], result = [], plot = null;
  const picked = h("div", { class: "chips", "aria-live": "polite" });
  const length = h("input", { type: "number", min: 2, max: 500, value: 12 });
  const go = h("button", { type: "submit", disabled: true }, "Build the path");
  const err = errorBox();
  const out = h("div", { id: "path-result" });

  function show() {
    const parts = [];
    if (start) parts.push(chip(`A: ${start.title}`, () => { start = null; show(); }));
    via.forEach((t, i) => parts.push(chip(`via: ${t.title}`, () => { via.splice(i, 1); show(); })));
    if (end) parts.push(chip(`B: ${end.title}`, () => { end = null; show(); }));
    picked.replaceChildren(...(parts.length ? parts : [h("span", { class: "muted" }, "Pick a first and a last song.")]));
    go.disabled = !(start && end);
  }
  const form = h("form", { class: "card" },
    h("div", { class: "row" },
      trackPicker("First song (A)", (t) => { start = t; show(); }),
      trackPicker("Last song (B)", (t) => { end = t; show(); }),
      trackPicker("Add a waypoint (optional)", (t) => { via.push(t); show(); })),
    picked, h("div", { class: "row" }, field("Length (songs)", length)), go, err);
  onSubmit(form, go, err, "Building…", async () => {
    const data = await post("api/path", { start: start.id, end: end.id, via: via.map((t) => t.id), length: Number(length.value) });
    result = data.tracks;
    const plotBox = h("div", { class: "plot", id: "path-plot", role: "img",
      "aria-label": `Distance of each step; largest jump ${data.max_jump.toFixed(3)}, mean ${data.mean_jump.toFixed(3)}` });
    out.replaceChildren(h("h2", {}, `${result.length} songs from “${start.title}” to “${end.title}”`),
      h("p", { class: "muted" }, `Largest step ${data.max_jump.toFixed(3)} · mean step ${data.mean_jump.toFixed(3)} (cosine distance)`),
      h("div", { class: "card" }, plotBox),
      await trackTable(result, { columns: [{ label: "Step", num: true, value: (t) => (t.distance ?? 0).toFixed(3) }] }),
      exportForm(() => result, `${start.title} to ${end.title}`));
    if (plot) plot.destroy();
    const xs = result.map((_, i) => i + 1), ys = result.map((t) => t.distance ?? 0);
    const color = getComputedStyle(document.documentElement).getPropertyValue("--accent").trim();
    const axis = getComputedStyle(document.documentElement).getPropertyValue("--fg").trim();
    plot = new uPlot({
      width: Math.max(plotBox.clientWidth, 280), height: 200,
      scales: { x: { time: false } },
      legend: { show: false },
      axes: [{ label: "song", stroke: axis, incrs: [1, 2, 5, 10, 20, 50, 100] }, { label: "step distance", stroke: axis }],
      series: [{ label: "song" }, { label: "distance", stroke: color, width: 2, points: { show: true, size: 6, fill: color } }],
    }, [xs, ys], plotBox);
  });
  show();
  root.append(form, out);
  return { stop: () => plot && plot.destroy() };
}
