// Alchemy: songs and tags to add or subtract (chips), temperature, the result and a 2-D scatter.
import { post } from "../api.js";
import { h, field, palette } from "../dom.js";
import { Scatter } from "../scatter.js";
import { trackPicker, trackTable, exportForm, errorBox, chip, onSubmit, play } from "../widgets.js";

const TAGS = ["rock", "pop", "electronic", "jazz", "ambient", "acoustic", "instrumental", "metal", "dance",
              "chillout", "sad", "happy", "party", "Mellow", "beautiful", "guitar", "experimental", "folk", "blues", "soul"];

export async function render(root) {
  const add = [], subtract = [];
  let result = [], scatter = null;
  const chips = h("div", { class: "chips", "aria-live": "polite" });
  const temp = h("input", { type: "range", min: 0, max: 3, step: 0.1, value: 0 });
  const tempOut = h("output", {}, "0.0 (most similar first)");
  temp.addEventListener("input", () => { tempOut.textContent = Number(temp.value) === 0 ? "0.0 (most similar first)" : `${Number(temp.value).toFixed(1)} (more variety)`; });
  const tag = h("select", {}, TAGS.map((t) => h("option", { value: t }, t)));
  const n = h("input", { type: "number", min: 1, max: 500, value: 20 });
  const go = h("button", { type: "submit", disabled: true }, "Mix");
  const err = errorBox();
  const out = h("div", { id: "alchemy-result" });

  function show() {
    chips.replaceChildren(...add.map((x, i) => chip(x.label, () => { add.splice(i, 1); show(); })),
      ...subtract.map((x, i) => chip(x.label, () => { subtract.splice(i, 1); show(); }, { subtract: true })));
    if (!add.length && !subtract.length) chips.append(h("span", { class: "muted" }, "Add at least one song or tag."));
    go.disabled = !add.length;
  }
  const song = (t) => ({ kind: "song", value: t.id, label: `${t.artist} — ${t.title}` });
  const tagAdd = h("button", { type: "button", class: "secondary", onclick: () => { add.push({ kind: "tag", value: tag.value, label: `tag ${tag.value}` }); show(); } }, "+ Add tag");
  const tagSub = h("button", { type: "button", class: "secondary", onclick: () => { subtract.push({ kind: "tag", value: tag.value, label: `tag ${tag.value}` }); show(); } }, "− Subtract tag");
  const form = h("form", { class: "card" },
    h("div", { class: "row" },
      trackPicker("Add a song", (t) => { add.push(song(t)); show(); }),
      trackPicker("Subtract a song", (t) => { subtract.push(song(t)); show(); })),
    h("div", { class: "row" }, field("Tag", tag), h("div", { class: "row" }, tagAdd, tagSub)),
    chips,
    h("div", { class: "row" }, h("div", {}, h("label", { for: (temp.id = "alchemy-temp") }, "Temperature"), temp, tempOut), field("How many", n)),
    go, err);
  onSubmit(form, go, err, "Mixing…", async () => {
    const strip = (x) => ({ kind: x.kind, value: x.value });
    const data = await post("api/alchemy", { add: add.map(strip), subtract: subtract.map(strip), n: Number(n.value), temperature: Number(temp.value) });
    result = data.tracks;
    const byId = Object.fromEntries(result.map((t) => [t.id, t]));
    const canvas = h("canvas", { class: "scatter", id: "alchemy-scatter", role: "img", "aria-label": "Results and ingredients on a plane; click a result to play it" });
    const colors = { result: palette(0), add: palette(3), subtract: palette(1), add_centroid: palette(3), subtract_centroid: palette(1) };
    const legend = h("div", { class: "legend" }, ["result", "add", "subtract"].map((r) => h("span", {}, h("i", { style: `background:${colors[r]}` }), r)));
    out.replaceChildren(h("h2", {}, `${result.length} songs`), h("div", { class: "card" }, canvas, legend),
      await trackTable(result, { columns: [{ label: "Similarity", num: true, value: (t) => t.similarity.toFixed(3) }] }),
      exportForm(() => result, "Alchemy mix"));
    if (scatter) scatter.destroy();
    scatter = new Scatter(canvas, { onPick: (p) => p.track && play(p.track) });
    scatter.setPoints(data.projection.map((p) => ({
      x: p.x, y: p.y, label: p.label, color: colors[p.role] || palette(5),
      shape: p.role === "add_centroid" || p.role === "subtract_centroid" ? "cross" : (p.role === "result" ? "dot" : "ring"),
      showLabel: p.role !== "result", track: byId[p.track_id], r: 5,
    })));
  });
  show();
  root.append(form, out);
  return { stop: () => scatter && scatter.destroy() };
}
