// Instant playlist: a sentence → how it was read → the list → export.
import { post } from "../api.js";
import { h, field } from "../dom.js";
import { trackTable, exportForm, errorBox, onSubmit } from "../widgets.js";

// [{tag, weight}] → "instrumental (1), beautiful (0.5)"; other objects as key: value pairs.
function shown(v) {
  if (Array.isArray(v)) {
    return v.map((x) => (x && typeof x === "object" && "tag" in x)
      ? `${x.tag}${x.weight !== undefined ? ` (${x.weight})` : ""}` : shown(x)).join(", ");
  }
  if (v && typeof v === "object") return Object.entries(v).map(([k, x]) => `${k} ${shown(x)}`).join(", ");
  return String(v);
}

function reading(c) {
  const parts = [];
  for (const [k, v] of Object.entries(c || {})) {
    if (v === null || v === undefined || (Array.isArray(v) && !v.length) || (typeof v === "object" && !Array.isArray(v) && !Object.keys(v).length)) continue;
    parts.push(h("li", {}, h("strong", {}, k.replace(/_/g, " ")), ": ", shown(v)));
  }
  return parts.length ? h("ul", {}, parts) : h("p", { class: "muted" }, "No constraint recognised.");
}

export async function render(root) {
  let result = [];
  const text = h("input", { placeholder: "sad piano in a minor key around 70 bpm", maxlength: 2000 });
  const n = h("input", { type: "number", min: 1, max: 1000, value: 20 });
  const go = h("button", { type: "submit" }, "Make the playlist");
  const err = errorBox();
  const out = h("div", { id: "instant-result" });
  const form = h("form", { class: "card" }, field("Describe the playlist", text), h("div", { class: "row" }, field("How many", n)), go, err);
  onSubmit(form, go, err, "Reading…", async () => {
    if (!text.value.trim()) throw new Error("Write a sentence first.");
    const data = await post("api/instant", { text: text.value, n: Number(n.value) });
    result = data.tracks;
    const i = data.interpretation;
    out.replaceChildren(h("div", { class: "card", id: "instant-reading" }, h("h2", {}, "How it was read"),
        h("p", { class: "muted" }, `by the ${i.source === "llm" ? "language model" : "built-in reader"}: ${(i.explanation || []).join("; ")}`),
        reading(i.constraints)),
      ...(result.length
        ? [h("h2", {}, `${result.length} songs`), await trackTable(result),
           exportForm(() => result, text.value.slice(0, 60))]
        : [h("h2", {}, "No songs"),
           h("p", { class: "muted", id: "instant-empty" },
             "No analysed song fits all of that. Try fewer or looser words (a tempo range, a mood, one tag).")]));
  });
  root.append(form, out);
}
